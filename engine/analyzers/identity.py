"""``identity``: publishes an empty result per frame — the engine's own overhead, for benchmarks."""
from __future__ import annotations

from collections.abc import Sequence

from amodal.engine.analyzer import Analyzer
from amodal.types import Frame, FrameResult


class IdentityAnalyzer(Analyzer):
    name = "identity"

    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        return [
            FrameResult(
                stream_id=f.stream_id,
                frame_index=f.index,
                pts_s=f.pts_s,
                capture_time_ns=f.capture_time_ns,
                width=f.width,
                height=f.height,
                analyzer=self.name,
                received_mono_ns=f.received_mono_ns,
            )
            for f in frames
        ]
