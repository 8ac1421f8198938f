"""COCO AP through pycocotools and the occluded-only AP (non-occluded GT ignored)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amodal.errors import ConfigError
from amodal.training.evaluation.cli import main
from amodal.training.evaluation.coco import COCOEvaluator, evaluate_coco, is_occluded

H, W = 40, 40


def rle(y0: int, y1: int, x0: int, x1: int) -> dict:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": r["size"], "counts": r["counts"].decode()}


BOXES = {1: (0, 10, 0, 10), 2: (20, 30, 20, 35)}  # annotation id → y0, y1, x0, x1
OCCLUDER = [[20.0, 20.0, 25.0, 20.0, 25.0, 25.0, 20.0, 25.0]]


def ground_truth(occluder_on: int = 2) -> dict:
    anns = []
    for aid, (y0, y1, x0, x1) in BOXES.items():
        anns.append({"id": aid, "image_id": 1, "category_id": 1, "segmentation": rle(y0, y1, x0, x1),
                     "area": float((y1 - y0) * (x1 - x0)), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
                     "bg_object_segmentation": OCCLUDER if aid == occluder_on else []})
    return {"images": [{"id": 1, "height": H, "width": W, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "knife"}, {"id": 2, "name": "gun"}], "annotations": anns}


def det(aid: int, score: float, category: int = 1, shift: int = 0) -> dict:
    y0, y1, x0, x1 = BOXES[aid]
    return {"image_id": 1, "category_id": category, "segmentation": rle(y0, y1, x0 + shift, x1 + shift),
            "bbox": [x0 + shift, y0, x1 - x0, y1 - y0], "score": score}


FAR = {"image_id": 1, "category_id": 1, "segmentation": rle(32, 40, 0, 8), "bbox": [0, 32, 8, 8], "score": 0.99}


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_perfect_predictions_give_one(iou_type: str) -> None:
    result = evaluate_coco(ground_truth(), [det(1, 0.9), det(2, 0.8)], iou_type=iou_type)
    assert result["AP"] == pytest.approx(1.0) and result["AP50"] == pytest.approx(1.0)
    assert result["occluded/AP"] == pytest.approx(1.0)
    assert result["num_gt_occluded"] == 1


def test_wrong_class_gives_zero_and_no_predictions_give_zero() -> None:
    assert evaluate_coco(ground_truth(), [det(1, 0.9, category=2)])["AP"] == 0.0
    result = evaluate_coco(ground_truth(), [])
    assert result["AP"] == 0.0 and result["occluded/AP"] == 0.0


def test_one_of_two_matched() -> None:
    result = evaluate_coco(ground_truth(), [det(1, 0.9)])
    assert result["AP"] == pytest.approx(51 / 101)
    assert result["AR100"] == pytest.approx(0.5)


def test_occluded_only_ap_ignores_non_occluded_ground_truth() -> None:
    gt = ground_truth(occluder_on=2)
    # only the non-occluded instance found: its match is ignored, the occluded one is missed
    assert evaluate_coco(gt, [det(1, 0.9)])["occluded/AP"] == 0.0
    # only the occluded one found
    assert evaluate_coco(gt, [det(2, 0.5)])["occluded/AP"] == pytest.approx(1.0)
    # a higher-scored detection of the non-occluded instance is neither TP nor FP
    assert evaluate_coco(gt, [det(2, 0.5), det(1, 0.9)])["occluded/AP"] == pytest.approx(1.0)
    # an unmatched detection is still a false positive: precision 1/2 at recall 1
    result = evaluate_coco(gt, [det(2, 0.5), FAR])
    assert result["occluded/AP"] == pytest.approx(0.5)
    assert result["AP"] == pytest.approx(51 / 101 * 0.5)


def test_occlusion_flag_and_ids() -> None:
    gt = ground_truth(occluder_on=0)
    for ann in gt["annotations"]:
        ann["occluded"] = ann["id"] == 1
    assert evaluate_coco(gt, [det(1, 0.9)], occluded_key="occluded")["occluded/AP"] == pytest.approx(1.0)
    no_occlusion = evaluate_coco(gt, [det(1, 0.9)])
    assert no_occlusion["num_gt_occluded"] == 0 and no_occlusion["occluded/AP"] == -1.0
    evaluator = COCOEvaluator(gt, occluded_ids=[2])
    evaluator.process([det(2, 0.3)])
    assert evaluator.evaluate()["occluded/AP"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=r"occluded_ids \[7\]"):
        COCOEvaluator(gt, occluded_ids=[7])


def test_is_occluded() -> None:
    assert is_occluded({"bg_object_segmentation": OCCLUDER})
    assert not is_occluded({"bg_object_segmentation": []})
    assert not is_occluded({})
    assert is_occluded({"occ": 1}, occluded_key="occ")


def test_bad_predictions_name_the_item() -> None:
    with pytest.raises(ConfigError, match="prediction 1: image_id 5 is not in the ground truth"):
        evaluate_coco(ground_truth(), [det(1, 0.9), {**det(2, 0.5), "image_id": 5}])
    bad_size = {**det(1, 0.9), "segmentation": {"size": [10, 10], "counts": "0"}}
    with pytest.raises(ConfigError, match=r"prediction 0: mask size \[10, 10\] does not match image 1"):
        evaluate_coco(ground_truth(), [bad_size])
    with pytest.raises(ConfigError, match=r"prediction 0: missing keys \['bbox'\]"):
        evaluate_coco(ground_truth(), [{"image_id": 1, "category_id": 1, "score": 1.0}], iou_type="bbox")


def test_cli_end_to_end(tmp_path, capsys) -> None:
    (tmp_path / "gt.json").write_text(json.dumps(ground_truth()))
    (tmp_path / "dt.json").write_text(json.dumps([det(2, 0.5), FAR]))
    out = tmp_path / "coco.json"
    assert main(["coco", str(tmp_path / "gt.json"), str(tmp_path / "dt.json"), "--iou-type", "bbox",
                 "--out", str(out)]) == 0
    assert "occluded/AP" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["iou_type"] == "bbox" and result["occluded/AP"] == pytest.approx(0.5)
    assert main(["coco", str(tmp_path / "missing.json"), str(tmp_path / "dt.json")]) == 1
    assert "not found" in capsys.readouterr().err
