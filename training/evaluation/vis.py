"""Video instance segmentation AP (YouTube-VIS / OVIS protocol) with the OVIS occlusion buckets.

Ground truth: a YouTube-VIS/OVIS JSON dict (``videos{id,width,height,length|file_names}``, ``categories{id}``,
``annotations{id,video_id,category_id,iscrowd,segmentations[T] (RLE|polygon|None),areas[T],occlusion[T]}``).
Predictions: ``[{video_id, category_id, segmentations[T] (RLE|None), score}]``.

Rules (follow the OVIS fork of cocoapi, ``oviseval.py``):

* spatio-temporal IoU of two tracks = Σₜ|dₜ∩gₜ| / Σₜ|dₜ∪gₜ|; a frame where only one has a mask adds its area to the
  union, a frame where neither has one adds nothing; 0 when the union is empty;
* per (video, category) the top ``max_dets[-1]`` predictions by score; COCO greedy matching (see ``matching``) at IoU
  .50:.05:.95; 101 recall points; AR1/AR10/AR100 with at most 1/10/100 predictions per (video, category);
* area ranges on a track's mean area over the frames where its mask is non-empty (the GT ``areas`` field when
  given): small ≤ 128², medium 128²…256², large ≥ 256² (closed intervals, as COCO);
* occlusion score of a GT track: its per-frame labels no/slight/severe → 0 / 0.25 / 0.75 (frames without a label
  skipped), mean of the top ⌈n/2⌉ values; buckets light ≤ 0.25 < medium ≤ 0.5 < heavy (disjoint: the fork's
  closed ranges put a score of exactly 0.25 or 0.5 in two buckets, ours in the lower one, as the OVIS paper
  defines them);
* bucket AP (``AP_light`` …): GT tracks outside the bucket, and tracks without occlusion labels, are *ignored* — a
  prediction matched to one is neither TP nor FP — while unmatched predictions stay false positives in every bucket
  (predictions carry no occlusion score), exactly as the fork does; -1 when the bucket holds no GT track;
* iscrowd GT tracks are ignored and may be matched many times (COCO rules).

All metrics are fractions in [0, 1]; -1 means undefined (no ground truth in that subset), as in pycocotools.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from amodal.errors import ConfigError
from amodal.training.evaluation.common import Rle, rle_area, to_rle
from amodal.training.evaluation.matching import GroupMatch, accumulate, greedy_match, summarize

OCCLUSION_LABEL_SCORE: dict[str, float] = {"no_occlusion": 0.0, "slight_occlusion": 0.25, "severe_occlusion": 0.75}
OCCLUSION_BUCKETS: tuple[str, ...] = ("light", "medium", "heavy")
VIS_AREA_RANGES: tuple[tuple[str, float, float], ...] = (
    ("all", 0.0, 1e10),
    ("small", 0.0, 128.0**2),
    ("medium", 128.0**2, 256.0**2),
    ("large", 256.0**2, 1e10),
)


@dataclass(frozen=True)
class VideoAPConfig:
    """Parameters of the video AP evaluation (defaults: the YouTube-VIS / OVIS protocol).

    ``area_ranges``: (name, min_area_px, max_area_px) closed intervals; the first must be named "all".
    """

    iou_thresholds: tuple[float, ...] = tuple(float(x) for x in np.linspace(0.5, 0.95, 10))
    recall_points: int = 101
    max_dets: tuple[int, ...] = (1, 10, 100)
    area_ranges: tuple[tuple[str, float, float], ...] = VIS_AREA_RANGES

    def __post_init__(self) -> None:
        if not self.iou_thresholds or any(not 0.0 < t <= 1.0 for t in self.iou_thresholds):
            raise ConfigError(f"iou_thresholds must be non-empty values in (0, 1], got {self.iou_thresholds}")
        if self.recall_points < 2:
            raise ConfigError(f"recall_points must be >= 2, got {self.recall_points}")
        if not self.max_dets or list(self.max_dets) != sorted(self.max_dets) or self.max_dets[0] < 1:
            raise ConfigError(f"max_dets must be increasing positive ints, got {self.max_dets}")
        if not self.area_ranges or self.area_ranges[0][0] != "all":
            raise ConfigError(f"area_ranges must start with the 'all' range, got {self.area_ranges}")
        for name, low, high in self.area_ranges:
            if low > high:
                raise ConfigError(f"area range {name!r}: min {low} > max {high}")


def occlusion_score(labels: list[str | None], item: str) -> float | None:
    """OVIS track occlusion score: labels → 0/0.25/0.75, mean of the top ⌈n/2⌉; None when no frame is labelled."""
    values = []
    for t, label in enumerate(labels):
        if label is None:
            continue
        if label not in OCCLUSION_LABEL_SCORE:
            raise ConfigError(f"{item} frame {t}: occlusion label {label!r} not in {sorted(OCCLUSION_LABEL_SCORE)}")
        values.append(OCCLUSION_LABEL_SCORE[label])
    if not values:
        return None
    values.sort()
    top = values[-math.ceil(len(values) / 2):]
    return sum(top) / len(top)


def occlusion_bucket(score: float | None) -> str | None:
    """'light' (≤ 0.25), 'medium' (≤ 0.5), 'heavy' (> 0.5), or None for an unlabelled track."""
    if score is None:
        return None
    if score <= 0.25:
        return "light"
    if score <= 0.5:
        return "medium"
    return "heavy"


@dataclass
class _Track:
    """One GT or predicted track: per-frame RLE (None where absent), mean area and, for GT, occlusion bucket."""

    video_id: int
    category_id: int
    rles: list[Rle | None]
    mean_area: float
    score: float = 1.0
    crowd: bool = False
    bucket: str | None = None
    frame_areas: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _mean_nonzero(areas: list[float | None]) -> float:
    values = [float(a) for a in areas if a]
    return float(np.mean(values)) if values else 0.0


class _Video:
    def __init__(self, video: dict[str, Any], index: int) -> None:
        item = f"ground-truth video #{index}"
        for key in ("id", "width", "height"):
            if key not in video:
                raise ConfigError(f"{item}: missing key {key!r}")
        self.id = int(video["id"])
        self.height = int(video["height"])
        self.width = int(video["width"])
        if "length" in video:
            self.length = int(video["length"])
        elif "file_names" in video:
            self.length = len(video["file_names"])
        else:
            raise ConfigError(f"ground-truth video {self.id}: needs 'length' or 'file_names'")


def _read_rles(segs: Any, video: _Video, item: str) -> list[Rle | None]:
    if not isinstance(segs, list):
        raise ConfigError(f"{item}: 'segmentations' must be a list of per-frame masks, got {type(segs).__name__}")
    if len(segs) != video.length:
        raise ConfigError(
            f"{item}: {len(segs)} segmentations for video {video.id} of {video.length} frames")
    return [None if s is None else to_rle(s, video.height, video.width, f"{item} frame {t}")
            for t, s in enumerate(segs)]


def parse_ground_truth(gt: dict[str, Any]) -> tuple[dict[int, _Video], list[int], list[_Track]]:
    """Videos by id, sorted category ids and GT tracks of a YouTube-VIS/OVIS dict."""
    for key in ("videos", "annotations", "categories"):
        if key not in gt:
            raise ConfigError(f"ground truth: missing top-level key {key!r}")
    videos: dict[int, _Video] = {}
    for i, v in enumerate(gt["videos"]):
        video = _Video(v, i)
        videos[video.id] = video
    category_ids = sorted(int(c["id"]) for c in gt["categories"])
    tracks = []
    for i, ann in enumerate(gt["annotations"]):
        item = f"ground-truth annotation {ann.get('id', f'#{i}')}"
        vid = int(ann.get("video_id", -1))
        if vid not in videos:
            raise ConfigError(f"{item}: video_id {vid} is not among the videos")
        cat = int(ann.get("category_id", -1))
        if cat not in category_ids:
            raise ConfigError(f"{item}: category_id {cat} is not among the categories {category_ids}")
        rles = _read_rles(ann.get("segmentations"), videos[vid], item)
        frame_areas = np.array([rle_area(r) if r is not None else 0 for r in rles], dtype=np.float64)
        areas = ann.get("areas")
        mean_area = _mean_nonzero(areas) if isinstance(areas, list) else _mean_nonzero(list(frame_areas))
        occlusion = ann.get("occlusion")
        score = occlusion_score(occlusion, item) if isinstance(occlusion, list) else None
        tracks.append(_Track(vid, cat, rles, mean_area, crowd=bool(ann.get("iscrowd", 0)),
                             bucket=occlusion_bucket(score), frame_areas=frame_areas))
    return videos, category_ids, tracks


def parse_predictions(
    predictions: list[dict[str, Any]], videos: dict[int, _Video], category_ids: list[int]
) -> list[_Track]:
    """Validated predicted tracks; errors name the prediction index, its video and frame."""
    if not isinstance(predictions, list):
        raise ConfigError(f"predictions must be a list of dicts, got {type(predictions).__name__}")
    known = set(category_ids)
    tracks = []
    for i, pred in enumerate(predictions):
        if not isinstance(pred, dict):
            raise ConfigError(f"prediction {i}: must be a dict, got {type(pred).__name__}")
        missing = [k for k in ("video_id", "category_id", "segmentations", "score") if k not in pred]
        if missing:
            raise ConfigError(f"prediction {i}: missing keys {missing}")
        vid = int(pred["video_id"])
        if vid not in videos:
            shown = sorted(videos)[:10]
            raise ConfigError(f"prediction {i}: video_id {vid} is not in the ground truth (videos {shown}...)")
        cat = int(pred["category_id"])
        if cat not in known:
            raise ConfigError(f"prediction {i} (video {vid}): category_id {cat} not in the categories {category_ids}")
        score = float(pred["score"])
        if not math.isfinite(score):
            raise ConfigError(f"prediction {i} (video {vid}): score {pred['score']!r} is not a finite number")
        rles = _read_rles(pred["segmentations"], videos[vid], f"prediction {i} (video {vid})")
        frame_areas = np.array([rle_area(r) if r is not None else 0 for r in rles], dtype=np.float64)
        tracks.append(_Track(vid, cat, rles, _mean_nonzero(list(frame_areas)), score=score,
                             frame_areas=frame_areas))
    return tracks


def spatiotemporal_iou(dts: list[_Track], gts: list[_Track]) -> np.ndarray:
    """float[D, G] spatio-temporal IoU Σₜ|dₜ∩gₜ| / Σₜ|dₜ∪gₜ| (0 where the union is empty)."""
    num_dt, num_gt = len(dts), len(gts)
    if num_dt == 0 or num_gt == 0:
        return np.zeros((num_dt, num_gt))
    inter = np.zeros((num_dt, num_gt))
    for t in range(len(dts[0].rles)):
        d_idx = [i for i, d in enumerate(dts) if d.rles[t] is not None and d.frame_areas[t] > 0]
        g_idx = [j for j, g in enumerate(gts) if g.rles[t] is not None and g.frame_areas[t] > 0]
        if not d_idx or not g_idx:
            continue
        iou = np.asarray(mask_utils.iou([dts[i].rles[t] for i in d_idx], [gts[j].rles[t] for j in g_idx],
                                        [0] * len(g_idx)), dtype=np.float64).reshape(len(d_idx), len(g_idx))
        area_sum = (np.array([dts[i].frame_areas[t] for i in d_idx])[:, None]
                    + np.array([gts[j].frame_areas[t] for j in g_idx])[None, :])
        # |d∩g| = IoU·(|d|+|g|)/(1+IoU); pixel counts are integers, so rounding recovers the exact count
        inter[np.ix_(d_idx, g_idx)] += np.rint(iou * area_sum / (1.0 + iou))
    union = (np.array([d.frame_areas.sum() for d in dts])[:, None]
             + np.array([g.frame_areas.sum() for g in gts])[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class VideoAPEvaluator:
    """YouTube-VIS / OVIS video AP: ``reset()``, ``process(predictions)`` (any number of calls), ``evaluate()``."""

    def __init__(self, ground_truth: dict[str, Any], config: VideoAPConfig | None = None) -> None:
        self.config = config or VideoAPConfig()
        self._videos, self._category_ids, self._gt_tracks = parse_ground_truth(ground_truth)
        self._predictions: list[_Track] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, predictions: list[dict[str, Any]]) -> None:
        """Validate and store predictions ``[{video_id, category_id, segmentations[T], score}]``."""
        self._predictions.extend(parse_predictions(predictions, self._videos, self._category_ids))

    def evaluate(self) -> dict[str, Any]:
        """AP/AR summary (keys AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, AP_light/medium/heavy, AR_...)."""
        cfg = self.config
        thresholds = np.asarray(cfg.iou_thresholds, dtype=np.float64)
        recall_thresholds = np.linspace(0.0, 1.0, cfg.recall_points)
        gts: dict[tuple[int, int], list[_Track]] = defaultdict(list)
        dts: dict[tuple[int, int], list[_Track]] = defaultdict(list)
        for g in self._gt_tracks:
            gts[g.video_id, g.category_id].append(g)
        for d in self._predictions:
            dts[d.video_id, d.category_id].append(d)
        # subsets: every area range with all occlusion levels, every occlusion bucket with all areas
        subsets = [(a, None) for a in cfg.area_ranges] + [(cfg.area_ranges[0], b) for b in OCCLUSION_BUCKETS]
        groups: dict[tuple[int, int], list[GroupMatch]] = defaultdict(list)  # (subset, category index)
        for k, cat in enumerate(self._category_ids):
            for vid in sorted(self._videos):
                g_list = gts.get((vid, cat), [])
                d_all = dts.get((vid, cat), [])
                if not g_list and not d_all:
                    continue
                order = np.argsort([-d.score for d in d_all], kind="mergesort")[: cfg.max_dets[-1]]
                d_list = [d_all[i] for i in order]
                ious = spatiotemporal_iou(d_list, g_list)
                scores = np.array([d.score for d in d_list], dtype=np.float64)
                crowd = np.array([g.crowd for g in g_list], dtype=bool)
                g_area = np.array([g.mean_area for g in g_list], dtype=np.float64)
                d_area = np.array([d.mean_area for d in d_list], dtype=np.float64)
                for s, ((_, low, high), bucket) in enumerate(subsets):
                    ignore = crowd | (g_area < low) | (g_area > high)
                    if bucket is not None:
                        ignore |= np.array([g.bucket != bucket for g in g_list], dtype=bool)
                    out_of_range = (d_area < low) | (d_area > high)
                    groups[s, k].append(greedy_match(ious, scores, out_of_range, ignore, crowd, thresholds))
        num_t, num_r, num_k = len(thresholds), len(recall_thresholds), len(self._category_ids)
        precision = -np.ones((len(subsets), len(cfg.max_dets), num_t, num_r, num_k))
        recall = -np.ones((len(subsets), len(cfg.max_dets), num_t, num_k))
        for s in range(len(subsets)):
            for m, max_det in enumerate(cfg.max_dets):
                for k in range(num_k):
                    precision[s, m, :, :, k], recall[s, m, :, k] = accumulate(
                        groups.get((s, k), []), max_det, recall_thresholds, num_t)
        return self._summary(subsets, precision, recall, thresholds)

    def _summary(self, subsets: list, precision: np.ndarray, recall: np.ndarray,
                 thresholds: np.ndarray) -> dict[str, Any]:
        cfg = self.config
        last = len(cfg.max_dets) - 1
        result: dict[str, Any] = {"AP": summarize(precision[0, last])}
        for iou in (0.5, 0.75):
            t = np.flatnonzero(np.isclose(thresholds, iou))
            result[f"AP{int(round(iou * 100))}"] = summarize(precision[0, last, t]) if t.size else -1.0
        suffix = {"small": "s", "medium": "m", "large": "l"}
        for s, ((name, _, _), bucket) in enumerate(subsets):
            if s == 0:
                continue
            key = f"AP_{bucket}" if bucket else f"AP{suffix.get(name, '_' + name)}"
            result[key] = summarize(precision[s, last])
        for m, max_det in enumerate(cfg.max_dets):
            result[f"AR{max_det}"] = summarize(recall[0, m])
        for s, ((name, _, _), bucket) in enumerate(subsets):
            if s == 0:
                continue
            key = f"AR_{bucket}" if bucket else f"AR{suffix.get(name, '_' + name)}"
            result[key] = summarize(recall[s, last])
        buckets = [g.bucket for g in self._gt_tracks]
        result.update({
            "num_videos": len(self._videos),
            "num_gt_tracks": len(self._gt_tracks),
            "num_predictions": len(self._predictions),
            **{f"num_gt_{b}": buckets.count(b) for b in OCCLUSION_BUCKETS},
            "num_gt_unlabelled": buckets.count(None),
        })
        return result


def evaluate_vis(ground_truth: dict[str, Any], predictions: list[dict[str, Any]],
                 config: VideoAPConfig | None = None) -> dict[str, Any]:
    """One call: video AP of ``predictions`` against a YouTube-VIS/OVIS ground-truth dict."""
    evaluator = VideoAPEvaluator(ground_truth, config)
    evaluator.process(predictions)
    return evaluator.evaluate()
