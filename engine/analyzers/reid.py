"""``reid``: person re-identification as a secondary stage on the ``ovis`` analyzer's person tracks.

Per micro-batch: the primary stage (CMaskTrack R-CNN, ``ovis``) segments and tracks; every person object whose
box is tall enough is cropped from its frame with ``roi_align`` straight to the MBF input size, embedded in one
batch (MBF, L2-normalised), and handed to the gallery with a quality weight ``score · (1 − occlusion level)``
so that occluded frames weigh less in the track's aggregate.  The gallery answers the track's global identity
(None until it has been seen ``min_observations`` times), consistently across streams.  Published person
objects carry the embedding (float16) and ``global_id``; other objects pass through unchanged.

Tracks not seen for ``reid.track_lost_frames`` frames, and every track of an ended stream, are ended in the
gallery: their identity becomes free for other tracks of that stream, so a person whose track broke (a long
occlusion, a crossing) gets the old identity back on the new track.  The gallery is
restored from ``reid.gallery_path`` at start, autosaved, and saved once more at stop; ``reid.query_endpoint``
serves top-k identity queries by embedding or image crop (``docs/gallery.md``).
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from amodal.engine.analyzer import Analyzer
from amodal.engine.analyzers.ovis import OvisAnalyzer
from amodal.engine.config import AnalyzerConfig
from amodal.engine.gallery import GalleryConfig
from amodal.engine.preprocess import frame_to_rgb_tensor
from amodal.models.mbf import LoadedMBF, load_mbf
from amodal.types import Frame, FrameResult, ObjectResult

DEFAULT_MATCH_THRESHOLD = 0.6  # when neither the config nor the weights' evaluation give one
BOX_MARGIN = 0.05  # each side of a person box grows by this fraction of its height before cropping
MIN_QUALITY = 0.05  # a fully occluded frame still counts a little, so a track always accumulates


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


class ReidAnalyzer(Analyzer):
    name = "reid"

    def __init__(self, config: AnalyzerConfig, *, primary: Analyzer | None = None, loaded: LoadedMBF | None = None,
                 gallery=None) -> None:
        """``primary`` defaults to the ``ovis`` analyzer built from ``config``; ``loaded`` to the MBF weights of
        ``config.reid.weights`` (or the shipped ones); ``gallery`` to one restored from ``config.reid.gallery_path``."""
        reid = config.reid
        if loaded is None:
            weights = reid.weights
            if not weights:
                from amodal.pretrained import default_weights

                weights = str(default_weights("reid"))
                config = dataclasses.replace(config, reid=dataclasses.replace(reid, weights=weights))
            loaded = load_mbf(weights)  # CheckpointError if missing, truncated or not MBF
        self.config = config
        self.loaded = loaded
        self.primary = primary if primary is not None else OvisAnalyzer(dataclasses.replace(config, name="ovis"))
        self.input_hw = (loaded.config.input_height, loaded.config.input_width)
        self._gallery = gallery
        self._query_server = None
        self._model_lock = threading.Lock()  # the query thread embeds image crops with the same model
        self._last_seen: dict[str, dict[int, int]] = {}  # stream → track id → last frame index seen
        self.device = torch.device("cpu")

    @property
    def gallery(self):
        return self._gallery

    @property
    def match_threshold(self) -> float:
        """The configured threshold, else the equal-error threshold the weights were evaluated with."""
        if self.config.reid.match_threshold is not None:
            return self.config.reid.match_threshold
        evaluation = self.loaded.metadata.get("evaluation") or {}
        return float(evaluation.get("match_threshold_eer", DEFAULT_MATCH_THRESHOLD))

    def start(self, device: torch.device) -> None:
        super().start(device)
        self.primary.start(device)
        self.loaded.model.to(device).eval()
        reid = self.config.reid
        if self._gallery is None:
            from amodal.engine.gallery import Gallery

            gallery_config = GalleryConfig(
                dim=self.loaded.model.embedding_dim, match_threshold=self.match_threshold,
                min_observations=reid.min_observations, persist_path=reid.gallery_path,
                save_interval_s=reid.save_interval_s if reid.gallery_path else 0.0)
            self._gallery = (Gallery.load(reid.gallery_path, gallery_config) if reid.gallery_path
                             else Gallery(gallery_config))
        if reid.query_endpoint and self._query_server is None:
            from amodal.engine.gallery import QueryServer

            self._query_server = QueryServer(self._gallery, reid.query_endpoint, embed_image=self.embed_image).start()

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
    def process(self, frames: Sequence[Frame]) -> list[FrameResult]:
        if self._gallery is None:
            self.start(torch.device("cpu"))
        images = [frame_to_rgb_tensor(f, self.device) for f in frames]
        if isinstance(self.primary, OvisAnalyzer):  # converts each frame once for both stages
            primary = self.primary.process_images(frames, images)
        else:
            primary = self.primary.process(frames)
        crops, owners = [], []  # owners: (result index, object index)
        for i, result in enumerate(primary):
            persons = [j for j, obj in enumerate(result.objects) if self._is_person(obj)]
            if not persons:
                continue
            boxes = torch.tensor([result.objects[j].box_xyxy for j in persons], dtype=torch.float32, device=self.device)
            crops.append(crop_boxes(images[i], boxes, self.input_hw))
            owners.extend((i, j) for j in persons)
        embeddings = self.embed_crops(torch.cat(crops)).cpu().numpy() if crops else np.zeros((0, 0), np.float32)
        updated: dict[tuple[int, int], ObjectResult] = {}
        for (i, j), embedding in zip(owners, embeddings):
            frame, obj = frames[i], primary[i].objects[j]
            global_id = self._gallery.update_track(frame.stream_id, int(obj.track_id), embedding, quality_of(obj),
                                                   frame.capture_time_ns, obj.box_xyxy)
            self._last_seen.setdefault(frame.stream_id, {})[int(obj.track_id)] = frame.index
            updated[(i, j)] = dataclasses.replace(obj, embedding=embedding.astype(np.float16), global_id=global_id)
        results = []
        for i, result in enumerate(primary):
            objects = tuple(updated.get((i, j), obj) for j, obj in enumerate(result.objects))
            results.append(dataclasses.replace(result, objects=objects, analyzer=self.name))
        self._end_stale_tracks(frames)
        return results

    def _is_person(self, obj: ObjectResult) -> bool:
        x1, y1, x2, y2 = obj.box_xyxy
        return (obj.class_name == self.config.reid.person_class and obj.track_id is not None
                and y2 - y1 >= self.config.reid.min_box_height_px and x2 > x1)

    def _end_stale_tracks(self, frames: Sequence[Frame]) -> None:
        newest: dict[str, int] = {}
        for f in frames:
            newest[f.stream_id] = max(newest.get(f.stream_id, -1), f.index)
        for stream_id, index in newest.items():
            seen = self._last_seen.get(stream_id, {})
            lost = self.config.reid.track_lost_frames
            for track_id in [t for t, last in seen.items() if index - last > lost]:
                del seen[track_id]
                self._gallery.end_track(stream_id, track_id)

    # ------------------------------------------------------------------------------------- lifecycle
    def on_source_eos(self, stream_id: str) -> None:
        self.primary.on_source_eos(stream_id)
        self._last_seen.pop(stream_id, None)
        if self._gallery is not None:
            self._gallery.end_stream(stream_id)

    def stop(self) -> None:
        if self._query_server is not None:
            self._query_server.close()
            self._query_server = None
        if self._gallery is not None:
            self._gallery.close(save=True)
        self.primary.stop()
