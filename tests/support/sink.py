"""A FrameSink that collects frames and events for assertions, and a thread that runs a Source."""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from amodal.streams.base import Source
from amodal.types import Frame, StreamEvent, StreamState


class ListSink:
    """Collects everything a source delivers (thread-safe); ``accept_frames=N`` refuses frames after N."""

    def __init__(self, accept_frames: int | None = None, keep_planes: bool = True) -> None:
        self.frames: list[Frame] = []
        self.events: list[StreamEvent] = []
        self.accept_frames = accept_frames
        self.keep_planes = keep_planes
        self._cond = threading.Condition()

    def put_frame(self, frame: Frame) -> bool:
        with self._cond:
            if self.accept_frames is not None and len(self.frames) >= self.accept_frames:
                return False
            if not self.keep_planes:
                frame = dataclasses.replace(frame, planes=())
            self.frames.append(frame)
            self._cond.notify_all()
        return True

    def put_event(self, event: StreamEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def states(self) -> list[StreamState]:
        with self._cond:
            return [e.state for e in self.events]

    def frame_count(self) -> int:
        with self._cond:
            return len(self.frames)

    def wait_for(self, predicate: Callable[["ListSink"], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked on every delivery); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def wait_frames(self, n: int, timeout_s: float) -> bool:
        return self.wait_for(lambda s: len(s.frames) >= n, timeout_s)

    def wait_event(self, state: StreamState, timeout_s: float, after: int = 0) -> StreamEvent | None:
        """The first event in ``state`` at position >= ``after`` in ``events``, waiting up to ``timeout_s``."""
        found: list[StreamEvent] = []

        def seen(s: "ListSink") -> bool:
            found[:] = [e for e in s.events[after:] if e.state == state][:1]
            return bool(found)

        return found[0] if self.wait_for(seen, timeout_s) else None


class SourceThread:
    """Runs ``source.run(sink, stop)`` in a thread; ``stop()`` sets the event and returns the join time (s)."""

    def __init__(self, source: Source, sink: ListSink | None = None) -> None:
        self.source = source
        self.sink = sink if sink is not None else ListSink()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(self.sink, self.stop_event),
                                       name=f"source-{source.stream_id}", daemon=True)

    def start(self) -> "SourceThread":
        self.thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> float:
        started = time.monotonic()
        self.stop_event.set()
        self.thread.join(timeout_s)
        return time.monotonic() - started

    def join(self, timeout_s: float) -> bool:
        """Wait for ``run`` to return by itself; True when it did."""
        self.thread.join(timeout_s)
        return not self.thread.is_alive()

    def __enter__(self) -> "SourceThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
