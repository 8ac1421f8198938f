"""Training task for CMaskTrack R-CNN on OVIS-format videos (our synthetic sets: ``amodal data synth video``).

Batches are (current frame, reference frame ≤ ``max_ref_gap`` frames away, ground truth with instance ids) pairs;
evaluation runs the model online over each held-out video (frame by frame, calibration against the previous frame
only, a track memory) and scores video AP (``amodal.training.evaluation.vis``) with the OVIS occlusion buckets.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amodal.errors import ConfigError
from amodal.models.cmasktrack import (
    CMaskTrackConfig,
    CMaskTrackRCNN,
    InstanceTargets,
    OnlineTracker,
    PairBatch,
    build_cmasktrack,
    cmasktrack_losses,
)
from amodal.models.maskrcnn import MaskRCNNConfig
from amodal.training.data.ovis import OvisDataset, OvisFrame, OvisVideo
from amodal.training.data.epochs import epoch_batches
from amodal.training.evaluation.common import rle_encode
from amodal.training.evaluation.vis import evaluate_vis
from amodal.training.tasks.detector_init import DetectorInit, check_init_keys, read_detector_init
from amodal.training.tasks.zoom import ZoomWindow, apply_zoom, boxes_of_masks, check_zoom_settings, draw_zoom_window

MIN_BOX_PX = 2.0  # instances whose visible box is thinner than this are dropped from training targets
RESULT_KEYS = ("AP", "AP50", "AP75", "AP_light", "AP_medium", "AP_heavy")


@dataclass(frozen=True)
class CMaskTrackTaskConfig:
    """``task_config:`` of a CMaskTrack R-CNN training run.

    ``data_root``: a dataset written by ``amodal data synth video`` (or any OVIS layout with ``annotations/`` and
    ``JPEGImages/``); ``train_split``/``val_split`` name ``annotations/<split>.json``.  Model keys mirror
    ``CMaskTrackConfig``/``MaskRCNNConfig``; ``input_height × input_width`` is the network input (the shorter and
    longer side for torchvision's resize).  ``eval_max_videos`` = 0 evaluates every held-out video.  Both frames
    of a training pair are mirrored with probability ``hflip_prob`` and, with probability ``zoom_prob``, seen
    through the same window zoomed 1 to ``zoom_max`` times (``zoom.py``; boxes then come from the masks).
    """

    data_root: str
    train_split: str = "train"
    val_split: str = "valid"
    image_root: str | None = None
    backbone: str = "tiny"
    tiny_widths: tuple[int, int, int, int] = (16, 32, 64, 96)
    calibration: bool = True
    input_height: int = 192
    input_width: int = 320
    fpn_channels: int = 64
    calibration_channels: int = 32
    patch_size: int = 16
    dilation_patch: int = 2
    track_dim: int = 256
    track_logit_scale: float = 1.0
    track_normalize: bool = False
    box_head_dim: int = 256
    mask_head_channels: int = 64
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    rpn_post_nms_train: int = 300
    rpn_post_nms_test: int = 200
    box_batch_size_per_image: int = 128
    max_detections: int = 100
    correlation_backend: str = "auto"
    max_ref_gap: int = 5
    hflip_prob: float = 0.5
    zoom_prob: float = 0.0
    zoom_max: float = 2.0
    eval_max_videos: int = 0
    eval_score_threshold: float = 0.05
    variant: str = "v1"
    init_from: str | None = None
    class_map: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data_root, str) or not self.data_root:
            raise ConfigError("task_config.data_root must name a dataset directory")
        check_init_keys(self.init_from, self.class_map)
        for name in ("input_height", "input_width", "max_ref_gap", "max_detections"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"task_config.{name} must be an integer ≥ 1, got {getattr(self, name)!r}")
        check_zoom_settings(self.zoom_prob, self.zoom_max, self.hflip_prob, prefix="task_config.")
        if not isinstance(self.eval_max_videos, int) or self.eval_max_videos < 0:
            raise ConfigError(f"task_config.eval_max_videos must be an integer ≥ 0, got {self.eval_max_videos!r}")
        if not 0.0 <= self.eval_score_threshold < 1.0:
            raise ConfigError(f"task_config.eval_score_threshold must be in [0, 1), got {self.eval_score_threshold!r}")
        object.__setattr__(self, "anchor_sizes", tuple(int(a) for a in self.anchor_sizes))
        object.__setattr__(self, "tiny_widths", tuple(int(w) for w in self.tiny_widths))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CMaskTrackTaskConfig":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"task_config: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        if "data_root" not in d:
            raise ConfigError("task_config.data_root is required")
        return cls(**d)

    def annotation_file(self, split: str) -> Path:
        return Path(self.data_root) / "annotations" / f"{split}.json"

    def images(self) -> Path:
        return Path(self.image_root) if self.image_root else Path(self.data_root) / "JPEGImages"

    def model_config(self, class_names: tuple[str, ...]) -> CMaskTrackConfig:
        detector = MaskRCNNConfig(
            class_names=class_names, backbone=self.backbone, tiny_widths=self.tiny_widths,
            fpn_channels=self.fpn_channels,
            min_size=min(self.input_height, self.input_width), max_size=max(self.input_height, self.input_width),
            anchor_sizes=self.anchor_sizes, box_head_dim=self.box_head_dim, mask_head_channels=self.mask_head_channels,
            rpn_post_nms_train=self.rpn_post_nms_train, rpn_post_nms_test=self.rpn_post_nms_test,
            box_batch_size_per_image=self.box_batch_size_per_image, box_detections_per_img=self.max_detections,
            variant=self.variant)
        return CMaskTrackConfig(detector=detector, calibration=self.calibration,
                                calibration_channels=self.calibration_channels, patch_size=self.patch_size,
                                dilation_patch=self.dilation_patch, track_dim=self.track_dim,
                                track_logit_scale=self.track_logit_scale, track_normalize=self.track_normalize,
                                correlation_backend=self.correlation_backend)


def frame_tensors(frame: OvisFrame, label_of: dict[int, int],
                  window: ZoomWindow | None = None) -> tuple[torch.Tensor, InstanceTargets]:
    """(image float[3, H, W] in [0, 1], targets) of one annotated frame, seen through ``window`` (zoomed and/or
    mirrored left–right; boxes then come from the masks) when one is given."""
    image = torch.from_numpy(np.array(frame.image)).permute(2, 0, 1).float().div_(255.0)
    h, w = frame.image.shape[:2]
    keep = [inst for inst in frame.instances
            if inst.mask.any() and inst.box_xyxy[2] - inst.box_xyxy[0] >= MIN_BOX_PX
            and inst.box_xyxy[3] - inst.box_xyxy[1] >= MIN_BOX_PX]
    boxes = torch.tensor([inst.box_xyxy for inst in keep], dtype=torch.float32).reshape(-1, 4)
    masks = torch.from_numpy(np.stack([inst.mask for inst in keep]).astype(np.uint8) if keep
                             else np.zeros((0, h, w), np.uint8))
    labels = torch.tensor([label_of[inst.category_id] for inst in keep], dtype=torch.int64)
    ids = torch.tensor([inst.track_id for inst in keep], dtype=torch.int64)
    if window is not None and (window.height, window.width) != (h, w):
        image, masks = apply_zoom(image, masks, window)
        present = masks.flatten(1).amax(1) > 0  # objects the window cut away are gone
        boxes, labels, masks, ids = boxes_of_masks(masks[present]), labels[present], masks[present], ids[present]
        wide = ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX_PX).all(1)
        boxes, labels, masks, ids = boxes[wide], labels[wide], masks[wide], ids[wide]
    elif window is not None and window.mirror:
        image, masks = apply_zoom(image, masks, window)
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return image, InstanceTargets(boxes, labels, masks, ids)


class CMaskTrackTask:
    """``task: cmasktrack`` — see the module docstring."""

    name = "cmasktrack"

    def __init__(self, task_config: dict[str, Any]) -> None:
        self.config = CMaskTrackTaskConfig.from_dict(dict(task_config))
        ann = self.config.annotation_file(self.config.train_split)
        self.train_set = OvisDataset(ann, self.config.images())
        self.category_ids = sorted(self.train_set.categories)
        self.class_names = tuple(self.train_set.categories[c] for c in self.category_ids)
        self.label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.model_config = self.config.model_config(self.class_names)
        self._init: DetectorInit | None = None
        self.init_report: dict[str, Any] | None = None
        if self.config.init_from is not None:
            self._init, detector = read_detector_init(self.config.init_from, self.config.class_map,
                                                      self.model_config.detector, self.class_names)
            self.model_config = replace(self.model_config, detector=detector)
        self._train_index = self._annotated_frames(self.train_set)
        if not self._train_index:
            raise ConfigError(f"{ann}: no annotated frame in a video of ≥ 2 frames; nothing to train on")

    @staticmethod
    def _annotated_frames(ds: OvisDataset) -> list[tuple[int, int]]:
        out = []
        for vid, video in ds.videos.items():
            if video.length < 2:
                continue
            present = {t for tr in ds.tracks(vid) for t in range(video.length) if tr.present(t)}
            out.extend((vid, t) for t in sorted(present))
        return out

    def build_model(self) -> nn.Module:
        """A fresh model; with ``init_from``, its detector initialised from those weights (``init_report`` says how)."""
        model = build_cmasktrack(config=self.model_config)
        if self._init is not None:
            self.init_report = self._init.apply(model, self.class_names)
        return model

    # ------------------------------------------------------------------ data

    def _reference(self, video: OvisVideo, t: int, rng: np.random.Generator) -> int:
        """A frame ≠ t within ``max_ref_gap`` of t, preferring annotated frames (as the paper samples)."""
        gap = self.config.max_ref_gap
        window = [r for r in range(max(0, t - gap), min(video.length, t + gap + 1)) if r != t]
        tracks = self.train_set.tracks(video.id)
        preferred = [r for r in window if any(tr.present(r) for tr in tracks)] or window
        return int(preferred[int(rng.integers(len(preferred)))])

    def _pair(self, position: int, vid: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                          InstanceTargets, InstanceTargets]:
        rng = np.random.default_rng([seed, position])
        video = self.train_set.videos[vid]
        ref = self._reference(video, t, rng)
        frame = self.train_set.frame(video, t)
        c = self.config
        window = draw_zoom_window(rng, *frame.image.shape[:2], zoom_prob=c.zoom_prob, zoom_max=c.zoom_max,
                                  hflip_prob=c.hflip_prob)  # one window for both frames of the pair
        image, target = frame_tensors(frame, self.label_of, window)
        ref_image, ref_target = frame_tensors(self.train_set.frame(video, ref), self.label_of, window)
        return image, ref_image, target, ref_target

    def train_batches(self, *, batch_size: int, seed: int, rank: int, world_size: int,
                      start_batch: int = 0) -> Iterator[PairBatch]:
        """Endless pair batches: each epoch a (seed, epoch)-permutation of the annotated frames, rank-sharded;
        ``start_batch`` skips batches without decoding them (exact resume)."""
        n = len(self._train_index)
        for epoch, positions in epoch_batches(n, batch_size=batch_size, seed=seed, rank=rank,
                                              world_size=world_size, start_batch=start_batch):
            items = []
            for position in positions:
                vid, t = self._train_index[position]
                items.append(self._pair(epoch * n + position, vid, t, seed))
            images, refs, targets, ref_targets = (list(x) for x in zip(*items))
            yield PairBatch(images, refs, targets, ref_targets)

    def batch_to_device(self, batch: PairBatch, device: torch.device) -> PairBatch:
        return batch.to(device)

    def losses(self, model: nn.Module, batch: PairBatch) -> dict[str, torch.Tensor]:
        return cmasktrack_losses(model(batch))

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Video AP of online tracking over the held-out split: {score (= AP), AP, AP50, AP75, AP_light, …}."""
        ann = self.config.annotation_file(self.config.val_split)
        return evaluate_online(model, ann, self.config.images(), device, self.label_of,
                               max_videos=self.config.eval_max_videos,
                               score_threshold=self.config.eval_score_threshold)

    def export_metadata(self) -> dict[str, Any]:
        det = self.model_config.detector
        return {
            "model": "cmasktrack_rcnn",
            "config": self.model_config.to_dict(),
            "classes": list(self.class_names),
            "category_ids": list(self.category_ids),
            "input_size": {"height": self.config.input_height, "width": self.config.input_width},
            "normalisation": {"input": "RGB float in [0, 1]", "mean": list(det.image_mean), "std": list(det.image_std)},
            "training_data": {"data_root": self.config.data_root, "train_split": self.config.train_split,
                              "val_split": self.config.val_split, "frames": len(self._train_index),
                              "task_config": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in asdict(self.config).items()}},
            "metric": "video AP (OVIS protocol, online inference, past-frame calibration)",
            **({"initialised_from": self.init_report} if self.init_report is not None else {}),
        }


