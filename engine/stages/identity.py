"""``identity``: passes every frame's objects through unchanged — the engine's own overhead, for benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

from amodal.engine.stage import Stage, StageBatch
from amodal.types import ObjectResult


@dataclass(frozen=True)
class IdentitySettings:
    """No settings."""


class IdentityStage(Stage):
    name = "identity"

    def __init__(self, settings: IdentitySettings | None = None) -> None:
        self.settings = settings or IdentitySettings()

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        return list(batch.objects)
