"""Online (streaming) CMaskTrack R-CNN over many streams: past-only calibration and a track memory per stream.

For each stream the tracker keeps the FPN features of its previous frame (the calibration reference: only past
frames are used, K = 1; the first frame of a stream is calibrated against itself) and a ``TrackMemory``.
``step`` takes frames of several streams at once: frames are batched per "wave" (the first frame of each stream,
then the second frame of streams that sent two, …) and per image size, so every frame is calibrated against its
own stream's previous frame even when both arrive in the same call.  Box/mask logits are not averaged over
several references (the paper's offline ±5-frame averaging needs future frames).

Occlusion level of a tracked object: ``1 − visible mask area / largest visible area of its track so far``
(0 at the track's largest view; an object first seen half hidden reads 0 until it is seen whole — an honest
lower bound, since a visible-mask model cannot see the hidden part).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from amodal.models.cmasktrack.model import CMaskTrackRCNN, FrameDetections
from amodal.models.cmasktrack.track_head import (
    MatchWeights,
    TrackMemory,
    match_tracks,
    occlusion_levels,
    update_memory,
)


@dataclass(frozen=True)
class TrackedFrame:
    """One frame's tracked objects (N): boxes float[N, 4] x1y1x2y2 px, scores float[N], labels int64[N],
    masks bool[N, H, W] (visible), track_ids int64[N], occlusion_levels float[N] in [0, 1]."""

    boxes_xyxy: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    track_ids: torch.Tensor
    occlusion_levels: torch.Tensor


@dataclass
class _StreamState:
    memory: TrackMemory
    ref_features: "OrderedDict[str, torch.Tensor] | None" = None  # {level: float[C, h, w]} of the previous frame
    frame: int = 0


class OnlineTracker:
    """Per-stream online inference with a shared model.

    Args:
        model: a CMaskTrackRCNN (put in eval mode here).
        score_threshold: detections below it are neither tracked nor returned.
        max_detections: at most this many (highest-scoring) detections per frame.
        max_age_frames: forget tracks unmatched for this many frames (None: the model config's
            ``track_max_age_frames``; 0: never).
    """

    def __init__(self, model: CMaskTrackRCNN, score_threshold: float = 0.05, max_detections: int = 100,
                 max_age_frames: int | None = None) -> None:
        self.model = model.eval()
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.max_age_frames = model.config.track_max_age_frames if max_age_frames is None else max_age_frames
        cfg = model.config
        self.weights = MatchWeights(cfg.match_det_score_weight, cfg.match_iou_weight, cfg.match_label_weight,
                                   cfg.track_logit_scale)
        self._streams: dict[Hashable, _StreamState] = {}

    def reset(self, stream: Hashable) -> None:
        """Forget ``stream``'s memory and cached features."""
        self._streams.pop(stream, None)

    @property
    def streams(self) -> list[Hashable]:
        return list(self._streams)

    def memory(self, stream: Hashable) -> TrackMemory | None:
        state = self._streams.get(stream)
        return None if state is None else state.memory

    @torch.inference_mode()
    def step(self, items: Sequence[tuple[Hashable, torch.Tensor]]) -> list[TrackedFrame]:
        """Track one frame per item ``(stream key, image float[3, H, W] RGB in [0, 1])``; results in item order."""
        results: list[TrackedFrame | None] = [None] * len(items)
        waves: list[list[int]] = []
        seen: dict[Hashable, int] = {}
        for i, (key, _) in enumerate(items):
            w = seen.get(key, 0)
            seen[key] = w + 1
            if w == len(waves):
                waves.append([])
            waves[w].append(i)
        for wave in waves:
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in wave:
                groups.setdefault(tuple(items[i][1].shape), []).append(i)
            for idx in groups.values():
                for i, tracked in zip(idx, self._step_group([items[i] for i in idx])):
                    results[i] = tracked
        return [r for r in results if r is not None]

    def _step_group(self, items: list[tuple[Hashable, torch.Tensor]]) -> list[TrackedFrame]:
        model = self.model
        images = [img for _, img in items]
        image_list, features = model.extract(images)
        refs: list["OrderedDict[str, torch.Tensor]"] = []
        for b, (key, _) in enumerate(items):
            state = self._streams.get(key)
            own = OrderedDict((k, v[b]) for k, v in features.items())
            ok = state is not None and state.ref_features is not None and all(
                state.ref_features[k].shape == own[k].shape for k in own)
            refs.append(state.ref_features if ok else own)  # type: ignore[union-attr]
        ref_features = OrderedDict((k, torch.stack([r[k] for r in refs])) for k in features)
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        detections = model.detect(image_list, features, ref_features, sizes)
        out = []
        for b, ((key, _), det) in enumerate(zip(items, detections)):
            state = self._streams.get(key)
            if state is None:
                state = _StreamState(TrackMemory.empty(det.embeddings.shape[1], det.embeddings.device))
                self._streams[key] = state
            out.append(self._track(state, model.postprocess(det, self.score_threshold)))
            state.ref_features = OrderedDict((k, v[b].clone()) for k, v in features.items())
            state.frame += 1
        return out

    def _track(self, state: _StreamState, det: FrameDetections) -> TrackedFrame:
        order = torch.argsort(det.scores, descending=True)[: self.max_detections]
        boxes, scores, labels = det.boxes_xyxy[order], det.scores[order], det.labels[order]
        masks, emb = det.masks[order], det.embeddings[order]
        areas = masks.flatten(1).sum(dim=1).to(torch.float32)
        match = match_tracks(emb, boxes, labels, scores, state.memory, self.weights)
        state.memory = update_memory(state.memory, match, emb, boxes, labels, areas, state.frame,
                                     self.max_age_frames)
        return TrackedFrame(boxes, scores, labels, masks, match.ids, occlusion_levels(areas, match.ids, state.memory))
