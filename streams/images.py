"""Decode one still image (PNG, TIFF, JPEG, BMP) into ``Frame`` planes, keeping 16-bit dynamic range.

TIFF goes through tifffile, the rest through Pillow; both return uint16 values unchanged for 16-bit
grayscale (PNG ``I;16``, TIFF ``uint16``).  Layouts: gray8 ``uint8[H, W]``, gray16 ``uint16[H, W]``,
rgb24 ``uint8[H, W, 3]`` (pseudo-colour scans; alpha dropped, 16-bit colour scaled to 8 bits).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from amodal.errors import SourceError

IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})


def _from_array(array: np.ndarray, path: Path) -> tuple[str, tuple[np.ndarray, ...]]:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        if array.dtype == np.uint8:
            return "gray8", (np.ascontiguousarray(array),)
        if array.dtype == np.uint16:
            return "gray16", (np.ascontiguousarray(array),)
        if array.dtype in (np.int32, np.uint32, np.int16) and array.min() >= 0 and array.max() <= 65535:
            return "gray16", (array.astype(np.uint16),)
        raise SourceError(f"{path}: unsupported grayscale sample type {array.dtype} (expected uint8 or uint16)")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[:, :, :3]
        if rgb.dtype == np.uint16:
            rgb = (rgb >> 8).astype(np.uint8)
        if rgb.dtype != np.uint8:
            raise SourceError(f"{path}: unsupported colour sample type {rgb.dtype} (expected uint8 or uint16)")
        return "rgb24", (np.ascontiguousarray(rgb),)
    raise SourceError(f"{path}: unsupported image shape {array.shape} (expected HxW, HxWx3 or HxWx4)")


def _pillow_array(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()  # decodes every byte: raises on a truncated file
        mode = image.mode
        if mode in ("L", "RGB", "I;16", "I;16L", "I;16B", "I"):
            array = np.asarray(image)
        elif mode in ("RGBA", "P", "PA", "LA", "CMYK", "YCbCr", "1"):
            array = np.asarray(image.convert("L" if mode in ("LA", "1") else "RGB"))
        else:
            raise SourceError(f"{path}: unsupported image mode {mode!r}")
    if mode in ("I;16B",) or array.dtype.byteorder == ">":
        array = array.astype(np.uint16)
    return array


def decode_image(path: str | Path) -> tuple[str, tuple[np.ndarray, ...]]:
    """``(pixel_format, planes)`` of an image file; raises ``SourceError`` when it cannot be decoded fully."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path)
        else:
            array = _pillow_array(path)
    except SourceError:
        raise
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, struct.error ... on bad data
        raise SourceError(f"{path}: cannot decode: {type(exc).__name__}: {exc}") from exc
    return _from_array(np.asarray(array), path)
