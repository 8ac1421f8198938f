"""Pipelines of stages in the engine: per-source pipelines, needs checked at start, failures contained and
reported, detached (slow) stages publishing amendments, the annotated-video sink, waiting for subscribers."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
from PIL import Image

from amodal import Subscriber
from amodal.engine.config import EngineConfig, PipelineConfig, StageConfig
from amodal.engine.engine import Engine
from amodal.engine.pipeline import Pipeline, StageSlot, run_stage
from amodal.engine.preprocess import prepare_inputs
from amodal.engine.sink import Sink
from amodal.engine.stage import InputSpec, RatePolicy, Stage, StageBatch
from amodal.engine.stages.identity import IdentityStage
from amodal.errors import ConfigError
from amodal.schema import AmendmentMessage, FrameMessage, StatusMessage
from amodal.streams.base import SourceConfig
from amodal.types import Frame, ObjectResult, StreamState

from tests.support.array_source import ArraySource
from tests.support.subscribe import drain
from tests.engine.conftest import free_port

AMODAL = [sys.executable, "-m", "amodal.cli"]


class Tagger(Stage):
    """Primary: one object per frame named after the stage, with a track id."""

    primary = True
    fills = frozenset({"objects", "tracks"})
    input_spec = InputSpec()

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        images = batch.input(self.input_spec).images
        assert all(img.shape[0] == 3 for img in images)
        return [(ObjectResult(1, self.name, 1.0, (0.0, 0.0, 2.0, 2.0), track_id=7),) for _ in batch.frames]


class Layerer(Stage):
    """Secondary: sets every object's occlusion layer; optionally slow."""

    name = "layerer"
    needs = frozenset({"objects"})
    fills = frozenset({"occlusion_layers"})

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.sleep_s = sleep_s
        self.eos: list[str] = []
        self.thread: str | None = None

    def start(self, device) -> None:
        super().start(device)
        self.thread = threading.current_thread().name

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        time.sleep(self.sleep_s)
        return [tuple(dataclasses.replace(o, occlusion_layer=2) for o in objects) for objects in batch.objects]

    def on_source_eos(self, stream_id: str) -> None:
        self.eos.append(stream_id)


def _frames(got, stream: str) -> list[FrameMessage]:
    return [m for m in got if isinstance(m, FrameMessage) and m.result.stream_id == stream]


def _write_bags(folder, n: int) -> None:
    folder.mkdir(exist_ok=True)
    for i in range(n):
        image = np.full((40, 56), 1000 * (i + 1), dtype=np.uint16)
        Image.fromarray(image).save(folder / f"bag_{i:03d}.png")


def test_two_pipelines_in_one_engine_each_get_only_their_own_fields(endpoint, tmp_path):
    _write_bags(tmp_path / "belt", 4)
    config = EngineConfig(publish=endpoint, max_batch_size=8, wait_for_subscribers=1, sources=(
        SourceConfig(uri="synthetic://shapes?w=64&h=48&fps=200&seconds=0.1", stream_id="cam", pipeline="cameras",
                     overflow="block"),
        SourceConfig(uri=f"scanner://{tmp_path / 'belt'}?settle_s=0.05", stream_id="belt", pipeline="scanners",
                     max_frames=4)))
    layerer = Layerer()
    engine = Engine(config, pipelines={"cameras": [Tagger("camtag")], "scanners": [Tagger("bagtag"), layerer]})
    with Subscriber(endpoint) as sub:
        engine.start()
        try:
            got = drain(sub, {"cam", "belt"})
        finally:
            engine.stop()
    cam, belt = _frames(got, "cam"), _frames(got, "belt")
    assert len(cam) == 20 and len(belt) == 4
    assert all(m.result.analyzer == "camtag" and [o.class_name for o in m.result.objects] == ["camtag"]
               and m.result.objects[0].occlusion_layer is None for m in cam)
    assert all(m.result.analyzer == "bagtag,layerer" and [o.class_name for o in m.result.objects] == ["bagtag"]
               and m.result.objects[0].occlusion_layer == 2 for m in belt)
    assert layerer.eos == ["belt"] and layerer.thread == "amodal-inference"  # started on the inference thread


