"""``reid``: person re-identification, a secondary stage on the person tracks of an earlier stage (``ovis``).

Per micro-batch: every tracked person whose box is tall enough is cropped from its frame with ``roi_align`` straight
to the MBF input size, embedded in one batch (MBF, L2-normalised), and handed to the gallery with a quality weight
``score · (1 − occlusion level)`` so that occluded frames weigh less in the track's aggregate (after ``eoras`` the
level is ``1 − |visible| / |amodal|``).  The gallery answers the track's global identity (None until it has been
seen ``min_observations`` times), consistently across streams.  Person objects get the embedding (float16) and
``global_id``; other objects pass through unchanged.

Tracks not seen for ``track_lost_frames`` frames, and every track of an ended stream, are ended in the gallery:
their identity becomes free for other tracks of that stream, so a person whose track broke (a long occlusion, a
crossing) gets the old identity back on the new track.  The gallery is restored from ``gallery_path`` at start,
autosaved, and saved once more at stop; ``query_endpoint`` serves top-k identity queries by embedding or image crop
(``docs/gallery.md``).
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from amodal.engine.gallery import GalleryConfig, QueryLimits
from amodal.engine.stage import InputSpec, Stage, StageBatch
from amodal.engine.stages.common import load_once, resolve_weights
from amodal.errors import ConfigError
from amodal.models.mbf import LoadedMBF, load_mbf
from amodal.types import ObjectResult

DEFAULT_MATCH_THRESHOLD = 0.6  # when neither the settings nor the weights' evaluation give one
BOX_MARGIN = 0.05  # each side of a person box grows by this fraction of its height before cropping
MIN_QUALITY = 0.05  # a fully occluded frame still counts a little, so a track always accumulates


@dataclass(frozen=True)
class ReidSettings:
    """``weights``: MBF safetensors (None = the shipped ones); ``gallery_path``: where the gallery is restored from
    and saved to (None = in memory only); ``save_interval_s``: autosave period (0 = only at shutdown);
    ``match_threshold``: cosine similarity a new track needs to join a known identity (None = the weights' measured
    equal-error threshold of cross-camera same-person pairs, else 0.6); ``min_observations``: frames a track is seen
    before it gets an identity; ``query_endpoint``: ZeroMQ endpoint answering gallery queries (None = none);
    ``min_box_height_px``: shorter person boxes are not embedded; ``track_lost_frames``: a person track not seen for
    this many frames of its stream is ended in the gallery, so its identity can go to a new track of that stream;
    ``query_limits``: the query endpoint's request, image and rate limits (docs/gallery.md); ``gallery``:
    ``ray://NAME`` = use the cluster's gallery service of that name (one gallery for every node, created by the
    first stage that asks, with this stage's settings; ``engine/gallery/service.py``), None = a gallery of its own."""

    weights: str | None = None
    gallery_path: str | None = None
    save_interval_s: float = 10.0
    match_threshold: float | None = None
    min_observations: int = 3
    query_endpoint: str | None = None
    person_class: str = "person"
    min_box_height_px: float = 16.0
    track_lost_frames: int = 25
    query_limits: QueryLimits = field(default_factory=QueryLimits)
    gallery: str | None = None

    def __post_init__(self) -> None:
        if self.gallery is not None:
            from amodal.engine.gallery.service import service_name

            service_name(self.gallery)  # ConfigError unless ray://NAME
        if self.match_threshold is not None and not -1.0 <= self.match_threshold <= 1.0:
            raise ConfigError(f"match_threshold is a cosine similarity in [-1, 1], got {self.match_threshold}")
        if self.min_observations < 1:
            raise ConfigError(f"min_observations must be >= 1, got {self.min_observations}")
        if self.save_interval_s < 0:
            raise ConfigError(f"save_interval_s must be >= 0, got {self.save_interval_s}")
        if self.track_lost_frames < 1:
            raise ConfigError(f"track_lost_frames must be >= 1, got {self.track_lost_frames}")
        if self.min_box_height_px < 0:
            raise ConfigError(f"min_box_height_px must be >= 0, got {self.min_box_height_px}")


