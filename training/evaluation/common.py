"""Helpers shared by the evaluators: reading JSON, turning COCO-style segmentations into RLE, printing tables.

Masks are handled as COCO run-length encodings (``{"size": [H, W], "counts": bytes|str}``) through
``pycocotools.mask``; polygons (``[[x1, y1, x2, y2, ...], ...]``) and uncompressed RLE (``counts`` a list of ints) are
converted on reading.  User-input problems raise :class:`amodal.errors.ConfigError` naming the item.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from amodal.errors import ConfigError

Rle = dict[str, Any]


def load_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed file raises ConfigError naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} file {path} is not valid JSON: {exc}") from exc


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


def to_rle(segmentation: Any, height: int, width: int, item: str) -> Rle:
    """One COCO segmentation (polygon list, compressed or uncompressed RLE) as a compressed RLE of size [H, W].

    Raises ConfigError naming ``item`` when the format is unknown or the RLE size is not ``[height, width]``.
    """
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2) or counts is None:
            raise ConfigError(f"{item}: RLE needs 'size' [H, W] and 'counts', got keys {sorted(segmentation)}")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise ConfigError(f"{item}: mask size {list(size)} does not match the image size [{height}, {width}]")
        if isinstance(counts, list):
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(counts, (str, bytes)):
            return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        raise ConfigError(f"{item}: RLE 'counts' must be a string or a list of ints, got {type(counts).__name__}")
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, (list, tuple)) and len(p) >= 6]
        if len(polygons) != len(segmentation):
            raise ConfigError(f"{item}: a polygon segmentation is a list of [x1, y1, x2, y2, x3, y3, ...] lists")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    raise ConfigError(f"{item}: segmentation must be an RLE dict or a polygon list, got {type(segmentation).__name__}")


def empty_rle(height: int, width: int) -> Rle:
    """An all-zero mask of size [H, W] as RLE."""
    return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))


def rle_area(rle: Rle) -> int:
    """Number of foreground pixels of one RLE."""
    return int(mask_utils.area(rle))


def rle_decode(rle: Rle) -> np.ndarray:
    """Bool[H, W] mask of one RLE."""
    with warnings.catch_warnings():  # pycocotools' decode trips a numpy-2 DeprecationWarning about __array__
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode([rle])[:, :, 0].astype(bool)


def rle_encode(mask: np.ndarray) -> Rle:
    """Compressed RLE of a 2-D mask (any dtype, non-zero = foreground)."""
    return mask_utils.encode(np.asfortranarray(np.asarray(mask) != 0, dtype=np.uint8))


def fmt(value: Any) -> str:
    """A metric for a table: fractions with 4 decimals, -1 (undefined) as 'n/a', counts and text as they are."""
    if isinstance(value, (str, bool)):
        return str(value)
    if value is None or (isinstance(value, float) and (math.isnan(value) or value < 0)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def table(rows: list[tuple[str, Any]], title: str) -> str:
    """A two-column text table: ``metric  value``."""
    width = max([len(title)] + [len(name) for name, _ in rows])
    lines = [title, "-" * (width + 12)]
    lines += [f"{name:<{width}}  {fmt(value):>10}" for name, value in rows]
    return "\n".join(lines)
