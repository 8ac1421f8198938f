"""EoRaS amodal metrics: hand-computed frames, the empty / perfect occluded-region rules, MOVi-layout folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amodal.errors import ConfigError
from amodal.training.evaluation.amodal import AmodalEvaluator, eoras_frame_iou, evaluate_amodal
from amodal.training.evaluation.cli import main


def rows(lo: int, hi: int, size: int = 10) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[lo:hi] = True
    return m


def hand_track() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 frames of 10×10: (pred amodal, GT amodal, GT visible)."""
    visible = np.stack([rows(0, 5), rows(0, 5), rows(0, 5)])
    gt = np.stack([rows(0, 10), rows(0, 5), rows(0, 10)])
    pred = np.stack([rows(0, 8), rows(0, 5), rows(0, 10)])
    return pred, gt, visible


def test_hand_computed_track() -> None:
    result = evaluate_amodal([hand_track()])
    # full: 80/100, 50/50, 100/100
    assert result["miou_full"] == pytest.approx((0.8 + 1 + 1) / 3, abs=1e-6)
    # occluded: frame 0 = 30/50; frame 1 both empty → 0, counted; frame 2 perfect → IoU exactly 1 → dropped (EoRaS)
    assert result["miou_occ"] == pytest.approx(0.3, abs=1e-6)
    assert result["num_frames_occ"] == 2
    # our rule: frames with a non-empty GT occluded region, all counted
    assert result["miou_occ_gt_nonempty"] == pytest.approx((0.6 + 1.0) / 2)
    assert result["num_frames_occ_gt_nonempty"] == 2
    assert result["num_frames"] == 3 and result["num_tracks"] == 1


def test_frames_pool_over_tracks_and_the_predicted_occlusion_excludes_gt_visible() -> None:
    pred, gt, visible = hand_track()
    evaluator = AmodalEvaluator()
    evaluator.process(pred, gt, visible)
    # a second one-frame track whose prediction covers the visible part only: occluded IoU 0
    evaluator.process(rows(0, 5)[None], rows(0, 10)[None], rows(0, 5)[None])
    result = evaluator.evaluate()
    assert result["miou_full"] == pytest.approx((0.8 + 1 + 1 + 0.5) / 4, abs=1e-6)
    assert result["miou_occ"] == pytest.approx((0.6 + 0 + 0) / 3, abs=1e-6)
    evaluator.reset()
    assert evaluator.evaluate()["miou_full"] == -1.0


def test_eoras_iou_uses_float32_epsilon() -> None:
    small = np.zeros((1, 4, 4), dtype=bool)
    small[0, 0, 0] = True
    # one pixel: 1 / (1 + 1e-6) < 1 in float32, so a perfect one-pixel region is kept; both empty → 0
    assert eoras_frame_iou(small, small)[0] < 1.0
    assert eoras_frame_iou(~np.ones_like(small), ~np.ones_like(small))[0] == 0.0


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(ConfigError, match=r"track 0: shapes differ: pred_amodal \[3, 10, 10\], gt_amodal \[2, 10"):
        pred, gt, visible = hand_track()
        evaluate_amodal([(pred, gt[:2], visible)])


def write_movi(video: Path, pred_dir: Path, size: int = 12) -> None:
    """Two objects over 3 frames; object 1 is invisible in frame 2 (no prediction written there)."""
    video.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    for t in range(3):
        full = np.zeros((size, size), dtype=np.uint8)
        full[0:4, :] = 1  # object 0 visible rows 0-3
        if t < 2:
            full[8:12, 0:6] = 2  # object 1 visible
        Image.fromarray(full).save(video / f"segmentation_full_{t:05d}.png")
        amodal0 = np.zeros((size, size), dtype=np.uint8)
        amodal0[0:8, :] = 1  # object 0 amodal rows 0-7 (rows 4-7 hidden)
        Image.fromarray(amodal0).save(video / f"segmentation_0_{t:05d}.png")
        amodal1 = np.zeros((size, size), dtype=np.uint8)
        amodal1[8:12, 0:6] = 2
        Image.fromarray(amodal1).save(video / f"segmentation_1_{t:05d}.png")
        p0 = np.zeros((size, size), dtype=np.uint8)
        p0[0:6, :] = 255  # predicts rows 0-5: full IoU 72/96, occluded IoU 24/48
        Image.fromarray(p0).save(pred_dir / f"segmentation_0_{t:05d}.png")
        if t < 2:
            Image.fromarray((amodal1 > 0).astype(np.uint8) * 255).save(pred_dir / f"segmentation_1_{t:05d}.png")


def test_cli_over_movi_folders(tmp_path, capsys) -> None:
    write_movi(tmp_path / "gt" / "video_a", tmp_path / "pred" / "video_a")
    out = tmp_path / "amodal.json"
    assert main(["amodal", str(tmp_path / "gt"), str(tmp_path / "pred"), "--out", str(out)]) == 0
    assert "miou_occ" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["num_tracks"] == 2 and result["num_frames"] == 5  # object 1 scored in its 2 visible frames
    assert result["miou_full"] == pytest.approx((3 * 72 / 96 + 2 * 1.0) / 5, abs=1e-6)
    # object 0: 3 frames at 0.5; object 1: no occlusion, empty vs empty → 0, counted (EoRaS)
    assert result["miou_occ"] == pytest.approx(3 * 0.5 / 5, abs=1e-6)
    assert result["miou_occ_gt_nonempty"] == pytest.approx(0.5)
    # a single video folder works too
    assert main(["amodal", str(tmp_path / "gt" / "video_a"), str(tmp_path / "pred" / "video_a")]) == 0
    capsys.readouterr()
    (tmp_path / "pred" / "video_a" / "segmentation_1_00001.png").unlink()
    assert main(["amodal", str(tmp_path / "gt"), str(tmp_path / "pred")]) == 1
    err = capsys.readouterr().err
    assert "missing mask file" in err and "segmentation_1_00001.png" in err


def test_folder_size_mismatch_is_named(tmp_path) -> None:
    write_movi(tmp_path / "gt", tmp_path / "pred")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "pred" / "segmentation_0_00002.png")
    from amodal.training.evaluation.amodal import evaluate_amodal_dirs

    with pytest.raises(ConfigError, match=r"segmentation_0_00002.png: mask size \[5, 5\] does not match"):
        evaluate_amodal_dirs(tmp_path / "gt", tmp_path / "pred")
