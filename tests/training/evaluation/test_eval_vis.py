"""Video AP: hand-computed cases, OVIS occlusion buckets, agreement with COCOeval on single-frame videos, bad inputs."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from amodal.errors import ConfigError
from amodal.training.evaluation.cli import main
from amodal.training.evaluation.vis import (VideoAPConfig, evaluate_vis, occlusion_bucket, occlusion_score)

H, W = 24, 32


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def rle(mask: np.ndarray | None) -> dict | None:
    if mask is None:
        return None
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def video_gt(tracks: list[tuple[int, int, list]], length: int, num_videos: int = 1,
             occlusion: list[list | None] | None = None) -> dict:
    """tracks: (video_id, category_id, per-frame masks)."""
    anns = []
    for i, (vid, cat, masks) in enumerate(tracks):
        ann = {"id": i + 1, "video_id": vid, "category_id": cat, "iscrowd": 0,
               "segmentations": [rle(m) for m in masks],
               "areas": [None if m is None else int(m.sum()) for m in masks]}
        if occlusion is not None and occlusion[i] is not None:
            ann["occlusion"] = occlusion[i]
        anns.append(ann)
    return {"videos": [{"id": v, "width": W, "height": H, "length": length} for v in range(1, num_videos + 1)],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": anns}


def pred(vid: int, cat: int, masks: list, score: float) -> dict:
    return {"video_id": vid, "category_id": cat, "segmentations": [rle(m) for m in masks], "score": score}


A = [box(0, 10, 0, 10), box(1, 11, 1, 11), box(2, 12, 2, 12)]
B = [box(12, 20, 15, 30), None, box(12, 20, 14, 29)]


def test_perfect_predictions_give_one() -> None:
    gt = video_gt([(1, 1, A), (1, 2, B), (2, 1, B)], length=3, num_videos=2)
    preds = [pred(1, 1, A, 0.9), pred(1, 2, B, 0.8), pred(2, 1, B, 0.7)]
    result = evaluate_vis(gt, preds)
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "APs"):
        assert result[key] == pytest.approx(1.0), key
    assert result["APm"] == -1.0 and result["APl"] == -1.0  # no medium / large GT


def test_single_wrong_class_gives_zero() -> None:
    gt = video_gt([(1, 1, A)], length=3)
    result = evaluate_vis(gt, [pred(1, 2, A, 0.9)])
    assert result["AP"] == 0.0 and result["AR100"] == 0.0


def test_one_of_two_matched() -> None:
    gt = video_gt([(1, 1, A), (1, 1, B)], length=3)
    result = evaluate_vis(gt, [pred(1, 1, A, 0.9)])
    # recall 0.5 at precision 1: recall points 0.00 … 0.50 (51 of 101) have precision 1
    assert result["AP"] == pytest.approx(51 / 101)
    assert result["AR100"] == pytest.approx(0.5)
    # a higher-scored false positive first: precision 1/2 at recall 1/2
    result = evaluate_vis(gt, [pred(1, 1, A, 0.5), pred(1, 1, [box(20, 24, 0, 4)] * 3, 0.9)])
    assert result["AP"] == pytest.approx(51 / 101 * 0.5)
    assert result["AR1"] == 0.0 and result["AR10"] == pytest.approx(0.5)


def test_spatiotemporal_iou_counts_frames_with_one_mask_in_the_union() -> None:
    m = box(0, 10, 0, 10)
    gt = video_gt([(1, 1, [m, m, None])], length=3)
    # frame 0 identical, frame 1 missing in the prediction, frame 2 only in the prediction:
    # IoU = 100 / (100 + 100 + 100) = 1/3  → not matched at 0.5
    result = evaluate_vis(gt, [pred(1, 1, [m, None, m], 0.9)])
    assert result["AP50"] == 0.0
    # frame 1 missing only: IoU = 100 / 200 = 0.5 → matched at 0.50 only → AP = 1/10 of the thresholds
    result = evaluate_vis(gt, [pred(1, 1, [m, None, None], 0.9)])
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == 0.0
    assert result["AP"] == pytest.approx(0.1)


@pytest.mark.parametrize("labels, score, bucket", [
    (["no_occlusion"] * 4, 0.0, "light"),
    (["slight_occlusion"] * 3, 0.25, "light"),
    (["no_occlusion", "no_occlusion", "slight_occlusion", "severe_occlusion"], 0.5, "medium"),
    (["severe_occlusion", "no_occlusion", "no_occlusion"], 0.375, "medium"),
    (["severe_occlusion", "severe_occlusion", "no_occlusion"], 0.75, "heavy"),
    (["severe_occlusion", None, None, "slight_occlusion"], 0.75, "heavy"),
    (["severe_occlusion", None, "slight_occlusion", "no_occlusion"], 0.5, "medium"),
    ([None, None], None, None),
])
def test_occlusion_score_and_bucket(labels: list, score: float | None, bucket: str | None) -> None:
    got = occlusion_score(labels, "track")
    assert got == score
    assert occlusion_bucket(got) == bucket


def test_bad_occlusion_label_is_named() -> None:
    with pytest.raises(ConfigError, match="frame 1: occlusion label 'partial'"):
        occlusion_score(["no_occlusion", "partial"], "track 7")


def test_bucket_ap_ignores_ground_truth_outside_the_bucket() -> None:
    light = ["no_occlusion"] * 3
    heavy = ["severe_occlusion"] * 3
    gt = video_gt([(1, 1, A), (1, 1, B)], length=3, occlusion=[light, heavy])
    preds = [pred(1, 1, B, 0.8)]  # finds the heavy track only
    result = evaluate_vis(gt, preds)
    assert result["AP_heavy"] == pytest.approx(1.0)
    assert result["AP_light"] == 0.0  # the light track is missed; the match on the heavy one is ignored
    assert result["AP_medium"] == -1.0  # no GT in that bucket
    assert (result["num_gt_light"], result["num_gt_medium"], result["num_gt_heavy"]) == (1, 0, 1)
    # an unmatched higher-scored prediction stays a false positive in every bucket: precision 1/2 at recall 1
    far = [box(20, 24, 0, 4)] * 3
    result = evaluate_vis(gt, preds + [pred(1, 1, far, 0.9)])
    assert result["AP_heavy"] == pytest.approx(0.5)
    # a prediction matched to the light track is ignored (not a false positive) in the heavy bucket
    result = evaluate_vis(gt, preds + [pred(1, 1, A, 0.95)])
    assert result["AP_heavy"] == pytest.approx(1.0)
    assert result["AP_light"] == pytest.approx(1.0)


def test_matches_cocoeval_on_single_frame_videos() -> None:
    rng = np.random.default_rng(3)
    images, anns, dets = [], [], []
    gt_vis = {"videos": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}, {"id": 3}]}
    preds = []

    def random_box() -> np.ndarray:
        y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
        return box(y, y + int(rng.integers(3, 14)), x, x + int(rng.integers(3, 18)))

    for i in range(1, 16):
        images.append({"id": i, "height": H, "width": W})
        gt_vis["videos"].append({"id": i, "height": H, "width": W, "length": 1})
        for _ in range(int(rng.integers(0, 4))):
            m, cat, crowd = random_box(), int(rng.integers(1, 4)), int(rng.random() < 0.1)
            aid = len(anns) + 1
            anns.append({"id": aid, "image_id": i, "category_id": cat, "segmentation": rle(m),
                         "area": float(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle(m))],
                         "iscrowd": crowd})
            gt_vis["annotations"].append({"id": aid, "video_id": i, "category_id": cat, "segmentations": [rle(m)],
                                          "areas": [float(m.sum())], "iscrowd": crowd})
            for _ in range(int(rng.integers(0, 3))):
                d = np.roll(m, int(rng.integers(-2, 3)), axis=1) if rng.random() < 0.7 else random_box()
                score = float(np.round(rng.random(), 2))
                dcat = cat if rng.random() < 0.8 else int(rng.integers(1, 4))
                dets.append({"image_id": i, "category_id": dcat, "segmentation": rle(d), "score": score})
                preds.append({"video_id": i, "category_id": dcat, "segmentations": [rle(d)], "score": score})
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": anns, "categories": gt_vis["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    config = VideoAPConfig(area_ranges=(("all", 0, 1e10), ("small", 0, 32**2), ("medium", 32**2, 96**2),
                                        ("large", 96**2, 1e10)))
    result = evaluate_vis(gt_vis, preds, config)
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert 0.05 < result["AP"] < 0.95  # a non-trivial case
    for key, expected in zip(keys, coco_eval.stats):
        assert result[key] == pytest.approx(float(expected), abs=1e-12), key


@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(video_id=9), r"prediction 0: video_id 9 is not in the ground truth"),
    (lambda p: p.update(segmentations=p["segmentations"][:2]), r"prediction 0 \(video 1\): 2 segmentations for "
                                                               r"video 1 of 3 frames"),
    (lambda p: p["segmentations"].__setitem__(1, rle(np.ones((H + 1, W), np.uint8))),
     r"prediction 0 \(video 1\) frame 1: mask size \[25, 32\] does not match the image size \[24, 32\]"),
    (lambda p: p.update(category_id=5), r"prediction 0 \(video 1\): category_id 5 not in the categories"),
    (lambda p: p.pop("score"), r"prediction 0: missing keys \['score'\]"),
])
def test_bad_predictions_name_the_item(change, message: str) -> None:
    gt = video_gt([(1, 1, A)], length=3)
    p = pred(1, 1, A, 0.9)
    change(p)
    with pytest.raises(ConfigError, match=message):
        evaluate_vis(gt, [p])


def test_cli_end_to_end(tmp_path, capsys) -> None:
    gt = video_gt([(1, 1, A), (1, 1, B)], length=3, occlusion=[["no_occlusion"] * 3, ["severe_occlusion"] * 3])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps([pred(1, 1, A, 0.9)]))
    out = tmp_path / "res" / "vis.json"
    assert main(["vis", str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AP_heavy" in printed and "AP50" in printed
    result = json.loads(out.read_text())
    assert result["AP"] == pytest.approx(51 / 101)
    assert result["AP_light"] == pytest.approx(1.0) and result["AP_heavy"] == 0.0
    (tmp_path / "bad.json").write_text(json.dumps([pred(4, 1, A, 0.9)]))
    assert main(["vis", str(tmp_path / "gt.json"), str(tmp_path / "bad.json")]) == 1
    assert "video_id 4" in capsys.readouterr().err
