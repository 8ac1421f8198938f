"""Small helpers every source uses to report state changes and to keep credentials out of reasons."""
from __future__ import annotations

import re
import time

from amodal.types import StreamEvent, StreamState

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(uri: str) -> str:
    """``rtsp://user:secret@host/x`` → ``rtsp://***@host/x``: reasons are published, passwords must not be."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", uri)


def make_event(
    stream_id: str,
    state: StreamState,
    reason: str | None = None,
    *,
    attempt: int = 0,
    fatal: bool = False,
) -> StreamEvent:
    """A ``StreamEvent`` stamped with the wall clock now."""
    return StreamEvent(
        stream_id=stream_id,
        state=state,
        reason=redact(reason) if reason else reason,
        time_ns=time.time_ns(),
        attempt=attempt,
        fatal=fatal,
    )
