"""The generic trainer: one loop for every task (``amodal.training.task.Task``), extended by hooks.

Per step: next batch → device → ``task.losses`` under autocast → sum → backward (GradScaler for fp16) →
optional gradient clipping → optimiser step → lr-schedule step.  Under ``torchrun`` the model is wrapped
in DistributedDataParallel and each rank draws its own batches.

Exact resume: a checkpoint holds model, optimiser, scheduler, grad-scaler, step, every rank's RNG states
and the best evaluation.  The data position is recovered by re-creating the task's iterator — deterministic
per (seed, rank) by the task contract — and discarding the ``step`` batches already consumed (one batch per
step).  A task whose ``train_batches`` also accepts ``start_batch=`` is asked to start there instead, so
nothing is generated to be thrown away.  The RNG states are restored *after* positioning the data, so the
run continues bit for bit (on a deterministic device).
"""
from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amodal.errors import CheckpointError, ConfigError
from amodal.models.weights import load_state_strict
from amodal.training.task import Task
from amodal.training.trainer import checkpoint as ckpt
from amodal.training.trainer.config import OptimizerConfig, TrainConfig
from amodal.training.trainer.distributed import DistContext, all_gather_rows
from amodal.training.trainer.hooks import CheckpointHook, EvalHook, ExportHook, HookBase, MetricsHook, ProgressHook
from amodal.training.trainer.metrics_log import MetricsLog
from amodal.training.trainer.rng import capture_rng, restore_rng, seed_everything
from amodal.training.trainer.schedule import build_scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSummary:
    """What a finished (or interrupted) run reached."""

    steps: int
    completed: bool
    best_score: float | None
    best_step: int | None
    last_eval: dict[str, float] | None
    export_path: Path | None


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` → bf16 on CUDA, none on CPU; ``fp16`` needs CUDA; ``bf16`` on CPU only if asked."""
    if mode == "none" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"amp: fp16 needs a CUDA device, training runs on {device}")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"amp: bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or none")
    return torch.bfloat16


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the task's model has no trainable parameters")
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


class Trainer:
    """Build with a config, a task and the distributed context; optionally ``resume(path)``; then ``train()``."""

    def __init__(self, config: TrainConfig, task: Task, ctx: DistContext, *, extra_hooks: Iterable[HookBase] = ()) -> None:
        self.config, self.task, self.ctx = config, task, ctx
        self.out_dir = config.out_path
        self.best_weights_path = self.out_dir / "best.safetensors"
        seed_everything(config.seed + ctx.rank)
        self.model = task.build_model().to(ctx.device)
        self.model.train()
        self.train_model: nn.Module = self.model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids,
                                                       find_unused_parameters=config.find_unused_parameters)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, config.schedule, config.max_steps)
        self.amp_dtype = resolve_amp(config.amp, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.completed = False
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.last_eval: dict[str, float] | None = None
        self.last_eval_step: int | None = None
        self.last_log: dict[str, Any] | None = None
        self.export_path: Path | None = None
        self.metrics: MetricsLog | None = None
        self.step_losses: dict[str, torch.Tensor] = {}
        self.step_grad_norm: torch.Tensor | None = None
        self.step_lr = 0.0
        self._pending_rng: torch.Tensor | None = None
        self._batches: Iterator[Any] | None = None
        self.hooks: list[HookBase] = []
        self.register_hooks([MetricsHook(), EvalHook(), CheckpointHook(), ProgressHook(), ExportHook(), *extra_hooks])

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    # ---- checkpoint state -------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs (collective: every rank must call it; the RNG rows are gathered)."""
        rng_row = capture_rng(self.ctx.device)
        if self.ctx.device.type == "cuda" and self.ctx.distributed:
            rng_rows = all_gather_rows(self.ctx, rng_row.to(self.ctx.device)).cpu()
        else:
            rng_rows = all_gather_rows(self.ctx, rng_row)
        return {
            "format": ckpt.FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "rng": rng_rows,
            "best": {"score": self.best_score, "step": self.best_step},
            "config": self.config.to_dict(),
        }

    def resume(self, path: Path) -> None:
        """Load a checkpoint (weights-only) into model, optimiser, scheduler, scaler and counters."""
        state = ckpt.load_checkpoint(path)
        load_state_strict(self.model, state["model"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state["grad_scaler"]:
                self.scaler.load_state_dict(state["grad_scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path}: optimiser/scheduler state does not fit this config: {exc}") from exc
        self.step = int(state["step"])
        if self.step > self.config.max_steps:
            raise CheckpointError(f"checkpoint {path} is at step {self.step}, beyond max_steps {self.config.max_steps}")
        self.best_score, self.best_step = state["best"]["score"], state["best"]["step"]
        rows = state["rng"]
        if rows.shape[0] == self.ctx.world_size:
            self._pending_rng = rows[self.ctx.rank]
        else:
            log.warning("checkpoint %s was written by %d ranks, resuming on %d: RNG streams start afresh, "
                        "the run continues but not bit for bit", path, rows.shape[0], self.ctx.world_size)

    # ---- loop -------------------------------------------------------------------------------------
    def _open_batches(self) -> Iterator[Any]:
        kwargs = dict(batch_size=self.config.batch_size, seed=self.config.seed, rank=self.ctx.rank, world_size=self.ctx.world_size)
        if self.step and "start_batch" in inspect.signature(self.task.train_batches).parameters:
            # the task can start mid-stream itself (e.g. batches seeded per index): no batch is produced to be dropped
            return self._after_skip(iter(self.task.train_batches(**kwargs, start_batch=self.step)))
        batches = iter(self.task.train_batches(**kwargs))
        if self.step:
            skipped = sum(1 for _ in itertools.islice(batches, self.step))
            if skipped != self.step:
                raise RuntimeError(f"task {self.task.name!r}: train_batches ended after {skipped} batches; it must be endless")
        return self._after_skip(batches)

    def _after_skip(self, batches: Iterator[Any]) -> Iterator[Any]:
        """Restore the resumed RNG states only once the data stream is positioned (skipping may draw)."""
        if self._pending_rng is not None:
            restore_rng(self._pending_rng, self.ctx.device)
            self._pending_rng = None
        return batches

    def run_step(self) -> None:
        """One optimiser step on the next batch."""
        if self._batches is None:
            raise RuntimeError("run_step() runs inside train(), which opens the task's batches")
        try:
            batch = next(self._batches)
        except StopIteration:
            raise RuntimeError(f"task {self.task.name!r}: train_batches ended at step {self.step}; it must be endless") from None
        batch = self.task.batch_to_device(batch, self.ctx.device)
        with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            losses = self.task.losses(self.train_model, batch)
        if not losses or not all(k.startswith("loss_") and isinstance(v, torch.Tensor) and v.numel() == 1 for k, v in losses.items()):
            raise ValueError(f"task {self.task.name!r}: losses() must return scalar tensors under loss_* keys, got "
                             f"{ {k: getattr(v, 'shape', type(v)) for k, v in losses.items()} }")
        total = torch.stack([v.float().reshape(()) for v in losses.values()]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.step_grad_norm = None
        if self.config.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            self.step_grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
        self.step_lr = float(self.optimizer.param_groups[0]["lr"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.step_losses = {k: v.detach().float().reshape(()) for k, v in losses.items()}

    def train(self) -> TrainSummary:
        """Run from ``self.step`` to ``max_steps``; ``after_train`` hooks run even when a step raises."""
        self._batches = self._open_batches()
        if self.ctx.is_main:
            self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", start_step=self.step)
        try:
            for hook in self.hooks:
                hook.before_train()
            while self.step < self.config.max_steps:
                for hook in self.hooks:
                    hook.before_step()
                self.run_step()
                for hook in self.hooks:
                    hook.after_step()
            self.completed = True
        finally:
            try:
                for hook in self.hooks:
                    hook.after_train()
            finally:
                if self.metrics is not None:
                    self.metrics.close()
        return TrainSummary(steps=self.step, completed=self.completed, best_score=self.best_score,
                            best_step=self.best_step, last_eval=self.last_eval, export_path=self.export_path)
