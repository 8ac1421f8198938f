"""``amodal bench web`` end to end at a tiny size: every setup measured, the picture costs, JSON and plot."""
from __future__ import annotations

import json

from amodal.bench.web_viewers import SETUPS, main


def test_bench_web_writes_every_setup_and_the_picture_costs(tmp_path):
    assert main(["--source", "synthetic", "--streams", "1", "--width", "160", "--height", "120", "--seconds", "1", "--warmup", "1",
                 "--rounds", "1", "--reps", "2", "--large", "320x240", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "web.json").read_text())
    assert [r["setup"] for r in record["runs"]] == list(SETUPS)
    assert all(r["engine_fps"] > 0 for r in record["runs"])
    reading = record["runs"][-1]
    assert reading["viewer_pictures_per_s"] > 0 and reading["view_encoded_per_s"] > 0
    assert [(c["width"], c["height"]) for c in record["picture_cost"]] == [(160, 120), (320, 240)]
    assert all(c["view_ms"] > 0 and c["jpeg_bytes"] > 0 for c in record["picture_cost"])
    assert (tmp_path / "web.png").stat().st_size > 0
