"""Model outputs → published objects: thresholding, RLE encoding of masks."""
from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils

from amodal.types import RLEMask


def encode_masks(masks: torch.Tensor | np.ndarray, threshold: float = 0.5) -> list[RLEMask]:
    """Masks[N, H, W] (probabilities or booleans) → N COCO RLE masks, encoded in one pycocotools call."""
    if isinstance(masks, torch.Tensor):
        binary = (masks > threshold).to(torch.uint8).cpu().numpy() if masks.dtype != torch.bool else masks.cpu().numpy().astype(np.uint8)
    else:
        binary = (masks > threshold).astype(np.uint8) if masks.dtype != bool else masks.astype(np.uint8)
    if binary.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    return [RLEMask(height=int(r["size"][0]), width=int(r["size"][1]), counts=bytes(r["counts"])) for r in rles]
