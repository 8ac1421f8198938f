"""Training task for sequential amodal segmentation by diffusion (``amodal.models.sas``; SYSTEMS §5) on occlusion-
layers data: the seed's ``<image id>_<layer>/{image,mask,newmask}.png`` folders or our ``layers.json`` layout
(``amodal data synth layers [--format sas]``).

Each training sample is one (image, layer k) pair — every layer of every image and its empty stop target, as the
seed's loader lists one folder per layer — with the cumulative mask of the layers before k as input and layer k's
mask as x_0; its timestep and noise are drawn from the batch's own generator (exact resume by batch index), the image
optionally mirrored.  Evaluation decomposes held-out images layer by layer (``models.sas.inference``) and scores
them with ``amodal eval layers`` semantics (``training.evaluation.layers``): per-layer amodal IoU, layer count and
layer-order accuracy; score = mIoU over (image, layer) pairs.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amodal.errors import ConfigError
from amodal.models.sas import (
    DiffusionTerms,
    LayerInference,
    SASConfig,
    SASDenoiser,
    SASTargets,
    build_sas,
    decompose,
    paper_config,
    sas_losses,
    tiny_config,
    training_scheduler,
)
from amodal.settings import build_settings
from amodal.training.data.layers import LayersItem, open_layers_dataset
from amodal.training.evaluation.layers import LayeredImage, LayersEvaluator

PRESETS = {"tiny": tiny_config, "paper": paper_config}


@dataclass(frozen=True)
class SASTaskConfig:
    """``task_config:`` of a SAS training run.

    ``data_root`` / ``val_root``: training and held-out datasets (``layout`` ``auto`` reads ``layers.json`` when
    present — it carries the object annotations the object-level metrics need — else the SAS folders);
    ``preset`` ``tiny`` (CPU) or ``paper``; ``model``: ``SASConfig`` fields over the preset (``use_cumulative: false``
    is the ablation); ``inference``: the ``LayerInference`` used by evaluation; ``eval_max_images`` 0 = all."""

    data_root: str
    val_root: str
    layout: str = "auto"
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    hflip_prob: float = 0.5
    inference: LayerInference = field(default_factory=LayerInference)
    eval_max_images: int = 0
    eval_batch_size: int = 16
    eval_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("data_root", "val_root"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must name a dataset folder")
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if not isinstance(self.model, dict):
            raise ConfigError(f"model must be a mapping of SASConfig fields, got {type(self.model).__name__}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ConfigError(f"hflip_prob must be in [0, 1], got {self.hflip_prob!r}")
        if not isinstance(self.eval_max_images, int) or self.eval_max_images < 0:
            raise ConfigError(f"eval_max_images must be an integer ≥ 0, got {self.eval_max_images!r}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be an integer ≥ 1, got {self.eval_batch_size!r}")

    def model_config(self) -> SASConfig:
        return build_settings(SASConfig, {**PRESETS[self.preset]().to_dict(), **self.model}, "task_config.model")


@dataclass
class SASBatch:
    """B (image, layer) samples: images float[B, 3, S, S] RGB in [0, 1], cumulative / masks float[B, 1, S, S] 0/1
    (the layers before k / layer k), timesteps int64[B] and noise float[B, 1, S, S] of the forward process."""

    images: torch.Tensor
    cumulative: torch.Tensor
    masks: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor

    def to(self, device: torch.device) -> "SASBatch":
        return SASBatch(*(t.to(device) for t in (self.images, self.cumulative, self.masks, self.timesteps,
                                                  self.noise)))


def ground_truth(item: LayersItem, file: str) -> LayeredImage:
    """The evaluator's ground truth of ``item``: its objects' amodal masks and layers, or — SAS folders carry no
    objects — each layer's union as one object."""
    if item.objects:
        return LayeredImage(file, np.stack([o.amodal for o in item.objects]),
                            np.array([o.layer for o in item.objects], np.int64))
    layers = item.layer_masks[: item.num_layers]
    return LayeredImage(file, layers.copy(), np.arange(1, item.num_layers + 1, dtype=np.int64))


