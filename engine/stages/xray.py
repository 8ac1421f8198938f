"""``xray``: prohibited items in X-ray scans with the bilayer SAM segmenter (SYSTEMS §4), a primary stage.

Each item is published with class, score, box, mask, ``occluder_mask`` (what lies over it, from the occluder
decoder) and ``occlusion_level`` (the share of its mask under that occluder mask).  Weights trained with a single
decoder (the ablation) have no occluder branch: their objects carry neither field and the stage does not declare
them.  8-bit pseudo-colour and 16-bit grayscale frames are both read as RGB in 0..1 (16-bit: value / 65535 on three
channels, full range), which is the model's own input mapping.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from amodal.engine.postprocess import encode_masks
from amodal.engine.stage import InputSpec, Stage, StageBatch
from amodal.engine.stages.common import DetectionSettings, detections_to_objects, resolve_weights
from amodal.errors import ConfigError
from amodal.models.xray import LoadedXray, XrayDetections, load_xray
from amodal.types import ObjectResult


@dataclass(frozen=True)
class XraySettings(DetectionSettings):
    """Weights: a safetensors file written by ``amodal train`` with ``task: xray`` (None = the shipped tiny
    synthetic-data weights).  Occluder masks are cut at ``mask_threshold`` as the item masks are.

    ``sam_path``: a local ``SamModel.save_pretrained`` folder (facebook/sam-vit-base|large|huge as downloaded
    elsewhere; ``amodal run --sam PATH``) — the SAM the weights were trained on.  It is loaded first and the weights
    file over it, so a file that leaves out the frozen SAM weights (``amodal.models.xray.trained_state``) can be
    served; its architecture must match the file's record.  None: the weights file holds everything.

    ``attention``: SAM's attention implementation — ``sdpa`` (torch), ``eager``, or ``dispatcher`` (our
    ``amodal.kernels.attention`` registered with transformers' AttentionInterface: the fused Triton kernel on CUDA);
    None keeps the weights' record (``sdpa``)."""

    sam_path: str | None = None
    attention: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        from amodal.models.xray.config import ATTENTION_IMPLEMENTATIONS

        if self.attention is not None and self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"xray attention must be one of {ATTENTION_IMPLEMENTATIONS}, got {self.attention!r}")


class XrayStage(Stage):
    name = "xray"
    primary = True
    input_spec = InputSpec()  # RGB in 0..1 at the frame's size: the model letterboxes to its square input itself
    shipped_weights = "xray_tiny_synthetic.safetensors"

    def __init__(self, settings: XraySettings | None = None, loaded: LoadedXray | None = None) -> None:
        self.settings = settings or XraySettings()
        if loaded is None:
            weights = resolve_weights(self.settings.weights, self.shipped_weights)
            loaded = load_xray(weights, sam_path=self.settings.sam_path, attention=self.settings.attention)
        self.loaded = loaded
        self.class_names = self.loaded.config.class_names
        self.bilayer = self.loaded.config.bilayer
        self.fills = frozenset({"objects", "masks"} | ({"occluder_masks", "occlusion_levels"} if self.bilayer
                                                       else set()))

    def start(self, device: torch.device) -> None:
        super().start(device)
        self.model = self.loaded.model.to(device).eval()

    @torch.inference_mode()
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        return [self._objects(det) for det in self.model.detect(list(batch.input(self.input_spec).images))]

    def _objects(self, det: XrayDetections) -> tuple[ObjectResult, ...]:
        s = self.settings
        keep = torch.nonzero(det.scores >= s.score_threshold).flatten()[: s.max_detections]
        if not self.bilayer:
            return detections_to_objects(self.class_names, det.boxes_xyxy[keep], det.scores[keep],
                                         det.labels[keep], det.masks[keep], s.mask_threshold)
        objects = detections_to_objects(self.class_names, det.boxes_xyxy[keep], det.scores[keep], det.labels[keep],
                                        det.masks[keep], s.mask_threshold, occlusion_levels=det.occlusion[keep])
        occluders = encode_masks(det.occluder_masks[keep], s.mask_threshold)
        return tuple(dataclasses.replace(obj, occluder_mask=occ) for obj, occ in zip(objects, occluders))
