"""``eoras``: amodal completion of tracked objects (EoRaS), a secondary stage after a tracking stage (``ovis``).

Per micro-batch, every tracked object with a visible mask is cropped from its frame (``enlarge`` × its box, the
model's input size, ``roi_align``) with the crop's intrinsics — the source's ``camera:`` setting (K or a field of
view), else the stream's K from these settings, else the ``hfov_deg`` fallback — and all tracks of all streams run
through one batched step of the model, each track
carrying its own slots from frame to frame.  A track that appears twice in a micro-batch (two frames of its stream)
is stepped twice, in frame order.  The amodal probabilities are pasted back into frame coordinates and thresholded;
the published ``amodal_mask`` is that mask united with the object's visible mask (what is seen is part of the
object), and ``occlusion_level = 1 − |visible| / |amodal|``.

Modes (``mode``):
  * ``causal`` (default): forward in time only; each object is completed in its own frame's result.
  * ``windowed``: each track's frame t is completed once its frames up to t + W − 1 arrived (a backward pass over
    the window), so the stage lags W − 1 frames of the track: it runs detached and publishes each completion as an
    amendment of frame t; a lost track and the end of a stream complete what they still hold.
  Measured against the offline whole-clip pass on held-out videos (README, EoRaS table), the windowed mode gained
  nothing over causal with the shipped weights, so causal — no lag — is the default.

Per-track state (slots) is dropped when the track has not been seen for ``track_lost_frames`` frames of its stream
(the tracker ended it) and, for every track of a stream, at its end of stream.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from amodal.engine.postprocess import encode_masks
from amodal.engine.stage import FrameRef, InputSpec, LateResult, RatePolicy, Stage, StageBatch
from amodal.engine.stages.common import resolve_weights
from amodal.errors import ConfigError
from amodal.models.eoras import (
    EoRaSFrameOutput,
    EoRaSTrackState,
    LoadedEoRaS,
    crop_images,
    crop_intrinsics,
    enlarged_crop_boxes,
    intrinsics_from_fov,
    load_eoras,
    paste_masks,
)
from amodal.types import CameraIntrinsics, ObjectResult


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
    mode: Literal["causal", "windowed"] = "causal"
    window: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("causal", "windowed"):
            raise ConfigError(f"mode must be causal or windowed (offline needs the whole clip), got {self.mode!r}")
        if not isinstance(self.window, int) or self.window < 2:
            raise ConfigError(f"window must be an integer >= 2 (frames), got {self.window!r}")
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


@dataclass(frozen=True, eq=False)
class _Held:
    """An object of an earlier frame waiting for its track's window (windowed mode): the frame, the objects it had
    when the stage received it, the object's index there, and its crop box float[1, 4]."""

    frame: FrameRef
    objects: tuple[ObjectResult, ...]
    index: int
    box: torch.Tensor


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
        self.windowed = self.settings.mode == "windowed"
        if self.windowed:
            self.lag_frames = self.settings.window - 1
            self.default_rate = RatePolicy(detached=True)
        self._states: dict[str, dict[int, EoRaSTrackState]] = {}
        self._last_seen: dict[str, dict[int, int]] = {}
        self._held: dict[str, dict[int, collections.deque[_Held]]] = {}
        # (stream, frame index) → (frame, its objects when received, completed objects by index), oldest first
        self._completed: dict[tuple[str, int], tuple[FrameRef, tuple[ObjectResult, ...], dict[int, ObjectResult]]] = {}

    def start(self, device: torch.device) -> None:
        super().start(device)
        self.loaded.model.to(device).eval()

    def image_intrinsics(self, stream_id: str, width: int, height: int,
                         camera: CameraIntrinsics | None = None) -> torch.Tensor:
        """float32[3, 3] pixel K of a stream: its source's ``camera.K``, else this stage's ``intrinsics`` for the
        stream, else from a field of view (the source's ``camera.hfov_deg``, else this stage's ``hfov_deg``)."""
        if camera is not None and camera.K is not None:
            return torch.as_tensor(camera.K, dtype=torch.float32)
        K = dict(self.settings.intrinsics).get(stream_id)
        if K is not None:
            return torch.as_tensor(K, dtype=torch.float32)
        hfov = camera.hfov_deg if camera is not None else self.settings.hfov_deg
        return intrinsics_from_fov(width, height, hfov)

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
        mode, window = ("windowed", self.settings.window) if self.windowed else ("causal", None)
        for pairs in rounds:
            crops, Ks, boxes_all, states = [], [], [], []
            for i, j in pairs:
                frame, obj = batch.frames[i], batch.objects[i][j]
                box = enlarged_crop_boxes(torch.tensor([obj.box_xyxy]), frame.width, frame.height,
                                          self.config.enlarge)
                image = images[i].float()
                crops.append(crop_images(image[None], torch.zeros(1), box.to(image.device), size))
                K = self.image_intrinsics(frame.stream_id, frame.width, frame.height,
                                          batch.cameras.get(frame.stream_id))
                Ks.append(crop_intrinsics(K, box, size))
                boxes_all.append(box)
                states.append(self.track_state(frame.stream_id, int(obj.track_id)))
            outputs, new_states = self.loaded.model.step(states, torch.cat(crops).to(self.device),
                                                         torch.cat(Ks).to(self.device), mode=mode, window=window)
            for (i, j), output, state, box in zip(pairs, outputs, new_states, boxes_all):
                frame, obj = batch.frames[i], batch.objects[i][j]
                track = int(obj.track_id)
                self._states.setdefault(frame.stream_id, {})[track] = state
                self._last_seen.setdefault(frame.stream_id, {})[track] = frame.index
                if not self.windowed:
                    out[i][j] = self._complete(obj, output, box, frame.width, frame.height)
                    continue
                held = self._held.setdefault(frame.stream_id, {}).setdefault(track, collections.deque())
                held.append(_Held(FrameRef.of(frame), batch.objects[i], j, box))
                if output is not None:
                    self._complete_held(frame.stream_id, track, [output])
        self._drop_lost_tracks(batch)
        return [tuple(objects) for objects in out]

    def _complete(self, obj: ObjectResult, output: EoRaSFrameOutput, box: torch.Tensor, width: int,
                  height: int) -> ObjectResult:
        """``obj`` with its amodal mask (the model's, pasted back and united with the visible mask) and level."""
        probs = torch.sigmoid(output.amodal_logits)[None]
        amodal = paste_masks(probs, box.to(probs.device), width, height, self.settings.mask_threshold)[0].cpu().numpy()
        visible = obj.mask.decode()
        amodal |= visible
        level = 1.0 - float(visible.sum()) / max(float(amodal.sum()), 1.0)
        return dataclasses.replace(obj, amodal_mask=encode_masks(amodal[None])[0], occlusion_level=level)

    def _complete_held(self, stream_id: str, track: int, outputs: Sequence[EoRaSFrameOutput]) -> None:
        """Complete the oldest held frames of a track, one per output (the model emits them in frame order)."""
        held = self._held[stream_id][track]
        for output in outputs:
            h = held.popleft()
            obj = h.objects[h.index]
            entry = self._completed.setdefault((stream_id, h.frame.index), (h.frame, h.objects, {}))
            entry[2][h.index] = self._complete(obj, output, h.box, h.frame.width, h.frame.height)

    def _end_track(self, stream_id: str, track: int) -> None:
        """Forget a track; in windowed mode first complete the frames it still holds."""
        state = self._states.get(stream_id, {}).pop(track, None)
        self._last_seen.get(stream_id, {}).pop(track, None)
        held = self._held.get(stream_id, {}).pop(track, None)
        if held:
            self._held[stream_id][track] = held
            self._complete_held(stream_id, track, self.loaded.model.flush(state))
            del self._held[stream_id][track]

    def _drop_lost_tracks(self, batch: StageBatch) -> None:
        newest: dict[str, int] = {}
        for f in batch.frames:
            newest[f.stream_id] = max(newest.get(f.stream_id, -1), f.index)
        for stream_id, index in newest.items():
            seen = self._last_seen.get(stream_id, {})
            for track_id in [t for t, last in seen.items() if index - last >= self.settings.track_lost_frames]:
                self._end_track(stream_id, track_id)

    @torch.inference_mode()
    def on_source_eos(self, stream_id: str) -> None:
        for track in list(self._states.get(stream_id, {})):
            self._end_track(stream_id, track)
        self._states.pop(stream_id, None)
        self._last_seen.pop(stream_id, None)
        self._held.pop(stream_id, None)

    def take_late(self) -> list[LateResult]:
        late = []
        for frame, before, done in self._completed.values():
            after = tuple(done.get(k, obj) for k, obj in enumerate(before))
            late.append(LateResult(frame, before, after))
        self._completed.clear()
        late.sort(key=lambda r: (r.frame.stream_id, r.frame.index))
        return late

    def stop(self) -> None:
        self._states.clear()
        self._last_seen.clear()
        self._held.clear()
        self._completed.clear()
        super().stop()
