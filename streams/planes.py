"""Decoded ``av.VideoFrame`` → ``Frame`` planes, without colour conversion where the format allows.

yuv420p and nv12 planes are copied out as they are (one contiguous copy per plane, dropping the row
padding; measured at ~0.07 ms for 1280x720 versus ~0.26 ms for an RGB conversion).  Other limited-range
YUV formats are reformatted to yuv420p, grayscale to gray8/gray16, everything else (full-range
``yuvj*``, RGB variants, palettes, high bit depth colour) to rgb24.
"""
from __future__ import annotations

import av
import numpy as np

_AS_IS = {"yuv420p": "yuv420p", "nv12": "nv12", "gray": "gray8", "gray16le": "gray16"}
_TO_GRAY16 = {"gray16be", "gray10le", "gray12le", "gray14le", "gray10be", "gray12be"}
_TO_YUV420P = {"yuv422p", "yuv444p", "yuv411p", "yuv410p", "yuv440p", "nv21", "nv16", "yuyv422", "uyvy422"}


def _plane_array(plane: av.video.plane.VideoPlane, dtype: np.dtype, channels: int = 1) -> np.ndarray:
    """One plane as a contiguous ``dtype[h, w]`` (or ``[h, w, channels]``) copy without row padding."""
    itemsize = np.dtype(dtype).itemsize
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
    row_bytes = plane.width * itemsize * channels
    out = np.ascontiguousarray(rows[:, :row_bytes]).view(dtype)
    if channels > 1:
        out = out.reshape(plane.height, plane.width, channels)
    return out


def frame_planes(frame: av.VideoFrame) -> tuple[str, tuple[np.ndarray, ...]]:
    """``(pixel_format, planes)`` following the layouts documented on ``amodal.types.Frame``."""
    name = frame.format.name
    if name in _TO_GRAY16:
        frame, name = frame.reformat(format="gray16le"), "gray16le"
    elif name in _TO_YUV420P or (name.startswith("yuv4") and not name.startswith("yuvj") and name not in _AS_IS):
        frame, name = frame.reformat(format="yuv420p"), "yuv420p"
    elif name not in _AS_IS:
        return "rgb24", (frame.to_ndarray(format="rgb24"),)
    pixel_format = _AS_IS[name]
    planes = frame.planes
    if pixel_format == "yuv420p":
        return pixel_format, tuple(_plane_array(p, np.uint8) for p in planes[:3])
    if pixel_format == "nv12":
        return pixel_format, (_plane_array(planes[0], np.uint8), _plane_array(planes[1], np.uint8, channels=2))
    if pixel_format == "gray8":
        return pixel_format, (_plane_array(planes[0], np.uint8),)
    return pixel_format, (_plane_array(planes[0], np.dtype("<u2")).astype(np.uint16, copy=False),)
