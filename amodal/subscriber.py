"""``amodal.Subscriber``: iterate over an engine's published results.

>>> with Subscriber("tcp://127.0.0.1:5555", streams=["cam1"]) as sub:
...     for msg in sub:                       # FrameMessage | AmendmentMessage | StatusMessage | MetricsMessage
...         if isinstance(msg, FrameMessage):
...             for obj in msg.result.objects:
...                 visible = obj.mask.decode()   # bool[H, W], decoded only when asked for
...         elif isinstance(msg, AmendmentMessage):  # a slow stage's additions to a frame already yielded
...             for obj, ref in zip(msg.amendment.objects, msg.amendment.refs):
...                 ...                       # ref: index into that frame's objects, or None (a new object)

Malformed or foreign messages are logged, counted in ``stats.malformed`` and skipped.  Version-1 messages
of a type this release does not know (added later, additively) are skipped quietly and counted in
``stats.unknown_types``.  Lost messages show as gaps in the sequence numbers, which run per topic and
message type (a topic's amendments are numbered apart from its frames), and are counted in ``stats.lost``.
"""
from __future__ import annotations

import abc
import collections
import logging
import time
import uuid
from pathlib import Path
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import zmq

from amodal import schema
from amodal.security import secure_client
from amodal.errors import SchemaError
from amodal.schema import AmendmentMessage, FrameMessage, Message, MetricsMessage, StatusMessage, UnknownMessageTypeError

log = logging.getLogger(__name__)

__all__ = ["Subscriber", "SubscriberStats", "FrameMessage", "AmendmentMessage", "StatusMessage", "MetricsMessage"]


@dataclass
class SubscriberStats:
    """What a subscriber has seen: every multipart message it received is counted in ``received`` and is
    either yielded, skipped as ``malformed``, skipped as one of the ``unknown_types`` or (with
    ``amendments=False``) skipped as an amendment."""

    received: int = 0
    malformed: int = 0
    unknown_types: int = 0  # version-1 messages of a type this release does not know
    last_error: str | None = None
    lost: collections.Counter = field(default_factory=collections.Counter)  # topic → messages missed (every type)
    lost_amendments: collections.Counter = field(default_factory=collections.Counter)  # topic → of those, amendments
    restarts: int = 0  # publisher restarts seen (a sequence number went back)


def track_sequence(stats: SubscriberStats, last_seq: dict[tuple[str, str], int], message: Message) -> None:
    """Count ``message`` against its (topic, message type) sequence: a gap is lost messages, a step back a
    publisher restart.  ``last_seq`` is the reader's own record, updated here."""
    key = (message.topic, message.WIRE_TYPE)
    last = last_seq.get(key)
    if last is not None:
        if message.seq > last + 1:
            missed = message.seq - last - 1
            stats.lost[message.topic] += missed
            if isinstance(message, AmendmentMessage):
                stats.lost_amendments[message.topic] += missed
        elif message.seq <= last:
            stats.restarts += 1
    last_seq[key] = message.seq


class MessageIteration(abc.ABC):
    """``for message in subscriber``: ``recv(timeout_s)`` until one waits ``timeout_s`` in vain."""

    timeout_s: float

    @abc.abstractmethod
    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None after ``timeout_s`` (None = the subscriber's own) without one."""

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.recv(self.timeout_s)
            if message is None:
                return
            yield message


class Subscriber(MessageIteration):
    def __init__(
        self,
        endpoint: str,
        streams: Iterable[str] | None = None,
        *,
        status: bool = True,
        metrics: bool = False,
        amendments: bool = True,
        timeout_s: float | None = None,
        rcv_hwm: int = 100000,
        server_public_key: str | Path | None = None,
        client_cert: str | Path | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        """``streams=None`` subscribes to every stream; ``amendments=False`` skips amendment messages
        (silently: they are not malformed); ``timeout_s`` ends iteration after that much silence.
        An engine with CURVE on (``security:``) needs ``server_public_key`` (its public certificate file) and
        ``client_cert`` (this client's secret certificate, whose public key the engine authorizes)."""
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.amendments = amendments
        self.stats = SubscriberStats()
        self._last_seq: dict[tuple[str, str], int] = {}  # (topic, message type) → last sequence number
        self._socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, rcv_hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        secure_client(self._socket, server_public_key, client_cert)
        topics = [schema.FRAMES_PREFIX] if streams is None else [schema.frames_topic(s) for s in streams]
        if status:
            topics.append(schema.STATUS_TOPIC)
        if metrics:
            topics.append(schema.METRICS_TOPIC)
        # a private topic nothing is published on: the engine counts these to wait for its subscribers; it sorts
        # last (a SUB sends its subscriptions in byte order on connection), so once the engine sees it, the topics
        # above are in place
        topics.append(f"{schema.HELLO_PREFIX}{uuid.uuid4().hex}")
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
            message = self._accept(self._socket.recv_multipart())
            if message is not None:
                return message

    def _accept(self, parts: list[bytes]) -> Message | None:
        """Decode, count and sequence-check one multipart message; None when it is skipped."""
        self.stats.received += 1
        try:
            if len(parts) != 2:
                raise SchemaError(f"expected 2 message parts [topic, payload], got {len(parts)}")
            message = schema.decode(parts[0], parts[1])
        except UnknownMessageTypeError as exc:
            self.stats.unknown_types += 1
            log.debug("skipped a message of a type this release does not know: %s", exc)
            return None
        except SchemaError as exc:
            self.stats.malformed += 1
            self.stats.last_error = str(exc)
            log.warning("skipped a malformed message: %s", exc)
            return None
        if isinstance(message, AmendmentMessage) and not self.amendments:
            return None
        self._track_sequence(message)
        return message

    def _track_sequence(self, message: Message) -> None:
        track_sequence(self.stats, self._last_seq, message)

    def close(self) -> None:
        self._socket.close(0)

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
