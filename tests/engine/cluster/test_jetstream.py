"""The JetStream transport without Ray: an engine's results stored in a real nats-server (started here), read back
with durable consumers; the same payloads as ZeroMQ; numbering that survives an engine restart; a server that dies
and comes back loses nothing; `amodal subscribe nats://... --durable` resumes; config and subject errors."""
from __future__ import annotations

import json
import socket
import time

import pytest

from amodal import Subscriber
from amodal.cli_subscribe import main as subscribe_main
from amodal.engine.cluster import JetStreamSettings, SiteConfig
from amodal.engine.cluster.jetstream import JetStreamSink
from amodal.engine.cluster.nats_server import NatsServers, nats_server_binary
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.errors import ConfigError, EngineError, SchemaError
from amodal.schema import FrameMessage, StatusMessage
from amodal.streams.base import SourceConfig
from amodal.subscriber_nats import NatsSubscriber, frames_subject, subject_token, topic_of_subject
from amodal.types import StreamState

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(nats_server_binary() is None,
                                 reason="nats-server is not installed (apt-get install nats-server; CI installs it)")]

ODD_ID = "gate.7*>x"  # a stream id with the characters NATS gives meaning to


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    with NatsServers.start(1, tmp_path_factory.mktemp("nats1")) as servers:
        yield servers


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _run_engine(nats, stream_id: str, frames: int, *, zmq_subscriber: bool = False, fps: float = 200.0):
    """Run ``frames`` synthetic frames of ``stream_id`` through an engine with a JetStream sink; the frame
    messages a ZeroMQ subscriber saw (when asked) and the sink."""
    publish = _endpoint()
    uri = f"synthetic://shapes?w=64&h=48&fps={fps}&objects=2&seed=3"
    config = EngineConfig(sources=(SourceConfig(uri=uri, stream_id=stream_id, max_frames=frames, realtime=True,
                                                queue_size=frames),),
                          publish=publish, wait_for_subscribers=int(zmq_subscriber))
    sink = JetStreamSink(JetStreamSettings(servers=tuple(nats.urls), max_age_s=600), "test-engine")
    seen = []
    sub = Subscriber(publish, [stream_id]) if zmq_subscriber else None
    try:
        engine = Engine(config, sinks=[sink]).start()
        if sub is not None:
            while not any(isinstance(m, StatusMessage) and m.event.state == StreamState.ENDED for m in seen):
                message = sub.recv(20)
                assert message is not None, "no ZeroMQ message within 20 s"
                seen.append(message)
        assert engine.wait(30)
        engine.stop()
    finally:
        if sub is not None:
            sub.close()
    return [m for m in seen if isinstance(m, FrameMessage)], sink


def _read(sub: NatsSubscriber, count: int, timeout_s: float = 20) -> list:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        message = sub.recv(0.5)
        if isinstance(message, FrameMessage):
            out.append(message)
    return out


def test_same_payloads_as_zeromq_and_numbering_continues_after_a_restart(nats):
    zmq_frames, sink = _run_engine(nats, ODD_ID, 12, zmq_subscriber=True)
    assert sink.published[frames_subject(ODD_ID)] == 12 and sink.duplicates == 0 and sink.failure is None
    _, again = _run_engine(nats, ODD_ID, 5)  # a restarted engine continues the stream's numbering: no id reused
    assert again.duplicates == 0
    with NatsSubscriber(nats.urls, [ODD_ID], timeout_s=5) as sub:
        frames = _read(sub, 17)
        assert not sub.stats.lost and not sub.stats.malformed
    assert [m.seq for m in frames] == list(range(17))
    assert [m.result.frame_index for m in frames] == list(range(12)) + list(range(5))
    for z, n in zip(zmq_frames, frames):  # the same results: only the publish time differs
        assert (z.seq, z.topic, z.result) == (n.seq, n.topic, n.result)


