"""Stages run outside an engine: a started pipeline of stage instances, frames in, ``FrameResult``s out."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from amodal.engine.pipeline import Pipeline
from amodal.engine.stage import Stage
from amodal.types import Frame, FrameResult


class StagesUnderTest:
    """``StagesUnderTest(OvisStage(...)).process(frames)``: the stages started on ``device``, each batch
    preprocessed once as the engine does; a stage failure fails the test."""

    def __init__(self, *stages: Stage, device: torch.device = torch.device("cpu")) -> None:
        self.stages = stages
        self.device = device
        self.pipeline = Pipeline.of("test", stages)
        for stage in stages:
            stage.start(device)

    @property
    def stage(self) -> Stage:
        """The last stage."""
        return self.stages[-1]

    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        out = self.pipeline.process(list(frames), self.device)
        assert not out.failures, out.failures
        return out.results

    def on_source_eos(self, stream_id: str) -> None:
        for stage in self.stages:
            stage.on_source_eos(stream_id)

    def stop(self) -> None:
        for stage in self.stages:
            stage.stop()
