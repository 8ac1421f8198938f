"""Temporal feature calibration (CMaskTrack R-CNN): warp a reference frame's features onto the current frame.

For one FPN level, ``cur, ref: [B, C, H, W]``::

    corr   = correlation(cur, ref, kernel 1, patch P, stride 1, pad 0, dilation_patch D)   [B, P, P, H, W]
    x      = leaky_relu(corr.view(B, P·P, H, W) / C, 0.1)
    off    = conv3x3(relu(conv3x3(relu(conv3x3(relu(conv3x3(x)))))))                       [B, 18, H, W]
    warped = deform_conv2d(ref, off, weight [C, C, 3, 3], padding 1, no bias)
    out    = warped + cur

Offset layout (DCNv1, the same in ``torchvision.ops.deform_conv2d``): channel ``2k`` is the row (dy) and ``2k + 1``
the column (dx) displacement of tap ``k = 3·i + j`` of the 3×3 kernel, in feature pixels (checked by
``tests/models/test_cmasktrack_calibration.py``: dx = +1 on every tap reads the input one column to the right).
The offset head ends in a zero-initialised convolution, so an untrained module samples the regular 3×3 grid.
The same module (weights shared) calibrates every FPN level.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from amodal.errors import ConfigError
from amodal.kernels.correlation import correlation

KERNEL_TAPS = 9  # 3×3 deformable kernel


class TemporalCalibration(nn.Module):
    """Calibrates current-frame features with a reference frame's (one module for all FPN levels).

    Args:
        channels: C, the FPN width.
        hidden_channels: C', width of the three offset convolutions (256 in the paper).
        patch_size: P, displacements per axis of the correlation (16).
        dilation_patch: D, spacing of the displacements in pixels (2).
        correlation_backend: passed to ``amodal.kernels.correlation.correlation`` ("auto", "cpu", "reference"…).
    """

    def __init__(self, channels: int, hidden_channels: int = 256, patch_size: int = 16, dilation_patch: int = 2,
                 correlation_backend: str = "auto") -> None:
        super().__init__()
        self.channels = channels
        self.patch_size = patch_size
        self.dilation_patch = dilation_patch
        self.correlation_backend = correlation_backend
        p2 = patch_size * patch_size
        self.offset_convs = nn.Sequential(
            nn.Conv2d(p2, hidden_channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.offset_out = nn.Conv2d(hidden_channels, 2 * KERNEL_TAPS, 3, padding=1)
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.zeros_(self.offset_out.weight)
        nn.init.zeros_(self.offset_out.bias)
        nn.init.kaiming_uniform_(self.weight, a=1.0)
        with torch.no_grad():
            self.weight.mul_(0.1)  # start close to ``out = cur``

    def offsets(self, cur: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Deformable offsets float[B, 18, H, W] (DCNv1 layout: 2k = dy, 2k+1 = dx) from cur, ref [B, C, H, W]."""
        if cur.shape != ref.shape:
            raise ConfigError(f"calibration: current features {tuple(cur.shape)} and reference features "
                              f"{tuple(ref.shape)} differ")
        b, c, h, w = cur.shape
        corr = correlation(cur, ref, kernel_size=1, patch_size=self.patch_size, stride=1, padding=0,
                           dilation=1, dilation_patch=self.dilation_patch, backend=self.correlation_backend)
        x = F.leaky_relu(corr.reshape(b, self.patch_size * self.patch_size, h, w) / c, 0.1)
        return self.offset_out(self.offset_convs(x))

    def forward(self, cur: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Calibrated features float[B, C, H, W] = deform_conv(ref, offsets(cur, ref)) + cur."""
        off = self.offsets(cur, ref)
        warped = deform_conv2d(ref, off.to(ref.dtype), self.weight.to(ref.dtype), padding=(1, 1))
        return warped + cur

    def calibrate_levels(self, cur: "OrderedDict[str, torch.Tensor]",
                         ref: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        """Every FPN level of ``cur`` calibrated with the same level of ``ref`` (same keys and shapes)."""
        if list(cur) != list(ref):
            raise ConfigError(f"calibration: feature levels {list(cur)} vs reference levels {list(ref)}")
        return OrderedDict((k, self(cur[k], ref[k])) for k in cur)