def test_a_durable_reader_resumes_and_a_lost_server_loses_nothing(nats, tmp_path):
    sink = JetStreamSink(JetStreamSettings(servers=tuple(nats.urls), max_age_s=600, publish_timeout_s=1.0), "loss")
    publish = _endpoint()
    uri = "synthetic://shapes?w=64&h=48&fps=25&objects=1&seed=5&seconds=4"
    engine = Engine(EngineConfig(sources=(SourceConfig(uri=uri, stream_id="belt"),), publish=publish),
                    sinks=[sink]).start()
    try:
        with NatsSubscriber(nats.urls, ["belt"], durable="belt-reader", status=False) as first:
            head = _read(first, 10)
        time.sleep(0.5)
        nats.kill(0)  # the server goes away for a second; the sink holds and retries with the same message ids
        time.sleep(1.0)
        nats.restart(0)
        assert engine.wait(30)
    finally:
        engine.stop()
    assert sink.failure is None and sink.dropped == 0
    with NatsSubscriber(nats.urls, ["belt"], durable="belt-reader", timeout_s=2) as second:
        rest = [m for m in second if isinstance(m, FrameMessage)]
        assert not second.stats.lost
    seqs = [m.seq for m in head + rest]
    # every frame the engine published is there once, in order (a live source may drop frames before analysis)
    assert seqs == list(range(sink.published[frames_subject("belt")])), (len(seqs), seqs[:12])
    assert len(seqs) > 60


def test_amodal_subscribe_nats_durable_resumes_after_the_last_printed(nats, capsys):
    _run_engine(nats, "cli-cam", 8)
    url = nats.urls[0]
    args = [url, "--stream", "cli-cam", "--durable", "cli", "--json", "--no-status", "--timeout", "2"]
    assert subscribe_main(args + ["--count", "3"]) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert subscribe_main(args) == 0
    rest = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["seq"] for m in first + rest] == list(range(8))
    assert all(m["stream_id"] == "cli-cam" and m["type"] == "frame" for m in first + rest)


def test_subjects_settings_and_site_errors(nats):
    assert subject_token(ODD_ID) == "gate%2E7%2A%3Ex" and "." not in subject_token("a.b")
    assert topic_of_subject(frames_subject(ODD_ID)) == f"frames/{ODD_ID}/"
    with pytest.raises(SchemaError, match="not an amodal subject"):
        topic_of_subject("other.frames.x")
    with pytest.raises(ConfigError, match="nats://"):
        JetStreamSettings(servers=("tcp://127.0.0.1:5555",))
    with pytest.raises(ConfigError, match="replicas"):
        JetStreamSettings(replicas=7)
    with pytest.raises(ConfigError, match="durable"):
        NatsSubscriber(nats.urls, durable="has.dot")
    with pytest.raises(EngineError, match="not found"):
        NatsSubscriber(nats.urls, stream_name="NOSUCH", connect_timeout_s=1.0)
    site = SiteConfig.from_dict({"cluster": {"num_cpus": 0.5, "resources": {"cams": 1}},
                                 "sources": [{"uri": "synthetic://shapes", "stream_id": "a",
                                              "resources": {"GPU": 1, "memory": 4e9, "fast_disk": 1}},
                                             {"uri": "synthetic://shapes", "stream_id": "b"}]})
    assert site.resources["a"].ray_options() == {"num_cpus": 0.5, "num_gpus": 1, "memory": 4_000_000_000,
                                                 "resources": {"cams": 1, "fast_disk": 1}}
    assert site.resources["b"].ray_options() == {"num_cpus": 0.5, "num_gpus": 0.0, "resources": {"cams": 1}}
    assert [s.stream_id for s in site.engine.sources] == ["a", "b"]
    with pytest.raises(ConfigError, match=r"sources\[0\].*num_gpus"):
        SiteConfig.from_dict({"sources": [{"uri": "synthetic://shapes", "resources": {"GPU": -1}}]})
    with pytest.raises(ConfigError, match="cluster.*unknown key.*gpus"):
        SiteConfig.from_dict({"cluster": {"gpus": 1}, "sources": ["synthetic://shapes"]})
    with pytest.raises(ConfigError, match="no sources"):
        SiteConfig.from_dict({"cluster": {}})


def test_an_idle_ephemeral_reader_keeps_its_consumer(nats):
    """The server deletes an ephemeral consumer not pulled from for its inactivity threshold (5 s by default); the
    reader sets a long one, so a reader idle while nothing is published still gets what comes next."""
    with NatsSubscriber(nats.urls, ["late"], deliver="new", status=False) as sub:
        time.sleep(6.0)
        _run_engine(nats, "late", 4)
        assert [m.seq for m in _read(sub, 4, timeout_s=10)] == [0, 1, 2, 3]
