"""Training task for EoRaS (video amodal segmentation of object tracks) on the MOVi layout
(``amodal.training.data.movi``; ``amodal data synth video`` writes it under ``movi/<split>``).

Tracks are an object over the frames where it is visible (EoRaS's rule). Every frame is a crop of ``enlarge`` ×
the visible box (from the metadata) resized to ``input_size``², with the crop's intrinsics from the video's K
(Kubric's normalised K converted to pixels; or ``hfov_deg``'s fallback K); targets are the visible and amodal
masks cut at the same box and resized to ``mask_size``² (soft, bilinear). All crops are cut once, at start-up.
A training sample is a random window of ``seq_len`` frames of a random track (shorter tracks repeat their last
frame, as the official loader), flipped horizontally with ``hflip_prob`` (K flipped with it). Evaluation (the
held-out split): every track's masks pasted back into the image (``paste_masks``) and scored with
``amodal.training.evaluation.amodal`` — mIoU_full, mIoU_occ (EoRaS rules) and mIoU_occ over frames with
occlusion — in the offline (the paper), causal and windowed (``eval_window``) modes, and the baseline of the
ground-truth visible mask taken as the amodal mask; score = ``eval_mode``'s mIoU_full.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amodal.errors import ConfigError
from amodal.models.eoras import (
    EoRaS,
    EoRaSConfig,
    EoRaSTargets,
    build_eoras,
    crop_images,
    crop_intrinsics,
    enlarged_crop_boxes,
    eoras_losses,
    intrinsics_from_fov,
    kubric_to_pixel_intrinsics,
    paste_masks,
    tiny_config,
)
from amodal.settings import build_settings
from amodal.training.data.movi import MoviSplit, MoviTrack
from amodal.training.evaluation.amodal import AmodalEvaluator

MODEL_SIZES = ("tiny", "paper")
EVAL_MODES = ("offline", "causal", "windowed")


@dataclass(frozen=True)
class EoRaSTaskConfig:
    """``task_config:`` of an EoRaS run. ``data_root``: the MOVi folder holding ``train_split`` / ``val_split``;
    ``model_size``: ``tiny`` (``tiny_config``) or ``paper`` (``EoRaSConfig`` defaults), overridden by ``model``
    (any ``EoRaSConfig`` keys, e.g. ``use_bev: false``); ``hfov_deg``: ignore the stored K and use this horizontal
    field of view (the fallback a camera without calibration gets)."""

    data_root: str
    train_split: str = "train"
    val_split: str = "valid"
    model_size: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    seq_len: int = 8
    hflip_prob: float = 0.5
    hfov_deg: float | None = None
    eval_mode: str = "offline"
    eval_window: int = 4
    eval_modes: tuple[str, ...] = ("offline", "causal", "windowed")
    eval_max_tracks: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.data_root, str) or not self.data_root:
            raise ConfigError("task_config.data_root must name a MOVi folder (holding the split folders)")
        if self.model_size not in MODEL_SIZES:
            raise ConfigError(f"task_config.model_size must be one of {MODEL_SIZES}, got {self.model_size!r}")
        if not isinstance(self.model, dict):
            raise ConfigError(f"task_config.model must be a mapping of EoRaSConfig keys, got {self.model!r}")
        for name in ("seq_len", "eval_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"task_config.{name} must be an integer ≥ 1, got {value!r}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ConfigError(f"task_config.hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if self.hfov_deg is not None and not 0.0 < float(self.hfov_deg) < 180.0:
            raise ConfigError(f"task_config.hfov_deg must be in (0, 180), got {self.hfov_deg}")
        bad = [m for m in (self.eval_mode, *self.eval_modes) if m not in EVAL_MODES]
        if bad:
            raise ConfigError(f"task_config: unknown eval modes {bad}; known: {EVAL_MODES}")
        if self.eval_mode not in self.eval_modes:
            raise ConfigError(f"task_config.eval_mode {self.eval_mode!r} is not in eval_modes {self.eval_modes}")
        if self.eval_max_tracks < 0:
            raise ConfigError(f"task_config.eval_max_tracks must be ≥ 0, got {self.eval_max_tracks}")

    def model_config(self) -> EoRaSConfig:
        overrides = build_settings(EoRaSConfig, {**asdict(tiny_config() if self.model_size == "tiny"
                                                          else EoRaSConfig()), **self.model}, "task_config.model")
        return overrides


@dataclass(frozen=True)
class TrackCrops:
    """One track, cut once: crops uint8[T, 3, S, S], masks uint8[T, 2, M, M] (amodal, visible; 0…255), K_crop
    float32[T, 3, 3], crop boxes float32[T, 4] (x0, y0, x1, y1) in the image."""

    name: str
    crops: torch.Tensor
    masks: torch.Tensor
    K: torch.Tensor
    boxes: torch.Tensor


@dataclass
class EoRaSBatch:
    """B windows of T frames: crops float[B, T, 3, S, S] in [0, 1], K float[B, T, 3, 3], targets (soft masks)."""

    crops: torch.Tensor
    K: torch.Tensor
    targets: EoRaSTargets

    def to(self, device: torch.device) -> "EoRaSBatch":
        return EoRaSBatch(self.crops.to(device), self.K.to(device),
                          EoRaSTargets(self.targets.amodal.to(device), self.targets.visible.to(device)))


def track_image_K(split: MoviSplit, video: str, hfov_deg: float | None) -> torch.Tensor:
    """float32[3, 3] pixel K of ``video``: the stored (Kubric) K, or the ``hfov_deg`` fallback."""
    meta = split.video_metadata(video)
    if hfov_deg is not None:
        return intrinsics_from_fov(meta.width, meta.height, float(hfov_deg))
    return kubric_to_pixel_intrinsics(torch.from_numpy(meta.K), meta.width, meta.height)


def cut_track(track: MoviTrack, K_image: torch.Tensor, config: EoRaSConfig) -> TrackCrops:
    """Crops, target masks, crop intrinsics and crop boxes of every frame of ``track``."""
    T, H, W = track.visible.shape
    boxes = enlarged_crop_boxes(torch.from_numpy(track.boxes_xyxy), W, H, config.enlarge)
    index = torch.arange(T)
    rgb = torch.from_numpy(track.rgb).permute(0, 3, 1, 2).float()
    crops = crop_images(rgb, index, boxes, config.input_size).round().clamp(0, 255).to(torch.uint8)
    masks = torch.stack([torch.from_numpy(track.amodal), torch.from_numpy(track.visible)], 1).float()
    masks = crop_images(masks, index, boxes, config.mask_size, sampling_ratio=2)
    masks = (masks * 255).round().clamp(0, 255).to(torch.uint8)
    return TrackCrops(f"{track.video}-{track.obj}", crops, masks, crop_intrinsics(K_image, boxes, config.input_size),
                      boxes)


def flip_K(K: torch.Tensor, size: int) -> torch.Tensor:
    """Intrinsics of horizontally flipped crops: u' = size − u, so fx → −fx and cx → size − cx."""
    out = K.clone()
    out[..., 0, 0] = -K[..., 0, 0]
    out[..., 0, 2] = size - K[..., 0, 2]
    return out


