"""The analyzer interface every model stage implements.

Lifecycle (one thread calls all of it): ``start(device)`` once → ``process(frames)`` per micro-batch
(frames of several streams mixed) → ``on_source_eos(stream_id)`` when a stream has ended and all its
frames were processed (reset that stream's state: tracks, feature caches) → ``stop()``.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

from amodal.types import Frame, FrameResult, ObjectResult


class Analyzer(abc.ABC):
    #: the name used on the command line and in published results
    name: str = ""

    def start(self, device: torch.device) -> None:
        """Load weights and move to ``device``; called once before the first batch."""
        self.device = device

    @abc.abstractmethod
    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        """One result per frame, in the order of ``frames``, each carrying its frame's ``received_mono_ns``
        (the engine's latency accounting starts there)."""

    def result(self, frame: Frame, objects: tuple[ObjectResult, ...] = ()) -> FrameResult:
        """The ``FrameResult`` of ``frame`` carrying ``objects`` (stream, index, timestamps and size copied)."""
        return FrameResult(
            stream_id=frame.stream_id,
            frame_index=frame.index,
            pts_s=frame.pts_s,
            capture_time_ns=frame.capture_time_ns,
            width=frame.width,
            height=frame.height,
            objects=objects,
            analyzer=self.name,
            received_mono_ns=frame.received_mono_ns,
        )

    def on_source_eos(self, stream_id: str) -> None:
        """Forget the per-stream state of ``stream_id``."""

    def stop(self) -> None:
        """Release resources."""
