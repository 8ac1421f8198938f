"""Bilayer prohibited-item segmenter for X-ray scans (SYSTEMS §4; Occ, built on RSPrompter-anchor).

Data flow of a batch::

    x          = transform(images)                   longer side → S, normalised, zero-padded to S × S
    embedding  = sam.vision_encoder(x)               frozen SAM ViT + LoRA: float[B, E, S/16, S/16]
    features   = SimpleFPN(embedding)                levels "0"…"3", "pool" (strides 4 … 64)
    proposals  = RPN(features); boxes = box head     torchvision parts, 12 PIDray classes + background
    prompts    = AnchorPrompter(RoIAlign 14 × 14)    T sparse tokens per RoI; dense prompt = SAM's no-mask embedding
    occluder   = occluder_decoder(prompts)           mask of what lies over the item + updated tokens / embedding
    target     = target_decoder(prompts + occluder residuals)

Both decoders start as copies of SAM's mask decoder; ``bilayer=False`` drops the occluder decoder (ablation).
Masks are predicted over the whole padded input (4× the embedding's resolution), as SAM predicts them.

Input (``scanner_image_to_tensor``): an 8-bit pseudo-colour scan uint8[H, W, 3] becomes value / 255; a 16-bit
grayscale transmission scan uint16[H, W] keeps its full range as value / 65535 replicated to three channels.
Either is float RGB in [0, 1], then normalised with ``image_mean`` / ``image_std`` (ImageNet's, SAM's own).
"""
from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign, roi_align

from amodal.errors import CheckpointError, ConfigError
from amodal.models.weights import load_model_record, load_state_strict
from amodal.models.xray.config import XraySamConfig
from amodal.models.xray.sam import (
    DecoderOutput,
    add_lora,
    build_sam,
    config_with_sam_architecture,
    image_positional_embedding,
    run_mask_decoder,
)

FPN_LEVELS = ("0", "1", "2", "3")


def scanner_image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """A scan as the model's input float[3, H, W] in [0, 1]: uint8[H, W, 3] pseudo-colour → value / 255,
    uint16[H, W] (or [H, W, 1]) grayscale transmission → value / 65535 on all three channels."""
    array = np.asarray(image)
    if array.dtype == np.uint16:
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise ConfigError(f"a 16-bit scan must be grayscale [H, W], got shape {array.shape}")
        gray = torch.from_numpy(array.astype(np.float32) / 65535.0)
        return gray.unsqueeze(0).expand(3, -1, -1).contiguous()
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    raise ConfigError(f"a scan must be uint8[H, W, 3] or uint16[H, W], got {array.dtype}{list(array.shape)}")


@dataclass
class XrayTargets:
    """Ground truth of one scan: boxes float[N, 4] (x1y1x2y2 px), labels int64[N] (1…K), masks uint8[N, H, W],
    occluder_masks uint8[N, H, W] (the union of the items lying over each item; all zero when none does)."""

    boxes_xyxy: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    occluder_masks: torch.Tensor

    def to(self, device: torch.device) -> "XrayTargets":
        return XrayTargets(*(t.to(device) for t in (self.boxes_xyxy, self.labels, self.masks, self.occluder_masks)))


@dataclass
class XrayBatch:
    """B scans float[3, H, W] in [0, 1] (``scanner_image_to_tensor``) and their ground truth."""

    images: list[torch.Tensor]
    targets: list[XrayTargets]

    def to(self, device: torch.device) -> "XrayBatch":
        return XrayBatch([i.to(device) for i in self.images], [t.to(device) for t in self.targets])


@dataclass
class XrayTrainOutputs:
    """Raw training outputs (on the S × S padded input).

    rpn_losses: torchvision's RPN losses; class_logits float[ΣS, K+1] and box_regression float[ΣS, 4(K+1)] for
    the sampled proposals with sampled_labels / regression_targets per image; for the P positive proposals sent
    to the decoders: mask_logits float[P, 4h, 4w], mask_targets float[P, S, S] (their matched item's mask),
    occluder_logits float[P, 4h, 4w] (None without the occluder branch), occluder_targets float[P, S, S] and the
    proposals' boxes mask_boxes_xyxy float[P, 4] (input px)."""

    rpn_losses: dict[str, torch.Tensor]
    class_logits: torch.Tensor
    box_regression: torch.Tensor
    sampled_labels: list[torch.Tensor]
    regression_targets: list[torch.Tensor]
    mask_logits: torch.Tensor
    mask_targets: torch.Tensor
    occluder_logits: torch.Tensor | None
    occluder_targets: torch.Tensor
    mask_boxes_xyxy: torch.Tensor