def evaluate_online(model: CMaskTrackRCNN, ann_file: Path, image_root: Path, device: torch.device,
                    label_of: dict[int, int], *, max_videos: int = 0, score_threshold: float = 0.05) -> dict[str, float]:
    """Run ``model`` online over every video of ``ann_file`` (first ``max_videos`` when > 0) and score video AP.

    A predicted track is one track id: its masks per frame (None where it was not detected), category = the
    label with the largest summed score, score = its mean detection score."""
    dataset = OvisDataset(ann_file, image_root)
    gt = json.loads(Path(ann_file).read_text())
    videos = list(dataset.videos.values())
    if max_videos > 0:
        videos = videos[:max_videos]
        keep = {v.id for v in videos}
        gt = {**gt, "videos": [v for v in gt["videos"] if int(v["id"]) in keep],
              "annotations": [a for a in gt.get("annotations") or [] if int(a["video_id"]) in keep]}
    category_of = {label: cat for cat, label in label_of.items()}
    was_training = model.training
    tracker = OnlineTracker(model.to(device), score_threshold=score_threshold)
    predictions = []
    try:
        for video in videos:
            tracker.reset(video.id)
            masks: dict[int, list[Any]] = {}
            scores: dict[int, list[float]] = defaultdict(list)
            label_score: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
            for t in range(video.length):
                image = torch.from_numpy(np.array(dataset.load_image(video, t))).permute(2, 0, 1).float().div_(255.0)
                (tracked,) = tracker.step([(video.id, image.to(device))])
                binary = tracked.masks.cpu().numpy()
                for j, tid in enumerate(tracked.track_ids.tolist()):
                    rle = rle_encode(binary[j])
                    rle["counts"] = rle["counts"].decode("ascii")
                    masks.setdefault(tid, [None] * video.length)[t] = rle
                    s = float(tracked.scores[j])
                    scores[tid].append(s)
                    label_score[tid][int(tracked.labels[j])] += s
            tracker.reset(video.id)
            for tid, segs in masks.items():
                label = max(label_score[tid].items(), key=lambda kv: kv[1])[0]
                predictions.append({"video_id": video.id, "category_id": category_of[label], "segmentations": segs,
                                    "score": float(np.mean(scores[tid]))})
    finally:
        model.train(was_training)
    result = evaluate_vis(gt, predictions)
    out = {k: float(result[k]) for k in RESULT_KEYS}
    out["score"] = out["AP"]
    out["num_predictions"] = float(len(predictions))
    return out
