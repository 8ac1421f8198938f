"""The reliability campaigns (``amodal bench reliability``) at CI sizes: each part runs alone through the bench's
``main``, writes its JSON and plot, and its invariants hold (0 crashes, 0 hangs, 0 escapes, recovered restarts,
slopes reported).  The full sizes and their figures are in docs/reliability.md."""
from __future__ import annotations

import json
import math

import pytest

from amodal.bench import reliability
from tests.support.rtsp import gst_rtsp_available


def _run(tmp_path, part: str, *sizes: str) -> dict:
    status = reliability.main(["--part", part, "--out", str(tmp_path), *sizes])
    name = f"reliability_{part.replace('-', '_')}"
    results = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert results["environment"]["commit"] and results["environment"]["torch"]
    assert status == 0 and results["invariants_broken"] == [], results["invariants_broken"]
    return results


def test_fuzz_media(tmp_path):
    results = _run(tmp_path, "fuzz-media", "--files", "40", "--wave", "10", "--hang-timeout", "30")
    s = results["summary"]
    assert s["files_run"] == 40 and s["crashes"] == s["hangs"] == s["not_one_final_event"] == 0
    assert set(results["by_format"]) == {"mp4", "mkv", "ts", "avi", "png", "tiff", "jpg", "dcm"}
    assert all(r["finals"] == 1 and r["final"] in ("ended", "error") for r in results["files"])
    assert s["good_waves"] == 4 and s["good_incomplete"] == 0  # the good clip beside them: every frame, each wave
    scanner = results["scanner"]
    assert scanner["unaccounted_count"] == scanner["accounted_twice_count"] == 0
    assert scanner["good_delivered"] == scanner["good_images"] > 0


def test_fuzz_messages(tmp_path):
    results = _run(tmp_path, "fuzz-messages", "--messages", "500", "--queries", "0")
    sub, proc = results["subscriber"], results["subscribe_process"]
    assert sub["escapes"] == 0 and sub["received"] == 500 and sub["sentinel_ok"]
    assert sub["yielded_valid"] + sub["malformed"] + sub["unknown_types"] == 500
    assert proc["escapes"] == 0 and proc["exit_code"] == 0 and proc["accounted"] == 500 and proc["sentinel_ok"]
    for target in (sub, proc):
        assert target["rss_after_mb"] - target["rss_before_mb"] < 200  # bounded memory


def test_fuzz_gallery_queries(tmp_path):
    results = _run(tmp_path, "fuzz-messages", "--messages", "0", "--queries", "300")
    query = results["query_server"]
    assert query["sent"] == 300 and query["missing_replies"] == query["malformed_not_refused"] == 0
    assert query["escapes"] == 0 and query["alive"] and query["sentinel_ok"]
    assert query["rss_after_mb"] - query["rss_before_mb"] < 200


@pytest.mark.parametrize("dtype", [["f4"], {"f4": 1}])
def test_gallery_search_with_unhashable_dtype_is_an_error_reply(dtype):
    """Found by fuzz-messages: an array or map ``dtype`` raised TypeError inside handle_request."""
    import msgpack
    import numpy as np

    from amodal.bench.reliability.fuzz_messages import DIM, colour_embedder, small_gallery
    from amodal.engine.gallery.query import handle_request

    request = msgpack.packb({"v": 1, "op": "search", "embedding": np.ones(DIM, "<f4").tobytes(), "dtype": dtype,
                             "k": 3}, use_bin_type=True)
    reply = handle_request(request, small_gallery(), colour_embedder)
    assert reply["ok"] is False and "dtype" in reply["error"]


@pytest.mark.skipif(not gst_rtsp_available(), reason="GStreamer RTSP server not installed (.ci/system-deps.sh)")
def test_rtsp_restarts(tmp_path):
    results = _run(tmp_path, "rtsp-restarts", "--cycles", "3")
    s = results["summary"]
    assert s["cycles"] == s["recovered"] == 3 and s["crashes"] == 0
    assert s["other_stream_frames"] > 0 and s["other_stream_reconnects"] == 0
    assert math.isfinite(s["other_stream_max_gap_s"])


def test_soak(tmp_path):
    results = _run(tmp_path, "soak", "--soak-seconds", "10", "--soak-streams", "2", "--soak-fps", "10")
    s = results["summary"]
    assert s["samples"] >= 9 and s["crashes"] == 0 and s["frames_received"] > 0
    for key in ("rss_mb_per_min", "latency_ms_per_min", "open_fds_per_min", "threads_per_min"):
        assert math.isfinite(s[key]["all"]), key
    assert len(results["samples"]) == s["samples"]
