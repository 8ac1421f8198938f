"""Prometheus metrics and the health endpoint of a running engine, read over HTTP as a scraper would."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stages.identity import IdentityStage
from amodal.streams.base import SourceConfig

from tests.support.array_source import ArraySource


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Sleepy(IdentityStage):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def process(self, batch):
        time.sleep(self.seconds)
        return super().process(batch)


def test_metrics_count_frames_drops_and_latency_and_health_is_ok(endpoint):
    engine = Engine(EngineConfig(publish=endpoint, metrics_port=0, exit_when_done=False),
                    pipelines={"default": [IdentityStage()]}).start()
    try:
        engine.add_source(ArraySource("a", 40))
        time.sleep(1.5)
        base = f"http://127.0.0.1:{engine.monitor.port}"
        code, text = _get(base + "/metrics")
        assert code == 200
        assert 'amodal_frames_total{stream="a"} 40.0' in text
        assert 'amodal_latency_ms_bucket{le="+Inf",stage="queue"} 40.0' in text
        assert 'amodal_latency_ms_count{stage="total"}' in text and 'stage="identity"' in text
        assert 'amodal_stream_state{state="ended",stream="a"} 1.0' in text
        code, body = _get(base + "/health")
        assert code == 200 and json.loads(body)["status"] == "healthy"
        assert _get(base + "/nope")[0] == 404
    finally:
        engine.stop()


def test_health_reports_a_stream_down_too_long(endpoint):
    config = EngineConfig(publish=endpoint, metrics_port=0, exit_when_done=False, health_stream_down_s=0.5)
    engine = Engine(config, pipelines={"default": [IdentityStage()]}).start()
    try:  # nothing listens there: the camera keeps reconnecting
        engine.add_source(SourceConfig(uri="rtsp://127.0.0.1:9/none", stream_id="cam", open_timeout_s=0.5,
                                       backoff_initial_s=0.2, backoff_max_s=0.5))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, body = _get(f"http://127.0.0.1:{engine.monitor.port}/health")
            if code == 503:
                break
            time.sleep(0.2)
        assert code == 503, body
        report = json.loads(body)
        assert report["status"] == "unhealthy" and any("stream cam down" in p for p in report["problems"])
        assert 'amodal_reconnects_total{stream="cam"}' in _get(f"http://127.0.0.1:{engine.monitor.port}/metrics")[1]
    finally:
        engine.stop()


def test_health_reports_a_stalled_inference_loop(endpoint):
    config = EngineConfig(publish=endpoint, metrics_port=0, exit_when_done=False, health_stall_s=0.5)
    engine = Engine(config, pipelines={"default": [Sleepy(3.0)]}).start()
    try:
        engine.add_source(ArraySource("a", 1))
        time.sleep(1.5)  # the loop sits in the sleeping stage
        code, body = _get(f"http://127.0.0.1:{engine.monitor.port}/health")
        assert code == 503 and "inference loop stalled" in body
    finally:
        engine.stop()
