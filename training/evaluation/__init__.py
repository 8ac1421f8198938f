"""Standard evaluators (detectron2 style: ``reset() / process(...) / evaluate() -> dict`` plus one-call functions).

``coco``: COCO box/mask AP + occluded-only AP; ``vis``: YouTube-VIS/OVIS video AP with occlusion buckets;
``amodal``: EoRaS mIoU_full / mIoU_occ; ``layers``: per-layer amodal IoU and layer-order accuracy; ``reid``: CMC and
mAP.  ``amodal eval ...`` (``cli``) runs them on files.
"""
from amodal.training.evaluation.amodal import AmodalEvaluator, evaluate_amodal, evaluate_amodal_dirs
from amodal.training.evaluation.coco import COCOEvaluator, evaluate_coco
from amodal.training.evaluation.layers import LayersEvaluator, evaluate_layers
from amodal.training.evaluation.reid import ReIDEvaluator, evaluate_reid, evaluate_reid_features
from amodal.training.evaluation.vis import VideoAPConfig, VideoAPEvaluator, evaluate_vis

__all__ = [
    "AmodalEvaluator", "COCOEvaluator", "LayersEvaluator", "ReIDEvaluator", "VideoAPConfig", "VideoAPEvaluator",
    "evaluate_amodal", "evaluate_amodal_dirs", "evaluate_coco", "evaluate_layers", "evaluate_reid",
    "evaluate_reid_features", "evaluate_vis",
]
