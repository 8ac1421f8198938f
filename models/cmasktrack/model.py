"""CMaskTrack R-CNN: Mask R-CNN (torchvision parts) + temporal feature calibration + MaskTrack tracking head.

Data flow of a training pair (current frame, reference frame within ±5 frames)::

    features     = backbone(current)          (FPN levels "0"…"3", "pool")
    ref_features = backbone(reference)        (no gradient into the backbone from the reference)
    proposals    = rpn(features)                               RPN: uncalibrated features
    calibrated   = calibration(features, ref_features)         every level, one shared module
    box / mask heads on calibrated; track head on uncalibrated features (both frames)

``forward(batch) -> PairOutputs`` (raw tensors on sampled proposals), ``cmasktrack_losses(outputs)`` (module-level,
``loss_*`` keys), and for inference ``extract`` + ``detect(images, features, ref_features) -> list[FrameDetections]``
(post-processed to the input resolution).  Online tracking over a stream lives in ``online.py``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from amodal.errors import ConfigError
from amodal.models.cmasktrack.calibration import TemporalCalibration
from amodal.models.cmasktrack.config import CMaskTrackConfig
from amodal.models.cmasktrack.track_head import TrackHead, track_loss, track_scores, track_targets
from amodal.models.maskrcnn import build_maskrcnn
from amodal.models.weights import load_model_record, load_state_strict


@dataclass
class InstanceTargets:
    """Ground truth of one frame: boxes float[N, 4] (x1y1x2y2 px), labels int64[N] (1…K), masks uint8[N, H, W],
    instance_ids int64[N] (the same id for the same object in every frame of a video)."""

    boxes_xyxy: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    instance_ids: torch.Tensor

    def to(self, device: torch.device) -> "InstanceTargets":
        return InstanceTargets(self.boxes_xyxy.to(device), self.labels.to(device), self.masks.to(device),
                               self.instance_ids.to(device))

    def as_torchvision(self) -> dict[str, torch.Tensor]:
        return {"boxes": self.boxes_xyxy, "labels": self.labels, "masks": self.masks}


@dataclass
class PairBatch:
    """B (current, reference) frame pairs: images float[3, H, W] RGB in [0, 1], same size within a pair."""

    images: list[torch.Tensor]
    ref_images: list[torch.Tensor]
    targets: list[InstanceTargets]
    ref_targets: list[InstanceTargets]

    def to(self, device: torch.device) -> "PairBatch":
        return PairBatch([i.to(device) for i in self.images], [i.to(device) for i in self.ref_images],
                         [t.to(device) for t in self.targets], [t.to(device) for t in self.ref_targets])


@dataclass
class PairOutputs:
    """Raw outputs of a training pair (all on the ``transform``-resized images).

    rpn_losses: the RPN's objectness / box losses (torchvision computes them inside the RPN);
    class_logits float[ΣS, K+1], box_regression float[ΣS, 4(K+1)] for S sampled proposals per image with
    sampled_labels int64[S] and regression_targets float[S, 4]; mask_logits float[ΣP, K+1, 28, 28] for the P
    positive proposals ``positive_boxes`` float[P, 4] matched to GT ``positive_matched`` int64[P];
    track_logits float[Pᵢ, Mᵢ + 1] per image against the Mᵢ reference instances, track_targets int64[Pᵢ];
    targets: the resized ground truth (torchvision dicts: boxes, labels, masks)."""

    rpn_losses: dict[str, torch.Tensor]
    class_logits: torch.Tensor
    box_regression: torch.Tensor
    sampled_labels: list[torch.Tensor]
    regression_targets: list[torch.Tensor]
    mask_logits: torch.Tensor
    positive_boxes: list[torch.Tensor]
    positive_matched: list[torch.Tensor]
    track_logits: list[torch.Tensor]
    track_targets: list[torch.Tensor]
    targets: list[dict[str, torch.Tensor]] = field(default_factory=list)


@dataclass
class FrameDetections:
    """Detections of one frame at its input resolution: boxes float[N, 4] (x1y1x2y2 px), scores float[N],
    labels int64[N] (1…K), masks float[N, H, W] (probabilities), embeddings float[N, D] (track head)."""

    boxes_xyxy: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    embeddings: torch.Tensor


def cmasktrack_losses(outputs: PairOutputs) -> dict[str, torch.Tensor]:
    """Scalar losses: loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask, loss_track."""
    loss_cls, loss_box = fastrcnn_loss(outputs.class_logits, outputs.box_regression, outputs.sampled_labels,
                                       outputs.regression_targets)
    gt_masks = [t["masks"] for t in outputs.targets]
    gt_labels = [t["labels"] for t in outputs.targets]
    if sum(b.shape[0] for b in outputs.positive_boxes) == 0:
        loss_mask = outputs.mask_logits.sum() * 0.0
    else:
        loss_mask = maskrcnn_loss(outputs.mask_logits, outputs.positive_boxes, gt_masks, gt_labels,
                                  outputs.positive_matched)
    return {
        "loss_objectness": outputs.rpn_losses["loss_objectness"],
        "loss_rpn_box_reg": outputs.rpn_losses["loss_rpn_box_reg"],
        "loss_classifier": loss_cls,
        "loss_box_reg": loss_box,
        "loss_mask": loss_mask,
        "loss_track": track_loss(outputs.track_logits, outputs.track_targets),
    }


class CMaskTrackRCNN(nn.Module):
    """CMaskTrack R-CNN from parts; a part left ``None`` is built from ``config`` (torchvision's Mask R-CNN parts).

    ``config.calibration = False`` turns calibration off: the box and mask heads then see the raw features.
    """

    def __init__(self, config: CMaskTrackConfig, *, backbone: nn.Module | None = None,
                 rpn: RegionProposalNetwork | None = None, roi_heads: RoIHeads | None = None,
                 transform: GeneralizedRCNNTransform | None = None, calibration: TemporalCalibration | None = None,
                 track_head: TrackHead | None = None) -> None:
        super().__init__()
        self.config = config
        if backbone is None or rpn is None or roi_heads is None or transform is None:
            base = build_maskrcnn(config=config.detector)
            backbone = backbone if backbone is not None else base.backbone
            rpn = rpn if rpn is not None else base.rpn
            roi_heads = roi_heads if roi_heads is not None else base.roi_heads
            transform = transform if transform is not None else base.transform
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        channels = backbone.out_channels
        if config.calibration:
            self.calibration = calibration if calibration is not None else TemporalCalibration(
                channels, config.calibration_channels, config.patch_size, config.dilation_patch,
                config.correlation_backend)
        else:
            self.calibration = None
        self.track_head = track_head if track_head is not None else TrackHead(
            channels, config.track_dim, normalize=config.track_normalize)

    # ------------------------------------------------------------------ shared pieces

    def extract(self, images: list[torch.Tensor]) -> tuple[ImageList, "OrderedDict[str, torch.Tensor]"]:
        """Normalised, resized, padded batch and its FPN features {level: float[B, C, h, w]}."""
        image_list, _ = self.transform(images)
        return image_list, self.backbone(image_list.tensors)

    def calibrate(self, features: "OrderedDict[str, torch.Tensor]",
                  ref_features: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        """Calibrated features for the box and mask heads (the input unchanged when calibration is off)."""
        if self.calibration is None:
            return features
        return self.calibration.calibrate_levels(features, ref_features)

    # ------------------------------------------------------------------ training

    def forward(self, batch: PairBatch) -> PairOutputs:
        """Raw outputs of B training pairs (see ``PairOutputs``); needs ground truth for both frames."""
        if not (len(batch.images) == len(batch.ref_images) == len(batch.targets) == len(batch.ref_targets)):
            raise ConfigError(f"PairBatch: {len(batch.images)} images, {len(batch.ref_images)} references, "
                              f"{len(batch.targets)} targets, {len(batch.ref_targets)} reference targets")
        images, targets = self.transform(batch.images, [t.as_torchvision() for t in batch.targets])
        with torch.no_grad():
            ref_images, ref_targets = self.transform(batch.ref_images, [t.as_torchvision() for t in batch.ref_targets])
        if images.tensors.shape != ref_images.tensors.shape:
            raise ConfigError(f"PairBatch: current batch {tuple(images.tensors.shape)} and reference batch "
                              f"{tuple(ref_images.tensors.shape)} differ in size")
        features = self.backbone(images.tensors)
        with torch.no_grad():
            ref_features = self.backbone(ref_images.tensors)
        proposals, rpn_losses = self.rpn(images, features, targets)
        calibrated = self.calibrate(features, ref_features)
        heads = self.roi_heads
        proposals, matched, labels, regression_targets = heads.select_training_samples(proposals, targets)
        box_features = heads.box_head(heads.box_roi_pool(calibrated, proposals, images.image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        positive = [lab > 0 for lab in labels]
        pos_boxes = [p[m] for p, m in zip(proposals, positive)]
        pos_matched = [i[m] for i, m in zip(matched, positive)]
        mask_features = heads.mask_head(heads.mask_roi_pool(calibrated, pos_boxes, images.image_sizes))
        mask_logits = heads.mask_predictor(mask_features)
        # tracking: positive proposals (IoU ≥ fg threshold) of the current frame vs the reference GT instances
        embeddings = self.track_head(features, pos_boxes, images.image_sizes)
        ref_embeddings = self.track_head(ref_features, [t["boxes"] for t in ref_targets], ref_images.image_sizes)
        track_logits, track_tgts = [], []
        cur_splits = embeddings.split([b.shape[0] for b in pos_boxes])
        ref_splits = ref_embeddings.split([t["boxes"].shape[0] for t in ref_targets])
        for i, (emb, ref_emb) in enumerate(zip(cur_splits, ref_splits)):
            track_logits.append(track_scores(emb, ref_emb, self.config.track_logit_scale))
            ids = batch.targets[i].instance_ids[pos_matched[i]]
            track_tgts.append(track_targets(ids, batch.ref_targets[i].instance_ids))
        return PairOutputs(rpn_losses, class_logits, box_regression, labels, regression_targets, mask_logits,
                           pos_boxes, pos_matched, track_logits, track_tgts, targets)

    def losses(self, outputs: PairOutputs) -> dict[str, torch.Tensor]:
        """``cmasktrack_losses(outputs)``."""
        return cmasktrack_losses(outputs)

    # ------------------------------------------------------------------ inference

    def detect(self, images: ImageList, features: "OrderedDict[str, torch.Tensor]",
               ref_features: "OrderedDict[str, torch.Tensor]",
               original_sizes: list[tuple[int, int]]) -> list[FrameDetections]:
        """Detections of a batch from its features and each image's reference features (same shapes; pass the
        features themselves when there is no past frame).  Boxes and masks at ``original_sizes`` (H, W)."""
        heads = self.roi_heads
        proposals, _ = self.rpn(images, features)
        calibrated = self.calibrate(features, ref_features)
        box_features = heads.box_head(heads.box_roi_pool(calibrated, proposals, images.image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals,
                                                             images.image_sizes)
        mask_logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(calibrated, boxes, images.image_sizes)))
        mask_probs = maskrcnn_inference(mask_logits, labels)
        embeddings = self.track_head(features, boxes, images.image_sizes).split([b.shape[0] for b in boxes])
        raw = [{"boxes": b, "scores": s, "labels": lab, "masks": m} for b, s, lab, m in zip(boxes, scores, labels, mask_probs)]
        results = self.transform.postprocess(raw, images.image_sizes, original_sizes)
        return [FrameDetections(r["boxes"], r["scores"], r["labels"], r["masks"][:, 0], e)
                for r, e in zip(results, embeddings)]

    def postprocess(self, detections: FrameDetections, score_threshold: float = 0.05) -> FrameDetections:
        """Detections with score ≥ ``score_threshold``, masks binarised at ``config.mask_threshold`` (bool)."""
        keep = detections.scores >= score_threshold
        return FrameDetections(detections.boxes_xyxy[keep], detections.scores[keep], detections.labels[keep],
                               detections.masks[keep] > self.config.mask_threshold, detections.embeddings[keep])


def build_cmasktrack(*, config: CMaskTrackConfig) -> CMaskTrackRCNN:
    """A freshly initialised CMaskTrack R-CNN."""
    return CMaskTrackRCNN(config)


@dataclass
class LoadedCMaskTrack:
    model: CMaskTrackRCNN
    config: CMaskTrackConfig
    metadata: dict[str, Any]


def load_cmasktrack(path: str | Path) -> LoadedCMaskTrack:
    """Rebuild a CMaskTrack R-CNN from a safetensors file whose metadata record holds ``config`` (``to_dict``).
    Raises CheckpointError for a missing/corrupt file, a missing or invalid config, or mismatched tensors."""
    state, metadata, config = load_model_record(path, CMaskTrackConfig, "CMaskTrack R-CNN")
    model = build_cmasktrack(config=config)
    load_state_strict(model, state, path)
    return LoadedCMaskTrack(model.eval(), config, metadata)