def crop_boxes(image: torch.Tensor, boxes_xyxy: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Crops float[N, 3, h, w] of ``image`` float[3, H, W] at ``boxes_xyxy`` float[N, 4] (pixels), each grown
    by ``BOX_MARGIN`` of its height and resampled bilinearly (2×2 samples per output pixel)."""
    if boxes_xyxy.numel() == 0:
        return image.new_zeros((0, 3, *size_hw))
    margin = BOX_MARGIN * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    grown = torch.stack([boxes_xyxy[:, 0] - margin, boxes_xyxy[:, 1] - margin,
                         boxes_xyxy[:, 2] + margin, boxes_xyxy[:, 3] + margin], dim=1)
    return roi_align(image[None], [grown.to(image.dtype)], output_size=size_hw, spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


def quality_of(obj: ObjectResult) -> float:
    """Aggregation weight of one sighting: detection score times the visible fraction."""
    visible = 1.0 - (obj.occlusion_level or 0.0)
    return float(min(1.0, max(MIN_QUALITY, obj.score * visible)))


class ReidStage(Stage):
    name = "reid"
    needs = frozenset({"person_tracks"})
    fills = frozenset({"embeddings", "global_ids"})
    input_spec = InputSpec()  # RGB in 0..1 at the frame's size (crops are cut from it with roi_align)
    shipped_weights = "mbf_tiny_synthetic.safetensors"

    def __init__(self, settings: ReidSettings | None = None, *, loaded: LoadedMBF | None = None, gallery=None) -> None:
        """``loaded`` defaults to the MBF weights of ``settings.weights`` (or the shipped ones); ``gallery`` to one
        restored from ``settings.gallery_path``."""
        self.settings = settings or ReidSettings()
        self.loaded = loaded if loaded is not None else load_once(
            load_mbf, resolve_weights(self.settings.weights, self.shipped_weights))  # CheckpointError if missing or truncated
        self.input_hw = (self.loaded.config.input_height, self.loaded.config.input_width)
        self._gallery = gallery
        self._query_server = None
        self._model_lock = threading.Lock()  # the query thread embeds image crops with the same model
        self._last_seen: dict[str, dict[int, int]] = {}  # stream → track id → last frame index seen
        self._security = None

    @property
    def gallery(self):
        return self._gallery

    @property
    def match_threshold(self) -> float:
        """The configured threshold, else the equal-error threshold the weights were evaluated with."""
        if self.settings.match_threshold is not None:
            return self.settings.match_threshold
        evaluation = self.loaded.metadata.get("evaluation") or {}
        return float(evaluation.get("match_threshold_eer", DEFAULT_MATCH_THRESHOLD))

    def use_security(self, settings) -> None:
        self._security = settings

    def start(self, device: torch.device) -> None:
        super().start(device)
        self.loaded.model.to(device).eval()
        s = self.settings
        if self._gallery is None:
            from amodal.engine.gallery import Gallery

            gallery_config = GalleryConfig(
                dim=self.loaded.model.embedding_dim, match_threshold=self.match_threshold,
                min_observations=s.min_observations, persist_path=s.gallery_path,
                save_interval_s=s.save_interval_s if s.gallery_path else 0.0)
            if s.gallery is not None:
                from amodal.engine.gallery.service import connect_gallery

                self._gallery = connect_gallery(s.gallery, gallery_config)
            else:
                self._gallery = Gallery.load(s.gallery_path, gallery_config) if s.gallery_path else Gallery(gallery_config)
        if s.query_endpoint and self._query_server is None:
            from amodal.engine.gallery import QueryServer

            self._query_server = QueryServer(self._gallery, s.query_endpoint, embed_image=self.embed_image,
                                             limits=s.query_limits, security=self._security).start()

    # ------------------------------------------------------------------------------------ embedding
    def embed_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """float32[N, D] L2-normalised embeddings of crops float[N, 3, h, w] RGB in [0, 1] at the model input size."""
        with self._model_lock:
            return self.loaded.model.embed(crops.to(self.device))

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """float32[D] of one person crop uint8[H, W, 3] RGB (the query endpoint's embedder)."""
        tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).to(self.device).permute(2, 0, 1).float().div_(255.0)
        resized = F.interpolate(tensor[None], size=self.input_hw, mode="bilinear", align_corners=False,
                                antialias=True)
        return self.embed_crops(resized)[0].cpu().numpy()

    # ---------------------------------------------------------------------------------------- frames
    @torch.inference_mode()
    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        images = batch.input(self.input_spec).images
        crops, owners = [], []  # owners: (frame index, object index)
        for i, objects in enumerate(batch.objects):
            persons = [j for j, obj in enumerate(objects) if self._is_person(obj)]
            if not persons:
                continue
            boxes = torch.tensor([objects[j].box_xyxy for j in persons], dtype=torch.float32, device=images[i].device)
            crops.append(crop_boxes(images[i], boxes, self.input_hw))
            owners.extend((i, j) for j in persons)
        embeddings = self.embed_crops(torch.cat(crops)).cpu().numpy() if crops else np.zeros((0, 0), np.float32)
        out = [list(objects) for objects in batch.objects]
        for (i, j), embedding in zip(owners, embeddings):
            frame, obj = batch.frames[i], batch.objects[i][j]
            global_id = self._gallery.update_track(frame.stream_id, int(obj.track_id), embedding, quality_of(obj),
                                                   frame.capture_time_ns, obj.box_xyxy)
            self._last_seen.setdefault(frame.stream_id, {})[int(obj.track_id)] = frame.index
            out[i][j] = dataclasses.replace(obj, embedding=embedding.astype(np.float16), global_id=global_id)
        self._end_stale_tracks(batch)
        return [tuple(objects) for objects in out]

    def _is_person(self, obj: ObjectResult) -> bool:
        x1, y1, x2, y2 = obj.box_xyxy
        return (obj.class_name == self.settings.person_class and obj.track_id is not None
                and y2 - y1 >= self.settings.min_box_height_px and x2 > x1)

    def _end_stale_tracks(self, batch: StageBatch) -> None:
        newest: dict[str, int] = {}
        for f in batch.frames:
            newest[f.stream_id] = max(newest.get(f.stream_id, -1), f.index)
        for stream_id, index in newest.items():
            seen = self._last_seen.get(stream_id, {})
            lost = self.settings.track_lost_frames
            for track_id in [t for t, last in seen.items() if index - last > lost]:
                del seen[track_id]
                self._gallery.end_track(stream_id, track_id)

    # ------------------------------------------------------------------------------------- lifecycle
    def on_source_eos(self, stream_id: str) -> None:
        self._last_seen.pop(stream_id, None)
        if self._gallery is not None:
            self._gallery.end_stream(stream_id)

    def stop(self) -> None:
        if self._query_server is not None:
            self._query_server.close()
            self._query_server = None
        if self._gallery is not None:
            self._gallery.close(save=True)
        super().stop()
