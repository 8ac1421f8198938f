"""CPU colour conversion of decoded planes to RGB (the reference the GPU preprocessing kernel matches)."""
from __future__ import annotations

import numpy as np

# BT.601 limited range, the default of H.264 SD/HD content without colour metadata
_Y_OFFSET, _UV_OFFSET = 16.0, 128.0
_Y_SCALE = 1.164
_R_V, _G_U, _G_V, _B_U = 1.596, -0.392, -0.813, 2.017


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """uint8 Y[H, W], U/V[H/2, W/2] (BT.601 limited range) → uint8 RGB[H, W, 3]."""
    h, w = y.shape
    uu = np.repeat(np.repeat(u, 2, axis=0), 2, axis=1)[:h, :w].astype(np.float32) - _UV_OFFSET
    vv = np.repeat(np.repeat(v, 2, axis=0), 2, axis=1)[:h, :w].astype(np.float32) - _UV_OFFSET
    yy = (y.astype(np.float32) - _Y_OFFSET) * _Y_SCALE
    rgb = np.empty((h, w, 3), dtype=np.float32)
    rgb[..., 0] = yy + _R_V * vv
    rgb[..., 1] = yy + _G_U * uu + _G_V * vv
    rgb[..., 2] = yy + _B_U * uu
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def planes_to_rgb(pixel_format: str, planes: tuple[np.ndarray, ...]) -> np.ndarray:
    """Decoded planes of ``pixel_format`` → uint8 RGB[H, W, 3]."""
    if pixel_format == "rgb24":
        return planes[0]
    if pixel_format == "yuv420p":
        return yuv_to_rgb(*planes)
    if pixel_format == "nv12":
        y, uv = planes
        return yuv_to_rgb(y, uv[..., 0], uv[..., 1])
    if pixel_format == "gray8":
        return np.repeat(planes[0][:, :, None], 3, axis=2)
    if pixel_format == "gray16":
        g8 = (planes[0].astype(np.uint32) * 255 // 65535).astype(np.uint8)
        return np.repeat(g8[:, :, None], 3, axis=2)
    raise ValueError(f"unknown pixel format {pixel_format!r}")
