"""ReID CMC and mAP: a hand-ranked case with junk and same-camera exclusion, a loop reference, features, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from amodal.errors import ConfigError
from amodal.training.evaluation.cli import main
from amodal.training.evaluation.reid import ReIDEvaluator, distance_matrix, evaluate_reid, evaluate_reid_features

# gallery:            g0  g1  g2  g3  g4  g5
GALLERY_PIDS = np.array([1, 2, 1, -1, 1, 3])
GALLERY_CAMS = np.array([0, 1, 1, 1, 2, 1])
QUERY_PIDS = np.array([1, 3, 9])
QUERY_CAMS = np.array([0, 0, 0])
DIST = np.array([
    [0.0, 0.2, 0.3, 0.1, 0.5, 0.4],  # g0 same pid+cam and g3 junk removed → g1 ✗, g2 ✓, g5 ✗, g4 ✓
    [0.9, 0.5, 0.6, 0.7, 0.8, 0.1],  # g5 first: hit at rank 1
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # pid 9 absent from the gallery: skipped
])


def test_hand_ranked_case() -> None:
    result = evaluate_reid(DIST, QUERY_PIDS, QUERY_CAMS, GALLERY_PIDS, GALLERY_CAMS)
    assert result["rank1"] == pytest.approx(0.5)  # query 0 first hit at rank 2, query 1 at rank 1
    assert result["rank5"] == pytest.approx(1.0) and result["rank10"] == pytest.approx(1.0)
    # AP query 0 = (1/2 + 2/4) / 2 = 0.5; query 1 = 1
    assert result["mAP"] == pytest.approx(0.75)
    assert result["num_valid_queries"] == 2 and result["num_skipped_queries"] == 1


def test_same_pid_other_camera_is_kept_and_same_camera_removed() -> None:
    dist = np.array([[0.1, 0.2]])
    # g0: same pid, same camera (removed); g1: same pid, other camera (kept, rank 1)
    result = evaluate_reid(dist, np.array([5]), np.array([1]), np.array([5, 5]), np.array([1, 2]))
    assert result["rank1"] == 1.0 and result["mAP"] == 1.0
    # only same-camera matches: the query is skipped
    result = evaluate_reid(dist, np.array([5]), np.array([1]), np.array([5, 7]), np.array([1, 2]))
    assert result["num_valid_queries"] == 0 and result["mAP"] == -1.0


def loop_reference(dist, qp, qc, gp, gc, max_rank=10):
    """The usual per-query loop (Market protocol), for comparison."""
    cmc_all, aps = [], []
    for i in range(len(qp)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~(((gp[order] == qp[i]) & (gc[order] == qc[i])) | (gp[order] == -1))
        matches = (gp[order] == qp[i])[keep].astype(np.int64)
        if not matches.any():
            continue
        cmc = matches.cumsum()
        cmc[cmc > 1] = 1
        cmc_all.append(np.pad(cmc, (0, max(0, max_rank - len(cmc))), mode="edge")[:max_rank])
        precision = matches.cumsum() / np.arange(1, len(matches) + 1)
        aps.append(float((precision * matches).sum() / matches.sum()))
    return np.mean(cmc_all, axis=0), float(np.mean(aps))


def test_matches_loop_reference_with_chunks() -> None:
    rng = np.random.default_rng(0)
    num_q, num_g = 37, 61
    qp, gp = rng.integers(-1, 8, num_q), rng.integers(-1, 8, num_g)
    qp[qp == -1] = 0
    qc, gc = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    dist = rng.random((num_q, num_g))
    cmc, mean_ap = loop_reference(dist, qp, qc, gp, gc)
    result = evaluate_reid(dist, qp, qc, gp, gc, chunk=5)
    assert result["rank1"] == pytest.approx(cmc[0])
    assert result["rank5"] == pytest.approx(cmc[4])
    assert result["rank10"] == pytest.approx(cmc[9])
    assert result["mAP"] == pytest.approx(mean_ap)


def test_features_euclidean_and_cosine_rank_alike() -> None:
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(6, 8)), rng.normal(size=(20, 8))
    d_euc, d_cos = distance_matrix(q, g), distance_matrix(q, g, metric="cosine")
    np.testing.assert_allclose(d_euc, 2 * d_cos, atol=1e-9)  # |a-b|² = 2 - 2cos on unit vectors
    # identical features are at distance 0 → perfect retrieval
    pids = np.arange(6)
    result = evaluate_reid_features(q, q * 3.0, pids, np.zeros(6), pids, np.ones(6))
    assert result["rank1"] == 1.0 and result["mAP"] == 1.0
    evaluator = ReIDEvaluator(metric="cosine")
    evaluator.process(q[:3], pids[:3], np.zeros(3), "query")
    evaluator.process(q[3:], pids[3:], np.zeros(3), "query")
    evaluator.process(q, pids, np.ones(6), "gallery")
    assert evaluator.evaluate()["mAP"] == 1.0
    with pytest.raises(ConfigError, match=r"features must be \[Q, D\] and \[G, D\] with the same D"):
        distance_matrix(q, g[:, :4])


def test_bad_ids_are_named() -> None:
    with pytest.raises(ConfigError, match=r"gallery_camids must have 6 entries to match distances \[3, 6\], got "
                                          r"shape \[5\]"):
        evaluate_reid(DIST, QUERY_PIDS, QUERY_CAMS, GALLERY_PIDS, GALLERY_CAMS[:5])


def test_cli_end_to_end(tmp_path, capsys) -> None:
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(4, 16)).astype(np.float32)
    path = tmp_path / "feats.npz"
    np.savez(path, query_feats=feats, gallery_feats=np.concatenate([feats[::-1], feats]),
             query_pids=np.arange(4), query_camids=np.zeros(4, dtype=np.int64),
             gallery_pids=np.concatenate([np.arange(4)[::-1], np.arange(4)]),
             gallery_camids=np.concatenate([np.ones(4, dtype=np.int64), np.zeros(4, dtype=np.int64)]))
    out = tmp_path / "reid.json"
    assert main(["reid", str(path), "--out", str(out)]) == 0
    assert "rank1" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["rank1"] == 1.0 and result["mAP"] == 1.0 and result["num_gallery"] == 8
    np.savez(tmp_path / "bad.npz", query_feats=feats)
    assert main(["reid", str(tmp_path / "bad.npz")]) == 1
    assert "missing arrays" in capsys.readouterr().err


def test_cross_camera_pairs_and_equal_error_threshold():
    from amodal.training.evaluation.reid import cross_camera_pairs, equal_error_threshold

    feats = np.array([[1, 0], [1, 0.1], [1, -0.1], [0, 1], [0.1, 1], [0.5, 0.5]], dtype=np.float64)
    pids = np.array([1, 1, 1, 2, 2, -1])
    cams = np.array([1, 2, 1, 1, 2, 1])
    same, different = cross_camera_pairs(feats, pids, cams)
    assert len(same) == 3  # (0,1), (1,2) and (3,4): same pid, different cameras; (0,2) share a camera
    assert len(different) == 6 and different.max() < 0.2 < same.min()  # the junk pid -1 is left out
    eer = equal_error_threshold(same, different)
    assert different.max() < eer["threshold"] <= same.min() and eer["false_accept"] == eer["false_reject"] == 0.0
    overlap = equal_error_threshold(np.array([0.5, 0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.3, 0.65]))
    assert overlap["false_accept"] == pytest.approx(0.25) and overlap["false_reject"] == pytest.approx(0.25)
    assert overlap["threshold"] == pytest.approx(0.6)
