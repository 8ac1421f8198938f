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
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class ZoomWindow:
    """A window of a frame in pixels, and whether the result is mirrored left to right."""

    top: int
    left: int
    height: int
    width: int
    mirror: bool


def draw_zoom_window(rng: np.random.Generator, height: int, width: int, *, zoom_prob: float, zoom_max: float,
                     hflip_prob: float) -> ZoomWindow:
    """With probability ``zoom_prob`` a window of the frame's aspect, zoom factor log-uniform in [1, zoom_max], at a
    uniform position; otherwise the whole frame.  Mirrored with probability ``hflip_prob``."""
    h, w, top, left = height, width, 0, 0
    if rng.random() < zoom_prob:
        zoom = math.exp(rng.uniform(0.0, math.log(zoom_max)))
        h, w = max(1, round(height / zoom)), max(1, round(width / zoom))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return ZoomWindow(top, left, h, w, bool(rng.random() < hflip_prob))


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
