"""``amodal run`` and ``amodal subscribe`` as users run them: real processes, real sockets, real files."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from amodal import Subscriber
from amodal.engine.stages.identity import IdentityStage
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.errors import ConfigError
from amodal.schema import FrameMessage, StatusMessage
from amodal.streams.base import SourceConfig
from amodal.types import StreamState
from tests.support.media import make_video, truncated_copy, write_garbage

AMODAL = [sys.executable, "-m", "amodal.cli"]


def _wait_line(proc: subprocess.Popen, needle: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} never appeared (exit {proc.poll()})")


def test_run_and_subscribe_processes(endpoint):
    sub = subprocess.Popen([*AMODAL, "subscribe", endpoint, "--json", "--count", "20", "--timeout", "30"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = subprocess.run(  # the engine attaches its source once the subscriber has subscribed
        [*AMODAL, "run", "--source", "cam=synthetic://shapes?w=64&h=48&fps=50", "--pipeline", "identity",
         "--publish", endpoint, "--max-frames", "40", "--wait-subscribers", "1", "--wait-subscribers-timeout", "50"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out, err = sub.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines()]
    frames = [d for d in lines if d["type"] == "frame"]
    assert len(frames) == 20
    assert all(d["stream_id"] == "cam" and d["width"] == 64 and d["height"] == 48 for d in frames)
    assert [d["frame_index"] for d in frames] == sorted(d["frame_index"] for d in frames)
    assert json.loads(run.stderr.strip().splitlines()[-1])["batches"] > 0  # final metrics snapshot


def test_sigterm_stops_cleanly_and_flushes(endpoint, tmp_path):
    config = tmp_path / "engine.yaml"
    config.write_text(
        f"publish: {endpoint}\n"
        "analyzer: identity\n"
        "max_batch_size: 4\n"
        "sources:\n"
        "  - uri: synthetic://shapes?w=64&h=48&fps=25\n"
        "    stream_id: a\n"
        "  - uri: synthetic://people?w=64&h=48&fps=25\n"
        "    stream_id: b\n"
    )
    with Subscriber(endpoint) as sub:
        proc = subprocess.Popen([*AMODAL, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True)
        _wait_line(proc, "source(s)")
        got = []
        deadline = time.monotonic() + 30
        while sum(isinstance(m, FrameMessage) for m in got) < 20 and time.monotonic() < deadline:
            m = sub.recv(0.5)
            if m is not None:
                got.append(m)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        while (m := sub.recv(1.0)) is not None:
            got.append(m)
    streams = {m.result.stream_id for m in got if isinstance(m, FrameMessage)}
    assert streams == {"a", "b"}
    ended = {m.event.stream_id for m in got if isinstance(m, StatusMessage) and m.event.state == StreamState.ENDED}
    assert ended == {"a", "b"}, "SIGTERM must end every stream with an 'ended' event that reaches subscribers"
    assert sub.stats.lost == {}


def test_bad_files_give_error_events_and_the_good_file_is_served(endpoint, tmp_path):
    good = make_video(tmp_path / "good.mp4", seconds=2.0, fps=25, size=(96, 64), gop=25)
    truncated = truncated_copy(good, tmp_path / "truncated.mp4", 0.5)
    garbage = write_garbage(tmp_path / "garbage.mp4")
    engine = Engine(EngineConfig(publish=endpoint), pipelines={"default": [IdentityStage()]}).start()
    sub = Subscriber(endpoint)
    time.sleep(0.3)
    try:
        for sid, path in (("good", good), ("truncated", truncated), ("garbage", garbage)):
            engine.add_source(SourceConfig(uri=str(path), stream_id=sid))
        got, finished = [], set()
        deadline = time.monotonic() + 60
        while finished != {"good", "truncated", "garbage"} and time.monotonic() < deadline:
            m = sub.recv(0.5)
            if m is None:
                continue
            got.append(m)
            if isinstance(m, StatusMessage) and (m.event.state == StreamState.ENDED or m.event.fatal):
                finished.add(m.event.stream_id)
    finally:
        engine.stop()
        sub.close()
    events = {m.event.stream_id: m.event for m in got if isinstance(m, StatusMessage) and m.event.state in (StreamState.ENDED, StreamState.ERROR)}
    assert events["good"].state == StreamState.ENDED
    for bad in ("truncated", "garbage"):
        assert events[bad].state == StreamState.ERROR and events[bad].fatal and events[bad].reason
    assert [m.result.frame_index for m in got if isinstance(m, FrameMessage) and m.result.stream_id == "good"] == list(range(50))


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - uri: synthetic://shapes\n    stream_id: a\n    colour: blue\n")
    with pytest.raises(ConfigError, match="colour"):
        EngineConfig.from_yaml(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("sources: [{uri: 'synthetic://shapes', stream_id: a}, {uri: 'synthetic://people', stream_id: a}]\n")
    with pytest.raises(ConfigError, match="duplicate stream id"):
        EngineConfig.from_yaml(dup)
    run = subprocess.run([*AMODAL, "run", "--source", "nosuch://x", "--publish", "tcp://127.0.0.1:1"], capture_output=True, text=True)
    assert run.returncode == 2 and "unsupported URI scheme" in run.stderr


def test_per_source_settings_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "source_defaults: {read_timeout_s: 3.0}\n"
        "analyzer: {name: maskrcnn, weights: /models/m.safetensors, score_threshold: 0.7}\n"
        "sources:\n  - rtsp://127.0.0.1:8554/cam\n  - {uri: scanner:///tmp/xray, stream_id: belt1, queue_size: 4}\n"
    )
    config = EngineConfig.from_yaml(path)
    assert [s.stream_id for s in config.sources] == ["s0", "belt1"]
    assert all(s.read_timeout_s == 3.0 for s in config.sources)
    assert config.sources[1].queue_size == 4
    (stage,) = config.pipelines[0].stages  # the legacy analyzer: section is a one-stage pipeline
    assert (stage.name, stage.settings.weights, stage.settings.score_threshold) == ("maskrcnn", "/models/m.safetensors", 0.7)


def test_summary_line_shows_track_and_global_ids():
    from amodal.cli_subscribe import summary_line
    from amodal.types import FrameResult, ObjectResult

    objects = (ObjectResult(1, "person", 0.91, (0, 0, 4, 8), track_id=3, global_id=17),
               ObjectResult(2, "car", 0.55, (0, 0, 4, 8), track_id=4))
    line = summary_line(FrameMessage("frames/cam/", 5, 0, FrameResult("cam", 9, None, time.time_ns(), 16, 16, objects)))
    assert "frame      9" in line and "person#3 id17 0.91" in line and "car#4 0.55" in line
