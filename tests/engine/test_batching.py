"""Bounded queues (block / drop-oldest, events never dropped) and cross-stream micro-batching."""
from __future__ import annotations

import threading
import time

import numpy as np

from amodal.engine.batcher import MicroBatcher
from amodal.engine.queues import SourceQueue
from amodal.types import Frame, StreamEvent, StreamState


def _frame(sid: str, i: int) -> Frame:
    return Frame(sid, i, None, 0, time.monotonic_ns(), "gray8", (np.zeros((2, 2), np.uint8),), 2, 2)


def test_drop_oldest_keeps_newest_frames_and_all_events():
    ready = threading.Condition()
    q = SourceQueue("a", 2, "drop-oldest", ready)
    q.put_event(StreamEvent("a", StreamState.UP))
    for i in range(5):
        assert q.put_frame(_frame("a", i))
    with ready:
        items = [q.pop() for _ in range(len(q))]
    assert isinstance(items[0], StreamEvent)
    assert [f.index for f in items if isinstance(f, Frame)] == [3, 4]
    notices = [e for e in items[1:] if isinstance(e, StreamEvent)]
    assert [e.state for e in notices] == [StreamState.DROPPED] and "3 frames: 0, 1, 2" in notices[0].reason
    assert q.dropped == 3 and q.accepted == 5


def test_block_policy_waits_for_space_and_releases_on_close():
    ready = threading.Condition()
    q = SourceQueue("a", 1, "block", ready)
    assert q.put_frame(_frame("a", 0))
    result = {}

    def producer():
        result["second"] = q.put_frame(_frame("a", 1))

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.2)
    assert t.is_alive(), "a full block-policy queue must make the producer wait"
    with ready:
        assert q.pop().index == 0
    t.join(2)
    assert result["second"] is True and q.dropped == 0
    # closing releases a blocked producer with False
    t2 = threading.Thread(target=lambda: result.__setitem__("third", q.put_frame(_frame("a", 2))))
    t2.start()
    time.sleep(0.1)
    with ready:
        q.closed = True
        ready.notify_all()
    t2.join(2)
    assert result["third"] is False


def test_batcher_mixes_streams_round_robin_and_caps_batch_size():
    ready = threading.Condition()
    qa, qb = SourceQueue("a", 16, "block", ready), SourceQueue("b", 16, "block", ready)
    for i in range(6):
        qa.put_frame(_frame("a", i))
    qb.put_frame(_frame("b", 0))
    batcher = MicroBatcher(ready, max_batch_size=4, max_wait_ms=0)
    batch = batcher.collect({"a": qa, "b": qb}, threading.Event())
    assert len(batch.frames) == 4
    assert {f.stream_id for f in batch.frames} == {"a", "b"}
    assert [f.index for f in batch.frames if f.stream_id == "a"] == [0, 1, 2]


def test_batcher_waits_at_most_max_wait_for_a_full_batch():
    ready = threading.Condition()
    q = SourceQueue("a", 16, "block", ready)
    q.put_frame(_frame("a", 0))
    batcher = MicroBatcher(ready, max_batch_size=8, max_wait_ms=50)

    def late():
        time.sleep(0.01)
        q.put_frame(_frame("a", 1))

    threading.Thread(target=late).start()
    t0 = time.monotonic()
    batch = batcher.collect({"a": q}, threading.Event())
    waited = time.monotonic() - t0
    assert [f.index for f in batch.frames] == [0, 1]
    assert 0.04 <= waited < 1.0


def test_event_ends_a_streams_share_of_the_batch():
    """Frames queued after an event go to the next batch, so the event is published in order."""
    ready = threading.Condition()
    q = SourceQueue("a", 16, "block", ready)
    q.put_frame(_frame("a", 0))
    q.put_event(StreamEvent("a", StreamState.RECONNECTING, "x"))
    q.put_frame(_frame("a", 1))
    batcher = MicroBatcher(ready, max_batch_size=8, max_wait_ms=0)
    first = batcher.collect({"a": q}, threading.Event())
    assert [f.index for f in first.frames] == [0] and [e.state for e in first.events] == [StreamState.RECONNECTING]
    second = batcher.collect({"a": q}, threading.Event())
    assert [f.index for f in second.frames] == [1]


def test_drained_streams_are_reported_once_finished():
    ready = threading.Condition()
    q = SourceQueue("a", 4, "block", ready)
    batcher = MicroBatcher(ready, max_batch_size=8, max_wait_ms=0)
    assert batcher.collect({"a": q}, threading.Event(), idle_wait_s=0.01).drained == []
    q.finished = True
    assert batcher.collect({"a": q}, threading.Event(), idle_wait_s=0.01).drained == ["a"]
