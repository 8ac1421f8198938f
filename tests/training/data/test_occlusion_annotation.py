"""The §4 occluder rule (Occ's convert_occlusion_annotation) on hand-built instance sets."""
from __future__ import annotations

import json

import numpy as np
import pytest

from amodal.errors import ConfigError
from amodal.training.data.coco import mask_to_rle, segmentation_to_mask
from amodal.training.data.occlusion_annotation import (
    OcclusionRule,
    annotate_coco,
    annotate_file,
    box_iou_inclusive,
    occluder_masks,
)

H, W = 60, 80


def rect(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y : y + h, x : x + w] = True
    return m


def box_of(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def xyxy(b: list[float]) -> tuple[float, float, float, float]:
    return (b[0], b[1], b[0] + b[2], b[1] + b[3])


def square_poly(x: int, y: int, w: int, h: int) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def test_overlapping_instances_get_each_other_inside_their_box():
    a, b = rect(10, 10, 20, 20), rect(20, 15, 20, 20)
    occ = occluder_masks([a, b], [box_of(a), box_of(b)])
    # a's occluder: b's pixels inside a's box [10:30, 10:30] → x 20..29, y 15..29
    assert occ[0] is not None and occ[0].sum() == 10 * 15
    assert np.array_equal(occ[0], b & rect(10, 10, 20, 20))
    assert occ[1] is not None and np.array_equal(occ[1], a & rect(20, 15, 20, 20))


def test_iou_threshold_uses_inclusive_boxes():
    # IoU with the +1 convention: just below and just above 0.05
    assert box_iou_inclusive((0, 0, 9, 9), (9, 0, 18, 9)) == pytest.approx(10 / 190)
    assert box_iou_inclusive((0, 0, 9, 9), (0, 0, 9, 9)) == pytest.approx(1.0)
    a = rect(0, 0, 40, 40)
    below = rect(38, 0, 40, 40)  # overlap 2×40: IoU (incl.) = 2·41 / (2·41² − 2·41)... ≈ 0.025
    above = rect(34, 0, 40, 40)  # overlap 6×40: IoU ≈ 0.08
    iou_below = box_iou_inclusive((0, 0, 40, 40), (38, 0, 78, 40))
    iou_above = box_iou_inclusive((0, 0, 40, 40), (34, 0, 74, 40))
    assert iou_below < 0.05 < iou_above
    assert occluder_masks([a, below], [box_of(a), box_of(below)])[0] is None
    got = occluder_masks([a, above], [box_of(a), box_of(above)])[0]
    assert got is not None and got.sum() == 6 * 40


def test_twenty_pixel_threshold_is_strict():
    a = rect(0, 0, 30, 30)
    # b overlaps a's box by exactly 20 px (a 4×5 corner); boxes overlap enough (IoU > 0.05) through b's size
    b20 = rect(26, 25, 30, 30)
    b21 = rect(26, 24, 30, 30) & ~rect(26, 24, 3, 1)  # 4×6 corner minus 3 px = 21 px inside a's box
    inside20 = (b20 & rect(0, 0, 30, 30)).sum()
    inside21 = (b21 & rect(0, 0, 30, 30)).sum()
    assert (inside20, inside21) == (20, 21)
    assert box_iou_inclusive((0, 0, 30, 30), (26, 25, 56, 55)) < 0.05  # IoU too small: relax the rule to test px
    rule = OcclusionRule(iou_threshold=0.0)
    assert occluder_masks([a, b20], [box_of(a), box_of(b20)], rule)[0] is None
    got = occluder_masks([a, b21], [box_of(a), box_of(b21)], rule)[0]
    assert got is not None and got.sum() == 21


def test_nothing_inside_the_box_or_not_touching_gives_none():
    # an L-shaped partner whose box overlaps a's box but whose pixels stay outside it
    a = rect(20, 20, 20, 20)
    ell = rect(10, 5, 40, 3) | rect(47, 5, 3, 45)
    assert box_iou_inclusive(xyxy(box_of(a)), xyxy(box_of(ell))) > 0.05
    assert occluder_masks([a, ell], [box_of(a), box_of(ell)])[0] is None
    # a ring: the partner fills a's box but a's own pixels are a small blob elsewhere in the box → no touch
    blob = rect(20, 20, 3, 3) | rect(36, 36, 4, 4)
    partner = rect(26, 26, 8, 8)
    assert occluder_masks([blob, partner], [box_of(blob), box_of(partner)])[0] is None
    kept = occluder_masks([blob, partner], [box_of(blob), box_of(partner)], OcclusionRule(require_overlap_with_mask=False))
    assert kept[0] is not None and kept[0].sum() == 64


def _coco(anns: list[dict]) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": anns,
    }


def test_annotate_file_writes_polygons_and_empty_lists(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0,
         "segmentation": square_poly(10, 10, 20, 20)},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 15, 20, 20], "area": 400, "iscrowd": 0,
         "segmentation": mask_to_rle(rect(20, 15, 20, 20))},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [60, 40, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": square_poly(60, 40, 10, 10)},
    ]  # fmt: skip
    src, dst = tmp_path / "in.json", tmp_path / "out" / "occ.json"
    src.write_text(json.dumps(_coco(anns)))
    stats = annotate_file(src, dst)
    assert stats["annotations_with_occluder"] == 2 and stats["images_with_occluder"] == 1
    out = {a["id"]: a for a in json.loads(dst.read_text())["annotations"]}
    assert out[3]["bg_object_segmentation"] == []
    occ1 = segmentation_to_mask(out[1]["bg_object_segmentation"], H, W)
    assert np.array_equal(occ1, rect(20, 15, 20, 20) & rect(10, 10, 20, 20))
    assert all(len(p) % 2 == 0 and len(p) >= 6 for p in out[1]["bg_object_segmentation"])
    assert out[1]["area"] == 400  # left as it was


def test_annotate_rejects_malformed_input(tmp_path):
    bad_image = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": square_poly(0, 0, 1, 1)}]
    with pytest.raises(ConfigError, match="unknown image 7"):
        annotate_coco(_coco(bad_image))
    bad_poly = [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": [[1, 2, "a", 4, 5, 6]]}]
    with pytest.raises(ConfigError, match="annotation 5"):
        annotate_coco(_coco(bad_poly))
    # degenerate polygons (< 3 points) are ignored as Occ does: that instance has an empty mask
    tiny = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "segmentation": [[1, 2, 3, 4]]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [12, 10, 20, 20], "segmentation": square_poly(12, 10, 20, 20)}]
    out, stats = annotate_coco(_coco(tiny))
    assert stats["degenerate_polygons_ignored"] == 1
    assert [a["bg_object_segmentation"] for a in out["annotations"]] == [[], []]  # nothing to touch / be touched by
    out, _ = annotate_coco(_coco(tiny), OcclusionRule(require_overlap_with_mask=False))
    assert segmentation_to_mask(out["annotations"][0]["bg_object_segmentation"], H, W).sum() == 18 * 20
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        annotate_file(path, tmp_path / "x.json")
    with pytest.raises(ConfigError, match="does not exist"):
        annotate_file(tmp_path / "missing.json", tmp_path / "x.json")
