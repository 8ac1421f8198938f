"""Bounded per-source queues with named overflow policies.

Frames and stream events share one FIFO per source so that an event (say ``ended``) is published after
the results of every frame before it.  Only frames count toward the capacity, and only frames are ever
dropped: ``drop-oldest`` (live sources: latency never builds up) discards the oldest queued frame;
``block`` (files, scanners: every frame is analysed) makes the source wait for space.

A dropped frame is never silent: it is replaced, where it stood in the FIFO, by a ``dropped`` event whose
reason names the stream, the frame index and (when the queue was given a ``frame_label``, e.g. a scanner's
file names) the frame's label.  Drops that follow one another before the consumer takes the notice are
merged into that one notice (still naming every frame), so the notices of a camera dropping steadily stay
bounded by the queue's capacity and do not outnumber its frames.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from amodal.streams.base import OverflowPolicy
from amodal.types import Frame, StreamEvent, StreamState

#: a merged ``dropped`` notice names at most this many frames one by one, then how many more
MAX_NAMED_DROPS = 32


class _DropNotice:
    """The frames dropped at one place of the FIFO, turned into one ``dropped`` StreamEvent when handed out."""

    __slots__ = ("stream_id", "time_ns", "capacity", "dropped")

    def __init__(self, stream_id: str, capacity: int) -> None:
        self.stream_id = stream_id
        self.time_ns = time.time_ns()
        self.capacity = capacity
        self.dropped: list[tuple[int, str | None]] = []  # (frame index, label)

    def event(self) -> StreamEvent:
        named = [f"{index} ({label})" if label else str(index) for index, label in self.dropped[:MAX_NAMED_DROPS]]
        more = len(self.dropped) - len(named)
        what = f"frame {named[0]}" if len(self.dropped) == 1 else f"{len(self.dropped)} frames: " + ", ".join(named)
        if more:
            what += f" and {more} more (up to frame {self.dropped[-1][0]})"
        reason = (f"stream {self.stream_id}: dropped {what} (drop-oldest: queue full at {self.capacity} frames, "
                  f"newer frames kept)")
        return StreamEvent(self.stream_id, StreamState.DROPPED, reason, self.time_ns)


class SourceQueue:
    """One source's FIFO; implements ``streams.base.FrameSink``.

    All queues of an engine share one ``threading.Condition`` (``ready``): producers notify it, the
    batcher waits on it, and blocked producers wait on it for space.
    """

    def __init__(
        self,
        stream_id: str,
        capacity: int,
        policy: OverflowPolicy,
        ready: threading.Condition,
        frame_label: Callable[[Frame], str | None] | None = None,
    ) -> None:
        """``frame_label(frame)``: what a ``dropped`` notice calls the frame besides its index (a scanner's
        file name: ``ScannerSource.frame_label``); called with ``ready`` held, so it must not block."""
        if capacity <= 0:
            raise ValueError(f"{stream_id}: queue capacity must be > 0, got {capacity}")
        if policy not in ("block", "drop-oldest"):
            raise ValueError(f"{stream_id}: overflow policy must be 'block' or 'drop-oldest', got {policy!r}")
        self.stream_id = stream_id
        self.capacity = capacity
        self.policy = policy
        self.frame_label = frame_label
        self._ready = ready
        self._items: collections.deque[Frame | StreamEvent | _DropNotice] = collections.deque()
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

    def record_dropped(self, index: int, label: str | None = None) -> None:
        """A frame the source dropped before it reached the queue (a decode worker with every shared-memory slot
        still held downstream): counted and named in the same ``dropped`` notices as the queue's own drops."""
        with self._ready:
            previous = self._items[-1] if self._items else None
            if isinstance(previous, _DropNotice):
                previous.dropped.append((index, label))
            else:
                notice = _DropNotice(self.stream_id, self.capacity)
                notice.dropped.append((index, label))
                self._items.append(notice)
            self.dropped += 1
            self._ready.notify_all()

    def _drop_oldest_frame(self) -> None:
        """Replace the oldest queued frame by a ``dropped`` notice (merged into the notice just before it)."""
        for i, item in enumerate(self._items):
            if isinstance(item, Frame):
                label = self._label(item)
                previous = self._items[i - 1] if i > 0 else None
                if isinstance(previous, _DropNotice):
                    previous.dropped.append((item.index, label))
                    del self._items[i]
                else:
                    notice = _DropNotice(self.stream_id, self.capacity)
                    notice.dropped.append((item.index, label))
                    self._items[i] = notice
                self._frames -= 1
                self.dropped += 1
                return

    def _label(self, frame: Frame) -> str | None:
        if self.frame_label is None:
            return None
        try:
            return self.frame_label(frame)
        except Exception as exc:  # a label is a courtesy: a failing labeller must not lose the notice
            return f"label unavailable: {type(exc).__name__}"

    # consumer side (call with ``ready`` held) ------------------------------------------------------
    def head(self) -> Frame | StreamEvent | None:
        if not self._items:
            return None
        item = self._items[0]
        return item.event() if isinstance(item, _DropNotice) else item

    def pop(self) -> Frame | StreamEvent:
        item = self._items.popleft()
        if isinstance(item, _DropNotice):
            return item.event()
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