def images_tensor(items: Sequence[LayersItem]) -> torch.Tensor:
    """float[N, 3, H, W] RGB in [0, 1] of the items' images."""
    return torch.from_numpy(np.stack([it.image for it in items])).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def evaluate_layers_model(model: SASDenoiser, items: Sequence[LayersItem], settings: LayerInference,
                          device: torch.device, *, seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Decompose ``items`` and score them (``LayersEvaluator``): per-layer IoU, counts, order accuracy, plus
    ``seconds_per_image`` (wall time of the decomposition), ``mean_layers`` and ``stopped_at_limit``."""
    was_training = model.training
    model.eval()
    evaluator = LayersEvaluator()
    generator = torch.Generator().manual_seed(seed)
    seconds, layers, at_limit = 0.0, 0, 0
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            t0 = time.perf_counter()
            results = decompose(model, images_tensor(chunk).to(device), settings, generator)
            seconds += time.perf_counter() - t0
            for offset, (item, result) in enumerate(zip(chunk, results)):
                evaluator.process(ground_truth(item, f"{start + offset}:{item.name}"),
                                  list(result.layers.cpu().numpy()))
                layers += result.num_layers
                at_limit += result.stopped == "limit"
    finally:
        model.train(was_training)
    out = {k: float(v) for k, v in evaluator.evaluate().items()}
    n = max(len(items), 1)
    out.update(seconds_per_image=seconds / n, mean_layers=layers / n, stopped_at_limit=at_limit / n)
    return out


class SASTask:
    """``task: sas`` — see the module docstring."""

    name = "sas"

    def __init__(self, task_config: dict[str, Any]) -> None:
        self.config = cfg = build_settings(SASTaskConfig, task_config, "task_config", required=("data_root", "val_root"))
        self.model_config = cfg.model_config()
        self.train_set = open_layers_dataset(Path(cfg.data_root), cfg.layout)
        if len(self.train_set) == 0:
            raise ConfigError(f"{cfg.data_root}: no images to train on")
        items = [self.train_set[i] for i in range(len(self.train_set))]
        size = self.model_config.image_size
        for item in items[:1]:
            if item.image.shape[:2] != (size, size):
                raise ConfigError(f"{cfg.data_root}: images are {item.image.shape[1]}x{item.image.shape[0]}, the model "
                                  f"input is {size}x{size} (generate with --size {size})")
        self._images = np.stack([it.image for it in items])
        self._layers = [it.layer_masks for it in items]
        self._cumulative = [it.cumulative_masks for it in items]
        self._pairs = np.array([(i, k) for i, it in enumerate(items) for k in range(it.num_layers + 1)], np.int64)
        self.scheduler = training_scheduler(self.model_config)
        self.terms = DiffusionTerms(self.scheduler)
        self._val: list[LayersItem] | None = None
        self.summary = {"images": len(items), "pairs": int(len(self._pairs)),
                        "layer_histogram": {str(k): int(v) for k, v in
                                            zip(*np.unique([it.num_layers for it in items], return_counts=True))}}

    def build_model(self) -> nn.Module:
        return build_sas(config=self.model_config)

    # ------------------------------------------------------------------ data

    def make_batch(self, batch_size: int, rng: np.random.Generator, generator: torch.Generator) -> SASBatch:
        """``batch_size`` (image, layer) pairs drawn with ``rng``; timesteps and noise drawn with ``generator``."""
        picks = self._pairs[rng.integers(0, len(self._pairs), size=batch_size)]
        flips = rng.random(batch_size) < self.config.hflip_prob
        images, cumulative, masks = [], [], []
        for (i, k), flip in zip(picks.tolist(), flips.tolist()):
            arrays = (self._images[i], self._cumulative[i][k], self._layers[i][k])
            if flip:
                arrays = tuple(a[:, ::-1] for a in arrays)
            images.append(arrays[0])
            cumulative.append(arrays[1])
            masks.append(arrays[2])
        size = self.model_config.image_size
        timesteps = torch.randint(0, self.model_config.num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn((batch_size, 1, size, size), generator=generator)
        return SASBatch(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0),
                        torch.from_numpy(np.stack(cumulative)).float()[:, None],
                        torch.from_numpy(np.stack(masks)).float()[:, None], timesteps, noise)

    def train_batches(self, *, batch_size: int, seed: int, rank: int, world_size: int,
                      start_batch: int = 0) -> Iterator[SASBatch]:
        """Endless batches; batch b of rank r is drawn from ([seed, r, b]) alone (exact resume by index)."""
        batch = start_batch
        while True:
            rng = np.random.default_rng([seed, rank, batch])
            generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
            yield self.make_batch(batch_size, rng, generator)
            batch += 1

    def batch_to_device(self, batch: SASBatch, device: torch.device) -> SASBatch:
        return batch.to(device)

    def losses(self, model: nn.Module, batch: SASBatch) -> dict[str, torch.Tensor]:
        x_t = self.scheduler.add_noise(batch.masks, batch.noise, batch.timesteps)
        outputs = model(batch.images, batch.cumulative, x_t, batch.timesteps)
        targets = SASTargets(batch.masks, x_t, batch.noise, batch.timesteps)
        return sas_losses(outputs, targets, self.terms, self.model_config.vlb_weight)

    # ------------------------------------------------------------------ evaluation

    def validation_items(self) -> list[LayersItem]:
        if self._val is None:
            ds = open_layers_dataset(Path(self.config.val_root), self.config.layout)
            n = len(ds) if not self.config.eval_max_images else min(len(ds), self.config.eval_max_images)
            self._val = [ds[i] for i in range(n)]
        return self._val

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Per-layer IoU, layer count and order accuracy over the held-out images (score = ``miou_layers``)."""
        core = model.module if hasattr(model, "module") else model
        out = evaluate_layers_model(core, self.validation_items(), self.config.inference, device,
                                    seed=self.config.eval_seed, batch_size=self.config.eval_batch_size)
        out["score"] = out["miou_layers"]
        return out

    def export_metadata(self) -> dict[str, Any]:
        cfg, mc = self.config, self.model_config
        return {
            "model": "sas",
            "config": mc.to_dict(),
            "classes": ["layer"],
            "input_size": {"height": mc.image_size, "width": mc.image_size,
                           "inputs": "RGB, cumulative occlusion mask (0/1), noisy mask x_t"},
            "normalisation": {"input": "RGB float in [0, 1]", "mean": list(mc.image_mean), "std": list(mc.image_std)},
            "diffusion": {"num_train_timesteps": mc.num_train_timesteps, "beta_schedule": "linear",
                          "beta_start": mc.beta_start, "beta_end": mc.beta_end, "prediction": "epsilon",
                          "variance": "learned_range" if mc.learn_sigma else "fixed_large"},
            "inference": asdict(cfg.inference),
            "training_data": {"data_root": cfg.data_root, "val_root": cfg.val_root, "summary": self.summary,
                              "task_config": {k: v for k, v in asdict(cfg).items()}},
            "metric": "miou_layers: mean IoU of predicted vs GT layer k over (image, layer) pairs "
                      "(amodal eval layers); also order_accuracy",
        }
