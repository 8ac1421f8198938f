"""Bounded per-source queues with named overflow policies.

Frames and stream events share one FIFO per source so that an event (say ``ended``) is published after
the results of every frame before it.  Only frames count toward the capacity, and only frames are ever
dropped: ``drop-oldest`` (live sources: latency never builds up) discards the oldest queued frame;
``block`` (files: every frame is analysed) makes the source wait for space.
"""
from __future__ import annotations

import collections
import threading

from amodal.streams.base import OverflowPolicy
from amodal.types import Frame, StreamEvent


class SourceQueue:
    """One source's FIFO; implements ``streams.base.FrameSink``.

    All queues of an engine share one ``threading.Condition`` (``ready``): producers notify it, the
    batcher waits on it, and blocked producers wait on it for space.
    """

    def __init__(self, stream_id: str, capacity: int, policy: OverflowPolicy, ready: threading.Condition) -> None:
        if capacity <= 0:
            raise ValueError(f"{stream_id}: queue capacity must be > 0, got {capacity}")
        self.stream_id = stream_id
        self.capacity = capacity
        self.policy = policy
        self._ready = ready
        self._items: collections.deque[Frame | StreamEvent] = collections.deque()
        self._frames = 0
        self.closed = False  # no more input accepted (engine stopping or source removed)
        self.finished = False  # the source thread has returned
        self.dropped = 0
        self.accepted = 0

    # producer side ---------------------------------------------------------------------------------
    def put_frame(self, frame: Frame) -> bool:
        with self._ready:
            if self.closed:
                return False
            if self._frames >= self.capacity:
                if self.policy == "drop-oldest":
                    self._drop_oldest_frame()
                else:
                    while self._frames >= self.capacity and not self.closed:
                        self._ready.wait(0.1)
                    if self.closed:
                        return False
            self._items.append(frame)
            self._frames += 1
            self.accepted += 1
            self._ready.notify_all()
            return True

    def put_event(self, event: StreamEvent) -> None:
        with self._ready:
            self._items.append(event)
            self._ready.notify_all()

    def _drop_oldest_frame(self) -> None:
        for i, item in enumerate(self._items):
            if isinstance(item, Frame):
                del self._items[i]
                self._frames -= 1
                self.dropped += 1
                return

    # consumer side (call with ``ready`` held) ------------------------------------------------------
    def head(self) -> Frame | StreamEvent | None:
        return self._items[0] if self._items else None

    def pop(self) -> Frame | StreamEvent:
        item = self._items.popleft()
        if isinstance(item, Frame):
            self._frames -= 1
            self._ready.notify_all()  # a blocked producer may continue
        return item

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_frames(self) -> int:
        return self._frames

    @property
    def drained(self) -> bool:
        """Finished and nothing left to hand out."""
        return self.finished and not self._items
