"""Training task for the Mask R-CNN of the ``maskrcnn`` analyzer on synthetic scenes: ``world: shapes`` (moving
shapes, ``amodal.world.shapes``; the shipped weights' world) or ``world: street`` (the street world of
``amodal.world.street`` in a ``street_style``: ``camera`` is the camera-like one, with photographs, articulated
people, vehicles, street furniture and camera effects; classes person, car, animal, box, ball).

Every training image is one frame of a random scene (objects crossing and occluding each other) with its exact
visible masks; the scene seed and frame index of every image are drawn from
(seed, rank, batch index), so the stream is endless, deterministic and resumable at any batch without rendering
the batches before it.  Held-out scenes use seeds outside the training range; evaluation runs the model on one
frame of each and scores COCO segm and bbox AP (``amodal.training.evaluation.coco``); the score is segm AP.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from amodal.errors import ConfigError
from amodal.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
from amodal.settings import build_settings
from amodal.training.evaluation.coco import COCOEvaluator
from amodal.training.evaluation.common import rle_area, rle_encode
from amodal.training.tasks.detector_init import DetectorInit, check_init_keys, read_detector_init
from amodal.training.tasks.zoom import ZoomWindow, apply_zoom, boxes_of_masks, check_zoom_settings, draw_zoom_window
from amodal.world.render import CATEGORIES
from amodal.world.shapes import SHAPE_KINDS, SyntheticScene, SyntheticSpec
from amodal.world.street import STYLES, VideoConfig, render_frame, scene_for

RESULT_KEYS = ("AP", "AP50", "AP75", "APs", "APm")
WORLDS = ("shapes", "street")
STREET_CLASSES = tuple(name for _, name in CATEGORIES)
MASK_THRESHOLD = 0.5  # predicted mask probabilities → binary masks for COCO evaluation (as the analyzer publishes)


@dataclass(frozen=True)
class MaskRCNNTaskConfig:
    """``task_config:`` of a Mask R-CNN run on synthetic scenes.

    Data: ``input_width × input_height`` frames of scenes of ``world`` with seeds in ``[0, train_scenes)``, frame
    indices in ``[0, scene_frames)``; shapes scenes hold ``objects`` objects, street scenes 1 to ``objects`` (in
    ``street_style``; a street scene is a ``scene_frames``-frame video); objects with fewer than ``min_visible_px`` visible pixels are
    not targets.  Held-out: ``eval_scenes`` scenes with seeds from ``eval_first_seed`` (≥ ``train_scenes``).
    Model keys mirror ``MaskRCNNConfig`` (``max_detections`` is its ``box_detections_per_img``); the shorter and
    longer input side are its ``min_size``/``max_size``, so frames are never resized.  ``init_from``: Mask R-CNN
    weights to start from (ours, or a torchvision COCO state dict), ``class_map`` {their class: our class}.
    Training frames only: with probability ``zoom_prob`` a window zoomed 1 to ``zoom_max`` times (``zoom.py``), and
    a mirror with probability ``hflip_prob``; targets are taken from the masks afterwards."""

    input_height: int = 192
    input_width: int = 256
    objects: int = 5
    scene_frames: int = 400
    train_scenes: int = 1_000_000
    min_visible_px: int = 40
    eval_scenes: int = 40
    eval_first_seed: int = 10_000_000
    backbone: str = "tiny"
    tiny_widths: tuple[int, int, int, int] = (16, 32, 64, 96)
    fpn_channels: int = 64
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    box_head_dim: int = 256
    mask_head_channels: int = 64
    rpn_post_nms_train: int = 300
    rpn_post_nms_test: int = 200
    box_batch_size_per_image: int = 128
    max_detections: int = 20
    world: str = "shapes"
    street_style: str = "camera"
    init_from: str | None = None
    class_map: dict[str, str] | None = None
    zoom_prob: float = 0.0
    zoom_max: float = 2.0
    hflip_prob: float = 0.0

    def __post_init__(self) -> None:
        check_init_keys(self.init_from, self.class_map)
        check_zoom_settings(self.zoom_prob, self.zoom_max, self.hflip_prob)
        if self.world not in WORLDS:
            raise ConfigError(f"world must be one of {WORLDS}, got {self.world!r}")
        if self.street_style not in STYLES:
            raise ConfigError(f"street_style must be one of {STYLES}, got {self.street_style!r}")
        for name in ("input_height", "input_width", "objects", "scene_frames", "train_scenes", "eval_scenes",
                     "fpn_channels", "box_head_dim", "mask_head_channels", "rpn_post_nms_train", "rpn_post_nms_test",
                     "box_batch_size_per_image", "max_detections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}")
        if not isinstance(self.min_visible_px, int) or self.min_visible_px < 1:
            raise ConfigError(f"min_visible_px must be an integer ≥ 1, got {self.min_visible_px!r}")
        if not isinstance(self.eval_first_seed, int) or self.eval_first_seed < self.train_scenes:
            raise ConfigError(f"eval_first_seed ({self.eval_first_seed!r}) must be ≥ train_scenes "
                              f"({self.train_scenes}): held-out scenes must not be training scenes")
        # the scene's and the model's own checks (size, object count, backbone, anchors) with their messages
        if self.world == "shapes":
            SyntheticSpec(width=self.input_width, height=self.input_height, objects=self.objects)
        else:
            self.street_config()
        self.model_config()

    @property
    def class_names(self) -> tuple[str, ...]:
        return SHAPE_KINDS if self.world == "shapes" else STREET_CLASSES

    def street_config(self) -> VideoConfig:
        return VideoConfig(frames=self.scene_frames, width=self.input_width, height=self.input_height,
                           objects_min=1, objects_max=self.objects, style=self.street_style)

    def model_config(self) -> MaskRCNNConfig:
        return MaskRCNNConfig(
            class_names=self.class_names, backbone=self.backbone, tiny_widths=self.tiny_widths,
            fpn_channels=self.fpn_channels, min_size=min(self.input_height, self.input_width),
            max_size=max(self.input_height, self.input_width), anchor_sizes=self.anchor_sizes,
            box_detections_per_img=self.max_detections, box_head_dim=self.box_head_dim,
            mask_head_channels=self.mask_head_channels, rpn_post_nms_train=self.rpn_post_nms_train,
            rpn_post_nms_test=self.rpn_post_nms_test, box_batch_size_per_image=self.box_batch_size_per_image)


@dataclass(frozen=True)
class FrameTargets:
    """Targets of one frame: ``boxes_xyxy`` float32[N, 4] (pixels, of the visible masks), ``labels`` int64[N]
    (1-based indices into the config's ``class_names``), ``masks`` uint8[N, H, W] (visible masks)."""

    boxes_xyxy: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor

    def to(self, device: torch.device) -> "FrameTargets":
        return FrameTargets(self.boxes_xyxy.to(device), self.labels.to(device), self.masks.to(device))

    def as_torchvision(self) -> dict[str, torch.Tensor]:
        """The target dict torchvision's ``MaskRCNN`` takes."""
        return {"boxes": self.boxes_xyxy, "labels": self.labels, "masks": self.masks}


@dataclass(frozen=True)
class FrameBatch:
    """``images``: float[3, H, W] RGB in [0, 1] each; ``targets`` aligned with them."""

    images: tuple[torch.Tensor, ...]
    targets: tuple[FrameTargets, ...]

    def to(self, device: torch.device) -> "FrameBatch":
        return FrameBatch(tuple(i.to(device) for i in self.images), tuple(t.to(device) for t in self.targets))


def render_sample(config: MaskRCNNTaskConfig, seed: int, index: int,
                  window: ZoomWindow | None = None) -> tuple[torch.Tensor, FrameTargets]:
    """Frame ``index`` of scene ``seed`` of ``config.world``: (image float[3, H, W] in [0, 1], its visible-mask
    targets), seen through ``window`` when one is given."""
    if config.world == "shapes":
        scene = SyntheticScene(SyntheticSpec(width=config.input_width, height=config.input_height,
                                             objects=config.objects, seed=seed))
        truth = scene.truth(index)
        rgb, visible, names = scene.render(index), truth.visible_masks, truth.class_names
    else:
        street = scene_for(seed, 0, config.street_config())
        frame = render_frame(street, index % config.scene_frames, config.scene_frames)
        rgb, names = frame.rgb, tuple(o.category for o in street.objects)
        visible = frame.visible_ids[None] == np.arange(len(names))[:, None, None]
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    masks = torch.from_numpy(np.ascontiguousarray(visible, dtype=np.uint8)).reshape(len(names), *image.shape[-2:])
    if window is not None:
        image, masks = apply_zoom(image, masks, window)
    labels = torch.tensor([config.class_names.index(n) + 1 for n in names], dtype=torch.int64)
    keep = masks.flatten(1).sum(1) >= config.min_visible_px
    masks = masks[keep]
    return image, FrameTargets(boxes_of_masks(masks), labels[keep], masks)


def held_out_frame(image_id: int, config: MaskRCNNTaskConfig) -> int:
    """The frame evaluated in the ``image_id``-th (1-based) held-out scene."""
    return 37 * image_id % min(200, config.scene_frames)


class MaskRCNNTask:
    """``task: maskrcnn`` — see the module docstring."""

    name = "maskrcnn"

    def __init__(self, task_config: dict[str, Any]) -> None:
        self.config = build_settings(MaskRCNNTaskConfig, task_config, "task_config")
        self.model_config = self.config.model_config()
        self._init: DetectorInit | None = None
        self.init_report: dict[str, Any] | None = None
        if self.config.init_from is not None:
            self._init, self.model_config = read_detector_init(self.config.init_from, self.config.class_map,
                                                               self.model_config, self.config.class_names)

    def build_model(self) -> nn.Module:
        """A fresh model; with ``init_from``, initialised from those weights (``init_report`` says how)."""
        model = build_maskrcnn(config=self.model_config)
        if self._init is not None:
            self.init_report = self._init.apply(model, self.config.class_names)
        return model

    # ------------------------------------------------------------------ data

    def train_batches(self, *, batch_size: int, seed: int, rank: int, world_size: int,
                      start_batch: int = 0) -> Iterator[FrameBatch]:
        """Endless batches of random training frames; batch ``k`` of a rank depends only on (seed, rank, k), so
        ``start_batch`` starts there directly (exact resume) and ranks draw different frames."""
        batch = start_batch
        while True:
            rng = np.random.default_rng([seed, rank, batch])
            items = [render_sample(self.config, int(rng.integers(self.config.train_scenes)),
                                   int(rng.integers(self.config.scene_frames)), self._window(rng))
                     for _ in range(batch_size)]
            images, targets = zip(*items)
            yield FrameBatch(tuple(images), tuple(targets))
            batch += 1

    def _window(self, rng: np.random.Generator) -> ZoomWindow | None:
        c = self.config
        if c.zoom_prob == 0.0 and c.hflip_prob == 0.0:  # draws nothing: older runs' batches stay as they were
            return None
        return draw_zoom_window(rng, c.input_height, c.input_width, zoom_prob=c.zoom_prob, zoom_max=c.zoom_max,
                                hflip_prob=c.hflip_prob)

    def batch_to_device(self, batch: FrameBatch, device: torch.device) -> FrameBatch:
        return batch.to(device)

    def losses(self, model: nn.Module, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """torchvision's Mask R-CNN losses (``loss_classifier``, ``loss_box_reg``, ``loss_mask``,
        ``loss_objectness``, ``loss_rpn_box_reg``)."""
        return model(list(batch.images), [t.as_torchvision() for t in batch.targets])

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """COCO segm and bbox AP on one frame of each held-out scene: {score (= segm AP), AP, AP50, …,
        bbox/AP, bbox/AP50, …}."""
        return evaluate_shapes(model, self.config, device)

    def export_metadata(self) -> dict[str, Any]:
        c, m = self.config, self.model_config
        return {
            "model": "maskrcnn",
            "config": m.to_dict(),
            "classes": list(m.class_names),
            "input_size": [c.input_height, c.input_width],
            "normalisation": {"mean": list(m.image_mean), "std": list(m.image_std), "scale": "rgb/255"},
            "training_data": {
                "scenes": (f"amodal.world.shapes 'shapes' {c.input_width}x{c.input_height} objects={c.objects}"
                           if c.world == "shapes" else f"amodal.world.street style={c.street_style} "
                           f"{c.input_width}x{c.input_height} objects=1..{c.objects} frames={c.scene_frames}"),
                "train_seeds": [0, c.train_scenes], "frames": [0, c.scene_frames],
                "held_out_seeds": [c.eval_first_seed, c.eval_first_seed + c.eval_scenes],
                "task_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(c).items()},
            },
            "metric": "COCO segm AP (pycocotools) on held-out synthetic scenes",
            **({"initialised_from": self.init_report} if self.init_report is not None else {}),
        }


def evaluate_shapes(model: nn.Module, config: MaskRCNNTaskConfig, device: torch.device) -> dict[str, float]:
    """Run ``model`` (eval mode, restored afterwards) on frame ``held_out_frame(i)`` of each held-out scene and
    score COCO AP for masks (binarised at ``MASK_THRESHOLD``) and boxes."""
    core = model.module if hasattr(model, "module") else model
    h, w = config.input_height, config.input_width
    images, annotations, predictions = [], [], []
    was_training = core.training
    core.eval()
    try:
        with torch.inference_mode():
            for image_id in range(1, config.eval_scenes + 1):
                seed = config.eval_first_seed + image_id - 1
                image, target = render_sample(config, seed, held_out_frame(image_id, config))
                images.append({"id": image_id, "width": w, "height": h, "file_name": f"{config.world}_{seed}.png"})
                for mask, box, label in zip(target.masks.numpy(), target.boxes_xyxy.tolist(), target.labels.tolist()):
                    rle = rle_encode(mask)
                    x1, y1, x2, y2 = box
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                        "iscrowd": 0, "area": float(rle_area(rle)), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "segmentation": _json_rle(rle)})
                out = core([image.to(device)])[0]
                binary = (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy()
                for mask, box, label, score in zip(binary, out["boxes"].tolist(), out["labels"].tolist(),
                                                   out["scores"].tolist()):
                    x1, y1, x2, y2 = box
                    predictions.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": _json_rle(rle_encode(mask))})
    finally:
        core.train(was_training)
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(config.class_names)]}
    out: dict[str, float] = {}
    for iou_type, prefix in (("segm", ""), ("bbox", "bbox/")):
        evaluator = COCOEvaluator(gt, iou_type=iou_type)
        evaluator.process(predictions)
        result = evaluator.evaluate()
        out.update({f"{prefix}{k}": float(result[k]) for k in RESULT_KEYS})
    out["score"] = out["AP"]
    out["num_gt"] = float(len(annotations))
    out["num_predictions"] = float(len(predictions))
    return out


def _json_rle(rle: dict) -> dict:
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}
