"""COCO box / mask AP through pycocotools, plus AP restricted to occluded instances.

Ground truth: a COCO instances JSON dict; predictions: the COCO results list
``[{image_id, category_id, bbox | segmentation, score}]``.

Occluded-only AP (keys ``occluded/AP`` …): a GT instance is *occluded* when its ``bg_object_segmentation`` (the
occluder annotation of SYSTEMS §4) is non-empty, or — when ``occluded_key`` is given — when that annotation field is
truthy, or when its id is in ``occluded_ids``.  The evaluation is a second COCOeval run in which every non-occluded
GT instance gets ``ignore = 1`` (the same handling COCO gives crowd regions, minus crowd's many-to-one IoU): a
prediction matched to a non-occluded instance is neither TP nor FP, an unmatched prediction is a false positive,
recall counts occluded instances only.  -1 means undefined (no occluded instance in that subset), as in pycocotools.
"""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any, Iterable

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from amodal.errors import ConfigError
from amodal.training.evaluation.common import load_json

IOU_TYPES: tuple[str, ...] = ("segm", "bbox")
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class _IgnoringCOCOeval(COCOeval):
    """COCOeval that additionally ignores the GT ids in ``extra_ignored`` (pycocotools drops a GT's own
    ``ignore`` field, so the flag is set after ``_prepare``)."""

    def __init__(self, gt: COCO, dt: COCO, iou_type: str, extra_ignored: set[int]) -> None:
        super().__init__(gt, dt, iou_type)
        self.extra_ignored = extra_ignored

    def _prepare(self) -> None:
        super()._prepare()
        for anns in self._gts.values():
            for ann in anns:
                ann["ignore"] = bool(ann["ignore"]) or ann["id"] in self.extra_ignored


def is_occluded(annotation: dict[str, Any], occluded_key: str | None = None) -> bool:
    """True when the annotation's occluder polygons are non-empty (or ``annotation[occluded_key]`` is truthy)."""
    if occluded_key is not None:
        return bool(annotation.get(occluded_key, False))
    occluder = annotation.get("bg_object_segmentation")
    if isinstance(occluder, dict):
        return bool(occluder.get("counts"))
    if isinstance(occluder, list):
        return any(isinstance(p, (list, tuple)) and len(p) >= 6 for p in occluder)
    return False


def _coco_from_dict(dataset: dict[str, Any]) -> COCO:
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ConfigError(f"ground truth: missing top-level key {key!r}")
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    images = coco.imgs
    for i, ann in enumerate(coco.dataset["annotations"]):
        item = f"ground-truth annotation {ann.get('id', f'#{i}')}"
        for key in ("id", "image_id", "category_id"):
            if key not in ann:
                raise ConfigError(f"{item}: missing key {key!r}")
        if ann["image_id"] not in images:
            raise ConfigError(f"{item}: image_id {ann['image_id']} is not among the images")
        ann.setdefault("iscrowd", 0)
        if "bbox" not in ann and "segmentation" in ann:
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(coco.annToRLE(ann))]
        if "area" not in ann:
            if "segmentation" in ann:
                ann["area"] = float(mask_utils.area(coco.annToRLE(ann)))
            elif "bbox" in ann:
                ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
            else:
                raise ConfigError(f"{item}: needs 'segmentation' or 'bbox'")
    return coco


def _validate_predictions(gt: COCO, predictions: list[dict[str, Any]], iou_type: str) -> None:
    if not isinstance(predictions, list):
        raise ConfigError(f"predictions must be a list of dicts, got {type(predictions).__name__}")
    field = "segmentation" if iou_type == "segm" else "bbox"
    image_ids, category_ids = set(gt.getImgIds()), set(gt.getCatIds())
    for i, pred in enumerate(predictions):
        if not isinstance(pred, dict):
            raise ConfigError(f"prediction {i}: must be a dict, got {type(pred).__name__}")
        missing = [k for k in ("image_id", "category_id", field, "score") if k not in pred]
        if missing:
            raise ConfigError(f"prediction {i}: missing keys {missing} (iou_type {iou_type!r})")
        if pred["image_id"] not in image_ids:
            raise ConfigError(f"prediction {i}: image_id {pred['image_id']} is not in the ground truth")
        if pred["category_id"] not in category_ids:
            raise ConfigError(f"prediction {i}: category_id {pred['category_id']} is not in the ground truth")
        if field == "bbox" and (not isinstance(pred["bbox"], list) or len(pred["bbox"]) != 4):
            raise ConfigError(f"prediction {i}: bbox must be [x, y, w, h], got {pred['bbox']!r}")
        if field == "segmentation" and isinstance(pred["segmentation"], dict):
            image = gt.imgs[pred["image_id"]]
            size = list(pred["segmentation"].get("size", []))
            if size != [image["height"], image["width"]]:
                raise ConfigError(f"prediction {i}: mask size {size} does not match image {pred['image_id']} "
                                  f"of size [{image['height']}, {image['width']}]")


