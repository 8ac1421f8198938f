"""``eoras``: amodal completion of tracked objects (EoRaS), a secondary stage after a tracking stage (``ovis``).

Per micro-batch, every tracked object with a visible mask is cropped from its frame (``enlarge`` × its box, the
model's input size, ``roi_align``) with the crop's intrinsics — the stream's K from the settings, else the
``hfov_deg`` fallback — and all tracks of all streams run through one batched causal step of the model: each
track carries its own slots from frame to frame (a camera has no future frames; the windowed mode, whose results
would arrive W − 1 frames late, is a model capability this stage does not use yet).  A track that appears twice in a
micro-batch (two frames of its stream) is stepped twice, in frame order.  The amodal probabilities are pasted back
into frame coordinates and thresholded; the published ``amodal_mask`` is that mask united with the object's
visible mask (what is seen is part of the object), and ``occlusion_level = 1 − |visible| / |amodal|``.

Per-track state (slots) is dropped when the track has not been seen for ``track_lost_frames`` frames of its stream
(the tracker ended it) and, for every track of a stream, at its end of stream.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from amodal.engine.postprocess import encode_masks
from amodal.engine.stage import InputSpec, Stage, StageBatch
from amodal.engine.stages.common import resolve_weights
from amodal.errors import ConfigError
from amodal.models.eoras import (
    EoRaSTrackState,
    LoadedEoRaS,
    crop_images,
    crop_intrinsics,
    enlarged_crop_boxes,
    intrinsics_from_fov,
    load_eoras,
    paste_masks,
)
from amodal.types import ObjectResult


@dataclass(frozen=True)
class EoRaSSettings:
    """``weights``: EoRaS safetensors (None = the shipped ones); ``intrinsics``: per stream id a pixel K
    (3×3, rows) of the camera; streams without one get K from ``hfov_deg`` (horizontal field of view, principal
    point at the centre); ``mask_threshold`` cuts the amodal probabilities; ``track_lost_frames``: a track unseen
    for this many frames of its stream loses its state; ``min_box_px``: smaller boxes are passed through."""

    weights: str | None = None
    intrinsics: Mapping[str, Sequence[Sequence[float]]] | tuple = ()
    hfov_deg: float = 65.0
    mask_threshold: float = 0.5
    track_lost_frames: int = 25
    min_box_px: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 < self.hfov_deg < 180.0:
            raise ConfigError(f"hfov_deg must be in (0, 180), got {self.hfov_deg}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ConfigError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if not isinstance(self.track_lost_frames, int) or self.track_lost_frames < 1:
            raise ConfigError(f"track_lost_frames must be an integer >= 1, got {self.track_lost_frames!r}")
        pairs = self.intrinsics.items() if isinstance(self.intrinsics, Mapping) else self.intrinsics
        frozen = []
        for stream, K in pairs:
            try:
                rows = tuple(tuple(float(v) for v in row) for row in K)
            except (TypeError, ValueError):
                rows = ()
            if len(rows) != 3 or any(len(r) != 3 for r in rows):
                raise ConfigError(f"intrinsics[{stream!r}] must be a 3x3 matrix, got {K!r}")
            frozen.append((str(stream), rows))
        object.__setattr__(self, "intrinsics", tuple(sorted(frozen)))  # hashable: pipelines share equal settings


class EoRaSStage(Stage):
    name = "eoras"
    needs = frozenset({"tracks", "masks"})
    fills = frozenset({"amodal_masks", "occlusion_levels"})
    input_spec = InputSpec()  # RGB in 0..1 at the frame's size (crops are cut from it with roi_align)
    shipped_weights = "eoras_tiny_synthetic.safetensors"

    def __init__(self, settings: EoRaSSettings | None = None, *, loaded: LoadedEoRaS | None = None) -> None:
        self.settings = settings or EoRaSSettings()
        self.loaded = loaded if loaded is not None else load_eoras(
            resolve_weights(self.settings.weights, self.shipped_weights))  # CheckpointError if missing or truncated
        self.config = self.loaded.config
        if self.config.bev_projection != "crop":
            raise ConfigError(f"eoras stage: weights with bev_projection {self.config.bev_projection!r} (converted "
                              f"official checkpoints) need Kubric-normalised K; this stage gives crop K")
        self._states: dict[str, dict[int, EoRaSTrackState]] = {}
        self._last_seen: dict[str, dict[int, int]] = {}

    def start(self, device: torch.device) -> None:
        super().start(device)
        self.loaded.model.to(device).eval()

    def image_intrinsics(self, stream_id: str, width: int, height: int) -> torch.Tensor:
        K = dict(self.settings.intrinsics).get(stream_id)
        if K is not None:
            return torch.as_tensor(K, dtype=torch.float32)
        return intrinsics_from_fov(width, height, self.settings.hfov_deg)

    def track_state(self, stream_id: str, track_id: int) -> EoRaSTrackState | None:
        """The carried state of a track (None when it has none)."""
        return self._states.get(stream_id, {}).get(track_id)

    @torch.inference_mode()
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        images = batch.input(self.input_spec).images
        size = self.config.input_size
        # (frame, object) pairs to complete, in frame order; round r holds each track's r-th frame of this batch
        rounds: list[list[tuple[int, int]]] = []
        seen_in_batch: dict[tuple[str, int], int] = {}
        for i, objects in enumerate(batch.objects):
            stream = batch.frames[i].stream_id
            for j, obj in enumerate(objects):
                x1, y1, x2, y2 = obj.box_xyxy
                if obj.track_id is None or obj.mask is None or min(x2 - x1, y2 - y1) < self.settings.min_box_px:
                    continue
                key = (stream, int(obj.track_id))
                r = seen_in_batch.get(key, 0)
                seen_in_batch[key] = r + 1
                if r == len(rounds):
                    rounds.append([])
                rounds[r].append((i, j))
        out = [list(objects) for objects in batch.objects]
        for pairs in rounds:
            crops, Ks, boxes_all, states = [], [], [], []
            for i, j in pairs:
                frame, obj = batch.frames[i], batch.objects[i][j]
                box = enlarged_crop_boxes(torch.tensor([obj.box_xyxy]), frame.width, frame.height,
                                          self.config.enlarge)
                image = images[i].float()
                crops.append(crop_images(image[None], torch.zeros(1), box.to(image.device), size))
                Ks.append(crop_intrinsics(self.image_intrinsics(frame.stream_id, frame.width, frame.height),
                                          box, size))
                boxes_all.append(box)
                states.append(self.track_state(frame.stream_id, int(obj.track_id)))
            outputs, new_states = self.loaded.model.step(states, torch.cat(crops).to(self.device),
                                                         torch.cat(Ks).to(self.device), mode="causal")
            for (i, j), output, state, box in zip(pairs, outputs, new_states, boxes_all):
                frame, obj = batch.frames[i], batch.objects[i][j]
                self._states.setdefault(frame.stream_id, {})[int(obj.track_id)] = state
                self._last_seen.setdefault(frame.stream_id, {})[int(obj.track_id)] = frame.index
                probs = torch.sigmoid(output.amodal_logits)[None]
                amodal = paste_masks(probs, box.to(probs.device), frame.width, frame.height,
                                     self.settings.mask_threshold)[0].cpu().numpy()
                visible = obj.mask.decode()
                amodal |= visible
                level = 1.0 - float(visible.sum()) / max(float(amodal.sum()), 1.0)
                out[i][j] = dataclasses.replace(obj, amodal_mask=encode_masks(amodal[None])[0],
                                                occlusion_level=level)
        self._drop_lost_tracks(batch)
        return [tuple(objects) for objects in out]

    def _drop_lost_tracks(self, batch: StageBatch) -> None:
        newest: dict[str, int] = {}
        for f in batch.frames:
            newest[f.stream_id] = max(newest.get(f.stream_id, -1), f.index)
        for stream_id, index in newest.items():
            seen = self._last_seen.get(stream_id, {})
            for track_id in [t for t, last in seen.items() if index - last >= self.settings.track_lost_frames]:
                del seen[track_id]
                self._states.get(stream_id, {}).pop(track_id, None)

    def on_source_eos(self, stream_id: str) -> None:
        self._states.pop(stream_id, None)
        self._last_seen.pop(stream_id, None)

    def stop(self) -> None:
        self._states.clear()
        self._last_seen.clear()
        super().stop()
