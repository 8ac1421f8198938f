"""``amodal.Subscriber``: iterate over an engine's published results.

>>> with Subscriber("tcp://127.0.0.1:5555", streams=["cam1"]) as sub:
...     for msg in sub:                       # FrameMessage | StatusMessage | MetricsMessage
...         if isinstance(msg, FrameMessage):
...             for obj in msg.result.objects:
...                 visible = obj.mask.decode()   # bool[H, W], decoded only when asked for

Malformed or foreign messages are logged, counted in ``stats.malformed`` and skipped; lost messages
show as gaps in the per-topic sequence numbers and are counted in ``stats.lost``.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import zmq

from amodal import schema
from amodal.errors import SchemaError
from amodal.schema import FrameMessage, Message, MetricsMessage, StatusMessage

log = logging.getLogger(__name__)

__all__ = ["Subscriber", "SubscriberStats", "FrameMessage", "StatusMessage", "MetricsMessage"]


@dataclass
class SubscriberStats:
    received: int = 0
    malformed: int = 0
    last_error: str | None = None
    lost: collections.Counter = field(default_factory=collections.Counter)  # topic → messages missed
    restarts: int = 0  # publisher restarts seen (sequence numbers went back)


class Subscriber:
    def __init__(
        self,
        endpoint: str,
        streams: Iterable[str] | None = None,
        *,
        status: bool = True,
        metrics: bool = False,
        timeout_s: float | None = None,
        rcv_hwm: int = 100000,
        context: zmq.Context | None = None,
    ) -> None:
        """``streams=None`` subscribes to every stream; ``timeout_s`` ends iteration after that much silence."""
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.stats = SubscriberStats()
        self._last_seq: dict[str, int] = {}
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, rcv_hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        topics = [schema.FRAMES_PREFIX] if streams is None else [schema.frames_topic(s) for s in streams]
        if status:
            topics.append(schema.STATUS_TOPIC)
        if metrics:
            topics.append(schema.METRICS_TOPIC)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._socket.connect(endpoint)

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next well-formed message, or None after ``timeout_s`` of silence (None = wait forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            remaining_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(remaining_ms):
                return None
            parts = self._socket.recv_multipart()
            self.stats.received += 1
            try:
                if len(parts) != 2:
                    raise SchemaError(f"expected 2 message parts [topic, payload], got {len(parts)}")
                message = schema.decode(parts[0], parts[1])
            except SchemaError as exc:
                self.stats.malformed += 1
                self.stats.last_error = str(exc)
                log.warning("skipped a malformed message: %s", exc)
                continue
            self._track_sequence(message)
            return message

    def _track_sequence(self, message: Message) -> None:
        last = self._last_seq.get(message.topic)
        if last is not None:
            if message.seq > last + 1:
                self.stats.lost[message.topic] += message.seq - last - 1
            elif message.seq <= last:
                self.stats.restarts += 1
        self._last_seq[message.topic] = message.seq

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.recv(self.timeout_s)
            if message is None:
                return
            yield message

    def close(self) -> None:
        self._socket.close(0)

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
