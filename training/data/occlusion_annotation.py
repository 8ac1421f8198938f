"""Occluder annotation for any COCO instance set (SYSTEMS §4; the rule of Occ's ``convert_occlusion_annotation.py``).

For instance i with box b_i (xyxy from the COCO xywh box):
  1. others = instances j ≠ i with ``box_iou(b_i, b_j) > 0.05``;
  2. occluder(i) = ∪_j mask_j  ∩  box_region(b_i);
  3. kept when it has more than 20 pixels and touches i's own mask (≥ 1 shared pixel), else ``[]``.
Stored as ``bg_object_segmentation``: a list of flat ``[x0, y0, x1, y1, ...]`` polygons, ``[]`` when none.

Details matched to Occ: the box IoU uses the inclusive-pixel convention (areas ``(x2 − x1 + 1)(y2 − y1 + 1)``);
the box region is ``mask[int(y1):int(y2), int(x1):int(x2)]``; crowd annotations take part like any other;
step 3's "touches its own mask" is Occ's second pass that empties polygons not overlapping the segmentation.
Differences (deliberate): the polygons are traced exactly and only collinear points are dropped (Occ traces with
skimage and keeps every 2nd…10th point of long contours); the ``area`` field is left as it was (Occ rewrites it as
the box area); RLE segmentations are accepted as input.  As in Occ, polygons with fewer than 3 points are
ignored (an instance left with none has an empty mask but still gets its own occluder computed).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from amodal.errors import ConfigError
from amodal.training.data.coco import (
    drop_degenerate_polygons,
    mask_to_polygons,
    segmentation_to_mask,
    validate_segmentation,
)

__all__ = ["OcclusionRule", "annotate_coco", "annotate_file", "box_iou_inclusive", "occluder_masks"]


@dataclass(frozen=True, slots=True)
class OcclusionRule:
    """Thresholds of the rule: pairs need box IoU > ``iou_threshold``; occluders need > ``min_pixels`` pixels."""

    iou_threshold: float = 0.05
    min_pixels: int = 20
    require_overlap_with_mask: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_threshold < 1.0:
            raise ConfigError(f"iou_threshold must be in [0, 1), got {self.iou_threshold}")
        if self.min_pixels < 0:
            raise ConfigError(f"min_pixels must be ≥ 0, got {self.min_pixels}")


def box_iou_inclusive(a_xyxy: Sequence[float], b_xyxy: Sequence[float]) -> float:
    """IoU of two xyxy boxes with inclusive pixel extents (Occ's / VOC's ``+ 1`` convention)."""
    ix = max(0.0, min(a_xyxy[2], b_xyxy[2]) - max(a_xyxy[0], b_xyxy[0]) + 1.0)
    iy = max(0.0, min(a_xyxy[3], b_xyxy[3]) - max(a_xyxy[1], b_xyxy[1]) + 1.0)
    inter = ix * iy
    area_a = (a_xyxy[2] - a_xyxy[0] + 1.0) * (a_xyxy[3] - a_xyxy[1] + 1.0)
    area_b = (b_xyxy[2] - b_xyxy[0] + 1.0) * (b_xyxy[3] - b_xyxy[1] + 1.0)
    return float(inter / (area_a + area_b - inter))


def occluder_masks(
    masks: Sequence[np.ndarray], boxes_xywh: Sequence[Sequence[float]], rule: OcclusionRule = OcclusionRule()
) -> list[np.ndarray | None]:
    """Per instance, bool[H, W] occluder mask by the rule, or None when it has none.

    ``masks``: N bool[H, W] instance masks; ``boxes_xywh``: N COCO boxes.
    """
    if len(masks) != len(boxes_xywh):
        raise ConfigError(f"occluder_masks: {len(masks)} masks but {len(boxes_xywh)} boxes")
    boxes = [(b[0], b[1], b[0] + b[2], b[1] + b[3]) for b in boxes_xywh]
    out: list[np.ndarray | None] = []
    for i, box_i in enumerate(boxes):
        partners = [
            j for j, box_j in enumerate(boxes) if j != i and box_iou_inclusive(box_i, box_j) > rule.iou_threshold
        ]
        if not partners:
            out.append(None)
            continue
        y1, y2, x1, x2 = int(box_i[1]), int(box_i[3]), int(box_i[0]), int(box_i[2])
        union = np.zeros_like(np.asarray(masks[i], dtype=bool))
        region = union[y1:y2, x1:x2]
        for j in partners:
            region |= np.asarray(masks[j], dtype=bool)[y1:y2, x1:x2]
        if int(union.sum()) <= rule.min_pixels:
            out.append(None)
        elif rule.require_overlap_with_mask and not (union & np.asarray(masks[i], dtype=bool)).any():
            out.append(None)
        else:
            out.append(union)
    return out


def annotate_coco(data: dict[str, Any], rule: OcclusionRule = OcclusionRule()) -> tuple[dict[str, Any], dict]:
    """Add ``bg_object_segmentation`` to every annotation of a COCO dict (a new dict is returned) + stats."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ConfigError("annotate-occlusion: input must be a COCO object with 'images' and 'annotations' lists")
    sizes: dict[int, tuple[int, int]] = {}
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not all(key in img for key in ("id", "width", "height")):
            raise ConfigError(f"annotate-occlusion: image #{k} needs id, width and height")
        sizes[int(img["id"])] = (int(img["height"]), int(img["width"]))
    by_image: dict[int, list[dict]] = {}
    new_anns: list[dict] = []
    masks_segm: dict[int, Any] = {}  # cleaned segmentation per output annotation
    dropped = 0
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not all(key in ann for key in ("id", "image_id", "bbox", "segmentation")):
            raise ConfigError(f"annotate-occlusion: annotation #{k} needs id, image_id, bbox and segmentation")
        if ann["image_id"] not in sizes:
            raise ConfigError(f"annotate-occlusion: annotation {ann['id']} refers to unknown image {ann['image_id']}")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ConfigError(f"annotate-occlusion: annotation {ann['id']} bbox must be [x, y, w, h], got {bbox!r}")
        h, w = sizes[ann["image_id"]]
        segm, n_bad = drop_degenerate_polygons(ann["segmentation"])
        dropped += n_bad
        validate_segmentation(segm, h, w, where=f"annotation {ann['id']} (image {ann['image_id']}) segmentation",
                              allow_empty=True)  # fmt: skip
        copy = dict(ann)
        masks_segm[id(copy)] = segm
        new_anns.append(copy)
        by_image.setdefault(ann["image_id"], []).append(copy)

    n_occluded = 0
    occluded_images: set[int] = set()
    for image_id, anns in by_image.items():
        h, w = sizes[image_id]
        masks = [segmentation_to_mask(masks_segm[id(a)], h, w, where=f"annotation {a['id']}") for a in anns]
        occluders = occluder_masks(masks, [a["bbox"] for a in anns], rule)
        for ann, occ in zip(anns, occluders):
            polygons = mask_to_polygons(occ) if occ is not None else []
            ann["bg_object_segmentation"] = polygons
            if polygons:
                n_occluded += 1
                occluded_images.add(image_id)
    out = dict(data)
    out["annotations"] = new_anns
    stats = {
        "images": len(data["images"]),
        "annotations": len(new_anns),
        "annotations_with_occluder": n_occluded,
        "images_with_occluder": len(occluded_images),
        "degenerate_polygons_ignored": dropped,
    }
    return out, stats


def annotate_file(in_json: Path, out_json: Path, rule: OcclusionRule = OcclusionRule()) -> dict:
    """Read a COCO instance JSON, add ``bg_object_segmentation`` by the rule, write it to ``out_json``; stats."""
    in_json, out_json = Path(in_json), Path(out_json)
    if not in_json.is_file():
        raise ConfigError(f"annotate-occlusion: {in_json} does not exist")
    try:
        data = json.loads(in_json.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"annotate-occlusion: {in_json} is not valid JSON ({exc})") from exc
    out, stats = annotate_coco(data, rule)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(out))
    return {"input": str(in_json), "output": str(out_json), **stats}
