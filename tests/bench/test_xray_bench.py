"""``amodal bench xray`` runs end to end on tiny settings and writes its JSON and plot (no timing asserted)."""
from __future__ import annotations

import json

import pytest

from amodal.bench import xray

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_xray_bench_compares_sdpa_and_the_dispatcher(tmp_path):
    argv = ["--configs", "tiny", "--size", "64", "--batches", "1,2", "--reps", "1", "--device", "cpu",
            "--out", str(tmp_path)]  # vit_b is the same code path with another preset (minutes on a CPU)
    assert xray.main(argv) == 0
    results = json.loads((tmp_path / "xray.json").read_text())
    rows = results["rows"]
    assert [(r["config"], r["batch"]) for r in rows] == [("tiny", 1), ("tiny", 2)]
    assert all(r[a]["images_per_s"] > 0 for r in rows for a in xray.ATTENTIONS)
    assert all(len(r["detections"]) == r["batch"] for r in rows)
    assert results["configs"]["tiny"]["encoder_hidden"] == 96 and results["image_size"] == 64
    assert (tmp_path / "xray.png").stat().st_size > 0
