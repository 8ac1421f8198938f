"""Weights that ship with amodal: small models trained here by ``amodal.training`` on our synthetic data.

Each file is safetensors with its metadata record (classes, input size, normalisation, training data,
metric and score, commit); retraining commands are in README.md ("Shipped weights").  Each stage names its
own file (``Stage.shipped_weights``); this module only finds it."""
from __future__ import annotations

from pathlib import Path

from amodal.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent / "_weights"


def shipped_weights(filename: str) -> Path:
    """The path of a shipped weights file; ConfigError naming the file when it is missing."""
    path = WEIGHTS_DIR / filename
    if not path.is_file():
        shipped = sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors"))
        if shipped:
            raise ConfigError(f"no shipped weights are named {filename!r}; shipped: {shipped}")
        raise ConfigError(f"shipped weights {path} are missing (none in {WEIGHTS_DIR}); retrain them "
                          f"(README, 'Shipped weights')")
    return path
