"""``make demo``'s program end to end on a short feed: the street scene through the shipped ``ovis`` weights."""
from __future__ import annotations

import re

import av

from amodal import demo


def test_street_feed_renders_the_generator_scene():
    frames = list(demo.render_street(0.4))
    assert len(frames) == 10 and frames[0].shape == (192, 320, 3)
    assert frames[0].std() > 10 and (frames[0] != frames[-1]).any()  # textured, and objects move


def test_demo_paced_like_a_camera_publishes_tracks_latency_and_the_annotated_video(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--seconds", "1.2"]) == 0
    out = capsys.readouterr().out
    published = int(re.search(r"frames published: (\d+) of 30", out).group(1))
    assert 0 < published <= 30  # paced at 25 fps: frames the model cannot keep up with are dropped, never queued
    assert re.search(r"throughput: [\d.]+ fps; capture → subscriber latency p50 [\d.]+ ms, p99 [\d.]+ ms", out)
    assert re.search(r"person#\d+ 0\.\d\d", out), "no tracked person in the demo's output"
    with av.open(str(tmp_path / "annotated.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == published  # the engine's sink wrote every result


def test_demo_with_reid_publishes_global_identities(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--seconds", "0.8", "--pipeline", "ovis,reid", "--fast"]) == 0
    out = capsys.readouterr().out
    assert "frames published: 20 of 20" in out
    assert re.search(r"person#\d+ id\d+ 0\.\d\d", out), "no person with a global identity in the reid demo"