def _load_results(gt: COCO, predictions: list[dict[str, Any]]) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        if predictions:
            return gt.loadRes(copy.deepcopy(predictions))
        empty = COCO()
        empty.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                         "annotations": []}
        empty.createIndex()
        return empty


def _run(gt: COCO, dt: COCO, iou_type: str, ignored: set[int]) -> dict[str, float]:
    evaluator = _IgnoringCOCOeval(gt, dt, iou_type, ignored)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}


class COCOEvaluator:
    """COCO AP with an occluded-only pass: ``reset()``, ``process(predictions)``, ``evaluate()``."""

    def __init__(self, ground_truth: dict[str, Any], iou_type: str = "segm", occluded_key: str | None = None,
                 occluded_ids: Iterable[int] | None = None) -> None:
        if iou_type not in IOU_TYPES:
            raise ConfigError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
        self.iou_type = iou_type
        self._gt = _coco_from_dict(ground_truth)
        anns = self._gt.dataset["annotations"]
        if occluded_ids is not None:
            occluded = set(int(i) for i in occluded_ids)
            unknown = occluded - {a["id"] for a in anns}
            if unknown:
                raise ConfigError(f"occluded_ids {sorted(unknown)[:10]} are not annotation ids of the ground truth")
        else:
            occluded = {a["id"] for a in anns if is_occluded(a, occluded_key)}
        self._occluded = occluded
        self._not_occluded = {a["id"] for a in anns} - occluded
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, predictions: list[dict[str, Any]]) -> None:
        """Validate and store COCO results ``[{image_id, category_id, bbox|segmentation, score}]``."""
        _validate_predictions(self._gt, predictions, self.iou_type)
        self._predictions.extend(predictions)

    def evaluate(self) -> dict[str, Any]:
        """The 12 COCOeval stats, the same under ``occluded/``, and instance counts."""
        dt = _load_results(self._gt, self._predictions)
        result: dict[str, Any] = dict(_run(self._gt, dt, self.iou_type, set()))
        occluded_crowd_free = [a for a in self._gt.dataset["annotations"]
                               if a["id"] in self._occluded and not a.get("iscrowd", 0)]
        if occluded_crowd_free:
            stats = _run(self._gt, dt, self.iou_type, self._not_occluded)
        else:
            stats = {name: -1.0 for name in STAT_NAMES}
        result.update({f"occluded/{name}": value for name, value in stats.items()})
        result.update({
            "iou_type": self.iou_type,
            "num_images": len(self._gt.getImgIds()),
            "num_gt": len(self._gt.dataset["annotations"]),
            "num_gt_occluded": len(self._occluded),
            "num_predictions": len(self._predictions),
        })
        return result


def evaluate_coco(ground_truth: dict[str, Any] | str | Path, predictions: list[dict[str, Any]] | str | Path,
                  iou_type: str = "segm", occluded_key: str | None = None) -> dict[str, Any]:
    """One call: COCO AP (+ occluded-only AP) of ``predictions`` against ``ground_truth`` (dicts or JSON paths)."""
    gt = load_json(ground_truth, "ground-truth") if isinstance(ground_truth, (str, Path)) else ground_truth
    dt = load_json(predictions, "predictions") if isinstance(predictions, (str, Path)) else predictions
    if not isinstance(gt, dict):
        raise ConfigError("ground truth must be a COCO dict with images, annotations, categories")
    evaluator = COCOEvaluator(gt, iou_type=iou_type, occluded_key=occluded_key)
    evaluator.process(dt)
    return evaluator.evaluate()


