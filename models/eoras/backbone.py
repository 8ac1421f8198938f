"""ResNet-FPN front-view encoder of EoRaS: GroupNorm residual blocks, P3 output (stride 8).

Module names follow the official ``FPN`` (conv1/bn1, layer1…4, latlayer1…3, toplayer1…2) so its checkpoints map
by name; the official P6/P7 convolutions feed nothing EoRaS uses and are not built here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amodal.models.eoras.config import EoRaSConfig


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(groups, channels), channels)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with GroupNorm and a residual (projected when the shape changes)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.GroupNorm(groups, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.GroupNorm(groups, planes)
        self.downsample = None
        if stride != 1 or in_channels != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, planes, 1, stride, bias=False),
                                            nn.GroupNorm(groups, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4) convolutions with GroupNorm and a residual (the official block)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, groups: int) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.GroupNorm(groups, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.GroupNorm(groups, planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.GroupNorm(groups, out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.GroupNorm(groups, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetFPN(nn.Module):
    """forward(images float[N, 3, S, S] RGB in [0, 1]) → P3 float[N, fpn_channels, S/8, S/8]."""

    def __init__(self, config: EoRaSConfig) -> None:
        super().__init__()
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        groups, fpn = config.gn_groups, config.fpn_channels
        self.conv1 = nn.Conv2d(3, config.stem_channels, 7, 2, 3, bias=False)
        self.bn1 = _norm(config.stem_norm, config.stem_channels, groups)
        in_channels = config.stem_channels
        stages = []
        for i, (planes, blocks) in enumerate(zip(config.widths, config.layers)):
            stride = 1 if i == 0 else 2
            layer = [block(in_channels, planes, stride, groups)]
            in_channels = planes * block.expansion
            layer += [block(in_channels, planes, 1, groups) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        c3, c4, c5 = (w * block.expansion for w in config.widths[1:])
        self.latlayer1 = nn.Conv2d(c5, fpn, 1)
        self.latlayer2 = nn.Conv2d(c4, fpn, 1)
        self.latlayer3 = nn.Conv2d(c3, fpn, 1)
        self.toplayer1 = nn.Conv2d(fpn, fpn, 3, 1, 1)
        self.toplayer2 = nn.Conv2d(fpn, fpn, 3, 1, 1)

    @staticmethod
    def _upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c1 = F.max_pool2d(F.relu(self.bn1(self.conv1(images))), kernel_size=3, stride=2, padding=1)
        c3 = self.layer2(self.layer1(c1))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        p4 = self.toplayer1(self._upsample_add(self.latlayer1(c5), self.latlayer2(c4)))
        return self.toplayer2(self._upsample_add(p4, self.latlayer3(c3)))
