"""Micro-batching across streams: up to ``max_batch_size`` frames, waiting at most ``max_wait_ms`` after
the first frame, taking one item per stream per round (round-robin, so one busy file never starves a
camera)."""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from amodal.engine.queues import SourceQueue
from amodal.types import Frame, StreamEvent


@dataclass
class Batch:
    """What one scheduling round hands to the inference loop."""

    frames: list[Frame] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)  # publish after the frames' results
    drained: list[str] = field(default_factory=list)  # streams whose source ended and queue is empty

    def __bool__(self) -> bool:
        return bool(self.frames or self.events or self.drained)


class MicroBatcher:
    def __init__(self, ready: threading.Condition, max_batch_size: int, max_wait_ms: float) -> None:
        self._ready = ready
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._offset = 0

    def collect(self, queues: Mapping[str, SourceQueue], stop: threading.Event, idle_wait_s: float = 0.05) -> Batch:
        """Block until there is work (or ``idle_wait_s`` passes, or ``stop``), then return one batch."""
        batch = Batch()
        held: set[str] = set()  # streams that yielded an event: later frames wait for the next batch
        deadline: float | None = None
        with self._ready:
            while True:
                self._take_round(queues, batch, held)
                if len(batch.frames) >= self.max_batch_size:
                    break
                if batch.frames:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.max_wait_s
                    if now >= deadline:
                        break
                    self._ready.wait(deadline - now)
                    continue
                if batch.events or batch.drained or stop.is_set():
                    break
                if not self._ready.wait(idle_wait_s):
                    break
        return batch

    def _take_round(self, queues: Mapping[str, SourceQueue], batch: Batch, held: set[str]) -> None:
        """Take items round-robin until the batch is full or no stream has a takeable item."""
        ids = list(queues)
        if not ids:
            return
        self._offset = (self._offset + 1) % len(ids)
        order = ids[self._offset :] + ids[: self._offset]
        progressed = True
        while progressed and len(batch.frames) < self.max_batch_size:
            progressed = False
            for sid in order:
                if sid in held or len(batch.frames) >= self.max_batch_size:
                    continue
                q = queues[sid]
                if len(q) == 0:
                    if q.finished and sid not in batch.drained:
                        batch.drained.append(sid)
                        held.add(sid)
                    continue
                item = q.pop()
                progressed = True
                if isinstance(item, StreamEvent):
                    batch.events.append(item)
                    held.add(sid)
                else:
                    batch.frames.append(item)
