"""Layered amodal decomposition: per-layer amodal IoU and layer-order accuracy.

Ground truth ``layers.json``: ``{"images": [{"file", "height", "width" (or "size": [H, W]), "objects": [{"layer":
int, "amodal": RLE|polygon}]}]}`` (a bare list of images is accepted; ``amodal_segmentation`` may replace
``amodal``).  Layer numbers may start anywhere: the distinct layer values of an image, sorted, are its layers 1..L
(layer 1 = unoccluded objects).  GT layer k mask = union of the amodal masks of the objects of layer k.
Predictions: ``{"images": [{"file", "layers": [RLE, ...]}]}`` in order, outermost layer first, matched by ``file``.

Definitions:

* predicted layer sequence = the given masks up to (not including) the first empty one (an empty mask is the
  model's stop signal); its length is the predicted layer count;
* ``layer_iou/k``: mean over images of IoU(pred layer k, GT layer k), counting every image where either exists (a
  missing or extra layer scores 0); ``miou_layers``: mean over all such (image, layer) pairs;
* ``count_accuracy``: fraction of images whose predicted layer count equals the GT count;
* ``object_layer_accuracy``: each GT object is assigned the predicted layer that covers the largest fraction of its
  amodal mask (ties: higher IoU with the layer, then the outer layer; no overlap: unassigned = wrong); accuracy =
  fraction of objects assigned their GT layer;
* ``order_accuracy``: fraction of images with the right layer count *and* every object assigned its GT layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amodal.errors import ConfigError
from amodal.training.evaluation.common import rle_decode, to_rle


@dataclass(frozen=True)
class LayeredImage:
    """GT of one image: ``object_masks`` bool[N, H, W] amodal masks, ``object_layers`` int[N] layer index 1..L."""

    file: str
    object_masks: np.ndarray
    object_layers: np.ndarray

    @property
    def num_layers(self) -> int:
        return int(self.object_layers.max()) if self.object_layers.size else 0

    def layer_mask(self, k: int) -> np.ndarray:
        """bool[H, W] union of the amodal masks of layer k (1-based)."""
        return self.object_masks[self.object_layers == k].any(axis=0)


def _image_size(image: dict[str, Any], item: str) -> tuple[int, int]:
    if "height" in image and "width" in image:
        return int(image["height"]), int(image["width"])
    if isinstance(image.get("size"), (list, tuple)) and len(image["size"]) == 2:
        return int(image["size"][0]), int(image["size"][1])
    raise ConfigError(f"{item}: needs 'height' and 'width' (or 'size' [H, W])")


def _images(data: Any, what: str) -> list[dict[str, Any]]:
    images = data.get("images") if isinstance(data, dict) else data
    if not isinstance(images, list):
        raise ConfigError(f"{what}: expected a list of images or {{'images': [...]}}")
    for i, image in enumerate(images):
        if not isinstance(image, dict) or "file" not in image:
            raise ConfigError(f"{what} image #{i}: must be a dict with a 'file' key")
    return images


def parse_layers_gt(data: Any) -> list[LayeredImage]:
    """GT images of a ``layers.json`` dict (layers renumbered 1..L per image)."""
    result = []
    for image in _images(data, "ground truth"):
        item = f"ground-truth image {image['file']!r}"
        height, width = _image_size(image, item)
        masks, layers = [], []
        for j, obj in enumerate(image.get("objects", [])):
            seg = obj.get("amodal", obj.get("amodal_segmentation"))
            if seg is None or "layer" not in obj:
                raise ConfigError(f"{item} object {j}: needs 'layer' and 'amodal' (RLE or polygon)")
            masks.append(rle_decode(to_rle(seg, height, width, f"{item} object {j}")))
            layers.append(int(obj["layer"]))
        ranks = {value: r + 1 for r, value in enumerate(sorted(set(layers)))}
        result.append(LayeredImage(
            file=str(image["file"]),
            object_masks=np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool),
            object_layers=np.array([ranks[v] for v in layers], dtype=np.int64)))
    return result


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def assign_layers(object_masks: np.ndarray, pred_layers: list[np.ndarray]) -> np.ndarray:
    """int[N] predicted layer (1-based, 0 = unassigned) of each bool[N, H, W] object mask, by max coverage."""
    assigned = np.zeros(len(object_masks), dtype=np.int64)
    for n, mask in enumerate(object_masks):
        area = mask.sum()
        best: tuple[float, float] = (0.0, 0.0)
        for k, layer in enumerate(pred_layers, start=1):
            cover = float(np.logical_and(mask, layer).sum() / area) if area else 0.0
            key = (cover, _iou(mask, layer))
            if cover > 0 and key > best:
                best, assigned[n] = key, k
    return assigned


@dataclass
class _Counts:
    layer_iou_sum: dict[int, float] = field(default_factory=dict)
    layer_iou_num: dict[int, int] = field(default_factory=dict)
    images: int = 0
    count_correct: int = 0
    order_correct: int = 0
    objects: int = 0
    objects_correct: int = 0


class LayersEvaluator:
    """Per-layer IoU and layer-order accuracy: ``reset()``, ``process(gt_image, pred_layers)``, ``evaluate()``."""

    def __init__(self) -> None:
        self._c = _Counts()

    def reset(self) -> None:
        self._c = _Counts()

    def process(self, gt: LayeredImage, pred_layers: list[np.ndarray]) -> None:
        """Add one image: ``pred_layers`` = bool[H, W] masks in order (truncated at the first empty one)."""
        size = gt.object_masks.shape[1:]
        sequence = []
        for k, layer in enumerate(pred_layers):
            layer = np.asarray(layer) > 0.5
            if layer.shape != size:
                raise ConfigError(f"image {gt.file!r}: predicted layer {k + 1} has size {list(layer.shape)}, "
                                  f"the image is {list(size)}")
            if not layer.any():
                break
            sequence.append(layer)
        c = self._c
        c.images += 1
        num_gt, num_pred = gt.num_layers, len(sequence)
        for k in range(1, max(num_gt, num_pred) + 1):
            gt_mask = gt.layer_mask(k) if k <= num_gt else np.zeros(size, dtype=bool)
            pred_mask = sequence[k - 1] if k <= num_pred else np.zeros(size, dtype=bool)
            c.layer_iou_sum[k] = c.layer_iou_sum.get(k, 0.0) + _iou(gt_mask, pred_mask)
            c.layer_iou_num[k] = c.layer_iou_num.get(k, 0) + 1
        assigned = assign_layers(gt.object_masks, sequence)
        correct = int((assigned == gt.object_layers).sum())
        c.objects += len(assigned)
        c.objects_correct += correct
        c.count_correct += int(num_gt == num_pred)
        c.order_correct += int(num_gt == num_pred and correct == len(assigned))

    def evaluate(self) -> dict[str, Any]:
        c = self._c
        result: dict[str, Any] = {}
        total = sum(c.layer_iou_num.values())
        result["miou_layers"] = sum(c.layer_iou_sum.values()) / total if total else -1.0
        for k in sorted(c.layer_iou_sum):
            result[f"layer_iou/{k}"] = c.layer_iou_sum[k] / c.layer_iou_num[k]
        result["count_accuracy"] = c.count_correct / c.images if c.images else -1.0
        result["object_layer_accuracy"] = c.objects_correct / c.objects if c.objects else -1.0
        result["order_accuracy"] = c.order_correct / c.images if c.images else -1.0
        result["num_images"] = c.images
        result["num_objects"] = c.objects
        return result


def evaluate_layers(ground_truth: Any, predictions: Any) -> dict[str, Any]:
    """One call over parsed ``layers.json`` and predictions JSON; every GT image needs a prediction."""
    gt_images = parse_layers_gt(ground_truth)
    preds: dict[str, dict[str, Any]] = {}
    for image in _images(predictions, "predictions"):
        preds[str(image["file"])] = image
    known = {g.file for g in gt_images}
    unknown = sorted(set(preds) - known)
    if unknown:
        raise ConfigError(f"predictions for images not in the ground truth: {unknown[:10]}")
    evaluator = LayersEvaluator()
    for gt in gt_images:
        if gt.file not in preds:
            raise ConfigError(f"no prediction for ground-truth image {gt.file!r}")
        layers = preds[gt.file].get("layers")
        if not isinstance(layers, list):
            raise ConfigError(f"prediction for {gt.file!r}: 'layers' must be a list of RLE masks")
        height, width = gt.object_masks.shape[1:]
        masks = [rle_decode(to_rle(seg, height, width, f"prediction for {gt.file!r} layer {k + 1}"))
                 for k, seg in enumerate(layers)]
        evaluator.process(gt, masks)
    return evaluator.evaluate()
