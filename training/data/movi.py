"""The MOVi layout as EoRaS reads it: per (video, object) sequences of frames, visible and amodal masks, boxes, K.

Split folder::

    instance_list.npy                       "<video>-<obj>" strings (numpy unicode array; never unpickled)
    <video>/metadata.json                   Kubric metadata: metadata{num_frames,width,height}, camera{K,R,...},
                                            instances[{bboxes (normalised ymin,xmin,ymax,xmax), bbox_frames}]
    <video>/rgba_full_<t:05d>.png           RGB(A) frame
    <video>/segmentation_full_<t:05d>.png   visible ids, value obj+1 (0 background)
    <video>/segmentation_<obj>_<t:05d>.png  amodal mask of obj, value obj+1

A track covers the object's ``bbox_frames`` (the frames where it is visible), as in EoRaS.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amodal.errors import ConfigError


@dataclass(frozen=True, slots=True)
class MoviVideoMeta:
    name: str
    num_frames: int
    num_instances: int
    width: int
    height: int
    K: np.ndarray  # float32[3, 3] as stored (Kubric: normalised image coordinates)
    camera: dict[str, Any]
    instances: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class MoviTrack:
    """One object over its visible frames."""

    video: str
    obj: int
    frame_indices: np.ndarray  # int64[T]
    rgb: np.ndarray  # uint8[T, H, W, 3]
    visible: np.ndarray  # bool[T, H, W]
    amodal: np.ndarray  # bool[T, H, W]
    boxes_yxyx_norm: np.ndarray  # float32[T, 4] visible boxes as stored (ymin, xmin, ymax, xmax) in [0, 1]
    K: np.ndarray  # float32[3, 3]
    category_id: int | None

    @property
    def boxes_xyxy(self) -> np.ndarray:
        """float32[T, 4] visible boxes in pixels (x1, y1, x2, y2)."""
        h, w = self.visible.shape[1:]
        b = self.boxes_yxyx_norm
        return np.stack([b[:, 1] * w, b[:, 0] * h, b[:, 3] * w, b[:, 2] * h], axis=1).astype(np.float32)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    with Image.open(path) as im:
        return np.asarray(im)


class MoviSplit:
    """One split folder (``.../train``) of a MOVi-style dataset."""

    def __init__(self, split_dir: Path) -> None:
        self.root = Path(split_dir)
        list_path = self.root / "instance_list.npy"
        if not list_path.is_file():
            raise ConfigError(f"{list_path}: not found (expected a MOVi split folder)")
        try:
            items = np.load(list_path, allow_pickle=False)
        except ValueError as exc:
            raise ConfigError(f"{list_path}: not a plain string array ({exc})") from exc
        self.instance_list: list[tuple[str, int]] = []
        for s in items.reshape(-1).tolist():
            video, sep, obj = str(s).rpartition("-")
            if not sep or not obj.isdigit():
                raise ConfigError(f"{list_path}: entry {s!r} is not '<video>-<obj>'")
            self.instance_list.append((video, int(obj)))
        self._meta: dict[str, MoviVideoMeta] = {}

    def __len__(self) -> int:
        return len(self.instance_list)

    def videos(self) -> list[str]:
        return list(dict.fromkeys(v for v, _ in self.instance_list))

    def video_metadata(self, video: str) -> MoviVideoMeta:
        if video in self._meta:
            return self._meta[video]
        path = self.root / video / "metadata.json"
        if not path.is_file():
            raise ConfigError(f"{path}: metadata of video {video!r} not found")
        try:
            data = json.loads(path.read_text())
            md, cam, insts = data["metadata"], data["camera"], data["instances"]
            meta = MoviVideoMeta(
                name=video, num_frames=int(md["num_frames"]), num_instances=len(insts), width=int(md["width"]),
                height=int(md["height"]), K=np.asarray(cam["K"], np.float32), camera=cam, instances=tuple(insts))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: malformed MOVi metadata ({type(exc).__name__}: {exc})") from exc
        if meta.K.shape != (3, 3):
            raise ConfigError(f"{path}: camera K has shape {meta.K.shape}, expected (3, 3)")
        for k, inst in enumerate(insts):
            nb, nf = len(inst.get("bboxes", [])), len(inst.get("bbox_frames", []))
            if nb != nf:
                raise ConfigError(f"{path}: instance {k} has {nb} bboxes but {nf} bbox_frames")
        self._meta[video] = meta
        return meta

    def _check_shape(self, path: Path, array: np.ndarray, meta: MoviVideoMeta) -> None:
        if array.shape[:2] != (meta.height, meta.width):
            raise ConfigError(f"{path}: image is {array.shape[1]}x{array.shape[0]}, metadata of {meta.name} "
                              f"says {meta.width}x{meta.height}")

    def frame(self, video: str, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8[H, W, 3] RGB, int32[H, W] visible ids: obj+1, 0 background) of frame t."""
        meta = self.video_metadata(video)
        rgb_path = self.root / video / f"rgba_full_{t:05d}.png"
        rgb = _read_png(rgb_path)
        self._check_shape(rgb_path, rgb, meta)
        if rgb.dtype != np.uint8:
            rgb = (rgb.astype(np.float32) / np.iinfo(rgb.dtype).max * 255 + 0.5).astype(np.uint8)
        rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3]
        seg_path = self.root / video / f"segmentation_full_{t:05d}.png"
        seg = _read_png(seg_path).astype(np.int32)
        self._check_shape(seg_path, seg, meta)
        return np.ascontiguousarray(rgb), seg

    def amodal_mask(self, video: str, obj: int, t: int) -> np.ndarray:
        """bool[H, W] amodal mask of ``obj`` at frame t."""
        meta = self.video_metadata(video)
        path = self.root / video / f"segmentation_{obj}_{t:05d}.png"
        seg = _read_png(path)
        self._check_shape(path, seg, meta)
        return seg == obj + 1

    def track(self, video: str, obj: int) -> MoviTrack:
        meta = self.video_metadata(video)
        if not 0 <= obj < meta.num_instances:
            raise ConfigError(f"{self.root / video}: object {obj} out of range (video has {meta.num_instances})")
        inst = meta.instances[obj]
        frames = np.asarray(inst["bbox_frames"], np.int64)
        if frames.size and (frames.min() < 0 or frames.max() >= meta.num_frames):
            raise ConfigError(f"{self.root / video}/metadata.json: instance {obj} bbox_frames outside "
                              f"[0, {meta.num_frames})")
        rgbs, vis, amo = [], [], []
        for t in frames.tolist():
            rgb, ids = self.frame(video, t)
            rgbs.append(rgb)
            vis.append(ids == obj + 1)
            amo.append(self.amodal_mask(video, obj, t))
        H, W = meta.height, meta.width
        return MoviTrack(
            video=video, obj=obj, frame_indices=frames,
            rgb=np.stack(rgbs) if rgbs else np.zeros((0, H, W, 3), np.uint8),
            visible=np.stack(vis) if vis else np.zeros((0, H, W), bool),
            amodal=np.stack(amo) if amo else np.zeros((0, H, W), bool),
            boxes_yxyx_norm=np.asarray(inst["bboxes"], np.float32).reshape(-1, 4),
            K=meta.K, category_id=inst.get("category_id"))

    def __getitem__(self, index: int) -> MoviTrack:
        if not -len(self) <= index < len(self):
            raise IndexError(f"track {index} out of range ({len(self)} tracks in {self.root})")
        return self.track(*self.instance_list[index])

    def __iter__(self) -> Iterator[MoviTrack]:
        for video, obj in self.instance_list:
            yield self.track(video, obj)
