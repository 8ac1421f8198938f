"""Weights files: safetensors with a small metadata record (classes, input size, normalisation, training
data, metric) in the header; never pickle.  Legacy ``.pt/.pth`` state dicts load with ``weights_only``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from amodal.errors import CheckpointError, ConfigError

METADATA_KEY = "amodal"


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``state_dict`` and ``metadata`` (JSON-able) atomically to a safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    tmp.replace(path)
    return path


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) from a safetensors file, or from a ``.pt/.pth`` state dict (metadata {})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, foreign pickle content, …
            raise CheckpointError(f"{path}: cannot be read as a weights-only state dict: {exc}") from exc
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path}: not a state dict of tensors")
        return obj, {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?): {exc}") from exc
    try:
        metadata = json.loads(header.get(METADATA_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata record is not JSON: {exc}") from exc
    return state, metadata


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``load_state_dict`` that reports missing/unexpected keys and shape mismatches as ``CheckpointError``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:2]})")
        raise CheckpointError(f"{path} does not match the model: " + "; ".join(parts))
    module.load_state_dict(state)


def load_model_record(path: str | Path, config_type: Any, model_name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    """(state, metadata, config) of a weights file whose metadata holds the model's ``config`` record, rebuilt with
    ``config_type.from_dict``; CheckpointError when the record is missing or is not a ``model_name`` config."""
    state, metadata = load_weights(path)
    if "config" not in metadata:
        raise CheckpointError(f"{path}: no 'config' in the metadata record; not a {model_name} weights file")
    try:
        config = config_type.from_dict(metadata["config"])
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: metadata config is not a {model_name} config: {exc}") from exc
    return state, metadata, config