@dataclass
class XrayDetections:
    """Detections of one scan at its own resolution: boxes float[N, 4] (x1y1x2y2 px), scores float[N], labels
    int64[N] (1…K), masks float[N, H, W] and occluder_masks float[N, H, W] (probabilities; the occluder masks are
    zero without the occluder branch), occlusion float[N] (share of each item's mask under its occluder mask)."""

    boxes_xyxy: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    occluder_masks: torch.Tensor
    occlusion: torch.Tensor


def mask_bce(logits: torch.Tensor, targets: torch.Tensor, boxes_xyxy: torch.Tensor | None = None,
             box_size: int = 28) -> torch.Tensor:
    """Mean BCE of low-resolution logits float[P, h', w'] against targets float[P, S, S] over the padded input.

    Without ``boxes_xyxy`` the logits are upsampled (bilinear) to S × S and scored everywhere (the paper); with
    boxes float[P, 4] (input px) logits and targets are both RoIAligned to ``box_size`` × ``box_size`` inside each
    box and scored there."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    if boxes_xyxy is None:
        up = F.interpolate(logits[:, None], size=targets.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return F.binary_cross_entropy_with_logits(up, targets)
    rois = torch.cat([torch.arange(len(boxes_xyxy), device=boxes_xyxy.device, dtype=boxes_xyxy.dtype)[:, None],
                      boxes_xyxy], dim=1)
    scale = logits.shape[-1] / targets.shape[-1]
    crops = roi_align(logits[:, None], rois, box_size, spatial_scale=scale, sampling_ratio=2, aligned=True)
    wanted = roi_align(targets[:, None], rois, box_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return F.binary_cross_entropy_with_logits(crops, wanted)


def xray_losses(outputs: XrayTrainOutputs, occluder_weight: float = 0.25,
                mask_loss_region: str = "image") -> dict[str, torch.Tensor]:
    """loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg, loss_mask (BCE on the items' masks) and,
    with the occluder branch, loss_occluder = ``occluder_weight`` × BCE on the occluder masks; masks scored over
    the whole input (``mask_loss_region`` ``image``) or inside each RoI's box (``box``)."""
    boxes = outputs.mask_boxes_xyxy if mask_loss_region == "box" else None
    loss_cls, loss_box = fastrcnn_loss(outputs.class_logits, outputs.box_regression, outputs.sampled_labels,
                                       outputs.regression_targets)
    losses = {
        "loss_objectness": outputs.rpn_losses["loss_objectness"],
        "loss_rpn_box_reg": outputs.rpn_losses["loss_rpn_box_reg"],
        "loss_classifier": loss_cls,
        "loss_box_reg": loss_box,
        "loss_mask": mask_bce(outputs.mask_logits, outputs.mask_targets, boxes),
    }
    if outputs.occluder_logits is not None:
        losses["loss_occluder"] = occluder_weight * mask_bce(outputs.occluder_logits, outputs.occluder_targets, boxes)
    return losses


def occlusion_levels(masks: torch.Tensor, occluder_masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """float[N]: the share of each binarised item mask float[N, H, W] covered by its binarised occluder mask."""
    item = masks > threshold
    covered = (item & (occluder_masks > threshold)).flatten(1).sum(1)
    return covered.float() / item.flatten(1).sum(1).clamp(min=1).float()


def sine_positional_encoding(channels: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """DETR's sine encoding of normalised cell centres: float[1, channels, height, width] (half for y, half for x),
    added to the FPN features before the prompter's RoIAlign, as RSPrompter does, so prompts carry position."""
    quarter = channels // 4
    freqs = 10000.0 ** (-torch.arange(quarter, device=like.device, dtype=torch.float32) / max(quarter, 1))
    y = (torch.arange(height, device=like.device, dtype=torch.float32) + 0.5) / height * 2 * torch.pi
    x = (torch.arange(width, device=like.device, dtype=torch.float32) + 0.5) / width * 2 * torch.pi
    ey = torch.cat([torch.sin(y[:, None] * freqs), torch.cos(y[:, None] * freqs)], 1)  # [h, 2q]
    ex = torch.cat([torch.sin(x[:, None] * freqs), torch.cos(x[:, None] * freqs)], 1)  # [w, 2q]
    pe = torch.cat([ey[:, None, :].expand(height, width, -1), ex[None, :, :].expand(height, width, -1)], dim=2)
    pe = F.pad(pe, (0, channels - pe.shape[-1]))
    return pe.permute(2, 0, 1).unsqueeze(0).to(like.dtype)


class SimpleFPN(nn.Module):
    """ViTDet's simple pyramid from the encoder's single stride-16 map float[B, E, h, w] → {"0": stride 4, "1": 8,
    "2": 16, "3": 32, "pool": 64}, each float[B, out_channels, ·, ·]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        e = in_channels
        self.scales = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(e, e // 2, 2, 2), nn.GroupNorm(1, e // 2), nn.GELU(),
                          nn.ConvTranspose2d(e // 2, e // 4, 2, 2)),
            nn.ConvTranspose2d(e, e // 2, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ])
        widths = (e // 4, e // 2, e, e)
        self.outputs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(w, out_channels, 1), nn.GroupNorm(1, out_channels),
                          nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.GroupNorm(1, out_channels))
            for w in widths])
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        levels = OrderedDict((name, out(scale(x))) for name, scale, out in zip(FPN_LEVELS, self.scales, self.outputs))
        levels["pool"] = F.max_pool2d(levels["3"], 1, 2)
        return levels


class AnchorPrompter(nn.Module):
    """RSPrompter's anchor prompter: RoI features float[R, C, r, r] → conv stride 2 + BN + ReLU → MLP →
    sparse prompt tokens float[R, 1, T, E], each token sin(even half) + odd half of a 2E vector."""

    def __init__(self, in_channels: int, roi_size: int, hidden: int, tokens: int, embed_dim: int) -> None:
        super().__init__()
        self.tokens, self.embed_dim = tokens, embed_dim
        side = (roi_size + 1) // 2
        self.conv = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Flatten(1), nn.Linear(in_channels * side * side, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, tokens * 2 * embed_dim))

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(self.conv(roi_features)).view(-1, self.tokens, 2 * self.embed_dim)
        return (torch.sin(x[..., 0::2]) + x[..., 1::2]).unsqueeze(1)


class XraySam(nn.Module):
    """The bilayer segmenter from parts; ``sam`` (a transformers ``SamModel``) gives the encoder, the positional
    encoding, the no-mask embedding and the mask decoder that both decoders start from.  A part left ``None`` is
    built from ``config``."""

    def __init__(self, config: XraySamConfig, *, sam: nn.Module | None = None, fpn: SimpleFPN | None = None,
                 rpn: RegionProposalNetwork | None = None, roi_heads: RoIHeads | None = None,
                 prompter: AnchorPrompter | None = None) -> None:
        super().__init__()
        self.config = config
        sam = sam if sam is not None else build_sam(config)
        e, c = config.embed_dim, config.fpn_channels
        self.transform = GeneralizedRCNNTransform(config.image_size, config.image_size, list(config.image_mean),
                                                  list(config.image_std), size_divisible=config.image_size)
        self.encoder = add_lora(sam.vision_encoder, config)
        self.positional = sam.shared_image_embedding
        self.positional.requires_grad_(False)
        self.no_mask_embed = sam.prompt_encoder.no_mask_embed
        self.occluder_decoder = copy.deepcopy(sam.mask_decoder) if config.bilayer else None
        self.target_decoder = sam.mask_decoder
        self.fpn = fpn if fpn is not None else SimpleFPN(e, c)
        if rpn is None:
            anchors = AnchorGenerator(tuple((s,) for s in config.anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
            rpn = RegionProposalNetwork(
                anchors, RPNHead(c, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256,
                positive_fraction=0.5,
                pre_nms_top_n={"training": config.rpn_pre_nms_train, "testing": config.rpn_pre_nms_test},
                post_nms_top_n={"training": config.rpn_post_nms_train, "testing": config.rpn_post_nms_test},
                nms_thresh=0.7)
        self.rpn = rpn
        if roi_heads is None:
            roi_heads = RoIHeads(
                MultiScaleRoIAlign(list(FPN_LEVELS), 7, 2), TwoMLPHead(c * 49, config.box_head_dim),
                FastRCNNPredictor(config.box_head_dim, config.num_classes), fg_iou_thresh=0.5, bg_iou_thresh=0.5,
                batch_size_per_image=config.box_batch_size_per_image,
                positive_fraction=config.box_positive_fraction, bbox_reg_weights=None,
                score_thresh=config.box_score_thresh, nms_thresh=config.box_nms_thresh,
                detections_per_img=config.box_detections_per_img)
        self.roi_heads = roi_heads
        self.prompt_pool = MultiScaleRoIAlign(list(FPN_LEVELS), config.prompt_roi_size, 2)
        self.prompter = prompter if prompter is not None else AnchorPrompter(
            c, config.prompt_roi_size, config.prompt_hidden, config.prompt_tokens, e)

    # ------------------------------------------------------------------ shared pieces

    def encode(self, images: ImageList) -> tuple[torch.Tensor, "OrderedDict[str, torch.Tensor]"]:
        """(SAM image embedding float[B, E, h, w], FPN levels) of a transformed batch."""
        embedding = self.encoder(images.tensors).last_hidden_state
        return embedding, self.fpn(embedding)

    def decode(self, embedding: torch.Tensor, features: "OrderedDict[str, torch.Tensor]", boxes: list[torch.Tensor],
               image_sizes: list[tuple[int, int]]) -> tuple[DecoderOutput, DecoderOutput | None]:
        """(target, occluder) decoder outputs for ``boxes`` float[Rᵢ, 4] per image (occluder None when single)."""
        counts = torch.tensor([b.shape[0] for b in boxes], device=embedding.device)
        if int(counts.sum()) == 0:  # no RoI anywhere in the batch: attention kernels reject empty batches
            return self._empty_decode(embedding), (self._empty_decode(embedding) if self.occluder_decoder else None)
        located = OrderedDict((k, v + sine_positional_encoding(v.shape[1], v.shape[-2], v.shape[-1], v))
                              for k, v in features.items())  # RoI features that know where the RoI is
        prompts = self.prompter(self.prompt_pool(located, boxes, image_sizes))  # [R, 1, T, E]
        per_roi = embedding.repeat_interleave(counts, dim=0)
        r, e, h, w = per_roi.shape
        positional = image_positional_embedding(self.positional, h).to(per_roi.dtype).expand(r, -1, -1, -1)
        dense = self.no_mask_embed.weight.reshape(1, e, 1, 1).expand(r, e, h, w)
        occluder = None
        if self.occluder_decoder is not None:
            occluder = run_mask_decoder(self.occluder_decoder, per_roi, positional, prompts, dense)
        target = run_mask_decoder(self.target_decoder, per_roi, positional, prompts, dense, residual=occluder)
        return target, occluder

    def _empty_decode(self, embedding: torch.Tensor) -> DecoderOutput:
        _, e, h, w = embedding.shape
        tokens = 1 + self.target_decoder.num_mask_tokens + self.config.prompt_tokens
        return DecoderOutput(embedding.new_zeros((0, 4 * h, 4 * w)), embedding.new_zeros((0,)),
                             embedding.new_zeros((0, 1, tokens, e)), embedding.new_zeros((0, e, h, w)))

    # ------------------------------------------------------------------ training

    def forward(self, batch: XrayBatch) -> XrayTrainOutputs:
        """Raw training outputs of a batch (see ``XrayTrainOutputs``); needs the ground truth."""
        if len(batch.images) != len(batch.targets):
            raise ConfigError(f"XrayBatch: {len(batch.images)} images but {len(batch.targets)} targets")
        counts = [t.boxes_xyxy.shape[0] for t in batch.targets]
        stacked = [{"boxes": t.boxes_xyxy, "labels": t.labels, "masks": torch.cat([t.masks, t.occluder_masks])}
                   for t in batch.targets]
        images, resized = self.transform(batch.images, stacked)
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in resized]
        embedding, features = self.encode(images)
        proposals, rpn_losses = self.rpn(images, features, targets)
        heads = self.roi_heads
        proposals, matched, labels, regression_targets = heads.select_training_samples(proposals, targets)
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, images.image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        size = images.tensors.shape[-2:]
        pos_boxes, mask_targets, occluder_targets = [], [], []
        for props, idx, lab, t, n in zip(proposals, matched, labels, resized, counts):
            keep = torch.nonzero(lab > 0).flatten()[: self.config.max_mask_rois]  # the sampler already shuffled
            pos_boxes.append(props[keep])
            masks = t["masks"].float()
            masks = F.pad(masks, (0, size[1] - masks.shape[-1], 0, size[0] - masks.shape[-2]))
            mask_targets.append(masks[:n][idx[keep]])
            occluder_targets.append(masks[n:][idx[keep]])
        target, occluder = self.decode(embedding, features, pos_boxes, images.image_sizes)
        return XrayTrainOutputs(rpn_losses, class_logits, box_regression, labels, regression_targets,
                                target.mask_logits, torch.cat(mask_targets),
                                occluder.mask_logits if occluder is not None else None, torch.cat(occluder_targets),
                                torch.cat(pos_boxes))

    def losses(self, outputs: XrayTrainOutputs) -> dict[str, torch.Tensor]:
        """``xray_losses`` with the configured occluder weight and mask loss region."""
        return xray_losses(outputs, self.config.occluder_loss_weight, self.config.mask_loss_region)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def detect(self, images: list[torch.Tensor]) -> list[XrayDetections]:
        """Detections of scans float[3, H, W] in [0, 1], at each scan's own resolution."""
        original_sizes = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
        batch, _ = self.transform(images)
        embedding, features = self.encode(batch)
        proposals, _ = self.rpn(batch, features)
        heads = self.roi_heads
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        boxes, scores, labels = heads.postprocess_detections(class_logits, box_regression, proposals,
                                                             batch.image_sizes)
        target, occluder = self.decode(embedding, features, boxes, batch.image_sizes)
        size = batch.tensors.shape[-2:]
        mask_probs = torch.sigmoid(target.mask_logits).split([b.shape[0] for b in boxes])
        occ_probs = (torch.sigmoid(occluder.mask_logits).split([b.shape[0] for b in boxes]) if occluder is not None
                     else [torch.zeros_like(m) for m in mask_probs])
        out = []
        for b, s, lab, m, o, resized, original in zip(boxes, scores, labels, mask_probs, occ_probs,
                                                      batch.image_sizes, original_sizes):
            m, o = (_to_original(x, size, resized, original) for x in (m, o))
            b = resize_boxes(b, resized, original)
            if self.config.mask_loss_region == "box":
                inside = boxes_to_masks(b, original).to(m.dtype)
                m, o = m * inside, o * inside
            out.append(XrayDetections(b, s, lab, m, o, occlusion_levels(m, o, self.config.mask_threshold)))
        return out


def boxes_to_masks(boxes_xyxy: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """bool[N, H, W]: the pixels whose centres lie inside each box float[N, 4] (x1y1x2y2 px)."""
    ys = torch.arange(size_hw[0], device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5
    xs = torch.arange(size_hw[1], device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5
    b = boxes_xyxy[:, :, None]
    inside_y = (ys[None] >= b[:, 1]) & (ys[None] <= b[:, 3])  # [N, H]
    inside_x = (xs[None] >= b[:, 0]) & (xs[None] <= b[:, 2])  # [N, W]
    return inside_y[:, :, None] & inside_x[:, None, :]


def _to_original(probs: torch.Tensor, padded: torch.Size, resized: tuple[int, int],
                 original: tuple[int, int]) -> torch.Tensor:
    """float[N, h', w'] over the padded input → float[N, H, W] over the original scan."""
    if probs.shape[0] == 0:
        return probs.new_zeros((0, *original))
    up = F.interpolate(probs[:, None], size=tuple(padded), mode="bilinear", align_corners=False)
    up = up[..., : resized[0], : resized[1]]
    return F.interpolate(up, size=original, mode="bilinear", align_corners=False)[:, 0]


def build_xray(*, config: XraySamConfig) -> XraySam:
    """A new model: SAM from ``config.sam_path`` (a ``save_pretrained`` folder) or initialised from scratch; its
    ``config`` records the SAM architecture actually used."""
    return XraySam(config_with_sam_architecture(config))


@dataclass
class LoadedXray:
    model: XraySam
    config: XraySamConfig
    metadata: dict[str, Any]


#: the config fields that fix the SAM architecture (what ``config_with_sam_architecture`` reads from a folder)
SAM_ARCHITECTURE_FIELDS = ("encoder_hidden", "encoder_layers", "encoder_heads", "encoder_mlp_dim", "encoder_window",
                           "encoder_global_layers", "patch_size", "embed_dim", "decoder_layers", "decoder_heads",
                           "decoder_mlp_dim", "decoder_iou_hidden")


def frozen_sam_keys(model: XraySam) -> set[str]:
    """State keys of the SAM weights that training never changes (the encoder's frozen base weights, the
    positional encoding): what a weights file may leave to ``sam_path`` (see ``trained_state``)."""
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    return {k for k in model.state_dict() if k in frozen and k.startswith(("encoder.", "positional."))}


def trained_state(model: XraySam) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without ``frozen_sam_keys``: with a real SAM ViT-B behind it the file shrinks from
    the whole SAM (~360 MB in fp32) to the LoRA adapters, the FPN, the heads and the decoders; serve it with the
    same SAM folder as ``sam_path``."""
    frozen = frozen_sam_keys(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_xray(path: str | Path, sam_path: str | Path | None = None, attention: str | None = None) -> LoadedXray:
    """Rebuild the segmenter from a safetensors file whose metadata record holds ``config``; fp16 files load as
    fp32.  CheckpointError for a missing, truncated or foreign file or mismatched tensors.

    Without ``sam_path`` no SAM folder is read: the file must hold every tensor.  With ``sam_path`` (a local
    ``SamModel.save_pretrained`` folder) the SAM is loaded from there first — its architecture must be the one the
    file was trained with (CheckpointError naming the fields that differ) — and the file's tensors are loaded over
    it; the file may then leave out the frozen SAM weights (``trained_state``), which come from the folder.
    ``attention`` (``sdpa``, ``eager``, ``dispatcher``) overrides the record's attention implementation."""
    state, metadata, config = load_model_record(path, XraySamConfig, "X-ray bilayer SAM")
    if attention is not None:
        try:
            config = dataclasses.replace(config, attention=attention)
        except ConfigError as exc:
            raise ConfigError(f"xray attention: {exc}") from exc
    if sam_path is None:
        config = dataclasses.replace(config, sam_path=None)
        model = XraySam(config)
        load_state_strict(model, state, path)
        return LoadedXray(model.eval(), config, metadata)
    folder_config = config_with_sam_architecture(dataclasses.replace(config, sam_path=str(sam_path)))
    differ = [f"{name}: file {getattr(config, name)} vs folder {getattr(folder_config, name)}"
              for name in SAM_ARCHITECTURE_FIELDS if getattr(config, name) != getattr(folder_config, name)]
    if differ:
        raise CheckpointError(f"{path} was trained on another SAM architecture than {sam_path}: {'; '.join(differ)}")
    model = XraySam(folder_config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - frozen_sam_keys(model))
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} trained tensors that {sam_path} cannot give "
                              f"(e.g. {missing[:3]})")
    load_state_strict(model, {**own, **state}, path)
    return LoadedXray(model.eval(), folder_config, metadata)
