"""Final weights → safetensors with the metadata record (``amodal.models.weights``; loading never unpickles)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from amodal.models.weights import save_weights
from amodal.provenance import git_commit


def export_metadata(
    task_metadata: dict[str, Any], *, score: float | None, evaluation: dict[str, float] | None, steps: int, train_config: dict[str, Any]
) -> dict[str, Any]:
    """The task's record (classes, input size, normalisation, training data, metric) plus metric, score,
    the evaluation it came from, commit, steps and the training config."""
    record = dict(task_metadata)
    record.setdefault("metric", "score")
    record.update({
        "score": score,
        "evaluation": dict(evaluation) if evaluation is not None else None,
        "commit": git_commit(),
        "steps": steps,
        "train_config": train_config,
    })
    return record


def export_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any]) -> Path:
    """Write ``state_dict`` (cloned to the CPU, so tied tensors never alias) and ``metadata`` to ``path``."""
    tensors = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
    return save_weights(tensors, path, metadata)
