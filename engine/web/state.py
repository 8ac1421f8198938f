"""What the live view knows about each stream, fed by the engine (as a sink) or by a subscriber (``amodal view``).

Stream states come from the events through an ``EngineMonitor`` (the same state tracking and health rules as the
engine's ``/health``; its HTTP server is not started here); this module adds what the page shows beyond that: the
last reason, the pipeline, fps and latency percentiles, drops, the latest frame waiting to be drawn (one slot per
stream: a newer frame replaces it, so a slow or stalled viewer never holds frames back) and, for scanner streams,
the latest bags.  A bag is drawn again when a detached stage amends it (``on_amendment``: the layers of the
``xray,layers`` pipeline come that way); the live video shows each frame as published and is not redrawn.

Threads: ``on_*`` run on the feeding thread (the engine's inference thread: they only store references, under one
lock); the encoder thread takes the pending frames and stores JPEGs; the HTTP server's event loop reads.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from amodal.engine.metrics import LatencyWindow
from amodal.engine.monitor import EngineMonitor
from amodal.types import Amendment, Frame, FrameResult, StreamEvent, StreamState

#: seconds over which a stream's fps is measured
FPS_WINDOW_S = 2.0
#: a stream's video is drawn only while someone asked for it within this many seconds
WANTED_S = 2.0


@dataclass(frozen=True)
class BagItem:
    """One object found in a bag: its class, score, and what is known of its occlusion."""

    class_name: str
    score: float
    occlusion_level: float | None
    has_occluder: bool


@dataclass(frozen=True)
class Bag:
    """One scan of a scanner stream with its items and an annotated thumbnail (JPEG)."""

    frame_index: int
    capture_time_ns: int
    items: tuple[BagItem, ...]
    jpeg: bytes


@dataclass(frozen=True)
class Pending:
    """A result waiting to be drawn; ``frame`` is None where only results are known (``amodal view``)."""

    frame: Frame | None
    result: FrameResult


@dataclass
class _Stream:
    kind: str = "video"  # "video" or "scanner"
    reason: str | None = None
    last_error: str | None = None
    analyzer: str = ""
    width: int = 0
    height: int = 0
    frames: int = 0
    latency: LatencyWindow = field(default_factory=lambda: LatencyWindow(512))
    arrivals: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    pending: Pending | None = None
    wanted_until: float = 0.0
    jpeg: bytes | None = None
    jpeg_seq: int = 0
    bags_pending: collections.deque = field(default_factory=collections.deque)
    bags: collections.deque = field(default_factory=collections.deque)
    #: what each kept bag was drawn from (frame_index → Pending), oldest first, so that amendments can redraw it
    bag_sources: collections.OrderedDict = field(default_factory=collections.OrderedDict)


def amended(result: FrameResult, amendment: Amendment) -> FrameResult:
    """``result`` with ``amendment`` applied: each object at ``refs[i]`` replaced by ``objects[i]``, objects with
    no ref added at the end (refs out of range are added too: the result they referred to was not this one)."""
    objects = list(result.objects)
    for obj, ref in zip(amendment.objects, amendment.refs):
        if ref is not None and 0 <= ref < len(result.objects):
            objects[ref] = obj
        else:
            objects.append(obj)
    return dataclasses.replace(result, objects=tuple(objects))


def bag_items(result: FrameResult) -> tuple[BagItem, ...]:
    return tuple(BagItem(o.class_name, round(float(o.score), 3),
                         None if o.occlusion_level is None else round(float(o.occlusion_level), 3),
                         o.occluder_mask is not None) for o in result.objects)


class LiveState:
    """Per-stream state of the live view (thread-safe)."""

    def __init__(self, *, bags_kept: int = 8, heartbeat: Callable[[], float] | None = None,
                 stream_down_s: float = 30.0, stall_s: float = 10.0) -> None:
        """``heartbeat()``: ``time.monotonic()`` of the feeder's last sign of life (None = this state's last
        input, which the engine gives at least every metrics interval)."""
        self.bags_kept = bags_kept
        self._last_input = time.monotonic()
        self.monitor = EngineMonitor("127.0.0.1", 0, heartbeat or (lambda: self._last_input),
                                     stream_down_s=stream_down_s, stall_s=stall_s)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._streams: dict[str, _Stream] = {}
        self._scanner_ids: set[str] = set()
        self._metrics: dict[str, Any] = {}
        self.closing = False

    # ------------------------------------------------------------------------------------------- input
    def mark_scanner(self, stream_id: str) -> None:
        """Show ``stream_id``'s latest bags (a scanner stream)."""
        with self._lock:
            self._scanner_ids.add(stream_id)
            if stream_id in self._streams:
                self._streams[stream_id].kind = "scanner"

    def _stream(self, stream_id: str) -> _Stream:
        s = self._streams.get(stream_id)
        if s is None:
            s = self._streams[stream_id] = _Stream(kind="scanner" if stream_id in self._scanner_ids else "video")
            s.bags_pending = collections.deque(maxlen=self.bags_kept)
            s.bags = collections.deque(maxlen=self.bags_kept)
        return s

    def on_results(self, frames: Sequence[Frame | None], results: Sequence[FrameResult],
                   latency_ms: Sequence[float]) -> None:
        """Results (with their frames, or None each) and each one's latency; stores references only."""
        now = time.monotonic()
        with self._lock:
            self._last_input = now
            for frame, result, ms in zip(frames, results, latency_ms):
                s = self._stream(result.stream_id)
                s.frames += 1
                s.analyzer, s.width, s.height = result.analyzer, result.width, result.height
                s.latency.add(ms)
                s.arrivals.append(now)
                pending = Pending(frame, result)
                if s.kind == "video" and "xray" in result.analyzer.split(","):
                    s.kind = "scanner"
                if s.kind == "scanner":
                    self._keep_bag(s, pending)
                    self._work.notify_all()
                if now < s.wanted_until:
                    self._work.notify_all()
                s.pending = pending

    def on_amendment(self, amendment: Amendment) -> None:
        """A detached stage's additions to a frame: a kept bag's items and thumbnail are redone with them."""
        with self._lock:
            self._last_input = time.monotonic()
            s = self._streams.get(amendment.stream_id)
            source = None if s is None else s.bag_sources.get(amendment.frame_index)
            if source is None:
                return
            self._keep_bag(s, Pending(source.frame, amended(source.result, amendment)))
            self._work.notify_all()

    def _keep_bag(self, s: _Stream, pending: Pending) -> None:
        """Queue ``pending`` to be drawn as a bag (replacing a queued drawing of the same bag) and keep its source."""
        index = pending.result.frame_index
        queued = [p for p in s.bags_pending if p.result.frame_index != index]
        s.bags_pending.clear()
        s.bags_pending.extend(queued + [pending])
        s.bag_sources[index] = pending
        s.bag_sources.move_to_end(index)
        while len(s.bag_sources) > self.bags_kept:
            s.bag_sources.popitem(last=False)

    def on_event(self, event: StreamEvent) -> None:
        self.monitor.write_event(event)
        with self._lock:
            self._last_input = time.monotonic()
            if event.state == StreamState.REMOVED:
                self._streams.pop(event.stream_id, None)
                return
            if event.state == StreamState.DROPPED or event.stream_id == "*":
                return
            s = self._stream(event.stream_id)
            if event.state == StreamState.ERROR and not event.fatal:
                s.last_error = event.reason
            else:
                s.reason = event.reason

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        with self._lock:
            self._last_input = time.monotonic()
            self._metrics = metrics

    def forget(self, stream_id: str) -> None:
        """Drop a stream that is no longer attached (it ended) from the view."""
        self.on_event(StreamEvent(stream_id, StreamState.REMOVED, "removed from the view", time.time_ns()))

    # -------------------------------------------------------------------------------------- the encoder
    def want(self, stream_id: str) -> None:
        """A viewer wants ``stream_id``'s video: keep drawing it for ``WANTED_S``."""
        with self._lock:
            s = self._streams.get(stream_id)
            if s is not None:
                was_idle = s.wanted_until < time.monotonic()
                s.wanted_until = time.monotonic() + WANTED_S
                if was_idle:
                    self._work.notify_all()

    def take_work(self, timeout_s: float) -> tuple[dict[str, Pending], dict[str, list[Pending]]]:
        """Wait up to ``timeout_s`` for work; (latest pending frame of each wanted stream, pending bags by stream)."""
        with self._work:
            work = self._collect()
            if not work[0] and not work[1] and not self.closing:
                self._work.wait(timeout_s)
                work = self._collect()
            return work

    def _collect(self) -> tuple[dict[str, Pending], dict[str, list[Pending]]]:
        now = time.monotonic()
        frames, bags = {}, {}
        for sid, s in self._streams.items():
            if s.pending is not None and now < s.wanted_until:
                frames[sid], s.pending = s.pending, None
            if s.bags_pending:
                bags[sid] = list(s.bags_pending)
                s.bags_pending.clear()
        return frames, bags

    def put_jpeg(self, stream_id: str, jpeg: bytes) -> None:
        with self._lock:
            s = self._streams.get(stream_id)
            if s is not None:
                s.jpeg, s.jpeg_seq = jpeg, s.jpeg_seq + 1

    def put_bag(self, stream_id: str, bag: Bag) -> None:
        """Show ``bag``, in the place of an earlier drawing of the same bag (an amended bag keeps its place)."""
        with self._lock:
            s = self._streams.get(stream_id)
            if s is None:
                return
            for i, old in enumerate(s.bags):
                if old.frame_index == bag.frame_index:
                    s.bags[i] = bag
                    return
            s.bags.append(bag)

    def close(self) -> None:
        with self._work:
            self.closing = True
            self._work.notify_all()

    # ----------------------------------------------------------------------------------------- reading
    def jpeg(self, stream_id: str) -> tuple[int, bytes | None] | None:
        """(sequence number, latest JPEG or None yet); None when the stream is not shown (any more)."""
        with self._lock:
            s = self._streams.get(stream_id)
            return None if s is None else (s.jpeg_seq, s.jpeg)

    def bag_jpeg(self, stream_id: str, frame_index: int) -> bytes | None:
        with self._lock:
            s = self._streams.get(stream_id)
            bags = list(s.bags) if s is not None else []
        return next((b.jpeg for b in bags if b.frame_index == frame_index), None)

    def __contains__(self, stream_id: str) -> bool:
        with self._lock:
            return stream_id in self._streams

    def health(self) -> tuple[bool, dict]:
        return self.monitor.health()

    def streams(self) -> list[dict[str, Any]]:
        """Every shown stream, sorted by id, as the API returns it."""
        _, report = self.monitor.health()
        states = report["streams"]
        now = time.monotonic()
        with self._lock:
            metrics = self._metrics.get("streams", {})
            out = []
            for sid in sorted(set(self._streams) | set(states)):
                s = self._stream(sid)
                m = metrics.get(sid, {})
                recent = [t for t in s.arrivals if now - t <= FPS_WINDOW_S]
                span = now - recent[0] if len(recent) > 1 else 0.0
                latency = s.latency.summary()
                state = states.get(sid, {})
                out.append({
                    "id": sid,
                    "kind": s.kind,
                    "pipeline": m.get("pipeline"),
                    "analyzer": s.analyzer,
                    "state": state.get("state", "up" if s.frames else "connecting"),
                    "state_for_s": state.get("for_s"),
                    "reason": s.reason,
                    "last_error": s.last_error,
                    "width": s.width,
                    "height": s.height,
                    "frames": s.frames,
                    "fps": round((len(recent) - 1) / span, 2) if span > 0 else 0.0,
                    "latency_p50_ms": latency.get("p50_ms"),
                    "latency_p99_ms": latency.get("p99_ms"),
                    "dropped": m.get("dropped", 0),
                    "queued": m.get("queued", 0),
                    "errors": m.get("errors", 0),
                    "bags": [{"frame_index": b.frame_index, "capture_time_ns": b.capture_time_ns,
                              "items": [dataclasses.asdict(i) for i in b.items]} for b in reversed(s.bags)],
                })
            return out
