"""Configuration of MBF (occluded person ReID): ViT backbone, parsing-guided parts, foreground recovery, losses."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from amodal.errors import ConfigError

ATTENTION_BACKENDS = ("auto", "triton", "cpu", "reference")
METRIC_FEATURES = ("raw", "necked")


@dataclass(frozen=True)
class MBFConfig:
    """Architecture of MBF (defaults: the paper's ViT-B/16 at 256×128 on Occluded-Duke's 702 training ids).

    ``stride`` < ``patch_size`` gives overlapping patches (the paper's stride-11 variant). ``num_cameras`` known
    cameras get a side-information embedding (×``camera_scale``); one extra learned row stands for an unknown
    camera (``camera_ids=None``). Parsing classes: 0 background, 1 head, 2 upper, 3 lower, 4 shoes; a patch joins
    part k when its predicted probability of class k exceeds ``part_threshold``. ``foreground_recovery`` adds the
    occluded branch (``recovery_queries`` learned queries, ``recovery_layers`` cross-attention layers) whose
    recovered feature is part of the embedding. ``metric_features``: the features the triplet and separation
    losses see, ``raw`` (before the BNNeck, as TransReID/MBF) or ``necked`` (after it: per-channel standardised, which
    keeps a from-scratch ViT's near-constant class token from shrinking the triplet distances). Images are RGB in
    [0, 1], normalised by ``image_mean/std``.
    """

    num_ids: int = 702
    num_cameras: int = 8
    input_height: int = 256
    input_width: int = 128
    patch_size: int = 16
    stride: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    camera_embedding: bool = True
    camera_scale: float = 3.0
    parsing_classes: int = 5
    part_threshold: float = 0.4
    foreground_recovery: bool = True
    recovery_queries: int = 4
    recovery_layers: int = 3
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    attention_backend: str = "auto"
    metric_features: str = "raw"
    label_smoothing: float = 0.1
    id_weight: float = 1.0
    triplet_weight: float = 1.0
    parsing_weight: float = 1.0
    separation_weight: float = 0.1
    recovery_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("num_ids", "num_cameras", "input_height", "input_width", "patch_size", "stride", "embed_dim",
                     "depth", "num_heads", "recovery_queries", "recovery_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"MBFConfig.{name} must be an integer ≥ 1, got {value!r}")
        if self.depth < 2:
            raise ConfigError(f"MBFConfig.depth must be ≥ 2 (the last block is shared by the branches), got {self.depth}")
        if self.stride > self.patch_size:
            raise ConfigError(f"MBFConfig.stride {self.stride} exceeds patch_size {self.patch_size} (pixels skipped)")
        if self.input_height < self.patch_size or self.input_width < self.patch_size:
            raise ConfigError(f"MBFConfig: input {self.input_height}x{self.input_width} is smaller than one "
                              f"{self.patch_size}-pixel patch")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"MBFConfig.embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.parsing_classes < 2:
            raise ConfigError(f"MBFConfig.parsing_classes must be ≥ 2 (background + parts), got {self.parsing_classes}")
        if not 0.0 < self.part_threshold < 1.0:
            raise ConfigError(f"MBFConfig.part_threshold must be in (0, 1), got {self.part_threshold}")
        if not self.mlp_ratio > 0 or not self.camera_scale >= 0:
            raise ConfigError(f"MBFConfig: mlp_ratio must be > 0 and camera_scale ≥ 0, got {self.mlp_ratio}, "
                              f"{self.camera_scale}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"MBFConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("id_weight", "triplet_weight", "parsing_weight", "separation_weight", "recovery_weight"):
            if not getattr(self, name) >= 0.0:
                raise ConfigError(f"MBFConfig.{name} must be ≥ 0, got {getattr(self, name)}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"MBFConfig.attention_backend must be one of {ATTENTION_BACKENDS}, "
                              f"got {self.attention_backend!r}")
        if self.metric_features not in METRIC_FEATURES:
            raise ConfigError(f"MBFConfig.metric_features must be one of {METRIC_FEATURES}, "
                              f"got {self.metric_features!r}")
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or (name == "image_std" and min(value) <= 0):
                raise ConfigError(f"MBFConfig.{name} must be three numbers (std > 0), got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid."""
        return ((self.input_height - self.patch_size) // self.stride + 1,
                (self.input_width - self.patch_size) // self.stride + 1)

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    @property
    def num_parts(self) -> int:
        """Body parts (every parsing class but background)."""
        return self.parsing_classes - 1

    @property
    def num_features(self) -> int:
        """Feature vectors concatenated into the embedding: global, one per part, recovered (if on)."""
        return 1 + self.num_parts + int(self.foreground_recovery)

    @property
    def embedding_dim(self) -> int:
        return self.embed_dim * self.num_features

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MBFConfig":
        """Inverse of ``to_dict``; ConfigError on unknown keys."""
        if not isinstance(d, dict):
            raise ConfigError(f"MBFConfig needs a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"MBFConfig: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def tiny_config(*, num_ids: int = 702, num_cameras: int = 8, foreground_recovery: bool = True) -> MBFConfig:
    """The CPU configuration: 128×64 input, 8-pixel patches (16×8 = 128 tokens, as the paper's grid), width 128,
    depth 4, 4 heads."""
    return MBFConfig(num_ids=num_ids, num_cameras=num_cameras, input_height=128, input_width=64, patch_size=8,
                     stride=8, embed_dim=128, depth=4, num_heads=4, foreground_recovery=foreground_recovery)
