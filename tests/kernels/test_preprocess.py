"""Preprocessing: colour vs amodal/colour.py, CPU path and Triton kernel (interpreter on CPU) vs the torch chain,
16-bit range, letterbox geometry round trips, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from amodal.colour import planes_to_rgb
from amodal.errors import KernelUnsupportedError
from amodal.kernels.preprocess import IMAGENET_MEAN, IMAGENET_STD, LetterboxGeometry, preprocess

FORMATS = ("yuv420p", "nv12", "rgb24", "gray8", "gray16")
BACKENDS = ("reference", "cpu", "triton")


def _frame(fmt: str, h: int, w: int, seed: int = 0, batch: int | None = None) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    ch, cw = (h + 1) // 2, (w + 1) // 2
    u8 = lambda *shape: rng.integers(0, 256, lead + shape, dtype=np.uint8)  # noqa: E731
    if fmt == "yuv420p":
        return u8(h, w), u8(ch, cw), u8(ch, cw)
    if fmt == "nv12":
        return u8(h, w), u8(ch, cw, 2)
    if fmt == "rgb24":
        return (u8(h, w, 3),)
    if fmt == "gray8":
        return (u8(h, w),)
    return (rng.integers(0, 65536, lead + (h, w), dtype=np.uint16),)


def _tensors(planes: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(p)) for p in planes)


def _normalise(rgb01: torch.Tensor) -> torch.Tensor:
    return (rgb01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_identity_size_matches_colour_module(fmt, backend):
    """At the source size (no resize, no padding) the output is colour.py's RGB, normalised."""
    h, w = 13, 19
    planes = _frame(fmt, h, w, seed=1)
    out, geo = preprocess(_tensors(planes), fmt, (h, w), backend=backend)
    assert (geo.pad_x, geo.pad_y, geo.resized_h, geo.resized_w) == (0, 0, h, w)
    if fmt == "gray16":  # full 16-bit range, not colour.py's 8-bit reduction
        rgb01 = torch.from_numpy(planes[0].astype(np.float32) / 65535.0)[None, None].expand(1, 3, h, w)
    else:
        rgb01 = torch.from_numpy(planes_to_rgb(fmt, planes)).permute(2, 0, 1)[None].float() / 255.0
    torch.testing.assert_close(out, _normalise(rgb01), rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("src_hw,out_hw", [((23, 41), (16, 18)), ((7, 5), (19, 17)), ((31, 17), (12, 12))],
                         ids=["down-wide", "up-odd", "down-tall"])
def test_backend_matches_reference(fmt, backend, src_hw, out_hw):
    planes = _tensors(_frame(fmt, *src_hw, seed=2, batch=2))
    expected, geo_ref = preprocess(planes, fmt, out_hw, backend="reference")
    out, geo = preprocess(planes, fmt, out_hw, backend=backend)
    assert geo == geo_ref and out.shape == (2, 3, *out_hw)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_outputs(backend, dtype):
    planes = _tensors(_frame("nv12", 21, 30, seed=3))
    expected, _ = preprocess(planes, "nv12", (16, 16), backend="reference")
    out, _ = preprocess(planes, "nv12", (16, 16), dtype=dtype, backend=backend)
    assert out.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gray16_keeps_values_above_255(backend):
    values = np.array([[0, 256, 1000], [1100, 40000, 65535]], dtype=np.uint16)
    out, _ = preprocess((torch.from_numpy(values),), "gray16", (2, 3), mean=(0, 0, 0), std=(1, 1, 1), backend=backend)
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    for c in range(3):
        torch.testing.assert_close(out[0, c], expected, rtol=0, atol=1e-7)
    assert out[0, 0, 0, 2] != out[0, 0, 1, 0]  # 1000 and 1100 collapse to one 8-bit level, not here


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad_position", ["centre", "top_left"])
def test_letterbox_padding_and_placement(backend, pad_position):
    """A white frame letterboxed with pad 0.25: pad pixels carry the normalised pad value, image pixels white."""
    h, w = 9, 20
    rgb = np.full((h, w, 3), 255, dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.5, 0.25, 2.0)
    out, geo = preprocess((torch.from_numpy(rgb),), "rgb24", (16, 16), mean=mean, std=std, pad_value=0.25,
                          pad_position=pad_position, backend=backend)
    assert (geo.resized_h, geo.resized_w) == (7, 16)
    assert geo.pad_y == (4 if pad_position == "centre" else 0) and geo.pad_x == 0
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[geo.pad_y: geo.pad_y + geo.resized_h, :] = True
    for c in range(3):
        torch.testing.assert_close(out[0, c][inside], torch.full((7 * 16,), (1.0 - mean[c]) / std[c]))
        torch.testing.assert_close(out[0, c][~inside], torch.full((9 * 16,), (0.25 - mean[c]) / std[c]))


def test_geometry_box_round_trip():
    geo = LetterboxGeometry.fit(1080, 1920, 640, 640)
    assert (geo.resized_h, geo.resized_w, geo.pad_x, geo.pad_y) == (360, 640, 0, 140)
    boxes = torch.tensor([[0.0, 0.0, 1920.0, 1080.0], [100.5, 200.0, 333.0, 1000.0], [17.0, 3.0, 18.0, 4.0]])
    letterboxed = geo.boxes_to_letterbox(boxes)
    torch.testing.assert_close(letterboxed[0], torch.tensor([0.0, 140.0, 640.0, 500.0]))
    torch.testing.assert_close(geo.boxes_to_source(letterboxed), boxes, rtol=1e-6, atol=1e-3)
    # boxes partly in the padding are clipped to the frame
    clipped = geo.boxes_to_source(torch.tensor([[-10.0, 100.0, 700.0, 520.0]]))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 1920.0, 1080.0]]))


