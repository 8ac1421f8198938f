"""Wire-level helpers for subscriber tests: a loopback ZeroMQ PUB socket and a readiness probe.

ZeroMQ PUB drops what it publishes before a subscriber's subscription has arrived, so a test first sends
probe frames on their own topic (``frames/probe/``, its own sequence) until the subscriber yields one, then
drains the probes still in flight; what the test publishes after that reaches the subscriber.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from amodal import schema
from amodal.types import FrameResult

PROBE_TOPIC = schema.frames_topic("probe")


def bind_pub(endpoint: str) -> zmq.Socket:
    """A PUB socket bound to ``endpoint`` that never lingers on close."""
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return sock


def probe_payload(seq: int) -> bytes:
    return schema.encode_frame(FrameResult("probe", seq, None, 0, 1, 1), seq, 0)


def wait_connected(pub: zmq.Socket, received_probe: Callable[[float], bool], timeout_s: float = 15.0) -> None:
    """Send probes until ``received_probe(wait_s)`` says one arrived, then drain the ones still in flight."""
    deadline = time.monotonic() + timeout_s
    seq = 0
    while True:
        pub.send_multipart([PROBE_TOPIC.encode(), probe_payload(seq)])
        seq += 1
        if received_probe(0.05):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no probe reached the subscriber in {timeout_s} s")
    while received_probe(0.3):
        continue  # drain the probes still in flight
