"""A pipeline at run time: its synchronous stages run in order on each micro-batch of its streams; its detached
stages (a rate policy other than ``every``) get the result afterwards, on their own workers.

Failures are contained: when a stage raises on a batch that mixes streams, it is run again stream by stream, so
only the stream it fails on loses that batch (reported as a ``StageFailure``); a stage that breaks its contract
(processed before ``start``, wrong number of results) is a failure too.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from amodal.engine.preprocess import prepare_inputs
from amodal.engine.stage import RatePolicy, Stage, StageBatch, StageError
from amodal.errors import ConfigError
from amodal.types import CameraIntrinsics, Frame, FrameResult, ObjectResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class StageSlot:
    """A stage instance in a pipeline with its rate policy."""

    stage: Stage
    rate: RatePolicy


@dataclass(frozen=True)
class StageFailure:
    """A stage failed on the frames ``frame_indexes`` of ``stream_id``."""

    stream_id: str
    stage: str
    frame_indexes: tuple[int, ...]
    reason: str


@dataclass
class PipelineOutput:
    """What one pass of the synchronous stages gives: a result per surviving frame (with its frame), the
    objects each detached stage starts from, and the failures."""

    frames: list[Frame] = field(default_factory=list)
    results: list[FrameResult] = field(default_factory=list)
    failures: list[StageFailure] = field(default_factory=list)


def check_needs(name: str, slots: Sequence[StageSlot], providers: dict[str, list[str]] | None = None) -> None:
    """ConfigError unless every stage's needs are filled by an earlier synchronous stage (detached stages feed no
    later stage).  ``providers`` (capability → stage names) adds a hint to the error."""
    filled: set[str] = set()
    earlier: list[str] = []
    for slot in slots:
        if slot.stage.lag_frames and not slot.rate.is_detached:
            raise ConfigError(
                f"pipeline {name!r}: stage {slot.stage.name!r} completes frames {slot.stage.lag_frames} frames late "
                f"(published as amendments), so it must run detached: drop its rate setting or give it "
                f"rate: {{detached: true}}")
        missing = sorted(slot.stage.needs - filled)
        if missing:
            hint = ""
            if providers:
                names = sorted({p for need in missing for p in providers.get(need, [])})
                hint = f"; put it after a stage that fills them ({', '.join(names)})" if names else ""
            raise ConfigError(
                f"pipeline {name!r}: stage {slot.stage.name!r} needs {', '.join(missing)}, which no earlier stage "
                f"fills (earlier: {', '.join(earlier) or 'none'}){hint}")
        if not slot.rate.is_detached:
            filled |= slot.stage.fills
        earlier.append(slot.stage.name)


def _checked(stage: Stage, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
    if not stage.started:
        raise StageError(f"stage {stage.name!r} processed before start")
    out = stage.process(batch)
    if not isinstance(out, (list, tuple)) or len(out) != len(batch):
        got = len(out) if isinstance(out, (list, tuple)) else type(out).__name__
        raise StageError(f"stage {stage.name!r} returned {got} results for {len(batch)} frames")
    return [tuple(objects) for objects in out]


def run_stage(stage: Stage, batch: StageBatch) -> tuple[list[tuple[ObjectResult, ...] | None], list[StageFailure]]:
    """Objects per frame (None where the stage failed for that frame's stream) and the failures."""
    try:
        return list(_checked(stage, batch)), []
    except Exception as exc:  # noqa: BLE001 - a stage's failure is reported, never fatal to the engine
        streams = list(dict.fromkeys(f.stream_id for f in batch.frames))
        if len(streams) == 1:
            log.error("stage %s failed on stream %s: %r", stage.name, streams[0], exc, exc_info=exc)
            failure = StageFailure(streams[0], stage.name, tuple(f.index for f in batch.frames), repr(exc))
            return [None] * len(batch), [failure]
    out: list[tuple[ObjectResult, ...] | None] = [None] * len(batch)
    failures: list[StageFailure] = []
    for stream_id in streams:  # isolate the stream(s) it fails on
        indexes = [i for i, f in enumerate(batch.frames) if f.stream_id == stream_id]
        objects, failed = run_stage(stage, batch.select(indexes))
        failures += failed
        for i, o in zip(indexes, objects):
            out[i] = o
    return out, failures


class Pipeline:
    """The run-time form of one ``PipelineConfig``: stage instances (shared with other pipelines that use the same
    stage with the same settings) and their rate policies."""

    def __init__(self, name: str, slots: Sequence[StageSlot], providers: dict[str, list[str]] | None = None) -> None:
        self.name = name
        self.slots = tuple(slots)
        check_needs(name, self.slots, providers)
        self.sync = tuple(s for s in self.slots if not s.rate.is_detached)
        self.detached = tuple(s for s in self.slots if s.rate.is_detached)
        self.label = ",".join(s.stage.name for s in self.sync)

    @classmethod
    def of(cls, name: str, stages: Sequence[Stage | StageSlot]) -> "Pipeline":
        """A pipeline of stage instances, each with its default rate policy unless given as a ``StageSlot``."""
        return cls(name, [s if isinstance(s, StageSlot) else StageSlot(s, s.default_rate) for s in stages])

    def process(self, frames: Sequence[Frame], device: torch.device,
                cameras: Mapping[str, CameraIntrinsics] | None = None) -> PipelineOutput:
        """Run the synchronous stages on ``frames`` (one preprocessing per distinct declared input); ``cameras``:
        the streams' camera intrinsics, where their sources set them."""
        specs = [s.stage.input_spec for s in self.sync if s.stage.input_spec is not None]
        batch = StageBatch(tuple(frames), tuple(() for _ in frames), prepare_inputs(frames, specs, device),
                           cameras or {})
        stage_ms: dict[str, float] = {}
        failures: list[StageFailure] = []
        for slot in self.sync:
            start_ns = time.monotonic_ns()
            objects, failed = run_stage(slot.stage, batch)
            stage_ms[slot.stage.name] = (time.monotonic_ns() - start_ns) / 1e6
            failures += failed
            alive = [i for i, o in enumerate(objects) if o is not None]
            if len(alive) < len(batch):
                batch = batch.select(alive)
                objects = [objects[i] for i in alive]
            batch = StageBatch(batch.frames, tuple(objects), batch.inputs, batch.cameras)  # type: ignore[arg-type]
            if not batch.frames:
                break
        output = PipelineOutput(list(batch.frames), failures=failures)
        for frame, objects in zip(batch.frames, batch.objects):
            output.results.append(FrameResult(
                stream_id=frame.stream_id, frame_index=frame.index, pts_s=frame.pts_s,
                capture_time_ns=frame.capture_time_ns, width=frame.width, height=frame.height, objects=objects,
                analyzer=self.label, received_mono_ns=frame.received_mono_ns, stage_ms=dict(stage_ms),
                scan=frame.scan))
        return output
