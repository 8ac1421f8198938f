"""Video amodal segmentation metrics of EoRaS: mIoU_full and mIoU_occ, in image coordinates.

Rules (as EoRaS's ``test_movi.py`` / ``model/loss.py`` compute them):

* masks are binarised with ``value > 0.5`` (PNG masks: non-zero = foreground);
* per frame, IoU = |P∩G| / (|P∪G| + 1e-6) in float32;
* ``miou_full`` = Σ over all evaluated frames (all tracks pooled) of the amodal IoU / number of frames; a frame where
  prediction and GT are both empty scores 0;
* ``miou_occ``: predicted occluded region = predicted amodal ∧ ¬GT visible, GT occluded region = GT amodal ∧ ¬GT
  visible; per-frame IoU as above; frames whose float32 IoU equals exactly 1.0 are left out of the sum *and* the
  count (EoRaS's ``iou != 1`` filter: this drops perfect occluded predictions of ≳ 32 px), while frames where both
  occluded regions are empty score 0 and *are* counted;
* ``miou_occ_gt_nonempty`` (ours, alongside): mean IoU of the occluded regions over the frames whose GT occluded
  region is non-empty, every such frame counted, no epsilon; frames without GT occlusion are left out.

-1 means undefined (no frame to average).  Folder evaluation (MOVi layout) scores, like EoRaS, the frames in which
the object is visible (non-empty ``segmentation_full == obj+1``); GT amodal ``segmentation_{obj}_%05d.png`` and
predicted PNGs of the same names are foreground where non-zero.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from amodal.errors import ConfigError

EORAS_EPS = np.float32(1e-6)
_FULL_RE = re.compile(r"^segmentation_full_(\d{5})\.png$")
_AMODAL_RE = re.compile(r"^segmentation_(\d+)_(\d{5})\.png$")


def eoras_frame_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """float32[T] IoU per frame of bool[T, H, W] masks, EoRaS formula I / (U + 1e-6) in float32."""
    inter = np.logical_and(pred, gt).sum(axis=(-2, -1)).astype(np.float32)
    union = np.logical_or(pred, gt).sum(axis=(-2, -1)).astype(np.float32)
    return inter / (union + EORAS_EPS)


def _binary(masks: np.ndarray, name: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ConfigError(f"{name} must be [T, H, W], got shape {list(masks.shape)}")
    return masks > 0.5


@dataclass
class _Sums:
    full: float = 0.0
    frames: int = 0
    occ: float = 0.0
    occ_frames: int = 0
    occ_nonempty: float = 0.0
    occ_nonempty_frames: int = 0
    tracks: int = 0


class AmodalEvaluator:
    """EoRaS amodal metrics over object tracks: ``reset()``, ``process(...)`` per track, ``evaluate()``."""

    def __init__(self) -> None:
        self._sums = _Sums()

    def reset(self) -> None:
        self._sums = _Sums()

    def process(self, pred_amodal: np.ndarray, gt_amodal: np.ndarray, gt_visible: np.ndarray,
                name: str = "track") -> None:
        """Add one track: ``pred_amodal``, ``gt_amodal``, ``gt_visible`` of shape [T, H, W] (foreground > 0.5),
        image coordinates; every given frame is scored."""
        pred = _binary(pred_amodal, f"{name}: pred_amodal")
        gt = _binary(gt_amodal, f"{name}: gt_amodal")
        visible = _binary(gt_visible, f"{name}: gt_visible")
        if not pred.shape == gt.shape == visible.shape:
            raise ConfigError(f"{name}: shapes differ: pred_amodal {list(pred.shape)}, gt_amodal {list(gt.shape)}, "
                              f"gt_visible {list(visible.shape)}")
        s = self._sums
        s.tracks += 1
        full = eoras_frame_iou(pred, gt)
        s.full += float(full.astype(np.float64).sum())
        s.frames += len(full)
        pred_occ = pred & ~visible
        gt_occ = gt & ~visible
        occ = eoras_frame_iou(pred_occ, gt_occ)
        kept = occ != np.float32(1.0)
        s.occ += float(occ[kept].astype(np.float64).sum())
        s.occ_frames += int(kept.sum())
        inter = np.logical_and(pred_occ, gt_occ).sum(axis=(1, 2)).astype(np.float64)
        union = np.logical_or(pred_occ, gt_occ).sum(axis=(1, 2)).astype(np.float64)
        nonempty = gt_occ.any(axis=(1, 2))
        s.occ_nonempty += float((inter[nonempty] / union[nonempty]).sum())
        s.occ_nonempty_frames += int(nonempty.sum())

    def evaluate(self) -> dict[str, Any]:
        """``miou_full``, ``miou_occ`` (EoRaS rules), ``miou_occ_gt_nonempty`` and the frame counts."""
        s = self._sums
        return {
            "miou_full": s.full / s.frames if s.frames else -1.0,
            "miou_occ": s.occ / s.occ_frames if s.occ_frames else -1.0,
            "miou_occ_gt_nonempty": s.occ_nonempty / s.occ_nonempty_frames if s.occ_nonempty_frames else -1.0,
            "num_tracks": s.tracks,
            "num_frames": s.frames,
            "num_frames_occ": s.occ_frames,
            "num_frames_occ_gt_nonempty": s.occ_nonempty_frames,
        }


def evaluate_amodal(tracks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """One call over ``[(pred_amodal, gt_amodal, gt_visible), ...]``, each [T, H, W]."""
    evaluator = AmodalEvaluator()
    for i, (pred, gt, visible) in enumerate(tracks):
        evaluator.process(pred, gt, visible, name=f"track {i}")
    return evaluator.evaluate()


def _read_png(path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(f"missing mask file {path}")
    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., 0]
    if shape is not None and array.shape != shape:
        raise ConfigError(f"{path}: mask size {list(array.shape)} does not match the ground truth {list(shape)}")
    return array


def _video_dirs(gt_dir: Path) -> list[Path]:
    if any(_FULL_RE.match(p.name) for p in gt_dir.iterdir()):
        return [gt_dir]
    videos = [d for d in sorted(gt_dir.iterdir()) if d.is_dir() and any(_FULL_RE.match(p.name) for p in d.iterdir())]
    if not videos:
        raise ConfigError(f"{gt_dir}: no segmentation_full_%05d.png here nor in its sub-folders (MOVi layout)")
    return videos


def evaluate_amodal_dirs(gt_dir: str | Path, pred_dir: str | Path) -> dict[str, Any]:
    """EoRaS metrics of predicted amodal PNGs (``PRED_DIR[/video]/segmentation_{obj}_%05d.png``) against a MOVi-layout
    GT folder (one video, or one sub-folder per video)."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for folder, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise ConfigError(f"{what} folder not found: {folder}")
    evaluator = AmodalEvaluator()
    for video in _video_dirs(gt_dir):
        pred_video = pred_dir if video == gt_dir else pred_dir / video.name
        frames = sorted(int(m.group(1)) for p in video.iterdir() if (m := _FULL_RE.match(p.name)))
        objects = sorted({int(m.group(1)) for p in video.iterdir() if (m := _AMODAL_RE.match(p.name))})
        full = {t: _read_png(video / f"segmentation_full_{t:05d}.png") for t in frames}
        for obj in objects:
            visible, gt, pred = [], [], []
            for t in frames:
                vis = full[t] == obj + 1
                if not vis.any():
                    continue
                visible.append(vis)
                gt.append(_read_png(video / f"segmentation_{obj}_{t:05d}.png", vis.shape) != 0)
                pred.append(_read_png(pred_video / f"segmentation_{obj}_{t:05d}.png", vis.shape) != 0)
            if visible:
                evaluator.process(np.stack(pred), np.stack(gt), np.stack(visible), name=f"{video.name} object {obj}")
    result = evaluator.evaluate()
    if result["num_tracks"] == 0:
        raise ConfigError(f"{gt_dir}: no object is visible in any frame; nothing to evaluate")
    return result
