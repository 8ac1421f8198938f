"""Decode one still image (PNG, TIFF, JPEG, BMP) into ``Frame`` planes, keeping 16-bit dynamic range.

TIFF goes through tifffile, the rest through Pillow; both return uint16 values unchanged for 16-bit
grayscale (PNG ``I;16``, TIFF ``uint16``).  Layouts: gray8 ``uint8[H, W]``, gray16 ``uint16[H, W]``,
rgb24 ``uint8[H, W, 3]`` (pseudo-colour scans; alpha dropped, 16-bit colour scaled to 8 bits).

Size limit: the pixel count the file's header declares (tifffile's first series, all pages; Pillow's
``size``) is checked against ``max_pixels`` before a single pixel is decoded, so a small compressed file
that declares 40000x40000 raises ``ImageTooLargeError`` instead of taking gigabytes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from amodal.errors import SourceError
from amodal.streams.base import SourceConfig

#: the limit when the caller names none: the same default as every source's ``SourceConfig.max_image_pixels``
DEFAULT_MAX_IMAGE_PIXELS: int = SourceConfig.max_image_pixels

IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})
#: tifffile axes that are samples of one pixel, not more pixels
_SAMPLE_AXES = frozenset("SC")


class ImageTooLargeError(SourceError):
    """An image (or video frame) declares more pixels than allowed; nothing was decoded."""


def check_pixels(what: str, width: int, height: int, max_pixels: int | None, pages: int = 1) -> None:
    """Raise ``ImageTooLargeError`` naming ``what`` and its size when ``width * height * pages > max_pixels``."""
    pixels = width * height * pages
    if max_pixels is not None and pixels > max_pixels:
        size = f"{width}x{height}" + (f"x{pages} pages" if pages > 1 else "")
        raise ImageTooLargeError(
            f"{what}: {size} = {pixels / 1e6:.1f} MP exceeds max_image_pixels = {max_pixels / 1e6:.1f} MP"
        )


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


def _tiff_array(path: Path, max_pixels: int | None) -> np.ndarray:
    """The first series (what ``tifffile.imread`` returns), its declared size checked before decoding."""
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise SourceError(f"{path}: TIFF without an image series")
        series = tif.series[0]
        sizes = dict(zip(series.axes, series.shape))
        height, width = int(sizes.get("Y", 1)), int(sizes.get("X", 1))
        pages = math.prod(int(n) for axis, n in sizes.items() if axis not in _SAMPLE_AXES | {"Y", "X"})
        check_pixels(str(path), width, height, max_pixels, pages)
        array = tif.asarray()
    if series.axes == "SYX":  # planar (separate-plane) RGB: samples last, like every other layout
        array = np.moveaxis(array, 0, -1)
    return array


def _pillow_array(path: Path, max_pixels: int | None) -> np.ndarray:
    with Image.open(path) as image:  # reads the header only
        check_pixels(str(path), image.width, image.height, max_pixels)
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


def decode_image(
    path: str | Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[str, tuple[np.ndarray, ...]]:
    """``(pixel_format, planes)`` of an image file; raises ``ImageTooLargeError`` (before decoding) when its
    header declares more than ``max_pixels`` pixels (None: no limit), ``SourceError`` when it cannot be decoded
    fully."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _tiff_array(path, max_pixels)
        else:
            array = _pillow_array(path, max_pixels)
    except SourceError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling (2 x Image.MAX_IMAGE_PIXELS) came first
        raise ImageTooLargeError(f"{path}: {exc}") from exc
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, struct.error ... on bad data
        raise SourceError(f"{path}: cannot decode: {type(exc).__name__}: {exc}") from exc
    return _from_array(np.asarray(array), path)
