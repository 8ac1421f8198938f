"""The ZeroMQ PUB side: one thread owns the socket, encodes results and events, numbers them per topic.

A PUB socket never blocks its sender: a subscriber that stops reading fills its own queue (``send_hwm``)
and then loses messages, which it sees as gaps in ``seq``; the engine is never slowed.  On ``close()``
everything queued before it is sent, and the socket lingers ``linger_ms`` to flush to subscribers.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter

import zmq

from amodal import schema
from amodal.errors import PublishError
from amodal.types import FrameResult, StreamEvent

log = logging.getLogger(__name__)

_STOP = object()
_DRAIN_MAX = 512


class Publisher:
    def __init__(
        self,
        endpoint: str,
        send_hwm: int = 10000,
        linger_ms: int = 2000,
        on_published=None,
        context: zmq.Context | None = None,
    ) -> None:
        """``on_published(result, publish_ms)`` is called from the publisher thread after each frame."""
        self.endpoint = endpoint
        self.send_hwm = send_hwm
        self.linger_ms = linger_ms
        self._on_published = on_published
        self._context = context or zmq.Context.instance()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._bound = threading.Event()
        self._error: Exception | None = None
        self.seq: Counter[str] = Counter()  # next sequence number per topic
        self.encode_errors = 0
        self.bound_endpoint: str | None = None

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

    # ------------------------------------------------------------------------------------ producers
    def publish_result(self, result: FrameResult) -> None:
        self._queue.put(result)

    def publish_results(self, results: list[FrameResult]) -> None:
        self._queue.put(results)

    def publish_event(self, event: StreamEvent) -> None:
        self._queue.put(event)

    def publish_metrics(self, metrics: dict) -> None:
        self._queue.put(("metrics", metrics))

    # ------------------------------------------------------------------------------ publisher thread
    def _run(self) -> None:
        sock = self._context.socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.SNDHWM, self.send_hwm)
            sock.setsockopt(zmq.LINGER, self.linger_ms)
            sock.bind(self.endpoint)
            self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            self._bound.set()
            sock.close(0)
            return
        self._bound.set()
        try:
            stopping = False
            while not stopping:
                items = [self._queue.get()]
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
        finally:
            sock.close()  # honours LINGER: queued messages are flushed to connected subscribers

    def _send(self, sock: zmq.Socket, item) -> None:
        if isinstance(item, list):
            for result in item:
                self._send(sock, result)
            return
        try:
            if isinstance(item, FrameResult):
                topic = schema.frames_topic(item.stream_id)
                now_ns = time.time_ns()
                payload = schema.encode_frame(item, self.seq[topic], now_ns)
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
        self.seq[topic] += 1
        if isinstance(item, FrameResult) and self._on_published is not None:
            self._on_published(item)