class EoRaSTask:
    """``task: eoras`` — see the module docstring."""

    name = "eoras"

    def __init__(self, task_config: dict[str, Any]) -> None:
        self.config = cfg = build_settings(EoRaSTaskConfig, dict(task_config), "task_config", required=("data_root",))
        self.model_config = cfg.model_config()
        root = Path(cfg.data_root)
        self.train_split = MoviSplit(root / cfg.train_split)
        self.tracks = self._cut(self.train_split)
        if not self.tracks:
            raise ConfigError(f"{root / cfg.train_split}: no track with a visible frame; nothing to train on")
        self._val: list[tuple[TrackCrops, np.ndarray, np.ndarray, tuple[int, int]]] | None = None

    def _cut(self, split: MoviSplit) -> list[TrackCrops]:
        out = []
        for video, obj in split.instance_list:
            track = split.track(video, obj)
            if len(track.frame_indices):
                out.append(cut_track(track, track_image_K(split, video, self.config.hfov_deg), self.model_config))
        return out

    def build_model(self) -> nn.Module:
        return build_eoras(config=self.model_config)

    # ------------------------------------------------------------------ data
    def make_batch(self, rng: np.random.Generator, batch_size: int) -> EoRaSBatch:
        """``batch_size`` windows of ``seq_len`` frames drawn with ``rng``."""
        L, S = self.config.seq_len, self.model_config.input_size
        crops, Ks, masks = [], [], []
        for i in rng.integers(len(self.tracks), size=batch_size).tolist():
            tr = self.tracks[i]
            T = tr.crops.shape[0]
            start = int(rng.integers(T - L + 1)) if T > L else 0
            idx = torch.tensor([min(start + k, T - 1) for k in range(L)])
            c, K, m = tr.crops[idx], tr.K[idx], tr.masks[idx]
            if rng.random() < self.config.hflip_prob:
                c, m, K = c.flip(-1), m.flip(-1), flip_K(K, S)
            crops.append(c)
            Ks.append(K)
            masks.append(m)
        m = torch.stack(masks).float() / 255.0
        return EoRaSBatch(torch.stack(crops).float() / 255.0, torch.stack(Ks), EoRaSTargets(m[:, :, 0], m[:, :, 1]))

    def train_batches(self, *, batch_size: int, seed: int, rank: int, world_size: int,
                      start_batch: int = 0) -> Iterator[EoRaSBatch]:
        """Endless batches; batch b of rank r is drawn from Generator([seed, r, b]) (exact resume by index)."""
        batch = start_batch
        while True:
            yield self.make_batch(np.random.default_rng([seed, rank, batch]), batch_size)
            batch += 1

    def batch_to_device(self, batch: EoRaSBatch, device: torch.device) -> EoRaSBatch:
        return batch.to(device)

    def losses(self, model: nn.Module, batch: EoRaSBatch) -> dict[str, torch.Tensor]:
        return eoras_losses(model(batch.crops, batch.K, mode="offline"), batch.targets, self.model_config)

    # ------------------------------------------------------------------ evaluation
    def _val_tracks(self) -> list[tuple[TrackCrops, np.ndarray, np.ndarray, tuple[int, int]]]:
        """(crops, GT amodal bool[T, H, W], GT visible bool[T, H, W], (W, H)) of every held-out track, loaded once."""
        if self._val is None:
            split = MoviSplit(Path(self.config.data_root) / self.config.val_split)
            items = split.instance_list
            if self.config.eval_max_tracks:
                items = items[: self.config.eval_max_tracks]
            self._val = []
            for video, obj in items:
                track = split.track(video, obj)
                if not len(track.frame_indices):
                    continue
                cut = cut_track(track, track_image_K(split, video, self.config.hfov_deg), self.model_config)
                H, W = track.visible.shape[1:]
                self._val.append((cut, track.amodal, track.visible, (W, H)))
        return self._val

    @torch.no_grad()
    def predict_track(self, model: EoRaS, track: TrackCrops, size: tuple[int, int], mode: str,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """(amodal, visible) bool[T, H, W] of one track in image coordinates."""
        out = model(track.crops[None].to(device).float() / 255.0, track.K[None].to(device), mode=mode,
                    window=self.config.eval_window if mode == "windowed" else None)
        thr = self.model_config.mask_threshold
        boxes = track.boxes.to(device)
        amodal = paste_masks(torch.sigmoid(out.amodal_logits[0]), boxes, *size, threshold=thr)
        visible = paste_masks(torch.sigmoid(out.visible_logits[0]), boxes, *size, threshold=thr)
        return amodal.cpu().numpy(), visible.cpu().numpy()

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """mIoU_full / mIoU_occ / mIoU_occ_gt_nonempty per mode (``<mode>_…``), visible mIoU, and the visible-as-
        amodal baseline; ``score`` = ``eval_mode``'s mIoU_full; the unprefixed keys are ``eval_mode``'s."""
        model = getattr(model, "module", model)
        tracks = self._val_tracks()
        out: dict[str, float] = {}
        baseline = AmodalEvaluator()
        for cut, gt_amodal, gt_visible, _ in tracks:
            baseline.process(gt_visible, gt_amodal, gt_visible, name=cut.name)
        for key, value in baseline.evaluate().items():
            out[f"baseline_visible_{key}"] = float(value)
        for mode in self.config.eval_modes:
            evaluator = AmodalEvaluator()
            vis_iou, vis_frames = 0.0, 0
            for cut, gt_amodal, gt_visible, size in tracks:
                pred_amodal, pred_visible = self.predict_track(model, cut, size, mode, device)
                evaluator.process(pred_amodal, gt_amodal, gt_visible, name=cut.name)
                inter = np.logical_and(pred_visible, gt_visible).sum((1, 2))
                union = np.logical_or(pred_visible, gt_visible).sum((1, 2))
                vis_iou += float((inter / np.maximum(union, 1)).sum())
                vis_frames += len(inter)
            result = evaluator.evaluate()
            for key, value in result.items():
                out[f"{mode}_{key}"] = float(value)
            out[f"{mode}_miou_visible"] = vis_iou / vis_frames if vis_frames else -1.0
        mode = self.config.eval_mode
        for key in ("miou_full", "miou_occ", "miou_occ_gt_nonempty", "num_tracks", "num_frames"):
            out[key] = out[f"{mode}_{key}"]
        out["score"] = out["miou_full"]
        return out

    def export_metadata(self) -> dict[str, Any]:
        cfg, mc = self.config, self.model_config
        return {
            "model": "eoras",
            "config": mc.to_dict(),
            "classes": "agnostic (one amodal mask per given object track)",
            "input_size": {"height": mc.input_size, "width": mc.input_size,
                           "crop": f"{mc.enlarge}x the visible box, clipped to the image, resized (roi_align)"},
            "mask_size": mc.mask_size,
            "normalisation": {"input": "RGB float in [0, 1]", "mean": None, "std": None},
            "intrinsics": "K of the resized crop in pixels (amodal.models.eoras.geometry.crop_intrinsics)",
            "training_data": {"data_root": cfg.data_root, "train_split": cfg.train_split, "val_split": cfg.val_split,
                              "tracks": len(self.tracks), "frames": int(sum(t.crops.shape[0] for t in self.tracks)),
                              "task_config": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in asdict(cfg).items()}},
            "metric": f"mIoU_full of the amodal masks pasted into the image, {cfg.eval_mode} mode, held-out "
                      f"'{cfg.val_split}' tracks (EoRaS protocol; miou_occ alongside)",
        }
