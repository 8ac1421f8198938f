"""Sinks: where a pipeline's output goes (the ZeroMQ publisher, the annotated video, …).

The inference thread hands each sink, in order: the results of a micro-batch with their frames, amendments from
detached stages, stream events and metrics.  A sink owns its thread(s) and must never block the engine for long;
a sink whose thread dies records ``failure`` — the engine reports it (log line, ``error`` events on the other
sinks) and stops with a failure instead of running on silently.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from amodal.types import Amendment, Frame, FrameResult, StreamEvent


class Sink(abc.ABC):
    #: shown in logs and error events
    name: str = ""
    #: set by the sink when it can no longer deliver (its thread died)
    failure: BaseException | None = None

    def start(self) -> None:
        """Open files or sockets; raise an ``EngineError`` when that fails."""

    @abc.abstractmethod
    def write_results(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        """The results of one micro-batch, ``results[i]`` for ``frames[i]``."""

    def write_amendment(self, amendment: Amendment) -> None:
        """What a detached stage adds to an already written frame."""

    def write_event(self, event: StreamEvent) -> None:
        """A stream's state change; a stream's ``ended`` follows its last result."""

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """The engine's periodic metrics."""

    def close(self) -> None:
        """Deliver everything written so far, then release resources."""
