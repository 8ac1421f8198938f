"""Mask R-CNN from torchvision's parts: ResNet-50-FPN for fidelity, ResNet-18-FPN, or a tiny trunk for CPU
tests and demos, in torchvision's ``v1`` layout (``maskrcnn_resnet50_fpn``) or ``v2`` layout
(``maskrcnn_resnet50_fpn_v2``: BatchNorm in the FPN and heads, two-conv RPN head, 4-conv + 1-FC box head).
``build_maskrcnn`` takes one config; ``load_maskrcnn`` rebuilds a model from a weights file's metadata record."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone

from amodal.errors import ConfigError
from amodal.models.weights import load_state_strict

BACKBONES = ("resnet50", "resnet18", "tiny")
VARIANTS = ("v1", "v2")


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Architecture and input handling of a Mask R-CNN (``class_names`` excludes the background)."""

    class_names: tuple[str, ...]
    backbone: str = "resnet50"
    fpn_channels: int = 256
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    tiny_widths: tuple[int, int, int, int] = (16, 32, 64, 96)
    box_head_dim: int = 1024  # TwoMLPHead representation size
    mask_head_channels: int = 256  # width of the four mask-head convolutions
    rpn_post_nms_train: int = 2000
    rpn_post_nms_test: int = 1000
    box_batch_size_per_image: int = 512
    variant: str = "v1"  # torchvision's layout: v1 = maskrcnn_resnet50_fpn, v2 = maskrcnn_resnet50_fpn_v2

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ConfigError("MaskRCNNConfig.class_names is empty")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if len(self.anchor_sizes) != 5:
            raise ConfigError(f"anchor_sizes needs 5 sizes (one per FPN level), got {self.anchor_sizes}")
        if self.min_size <= 0 or self.max_size < self.min_size:
            raise ConfigError(f"need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; ``variant`` only when it is ``v2``, so v1 records read the same as those written
        before the field existed (the shipped weights' records among them)."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if d["variant"] == "v1":
            del d["variant"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MaskRCNNConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyTrunk(nn.Module):
    """Four stride-2 stages after a stride-4 stem: features at strides 4, 8, 16, 32 (``layer1``…``layer4``)."""

    def __init__(self, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(_conv_bn(3, w1, 2), _conv_bn(w1, w1, 2))
        self.layer1 = nn.Sequential(_conv_bn(w1, w1, 1), _conv_bn(w1, w1, 1))
        self.layer2 = nn.Sequential(_conv_bn(w1, w2, 2), _conv_bn(w2, w2, 1))
        self.layer3 = nn.Sequential(_conv_bn(w2, w3, 2), _conv_bn(w3, w3, 1))
        self.layer4 = nn.Sequential(_conv_bn(w3, w4, 2), _conv_bn(w4, w4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def build_backbone(config: MaskRCNNConfig) -> BackboneWithFPN:
    """An FPN backbone with 5 levels (P2–P6): ``config.fpn_channels`` channels for the tiny trunk, 256 for ResNets
    (torchvision's).  ResNet trunks use frozen BatchNorm (equal to BatchNorm in eval mode; batches of 1–2 frames
    cannot train BatchNorm statistics); ``v2`` puts BatchNorm into the FPN as torchvision's ``_v2`` does."""
    fpn_norm = nn.BatchNorm2d if config.variant == "v2" else None
    if config.backbone == "tiny":
        trunk = TinyTrunk(config.tiny_widths)
        return BackboneWithFPN(
            trunk,
            return_layers=OrderedDict((f"layer{i}", str(i - 1)) for i in range(1, 5)),
            in_channels_list=list(config.tiny_widths),
            out_channels=config.fpn_channels,
            norm_layer=fpn_norm,
        )
    if config.variant == "v1":
        return resnet_fpn_backbone(backbone_name=config.backbone, weights=None, trainable_layers=5)
    from torchvision.models import resnet
    from torchvision.ops.misc import FrozenBatchNorm2d

    trunk = getattr(resnet, config.backbone)(weights=None, norm_layer=FrozenBatchNorm2d)
    stage2 = trunk.inplanes // 8  # torchvision's _resnet_fpn_extractor: 256 for ResNet-50, 64 for ResNet-18
    return BackboneWithFPN(
        trunk,
        return_layers=OrderedDict((f"layer{i}", str(i - 1)) for i in range(1, 5)),
        in_channels_list=[stage2 * 2 ** (i - 1) for i in range(1, 5)],
        out_channels=256,
        norm_layer=fpn_norm,
    )


def build_maskrcnn(*, config: MaskRCNNConfig) -> MaskRCNN:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead

    backbone = build_backbone(config)
    anchors = AnchorGenerator(tuple((s,) for s in config.anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    c = backbone.out_channels
    m = config.mask_head_channels
    if config.variant == "v2":  # torchvision's maskrcnn_resnet50_fpn_v2 heads
        rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=2)
        box_head = FastRCNNConvFCHead((c, 7, 7), [c] * 4, [config.box_head_dim], norm_layer=nn.BatchNorm2d)
        mask_head = MaskRCNNHeads(c, (m, m, m, m), 1, norm_layer=nn.BatchNorm2d)
    else:
        rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0])
        box_head = TwoMLPHead(c * 7 * 7, config.box_head_dim)
        mask_head = MaskRCNNHeads(c, (m, m, m, m), 1)
    return MaskRCNN(
        backbone,
        num_classes=None,
        rpn_head=rpn_head,
        box_head=box_head,
        box_predictor=_box_predictor(config.box_head_dim, config.num_classes),
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(m, m, config.num_classes),
        rpn_pre_nms_top_n_train=config.rpn_post_nms_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=config.rpn_post_nms_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_test,
        box_batch_size_per_image=config.box_batch_size_per_image,
        min_size=config.min_size,
        max_size=config.max_size,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        rpn_anchor_generator=anchors,
        box_detections_per_img=config.box_detections_per_img,
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
    )


def _box_predictor(dim: int, num_classes: int):
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    return FastRCNNPredictor(dim, num_classes)


COCO_CATEGORY_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant N/A stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe N/A backpack umbrella N/A N/A "
    "handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle N/A wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed N/A dining_table N/A N/A toilet N/A tv laptop mouse "
    "remote keyboard cell_phone microwave oven toaster sink refrigerator N/A book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()


@dataclass
class LoadedModel:
    model: MaskRCNN
    config: MaskRCNNConfig
    metadata: dict[str, Any] = field(default_factory=dict)


def load_maskrcnn(path: str | Path) -> LoadedModel:
    """Rebuild a Mask R-CNN from a weights file: safetensors with our metadata record (``amodal weights import``
    writes one from torchvision's), or a torchvision ``maskrcnn_resnet50_fpn``/``_v2`` state dict (``.pth``, loaded
    weights-only, converted on the fly; COCO classes when it has 91)."""
    from amodal.models.maskrcnn_import import read_detector_weights  # the importer builds on this module

    state, config, metadata = read_detector_weights(path)
    model = build_maskrcnn(config=config)
    load_state_strict(model, state, path)
    return LoadedModel(model=model.eval(), config=config, metadata=metadata)
