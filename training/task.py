"""The contract between the generic trainer (``amodal.training.trainer``) and one model's training task.

A task owns everything model-specific: building the model, its data, its loss and its evaluation with
the paper's metric, and the metadata record its exported weights carry.  The trainer owns the loop:
optimisation, mixed precision, clipping, schedule, checkpoints and exact resume, periodic evaluation,
logging, distributed data parallel, export.  ``amodal train CONFIG.yaml`` reads ``task:`` and the task's
own section ``task_config:`` (validated by the task's frozen dataclass config).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn


class Task(Protocol):
    #: the name used in ``task:`` of a training config
    name: str

    def build_model(self) -> nn.Module:
        """A freshly initialised model (the trainer moves it to the device and wraps it for DDP)."""

    def train_batches(self, *, batch_size: int, seed: int, rank: int, world_size: int) -> Iterator[Any]:
        """An endless, deterministic (per seed, rank) iterator of training batches for this rank."""

    def batch_to_device(self, batch: Any, device: torch.device) -> Any:
        """Move one batch to ``device``."""

    def losses(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Scalar losses with ``loss_*`` keys; the trainer optimises their sum."""

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """The paper's metric on the held-out set; must contain ``score`` (higher is better)."""

    def export_metadata(self) -> dict[str, Any]:
        """classes, input size, normalisation, training data, metric name (the trainer adds score, commit)."""
