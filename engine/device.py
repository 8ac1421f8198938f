"""Device choice and host→device transfers (pinned memory on CUDA)."""
from __future__ import annotations

import torch

from amodal.errors import ConfigError


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when present, else the CPU."""
    if preference == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {preference!r} requested but CUDA is not available")
    return device


def to_device(array_or_tensor, device: torch.device) -> torch.Tensor:
    """A numpy array or CPU tensor → ``device``; through pinned memory and a non-blocking copy on CUDA."""
    tensor = torch.from_numpy(array_or_tensor) if not isinstance(array_or_tensor, torch.Tensor) else array_or_tensor
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
