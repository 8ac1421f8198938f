"""OVIS / YouTube-VIS annotations: reading, mask decoding, frame and clip iteration, occlusion buckets.

Format (one JSON per split)::

    {"videos": [{"id", "width", "height", "length", "file_names": [T paths relative to the image root]}],
     "categories": [{"id", "name"}],
     "annotations": [{"id", "video_id", "category_id", "iscrowd",
                      "segmentations": [T × (RLE | polygon list | None)], "areas": [T], "bboxes": [T × ([x,y,w,h] | None)],
                      "occlusion": [T × ("no_occlusion" | "slight_occlusion" | "severe_occlusion" | None)]  (OVIS only),
                      "amodal_segmentations", "occlusion_level"  (our synthetic sets only)}]}

Occlusion labels from an exact occlusion level ``1 − visible/amodal`` (our synthetic sets): below
``NO_OCCLUSION_MAX_LEVEL`` (0.01) → no_occlusion, up to ``SLIGHT_OCCLUSION_MAX_LEVEL`` (0.5) → slight_occlusion,
above → severe_occlusion (OVIS annotators' "slight" and "severe" split the hidden fraction at one half).
Occlusion buckets (OVIS): each labelled frame scores no 0 / slight 0.25 / severe 0.75; a score is the mean of
the top ⌈n/2⌉ of the n scores; light ≤ 0.25 < medium ≤ 0.5 < heavy. The OVIS evaluation (and
``amodal.training.evaluation.vis``) scores each GT *track* this way; ``video_bucket`` applies the same rule to
all labelled object-frames of a video.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amodal.errors import ConfigError

OCCLUSION_LABELS: tuple[str, ...] = ("no_occlusion", "slight_occlusion", "severe_occlusion")
OCCLUSION_LABEL_SCORE: dict[str, float] = {"no_occlusion": 0.0, "slight_occlusion": 0.25, "severe_occlusion": 0.75}
NO_OCCLUSION_MAX_LEVEL = 0.01
SLIGHT_OCCLUSION_MAX_LEVEL = 0.5
BUCKETS: tuple[str, ...] = ("light", "medium", "heavy")


def occlusion_label(level: float) -> str:
    """OVIS per-frame label of an exact occlusion level in [0, 1]."""
    if level < NO_OCCLUSION_MAX_LEVEL:
        return "no_occlusion"
    if level <= SLIGHT_OCCLUSION_MAX_LEVEL:
        return "slight_occlusion"
    return "severe_occlusion"


def occlusion_score(labels: list[str]) -> float:
    """OVIS occlusion score of a set of labels: mean of the top ⌈n/2⌉ label scores (0 when there are none)."""
    scores = sorted((OCCLUSION_LABEL_SCORE[label] for label in labels), reverse=True)
    if not scores:
        return 0.0
    top = scores[: math.ceil(len(scores) / 2)]
    return float(sum(top) / len(top))


def occlusion_bucket(score: float) -> str:
    """light ≤ 0.25 < medium ≤ 0.5 < heavy."""
    if score <= 0.25:
        return "light"
    if score <= 0.5:
        return "medium"
    return "heavy"


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray | None:
    """bool[H, W] of an RLE (compressed str/bytes or uncompressed list counts) or polygon list; None stays None."""
    from pycocotools import mask as mask_utils

    if seg is None:
        return None
    if isinstance(seg, list):
        if not seg:
            return np.zeros((height, width), bool)
        rles = mask_utils.frPyObjects(seg, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    if isinstance(seg, dict) and "counts" in seg:
        size = seg.get("size", [height, width])
        if list(size) != [height, width]:
            raise ValueError(f"RLE size {list(size)} != video size [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return mask_utils.decode(rle).astype(bool)
    raise ValueError(f"unknown segmentation type {type(seg).__name__}")


@dataclass(frozen=True, slots=True)
class OvisVideo:
    id: int
    width: int
    height: int
    file_names: tuple[str, ...]
    name: str

    @property
    def length(self) -> int:
        return len(self.file_names)


@dataclass(frozen=True, slots=True)
class OvisTrack:
    """One annotated instance over a whole video; per-frame lists have the video's length."""

    id: int
    video_id: int
    category_id: int
    iscrowd: int
    segmentations: tuple[Any, ...]
    areas: tuple[float | None, ...]
    bboxes_xywh: tuple[list[float] | None, ...]
    occlusion: tuple[str | None, ...] | None
    occlusion_level: tuple[float | None, ...] | None
    amodal_segmentations: tuple[Any, ...] | None

    def present(self, t: int) -> bool:
        return self.segmentations[t] is not None

    def mask(self, t: int, height: int, width: int) -> np.ndarray | None:
        """Visible mask bool[H, W] at frame t, None where the instance is not annotated."""
        return decode_segmentation(self.segmentations[t], height, width)

    def amodal_mask(self, t: int, height: int, width: int) -> np.ndarray | None:
        if self.amodal_segmentations is None:
            return None
        return decode_segmentation(self.amodal_segmentations[t], height, width)


