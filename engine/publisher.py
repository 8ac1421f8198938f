"""The ZeroMQ sink: one thread owns an XPUB socket, encodes results, amendments and events, numbers them per topic.

A PUB socket never blocks its sender: a subscriber that stops reading fills its own queue (``send_hwm``) and then
loses messages, which it sees as gaps in ``seq``; the engine is never slowed.  The socket is an XPUB so that the
engine sees subscriptions arrive: ``wait_for_subscribers(n)`` blocks until ``n`` amodal ``Subscriber``s have
subscribed (each also subscribes to a private ``~hello/<id>`` topic that no message is ever published on, sorted after every real topic).  Frames
and amendments of a stream share its topic but are numbered separately, so a reader that knows only frames sees
no gaps.  On ``close()`` everything queued before it is sent, and the socket lingers ``linger_ms`` to flush.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence

import zmq
from zmq.utils.monitor import recv_monitor_message

from amodal import schema
from amodal.engine.sink import Sink
from amodal.errors import PublishError
from amodal.security import SecuritySettings, secure_server
from amodal.types import Amendment, Frame, FrameResult, StreamEvent

log = logging.getLogger(__name__)

_STOP = object()
_DRAIN_MAX = 512
_IDLE_S = 0.05  # how often an idle publisher thread reads subscriptions
_REFUSALS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
             | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class Publisher(Sink):
    name = "publisher"

    def __init__(
        self,
        endpoint: str,
        send_hwm: int = 10000,
        linger_ms: int = 2000,
        on_published=None,
        security: SecuritySettings | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        """``on_published(result)`` is called from the publisher thread after each frame result is sent;
        ``security``: CURVE, only authorized subscribers (``amodal.security``)."""
        self.endpoint = endpoint
        self.send_hwm = send_hwm
        self.linger_ms = linger_ms
        self._on_published = on_published
        self.security = security
        self.refused = 0  # connections whose handshake was refused (security on)
        self._context = context or zmq.Context.instance()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._bound = threading.Event()
        self._error: Exception | None = None
        self.seq: Counter[str] = Counter()  # next frame/status/metrics sequence number per topic
        self.amendment_seq: Counter[str] = Counter()  # next amendment sequence number per topic
        self.encode_errors = 0
        self.bound_endpoint: str | None = None
        self.failure: BaseException | None = None
        self._subscribers: set[bytes] = set()
        self._subscribers_changed = threading.Condition()

    # ---------------------------------------------------------------------------------------- control
    def start(self, timeout_s: float = 5.0) -> None:
        """Bind (in the publisher thread) and raise ``PublishError`` if that fails."""
        self._thread = threading.Thread(target=self._run, name="amodal-publisher", daemon=True)
        self._thread.start()
        if not self._bound.wait(timeout_s):
            raise PublishError(f"publisher did not bind {self.endpoint} within {timeout_s} s")
        if self._error is not None:
            raise PublishError(f"cannot bind {self.endpoint}: {self._error}") from self._error

    def close(self, timeout_s: float = 10.0) -> None:
        """Send everything queued so far, then close the socket."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._thread = None

    @property
    def subscribers(self) -> int:
        """amodal ``Subscriber``s currently subscribed."""
        with self._subscribers_changed:
            return len(self._subscribers)

    def wait_for_subscribers(self, count: int, timeout_s: float) -> int:
        """Block until ``count`` subscribers have subscribed or ``timeout_s`` passed; the number subscribed."""
        deadline = time.monotonic() + timeout_s
        with self._subscribers_changed:
            while len(self._subscribers) < count and self.failure is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._subscribers_changed.wait(remaining)
            return len(self._subscribers)

    # ------------------------------------------------------------------------------------ producers
    def write_results(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        self._queue.put(list(results))

    def write_amendment(self, amendment: Amendment) -> None:
        self._queue.put(amendment)

    def write_event(self, event: StreamEvent) -> None:
        self._queue.put(event)

    def write_metrics(self, metrics: dict) -> None:
        self._queue.put(("metrics", metrics))

    # ------------------------------------------------------------------------------ publisher thread
    def _run(self) -> None:
        sock = self._context.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.SNDHWM, self.send_hwm)
            sock.setsockopt(zmq.LINGER, self.linger_ms)
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription is seen, not only a topic's first
            secure_server(sock, self.security)
            sock.bind(self.endpoint)
            self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            self._bound.set()
            sock.close(0)
            return
        self._bound.set()
        monitor = sock.get_monitor_socket(_REFUSALS) if self.security is not None else None
        try:
            stopping = False
            while not stopping:
                try:
                    items = [self._queue.get(timeout=_IDLE_S)]
                except queue.Empty:
                    items = []
                try:
                    while len(items) < _DRAIN_MAX:
                        items.append(self._queue.get_nowait())
                except queue.Empty:
                    pass
                for item in items:
                    if item is _STOP:
                        stopping = True
                        continue
                    self._send(sock, item)
                self._read_subscriptions(sock)
                if monitor is not None:
                    self._log_refusals(monitor)
        except BaseException as exc:  # noqa: BLE001 - recorded and reported by the engine, never silent
            self.failure = exc
            log.exception("the publisher thread died; results are no longer delivered")
            with self._subscribers_changed:
                self._subscribers_changed.notify_all()
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)
            sock.close()  # honours LINGER: queued messages are flushed to connected subscribers

    def _log_refusals(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(monitor)
            self.refused += 1
            kind = "authentication" if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "protocol (no CURVE?)"
            log.warning("publisher %s refused a subscriber: handshake failed, %s (%s)", self.endpoint, kind,
                        event.get("endpoint", b"").decode(errors="replace"))

    def _read_subscriptions(self, sock: zmq.Socket) -> None:
        changed = False
        while sock.poll(0, zmq.POLLIN):
            message = sock.recv()
            topic = message[1:]
            if not topic.startswith(schema.HELLO_PREFIX.encode()):
                continue
            changed = True
            if message[:1] == b"\x01":
                self._subscribers.add(topic)
            else:
                self._subscribers.discard(topic)
        if changed:
            with self._subscribers_changed:
                self._subscribers_changed.notify_all()

    def _send(self, sock: zmq.Socket, item) -> None:
        if isinstance(item, list):
            for result in item:
                self._send(sock, result)
            return
        counter = self.seq
        try:
            if isinstance(item, FrameResult):
                topic = schema.frames_topic(item.stream_id)
                payload = schema.encode_frame(item, self.seq[topic], time.time_ns())
            elif isinstance(item, Amendment):
                topic, counter = schema.frames_topic(item.stream_id), self.amendment_seq
                payload = schema.encode_amendment(item, counter[topic], time.time_ns())
            elif isinstance(item, StreamEvent):
                topic = schema.STATUS_TOPIC
                payload = schema.encode_status(item, self.seq[topic])
            else:
                topic = schema.METRICS_TOPIC
                payload = schema.encode_metrics(item[1], self.seq[topic], time.time_ns())
        except (TypeError, ValueError, OverflowError) as exc:
            self.encode_errors += 1
            log.error("cannot encode %s: %s", type(item).__name__, exc)
            return
        sock.send_multipart((topic.encode(), payload), copy=len(payload) < 65536)
        counter[topic] += 1
        if isinstance(item, FrameResult) and self._on_published is not None:
            self._on_published(item)
