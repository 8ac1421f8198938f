"""``maskrcnn``: torchvision Mask R-CNN with weights from a local file (no download), masks end to end."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from amodal.engine.analyzer import Analyzer
from amodal.engine.config import AnalyzerConfig
from amodal.engine.postprocess import encode_masks
from amodal.engine.preprocess import frame_to_rgb_tensor
from amodal.errors import ConfigError
from amodal.models.maskrcnn import LoadedModel, load_maskrcnn
from amodal.types import Frame, FrameResult, ObjectResult


class MaskRCNNAnalyzer(Analyzer):
    name = "maskrcnn"

    def __init__(self, config: AnalyzerConfig, loaded: LoadedModel | None = None) -> None:
        if loaded is None and not config.weights:
            from amodal.pretrained import default_weights

            config = dataclasses.replace(config, weights=str(default_weights("maskrcnn")))
        if loaded is None and not config.weights:
            raise ConfigError("the maskrcnn analyzer needs --weights PATH (a local file)")
        self.config = config
        self.loaded = loaded if loaded is not None else load_maskrcnn(config.weights)
        self.class_names = self.loaded.config.class_names

    def start(self, device: torch.device) -> None:
        super().start(device)
        self.model = self.loaded.model.to(device).eval()

    @torch.inference_mode()
    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        images = [frame_to_rgb_tensor(f, self.device) for f in frames]
        outputs = self.model(images)
        return [self._to_result(f, out) for f, out in zip(frames, outputs)]

    def _to_result(self, frame: Frame, out: dict[str, torch.Tensor]) -> FrameResult:
        keep = out["scores"] >= self.config.score_threshold
        keep_idx = torch.nonzero(keep).flatten()[: self.config.max_detections]
        boxes = out["boxes"][keep_idx].cpu().tolist()
        scores = out["scores"][keep_idx].cpu().tolist()
        labels = out["labels"][keep_idx].cpu().tolist()
        masks = encode_masks(out["masks"][keep_idx, 0], self.config.mask_threshold)
        objects = tuple(
            ObjectResult(
                class_id=int(label),
                class_name=self.class_names[label - 1] if 0 < label <= len(self.class_names) else f"class_{label}",
                score=float(score),
                box_xyxy=tuple(box),  # type: ignore[arg-type]
                mask=mask,
            )
            for box, score, label, mask in zip(boxes, scores, labels, masks)
        )
        return self.result(frame, objects)
