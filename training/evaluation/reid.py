"""Person re-identification: CMC (Rank-k) and mAP, Market-1501 / DukeMTMC protocol.

For each query the gallery is ranked by ascending distance (stable sort, ties keep gallery order), then

* gallery items with the query's pid **and** camera are removed (same-camera views of the same person), and gallery
  items with pid -1 (Market "junk") are removed;
* a query with no remaining gallery item of its pid is skipped (not counted in CMC or mAP; ``num_skipped_queries``);
* CMC@k = fraction of counted queries whose first correct match is at rank ≤ k;
* AP = mean over the correct matches of precision at their rank; mAP = mean AP over counted queries.

Features: ``euclidean`` = squared Euclidean distance, ``cosine`` = 1 − cosine similarity, both on L2-normalised
features by default (the two then give the same ranking).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from amodal.errors import ConfigError

METRICS: tuple[str, ...] = ("euclidean", "cosine")
JUNK_PID = -1
NPZ_KEYS: tuple[str, ...] = ("query_feats", "gallery_feats", "query_pids", "query_camids", "gallery_pids",
                             "gallery_camids")


def distance_matrix(query_feats: np.ndarray, gallery_feats: np.ndarray, metric: str = "euclidean",
                    normalize: bool = True) -> np.ndarray:
    """float64[Q, G] distances of float[Q, D] query and float[G, D] gallery features."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
    q = np.asarray(query_feats, dtype=np.float64)
    g = np.asarray(gallery_feats, dtype=np.float64)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ConfigError(f"features must be [Q, D] and [G, D] with the same D, got {list(q.shape)} and "
                          f"{list(g.shape)}")
    if normalize or metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    if metric == "cosine":
        return 1.0 - q @ g.T
    dist = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * (q @ g.T)
    return np.maximum(dist, 0.0)


def _check_ids(distances: np.ndarray, query_pids: np.ndarray, query_camids: np.ndarray, gallery_pids: np.ndarray,
               gallery_camids: np.ndarray) -> None:
    if distances.ndim != 2:
        raise ConfigError(f"distances must be [Q, G], got shape {list(distances.shape)}")
    num_q, num_g = distances.shape
    for name, array, expected in (("query_pids", query_pids, num_q), ("query_camids", query_camids, num_q),
                                  ("gallery_pids", gallery_pids, num_g), ("gallery_camids", gallery_camids, num_g)):
        if array.ndim != 1 or len(array) != expected:
            raise ConfigError(f"{name} must have {expected} entries to match distances {list(distances.shape)}, "
                              f"got shape {list(array.shape)}")


def evaluate_reid(distances: np.ndarray, query_pids: np.ndarray, query_camids: np.ndarray,
                  gallery_pids: np.ndarray, gallery_camids: np.ndarray, ranks: tuple[int, ...] = (1, 5, 10),
                  chunk: int = 256) -> dict[str, Any]:
    """CMC Rank-k and mAP from a float[Q, G] distance matrix and int[Q]/int[G] person and camera ids."""
    distances = np.asarray(distances, dtype=np.float64)
    qp, qc = np.asarray(query_pids).reshape(-1), np.asarray(query_camids).reshape(-1)
    gp, gc = np.asarray(gallery_pids).reshape(-1), np.asarray(gallery_camids).reshape(-1)
    _check_ids(distances, qp, qc, gp, gc)
    max_rank = max(ranks)
    cmc_sum = np.zeros(max_rank)
    ap_sum = 0.0
    counted = 0
    for start in range(0, len(qp), chunk):
        stop = min(start + chunk, len(qp))
        order = np.argsort(distances[start:stop], axis=1, kind="stable")
        pids, cams = gp[order], gc[order]
        valid = ~(((pids == qp[start:stop, None]) & (cams == qc[start:stop, None])) | (pids == JUNK_PID))
        match = (pids == qp[start:stop, None]) & valid
        has_match = match.any(axis=1)
        match, valid = match[has_match], valid[has_match]
        counted += int(has_match.sum())
        if not match.shape[0]:
            continue
        # rank among the kept gallery items (1-based) for every position
        kept_rank = np.cumsum(valid, axis=1)
        first = np.where(match, kept_rank, np.iinfo(np.int64).max).min(axis=1)
        cmc_sum += (first[:, None] <= np.arange(1, max_rank + 1)[None, :]).sum(axis=0)
        hits = np.cumsum(match, axis=1)
        precision = np.where(match, hits / np.maximum(kept_rank, 1), 0.0)
        ap_sum += float((precision.sum(axis=1) / match.sum(axis=1)).sum())
    result: dict[str, Any] = {}
    for k in ranks:
        result[f"rank{k}"] = float(cmc_sum[k - 1] / counted) if counted else -1.0
    result["mAP"] = ap_sum / counted if counted else -1.0
    result["num_queries"] = int(len(qp))
    result["num_valid_queries"] = counted
    result["num_skipped_queries"] = int(len(qp)) - counted
    result["num_gallery"] = int(len(gp))
    return result


