"""Operators' view of a running engine: Prometheus metrics at ``/metrics`` and a health check at ``/health``.

A sink (it sees every result and stream event) that keeps, per stream: frames analysed, drops, errors, reconnects
and the current state, plus latency histograms per stage (``queue``, each stage, ``model``, ``publish``,
``total``) — served in Prometheus' text format through ``prometheus_client`` on its own registry, by a small
threaded HTTP server (``metrics_host:metrics_port``).  ``/health`` answers 200 with a JSON body while the engine is
healthy and 503 when a stream has been down (connecting, reconnecting or in error) longer than
``stream_down_s``, or the inference loop has not turned for ``stall_s`` (``Engine.heartbeat``).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from amodal.engine.sink import Sink
from amodal.types import Frame, FrameResult, StreamEvent, StreamState

log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_DOWN = (StreamState.CONNECTING, StreamState.RECONNECTING, StreamState.ERROR)


class EngineMonitor(Sink):
    name = "monitor"

    def __init__(self, host: str, port: int, heartbeat: Callable[[], float], *, stream_down_s: float = 30.0,
                 stall_s: float = 10.0) -> None:
        """``heartbeat()``: ``time.monotonic()`` of the inference loop's last turn."""
        self.host, self.port = host, port
        self.heartbeat = heartbeat
        self.stream_down_s, self.stall_s = stream_down_s, stall_s
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("amodal_frames", "frames analysed", ["stream"], registry=r)
        self.dropped = Counter("amodal_dropped_frames", "frames dropped by a queue or a slow stage", ["stream"],
                               registry=r)
        self.errors = Counter("amodal_errors", "error events (stage failures, bad input, source errors)", ["stream"],
                              registry=r)
        self.reconnects = Counter("amodal_reconnects", "reconnection attempts", ["stream"], registry=r)
        self.state = Gauge("amodal_stream_state", "1 for the stream's current state", ["stream", "state"], registry=r)
        self.latency = Histogram("amodal_latency_ms", "per-stage latency of each frame, ms", ["stage"],
                                 buckets=LATENCY_BUCKETS_MS, registry=r)
        self._lock = threading.Lock()
        self._states: dict[str, tuple[StreamState, float]] = {}  # stream → (state, since monotonic)
        self._server: ThreadingHTTPServer | None = None

    # -------------------------------------------------------------------------------------- serving
    def start(self) -> None:
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(monitor.registry))
                elif path == "/health":
                    healthy, report = monitor.health()
                    self._reply(200 if healthy else 503, "application/json", json.dumps(report).encode())
                else:
                    self._reply(404, "text/plain", b"not found: /metrics or /health\n")

            def _reply(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - scrapes are not log lines
                log.debug("%s " + format, self.client_address[0], *args)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="amodal-monitor", daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def health(self) -> tuple[bool, dict]:
        """(healthy, report): streams down too long and the inference loop's idle time."""
        now = time.monotonic()
        loop_idle_s = now - self.heartbeat()
        with self._lock:
            states = dict(self._states)
        down = {sid: round(now - since, 1) for sid, (state, since) in states.items()
                if state in _DOWN and now - since > self.stream_down_s}
        problems = [f"stream {sid} down for {s} s" for sid, s in sorted(down.items())]
        if loop_idle_s > self.stall_s:
            problems.append(f"inference loop stalled for {loop_idle_s:.1f} s")
        report = {"status": "unhealthy" if problems else "healthy", "problems": problems,
                  "inference_loop_idle_s": round(loop_idle_s, 3),
                  "streams": {sid: {"state": state.value, "for_s": round(now - since, 1)}
                              for sid, (state, since) in states.items()}}
        return not problems, report

    # ----------------------------------------------------------------------------------------- sink
    def write_results(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        for result in results:
            self.frames.labels(result.stream_id).inc()
            for stage, ms in result.stage_ms.items():
                self.latency.labels(stage).observe(ms)

    def observe_published(self, publish_ms: float, total_ms: float) -> None:
        self.latency.labels("publish").observe(publish_ms)
        self.latency.labels("total").observe(total_ms)

    def write_event(self, event: StreamEvent) -> None:
        sid = event.stream_id
        if event.state == StreamState.DROPPED:
            self.dropped.labels(sid).inc(max(1, _named_drops(event.reason)))
            return
        if event.state == StreamState.ERROR:
            self.errors.labels(sid).inc()
            if not event.fatal:  # a non-fatal error (a failed batch, a skipped file) is not a state change
                return
        if event.state == StreamState.RECONNECTING:
            self.reconnects.labels(sid).inc()
        with self._lock:
            previous = self._states.get(sid)
            if previous is None or previous[0] != event.state:
                self._states[sid] = (event.state, time.monotonic())
            if event.state == StreamState.REMOVED:
                del self._states[sid]
        for state in StreamState:
            if state != StreamState.DROPPED:
                self.state.labels(sid, state.value).set(1.0 if state == event.state else 0.0)


def _named_drops(reason: str | None) -> int:
    """How many frames a ``dropped`` notice names ("dropped frame 7 …" or "dropped 12 frames: …")."""
    if not reason:
        return 1
    words = reason.split("dropped ", 1)[-1].split()
    return int(words[0]) if words and words[0].isdigit() else 1
