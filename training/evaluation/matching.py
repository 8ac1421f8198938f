"""COCO-style greedy matching and precision/recall accumulation, the parts of ``COCOeval`` the video evaluator reuses.

Same rules as ``pycocotools.cocoeval.COCOeval.evaluateImg`` / ``accumulate``:

* detections in score order (stable sort of ``-score``), ground truths with ``ignore`` last;
* each detection takes the not-yet-matched ground truth of highest IoU ≥ the threshold (a crowd ground truth may be
  matched many times; among equal IoUs the later ground truth wins; once matched to a regular ground truth, a
  detection never moves to an ignored one);
* a detection matched to an ignored ground truth is ignored (neither TP nor FP); an unmatched detection whose own
  area lies outside the area range is ignored as well;
* per category, detections of all groups are pooled by score, precision is made monotone and read at the recall
  points with ``searchsorted(..., side="left")``; precision and recall are -1 where no non-ignored ground truth exists.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroupMatch:
    """Matching result of one (group, category, area range, subset): D detections, G ground truths, T thresholds.

    ``dt_scores``: float[D] sorted descending; ``dt_matched`` / ``dt_ignore``: bool[T, D]; ``gt_ignore``: bool[G].
    """

    dt_scores: np.ndarray
    dt_matched: np.ndarray
    dt_ignore: np.ndarray
    gt_ignore: np.ndarray


def greedy_match(
    ious: np.ndarray,
    dt_scores: np.ndarray,
    dt_out_of_range: np.ndarray,
    gt_ignore: np.ndarray,
    gt_crowd: np.ndarray,
    iou_thresholds: np.ndarray,
) -> GroupMatch:
    """Match detections to ground truths at each IoU threshold.

    ``ious``: float[D, G] with detections already in descending score order (``dt_scores`` float[D]);
    ``dt_out_of_range``: bool[D] (detection's own area outside the area range); ``gt_ignore``, ``gt_crowd``: bool[G].
    """
    num_dt, num_gt = len(dt_scores), len(gt_ignore)
    order = np.argsort(gt_ignore.astype(np.int8), kind="mergesort")
    ious = ious[:, order] if num_dt and num_gt else np.zeros((num_dt, num_gt))
    ignore = gt_ignore[order]
    crowd = gt_crowd[order]
    num_t = len(iou_thresholds)
    gt_taken = np.zeros((num_t, num_gt), dtype=bool)
    dt_matched = np.zeros((num_t, num_dt), dtype=bool)
    dt_ignore = np.zeros((num_t, num_dt), dtype=bool)
    if num_dt and num_gt:
        for t, threshold in enumerate(iou_thresholds):
            for d in range(num_dt):
                best_iou = min(float(threshold), 1 - 1e-10)
                best = -1
                for g in range(num_gt):
                    if gt_taken[t, g] and not crowd[g]:
                        continue
                    if best > -1 and not ignore[best] and ignore[g]:
                        break
                    if ious[d, g] < best_iou:
                        continue
                    best_iou = float(ious[d, g])
                    best = g
                if best == -1:
                    continue
                dt_ignore[t, d] = ignore[best]
                dt_matched[t, d] = True
                gt_taken[t, best] = True
    dt_ignore |= ~dt_matched & dt_out_of_range[None, :]
    return GroupMatch(dt_scores=dt_scores, dt_matched=dt_matched, dt_ignore=dt_ignore, gt_ignore=ignore)


def accumulate(
    groups: list[GroupMatch], max_det: int, recall_thresholds: np.ndarray, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pool one category's groups: precision float[T, R] and recall float[T] (-1 when no non-ignored ground truth)."""
    precision = -np.ones((num_thresholds, len(recall_thresholds)))
    recall = -np.ones(num_thresholds)
    if not groups:
        return precision, recall
    num_pos = int(sum(np.count_nonzero(~g.gt_ignore) for g in groups))
    if num_pos == 0:
        return precision, recall
    scores = np.concatenate([g.dt_scores[:max_det] for g in groups])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([g.dt_matched[:, :max_det] for g in groups], axis=1)[:, order]
    ignored = np.concatenate([g.dt_ignore[:, :max_det] for g in groups], axis=1)[:, order]
    tp_cum = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp_cum = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    num_dt = tp_cum.shape[1]
    for t in range(num_thresholds):
        rc = tp_cum[t] / num_pos
        pr = tp_cum[t] / (fp_cum[t] + tp_cum[t] + np.spacing(1))
        recall[t] = rc[-1] if num_dt else 0.0
        pr = np.maximum.accumulate(pr[::-1])[::-1] if num_dt else pr
        idx = np.searchsorted(rc, recall_thresholds, side="left")
        q = np.zeros(len(recall_thresholds))
        valid = idx < num_dt
        # COCOeval stops filling at the first recall point beyond the reached recall; later ones stay 0
        first_invalid = int(np.argmin(valid)) if not valid.all() else len(valid)
        q[:first_invalid] = pr[idx[:first_invalid]]
        precision[t] = q
    return precision, recall


def summarize(values: np.ndarray) -> float:
    """Mean of the defined (> -1) entries, -1.0 when none is defined (COCO convention)."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0