def evaluate_reid_features(query_feats: np.ndarray, gallery_feats: np.ndarray, query_pids: np.ndarray,
                           query_camids: np.ndarray, gallery_pids: np.ndarray, gallery_camids: np.ndarray,
                           metric: str = "euclidean", normalize: bool = True) -> dict[str, Any]:
    """CMC and mAP from features (distances per ``distance_matrix``)."""
    dist = distance_matrix(query_feats, gallery_feats, metric=metric, normalize=normalize)
    return evaluate_reid(dist, query_pids, query_camids, gallery_pids, gallery_camids)


class ReIDEvaluator:
    """Accumulates query and gallery features: ``reset()``, ``process(feats, pids, camids, split)``, ``evaluate()``."""

    def __init__(self, metric: str = "euclidean", normalize: bool = True) -> None:
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric, self.normalize = metric, normalize
        self.reset()

    def reset(self) -> None:
        self._parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"query": [], "gallery": []}

    def process(self, feats: np.ndarray, pids: np.ndarray, camids: np.ndarray, split: str) -> None:
        """Add float[N, D] features with int[N] pids and camids to ``split`` ("query" or "gallery")."""
        if split not in self._parts:
            raise ConfigError(f"split must be 'query' or 'gallery', got {split!r}")
        feats, pids, camids = np.asarray(feats), np.asarray(pids).reshape(-1), np.asarray(camids).reshape(-1)
        if feats.ndim != 2 or len(pids) != len(feats) or len(camids) != len(feats):
            raise ConfigError(f"{split}: feats [N, D] with N pids and camids expected, got feats "
                              f"{list(feats.shape)}, pids {len(pids)}, camids {len(camids)}")
        self._parts[split].append((feats, pids, camids))

    def evaluate(self) -> dict[str, Any]:
        for split, parts in self._parts.items():
            if not parts:
                raise ConfigError(f"no {split} features were processed")
        q = [np.concatenate(x) for x in zip(*self._parts["query"])]
        g = [np.concatenate(x) for x in zip(*self._parts["gallery"])]
        return evaluate_reid_features(q[0], g[0], q[1], q[2], g[1], g[2], self.metric, self.normalize)


def load_features_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The six arrays of a features file (``NPZ_KEYS``), loaded without pickle."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"features file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in NPZ_KEYS if k not in data.files]
        if missing:
            raise ConfigError(f"{path}: missing arrays {missing} (has {sorted(data.files)})")
        return {k: data[k] for k in NPZ_KEYS}


def cross_camera_pairs(feats: np.ndarray, pids: np.ndarray, camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities float64[P] of same-person pairs seen by different cameras, and float64[M] of
    different-person pairs, over float[N, D] features (pids ≤ 0 — junk and distractors — are left out)."""
    feats, pids, camids = np.asarray(feats, np.float64), np.asarray(pids).reshape(-1), np.asarray(camids).reshape(-1)
    if feats.ndim != 2 or len(pids) != len(feats) or len(camids) != len(feats):
        raise ConfigError(f"feats [N, D] with N pids and camids expected, got feats {list(feats.shape)}, "
                          f"pids {len(pids)}, camids {len(camids)}")
    keep = pids > 0
    f = feats[keep] / np.maximum(np.linalg.norm(feats[keep], axis=1, keepdims=True), 1e-12)
    p, c = pids[keep], camids[keep]
    sim = f @ f.T
    upper = np.triu(np.ones_like(sim, dtype=bool), k=1)
    same = (p[:, None] == p[None, :]) & (c[:, None] != c[None, :]) & upper
    different = (p[:, None] != p[None, :]) & upper
    return sim[same], sim[different]


def equal_error_threshold(same: np.ndarray, different: np.ndarray) -> dict[str, float]:
    """The similarity threshold where the false-accept rate (different pairs ≥ t) equals the false-reject
    rate (same pairs < t), with both rates there: a default for "same person?" decisions."""
    same, different = np.sort(np.asarray(same, np.float64)), np.sort(np.asarray(different, np.float64))
    if not len(same) or not len(different):
        raise ConfigError(f"need same and different pairs, got {len(same)} and {len(different)}")
    candidates = np.unique(np.concatenate([same, different]))
    frr = np.searchsorted(same, candidates, side="left") / len(same)
    far = 1.0 - np.searchsorted(different, candidates, side="left") / len(different)
    best = int(np.argmin(np.abs(far - frr)))
    return {"threshold": float(candidates[best]), "false_accept": float(far[best]), "false_reject": float(frr[best])}
