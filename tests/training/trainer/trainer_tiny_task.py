"""A tiny real task for the trainer's tests: classify 12×12 synthetic images (horizontal bar, vertical bar,
square) with a two-layer CNN.  Data come from a ``torch.Generator`` seeded per (seed, rank) — deterministic,
as the task contract asks; the model has dropout, so training also draws from the global torch RNG."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amodal.errors import ConfigError

CLASSES = ("hbar", "vbar", "square")


@dataclass(frozen=True)
class TinyTaskConfig:
    image_size: int = 12
    channels: int = 8
    dropout: float = 0.1
    noise: float = 0.3
    eval_samples: int = 96

    def __post_init__(self) -> None:
        if self.image_size < 6:
            raise ConfigError(f"task_config.image_size must be >= 6, got {self.image_size}")


def make_batch(gen: torch.Generator, n: int, size: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32[n, 1, size, size] and labels int64[n]."""
    labels = torch.randint(0, len(CLASSES), (n,), generator=gen)
    images = noise * torch.randn(n, 1, size, size, generator=gen)
    pos = torch.randint(1, size - 4, (n, 2), generator=gen)
    for i in range(n):
        y, x = pos[i].tolist()
        if labels[i] == 0:
            images[i, 0, y, 1 : size - 1] += 1.0
        elif labels[i] == 1:
            images[i, 0, 1 : size - 1, x] += 1.0
        else:
            images[i, 0, y : y + 3, x : x + 3] += 1.0
    return images, labels


class TinyCNN(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * channels, len(CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float[N, 1, H, W] → logits float[N, 3]."""
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.relu(self.conv2(x)).amax(dim=(2, 3))
        return self.head(self.drop(x))


class TinyTask:
    name = "tiny"

    def __init__(self, config: dict[str, Any]) -> None:
        try:
            self.config = TinyTaskConfig(**config)
        except TypeError as exc:
            raise ConfigError(f"task_config: {exc}") from exc

    def build_model(self) -> nn.Module:
        return TinyCNN(self.config.channels, self.config.dropout)

    def train_batches(self, *, batch_size: int, seed: int, rank: int, world_size: int) -> Iterator[Any]:
        gen = torch.Generator().manual_seed(seed * 1000 + rank)
        while True:
            yield make_batch(gen, batch_size, self.config.image_size, self.config.noise)

    def batch_to_device(self, batch: Any, device: torch.device) -> Any:
        images, labels = batch
        return images.to(device), labels.to(device)

    def losses(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        images, labels = batch
        return {"loss_cls": F.cross_entropy(model(images), labels)}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        gen = torch.Generator().manual_seed(123_456)
        images, labels = make_batch(gen, self.config.eval_samples, self.config.image_size, self.config.noise)
        accuracy = (model(images.to(device)).argmax(1).cpu() == labels).float().mean().item()
        return {"score": accuracy, "accuracy": accuracy}

    def export_metadata(self) -> dict[str, Any]:
        size = self.config.image_size
        return {"classes": list(CLASSES), "input_size": [size, size], "normalisation": {"mean": [0.0], "std": [1.0]},
                "training_data": "synthetic bars and squares (tests)", "metric": "accuracy"}


TASK_PATH = "tests.training.trainer.trainer_tiny_task:TinyTask"


def tiny_config(out_dir: Any, **overrides: Any) -> dict[str, Any]:
    """A training-config mapping for the tiny task (a few dozen CPU steps)."""
    raw: dict[str, Any] = {
        "task": TASK_PATH, "task_config": {}, "out_dir": str(out_dir), "seed": 3, "max_steps": 40, "batch_size": 32,
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 1.0e-4},
        "schedule": {"name": "cosine", "warmup_steps": 5, "warmup_factor": 0.1},
        "grad_clip_norm": 5.0, "amp": "auto", "checkpoint_every": 10, "keep_checkpoints": 2,
        "eval_every": 20, "log_every": 10, "device": "cpu",
    }
    raw.update(overrides)
    return raw


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny convolutions run fastest on one thread (two threads on a shared 2-core machine mostly wait)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
