"""Reading an engine's published messages in tests."""
from __future__ import annotations

import time

from amodal import Subscriber
from amodal.schema import StatusMessage
from amodal.types import StreamState


def drain(sub: Subscriber, streams: set[str], timeout_s: float = 30.0, extra_s: float = 0.0) -> list:
    """Every message until each of ``streams`` has ended (or was removed), then ``extra_s`` more seconds of them
    (amendments of slow stages); at most ``timeout_s`` for the first part."""
    got, ended, deadline = [], set(), time.monotonic() + timeout_s
    while ended != streams and time.monotonic() < deadline:
        m = sub.recv(0.2)
        if m is None:
            continue
        got.append(m)
        if isinstance(m, StatusMessage) and m.event.state in (StreamState.ENDED, StreamState.REMOVED):
            ended.add(m.event.stream_id)
    end = time.monotonic() + extra_s
    while time.monotonic() < end:
        m = sub.recv(0.1)
        if m is not None:
            got.append(m)
    return got
