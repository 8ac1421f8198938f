"""Decoded frame planes → normalised, letterboxed NCHW RGB model input, in one pass.

Colour (BT.601 limited range, the same fp32 arithmetic and rounding as ``amodal/colour.py``)::

    Y' = (Y − 16)·1.164,  U' = U − 128,  V' = V − 128      (chroma at (⌊y/2⌋, ⌊x/2⌋), i.e. nearest-neighbour)
    R = Y' + 1.596·V',  G = Y' − 0.392·U' − 0.813·V',  B = Y' + 2.017·U'
    rgb8 = ⌊clamp(RGB + 0.5, 0, 255)⌋,  rgb = rgb8 / 255

rgb24 and gray8 are divided by 255; gray16 keeps its full range: ``rgb = value / 65535`` (not quantised to 8 bits).

Letterbox: ``scale = min(out_h / src_h, out_w / src_w)``, resized size ``rh = round(src_h·scale)``,
``rw = round(src_w·scale)``; ``pad_y = (out_h − rh) // 2`` and ``pad_x = (out_w − rw) // 2`` ("centre") or 0
("top_left").  Inside the resized region the value is bilinear with ``align_corners=False`` (as
``F.interpolate(mode="bilinear")`` without antialias)::

    sy = max((oy − pad_y + 0.5)·src_h/rh − 0.5, 0),  y0 = ⌊sy⌋,  y1 = min(y0 + 1, src_h − 1),  ly = sy − y0
    v  = (1 − ly)·((1 − lx)·rgb[y0, x0] + lx·rgb[y0, x1]) + ly·((1 − lx)·rgb[y1, x0] + lx·rgb[y1, x1])

outside it ``v = pad_value`` (0..1 units); finally ``out[c] = (v − mean[c]) / std[c]`` in the output dtype.

Backends: ``reference`` (colour conversion of the full frame → F.interpolate → pad → normalise), ``cpu`` (gathers the
four bilinear neighbours first and converts only those when that touches fewer pixels, else the reference chain),
``triton`` (one fused kernel: gather, colour, blend, pad, normalise, store).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from amodal.errors import KernelUnsupportedError

PIXEL_FORMATS = ("yuv420p", "nv12", "rgb24", "gray8", "gray16")
PAD_POSITIONS = ("centre", "top_left")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FORMAT_CODE = {name: code for code, name in enumerate(PIXEL_FORMATS)}
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "triton", "cpu", "reference")
# BT.601 limited range (amodal/colour.py)
_Y_OFFSET, _UV_OFFSET, _Y_SCALE = 16.0, 128.0, 1.164
_R_V, _G_U, _G_V, _B_U = 1.596, -0.392, -0.813, 2.017


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where the source frame sits in the letterboxed model input.

    scale: source → model pixels (before rounding the resized size); pad_x/pad_y: left/top padding in model pixels.
    """

    scale: float
    pad_x: int
    pad_y: int
    src_h: int
    src_w: int
    out_h: int
    out_w: int

    def __post_init__(self) -> None:
        if min(self.src_h, self.src_w, self.out_h, self.out_w) < 1:
            raise ValueError(f"LetterboxGeometry: sizes must be >= 1, got src {self.src_h}x{self.src_w}, "
                             f"out {self.out_h}x{self.out_w}")
        if not self.scale > 0:
            raise ValueError(f"LetterboxGeometry: scale must be > 0, got {self.scale}")
        if not (0 <= self.pad_x <= self.out_w - self.resized_w and 0 <= self.pad_y <= self.out_h - self.resized_h):
            raise ValueError(f"LetterboxGeometry: padding ({self.pad_x}, {self.pad_y}) does not fit a "
                             f"{self.resized_h}x{self.resized_w} image into {self.out_h}x{self.out_w}")

    @staticmethod
    def fit(src_h: int, src_w: int, out_h: int, out_w: int, pad_position: str = "centre") -> "LetterboxGeometry":
        """The largest aspect-preserving fit of src_h × src_w into out_h × out_w."""
        if pad_position not in PAD_POSITIONS:
            raise ValueError(f"preprocess: unknown pad_position {pad_position!r}; choose from {', '.join(PAD_POSITIONS)}")
        if min(src_h, src_w, out_h, out_w) < 1:
            raise ValueError(f"preprocess: sizes must be >= 1, got source {src_h}x{src_w}, output {out_h}x{out_w}")
        scale = min(out_h / src_h, out_w / src_w)
        rh, rw = _resized(src_h, scale, out_h), _resized(src_w, scale, out_w)
        if pad_position == "centre":
            return LetterboxGeometry(scale, (out_w - rw) // 2, (out_h - rh) // 2, src_h, src_w, out_h, out_w)
        return LetterboxGeometry(scale, 0, 0, src_h, src_w, out_h, out_w)

    @property
    def resized_h(self) -> int:
        return _resized(self.src_h, self.scale, self.out_h)

    @property
    def resized_w(self) -> int:
        return _resized(self.src_w, self.scale, self.out_w)

    def boxes_to_letterbox(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """Source-frame boxes [N, 4] (x1, y1, x2, y2 pixels) → model-input pixels [N, 4]."""
        sx, sy = self.resized_w / self.src_w, self.resized_h / self.src_h
        b = _check_boxes(boxes_xyxy).float()
        return torch.stack((b[:, 0] * sx + self.pad_x, b[:, 1] * sy + self.pad_y,
                            b[:, 2] * sx + self.pad_x, b[:, 3] * sy + self.pad_y), dim=1)

    def boxes_to_source(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """Model-input boxes [N, 4] (x1, y1, x2, y2 pixels) → source-frame pixels [N, 4], clipped to the frame."""
        sx, sy = self.src_w / self.resized_w, self.src_h / self.resized_h
        b = _check_boxes(boxes_xyxy).float()
        x = ((b[:, 0::2] - self.pad_x) * sx).clamp(0, self.src_w)
        y = ((b[:, 1::2] - self.pad_y) * sy).clamp(0, self.src_h)
        return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)

    def masks_to_source(self, masks: torch.Tensor) -> torch.Tensor:
        """Masks [N, out_h, out_w] on the model input → [N, src_h, src_w]: the padding is cut away and the rest
        resampled bilinearly.  Float masks (probabilities, logits) stay float; bool masks are thresholded at 0.5."""
        if masks.dim() != 3 or tuple(masks.shape[1:]) != (self.out_h, self.out_w):
            raise ValueError(f"masks_to_source: masks must be [N, {self.out_h}, {self.out_w}], got {tuple(masks.shape)}")
        if masks.dtype != torch.bool and not masks.dtype.is_floating_point:
            raise ValueError(f"masks_to_source: masks must be bool or floating point, got {masks.dtype}")
        crop = masks[:, self.pad_y: self.pad_y + self.resized_h, self.pad_x: self.pad_x + self.resized_w]
        values = crop.float() if masks.dtype == torch.bool else crop
        if masks.shape[0] == 0:
            return torch.zeros((0, self.src_h, self.src_w), dtype=masks.dtype, device=masks.device)
        out = F.interpolate(values[:, None], size=(self.src_h, self.src_w), mode="bilinear", align_corners=False)[:, 0]
        return out >= 0.5 if masks.dtype == torch.bool else out


def _resized(size: int, scale: float, limit: int) -> int:
    return max(1, min(limit, int(math.floor(size * scale + 0.5))))


def _check_boxes(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    if boxes_xyxy.dim() != 2 or boxes_xyxy.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (x1, y1, x2, y2), got {tuple(boxes_xyxy.shape)}")
    return boxes_xyxy


@dataclass(frozen=True)
class _Frames:
    """Validated planes: every plane with a leading batch dim, plus the frame size."""

    planes: tuple[torch.Tensor, ...]
    pixel_format: str
    batch: int
    height: int
    width: int


def _check_planes(planes, pixel_format: str) -> _Frames:
    if pixel_format not in PIXEL_FORMATS:
        raise KernelUnsupportedError(
            f"preprocess: unsupported pixel format {pixel_format!r}; choose from {', '.join(PIXEL_FORMATS)}")
    if isinstance(planes, torch.Tensor):
        planes = (planes,)
    planes = tuple(planes)
    n_planes = {"yuv420p": 3, "nv12": 2}.get(pixel_format, 1)
    if len(planes) != n_planes:
        raise ValueError(f"preprocess: {pixel_format} needs {n_planes} plane(s), got {len(planes)}")
    if not all(isinstance(p, torch.Tensor) for p in planes):
        raise ValueError(f"preprocess: planes must be tensors, got {[type(p).__name__ for p in planes]}")
    dtype = torch.uint16 if pixel_format == "gray16" else torch.uint8
    for k, p in enumerate(planes):
        if p.dtype != dtype:
            raise KernelUnsupportedError(f"preprocess: {pixel_format} plane {k} must be {dtype}, got {p.dtype}")
        if p.device != planes[0].device:
            raise ValueError(f"preprocess: planes are on different devices ({planes[0].device} and {p.device})")
    luma = planes[0]
    base_dims = 3 if pixel_format == "rgb24" else 2
    if luma.dim() not in (base_dims, base_dims + 1):
        raise ValueError(f"preprocess: {pixel_format} plane 0 must have {base_dims} dims (or {base_dims + 1} with a "
                         f"batch dim), got shape {tuple(luma.shape)}")
    batched = luma.dim() == base_dims + 1
    planes = planes if batched else tuple(p.unsqueeze(0) for p in planes)
    b, h, w = planes[0].shape[:3]
    if pixel_format == "rgb24" and planes[0].shape[3] != 3:
        raise ValueError(f"preprocess: rgb24 frames must be [H, W, 3], got {tuple(luma.shape)}")
    ch, cw = (h + 1) // 2, (w + 1) // 2
    expected = {"yuv420p": [(b, h, w), (b, ch, cw), (b, ch, cw)], "nv12": [(b, h, w), (b, ch, cw, 2)]}
    for k, shape in enumerate(expected.get(pixel_format, [])):
        if tuple(planes[k].shape) != shape:
            raise ValueError(f"preprocess: {pixel_format} plane {k} must be {shape[1:] if not batched else shape} for a "
                             f"{h}x{w} frame, got {tuple(planes[k].shape[0 if batched else 1:])}")
    if min(b, h, w) < 1:
        raise ValueError(f"preprocess: empty frames, shape {tuple(luma.shape)}")
    return _Frames(planes, pixel_format, b, h, w)


def _check_out_size(out_size) -> tuple[int, int]:
    if not isinstance(out_size, (tuple, list, torch.Size)) or len(out_size) != 2:
        raise ValueError(f"preprocess: out_size must be (out_h, out_w), got {out_size!r}")
    out_h, out_w = int(out_size[0]), int(out_size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"preprocess: out_size must be positive, got {out_h}x{out_w}")
    return out_h, out_w


def _check_norm(mean, std, pad_value: float, dtype: torch.dtype) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"preprocess: mean and std need 3 values (R, G, B), got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ValueError(f"preprocess: std must be > 0, got {std}")
    if not math.isfinite(float(pad_value)):
        raise ValueError(f"preprocess: pad_value must be finite, got {pad_value}")
    if dtype not in _OUT_DTYPES:
        raise KernelUnsupportedError(f"preprocess: unsupported output dtype {dtype}; use float32, float16 or bfloat16")
    return mean, std


# ----------------------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------------------


def _yuv_to_rgb01(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """uint8 Y, U, V of equal shape [...] → RGB float32 [..., 3] in 0..1 (quantised to 8 bits like colour.py)."""
    yy = (y.float() - _Y_OFFSET) * _Y_SCALE
    uu = u.float() - _UV_OFFSET
    vv = v.float() - _UV_OFFSET
    rgb = torch.stack((yy + _R_V * vv, yy + _G_U * uu + _G_V * vv, yy + _B_U * uu), dim=-1)
    return torch.floor(torch.clamp(rgb + 0.5, 0.0, 255.0)) / 255.0


def _to_rgb01(frames: _Frames) -> torch.Tensor:
    """Whole frames → float32 RGB [B, 3, H, W] in 0..1."""
    p, h, w = frames.planes, frames.height, frames.width
    if frames.pixel_format in ("yuv420p", "nv12"):
        u, v = (p[1], p[2]) if frames.pixel_format == "yuv420p" else (p[1][..., 0], p[1][..., 1])
        u = u.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, :h, :w]
        v = v.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, :h, :w]
        rgb = _yuv_to_rgb01(p[0], u, v)
    elif frames.pixel_format == "rgb24":
        rgb = p[0].float() / 255.0
    elif frames.pixel_format == "gray8":
        rgb = (p[0].float() / 255.0)[..., None].expand(-1, -1, -1, 3)
    else:
        rgb = ((p[0].view(torch.int16).to(torch.int32) & 0xFFFF).float() / 65535.0)[..., None].expand(-1, -1, -1, 3)
    return rgb.permute(0, 3, 1, 2).contiguous()


def preprocess_reference(
    planes: tuple[torch.Tensor, ...],
    pixel_format: str,
    out_size: tuple[int, int],
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    pad_value: float = 0.0,
    dtype: torch.dtype = torch.float32,
    pad_position: str = "centre",
) -> tuple[torch.Tensor, LetterboxGeometry]:
    """The plain chain: colour conversion → F.interpolate → pad → normalise → [B, 3, out_h, out_w] ``dtype``."""
    frames = _check_planes(planes, pixel_format)
    mean, std = _check_norm(mean, std, pad_value, dtype)
    geo = LetterboxGeometry.fit(frames.height, frames.width, *_check_out_size(out_size), pad_position=pad_position)
    rgb = _to_rgb01(frames)
    resized = F.interpolate(rgb, size=(geo.resized_h, geo.resized_w), mode="bilinear", align_corners=False)
    padded = F.pad(resized, (geo.pad_x, geo.out_w - geo.resized_w - geo.pad_x,
                             geo.pad_y, geo.out_h - geo.resized_h - geo.pad_y), value=float(pad_value))
    m = torch.tensor(mean, device=rgb.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=rgb.device).view(1, 3, 1, 1)
    return ((padded - m) / s).to(dtype), geo


# ----------------------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _quantise(v):
    return tl.floor(tl.minimum(tl.maximum(v + 0.5, 0.0), 255.0)) / 255.0


@triton.jit
def _load_rgb(p0, p1, p2, b, y, x, mask, S0B, S0R, S1B, S1R, S2B, S2R, FMT: tl.constexpr):
    """RGB in 0..1 (fp32) of source pixels (y, x) of frame b."""
    if FMT == 2:  # rgb24
        base = p0 + b * S0B + y * S0R + x * 3
        r = tl.load(base, mask=mask, other=0).to(tl.float32) / 255.0
        g = tl.load(base + 1, mask=mask, other=0).to(tl.float32) / 255.0
        bl = tl.load(base + 2, mask=mask, other=0).to(tl.float32) / 255.0
    elif FMT == 3:  # gray8
        r = tl.load(p0 + b * S0B + y * S0R + x, mask=mask, other=0).to(tl.float32) / 255.0
        g = r
        bl = r
    elif FMT == 4:  # gray16, passed as int16: reinterpret as unsigned
        raw = tl.load(p0 + b * S0B + y * S0R + x, mask=mask, other=0).to(tl.int32) & 0xFFFF
        r = raw.to(tl.float32) / 65535.0
        g = r
        bl = r
    else:  # yuv420p (FMT 0) or nv12 (FMT 1)
        yv = tl.load(p0 + b * S0B + y * S0R + x, mask=mask, other=0).to(tl.float32)
        cy = y // 2
        cx = x // 2
        if FMT == 0:
            uv = tl.load(p1 + b * S1B + cy * S1R + cx, mask=mask, other=0).to(tl.float32)
            vv = tl.load(p2 + b * S2B + cy * S2R + cx, mask=mask, other=0).to(tl.float32)
        else:
            uv = tl.load(p1 + b * S1B + cy * S1R + cx * 2, mask=mask, other=0).to(tl.float32)
            vv = tl.load(p1 + b * S1B + cy * S1R + cx * 2 + 1, mask=mask, other=0).to(tl.float32)
        yy = (yv - 16.0) * 1.164
        uu = uv - 128.0
        vv = vv - 128.0
        r = _quantise(yy + 1.596 * vv)
        g = _quantise(yy + -0.392 * uu + -0.813 * vv)
        bl = _quantise(yy + 2.017 * uu)
    return r, g, bl


@triton.jit
def _preprocess_fwd_kernel(
    p0, p1, p2, out_ptr,
    SRC_H, SRC_W, S0B, S0R, S1B, S1R, S2B, S2R,
    OUT_H, OUT_W, RH, RW, PAD_X, PAD_Y, SCALE_Y, SCALE_X,
    M0, M1, M2, S0, S1, S2, PAD_VALUE,
    FMT: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program: BLOCK output pixels (all three channels) of frame ``program_id(1)``."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    n_out = OUT_H * OUT_W
    in_out = offs < n_out
    oy = offs // OUT_W
    ox = offs % OUT_W
    ry = oy - PAD_Y
    rx = ox - PAD_X
    inside = in_out & (ry >= 0) & (ry < RH) & (rx >= 0) & (rx < RW)

    sy = tl.maximum((ry.to(tl.float32) + 0.5) * SCALE_Y - 0.5, 0.0)
    sx = tl.maximum((rx.to(tl.float32) + 0.5) * SCALE_X - 0.5, 0.0)
    y0 = tl.minimum(sy.to(tl.int32), SRC_H - 1)
    x0 = tl.minimum(sx.to(tl.int32), SRC_W - 1)
    y1 = tl.minimum(y0 + 1, SRC_H - 1)
    x1 = tl.minimum(x0 + 1, SRC_W - 1)
    ly = tl.minimum(tl.maximum(sy - y0.to(tl.float32), 0.0), 1.0)
    lx = tl.minimum(tl.maximum(sx - x0.to(tl.float32), 0.0), 1.0)
    hy = 1.0 - ly
    hx = 1.0 - lx

    r00, g00, b00 = _load_rgb(p0, p1, p2, b, y0, x0, inside, S0B, S0R, S1B, S1R, S2B, S2R, FMT)
    r01, g01, b01 = _load_rgb(p0, p1, p2, b, y0, x1, inside, S0B, S0R, S1B, S1R, S2B, S2R, FMT)
    r10, g10, b10 = _load_rgb(p0, p1, p2, b, y1, x0, inside, S0B, S0R, S1B, S1R, S2B, S2R, FMT)
    r11, g11, b11 = _load_rgb(p0, p1, p2, b, y1, x1, inside, S0B, S0R, S1B, S1R, S2B, S2R, FMT)
    r = hy * (hx * r00 + lx * r01) + ly * (hx * r10 + lx * r11)
    g = hy * (hx * g00 + lx * g01) + ly * (hx * g10 + lx * g11)
    bl = hy * (hx * b00 + lx * b01) + ly * (hx * b10 + lx * b11)
    r = tl.where(inside, r, PAD_VALUE)
    g = tl.where(inside, g, PAD_VALUE)
    bl = tl.where(inside, bl, PAD_VALUE)

    dst = out_ptr + b * 3 * n_out + offs
    ty = out_ptr.dtype.element_ty
    tl.store(dst, ((r - M0) / S0).to(ty), mask=in_out)
    tl.store(dst + n_out, ((g - M1) / S1).to(ty), mask=in_out)
    tl.store(dst + 2 * n_out, ((bl - M2) / S2).to(ty), mask=in_out)


_BLOCK = 512


def preprocess_triton(
    frames: _Frames, geo: LetterboxGeometry, mean: tuple[float, ...], std: tuple[float, ...],
    pad_value: float, dtype: torch.dtype,
) -> torch.Tensor:
    """Launch the fused kernel on validated frames → [B, 3, out_h, out_w] ``dtype``."""
    planes = [p.contiguous() for p in frames.planes]
    if frames.pixel_format == "gray16":
        planes = [planes[0].view(torch.int16)]
    for k, p in enumerate(planes):
        if p[0].numel() > 2**31 - 1:
            raise KernelUnsupportedError(f"preprocess (triton): plane {k} has {p[0].numel()} elements per frame, "
                                         f"more than 32-bit offsets allow")
    while len(planes) < 3:
        planes.append(planes[0])
    strides = []
    for p in planes:
        strides += [p.stride(0), p.stride(1)]
    out = torch.empty((frames.batch, 3, geo.out_h, geo.out_w), device=planes[0].device, dtype=dtype)
    grid = (triton.cdiv(geo.out_h * geo.out_w, _BLOCK), frames.batch)
    _preprocess_fwd_kernel[grid](
        planes[0], planes[1], planes[2], out,
        frames.height, frames.width, *strides,
        geo.out_h, geo.out_w, geo.resized_h, geo.resized_w, geo.pad_x, geo.pad_y,
        frames.height / geo.resized_h, frames.width / geo.resized_w,
        *mean, *std, float(pad_value),
        FMT=_FORMAT_CODE[frames.pixel_format], BLOCK=_BLOCK,
    )
    return out


# ----------------------------------------------------------------------------------------------------------------
# CPU path
# ----------------------------------------------------------------------------------------------------------------


def _source_index(out_len: int, in_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=False) neighbours and weight along one axis: (i0, i1, frac), each [out_len]."""
    scale = torch.tensor(in_len / out_len, dtype=torch.float32)
    src = torch.clamp((torch.arange(out_len, dtype=torch.float32) + 0.5) * scale - 0.5, min=0.0)
    i0 = src.to(torch.int64).clamp(max=in_len - 1)
    i1 = (i0 + 1).clamp(max=in_len - 1)
    frac = (src - i0.float()).clamp(0.0, 1.0)
    return i0, i1, frac


def _yuv_to_rgb01_planar(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """uint8 Y, U, V [B, h, w] → RGB float32 [B, 3, h, w] in 0..1: the same fp32 operations as ``_yuv_to_rgb01``
    (no fused multiply-adds, so the rounding to 8 bits is identical), done in place in one output buffer."""
    out = torch.empty((y.shape[0], 3, *y.shape[1:]), dtype=torch.float32, device=y.device)
    r, g, b = out[:, 0], out[:, 1], out[:, 2]
    yy = y.float().sub_(_Y_OFFSET).mul_(_Y_SCALE)
    uu = u.float().sub_(_UV_OFFSET)
    vv = v.float().sub_(_UV_OFFSET)
    torch.mul(vv, _R_V, out=r).add_(yy)
    torch.mul(uu, _B_U, out=b).add_(yy)
    torch.mul(uu, _G_U, out=g).add_(yy)
    g.add_(vv.mul_(_G_V))
    return out.add_(0.5).clamp_(0.0, 255.0).floor_().div_(255.0)


def _gather_rgb01(frames: _Frames, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """RGB float32 [B, 3, len(rows), len(cols)] in 0..1 of the source pixels on the rows × cols grid."""
    p = frames.planes
    pick = lambda plane, r, c: plane.index_select(1, r).index_select(2, c)  # noqa: E731
    if frames.pixel_format in ("yuv420p", "nv12"):
        cr, cc = rows // 2, cols // 2
        if frames.pixel_format == "yuv420p":
            u, v = pick(p[1], cr, cc), pick(p[2], cr, cc)
        else:
            uv = pick(p[1], cr, cc)
            u, v = uv[..., 0], uv[..., 1]
        return _yuv_to_rgb01_planar(pick(p[0], rows, cols), u, v)
    elif frames.pixel_format == "rgb24":
        rgb = pick(p[0], rows, cols).float() / 255.0
    elif frames.pixel_format == "gray8":
        rgb = (pick(p[0], rows, cols).float() / 255.0)[..., None].expand(-1, -1, -1, 3)
    else:
        raw = pick(p[0].view(torch.int16), rows, cols).to(torch.int32) & 0xFFFF  # uint16 has few CPU kernels
        rgb = (raw.float() / 65535.0)[..., None].expand(-1, -1, -1, 3)
    return rgb.permute(0, 3, 1, 2)


_Y_LUT = (torch.arange(256, dtype=torch.float32) - _Y_OFFSET) * _Y_SCALE  # (Y − 16)·1.164, the same fp32 ops


def _upsample2(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, ⌈h/2⌉, ⌈w/2⌉] → [B, h, w], each chroma sample repeated over its 2×2 block (nearest)."""
    b, ch, cw = t.shape
    return t[:, :, None, :, None].expand(b, ch, 2, cw, 2).reshape(b, 2 * ch, 2 * cw)[:, :h, :w]


def _frames_to_rgb01(frames: _Frames) -> torch.Tensor:
    """Whole frames → float32 RGB [B, 3, H, W] in 0..1, the same values as ``_to_rgb01`` with fewer passes: the
    luma term from a 256-entry table, chroma terms computed at chroma resolution and repeated, rounding in place."""
    if frames.pixel_format not in ("yuv420p", "nv12"):
        return _to_rgb01(frames)
    p, b, h, w = frames.planes, frames.batch, frames.height, frames.width
    u, v = (p[1], p[2]) if frames.pixel_format == "yuv420p" else (p[1][..., 0], p[1][..., 1])
    yy = _Y_LUT.to(p[0].device).index_select(0, p[0].reshape(-1).to(torch.int32)).view(b, h, w)
    uu = u.float().sub_(_UV_OFFSET)
    vv = v.float().sub_(_UV_OFFSET)
    out = torch.empty((b, 3, h, w), dtype=torch.float32, device=yy.device)
    torch.add(yy, _upsample2(vv * _R_V, h, w), out=out[:, 0])
    torch.add(yy, _upsample2(uu * _G_U, h, w), out=out[:, 1])
    out[:, 1].add_(_upsample2(vv * _G_V, h, w))
    torch.add(yy, _upsample2(uu * _B_U, h, w), out=out[:, 2])
    return out.add_(0.5).clamp_(0.0, 255.0).floor_().div_(255.0)


def preprocess_cpu(
    frames: _Frames, geo: LetterboxGeometry, mean: tuple[float, ...], std: tuple[float, ...],
    pad_value: float, dtype: torch.dtype,
) -> torch.Tensor:
    """Whole frames converted once (``_frames_to_rgb01``) then resized by ``F.interpolate``; for strong
    downscales, gather-first instead (convert only the source pixels the bilinear resize reads, then blend).
    Normalisation in place; padding written only where it is."""
    rh, rw = geo.resized_h, geo.resized_w
    device = frames.planes[0].device
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    padded = (rh, rw) != (geo.out_h, geo.out_w)
    if (rh, rw) == (frames.height, frames.width):  # no resampling: bilinear at scale 1 reads each pixel once
        image = _frames_to_rgb01(frames)
    elif 4 * rh * rw < frames.height * frames.width:
        y0, y1, ly = (t.to(device) for t in _source_index(rh, frames.height))
        x0, x1, lx = (t.to(device) for t in _source_index(rw, frames.width))
        grid = _gather_rgb01(frames, torch.cat((y0, y1)), torch.cat((x0, x1)))  # [B, 3, 2·rh, 2·rw]
        top, bottom = grid[:, :, :rh], grid[:, :, rh:]
        hx, lx = (1.0 - lx).view(1, 1, 1, rw), lx.view(1, 1, 1, rw)
        hy, ly = (1.0 - ly).view(1, 1, rh, 1), ly.view(1, 1, rh, 1)
        upper = top[..., :rw] * hx + top[..., rw:] * lx
        lower = bottom[..., :rw] * hx + bottom[..., rw:] * lx
        image = upper.mul_(hy).add_(lower.mul_(ly))
    else:
        image = F.interpolate(_frames_to_rgb01(frames), size=(rh, rw), mode="bilinear", align_corners=False)
    if padded:
        out = torch.empty((frames.batch, 3, geo.out_h, geo.out_w), dtype=torch.float32, device=device)
        out.copy_(((float(pad_value) - m) / s).expand_as(out))
        region = out[:, :, geo.pad_y: geo.pad_y + rh, geo.pad_x: geo.pad_x + rw]
        region.copy_(image)
    else:
        out = region = image
    if mean != (0.0, 0.0, 0.0) or std != (1.0, 1.0, 1.0):
        region.sub_(m).div_(s)
    return out.to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------------------


def preprocess(
    planes: tuple[torch.Tensor, ...],
    pixel_format: str,
    out_size: tuple[int, int],
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    pad_value: float = 0.0,
    dtype: torch.dtype = torch.float32,
    pad_position: str = "centre",
    backend: str = "auto",
) -> tuple[torch.Tensor, LetterboxGeometry]:
    """Decoded planes → (model input [B, 3, out_h, out_w] ``dtype``, LetterboxGeometry).

    planes: yuv420p (Y[H, W], U[⌈H/2⌉, ⌈W/2⌉], V[..]) uint8; nv12 (Y, UV[⌈H/2⌉, ⌈W/2⌉, 2]) uint8; rgb24 ([H, W, 3])
    uint8; gray8 ([H, W]) uint8; gray16 ([H, W]) uint16 — each optionally with a leading batch dim B (B = 1 without).
    out_size: (out_h, out_w).  mean/std: per channel (R, G, B) in 0..1 units; pad_value in 0..1 units, normalised
    like the pixels.  pad_position: "centre" or "top_left".  No autograd.
    backend: "auto" (Triton for CUDA planes, the CPU path otherwise), "triton", "cpu" or "reference".
    """
    if backend not in _BACKENDS:
        raise ValueError(f"preprocess: unknown backend {backend!r}; choose from {', '.join(_BACKENDS)}")
    if backend == "reference":
        return preprocess_reference(planes, pixel_format, out_size, mean, std, pad_value, dtype, pad_position)
    frames = _check_planes(planes, pixel_format)
    mean, std = _check_norm(mean, std, pad_value, dtype)
    geo = LetterboxGeometry.fit(frames.height, frames.width, *_check_out_size(out_size), pad_position)
    if backend == "auto":
        backend = "triton" if frames.planes[0].is_cuda else "cpu"
    with torch.no_grad():
        if backend == "triton":
            return preprocess_triton(frames, geo, mean, std, pad_value, dtype), geo
        return preprocess_cpu(frames, geo, mean, std, pad_value, dtype), geo
