"""``identity``: publishes an empty result per frame — the engine's own overhead, for benchmarks."""
from __future__ import annotations

from collections.abc import Sequence

from amodal.engine.analyzer import Analyzer
from amodal.types import Frame, FrameResult


class IdentityAnalyzer(Analyzer):
    name = "identity"

    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        return [self.result(f) for f in frames]
