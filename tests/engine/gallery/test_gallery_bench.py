"""``amodal bench gallery`` end to end at a tiny size, with a tiny MBF's embedding throughput in the same run."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from amodal.bench import gallery as bench
from amodal.models.mbf import build_mbf, tiny_config
from amodal.models.weights import save_weights


def tiny_mbf(path) -> str:
    """A tiny, untrained MBF weights file (throughput does not depend on the weights' values)."""
    config = dataclasses.replace(tiny_config(num_ids=4, num_cameras=2), embed_dim=32, depth=2, num_heads=2)
    return str(save_weights(build_mbf(config=config).state_dict(), path, {"config": config.to_dict()}))


def test_bench_gallery_writes_json_and_plot(tmp_path):
    code = bench.main(["--sizes", "1500", "--dim", "16", "--queries", "60", "--single-queries", "10",
                       "--nprobe", "2,64", "--reps", "1", "--out", str(tmp_path),
                       "--reid-weights", tiny_mbf(tmp_path / "mbf.safetensors"), "--device", "cpu",
                       "--embed-batches", "1,4", "--crop-hw", "40", "20"])
    assert code == 0
    result = json.loads((tmp_path / "gallery.json").read_text())
    record = result["records"][0]
    assert record["n"] == 1500 and record["index"]["kind"] == "ivf" and record["exact"]["batch_qps"] > 0
    low, high = record["nprobe"]
    assert high["nprobe"] == record["index"]["nlist"]  # every list probed: the IVF is exact
    assert high["recall_at_1"] == 1.0 and high["recall_at_10"] == 1.0
    assert 0.0 < low["recall_at_10"] <= high["recall_at_10"]
    rows = result["embedding_throughput"]["rows"]
    assert [(r["attention"], r["batch"]) for r in rows] == [("auto", 1), ("auto", 4), ("reference", 1), ("reference", 4)]
    assert all(r["dim"] == rows[0]["dim"] > 32 and r["crops_per_s"] > 0 for r in rows)
    assert all(r["speedup_vs_reference"] == 1.0 for r in rows if r["attention"] == "reference")
    assert (tmp_path / "gallery.png").stat().st_size > 0


def test_recall_at():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[1, 3, 9], [7, 8, 4]])
    assert bench.recall_at(found, truth, 1) == 0.5
    assert abs(bench.recall_at(found, truth, 3) - 0.5) < 1e-9
