"""A micro-batch's frames → the inputs its stages declared, once per batch and per distinct ``InputSpec``.

Frames are grouped by pixel format and size; each group's planes are stacked (one host → device copy per plane,
through pinned memory on CUDA) and converted by ``amodal.kernels.preprocess`` in one call per declared input: the
fused Triton kernel on CUDA (colour conversion, resize, letterbox, normalise in one pass), its CPU path otherwise.
16-bit scanner frames keep their full range (v = value / 65535).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from amodal.engine.device import to_device
from amodal.engine.stage import InputSpec, PreparedInput
from amodal.kernels.preprocess import LetterboxGeometry, preprocess
from amodal.types import Frame


def _stacked_planes(frames: Sequence[Frame], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The planes of same-format, same-size frames with a leading batch dim, on ``device``."""
    planes = []
    for k in range(len(frames[0].planes)):
        arrays = [f.planes[k] for f in frames]
        stacked = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)
        planes.append(to_device(np.ascontiguousarray(stacked), device))
    return tuple(planes)


def prepare_inputs(frames: Sequence[Frame], specs: Iterable[InputSpec], device: torch.device,
                   backend: str = "auto") -> dict[InputSpec, PreparedInput]:
    """``{spec: PreparedInput}`` for every distinct spec, images in the order of ``frames``."""
    specs = list(dict.fromkeys(specs))
    if not specs or not frames:
        return {spec: PreparedInput((), ()) for spec in specs}
    groups: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for i, f in enumerate(frames):
        groups[(f.pixel_format, f.height, f.width)].append(i)
    images: dict[InputSpec, list[torch.Tensor | None]] = {s: [None] * len(frames) for s in specs}
    geometries: dict[InputSpec, list[LetterboxGeometry | None]] = {s: [None] * len(frames) for s in specs}
    for (pixel_format, height, width), indexes in groups.items():
        planes = _stacked_planes([frames[i] for i in indexes], device)
        for spec in specs:
            out, geometry = preprocess(planes, pixel_format, spec.size_hw or (height, width), mean=spec.mean,
                                       std=spec.std, pad_value=spec.pad_value, dtype=spec.torch_dtype,
                                       pad_position=spec.pad_position, backend=backend)
            if spec.channel_order == "bgr":
                out = out.flip(1)
            for row, i in enumerate(indexes):
                images[spec][i] = out[row]
                geometries[spec][i] = geometry
    return {spec: PreparedInput(tuple(images[spec]), tuple(geometries[spec])) for spec in specs}  # type: ignore[arg-type]

