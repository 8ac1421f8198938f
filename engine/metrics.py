"""Per-stage latency windows, fps and drop counters of a running engine."""
from __future__ import annotations

import collections
import threading
import time

import numpy as np


class LatencyWindow:
    """The last ``size`` samples of one latency, in milliseconds."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._samples.append(ms)

    def summary(self) -> dict[str, float]:
        if not self._samples:
            return {}
        a = np.fromiter(self._samples, dtype=np.float64)
        p50, p95, p99 = np.percentile(a, [50, 95, 99])
        return {"p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "p99_ms": round(p99, 3), "max_ms": round(a.max(), 3)}


class EngineMetrics:
    """Thread-safe counters; ``snapshot()`` is what the ``metrics/`` topic publishes."""

    STAGES = ("queue", "model", "publish", "total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self.stages = {name: LatencyWindow() for name in self.STAGES}
        self.frames_analysed: collections.Counter[str] = collections.Counter()
        self.batches = 0
        self.batch_frames = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._window_start = time.monotonic()
        self._window_frames: collections.Counter[str] = collections.Counter()
        self._fps: dict[str, float] = {}

    def record_batch(self, frames_per_stream: collections.Counter[str], model_ms: float, queue_ms: list[float]) -> None:
        with self._lock:
            self.batches += 1
            self.batch_frames += sum(frames_per_stream.values())
            self.frames_analysed.update(frames_per_stream)
            self._window_frames.update(frames_per_stream)
            self.stages["model"].add(model_ms)
            for ms in queue_ms:
                self.stages["queue"].add(ms)

    def record_published(self, publish_ms: float, total_ms: float) -> None:
        with self._lock:
            self.stages["publish"].add(publish_ms)
            self.stages["total"].add(total_ms)

    def record_error(self, stream_id: str) -> None:
        with self._lock:
            self.errors[stream_id] += 1

    def snapshot(self, queues: dict[str, dict[str, int]]) -> dict:
        with self._lock:
            now = time.monotonic()
            span = now - self._window_start
            if span >= 0.5:
                self._fps = {sid: n / span for sid, n in self._window_frames.items()}
                self._window_frames.clear()
                self._window_start = now
            return {
                "uptime_s": round(now - self._start, 3),
                "batches": self.batches,
                "mean_batch_size": round(self.batch_frames / self.batches, 3) if self.batches else 0.0,
                "latency": {name: w.summary() for name, w in self.stages.items()},
                "streams": {
                    sid: {
                        "frames_analysed": self.frames_analysed.get(sid, 0),
                        "fps": round(self._fps.get(sid, 0.0), 2),
                        "errors": self.errors.get(sid, 0),
                        **q,
                    }
                    for sid, q in queues.items()
                },
            }
