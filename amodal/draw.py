"""Draw published results onto frames: visible masks filled, amodal outlines, boxes and labels."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from amodal.types import FrameResult, ObjectResult
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


def draw_result(image_rgb: np.ndarray, result: FrameResult, alpha: float = 0.45) -> np.ndarray:
    """uint8[H, W, 3] with ``result``'s objects drawn (a new array): visible masks filled, occluder masks darkened
    with a stripe pattern, amodal outlines (the hidden part of an occluded object shows as outline beyond its
    fill), boxes and labels (track and global ids, class, score, occlusion level and layer)."""
    out = image_rgb.astype(np.float32)
    h, w = image_rgb.shape[:2]
    stripes = ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 6) < 2
    for obj in result.objects:
        colour = np.array(colour_of(obj), dtype=np.float32)
        if _fits(obj.occluder_mask, image_rgb.shape):
            m = obj.occluder_mask.decode() & stripes
            out[m] = 0.5 * out[m] + 0.5 * colour * 0.4
        if _fits(obj.mask, image_rgb.shape):
            m = obj.mask.decode()
            out[m] = (1 - alpha) * out[m] + alpha * colour
        if _fits(obj.amodal_mask, image_rgb.shape):
            out[outline(obj.amodal_mask.decode())] = colour
    canvas = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
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
