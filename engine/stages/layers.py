"""``layers``: layered amodal decomposition by diffusion (SYSTEMS §5, saraao/SAS), a secondary stage that needs
nothing: it runs alone on any feed (``--pipeline layers``) or after a stage that gives objects (``xray,layers``).

Per frame the letterboxed image is decomposed layer by layer (``amodal.models.sas.decompose``: an ensemble of
sampled masks per layer, given the cumulative mask of the layers found so far, until every member is empty or the
layer limit), and each layer region is published as one category-agnostic object after the received ones:
``class_name`` "layer", ``class_id`` 1, ``score`` = the ensemble's agreement on it, the region's box and
``amodal_mask`` in frame pixels, ``occlusion_layer`` k (1 = nothing in front).  A received object with a visible
mask is given the layer whose region overlaps that mask most (``occlusion_layer``; unchanged when no layer does).

Slow by nature (ensemble × steps UNet passes per layer): by default it runs detached on the newest frame of each
stream and its results arrive as amendments; a scanner pipeline that wants every bag sets
``{stage: layers, rate: {mode: every, detached: true}}``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from amodal.engine.postprocess import encode_masks
from amodal.engine.stage import InputSpec, RatePolicy, Stage, StageBatch
from amodal.engine.stages.common import resolve_weights
from amodal.errors import ConfigError
from amodal.models.sas import LayerDecomposition, LayerInference, LoadedSAS, decompose, load_sas
from amodal.types import ObjectResult

LAYER_CLASS_ID = 1
LAYER_CLASS_NAME = "layer"


@dataclass(frozen=True)
class LayersSettings:
    """``weights``: a SAS denoiser safetensors file (None = the shipped tiny synthetic-data weights);
    ``inference``: sampler, steps, ensemble size, layer limit (``LayerInference``); ``seed``: the sampling
    generator's seed (results are reproducible per stage run)."""

    weights: str | None = None
    inference: LayerInference = field(default_factory=LayerInference)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be an integer ≥ 0, got {self.seed!r}")


def region_box(mask: torch.Tensor) -> tuple[float, float, float, float]:
    """x1, y1, x2, y2 (pixel edges) of a non-empty bool[H, W] mask."""
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    return float(xs[0]), float(ys[0]), float(xs[-1]) + 1.0, float(ys[-1]) + 1.0


def layer_of(obj: ObjectResult, regions: torch.Tensor) -> int | None:
    """The 1-based layer whose region (regions bool[K, H, W], frame pixels) overlaps ``obj``'s visible mask most;
    None without a mask or any overlap."""
    if obj.mask is None or regions.shape[0] == 0:
        return None
    visible = torch.from_numpy(obj.mask.decode()).to(regions.device)
    if tuple(visible.shape) != tuple(regions.shape[1:]):
        return None
    overlap = (regions & visible).flatten(1).sum(1)
    return int(overlap.argmax()) + 1 if int(overlap.max()) > 0 else None


class LayersStage(Stage):
    name = "layers"
    default_rate = RatePolicy("newest")
    needs = frozenset()
    fills = frozenset({"objects", "occlusion_layers", "amodal_masks"})
    shipped_weights = "sas_tiny_synthetic.safetensors"

    def __init__(self, settings: LayersSettings | None = None, *, loaded: LoadedSAS | None = None) -> None:
        self.settings = settings or LayersSettings()
        self.loaded = loaded if loaded is not None else load_sas(
            resolve_weights(self.settings.weights, self.shipped_weights))  # CheckpointError if missing or truncated
        size = self.loaded.config.image_size
        # RGB in 0..1 letterboxed to the model's square input; the model normalises itself
        self.input_spec = InputSpec(size_hw=(size, size))
        self._generator: torch.Generator | None = None

    def start(self, device: torch.device) -> None:
        super().start(device)
        self.model = self.loaded.model.to(device).eval()
        self._generator = torch.Generator().manual_seed(self.settings.seed)

    @torch.inference_mode()
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        prepared = batch.input(self.input_spec)
        results = decompose(self.model, prepared.stacked(), self.settings.inference, self._generator)
        return [self._objects(objects, result, geometry)
                for objects, result, geometry in zip(batch.objects, results, prepared.geometries)]

    def _objects(self, received: tuple[ObjectResult, ...], result: LayerDecomposition,
                 geometry) -> tuple[ObjectResult, ...]:
        if result.num_layers == 0:
            return received
        regions = geometry.masks_to_source(result.layers)  # bool[K, H, W] in frame pixels
        scores = result.scores.tolist()
        added = []
        for k, (region, rle) in enumerate(zip(regions, encode_masks(regions))):
            if not bool(region.any()):  # a layer that lies wholly in the letterbox padding
                continue
            added.append(ObjectResult(class_id=LAYER_CLASS_ID, class_name=LAYER_CLASS_NAME, score=float(scores[k]),
                                      box_xyxy=region_box(region), amodal_mask=rle, occlusion_layer=k + 1))
        updated = []
        for obj in received:
            layer = layer_of(obj, regions)
            updated.append(obj if layer is None else dataclasses.replace(obj, occlusion_layer=layer))
        return tuple(updated) + tuple(added)