def test_geometry_odd_sizes_round_trip():
    geo = LetterboxGeometry.fit(37, 53, 24, 32)
    boxes = torch.tensor([[1.0, 2.0, 50.0, 36.0]])
    torch.testing.assert_close(geo.boxes_to_source(geo.boxes_to_letterbox(boxes)), boxes, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_image_content_lands_where_the_geometry_says(backend):
    """A bright box on a dark frame: its letterboxed location (via the geometry) is bright in the output, and the
    mask of that region maps back onto the source box."""
    h, w = 30, 50
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[10:20, 20:40] = 255
    out, geo = preprocess((torch.from_numpy(rgb),), "rgb24", (20, 20), mean=(0, 0, 0), std=(1, 1, 1), backend=backend)
    x1, y1, x2, y2 = geo.boxes_to_letterbox(torch.tensor([[20.0, 10.0, 40.0, 20.0]]))[0].tolist()
    core = out[0, :, int(y1) + 1: int(y2) - 1, int(x1) + 1: int(x2) - 1]
    assert core.numel() > 0 and bool((core > 0.99).all())
    mask = torch.zeros(1, 20, 20)
    mask[0, round(y1): round(y2), round(x1): round(x2)] = 1.0
    back = geo.masks_to_source(mask > 0.5)
    assert back.shape == (1, h, w) and back.dtype == torch.bool
    truth = torch.zeros(h, w, dtype=torch.bool)
    truth[10:20, 20:40] = True
    iou = (back[0] & truth).sum() / (back[0] | truth).sum()
    assert iou > 0.8
    assert geo.masks_to_source(mask).dtype == torch.float32


def test_errors_name_the_problem():
    y = torch.zeros(8, 10, dtype=torch.uint8)
    u = torch.zeros(4, 5, dtype=torch.uint8)
    with pytest.raises(KernelUnsupportedError, match="unsupported pixel format 'bgr'"):
        preprocess((y,), "bgr", (8, 8))
    with pytest.raises(ValueError, match="yuv420p needs 3 plane"):
        preprocess((y, u), "yuv420p", (8, 8))
    with pytest.raises(ValueError, match=r"plane 1 must be \(4, 5\) for a 8x10 frame, got \(3, 5\)"):
        preprocess((y, u[:3], u), "yuv420p", (8, 8))
    with pytest.raises(KernelUnsupportedError, match="gray16 plane 0 must be torch.uint16, got torch.uint8"):
        preprocess((y,), "gray16", (8, 8))
    with pytest.raises(KernelUnsupportedError, match="output dtype torch.int8"):
        preprocess((y,), "gray8", (8, 8), dtype=torch.int8)
    with pytest.raises(ValueError, match="std must be > 0"):
        preprocess((y,), "gray8", (8, 8), std=(1, 0, 1))
    with pytest.raises(ValueError, match="unknown backend"):
        preprocess((y,), "gray8", (8, 8), backend="gpu")
    for backend in ("reference", "cpu"):
        with pytest.raises(ValueError, match=r"out_size must be \(out_h, out_w\), got 640"):
            preprocess((y,), "gray8", 640, backend=backend)
        with pytest.raises(ValueError, match="out_size must be positive, got 0x8"):
            preprocess((y,), "gray8", (0, 8), backend=backend)
    with pytest.raises(ValueError, match="unknown pad_position"):
        preprocess((y,), "gray8", (8, 8), pad_position="bottom")
    with pytest.raises(ValueError, match=r"rgb24 plane 0 must have 3 dims.*\(8, 10\)"):
        preprocess((y,), "rgb24", (8, 8))
    geo = LetterboxGeometry.fit(8, 10, 8, 8)
    with pytest.raises(ValueError, match=r"masks must be \[N, 8, 8\], got \(1, 7, 8\)"):
        geo.masks_to_source(torch.zeros(1, 7, 8))
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        geo.boxes_to_source(torch.zeros(3))


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("src_hw", [(1080, 1920), (721, 1281), (45, 33)])
def test_triton_cuda_matches_reference(fmt, src_hw):
    planes = tuple(p.cuda() for p in _tensors(_frame(fmt, *src_hw, seed=4, batch=2)))
    expected, _ = preprocess(planes, fmt, (640, 640), backend="reference")
    out, _ = preprocess(planes, fmt, (640, 640), dtype=torch.float16)
    # fp16 output; FMA contraction on GPU may flip an 8-bit colour rounding (1/255 before normalisation)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1.0 / 255 / min(IMAGENET_STD) + 1e-2)
