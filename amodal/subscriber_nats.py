"""``amodal.NatsSubscriber``: read an engine cluster's results from NATS JetStream with durable pull consumers.

>>> with NatsSubscriber("nats://127.0.0.1:4222", durable="dashboard") as sub:
...     for msg in sub:                  # the same messages as ``amodal.Subscriber``: FrameMessage, StatusMessage …
...         ...

Subjects (one JetStream stream, ``AMODAL`` by default, captures ``amodal.>``):
  * ``amodal.frames.<stream>`` — frame messages of one stream; ``amodal.amendments.<stream>`` — its amendments;
  * ``amodal.status.<stream>`` — its state changes, including where the cluster moved it after a node died;
  * ``amodal.metrics`` — every engine's periodic metrics.
``<stream>`` is the stream id percent-encoded so that it is one subject token (``.``, ``*``, ``>`` and non-ASCII are
escaped).  Payloads are the msgpack messages of ``amodal.schema``, byte for byte what ZeroMQ carries.

A ``durable`` name makes the server remember what this reader acknowledged: a message is acknowledged when the
caller asks for the next one (or on ``close()``), so a reader that stops or crashes resumes at the first message
it had not finished — at least once, never a gap within the stream's retention.  A redelivered message already
yielded (JetStream stream sequence not above the last one yielded) is acknowledged and skipped.  Without
``durable`` the consumer is ephemeral.  ``nats-py`` is asyncio: its event loop runs in this object's own thread.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import quote, unquote

from amodal import schema
from amodal.errors import ConfigError, EngineError, SchemaError
from amodal.schema import AmendmentMessage, FrameMessage, Message, MetricsMessage, UnknownMessageTypeError
from amodal.subscriber import MessageIteration, SubscriberStats, track_sequence

log = logging.getLogger(__name__)

__all__ = ["NatsSubscriber", "LoopThread", "STREAM_NAME", "SUBJECT_ROOT", "subject_token", "frames_subject",
           "amendments_subject", "status_subject", "METRICS_SUBJECT", "topic_of_subject"]

STREAM_NAME = "AMODAL"
SUBJECT_ROOT = "amodal"
METRICS_SUBJECT = f"{SUBJECT_ROOT}.metrics"
EPHEMERAL_INACTIVE_S = 3600.0
_DURABLE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# ------------------------------------------------------------------------------------------------ subjects
def subject_token(stream_id: str) -> str:
    """A stream id as one NATS subject token (percent-encoded; ``.`` too, which ``quote`` keeps)."""
    return quote(stream_id, safe="").replace(".", "%2E")


def frames_subject(stream_id: str) -> str:
    return f"{SUBJECT_ROOT}.frames.{subject_token(stream_id)}"


def amendments_subject(stream_id: str) -> str:
    return f"{SUBJECT_ROOT}.amendments.{subject_token(stream_id)}"


def status_subject(stream_id: str) -> str:
    return f"{SUBJECT_ROOT}.status.{subject_token(stream_id)}"


def topic_of_subject(subject: str) -> str:
    """The ZeroMQ topic ``amodal.schema.decode`` checks a message against (``frames/<stream>/``, ``status/`` …)."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] == SUBJECT_ROOT and parts[1] in ("frames", "amendments"):
        return schema.frames_topic(unquote(parts[2]))
    if len(parts) == 3 and parts[:2] == [SUBJECT_ROOT, "status"]:
        return schema.STATUS_TOPIC
    if subject == METRICS_SUBJECT:
        return schema.METRICS_TOPIC
    raise SchemaError(f"{subject}: not an amodal subject")


