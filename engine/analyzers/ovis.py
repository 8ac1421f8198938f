"""``ovis``: CMaskTrack R-CNN occluded video instance segmentation with online tracking, per stream.

Each stream keeps its own track memory and the previous frame's FPN features (the calibration reference: past
frames only); both are dropped in ``on_source_eos``.  ``process`` batches frames of several streams; a frame is
always calibrated against its own stream's previous frame.  Published objects carry track id, class, score, box,
visible mask (RLE) and an occlusion-level estimate (``1 − visible area / the track's largest visible area``,
see ``amodal.models.cmasktrack.online``).  A live stream never ends, so tracks unmatched for
``TRACK_MAX_AGE_FRAMES`` frames are forgotten (the paper keeps every track of a finite video).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from amodal.engine.analyzer import Analyzer
from amodal.engine.config import AnalyzerConfig
from amodal.engine.postprocess import encode_masks
from amodal.engine.preprocess import frame_to_rgb_tensor
from amodal.models.cmasktrack import LoadedCMaskTrack, OnlineTracker, TrackedFrame
from amodal.models.cmasktrack.model import load_cmasktrack
from amodal.types import Frame, FrameResult, ObjectResult

TRACK_MAX_AGE_FRAMES = 300  # ~10 s at 30 fps


class OvisAnalyzer(Analyzer):
    name = "ovis"

    def __init__(self, config: AnalyzerConfig, loaded: LoadedCMaskTrack | None = None) -> None:
        if loaded is None and not config.weights:
            from amodal.pretrained import default_weights

            config = dataclasses.replace(config, weights=str(default_weights("ovis")))
        self.config = config
        self.loaded = loaded if loaded is not None else load_cmasktrack(config.weights)  # CheckpointError if bad
        self.class_names = self.loaded.config.class_names
        self.tracker: OnlineTracker | None = None

    def start(self, device: torch.device) -> None:
        super().start(device)
        model = self.loaded.model.to(device).eval()
        self.tracker = OnlineTracker(model, score_threshold=self.config.score_threshold,
                                     max_detections=self.config.max_detections,
                                     max_age_frames=TRACK_MAX_AGE_FRAMES)

    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        if self.tracker is None:
            self.start(torch.device("cpu"))
        return self.process_images(frames, [frame_to_rgb_tensor(f, self.device) for f in frames])

    @torch.inference_mode()
    def process_images(self, frames: Sequence[Frame], images: Sequence[torch.Tensor]) -> list[FrameResult]:
        """``process`` on frames already converted to float32[3, H, W] RGB in [0, 1] on the device (a later
        stage that needs the pixels too converts once)."""
        tracked = self.tracker.step([(f.stream_id, image) for f, image in zip(frames, images)])  # type: ignore[union-attr]
        return [self._to_result(f, t) for f, t in zip(frames, tracked)]

    def on_source_eos(self, stream_id: str) -> None:
        if self.tracker is not None:
            self.tracker.reset(stream_id)

    def stop(self) -> None:
        self.tracker = None

    def _name(self, label: int) -> str:
        return self.class_names[label - 1] if 0 < label <= len(self.class_names) else f"class_{label}"

    def _to_result(self, frame: Frame, t: TrackedFrame) -> FrameResult:
        masks = encode_masks(t.masks)
        objects = tuple(
            ObjectResult(class_id=int(label), class_name=self._name(int(label)), score=float(score),
                         box_xyxy=tuple(float(v) for v in box),  # type: ignore[arg-type]
                         mask=mask, track_id=int(tid), occlusion_level=float(level))
            for box, score, label, mask, tid, level in zip(
                t.boxes_xyxy.cpu().tolist(), t.scores.cpu().tolist(), t.labels.cpu().tolist(), masks,
                t.track_ids.cpu().tolist(), t.occlusion_levels.cpu().tolist())
        )
        return self.result(frame, objects)
