"""``maskrcnn``: torchvision Mask R-CNN with weights from a local file (no download), masks end to end."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from amodal.engine.stage import InputSpec, Stage, StageBatch
from amodal.engine.stages.common import DetectionSettings, detections_to_objects, load_once, resolve_weights
from amodal.models.maskrcnn import LoadedModel, load_maskrcnn
from amodal.types import ObjectResult


@dataclass(frozen=True)
class MaskRCNNSettings(DetectionSettings):
    """Weights: our safetensors (with metadata) or a torchvision ``maskrcnn_resnet50_fpn`` state dict (``.pth``,
    loaded ``weights_only``)."""


class MaskRCNNStage(Stage):
    name = "maskrcnn"
    primary = True
    fills = frozenset({"objects", "masks"})
    input_spec = InputSpec()  # RGB in 0..1 at the frame's size: the model's own transform normalises and resizes
    shipped_weights = "maskrcnn_tiny_synthetic.safetensors"

    def __init__(self, settings: MaskRCNNSettings | None = None, loaded: LoadedModel | None = None) -> None:
        self.settings = settings or MaskRCNNSettings()
        self.loaded = loaded if loaded is not None else load_once(
            load_maskrcnn, resolve_weights(self.settings.weights, self.shipped_weights))
        self.class_names = self.loaded.config.class_names

    def start(self, device: torch.device) -> None:
        super().start(device)
        self.model = self.loaded.model.to(device).eval()

    @torch.inference_mode()
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        outputs = self.model(list(batch.input(self.input_spec).images))
        return [self._objects(out) for out in outputs]

    def _objects(self, out: dict[str, torch.Tensor]) -> tuple[ObjectResult, ...]:
        keep = torch.nonzero(out["scores"] >= self.settings.score_threshold).flatten()[: self.settings.max_detections]
        return detections_to_objects(self.class_names, out["boxes"][keep], out["scores"][keep], out["labels"][keep],
                                     out["masks"][keep, 0], self.settings.mask_threshold)
