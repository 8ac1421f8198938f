"""Parsing-guided parts: patch part classifier, parsing masks voted onto the patch grid, part pooling through the
shared last block (each part: the class token attending to the class token and that part's patches only)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from amodal.models.mbf.backbone import TransformerBlock


class PatchPartClassifier(nn.Module):
    """BatchNorm + 1×1 convolution over patch tokens: [N, L, D] → part logits [N, L, C] (C = parsing classes)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.conv = nn.Conv1d(dim, num_classes, kernel_size=1)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(patch_tokens.transpose(1, 2))).transpose(1, 2)


def vote_patch_labels(parsing: torch.Tensor, patch_size: int, stride: int, num_classes: int) -> torch.Tensor:
    """Majority label of each patch window: parsing int[N, H, W] (0…C−1) → int64[N, rows·cols], row-major as the
    patch tokens; ties go to the lower class (background first)."""
    if parsing.ndim != 3:
        raise ValueError(f"vote_patch_labels: parsing must be [N, H, W], got {tuple(parsing.shape)}")
    one_hot = F.one_hot(parsing.long().clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    votes = F.avg_pool2d(one_hot, kernel_size=patch_size, stride=stride)
    return votes.argmax(dim=1).flatten(1)


def part_key_padding_mask(part_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keys each part ignores: part_probs [N, L, K] (probabilities of the K body parts) → bool [N·K, 1 + L], row
    n·K + k for image n, part k; True = ignore. The class token (column 0) is never ignored, so no row is empty."""
    n, length, k = part_probs.shape
    ignore = (part_probs <= threshold).permute(0, 2, 1).reshape(n * k, length)
    return torch.cat([ignore.new_zeros(n * k, 1), ignore], dim=1)


def pool_parts(tokens: torch.Tensor, part_probs: torch.Tensor, block: TransformerBlock,
               threshold: float) -> torch.Tensor:
    """Part features [N, K, D]: for each part, the class token's output of ``block`` over the class token and the
    patches whose part probability exceeds ``threshold``. tokens [N, 1 + L, D], part_probs [N, L, K]."""
    n, _, dim = tokens.shape
    k = part_probs.shape[-1]
    mask = part_key_padding_mask(part_probs, threshold)
    repeated = tokens.repeat_interleave(k, dim=0)
    return block.forward_queries(repeated, 1, key_padding_mask=mask)[:, 0].reshape(n, k, dim)
