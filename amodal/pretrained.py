"""Weights that ship with amodal: small models trained here by ``amodal.training`` on our synthetic data.

Each file is safetensors with its metadata record (classes, input size, normalisation, training data,
metric and score, commit); retraining commands are in README.md ("Shipped weights")."""
from __future__ import annotations

from pathlib import Path

from amodal.errors import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent / "_weights"
SHIPPED = {"maskrcnn": "maskrcnn_tiny_synthetic.safetensors", "ovis": "cmasktrack_tiny_synthetic.safetensors",
           "reid": "mbf_tiny_synthetic.safetensors"}


def default_weights(analyzer: str) -> Path:
    """The shipped weights file of ``analyzer``."""
    if analyzer not in SHIPPED:
        raise ConfigError(f"no shipped weights for {analyzer!r}; shipped: {sorted(SHIPPED)}")
    path = WEIGHTS_DIR / SHIPPED[analyzer]
    if not path.is_file():
        raise ConfigError(f"shipped weights {path} are missing; retrain them (README, 'Shipped weights')")
    return path
