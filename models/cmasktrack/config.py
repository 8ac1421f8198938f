"""Configuration of CMaskTrack R-CNN: a Mask R-CNN detector config plus calibration and tracking settings."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from amodal.errors import ConfigError
from amodal.models.maskrcnn import MaskRCNNConfig


@dataclass(frozen=True)
class CMaskTrackConfig:
    """Architecture of CMaskTrack R-CNN (defaults: the paper's ResNet-50-FPN configuration).

    ``calibration``: temporal feature calibration on (False = plain MaskTrack R-CNN, the ablation);
    ``calibration_channels``: width C' of the three offset convolutions; ``patch_size``/``dilation_patch``: the
    correlation window (16 displacements per axis, every second pixel); ``track_dim``: track-head FC width;
    ``match_*``: weights of the inference matching score (``log p + w_s·log(det score) + w_iou·IoU + w_l·[same label]``);
    ``track_max_age_frames``: memory entries not matched for this many frames are forgotten (0 = never).
    """

    detector: MaskRCNNConfig
    calibration: bool = True
    calibration_channels: int = 256
    patch_size: int = 16
    dilation_patch: int = 2
    track_dim: int = 1024
    track_logit_scale: float = 1.0
    track_normalize: bool = False
    track_fg_iou: float = 0.5
    match_det_score_weight: float = 1.0
    match_iou_weight: float = 2.0
    match_label_weight: float = 10.0
    mask_threshold: float = 0.5
    track_max_age_frames: int = 0
    correlation_backend: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.detector, MaskRCNNConfig):
            raise ConfigError(f"CMaskTrackConfig.detector must be a MaskRCNNConfig, got {type(self.detector).__name__}")
        for name in ("calibration_channels", "patch_size", "dilation_patch", "track_dim"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"CMaskTrackConfig.{name} must be > 0, got {getattr(self, name)}")
        if not self.track_logit_scale > 0.0:
            raise ConfigError(f"CMaskTrackConfig.track_logit_scale must be > 0, got {self.track_logit_scale}")
        if not 0.0 < self.track_fg_iou <= 1.0:
            raise ConfigError(f"CMaskTrackConfig.track_fg_iou must be in (0, 1], got {self.track_fg_iou}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ConfigError(f"CMaskTrackConfig.mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if self.track_max_age_frames < 0:
            raise ConfigError(f"CMaskTrackConfig.track_max_age_frames must be ≥ 0, got {self.track_max_age_frames}")
        if self.correlation_backend not in ("auto", "triton", "cpu", "reference"):
            raise ConfigError(f"CMaskTrackConfig.correlation_backend {self.correlation_backend!r} is unknown")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.detector.class_names

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "detector"}
        d["detector"] = self.detector.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CMaskTrackConfig":
        """Inverse of ``to_dict``; raises ConfigError on unknown keys or a missing detector section."""
        if not isinstance(d, dict) or not isinstance(d.get("detector"), dict):
            raise ConfigError("CMaskTrackConfig needs a 'detector' mapping (the Mask R-CNN config)")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"CMaskTrackConfig: unknown keys {unknown}; known: {sorted(known)}")
        try:
            detector = MaskRCNNConfig.from_dict(d["detector"])
        except TypeError as exc:
            raise ConfigError(f"CMaskTrackConfig.detector: {exc}") from exc
        return cls(**{**{k: v for k, v in d.items() if k != "detector"}, "detector": detector})


def tiny_config(class_names: tuple[str, ...], *, height: int = 192, width: int = 320,
                calibration: bool = True) -> CMaskTrackConfig:
    """The CPU configuration: tiny trunk, 64-channel FPN, narrow heads, no resizing of ``height × width`` input."""
    detector = MaskRCNNConfig(
        class_names=tuple(class_names), backbone="tiny", fpn_channels=64, min_size=min(height, width),
        max_size=max(height, width), anchor_sizes=(16, 32, 64, 128, 256), box_detections_per_img=100,
        box_head_dim=256, mask_head_channels=64, rpn_post_nms_train=300, rpn_post_nms_test=200,
        box_batch_size_per_image=128)
    return CMaskTrackConfig(detector=detector, calibration=calibration, calibration_channels=32, track_dim=256,
                            track_logit_scale=10.0, track_normalize=True)
