"""Frames → model input tensors on the analyzer's device.

On CUDA the decoded planes travel through pinned memory and the fused Triton preprocessing kernel does
colour conversion on the GPU; on the CPU the planes are converted with numpy (``amodal.colour``)."""
from __future__ import annotations

import torch

from amodal.engine.device import to_device
from amodal.types import Frame


def frame_to_rgb_tensor(frame: Frame, device: torch.device) -> torch.Tensor:
    """float32[3, H, W] RGB in [0, 1] on ``device`` (16-bit sources keep their precision)."""
    if device.type == "cuda":
        from amodal.kernels.preprocess import preprocess

        planes = tuple(to_device(p, device) for p in frame.planes)
        out, _ = preprocess(planes, frame.pixel_format, (frame.height, frame.width), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        return out.reshape(3, frame.height, frame.width)
    if frame.pixel_format == "gray16":
        return torch.from_numpy(frame.to_float()).permute(2, 0, 1).contiguous()
    rgb = torch.from_numpy(frame.to_rgb())
    return rgb.permute(2, 0, 1).to(torch.float32).div_(255.0)
