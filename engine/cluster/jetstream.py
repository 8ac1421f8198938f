"""``JetStreamSink``: the engine's results, amendments, stream events and metrics, stored durably in NATS JetStream.

The same msgpack payloads as the ZeroMQ publisher (``amodal.schema`` encoders), on the subjects of
``amodal.subscriber_nats`` (``amodal.frames.<stream>``, ``amodal.amendments.<stream>``, ``amodal.status.<stream>``,
``amodal.metrics``), in one JetStream stream with retention limits (``JetStreamSettings``).  Every publish waits
for JetStream's acknowledgement (stored on a majority of the replicas) and carries ``Nats-Msg-Id: <subject>#<seq>``:
a publish retried after a lost acknowledgement is stored once.

Sequence numbers continue across restarts: before its first message on a subject the sink reads the subject's last
stored message and goes on from its ``seq`` + 1, so a stream moved to another node keeps one gap-free sequence, and
a message id is never reused for different content within the duplicate window.  One worker owns a stream at a time
(the cluster places each stream once); two engines publishing the same stream id would interleave.

nats-py is asyncio: the sink's event loop runs in the sink's own thread; ``write_*`` hand items to it and never
block the engine.  While the servers do not acknowledge, the sink retries (the same message ids) and holds up to
``max_pending`` items, then drops the oldest and counts them in ``dropped``.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Sequence

import msgpack

from amodal import schema
from amodal.engine.cluster.config import JetStreamSettings
from amodal.engine.sink import Sink
from amodal.errors import EngineError, PublishError
from amodal.subscriber_nats import (METRICS_SUBJECT, SUBJECT_ROOT, LoopThread, amendments_subject, connect,
                                    frames_subject, status_subject)
from amodal.types import Amendment, Frame, FrameResult, StreamEvent

log = logging.getLogger(__name__)

_STOP = object()
_BATCH = 64  # publishes in flight at once (acknowledgements awaited together)


async def ensure_stream(js, settings: JetStreamSettings, timeout_s: float) -> None:
    """Create (or update to ``settings``) the JetStream stream capturing ``amodal.>``; retried until a new
    cluster has elected its meta leader or ``timeout_s`` passed."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError

    config = StreamConfig(name=settings.stream, subjects=[f"{SUBJECT_ROOT}.>"], retention=RetentionPolicy.LIMITS,
                          storage=StorageType.FILE, discard=DiscardPolicy.OLD, num_replicas=settings.replicas,
                          max_age=settings.max_age_s, max_bytes=settings.max_bytes,
                          duplicate_window=settings.duplicate_window_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            try:
                await js.add_stream(config)
            except BadRequestError:  # exists with another configuration: bring its limits to ours
                await js.update_stream(config)
            return
        except Exception as exc:  # noqa: BLE001 - no meta leader yet (timeouts, 503): retried until the deadline
            if time.monotonic() > deadline:
                raise PublishError(f"cannot create JetStream stream {settings.stream!r} on "
                                   f"{', '.join(settings.servers)} within {timeout_s} s: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.25)


class JetStreamSink(Sink):
    name = "jetstream"

    def __init__(self, settings: JetStreamSettings, engine_name: str, on_published=None) -> None:
        """``engine_name`` names this engine's metrics messages; ``on_published(result)`` is called (from the sink's
        thread) after each frame result is stored."""
        self.settings, self.engine_name = settings, engine_name
        self._on_published = on_published
        self._loop: LoopThread | None = None
        self._queue: asyncio.Queue | None = None
        self._before_start: list = []
        self._task = None
        self._nc = None
        self._js = None
        self._next_seq: dict[str, int] = {}  # subject → next sequence number
        self._metrics_id = f"{engine_name}#{uuid.uuid4().hex[:12]}"  # metrics have one subject for every engine
        self.published = collections.Counter()  # subject → messages stored
        self.duplicates = 0  # publishes JetStream recognised by their message id (retries)
        self.dropped = 0  # items dropped because the servers did not acknowledge for too long
        self.encode_errors = 0
        self.failure: BaseException | None = None

    # ---------------------------------------------------------------------------------------------- control
    def start(self) -> None:
        """Connect, create the stream, start publishing; ``PublishError`` when the servers cannot be reached."""
        s = self.settings
        self._loop = LoopThread(f"amodal-jetstream-{self.engine_name}")
        try:
            self._nc = self._loop.run(connect(s.servers, s.connect_timeout_s, f"amodal-engine-{self.engine_name}"),
                                      s.connect_timeout_s + 5)
            self._js = self._nc.jetstream(timeout=s.publish_timeout_s)
            self._loop.run(ensure_stream(self._js, s, s.connect_timeout_s), s.connect_timeout_s + 5)
        except (EngineError, TimeoutError) as exc:
            self._loop.run(self._close_connection(), 5.0) if self._nc is not None else None
            self._loop.close()
            raise PublishError(f"JetStream sink: {exc}") from exc
        self._queue = asyncio.Queue()
        for item in self._before_start:
            self._queue.put_nowait(item)  # the loop thread does not touch the queue before _run starts
        self._before_start.clear()
        self._task = self._loop.submit(self._run())

    def close(self, timeout_s: float = 10.0) -> None:
        """Publish everything written so far (up to ``timeout_s``), then disconnect."""
        if self._loop is None:
            return
        self._put(_STOP)
        try:
            self._task.result(timeout_s)
        except Exception as exc:  # noqa: BLE001 - the failure (if any) is recorded in ``failure`` already
            log.warning("JetStream sink %s did not finish cleanly: %r", self.engine_name, exc)
        try:
            self._loop.run(self._close_connection(), 5.0)
        except Exception as exc:  # noqa: BLE001
            log.warning("closing the NATS connection: %r", exc)
        self._loop.close()
        self._loop = None

    async def _close_connection(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    # -------------------------------------------------------------------------------------------- producers
    def _put(self, item) -> None:
        if self._queue is None:  # written before start(): published first once connected
            self._before_start.append(item)
        elif self._loop is not None:
            self._loop.loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def write_results(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        for result in results:
            self._put(result)

    def write_amendment(self, amendment: Amendment) -> None:
        self._put(amendment)

    def write_event(self, event: StreamEvent) -> None:
        self._put(event)

    def write_metrics(self, metrics: dict) -> None:
        self._put(("metrics", metrics))

    # ------------------------------------------------------------------------------------------- sink thread
    async def _run(self) -> None:
        try:
            stopping = False
            pending: collections.deque = collections.deque()
            while not (stopping and not pending):
                if not pending:
                    pending.append(await self._queue.get())
                while not self._queue.empty():
                    pending.append(self._queue.get_nowait())
                if _STOP in pending:
                    stopping = True
                    pending = collections.deque(i for i in pending if i is not _STOP)
                overflow = len(pending) - self.settings.max_pending
                for _ in range(max(0, overflow)):
                    pending.popleft()
                    self.dropped += 1
                batch = [pending.popleft() for _ in range(min(_BATCH, len(pending)))]
                failed = await self._publish_batch(batch)
                if failed:
                    pending.extendleft(reversed(failed))  # retried first, with the same message ids
                    if stopping and self._nc.is_closed:
                        break
                    await asyncio.sleep(0.2)
        except BaseException as exc:  # noqa: BLE001 - recorded; the engine reports a dead sink and stops
            self.failure = exc
            log.exception("the JetStream sink of %s died; results are no longer stored", self.engine_name)
            raise

    async def _encode(self, item) -> tuple[str, str, bytes] | None:
        """(subject, message id, payload) of one item; its sequence number is taken (resumed on first use)."""
        if isinstance(item, FrameResult):
            subject = frames_subject(item.stream_id)
            encode = lambda seq: schema.encode_frame(item, seq, time.time_ns())  # noqa: E731
        elif isinstance(item, Amendment):
            subject = amendments_subject(item.stream_id)
            encode = lambda seq: schema.encode_amendment(item, seq, time.time_ns())  # noqa: E731
        elif isinstance(item, StreamEvent):
            subject = status_subject(item.stream_id)
            encode = lambda seq: schema.encode_status(item, seq)  # noqa: E731
        else:
            subject = METRICS_SUBJECT
            encode = lambda seq: schema.encode_metrics(item[1], seq, time.time_ns())  # noqa: E731
        if subject not in self._next_seq:
            self._next_seq[subject] = 0 if subject == METRICS_SUBJECT else await self._resume_seq(subject)
        seq = self._next_seq[subject]
        try:
            payload = encode(seq)
        except (TypeError, ValueError, OverflowError) as exc:
            self.encode_errors += 1
            log.error("cannot encode %s: %s", type(item).__name__, exc)
            return None
        self._next_seq[subject] = seq + 1
        msg_id = f"{METRICS_SUBJECT}#{self._metrics_id}#{seq}" if subject == METRICS_SUBJECT else f"{subject}#{seq}"
        return subject, msg_id, payload

    async def _resume_seq(self, subject: str) -> int:
        """1 + the ``seq`` of the subject's last stored message (0 for a new subject)."""
        from nats.js.errors import NotFoundError

        try:
            last = await self._js.get_last_msg(self.settings.stream, subject)
        except NotFoundError:
            return 0
        try:
            return int(msgpack.unpackb(last.data, raw=False)["seq"]) + 1
        except Exception:  # noqa: BLE001 - a foreign message on our subject: start after it anyway
            log.warning("last message on %s is not an amodal message; numbering from its stream sequence", subject)
            return int(last.seq)

    async def _publish_batch(self, batch: list) -> list:
        """Publish ``batch`` with its acknowledgements awaited together; the items that failed (to retry)."""
        encoded = []
        for item in batch:
            if isinstance(item, tuple) and len(item) == 4:  # already encoded by an earlier, failed attempt
                encoded.append(item)
                continue
            e = await self._encode(item)
            if e is not None:
                encoded.append((*e, item))
        results = await asyncio.gather(*(self._js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
                                         for subject, msg_id, payload, _ in encoded), return_exceptions=True)
        failed = []
        for entry, result in zip(encoded, results):
            if isinstance(result, BaseException):
                failed.append(entry)
                continue
            subject, _, _, item = entry
            self.published[subject] += 1
            self.duplicates += bool(result.duplicate)
            if isinstance(item, FrameResult) and self._on_published is not None:
                self._on_published(item)
        if failed:
            log.warning("JetStream did not acknowledge %d of %d messages (%r); retrying", len(failed), len(encoded),
                        next(r for r in results if isinstance(r, BaseException)))
        return failed
