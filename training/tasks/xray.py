"""Training task for the bilayer X-ray segmenter (``amodal.models.xray``) on a COCO instance set with occluder
polygons (``bg_object_segmentation``): PIDray / Occ-PIDray, or ``amodal data synth xray`` (8-bit pseudo-colour,
or 16-bit grayscale with ``--gray16``).

Batches are scans with their items' masks and occluder masks (all zero for an item nothing lies over); evaluation
runs ``XraySam.detect`` over the held-out split and scores COCO mask AP and AP on occluded items with
``amodal.training.evaluation.coco`` (the ``amodal eval coco`` semantics).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amodal.errors import ConfigError
from amodal.models.xray import XrayBatch, XraySam, XraySamConfig, XrayTargets, build_xray, scanner_image_to_tensor
from amodal.models.xray.config import tiny_config, vit_b_config
from amodal.models.xray.sam import config_with_sam_architecture
from amodal.settings import build_settings
from amodal.training.data.coco import CocoImageRecord, CocoInstance, load_coco_instances, mask_to_rle
from amodal.training.data.epochs import epoch_batches
from amodal.training.evaluation.coco import COCOEvaluator

MIN_BOX_PX = 2.0  # items whose box is thinner than this are dropped from training targets
PRESETS = {"tiny": tiny_config, "vit_b": vit_b_config}
RESULT_KEYS = ("AP", "AP50", "AP75", "occluded/AP", "occluded/AP50", "occluded/AP75")


@dataclass(frozen=True)
class XrayTaskConfig:
    """``task_config:`` of an X-ray training run.

    ``data_root``: ``annotations/<split>.json`` + ``images/<split>/`` (``amodal data synth xray`` layout);
    ``preset``: ``tiny`` (CPU) or ``vit_b`` (the paper's); ``model``: ``XraySamConfig`` fields overriding the
    preset (e.g. ``bilayer: false`` for the single-decoder ablation, ``sam_path:`` for a real SAM folder);
    ``eval_max_images`` 0 evaluates every held-out scan."""

    data_root: str
    train_split: str = "train"
    val_split: str = "val"
    image_root: str | None = None
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    hflip_prob: float = 0.5
    eval_max_images: int = 0
    eval_batch_size: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.data_root, str) or not self.data_root:
            raise ConfigError("data_root must name a dataset directory")
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if not isinstance(self.model, dict):
            raise ConfigError(f"model must be a mapping of XraySamConfig fields, got {type(self.model).__name__}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ConfigError(f"hflip_prob must be in [0, 1], got {self.hflip_prob!r}")
        if not isinstance(self.eval_max_images, int) or self.eval_max_images < 0:
            raise ConfigError(f"eval_max_images must be an integer ≥ 0, got {self.eval_max_images!r}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be an integer ≥ 1, got {self.eval_batch_size!r}")

    def annotation_file(self, split: str) -> Path:
        return Path(self.data_root) / "annotations" / f"{split}.json"

    def images(self, split: str) -> Path | None:
        return Path(self.image_root) / split if self.image_root else None

    def model_config(self, class_names: tuple[str, ...]) -> XraySamConfig:
        """The preset with the ``model`` overrides and the dataset's class names (validated by build_settings)."""
        base = PRESETS[self.preset]().to_dict()
        return build_settings(XraySamConfig, {**base, **self.model, "class_names": list(class_names)},
                              "task_config.model")


@dataclass(frozen=True)
class _Sample:
    """One decoded scan: uint8[H, W, 3] or uint16[H, W], boxes float[N, 4], labels int64[N], masks and occluder
    masks bool[N, H, W]."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    occluders: np.ndarray


def training_instances(record: CocoImageRecord) -> list[CocoInstance]:
    """The instances trained on: not crowd, box at least ``MIN_BOX_PX`` wide and high."""
    return [inst for inst in record.instances if not inst.iscrowd and inst.bbox_xywh[2] >= MIN_BOX_PX
            and inst.bbox_xywh[3] >= MIN_BOX_PX]


def decode_record(record: CocoImageRecord, label_of: dict[int, int]) -> _Sample:
    """A record's pixels and targets (``training_instances``); an item without occluder polygons (``[]``, or no
    ``bg_object_segmentation`` field at all) gets an all-zero occluder mask."""
    image = record.load_image()
    keep = training_instances(record)
    h, w = record.height, record.width
    masks = np.stack([inst.mask() for inst in keep]) if keep else np.zeros((0, h, w), bool)
    occluders = [inst.occluder_mask() for inst in keep]
    occ = np.stack([o if o is not None else np.zeros((h, w), bool) for o in occluders]) if keep else masks.copy()
    boxes = np.array([inst.bbox_xyxy for inst in keep], np.float32).reshape(-1, 4)
    labels = np.array([label_of[inst.category_id] for inst in keep], np.int64)
    return _Sample(image, boxes, labels, masks, occ)


def sample_tensors(sample: _Sample, flip: bool) -> tuple[torch.Tensor, XrayTargets]:
    """(image float[3, H, W] in [0, 1], targets), optionally mirrored left–right."""
    image = scanner_image_to_tensor(sample.image)
    w = image.shape[-1]
    boxes = torch.from_numpy(sample.boxes)
    masks = torch.from_numpy(sample.masks).to(torch.uint8)
    occ = torch.from_numpy(sample.occluders).to(torch.uint8)
    if flip:
        image, masks, occ = image.flip(-1), masks.flip(-1), occ.flip(-1)
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return image, XrayTargets(boxes, torch.from_numpy(sample.labels), masks, occ)


class XrayTask:
    """``task: xray`` — see the module docstring."""

    name = "xray"

    def __init__(self, task_config: dict[str, Any]) -> None:
        self.config = build_settings(XrayTaskConfig, task_config, "task_config", required=("data_root",))
        ann = self.config.annotation_file(self.config.train_split)
        self.train_set = load_coco_instances(ann, self.config.images(self.config.train_split))
        self.category_ids = sorted(self.train_set.categories)
        self.class_names = tuple(self.train_set.categories[c] for c in self.category_ids)
        self.label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.model_config = self.config.model_config(self.class_names)
        self._records = [r for r in self.train_set.records if r.instances]
        if not self._records:
            raise ConfigError(f"{ann}: no scan with an annotated item; nothing to train on")
        self._cache: dict[int, _Sample] = {}

    def build_model(self) -> nn.Module:
        return build_xray(config=self.model_config)

    # ------------------------------------------------------------------ data

    def _sample(self, position: int) -> _Sample:
        if position not in self._cache:
            self._cache[position] = decode_record(self._records[position], self.label_of)
        return self._cache[position]

    def train_batches(self, *, batch_size: int, seed: int, rank: int, world_size: int,
                      start_batch: int = 0) -> Iterator[XrayBatch]:
        """Endless batches: each epoch a (seed, epoch)-permutation of the scans, rank-sharded; flips drawn per
        (seed, epoch, scan); ``start_batch`` skips batches without decoding them (exact resume)."""
        n = len(self._records)
        for epoch, positions in epoch_batches(n, batch_size=batch_size, seed=seed, rank=rank,
                                              world_size=world_size, start_batch=start_batch):
            images, targets = [], []
            for position in positions:
                flip = bool(np.random.default_rng([seed, epoch, position]).random() < self.config.hflip_prob)
                image, target = sample_tensors(self._sample(position), flip)
                images.append(image)
                targets.append(target)
            yield XrayBatch(images, targets)

    def batch_to_device(self, batch: XrayBatch, device: torch.device) -> XrayBatch:
        return batch.to(device)

    def losses(self, model: nn.Module, batch: XrayBatch) -> dict[str, torch.Tensor]:
        core = model.module if hasattr(model, "module") else model
        return core.losses(model(batch))

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """COCO mask AP and AP on occluded items over the held-out split: {score (= AP), AP, AP50, …}."""
        ann = self.config.annotation_file(self.config.val_split)
        return evaluate_xray(model, ann, self.config.images(self.config.val_split), device, self.label_of,
                             max_images=self.config.eval_max_images, batch_size=self.config.eval_batch_size)

    def export_metadata(self) -> dict[str, Any]:
        config = config_with_sam_architecture(self.model_config)
        return {
            "model": "xray_bilayer_sam",
            "config": config.to_dict(),
            "classes": list(self.class_names),
            "category_ids": list(self.category_ids),
            "input_size": {"height": config.image_size, "width": config.image_size,
                           "resize": "longer side to image_size, zero padding after normalisation"},
            "normalisation": {"input": "8-bit pseudo-colour RGB / 255, or 16-bit grayscale / 65535 on 3 channels",
                              "mean": list(config.image_mean), "std": list(config.image_std)},
            "training_data": {"data_root": self.config.data_root, "train_split": self.config.train_split,
                              "val_split": self.config.val_split, "images": len(self._records),
                              "task_config": asdict(self.config)},
            "metric": "COCO mask AP (held-out split); occluded/AP on items with occluder annotation",
        }


def evaluate_xray(model: XraySam, ann_file: Path, image_root: Path | None, device: torch.device,
                  label_of: dict[int, int], *, max_images: int = 0, batch_size: int = 4) -> dict[str, float]:
    """Detect on every scan of ``ann_file`` (the first ``max_images`` when > 0) and score COCO mask AP with the
    occluded-only pass; masks binarised at the model's ``mask_threshold``."""
    dataset = load_coco_instances(ann_file, image_root)
    gt = json.loads(Path(ann_file).read_text())
    records = list(dataset.records)
    if max_images > 0:
        records = records[:max_images]
        keep = {r.image_id for r in records}
        gt = {**gt, "images": [i for i in gt["images"] if int(i["id"]) in keep],
              "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in keep]}
    core = model.module if hasattr(model, "module") else model
    category_of = {label: cat for cat, label in label_of.items()}
    threshold = core.config.mask_threshold
    was_training = core.training
    core.eval()
    predictions = []
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            images = [scanner_image_to_tensor(r.load_image()).to(device) for r in chunk]
            for record, det in zip(chunk, core.detect(images)):
                binary = (det.masks > threshold).cpu().numpy()
                for j in range(det.scores.shape[0]):
                    predictions.append({"image_id": record.image_id,
                                        "category_id": category_of[int(det.labels[j])],
                                        "segmentation": mask_to_rle(binary[j]), "score": float(det.scores[j])})
    finally:
        core.train(was_training)
    evaluator = COCOEvaluator(gt, iou_type="segm")
    evaluator.process(predictions)
    result = evaluator.evaluate()
    out = {k: float(result[k]) for k in RESULT_KEYS}
    out["score"] = out["AP"]
    out["num_predictions"] = float(len(predictions))
    out["num_gt_occluded"] = float(result["num_gt_occluded"])
    return out
