"""Zoom and flip augmentation for detector training frames: a random window of the frame, cut and resized back to
the frame's size (its objects grow by the zoom factor and may be cut at the edges), then an optional mirror.

Why: real camera frames often hold people and vehicles far larger than the rendered worlds do (a hand-held street
shot's pedestrian fills the frame); a detector that never saw one that large fires on its parts instead.  The crop
and resize are torchvision's (``transforms.v2.functional``); the window is drawn from the task's own numpy
generator so that training batches stay a function of (seed, rank, batch)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import masks_to_boxes
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from amodal.errors import ConfigError


@dataclass(frozen=True)
class ZoomWindow:
    """A window of a frame in pixels, and whether the result is mirrored left to right."""

    top: int
    left: int
    height: int
    width: int
    mirror: bool


def check_zoom_settings(zoom_prob: object, zoom_max: object, hflip_prob: object, prefix: str = "") -> None:
    """ConfigError (names prefixed with ``prefix``) unless both probabilities are in [0, 1] and ``zoom_max`` ≥ 1."""
    for name, value in (("zoom_prob", zoom_prob), ("hflip_prob", hflip_prob)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{prefix}{name} must be in [0, 1], got {value!r}")
    if isinstance(zoom_max, bool) or not isinstance(zoom_max, (int, float)) or zoom_max < 1.0:
        raise ConfigError(f"{prefix}zoom_max must be a number ≥ 1, got {zoom_max!r}")


def draw_zoom_window(rng: np.random.Generator, height: int, width: int, *, zoom_prob: float, zoom_max: float,
                     hflip_prob: float) -> ZoomWindow:
    """With probability ``zoom_prob`` a window of the frame's aspect, zoom factor log-uniform in [1, zoom_max], at a
    uniform position; otherwise the whole frame.  Mirrored with probability ``hflip_prob``."""
    h, w, top, left = height, width, 0, 0
    if zoom_prob > 0.0 and rng.random() < zoom_prob:  # draws nothing when off: a run without zoom keeps its batches
        zoom = math.exp(rng.uniform(0.0, math.log(zoom_max)))
        h, w = max(1, round(height / zoom)), max(1, round(width / zoom))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return ZoomWindow(top, left, h, w, bool(rng.random() < hflip_prob))


def boxes_of_masks(masks: torch.Tensor) -> torch.Tensor:
    """float32[N, 4] x1y1x2y2 pixel extents (x2, y2 exclusive) of non-empty masks uint8[N, H, W]."""
    return (masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])).float()


def apply_zoom(image: torch.Tensor, masks: torch.Tensor, window: ZoomWindow) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` float[3, H, W] and ``masks`` uint8[N, H, W] cut to ``window`` and resized back to H × W (bilinear
    with antialiasing for the image, nearest for the masks), mirrored if the window says so."""
    size = [image.shape[-2], image.shape[-1]]
    if (window.height, window.width) != tuple(size):
        image = TF.resized_crop(image, window.top, window.left, window.height, window.width, size, antialias=True)
        if masks.shape[0]:
            masks = TF.resized_crop(masks, window.top, window.left, window.height, window.width, size,
                                    interpolation=InterpolationMode.NEAREST_EXACT)
        else:
            masks = masks.new_zeros((0, *size))
    if window.mirror:
        image, masks = image.flip(-1), masks.flip(-1)
    return image.contiguous(), masks.contiguous()
