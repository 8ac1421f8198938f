"""The pipeline benchmarks run end to end on tiny settings and write their JSON and plot (no timing asserted)."""
from __future__ import annotations

import json

from amodal.bench import analyzer_fps, pipeline


def test_pipeline_bench_parts_write_results(tmp_path):
    assert pipeline.main(["--out", str(tmp_path), "--part", "preprocess", "--clip-seconds", "1", "--reps", "1"]) == 0
    results = json.loads((tmp_path / "pipeline.json").read_text())
    assert {r["input"] for r in results["preprocess"]} == {"native 1280x720", "letterbox 640x384"}
    assert all(r["max_abs_difference"] < 1e-5 for r in results["preprocess"])  # same pixels as the per-frame path
    assert (tmp_path / "pipeline.png").stat().st_size > 0


def test_analyzer_bench_runs_a_pipeline(tmp_path):
    assert analyzer_fps.main(["--pipeline", "identity", "--batches", "2", "--frames", "4", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "analyzer_identity.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [2] and rows[0]["engine_fps"] > 0 and rows[0]["model_fps"] > 0


def test_eoras_bench_compares_attention_backends(tmp_path):
    from amodal.bench import eoras

    assert eoras.main(["--tracks", "1,2", "--steps", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "eoras.json").read_text())["rows"]
    assert [r["tracks"] for r in rows] == [1, 2] and all(r[b] > 0 for r in rows for b in eoras.BACKENDS)


def test_decode_bench_compares_threads_processes_and_a_pool(tmp_path):
    from amodal.bench import decode_workers

    assert decode_workers.main(["--out", str(tmp_path), "--seconds", "1", "--repeats", "1", "--streams", "1",
                                "--live-seconds", "1"]) == 0
    results = json.loads((tmp_path / "decode.json").read_text())
    live = results["live"]
    assert {r["decode"] for r in live} == {"threads", "processes", "pool"}
    assert all(r["received"] + r["lost"] >= 1 and r["p99_ms"] > 0 for r in live)
    assert (tmp_path / "decode.png").stat().st_size > 0
