"""Layer-by-layer inference (SYSTEMS §5, the seed's ``scripts/sample.py``): per occlusion layer, an ensemble of
sampled masks given the image and the cumulative mask of the layers found so far.

Per layer and image: each member is thresholded at ``threshold``; members covering less than
``min_area_fraction`` of the image are discarded as empty (the seed: mean < 0.0025); when every member is empty the
image is done (the stop signal the empty last training target teaches); otherwise the kept member nearest (L1) to
the kept members' mean is the layer, and the cumulative mask becomes its union with that layer.  At most
``layer_limit`` layers per image.  Images of a batch run together (their ensembles in one UNet batch) until each
has stopped.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from amodal.errors import ConfigError
from amodal.models.sas.model import SAMPLERS, SASDenoiser, sample_masks

#: (images float[B, 3, S, S], cumulative float[B, 1, S, S]) → ensemble samples float[B, E, S, S]
SampleFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LayerInference:
    """``sampler`` (``ddpm``, ``ddim``, ``dpm``) with ``steps`` reverse steps, ``ensemble_size`` samples per layer,
    at most ``layer_limit`` layers; ``threshold`` binarises a sample; ``min_area_fraction``: a thresholded sample
    covering less of the image is empty.  Default: DPM-Solver++ at 10 steps, chosen by measurement
    (``bench/layers_samplers.py``)."""

    sampler: str = "dpm"
    steps: int = 10
    ensemble_size: int = 3
    layer_limit: int = 5
    threshold: float = 0.5
    min_area_fraction: float = 0.0025

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        for name in ("steps", "ensemble_size", "layer_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ConfigError(f"min_area_fraction must be in [0, 1), got {self.min_area_fraction}")


@dataclass(frozen=True, eq=False)
class LayerDecomposition:
    """One image's layers: ``layers`` bool[K, S, S] (index 0 = layer 1, nothing in front), ``cumulative``
    bool[K + 1, S, S] (index k = the union of the first k layers; index 0 empty), ``scores`` float[K] (each layer's
    ensemble agreement: mean IoU of every member, empty ones included, with the chosen one) and why it stopped:
    ``empty`` (every member empty) or ``limit``."""

    layers: torch.Tensor
    cumulative: torch.Tensor
    scores: torch.Tensor
    stopped: Literal["empty", "limit"]

    @property
    def num_layers(self) -> int:
        return int(self.layers.shape[0])


def select_member(samples: torch.Tensor, threshold: float = 0.5,
                  min_area_fraction: float = 0.0025) -> tuple[torch.Tensor | None, float]:
    """(the member of samples float[E, S, S] nearest the mean of the non-empty ones, as bool[S, S], and the
    ensemble agreement) — (None, 0.0) when every member is empty."""
    members = samples >= threshold
    kept = members.flatten(1).float().mean(1) >= max(min_area_fraction, 1e-12)
    if not bool(kept.any()):
        return None, 0.0
    candidates = members[kept].float()
    mean = candidates.mean(0)
    choice = int((candidates - mean).abs().flatten(1).sum(1).argmin())
    chosen = candidates[choice] > 0.5
    inter = (members & chosen).flatten(1).sum(1).float()
    union = (members | chosen).flatten(1).sum(1).float().clamp_min(1.0)
    return chosen, float((inter / union * kept.float()).mean())


def layer_loop(sample_fn: SampleFn, images: torch.Tensor, settings: LayerInference) -> list[LayerDecomposition]:
    """Decompose images float[B, 3, S, S] layer by layer with ``sample_fn`` (the module docstring)."""
    b, _, h, w = images.shape
    cumulative = torch.zeros((b, 1, h, w), dtype=images.dtype, device=images.device)
    layers: list[list[torch.Tensor]] = [[] for _ in range(b)]
    scores: list[list[float]] = [[] for _ in range(b)]
    stopped: list[str | None] = [None] * b
    active = list(range(b))
    while active:
        idx = torch.tensor(active, device=images.device)
        samples = sample_fn(images[idx], cumulative[idx])
        if samples.dim() != 4 or samples.shape[0] != len(active) or tuple(samples.shape[2:]) != (h, w):
            raise ConfigError(f"sample_fn returned {tuple(samples.shape)}, expected [{len(active)}, E, {h}, {w}]")
        still = []
        for row, i in enumerate(active):
            chosen, score = select_member(samples[row], settings.threshold, settings.min_area_fraction)
            if chosen is None:
                stopped[i] = "empty"
                continue
            layers[i].append(chosen)
            scores[i].append(score)
            cumulative[i, 0] = torch.maximum(cumulative[i, 0], chosen.to(cumulative.dtype))
            if len(layers[i]) >= settings.layer_limit:
                stopped[i] = "limit"
            else:
                still.append(i)
        active = still
    out = []
    for i in range(b):
        stack = torch.stack(layers[i]) if layers[i] else torch.zeros((0, h, w), dtype=torch.bool, device=images.device)
        cum = torch.zeros((stack.shape[0] + 1, h, w), dtype=torch.bool, device=images.device)
        for k in range(stack.shape[0]):
            cum[k + 1] = cum[k] | stack[k]
        out.append(LayerDecomposition(stack, cum, torch.tensor(scores[i], dtype=torch.float32), stopped[i]))  # type: ignore[arg-type]
    return out


def model_sample_fn(model: SASDenoiser, settings: LayerInference,
                    generator: torch.Generator | None = None) -> SampleFn:
    """``sample_fn`` of ``model``: each image's ensemble sampled in one batch with ``settings``' sampler."""

    def sample(images: torch.Tensor, cumulative: torch.Tensor) -> torch.Tensor:
        e = settings.ensemble_size
        masks = sample_masks(model, images.repeat_interleave(e, 0), cumulative.repeat_interleave(e, 0),
                             sampler=settings.sampler, steps=settings.steps, generator=generator)
        return masks.view(images.shape[0], e, *masks.shape[2:])

    return sample


@torch.no_grad()
def decompose(model: SASDenoiser, images: torch.Tensor, settings: LayerInference | None = None,
              generator: torch.Generator | None = None) -> list[LayerDecomposition]:
    """Occlusion layers of images float[B, 3, S, S] RGB in [0, 1] at the model's size (eval mode)."""
    settings = settings or LayerInference()
    size = model.config.image_size
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise ConfigError(f"decompose: images must be [B, 3, {size}, {size}], got {tuple(images.shape)}")
    return layer_loop(model_sample_fn(model, settings, generator), images, settings)