@dataclass(frozen=True, slots=True)
class OvisInstance:
    """One instance in one frame, masks decoded."""

    track_id: int
    category_id: int
    mask: np.ndarray  # bool[H, W] visible
    box_xyxy: tuple[float, float, float, float]
    occlusion: str | None
    occlusion_level: float | None
    amodal_mask: np.ndarray | None  # bool[H, W] when the set has amodal ground truth


@dataclass(frozen=True, slots=True)
class OvisFrame:
    video: OvisVideo
    frame_index: int
    image: np.ndarray  # uint8[H, W, 3] RGB
    instances: tuple[OvisInstance, ...]


@dataclass(frozen=True, slots=True)
class OvisClip:
    """``len(frames)`` consecutive frames plus one reference frame within ``max_ref_gap`` of the last one."""

    video: OvisVideo
    frames: tuple[OvisFrame, ...]
    reference: OvisFrame


def _tuple_or_none(value: Any) -> tuple | None:
    return None if value is None else tuple(value)


class OvisDataset:
    """An OVIS / YouTube-VIS annotation file and its frames (``image_root``/file_name)."""

    def __init__(self, ann_file: Path, image_root: Path | None = None) -> None:
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root) if image_root is not None else self.ann_file.parent.parent / "JPEGImages"
        if not self.ann_file.is_file():
            raise ConfigError(f"{self.ann_file}: annotation file not found")
        try:
            data = json.loads(self.ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.ann_file}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{self.ann_file}: top level must be an object, got {type(data).__name__}")
        for key in ("videos", "categories"):
            if not isinstance(data.get(key), list):
                raise ConfigError(f"{self.ann_file}: missing list {key!r}")
        self.categories: dict[int, str] = {}
        for cat in data["categories"]:
            try:
                self.categories[int(cat["id"])] = str(cat["name"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{self.ann_file}: bad category entry {cat!r}") from exc
        self.videos: dict[int, OvisVideo] = {}
        for v in data["videos"]:
            self.videos[self._video_id(v)] = self._parse_video(v)
        self._tracks: dict[int, list[OvisTrack]] = {vid: [] for vid in self.videos}
        for a in data.get("annotations") or []:
            track = self._parse_track(a)
            self._tracks[track.video_id].append(track)

    def _video_id(self, v: Any) -> int:
        try:
            return int(v["id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.ann_file}: video entry without an integer id: {str(v)[:80]}") from exc

    def _parse_video(self, v: dict) -> OvisVideo:
        vid = self._video_id(v)
        names = v.get("file_names")
        if not isinstance(names, list) or not names:
            raise ConfigError(f"{self.ann_file}: video {vid} has no file_names")
        length = int(v.get("length", len(names)))
        if length != len(names):
            raise ConfigError(f"{self.ann_file}: video {vid} length {length} != {len(names)} file_names")
        try:
            width, height = int(v["width"]), int(v["height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.ann_file}: video {vid} lacks width/height") from exc
        name = str(v.get("name", Path(names[0]).parent.name or vid))
        return OvisVideo(vid, width, height, tuple(str(n) for n in names), name)

    def _parse_track(self, a: dict) -> OvisTrack:
        try:
            aid, vid, cid = int(a["id"]), int(a["video_id"]), int(a["category_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.ann_file}: annotation lacks id/video_id/category_id: {str(a)[:80]}") from exc
        if vid not in self.videos:
            raise ConfigError(f"{self.ann_file}: annotation {aid} refers to unknown video {vid}")
        if cid not in self.categories:
            raise ConfigError(f"{self.ann_file}: annotation {aid} refers to unknown category {cid}")
        length = self.videos[vid].length
        segs = a.get("segmentations")
        if not isinstance(segs, list):
            raise ConfigError(f"{self.ann_file}: annotation {aid} (video {vid}) has no segmentations list")
        for key in ("segmentations", "areas", "bboxes", "occlusion", "occlusion_level", "amodal_segmentations"):
            value = a.get(key)
            if value is not None and len(value) != length:
                raise ConfigError(f"{self.ann_file}: annotation {aid} {key} has {len(value)} entries, "
                                  f"video {vid} has {length} frames")
        for label in a.get("occlusion") or []:
            if label is not None and label not in OCCLUSION_LABEL_SCORE:
                raise ConfigError(f"{self.ann_file}: annotation {aid} has unknown occlusion label {label!r}")
        return OvisTrack(
            id=aid, video_id=vid, category_id=cid, iscrowd=int(a.get("iscrowd", 0)),
            segmentations=tuple(segs),
            areas=tuple(a.get("areas") or [None] * length),
            bboxes_xywh=tuple(a.get("bboxes") or [None] * length),
            occlusion=_tuple_or_none(a.get("occlusion")),
            occlusion_level=_tuple_or_none(a.get("occlusion_level")),
            amodal_segmentations=_tuple_or_none(a.get("amodal_segmentations")),
        )

    # ------------------------------------------------------------------ access

    def tracks(self, video_id: int) -> list[OvisTrack]:
        if video_id not in self._tracks:
            raise ConfigError(f"{self.ann_file}: no video {video_id}")
        return list(self._tracks[video_id])

    def image_path(self, video: OvisVideo, t: int) -> Path:
        return self.image_root / video.file_names[t]

    def load_image(self, video: OvisVideo, t: int) -> np.ndarray:
        """uint8[H, W, 3] RGB of frame t."""
        from PIL import Image

        path = self.image_path(video, t)
        if not path.is_file():
            raise ConfigError(f"{path}: frame {t} of video {video.id} ({video.name}) not found")
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        if rgb.shape[:2] != (video.height, video.width):
            raise ConfigError(f"{path}: frame is {rgb.shape[1]}x{rgb.shape[0]}, "
                              f"video {video.id} says {video.width}x{video.height}")
        return rgb

    def instances(self, video: OvisVideo, t: int) -> tuple[OvisInstance, ...]:
        """Decoded instances annotated in frame t (visible mask present)."""
        out = []
        for track in self._tracks[video.id]:
            try:
                mask = track.mask(t, video.height, video.width)
                amodal = track.amodal_mask(t, video.height, video.width)
            except ValueError as exc:
                raise ConfigError(f"{self.ann_file}: annotation {track.id} frame {t}: {exc}") from exc
            if mask is None:
                continue
            box = track.bboxes_xywh[t]
            if box is None:
                ys, xs = np.nonzero(mask)
                box = [0.0, 0.0, 0.0, 0.0] if xs.size == 0 else [
                    float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
            x, y, w, h = (float(b) for b in box)
            out.append(OvisInstance(
                track_id=track.id, category_id=track.category_id, mask=mask, box_xyxy=(x, y, x + w, y + h),
                occlusion=None if track.occlusion is None else track.occlusion[t],
                occlusion_level=None if track.occlusion_level is None else track.occlusion_level[t],
                amodal_mask=amodal))
        return tuple(out)

    def frame(self, video: OvisVideo, t: int) -> OvisFrame:
        if not 0 <= t < video.length:
            raise ConfigError(f"video {video.id} has {video.length} frames; asked for frame {t}")
        return OvisFrame(video, t, self.load_image(video, t), self.instances(video, t))

    def frames(self) -> Iterator[OvisFrame]:
        """Every frame of every video, in order."""
        for video in self.videos.values():
            for t in range(video.length):
                yield self.frame(video, t)

    def clips(self, clip_len: int = 1, max_ref_gap: int = 5, stride: int = 1, seed: int = 0) -> Iterator[OvisClip]:
        """Clips of ``clip_len`` consecutive frames, each with a reference frame outside the clip whose distance
        to the clip's last frame is ≤ ``max_ref_gap`` (preferring annotated frames, as CMaskTrack R-CNN samples)."""
        if clip_len < 1 or max_ref_gap < 1 or stride < 1:
            raise ConfigError(f"clip_len, max_ref_gap and stride must be ≥ 1, got {clip_len}, {max_ref_gap}, {stride}")
        rng = np.random.default_rng(seed)
        for video in self.videos.values():
            if video.length < clip_len + 1:
                continue
            annotated = {t for tr in self._tracks[video.id] for t in range(video.length) if tr.present(t)}
            for start in range(0, video.length - clip_len + 1, stride):
                last = start + clip_len - 1
                window = [t for t in range(max(0, last - max_ref_gap), min(video.length, last + max_ref_gap + 1))
                          if not start <= t <= last]
                if not window:
                    continue
                preferred = [t for t in window if t in annotated] or window
                ref = int(preferred[int(rng.integers(len(preferred)))])
                frames = tuple(self.frame(video, t) for t in range(start, last + 1))
                yield OvisClip(video, frames, self.frame(video, ref))

    def video_bucket(self, video_id: int) -> tuple[float, str]:
        """(occlusion score, bucket) of a video over all its labelled object-frames."""
        labels = [label for tr in self.tracks(video_id) for label in (tr.occlusion or ()) if label is not None]
        score = occlusion_score(labels)
        return score, occlusion_bucket(score)

    @staticmethod
    def track_bucket(track: OvisTrack) -> tuple[float, str] | None:
        """(occlusion score, bucket) of one track as the OVIS evaluation computes it; None without labels."""
        labels = [label for label in (track.occlusion or ()) if label is not None]
        if not labels:
            return None
        score = occlusion_score(labels)
        return score, occlusion_bucket(score)
