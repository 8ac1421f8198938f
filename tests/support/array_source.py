"""An in-memory source for engine tests: frames from arrays, optional pacing and failure."""
from __future__ import annotations

import threading
import time

import numpy as np

from amodal.streams.base import FrameSink, Source, SourceConfig
from amodal.types import Frame, StreamEvent, StreamState


class ArraySource(Source):
    """Delivers ``n`` small rgb24 frames (pixel value = index % 256, or ``images[index]``: uint8[H, W, 3] each),
    optionally spaced by ``interval_s``."""

    def __init__(self, stream_id: str, n: int, interval_s: float = 0.0, live: bool = False, size=(16, 24),
                 fail_at: int | None = None, pipeline: str | None = None, images=None):
        super().__init__(SourceConfig(uri=f"test://{stream_id}", stream_id=stream_id, pipeline=pipeline))
        self.n, self.interval_s, self.live, self.size, self.fail_at = n, interval_s, live, size, fail_at
        self.images = images
        self.delivered = 0
        self.refused = 0

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        sink.put_event(StreamEvent(self.stream_id, StreamState.CONNECTING, time_ns=time.time_ns()))
        sink.put_event(StreamEvent(self.stream_id, StreamState.UP, time_ns=time.time_ns()))
        h, w = self.size
        for i in range(self.n):
            if stop.is_set():
                break
            if self.fail_at is not None and i == self.fail_at:
                sink.put_event(StreamEvent(self.stream_id, StreamState.ERROR, "test failure", time.time_ns(), fatal=True))
                return
            image = np.full((h, w, 3), i % 256, dtype=np.uint8) if self.images is None else self.images[i]
            h, w = image.shape[:2]
            frame = Frame(self.stream_id, i, i / 25, time.time_ns(), time.monotonic_ns(), "rgb24", (image,), w, h)
            if not sink.put_frame(frame):
                self.refused += 1
                break
            self.delivered += 1
            if self.interval_s:
                time.sleep(self.interval_s)
        sink.put_event(StreamEvent(self.stream_id, StreamState.ENDED, time_ns=time.time_ns()))