# ---------------------------------------------------------------------------------------------- event loop
class LoopThread:
    """An asyncio event loop running in its own daemon thread; ``run(coro)`` waits for a coroutine from any
    other thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro, timeout_s: float | None = None):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout_s} s") from None

    def submit(self, coro) -> "asyncio.Future":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancel what still runs on the loop (a client's reader and pinger), then stop the loop and its thread."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                self.run(cancel_all(), timeout_s)
            except (TimeoutError, RuntimeError) as exc:
                log.warning("%s: tasks still running at close: %s", self._thread.name, exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.loop.close()


async def connect(servers: Sequence[str], connect_timeout_s: float, name: str):
    """A nats-py client connected to any of ``servers`` (reconnecting to the others for ever)."""
    import nats

    try:
        return await nats.connect(list(servers), name=name, connect_timeout=connect_timeout_s,
                                  max_reconnect_attempts=-1, reconnect_time_wait=0.2, allow_reconnect=True)
    except Exception as exc:  # nats-py raises several unrelated types (NoServersError, OSError, TimeoutError)
        raise EngineError(f"cannot connect to NATS at {', '.join(servers)}: {type(exc).__name__}: {exc}") from exc


def as_servers(servers: str | Iterable[str]) -> list[str]:
    """``"nats://a:4222,nats://b:4222"`` or a list → a list of server URLs (each must be ``nats://``)."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    out = [s.strip() for s in items if s.strip()]
    if not out or any(not s.startswith(("nats://", "tls://")) for s in out):
        raise ConfigError(f"NATS servers are nats://HOST:PORT URLs, got {servers!r}")
    return out


# --------------------------------------------------------------------------------------------- subscriber
class _Consumer:
    """One pull consumer and the messages it fetched but has not yet handed out."""

    def __init__(self, subscription, name: str) -> None:
        self.subscription, self.name = subscription, name
        self.pending: deque = deque()
        self.fetch: asyncio.Future | None = None
        self.last_stream_seq = 0


class NatsSubscriber(MessageIteration):
    def __init__(
        self,
        servers: str | Iterable[str],
        streams: Iterable[str] | None = None,
        *,
        durable: str | None = None,
        status: bool = True,
        metrics: bool = False,
        amendments: bool = True,
        timeout_s: float | None = None,
        stream_name: str = STREAM_NAME,
        deliver: str = "all",
        ack_wait_s: float = 30.0,
        batch: int = 64,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """``servers``: NATS URLs (a comma-separated string or a list); ``streams=None`` reads every stream (one
        consumer), else one consumer per stream; ``durable``: the consumers' durable name (letters, digits, ``_``,
        ``-``), None = ephemeral; ``deliver``: where a new consumer starts, ``all`` (the oldest retained message) or
        ``new``; ``ack_wait_s``: how long a fetched, unacknowledged message waits before the server redelivers it;
        ``timeout_s`` ends iteration after that much silence.  The JetStream stream must exist (an engine creates
        it); ``EngineError`` if it does not appear within ``connect_timeout_s``."""
        if durable is not None and not _DURABLE.match(durable):
            raise ConfigError(f"durable name {durable!r}: 1-64 letters, digits, '_' or '-'")
        if deliver not in ("all", "new"):
            raise ConfigError(f"deliver must be 'all' or 'new', got {deliver!r}")
        if batch < 1 or ack_wait_s <= 0:
            raise ConfigError("batch must be >= 1 and ack_wait_s > 0")
        self.servers = as_servers(servers)
        self.streams = None if streams is None else list(streams)
        self.durable, self.status, self.metrics, self.amendments = durable, status, metrics, amendments
        self.timeout_s, self.stream_name, self.batch = timeout_s, stream_name, batch
        self.stats = SubscriberStats()
        self._last_seq: dict[tuple[str, str], int] = {}
        self._unacked = None  # the message handed out last: acknowledged on the next recv() or on close()
        self._loop = LoopThread("amodal-nats-subscriber")
        self._consumers: list[_Consumer] = []
        self._next = 0
        try:
            self._nc = self._loop.run(connect(self.servers, connect_timeout_s, "amodal-subscriber"),
                                      connect_timeout_s + 5)
            self._loop.run(self._subscribe(deliver, ack_wait_s, connect_timeout_s), connect_timeout_s + 10)
        except BaseException:
            self.close()
            raise

    def _filters(self) -> list[tuple[str, str | None]]:
        """(filter subject, durable name) of each consumer."""
        def name(suffix: str | None) -> str | None:
            if self.durable is None:
                return None
            return self.durable if suffix is None else f"{self.durable}_{suffix}"

        if self.streams is None:
            return [(f"{SUBJECT_ROOT}.>", name(None))]
        filters = [(f"{SUBJECT_ROOT}.*.{subject_token(s)}", name(hashlib.sha1(s.encode()).hexdigest()[:12]))
                   for s in self.streams]
        if self.metrics:
            filters.append((METRICS_SUBJECT, name("metrics")))
        return filters

    async def _subscribe(self, deliver: str, ack_wait_s: float, timeout_s: float) -> None:
        from nats.js.api import ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        js = self._nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while True:  # the stream appears when the first engine starts; a new JetStream cluster elects a leader first
            try:
                await js.stream_info(self.stream_name)
                break
            except (NotFoundError, asyncio.TimeoutError, Exception) as exc:  # noqa: B014 - nats-py error types vary
                if time.monotonic() > deadline:
                    raise EngineError(f"JetStream stream {self.stream_name!r} not found on {', '.join(self.servers)} "
                                      f"within {timeout_s} s ({type(exc).__name__}: {exc}); is an engine running?")
                await asyncio.sleep(0.2)
        policy = DeliverPolicy.ALL if deliver == "all" else DeliverPolicy.NEW
        for subject, durable in self._filters():
            config = ConsumerConfig(deliver_policy=policy, ack_wait=ack_wait_s, max_ack_pending=10 * self.batch)
            if durable is None:  # the server deletes an ephemeral consumer not pulled from for this long (default 5 s)
                config.inactive_threshold = EPHEMERAL_INACTIVE_S
            subscription = await js.pull_subscribe(subject, durable=durable, stream=self.stream_name, config=config)
            self._consumers.append(_Consumer(subscription, durable or subject))

    # --------------------------------------------------------------------------------------------- reading
    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next well-formed message, or None after ``timeout_s`` of silence (None = wait forever).  Asking for
        the next message acknowledges the previous one."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._ack_previous()
        while True:
            got = self._loop.run(self._next_raw(deadline))
            if got is None:
                return None
            consumer, raw = got
            message = self._accept(consumer, raw)
            if message is not None:
                self._unacked = raw
                return message
            self._loop.run(raw.ack())  # skipped (unwanted, malformed or a redelivery): done with it

    def _ack_previous(self) -> None:
        if self._unacked is not None:
            raw, self._unacked = self._unacked, None
            self._loop.run(raw.ack(), 10.0)

    async def _next_raw(self, deadline: float | None):
        from nats.errors import TimeoutError as NatsTimeout

        while True:
            for i in range(len(self._consumers)):  # round robin over consumers with fetched messages
                consumer = self._consumers[(self._next + i) % len(self._consumers)]
                if consumer.pending:
                    self._next = (self._next + i + 1) % len(self._consumers)
                    return consumer, consumer.pending.popleft()
            for consumer in self._consumers:
                if consumer.fetch is None:
                    consumer.fetch = asyncio.ensure_future(consumer.subscription.fetch(self.batch, timeout=1.0))
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            done, _ = await asyncio.wait([c.fetch for c in self._consumers], timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            for consumer in self._consumers:
                if consumer.fetch in done:
                    future, consumer.fetch = consumer.fetch, None
                    try:
                        consumer.pending.extend(future.result())
                    except (NatsTimeout, asyncio.TimeoutError):
                        pass  # nothing new within the long poll: poll again

    def _accept(self, consumer: _Consumer, raw) -> Message | None:
        """Decode, filter, deduplicate and sequence-check one JetStream message; None when it is skipped."""
        stream_seq = raw.metadata.sequence.stream
        if stream_seq <= consumer.last_stream_seq:
            return None  # redelivered after we already yielded it
        consumer.last_stream_seq = stream_seq
        self.stats.received += 1
        try:
            message = schema.decode(topic_of_subject(raw.subject).encode(), raw.data)
        except UnknownMessageTypeError:
            self.stats.unknown_types += 1
            return None
        except SchemaError as exc:
            self.stats.malformed += 1
            self.stats.last_error = str(exc)
            log.warning("skipped a malformed message on %s: %s", raw.subject, exc)
            return None
        if isinstance(message, AmendmentMessage) and not self.amendments:
            return None
        if isinstance(message, MetricsMessage):
            return message if self.metrics else None
        if not isinstance(message, (FrameMessage, AmendmentMessage)):
            return message if self.status else None
        track_sequence(self.stats, self._last_seq, message)
        return message

    # ---------------------------------------------------------------------------------------------- closing
    def close(self) -> None:
        """Acknowledge the last message handed out, give back (nak) the ones fetched but not handed out, close."""
        if getattr(self, "_nc", None) is not None:
            try:
                self._ack_previous()
                self._loop.run(self._release(), 10.0)
            except Exception as exc:  # noqa: BLE001 - closing must finish; unacknowledged messages are redelivered
                log.warning("closing the NATS subscriber: %s", exc)
            self._nc = None
        self._loop.close()

    async def _release(self) -> None:
        fetches = [c.fetch for c in self._consumers if c.fetch is not None]
        for fetch in fetches:
            fetch.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        for consumer in self._consumers:
            consumer.fetch = None
            while consumer.pending:
                await consumer.pending.popleft().nak()
        if not self._nc.is_closed:  # close, not drain: messages still buffered inside nats-py are redelivered
            await self._nc.close()

    def __enter__(self) -> "NatsSubscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
