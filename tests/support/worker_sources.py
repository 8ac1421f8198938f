"""Sources for the decode-worker tests, importable by worker processes (light imports only: no torch, no pytest)."""
from __future__ import annotations

import threading
import time

import numpy as np

from amodal.streams.base import FrameSink, Source, SourceConfig
from amodal.types import Frame, ScanInfo, StreamEvent, StreamState


def resizing_planes(index: int, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The planes of ``ResizingSource`` frame ``index``: a gray16 image and nothing else (as a tuple of one)."""
    h, w = size_hw
    rng = np.random.default_rng(index)
    return (rng.integers(0, 65536, size=(h, w), dtype=np.uint16),)


class ResizingSource(Source):
    """``n`` gray16 frames of seeded noise, ``first_hw`` up to ``switch_at``, then ``then_hw``; each carries a
    ``ScanInfo`` naming its frame (a Frame field besides the planes that must cross the process boundary)."""

    def __init__(self, stream_id: str, n: int, first_hw=(24, 32), then_hw=(60, 90), switch_at: int = 5) -> None:
        super().__init__(SourceConfig(uri=f"test://{stream_id}", stream_id=stream_id))
        self.n, self.first_hw, self.then_hw, self.switch_at = n, first_hw, then_hw, switch_at

    def size_of(self, index: int) -> tuple[int, int]:
        return self.first_hw if index < self.switch_at else self.then_hw

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        sink.put_event(StreamEvent(self.stream_id, StreamState.UP, time_ns=time.time_ns()))
        for i in range(self.n):
            if stop.is_set():
                break
            h, w = self.size_of(i)
            scan = ScanInfo(bag_id=f"bag-{i}", file_name=f"scan_{i:03d}.dcm")
            frame = Frame(self.stream_id, i, None, time.time_ns(), time.monotonic_ns(), "gray16",
                          resizing_planes(i, (h, w)), w, h, scan=scan)
            if not sink.put_frame(frame):
                break
        sink.put_event(StreamEvent(self.stream_id, StreamState.ENDED, "end of stream", time.time_ns()))
