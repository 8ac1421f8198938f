"""Draw published results onto frames: visible masks filled, amodal outlines, boxes and labels."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from amodal.types import FrameResult, ObjectResult, RLEMask
from amodal.world.render import outline

_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
     [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40], [128, 0, 0]],
    dtype=np.uint8,
)


def colour_of(obj: ObjectResult) -> tuple[int, int, int]:
    """A stable colour per track (or per class when untracked)."""
    key = obj.track_id if obj.track_id is not None else obj.class_id
    return tuple(int(c) for c in _PALETTE[key % len(_PALETTE)])  # type: ignore[return-value]


def label_of(obj: ObjectResult) -> str:
    """``#track id<global> class score occ 40% L2``: what is known of the object."""
    label = f"{obj.class_name} {obj.score:.2f}"
    if obj.global_id is not None:
        label = f"id{obj.global_id} " + label
    if obj.track_id is not None:
        label = f"#{obj.track_id} " + label
    if obj.occlusion_level is not None:
        label += f" occ {obj.occlusion_level:.0%}"
    if obj.occlusion_layer is not None:
        label += f" L{obj.occlusion_layer}"
    return label


def _fits(mask, shape: tuple[int, ...]) -> bool:
    return mask is not None and (mask.height, mask.width) == shape[:2]


def _region(masks: list[RLEMask], height: int, width: int) -> tuple[slice, slice] | None:
    """The rows and columns that hold every pixel of ``masks``, one pixel wider on each side (so that an outline
    drawn within it equals one drawn on the whole frame), or None when the masks are empty."""
    from pycocotools import mask as mask_utils

    boxes = mask_utils.toBbox([{"size": [m.height, m.width], "counts": m.counts} for m in masks])
    boxes = boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)]
    if not len(boxes):
        return None
    x0, y0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
    x1, y1 = int((boxes[:, 0] + boxes[:, 2]).max()), int((boxes[:, 1] + boxes[:, 3]).max())
    return slice(max(0, y0 - 1), min(height, y1 + 1)), slice(max(0, x0 - 1), min(width, x1 + 1))


def _draw_masks(out: np.ndarray, obj: ObjectResult, alpha: float) -> None:
    """Blend ``obj``'s occluder stripes, visible fill and amodal outline into ``out`` (uint8[H, W, 3], in place),
    touching only the pixels around its masks (drawing costs per pixel; objects are small next to the frame)."""
    h, w = out.shape[:2]
    occluder = obj.occluder_mask if _fits(obj.occluder_mask, out.shape) else None
    visible = obj.mask if _fits(obj.mask, out.shape) else None
    amodal = obj.amodal_mask if _fits(obj.amodal_mask, out.shape) else None
    present = [m for m in (occluder, visible, amodal) if m is not None]
    region = _region(present, h, w) if present else None
    if region is None:
        return
    rows, cols = region
    patch = out[rows, cols].astype(np.float32)
    colour = np.array(colour_of(obj), dtype=np.float32)
    if occluder is not None:
        stripes = ((np.arange(rows.start, rows.stop)[:, None] + np.arange(cols.start, cols.stop)[None, :]) % 6) < 2
        m = occluder.decode()[rows, cols] & stripes
        patch[m] = 0.5 * patch[m] + 0.5 * colour * 0.4
    if visible is not None:
        m = visible.decode()[rows, cols]
        patch[m] = (1 - alpha) * patch[m] + alpha * colour
    if amodal is not None:
        patch[outline(amodal.decode()[rows, cols])] = colour
    out[rows, cols] = np.clip(patch, 0, 255).astype(np.uint8)


def draw_result(image_rgb: np.ndarray, result: FrameResult, alpha: float = 0.45) -> np.ndarray:
    """uint8[H, W, 3] with ``result``'s objects drawn (a new array): visible masks filled, occluder masks darkened
    with a stripe pattern, amodal outlines (the hidden part of an occluded object shows as outline beyond its
    fill), boxes and labels (track and global ids, class, score, occlusion level and layer)."""
    out = np.array(image_rgb, dtype=np.uint8, copy=True)
    for obj in result.objects:
        _draw_masks(out, obj, alpha)
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    for obj in result.objects:
        colour = colour_of(obj)
        x1, y1, x2, y2 = obj.box_xyxy
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        label = label_of(obj)
        tx, ty = x1 + 2, max(0, y1 - 12)
        draw.rectangle((tx - 1, ty, tx + 6 * len(label) + 1, ty + 11), fill=(0, 0, 0))
        draw.text((tx, ty), label, fill=colour)
    return np.asarray(canvas)
