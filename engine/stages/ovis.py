"""``ovis``: CMaskTrack R-CNN occluded video instance segmentation with online tracking, per stream.

Each stream keeps its own track memory and the previous frame's FPN features (the calibration reference: past
frames only); both are dropped in ``on_source_eos``.  A micro-batch mixes frames of several streams; a frame is
always calibrated against its own stream's previous frame.  Published objects carry track id, class, score, box,
visible mask and an occlusion-level estimate (``1 − visible area / the track's largest visible area``, see
``amodal.models.cmasktrack.online``; an ``eoras`` stage after it replaces it with ``1 − |visible| / |amodal|``).
A live stream never ends, so tracks unmatched for ``track_max_age_frames`` frames are forgotten (the paper keeps
every track of a finite video).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from amodal.engine.stage import InputSpec, Stage, StageBatch
from amodal.engine.stages.common import DetectionSettings, detections_to_objects, load_once, resolve_weights
from amodal.errors import ConfigError
from amodal.models.cmasktrack import LoadedCMaskTrack, OnlineTracker, TrackedFrame
from amodal.models.cmasktrack.model import load_cmasktrack
from amodal.types import ObjectResult


@dataclass(frozen=True)
class OvisSettings(DetectionSettings):
    """``track_max_age_frames``: forget a track unmatched for this many frames of its stream (~10 s at 30 fps)."""

    track_max_age_frames: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.track_max_age_frames, int) or self.track_max_age_frames < 1:
            raise ConfigError(f"track_max_age_frames must be an integer >= 1, got {self.track_max_age_frames!r}")


class OvisStage(Stage):
    name = "ovis"
    primary = True
    input_spec = InputSpec()  # RGB in 0..1 at the frame's size (the model's transform normalises)
    #: what it can fill; an instance fills ``person_tracks`` only when its weights have a person class
    fills = frozenset({"objects", "masks", "tracks", "occlusion_levels", "person_tracks"})
    shipped_weights = "cmasktrack_tiny_synthetic.safetensors"

    def __init__(self, settings: OvisSettings | None = None, loaded: LoadedCMaskTrack | None = None) -> None:
        self.settings = settings or OvisSettings()
        self.loaded = loaded if loaded is not None else load_once(
            load_cmasktrack, resolve_weights(self.settings.weights, self.shipped_weights))  # CheckpointError if bad
        self.class_names = self.loaded.config.class_names
        if "person" not in self.class_names:
            self.fills = type(self).fills - {"person_tracks"}
        self.tracker: OnlineTracker | None = None

    def start(self, device: torch.device) -> None:
        super().start(device)
        model = self.loaded.model.to(device).eval()
        self.tracker = OnlineTracker(model, score_threshold=self.settings.score_threshold,
                                     max_detections=self.settings.max_detections,
                                     max_age_frames=self.settings.track_max_age_frames)

    @torch.inference_mode()
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        images = batch.input(self.input_spec).images
        tracked = self.tracker.step([(f.stream_id, image) for f, image in zip(batch.frames, images)])  # type: ignore[union-attr]
        return [self._objects(t) for t in tracked]

    def on_source_eos(self, stream_id: str) -> None:
        if self.tracker is not None:
            self.tracker.reset(stream_id)

    def stop(self) -> None:
        self.tracker = None
        super().stop()

    def _objects(self, t: TrackedFrame) -> tuple[ObjectResult, ...]:
        return detections_to_objects(self.class_names, t.boxes_xyxy, t.scores, t.labels, t.masks,
                                     track_ids=t.track_ids, occlusion_levels=t.occlusion_levels)
