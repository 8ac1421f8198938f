"""Trainer hooks: ``before_train / before_step / after_step / after_train`` (``after_train`` runs from ``finally``).

Default order: metrics (JSONL), evaluation, checkpoint, progress bar, export.  Evaluation precedes the
checkpoint so the best score is saved with it.  Every rank runs every hook (some collectives need all
ranks); only rank 0 writes files or evaluates.  A hook reads ``trainer.step`` — the number of completed
optimiser steps — so ``after_step`` at step ``k`` sees the model after ``k`` updates.
"""
from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from amodal.models.weights import load_weights
from amodal.training.trainer import checkpoint as ckpt
from amodal.training.trainer.distributed import all_reduce_mean, barrier
from amodal.training.trainer.export import export_metadata, export_weights
from amodal.training.trainer.rng import capture_rng, restore_rng

if TYPE_CHECKING:
    from amodal.training.trainer.trainer import Trainer


class HookBase:
    """Override any of the four methods; ``self.trainer`` is set when the hook is registered."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class MetricsHook(HookBase):
    """Every ``log_every`` steps (and at the last): mean losses over the window, averaged across ranks,
    the lr of the last step, samples/s and clipped gradient norm → ``metrics.jsonl``; a non-finite loss
    stops training.  Throughput counts step time only (batch, forward, backward, update — not evaluation
    or checkpoints); it must be the first hook so its step clock brackets the step."""

    def before_train(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._norm_sum: torch.Tensor | None = None
        self._steps = 0
        self._busy_s = 0.0

    def before_step(self) -> None:
        self._t_step = time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        for key, value in t.step_losses.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()
        if t.step_grad_norm is not None:
            norm = t.step_grad_norm.detach().float()
            self._norm_sum = norm if self._norm_sum is None else self._norm_sum + norm
        self._steps += 1
        if t.step % t.config.log_every == 0 or t.step == t.config.max_steps:
            self._log()
        else:
            self._busy_s += time.perf_counter() - self._t_step

    def _log(self) -> None:
        t = self.trainer
        keys = sorted(self._sums)
        values = [self._sums[k] for k in keys] + ([self._norm_sum] if self._norm_sum is not None else [])
        means = all_reduce_mean(t.ctx, torch.stack(values) / self._steps).tolist()  # waits for the device
        self._busy_s += time.perf_counter() - self._t_step
        losses = dict(zip(keys, means[: len(keys)]))
        total = sum(losses.values())
        if not math.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {t.step}: {losses}")
        record = {
            "step": t.step,
            "loss": total,
            "losses": losses,
            "lr": t.step_lr,
            "samples_per_s": self._steps * t.config.batch_size * t.ctx.world_size / max(self._busy_s, 1e-9),
            "world_size": t.ctx.world_size,
        }
        if self._norm_sum is not None:
            record["grad_norm"] = means[-1]
        t.last_log = record
        if t.metrics is not None:
            t.metrics.write(record)
        self._reset()


class EvalHook(HookBase):
    """``task.evaluate`` on rank 0 every ``eval_every`` steps and at the end; keeps the best score.

    Evaluation leaves the RNG states as it found them, so evaluating never changes the training run.
    With ``export_weights: best`` the best weights so far are kept in ``out_dir/best.safetensors``."""

    def after_step(self) -> None:
        every = self.trainer.config.eval_every
        if every and self.trainer.step % every == 0:
            self._evaluate()

    def after_train(self) -> None:
        t = self.trainer
        if t.completed and (t.last_eval_step != t.step):
            self._evaluate()

    def _evaluate(self) -> None:
        t = self.trainer
        if t.ctx.is_main:
            rng = capture_rng(t.ctx.device)
            t.model.eval()
            try:
                with torch.no_grad():
                    results = t.task.evaluate(t.model, t.ctx.device)
            finally:
                t.model.train()
                restore_rng(rng, t.ctx.device)
            score = results.get("score") if isinstance(results, dict) else None
            if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
                raise ValueError(f"task {t.task.name!r}: evaluate() must return a dict with a finite 'score', got {results!r}")
            results = {k: float(v) for k, v in results.items()}
            t.last_eval = results
            if t.best_score is None or results["score"] > t.best_score:
                t.best_score, t.best_step = results["score"], t.step
                if t.config.export_weights == "best":
                    export_weights(t.model.state_dict(), t.best_weights_path, {"step": t.step, "evaluation": results})
            if t.metrics is not None:
                t.metrics.write({"step": t.step, "eval": results, "best_score": t.best_score, "best_step": t.best_step})
        t.last_eval_step = t.step
        barrier(t.ctx)


class CheckpointHook(HookBase):
    """A checkpoint every ``checkpoint_every`` steps and at the end (rank 0 writes; every rank sends its
    RNG state), keeping the newest ``keep_checkpoints``."""

    def before_train(self) -> None:
        self._saved_step = self.trainer.step

    def after_step(self) -> None:
        if self.trainer.step % self.trainer.config.checkpoint_every == 0:
            self._save()

    def after_train(self) -> None:
        if self.trainer.completed and self._saved_step != self.trainer.step:
            self._save()

    def _save(self) -> None:
        t = self.trainer
        state = t.checkpoint_state()
        if t.ctx.is_main:
            ckpt.save_checkpoint(state, ckpt.checkpoint_path(t.out_dir, t.step))
            ckpt.rotate_checkpoints(t.out_dir, t.config.keep_checkpoints)
        self._saved_step = t.step


class ProgressHook(HookBase):
    """A tqdm bar on stderr (rank 0) with the last logged loss, samples/s and lr."""

    _bar: Any = None

    def before_train(self) -> None:
        from tqdm import tqdm

        t = self.trainer
        self._bar = tqdm(total=t.config.max_steps, initial=t.step, file=sys.stderr, disable=not t.ctx.is_main,
                         desc=f"train {t.task.name}", unit="step", dynamic_ncols=True, mininterval=0.5)
        self._shown: dict | None = None

    def after_step(self) -> None:
        self._bar.update(1)
        log = self.trainer.last_log
        if log is not None and log is not self._shown:
            self._shown = log
            self._bar.set_postfix(loss=f"{log['loss']:.4f}", samples_s=f"{log['samples_per_s']:.1f}", lr=f"{log['lr']:.3g}")

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()


class ExportHook(HookBase):
    """After a completed run, rank 0 writes the final (or best) weights and metadata to ``export``."""

    def after_train(self) -> None:
        t = self.trainer
        if not (t.completed and t.ctx.is_main):
            return
        if t.config.export_weights == "best" and t.best_weights_path.is_file():
            state, record = load_weights(t.best_weights_path)
            steps, score, evaluation = int(record["step"]), t.best_score, record["evaluation"]
        else:
            state, steps = t.model.state_dict(), t.step
            score = t.last_eval["score"] if t.last_eval is not None else None
            evaluation = t.last_eval
        metadata = export_metadata(t.task.export_metadata(), score=score, evaluation=evaluation, steps=steps,
                                   train_config=t.config.to_dict())
        t.export_path = export_weights(state, t.config.export_path, metadata)