def test_pipelines_from_yaml_share_a_stage_built_with_the_same_settings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "pipelines:\n"
        "  a: [identity, {stage: identity, rate: newest}]\n"
        "  b: [{stage: identity}]\n"
        "default_pipeline: a\n"
        "sources:\n"
        "  - {uri: 'synthetic://shapes', stream_id: x}\n"
        "  - {uri: 'synthetic://shapes', stream_id: y, pipeline: b}\n")
    config = EngineConfig.from_yaml(path)
    assert [p.stage_names for p in config.pipelines] == [("identity", "identity"), ("identity",)]
    assert config.pipelines[0].stages[1].rate == RatePolicy(mode="newest")
    engine = Engine(config)
    stages = {id(s.stage) for p in engine.pipelines.values() for s in p.slots}
    assert len(stages) == 1, "one identity stage (same settings) serves every pipeline"


@pytest.mark.parametrize("yaml_text, message", [
    ("pipelines: {a: [ovsi]}\n", r"unknown stage 'ovsi'; known stages: identity, maskrcnn, ovis, reid"),
    ("pipelines: {a: [{stage: identity, colour: red}]}\n", r"unknown key colour"),
    ("pipelines: {a: [{stage: maskrcnn, score_treshold: 0.2}]}\n", r"unknown key score_treshold; known: mask_threshold"),
    ("pipelines: {a: [identity]}\nsources: [{uri: 'synthetic://shapes', pipeline: b}]\n",
     r"unknown pipeline 'b'; known pipelines: a"),
    ("pipelines: {a: [{stage: identity, rate: sometimes}]}\n", r"rate.mode must be every, nth or newest"),
    ("pipelines: {a: [identity]}\nanalyzer: identity\n", r"not both"),
])
def test_config_errors_name_the_bad_stage_key_or_pipeline(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        EngineConfig.from_yaml(path)


def test_a_stage_whose_needs_no_earlier_stage_fills_is_refused_at_start():
    with pytest.raises(ConfigError, match=r"stage 'layerer' needs objects, which no earlier stage fills "
                                          r"\(earlier: none\); put it after a stage that fills them"):
        Engine(EngineConfig(), pipelines={"p": [Layerer()]})
    with pytest.raises(ConfigError, match=r"'reid' needs person_tracks.*\(ovis\)"):
        Engine(EngineConfig(pipelines=(PipelineConfig.of("people", ["maskrcnn", "reid"]),)))
    # a detached stage feeds no later stage
    with pytest.raises(ConfigError, match="needs objects"):
        Engine(EngineConfig(), pipelines={"p": [StageSlot(Tagger("t"), RatePolicy("newest")), Layerer()]})
    run = subprocess.run([*AMODAL, "run", "--source", "synthetic://shapes", "--pipeline", "identity,reid"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "needs person_tracks" in run.stderr


class FailsOn(IdentityStage):
    def __init__(self, stream: str) -> None:
        super().__init__()
        self.stream = stream

    def process(self, batch: StageBatch):
        if any(f.stream_id == self.stream for f in batch.frames):
            raise RuntimeError(f"cannot handle {self.stream}")
        return super().process(batch)

    def on_source_eos(self, stream_id: str) -> None:
        if stream_id == self.stream:
            raise RuntimeError("end-of-stream hook broke")


def test_a_stage_that_raises_for_one_stream_leaves_the_others_served(endpoint):
    engine = Engine(EngineConfig(publish=endpoint, max_batch_size=8, max_wait_ms=20),
                    pipelines={"default": [FailsOn("bad")]})
    with Subscriber(endpoint) as sub:
        engine.start()
        time.sleep(0.3)
        try:
            engine.add_source(ArraySource("bad", 30, interval_s=0.001))
            engine.add_source(ArraySource("good", 30, interval_s=0.001))
            got = drain(sub, {"bad", "good"}, extra_s=0.5)  # an end-of-stream hook runs after "ended"
        finally:
            engine.stop()
    assert [m.result.frame_index for m in _frames(got, "good")] == list(range(30))
    assert _frames(got, "bad") == []
    errors = [m.event for m in got if isinstance(m, StatusMessage) and m.event.state == StreamState.ERROR]
    assert errors and all(e.stream_id == "bad" and not e.fatal for e in errors)
    assert any("cannot handle bad" in e.reason for e in errors)
    assert any("end-of-stream hook broke" in e.reason for e in errors)
    assert engine.failures == []


class WrongCount(IdentityStage):
    def process(self, batch):
        return []


def test_stage_contract_breaches_are_failures_not_silence():
    frame = Frame("s", 0, None, 0, time.monotonic_ns(), "rgb24", (np.zeros((4, 4, 3), np.uint8),), 4, 4)
    batch = StageBatch((frame,), ((),))
    out, failures = run_stage(IdentityStage(), batch)  # never started
    assert out == [None] and "processed before start" in failures[0].reason
    stage = WrongCount()
    stage.start(None or __import__("torch").device("cpu"))
    out, failures = run_stage(stage, batch)
    assert out == [None] and "returned 0 results for 1 frames" in failures[0].reason


class Recorder(Sink):
    name = "recorder"

    def __init__(self) -> None:
        self.events = []

    def write_results(self, frames, results) -> None:
        """Only events are recorded."""

    def write_event(self, event) -> None:
        self.events.append(event)


def test_a_dead_publisher_thread_stops_the_engine_with_a_failure(endpoint, monkeypatch):
    from amodal import schema

    def broken(*args, **kwargs):
        raise MemoryError("simulated")

    recorder = Recorder()
    engine = Engine(EngineConfig(publish=endpoint, exit_when_done=False), pipelines={"default": [IdentityStage()]},
                    sinks=[recorder]).start()
    try:
        monkeypatch.setattr(schema, "encode_frame", broken)
        engine.add_source(ArraySource("a", 10_000, interval_s=0.001, live=True))
        assert engine.wait(20), "a dead publisher must stop the engine"
    finally:
        engine.stop()
    assert engine.failures and "sink publisher failed" in engine.failures[0]
    assert any(e.state == StreamState.ERROR and e.fatal and "publisher failed" in e.reason for e in recorder.events)


def test_slow_stage_results_arrive_as_amendments_without_delaying_frames(endpoint):
    slow = Layerer(sleep_s=0.3)
    engine = Engine(EngineConfig(publish=endpoint, max_batch_size=4),
                    pipelines={"default": [Tagger("fast"), StageSlot(slow, RatePolicy("newest"))]})
    with Subscriber(endpoint) as sub:
        engine.start()
        time.sleep(0.3)
        try:
            engine.add_source(ArraySource("cam", 50, interval_s=0.02))
            got = drain(sub, {"cam"}, extra_s=1.0)
        finally:
            engine.stop()
    frames = _frames(got, "cam")
    amendments = [m for m in got if isinstance(m, AmendmentMessage)]
    assert [m.result.frame_index for m in frames] == list(range(50))
    assert all(m.result.objects[0].occlusion_layer is None for m in frames)  # the fast path does not wait
    assert 2 <= len(amendments) < 50, "newest-frame policy: the slow stage skips frames it cannot keep up with"
    published = {m.result.frame_index: m.result for m in frames}
    for m in amendments:
        a = m.amendment
        assert a.stage == "layerer" and a.frame_index in published and a.refs == (0,)
        assert a.objects[0].occlusion_layer == 2 and a.objects[0].track_id == published[a.frame_index].objects[0].track_id
    assert slow.eos == ["cam"] and slow.thread == "amodal-stage-layerer"
    assert [m.seq for m in amendments] == list(range(len(amendments)))  # their own sequence on the frames topic


def test_annotated_sink_writes_a_playable_mp4_with_the_source_frame_count(endpoint, tmp_path):
    out = tmp_path / "annotated.mp4"
    engine = Engine(EngineConfig(publish=endpoint, annotate=str(out)),
                    pipelines={"default": [Tagger("thing")]}).start()
    try:
        engine.add_source(ArraySource("a", 37, size=(48, 64)))
        engine.add_source(ArraySource("b", 12, size=(33, 41)))  # odd sizes are cropped to even for H.264
        assert engine.wait(60)
    finally:
        engine.stop()
    counts = {}
    for stream in ("a", "b"):  # sources added at run time: one file per stream, named after it
        with av.open(str(tmp_path / f"annotated_{stream}.mp4")) as container:
            counts[stream] = sum(1 for _ in container.decode(video=0))
    assert counts == {"a": 37, "b": 12}


def test_a_subscriber_started_first_gets_every_frame_of_a_file(endpoint, tmp_path):
    from tests.support.media import make_video

    clip = make_video(tmp_path / "clip.mp4", seconds=2.0, fps=25, size=(64, 48), gop=25)
    counts = []
    for _ in range(3):
        endpoint = f"{endpoint.rsplit(':', 1)[0]}:{free_port()}"  # a fresh port: a closed listener lingers
        got: list = []
        with Subscriber(endpoint, streams=["clip"], status=False) as sub:
            config = EngineConfig(publish=endpoint, wait_for_subscribers=1, wait_for_subscribers_timeout_s=10,
                                  sources=(SourceConfig(uri=str(clip), stream_id="clip"),))
            engine = Engine(config, pipelines={"default": [IdentityStage()]}).start()  # binds, waits, then reads
            try:
                while (m := sub.recv(2.0)) is not None:
                    got.append(m)
                engine.wait(10)
            finally:
                engine.stop()
        counts.append(sum(isinstance(m, FrameMessage) for m in got))
    assert counts == [50, 50, 50]


def test_preprocessing_runs_once_per_batch_and_declared_input(monkeypatch):
    import amodal.engine.preprocess as pre

    calls = []
    real = pre.preprocess

    def counting(planes, *args, **kwargs):
        calls.append(planes[0].shape[0])
        return real(planes, *args, **kwargs)

    monkeypatch.setattr(pre, "preprocess", counting)
    small = InputSpec(size_hw=(16, 16))

    class Small(Tagger):
        input_spec = small

    pipeline = Pipeline.of("p", [Tagger("a"), Tagger("b"), Small("c")])
    for stage in (s.stage for s in pipeline.slots):
        stage.start(__import__("torch").device("cpu"))
    frames = [Frame("s", i, None, 0, time.monotonic_ns(), "yuv420p",
                    (np.zeros((32, 48), np.uint8), np.zeros((16, 24), np.uint8), np.zeros((16, 24), np.uint8)), 48, 32)
              for i in range(8)]
    out = pipeline.process(frames, __import__("torch").device("cpu"))
    assert len(out.results) == 8 and not out.failures
    assert calls == [8, 8], "two distinct inputs, each converted once for the whole batch of 8"


def test_sixteen_bit_frames_keep_their_range():
    raw = np.array([[0, 300], [40000, 65535]], dtype=np.uint16)
    frame = Frame("belt", 0, None, 0, 0, "gray16", (raw,), 2, 2)
    image = prepare_inputs([frame], [InputSpec()], __import__("torch").device("cpu"))[InputSpec()].images[0]
    np.testing.assert_allclose(image[0].numpy(), raw / 65535.0, rtol=1e-6)
    assert image[0, 0, 1] * 65535 == pytest.approx(300)  # not squeezed to 8 bits


def test_stage_config_validates_its_settings():
    with pytest.raises(ConfigError, match=r"score_threshold must be in \[0, 1\]"):
        StageConfig("maskrcnn", {"score_threshold": 3})


def test_a_model_two_pipelines_use_is_loaded_once():
    config = EngineConfig(pipelines=(
        PipelineConfig("a", (StageConfig("ovis", {"score_threshold": 0.5}),)),
        PipelineConfig("b", (StageConfig("ovis", {"score_threshold": 0.7}),)),
        PipelineConfig("c", (StageConfig("ovis", {"score_threshold": 0.5}),))), default_pipeline="a")
    engine = Engine(config)
    a, b, c = (engine.pipelines[name].slots[0].stage for name in "abc")
    assert a is c, "same stage and settings: one stage"
    assert a is not b and a.loaded is b.loaded, "other settings: another stage, the same loaded model"


def test_a_slow_stage_never_outlives_its_engine_and_reports_what_it_did_not_process(endpoint):
    slow = Layerer(sleep_s=0.4)
    recorder = Recorder()
    engine = Engine(EngineConfig(publish=endpoint, max_batch_size=1, exit_when_done=False),
                    pipelines={"default": [Tagger("t"), StageSlot(slow, RatePolicy("every", detached=True))]},
                    sinks=[recorder]).start()
    engine.add_source(ArraySource("cam", 20))
    time.sleep(1.0)
    engine.stop(timeout_s=1.0)
    worker = next(iter(engine._detached.values()))
    assert worker._thread is None and not slow.started, "the worker ended and the stage was stopped"
    dropped = [e for e in recorder.events if e.state == StreamState.DROPPED and "engine stopped" in e.reason]
    assert dropped and worker.processed + len(dropped) == 20  # every frame processed or named as dropped
