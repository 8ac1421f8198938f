"""``LiveView``: the live view as an engine sink — results with their frames, events and metrics in; the page,
the MJPEG video and the REST API out (``amodal run --http``).

>>> view = LiveView(WebSettings(port=8080))
>>> engine = Engine(config, sinks=[view])
>>> view.attach(engine)        # POST/DELETE /streams act on it
>>> engine.start()             # starts the view's encoder thread and HTTP server too

The sink's methods run on the engine's inference thread and only store references (``LiveState``); drawing and
encoding run on the view's encoder thread, serving on the HTTP server's thread.  ``amodal view`` feeds the same
state (``LiveView.state``) from a subscriber instead, with no engine to control.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from amodal.engine.sink import Sink
from amodal.engine.web.app import build_app
from amodal.engine.web.control import EngineControl
from amodal.engine.web.encoder import FrameEncoder
from amodal.engine.web.server import HttpServer
from amodal.engine.web.settings import WebSettings
from amodal.engine.web.state import LiveState
from amodal.types import Amendment, Frame, FrameResult, StreamEvent


class LiveView(Sink):
    name = "web"

    def __init__(self, settings: WebSettings, *, source: str = "this engine", stream_down_s: float = 30.0,
                 stall_s: float = 10.0) -> None:
        self.settings = settings
        self.source = source
        self.state = LiveState(bags_kept=settings.bags_kept, stream_down_s=stream_down_s, stall_s=stall_s)
        self.encoder = FrameEncoder(self.state, max_fps=settings.max_fps, max_width=settings.max_width,
                                    quality=settings.jpeg_quality, thumb_width=settings.thumb_width)
        self.control: EngineControl | None = None
        self.server: HttpServer | None = None

    @property
    def failure(self) -> BaseException | None:  # type: ignore[override]
        return self.encoder.failure

    def attach(self, engine) -> None:
        """Let the REST API add and remove ``engine``'s sources (before the engine starts)."""
        self.control = EngineControl(engine, self.state)

    @property
    def url(self) -> str:
        if self.server is None:
            raise RuntimeError("the live view has not started")
        return self.server.url

    def start(self) -> None:
        app = build_app(self.state, self.control, token=self.settings.token, max_fps=self.settings.max_fps,
                        source=self.source)
        self.server = HttpServer(app, self.settings.host, self.settings.port,
                                 shutdown_timeout_s=self.settings.shutdown_timeout_s)
        self.encoder.start()
        try:
            self.server.start()
        except BaseException:
            self.encoder.stop()
            raise

    def close(self) -> None:
        self.encoder.stop()  # the state is closing: video responses end
        if self.server is not None:
            self.server.stop()

    # ------------------------------------------------------------------------------------------- sink
    def write_results(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        now_ns = time.monotonic_ns()
        self.state.on_results(frames, results, [(now_ns - r.received_mono_ns) / 1e6 for r in results])

    def write_amendment(self, amendment: Amendment) -> None:
        self.state.on_amendment(amendment)

    def write_event(self, event: StreamEvent) -> None:
        self.state.on_event(event)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self.state.on_metrics(metrics)
