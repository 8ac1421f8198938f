"""``amodal bench gallery`` end to end at a tiny size, with an embedder plugged into the same run."""
from __future__ import annotations

import json

import numpy as np

from amodal.bench import gallery as bench


def tiny_embedder():
    """A factory as ``--embedder`` expects: crops uint8[B, H, W, 3] → float32[B, 8] (mean colour, padded)."""

    def embed(crops: np.ndarray) -> np.ndarray:
        out = np.zeros((len(crops), 8), np.float32)
        out[:, :3] = crops.reshape(len(crops), -1, 3).mean(axis=1)
        return out

    return embed


def test_bench_gallery_writes_json_and_plot(tmp_path):
    code = bench.main(["--sizes", "1500", "--dim", "16", "--queries", "60", "--single-queries", "10",
                       "--nprobe", "2,64", "--reps", "1", "--out", str(tmp_path),
                       "--embedder", f"{__name__}:tiny_embedder", "--embed-batches", "1,4", "--crop-hw", "16", "8"])
    assert code == 0
    result = json.loads((tmp_path / "gallery.json").read_text())
    record = result["records"][0]
    assert record["n"] == 1500 and record["index"]["kind"] == "ivf" and record["exact"]["batch_qps"] > 0
    low, high = record["nprobe"]
    assert high["nprobe"] == record["index"]["nlist"]  # every list probed: the IVF is exact
    assert high["recall_at_1"] == 1.0 and high["recall_at_10"] == 1.0
    assert 0.0 < low["recall_at_10"] <= high["recall_at_10"]
    assert [r["batch"] for r in result["embedding_throughput"]["rows"]] == [1, 4]
    assert result["embedding_throughput"]["rows"][0]["dim"] == 8
    assert (tmp_path / "gallery.png").stat().st_size > 0


def test_recall_at():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[1, 3, 9], [7, 8, 4]])
    assert bench.recall_at(found, truth, 1) == 0.5
    assert abs(bench.recall_at(found, truth, 3) - 0.5) < 1e-9
