"""Training checkpoints: ``out_dir/checkpoints/step_00001000.pt``, written atomically, read weights-only.

A checkpoint is a ``torch.save`` of tensors and primitive containers only — model, optimizer, scheduler and
grad-scaler state dicts, the step, one RNG-state row per rank (``int64[world_size, L]``), the best evaluation
so far and the training config — and is read back with ``torch.load(weights_only=True)``: nothing is unpickled.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from amodal.errors import CheckpointError

FORMAT = "amodal-train-checkpoint/1"
REQUIRED_KEYS = ("format", "step", "model", "optimizer", "scheduler", "grad_scaler", "rng", "best", "config")
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return checkpoint_dir(out_dir) / f"step_{step:08d}.pt"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint in ``out_dir``, oldest first (``.tmp`` files are ignored)."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` through a temporary file and an atomic rename."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"refusing to write checkpoint {path}: state lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint weights-only onto the CPU; a missing, truncated or foreign file is a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, non-tensor pickle content, I/O errors
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read (truncated or corrupt?): {exc}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an amodal training checkpoint (format {FORMAT!r} expected)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    if not isinstance(state["rng"], torch.Tensor) or state["rng"].ndim != 2:
        raise CheckpointError(f"checkpoint {path}: RNG states must be an int64[world_size, L] tensor")
    return state


def rotate_checkpoints(out_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted paths."""
    found = list_checkpoints(out_dir)
    doomed = [path for _, path in found[:-keep]] if keep > 0 else []
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed
