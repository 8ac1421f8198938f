"""Source queues: every dropped frame is reported by a ``dropped`` event in its place; events are never dropped."""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from amodal.engine.queues import MAX_NAMED_DROPS, SourceQueue
from amodal.types import Frame, StreamEvent, StreamState


def _frame(sid: str, i: int) -> Frame:
    return Frame(sid, i, None, 0, time.monotonic_ns(), "gray8", (np.zeros((2, 2), np.uint8),), 2, 2)


def _drain(q: SourceQueue, ready: threading.Condition) -> list[Frame | StreamEvent]:
    with ready:
        return [q.pop() for _ in range(len(q))]


def _dropped_indexes(events: list[StreamEvent]) -> list[int]:
    """Frame indexes named by ``dropped`` reasons ("frame 3" / "2 frames: 3, 4")."""
    out: list[int] = []
    for e in events:
        assert e.state == StreamState.DROPPED and e.reason and not e.fatal
        named = e.reason.split("dropped ", 1)[1].split(" (drop-oldest")[0]
        out += [int(n) for n in re.findall(r"(?:^frame |: |, )(\d+)", named)]
    return out


def test_each_dropped_frame_is_reported_in_its_place_with_index_and_stream() -> None:
    ready = threading.Condition()
    q = SourceQueue("cam", 2, "drop-oldest", ready)
    q.put_event(StreamEvent("cam", StreamState.UP))
    assert q.put_frame(_frame("cam", 0)) and q.put_frame(_frame("cam", 1))
    assert q.put_frame(_frame("cam", 2))  # drops 0
    items = _drain(q, ready)
    assert [type(i).__name__ for i in items] == ["StreamEvent", "StreamEvent", "Frame", "Frame"]
    up, dropped = items[0], items[1]
    assert up.state == StreamState.UP and dropped.state == StreamState.DROPPED
    assert dropped.stream_id == "cam" and "stream cam" in dropped.reason and "frame 0 " in dropped.reason
    assert "drop-oldest" in dropped.reason and dropped.time_ns > 0
    assert [f.index for f in items[2:]] == [1, 2]
    assert q.dropped == 1 and q.accepted == 3 and q.queued_frames == 0


def test_drops_in_a_row_name_every_frame_and_stay_bounded() -> None:
    """A camera dropping 500 frames while the consumer is away: one notice in the FIFO naming them all."""
    ready = threading.Condition()
    q = SourceQueue("cam", 2, "drop-oldest", ready)
    for i in range(502):
        q.put_frame(_frame("cam", i))
    assert len(q) == 3 and q.dropped == 500  # the notice and the two newest frames, not 500 events
    notice, *frames = _drain(q, ready)
    assert [f.index for f in frames] == [500, 501]
    assert "500 frames: 0, 1, 2" in notice.reason
    assert f"and {500 - MAX_NAMED_DROPS} more (up to frame 499)" in notice.reason
    assert _dropped_indexes([notice]) == list(range(MAX_NAMED_DROPS))
    # the consumer took the notice: the next drop gets a notice of its own, in order, none lost
    for i in range(502, 506):
        q.put_frame(_frame("cam", i))
    items = _drain(q, ready)
    assert [getattr(i, "index", None) for i in items] == [None, 504, 505]
    assert _dropped_indexes([items[0]]) == [502, 503] and q.dropped == 502


def test_events_are_never_dropped_and_notices_keep_fifo_order() -> None:
    ready = threading.Condition()
    q = SourceQueue("cam", 1, "drop-oldest", ready)
    q.put_frame(_frame("cam", 0))
    q.put_event(StreamEvent("cam", StreamState.RECONNECTING, "lost"))
    q.put_frame(_frame("cam", 1))  # drops 0: the notice stands before RECONNECTING, where frame 0 was
    q.put_event(StreamEvent("cam", StreamState.UP))
    q.put_frame(_frame("cam", 2))  # drops 1: after RECONNECTING, before UP
    q.put_event(StreamEvent("cam", StreamState.ENDED, "stopped"))
    items = _drain(q, ready)
    kinds = [i.state.value if isinstance(i, StreamEvent) else i.index for i in items]
    assert kinds == ["dropped", "reconnecting", "dropped", "up", 2, "ended"]
    assert _dropped_indexes([items[0], items[2]]) == [0, 1]


def test_labels_name_the_dropped_frames_and_a_failing_labeller_loses_nothing() -> None:
    ready = threading.Condition()
    q = SourceQueue("belt", 1, "drop-oldest", ready, frame_label=lambda f: f"bag_{f.index:03d}.png")
    q.put_frame(_frame("belt", 7))
    q.put_frame(_frame("belt", 8))
    notice = _drain(q, ready)[0]
    assert "frame 7 (bag_007.png)" in notice.reason

    def broken(frame: Frame) -> str:
        raise KeyError(frame.index)

    q2 = SourceQueue("belt", 1, "drop-oldest", ready, frame_label=broken)
    q2.put_frame(_frame("belt", 1))
    q2.put_frame(_frame("belt", 2))
    notice = _drain(q2, ready)[0]
    assert notice.state == StreamState.DROPPED and "frame 1 (label unavailable: KeyError)" in notice.reason


def test_block_policy_never_drops_nor_reports_drops() -> None:
    ready = threading.Condition()
    q = SourceQueue("file", 2, "block", ready)
    got: list[Frame | StreamEvent] = []

    def consumer() -> None:
        while len(got) < 50:
            with ready:
                if len(q):
                    got.append(q.pop())
                else:
                    ready.wait(0.05)

    t = threading.Thread(target=consumer, daemon=True)
    t.start()
    for i in range(50):
        assert q.put_frame(_frame("file", i))
    t.join(10)
    assert [i.index for i in got] == list(range(50)) and q.dropped == 0


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="drop-newest"):
        SourceQueue("x", 2, "drop-newest", threading.Condition())  # type: ignore[arg-type]
