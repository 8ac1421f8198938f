"""Spatial correlation (the ``spatial_correlation_sampler`` operator of FlowNetC / CMaskTrack R-CNN).

For ``a, b: [B, C, H, W]`` and displacement ``(ph, pw)`` of a ``pH × pW`` patch::

    out[n, ph, pw, h, w] = Σ_c Σ_{i<kH, j<kW} a[n, c, y, x] · b[n, c, y + dy, x + dx]
    y  = −padH + h·sH + i·dH                 x  = −padW + w·sW + j·dW
    dy = (ph − ⌊(pH − 1)/2⌋)·dpH             dx = (pw − ⌊(pW − 1)/2⌋)·dpW

A term is zero when ``(y, x)`` or ``(y + dy, x + dx)`` lies outside ``H × W``; there is no normalisation.
``oH = (H + 2·padH − ((kH − 1)·dH + 1)) // sH + 1`` (same for ``oW``); ``out: [B, pH, pW, oH, oW]``.

Gradients (``g = ∂L/∂out``, ``P = pH·pW`` displacements ``d_p``, ``T(y)`` = taps ``(i, h)`` with ``y = −padH + h·sH + i·dH``)::

    ∂L/∂a[n, c, y, x]   = Σ_p b[n, c, y + dy_p, x + dx_p] · Σ_{T(y), T(x)} g[n, p, h, w]
    ∂L/∂b[n, c, y', x'] = Σ_p a[n, c, y' − dy_p, x' − dx_p] · Σ_{T(y' − dy_p), T(x' − dx_p)} g[n, p, h, w]

Both are gathers over displacements (no atomics), each costing the forward's multiply-adds, so the backward is about
twice the forward.  One displacement convention (the formula above) holds for every backend, forward and backward,
including even patch sizes.  Accumulation is fp32; outputs and gradients are in the input dtype.

Backends: ``reference`` (shift-multiply-sum over displacements, plain PyTorch autograd), ``cpu`` (row-band batched
matmuls on channels-last tiles, own backward), ``triton`` (CUDA, or the Triton interpreter).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from amodal.errors import KernelUnsupportedError

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "triton", "cpu", "reference")
_INT32_MAX = 2**31 - 1


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"correlation: {name} must be an int or a pair of ints, got {value!r}")


@dataclass(frozen=True)
class CorrelationParams:
    """Validated geometry of one correlation call (all pairs are (rows, columns))."""

    kernel_size: tuple[int, int]
    patch_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    dilation_patch: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("kernel_size", "patch_size", "stride", "dilation", "dilation_patch"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"correlation: {name} must be >= 1, got {getattr(self, name)}")
        if min(self.padding) < 0:
            raise ValueError(f"correlation: padding must be >= 0, got {self.padding}")

    @staticmethod
    def make(kernel_size, patch_size, stride, padding, dilation, dilation_patch) -> "CorrelationParams":
        return CorrelationParams(
            _pair(kernel_size, "kernel_size"),
            _pair(patch_size, "patch_size"),
            _pair(stride, "stride"),
            _pair(padding, "padding"),
            _pair(dilation, "dilation"),
            _pair(dilation_patch, "dilation_patch"),
        )

    @property
    def centre(self) -> tuple[int, int]:
        """Index of the zero displacement inside the patch: ⌊(p − 1)/2⌋."""
        return (self.patch_size[0] - 1) // 2, (self.patch_size[1] - 1) // 2

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output spatial size (oH, oW) for an input of h × w."""
        out = []
        for size, k, s, p, d in zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation):
            out.append((size + 2 * p - ((k - 1) * d + 1)) // s + 1)
        return out[0], out[1]


# ----------------------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------------------


def correlation_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    kernel_size: int | tuple[int, int] = 1,
    patch_size: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    dilation_patch: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Plain shift-multiply-sum over displacements and kernel taps (autograd through PyTorch ops).

    a, b: [B, C, H, W] → [B, pH, pW, oH, oW] in the input dtype (fp32 accumulation for half inputs).
    """
    prm = CorrelationParams.make(kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    _validate(a, b, prm)
    dtype = a.dtype
    a32, b32 = (a.float(), b.float()) if dtype != torch.float64 else (a, b)
    (kh, kw), (ph_n, pw_n), (sh, sw), (dh, dw), (dph, dpw) = (
        prm.kernel_size, prm.patch_size, prm.stride, prm.dilation, prm.dilation_patch)
    oh, ow = prm.out_hw(a.shape[2], a.shape[3])
    a_pad, b_pad = _pad_inputs(a32, b32, prm)
    rows = []
    for ph in range(ph_n):
        cols = []
        for pw in range(pw_n):
            acc = a32.new_zeros(a.shape[0], oh, ow)
            for i in range(kh):
                for j in range(kw):
                    ya, xa = i * dh, j * dw
                    a_tap = a_pad[:, :, ya: ya + (oh - 1) * sh + 1: sh, xa: xa + (ow - 1) * sw + 1: sw]
                    yb, xb = ya + ph * dph, xa + pw * dpw
                    b_tap = b_pad[:, :, yb: yb + (oh - 1) * sh + 1: sh, xb: xb + (ow - 1) * sw + 1: sw]
                    acc = acc + (a_tap * b_tap).sum(dim=1)
            cols.append(acc)
        rows.append(torch.stack(cols, dim=1))
    return torch.stack(rows, dim=1).to(dtype)


def _pad_inputs(a: torch.Tensor, b: torch.Tensor, prm: CorrelationParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a by ``padding`` and b by ``padding`` plus the displacement range, so that every tap and
    displacement indexes in bounds: a_pad row ``i·dH + h·sH`` ↔ b_pad row ``i·dH + h·sH + ph·dpH``."""
    (pad_h, pad_w), (ch, cw), (pn_h, pn_w), (dph, dpw) = prm.padding, prm.centre, prm.patch_size, prm.dilation_patch
    a_pad = F.pad(a, (pad_w, pad_w, pad_h, pad_h))
    top, left = pad_h + ch * dph, pad_w + cw * dpw
    bottom, right = pad_h + (pn_h - 1 - ch) * dph, pad_w + (pn_w - 1 - cw) * dpw
    return a_pad, F.pad(b, (left, right, top, bottom))


def _validate(a: torch.Tensor, b: torch.Tensor, prm: CorrelationParams) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(f"correlation: a and b must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(f"correlation: a and b must be [B, C, H, W], got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"correlation: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise KernelUnsupportedError(f"correlation: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.dtype not in _DTYPES + (torch.float64,):
        raise KernelUnsupportedError(f"correlation: unsupported dtype {a.dtype}; use float32, float16 or bfloat16")
    if a.device != b.device:
        raise ValueError(f"correlation: a and b are on different devices ({a.device} and {b.device})")
    oh, ow = prm.out_hw(a.shape[2], a.shape[3])
    if oh < 1 or ow < 1:
        raise ValueError(
            f"correlation: input {a.shape[2]}x{a.shape[3]} is too small for kernel_size {prm.kernel_size}, "
            f"dilation {prm.dilation}, padding {prm.padding} (output would be {oh}x{ow})")


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _correlation_fwd_kernel(
    a_ptr, b_ptr, out_ptr,
    C, H, W, OH, OW, P, PW,
    SH, SW, PADH, PADW, DH, DW, DPH, DPW, CH, CW, KH, KW,
    BLOCK_PIX: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One program: BLOCK_P displacements × BLOCK_PIX output pixels of one sample; loops over taps and channels."""
    pid_pix = tl.program_id(0)
    pid_np = tl.program_id(1)
    n_pblocks = tl.cdiv(P, BLOCK_P)
    n = pid_np // n_pblocks
    pb = pid_np % n_pblocks

    hw = H * W
    ohw = OH * OW
    pix = pid_pix * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    pix_ok = pix < ohw
    oh = pix // OW
    ow = pix % OW
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    dy = (p // PW - CH) * DPH
    dx = (p % PW - CW) * DPW

    a_base = a_ptr + n.to(tl.int64) * C * hw
    b_base = b_ptr + n.to(tl.int64) * C * hw
    acc = tl.zeros([BLOCK_P, BLOCK_PIX], dtype=tl.float32)
    for i in range(KH):
        y = oh * SH - PADH + i * DH
        for j in range(KW):
            x = ow * SW - PADW + j * DW
            a_ok = pix_ok & (y >= 0) & (y < H) & (x >= 0) & (x < W)
            yb = y[None, :] + dy[:, None]
            xb = x[None, :] + dx[:, None]
            b_ok = a_ok[None, :] & p_ok[:, None] & (yb >= 0) & (yb < H) & (xb >= 0) & (xb < W)
            a_off = y * W + x
            b_off = yb * W + xb
            for c in range(C):
                av = tl.load(a_base + c * hw + a_off, mask=a_ok, other=0.0).to(tl.float32)
                bv = tl.load(b_base + c * hw + b_off, mask=b_ok, other=0.0).to(tl.float32)
                acc += av[None, :] * bv
    out_off = n.to(tl.int64) * P * ohw + p[:, None] * ohw + pix[None, :]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & pix_ok[None, :])


@triton.jit
def _correlation_bwd_kernel(
    g_ptr, src_ptr, grad_ptr,
    C, H, W, OH, OW, P, PW,
    SH, SW, PADH, PADW, DH, DW, DPH, DPW, CH, CW, KH, KW,
    GRAD_B: tl.constexpr, BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program: BLOCK_C channels × BLOCK_PIX input pixels of grad_a (``src`` = b) or grad_b (``src`` = a),
    gathered over every displacement; for each displacement the output gradient is first summed over the taps
    that touch the pixel, then multiplied into the shifted ``src`` tile."""
    pid_pix = tl.program_id(0)
    pid_nc = tl.program_id(1)
    n_cblocks = tl.cdiv(C, BLOCK_C)
    n = pid_nc // n_cblocks
    cb = pid_nc % n_cblocks

    hw = H * W
    ohw = OH * OW
    pix = pid_pix * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    pix_ok = pix < hw
    y = pix // W
    x = pix % W
    cc = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cc < C

    g_base = g_ptr + n.to(tl.int64) * P * ohw
    src_base = src_ptr + n.to(tl.int64) * C * hw
    acc = tl.zeros([BLOCK_C, BLOCK_PIX], dtype=tl.float32)
    for p in range(P):
        dy = (p // PW - CH) * DPH
        dx = (p % PW - CW) * DPW
        if GRAD_B:
            ys = y - dy  # position in a (and of the tap)
            xs = x - dx
            yt = ys
            xt = xs
        else:
            ys = y + dy  # position in b
            xs = x + dx
            yt = y
            xt = x
        ok = pix_ok & (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        gsum = tl.zeros([BLOCK_PIX], dtype=tl.float32)
        for i in range(KH):
            hn = yt + PADH - i * DH
            h = hn // SH
            h_ok = (hn >= 0) & (hn - h * SH == 0) & (h < OH)
            for j in range(KW):
                wn = xt + PADW - j * DW
                w = wn // SW
                t_ok = ok & h_ok & (wn >= 0) & (wn - w * SW == 0) & (w < OW)
                gsum += tl.load(g_base + p * ohw + h * OW + w, mask=t_ok, other=0.0).to(tl.float32)
        sv = tl.load(src_base + cc[:, None] * hw + (ys * W + xs)[None, :],
                     mask=c_ok[:, None] & ok[None, :], other=0.0).to(tl.float32)
        acc += gsum[None, :] * sv
    grad_off = n.to(tl.int64) * C * hw + cc[:, None] * hw + pix[None, :]
    tl.store(grad_ptr + grad_off, acc.to(grad_ptr.dtype.element_ty), mask=c_ok[:, None] & pix_ok[None, :])


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------

_FWD_BLOCK_PIX, _FWD_BLOCK_P = 64, 16
_BWD_BLOCK_PIX, _BWD_BLOCK_C = 64, 32
_GRID_Y_MAX = 65535


def _kernel_args(a: torch.Tensor, prm: CorrelationParams) -> tuple[int, ...]:
    c, h, w = a.shape[1:]
    oh, ow = prm.out_hw(h, w)
    return (c, h, w, oh, ow, prm.patch_size[0] * prm.patch_size[1], prm.patch_size[1],
            *prm.stride, *prm.padding, *prm.dilation, *prm.dilation_patch, *prm.centre, *prm.kernel_size)


def _check_triton(a: torch.Tensor, b: torch.Tensor, prm: CorrelationParams) -> None:
    _validate(a, b, prm)
    if a.dtype not in _DTYPES:
        raise KernelUnsupportedError(f"correlation (triton): unsupported dtype {a.dtype}; use float32, float16 or bfloat16")
    n, c, h, w = a.shape
    oh, ow = prm.out_hw(h, w)
    p = prm.patch_size[0] * prm.patch_size[1]
    if c * h * w > _INT32_MAX or p * oh * ow > _INT32_MAX:
        raise KernelUnsupportedError(
            f"correlation (triton): one sample is too large for 32-bit offsets (C·H·W = {c * h * w}, "
            f"P·oH·oW = {p * oh * ow})")
    rows = max(n * triton.cdiv(p, _FWD_BLOCK_P), n * triton.cdiv(c, _BWD_BLOCK_C))
    if rows > _GRID_Y_MAX:
        raise KernelUnsupportedError(
            f"correlation (triton): batch {n} with {p} displacements and {c} channels needs {rows} program rows, "
            f"more than the {_GRID_Y_MAX} a launch grid allows; split the batch")


def correlation_triton_fwd(a: torch.Tensor, b: torch.Tensor, prm: CorrelationParams) -> torch.Tensor:
    """Triton forward: a, b [B, C, H, W] (same dtype, contiguous after this call) → [B, pH, pW, oH, oW]."""
    _check_triton(a, b, prm)
    a, b = a.contiguous(), b.contiguous()
    n = a.shape[0]
    oh, ow = prm.out_hw(a.shape[2], a.shape[3])
    pn = prm.patch_size[0] * prm.patch_size[1]
    out = torch.empty((n, *prm.patch_size, oh, ow), device=a.device, dtype=a.dtype)
    grid = (triton.cdiv(oh * ow, _FWD_BLOCK_PIX), n * triton.cdiv(pn, _FWD_BLOCK_P))
    _correlation_fwd_kernel[grid](a, b, out, *_kernel_args(a, prm), BLOCK_PIX=_FWD_BLOCK_PIX, BLOCK_P=_FWD_BLOCK_P)
    return out


def correlation_triton_bwd(
    grad_out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, prm: CorrelationParams,
    need_a: bool = True, need_b: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Triton backward: grad_out [B, pH, pW, oH, oW] → (grad_a, grad_b), each [B, C, H, W] or None."""
    _check_triton(a, b, prm)
    n, c, h, w = a.shape
    oh, ow = prm.out_hw(h, w)
    expected = (n, *prm.patch_size, oh, ow)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"correlation backward: grad_out has shape {tuple(grad_out.shape)}, expected {expected}")
    g = grad_out.contiguous()
    a, b = a.contiguous(), b.contiguous()
    grid = (triton.cdiv(h * w, _BWD_BLOCK_PIX), n * triton.cdiv(c, _BWD_BLOCK_C))
    args = _kernel_args(a, prm)
    grads: list[torch.Tensor | None] = []
    for needed, src, grad_b in ((need_a, b, False), (need_b, a, True)):
        if not needed:
            grads.append(None)
            continue
        grad = torch.empty_like(a)
        _correlation_bwd_kernel[grid](g, src, grad, *args, GRAD_B=grad_b,
                                      BLOCK_PIX=_BWD_BLOCK_PIX, BLOCK_C=_BWD_BLOCK_C)
        grads.append(grad)
    return grads[0], grads[1]


# CPU path: each output row is a band of a small matmul.  For tap (i, j), displacement row ph and a tile of T output
# columns of output row h, A = a[:, y(h, i), x-tile] is [T, C] and Bw = b[:, y(h, i) + ph·dpH, window] is [Tw, C];
# M = A·Bwᵀ is [T, Tw] and out[ph, pw, h, t] = M[t, t·sW + pw·dpW] (a strided band view).  With stride 1 and
# dilation_patch g > 1 the columns split into g phases (ow ≡ r mod g) that only ever meet b columns of the same
# phase, so each phase is a dense (dilation_patch 1) problem on every g-th column: the band is g× narrower.
# a and b are padded channels-last into buffers with the same number R of rows per sample (R a multiple of sH), so
# the matrices of every (sample, output row) sit at one uniform row stride: each (phase, tap, ph, tile) is a single
# copy-free bmm over k = n·R/sH + h (rows past oH are computed and dropped).  The backward scatters grad_out into
# the bands of dM, then adds dA = dM·Bw and dBw = dMᵀ·A in place at the same strided positions.

def _cpu_tile(per_phase: int, span: int) -> int:
    """Output columns per tile: wide enough to amortise the matmul, narrow enough to waste little on the band."""
    return max(1, min(per_phase, max(16, 2 * span)))


class _CpuPlan:
    """Index bookkeeping shared by the CPU forward and backward (padded channels-last coordinates)."""

    def __init__(self, shape: torch.Size, prm: CorrelationParams):
        self.prm = prm
        self.n, self.c, self.h, self.w = shape
        self.oh, self.ow = prm.out_hw(self.h, self.w)
        sh, sw = prm.stride
        dw, dpw, pw_n = prm.dilation[1], prm.dilation_patch[1], prm.patch_size[1]
        self.phases = dpw if (sw == 1 and dpw > 1) else 1
        g = self.phases
        self.col_step = sw * g  # padded-column distance between neighbouring outputs of one phase
        self.win_step = g  # padded-column distance between neighbouring window columns
        self.band_l, self.band_p = (1, 1) if g > 1 else (sw, dpw)  # window index of (t, pw) = t·band_l + pw·band_p
        self.per_phase = -(-self.ow // g)
        span = (pw_n - 1) * self.band_p
        self.tile = _cpu_tile(self.per_phase, span)
        self.n_tiles = -(-self.per_phase // self.tile)
        self.win = (self.tile - 1) * self.band_l + span + 1
        # zero columns added on the right so that the last tile's columns and window stay inside the padded row
        a_cols = (prm.kernel_size[1] - 1) * dw + (g - 1) * sw + (self.n_tiles * self.tile - 1) * self.col_step + 1
        self.extra_w = max(0, a_cols - (self.w + 2 * prm.padding[1]))
        b_rows = self.h + 2 * prm.padding[0] + (prm.patch_size[0] - 1) * prm.dilation_patch[0]
        self.rows = -(-b_rows // sh) * sh  # rows per sample in both buffers
        self.k = (self.n - 1) * (self.rows // sh) + self.oh  # matrices per bmm

    def _offset(self, s: tuple[int, ...], row: int, j: int, r: int, t: int) -> int:
        col = j * self.prm.dilation[1] + r * self.prm.stride[1] + t * self.tile * self.col_step
        return row * s[1] + col * s[2]

    def a_mats(self, a_buf: torch.Tensor, i: int, j: int, r: int, t: int) -> torch.Tensor:
        """a_buf [N, R, Wa, C] → A [K, T, C] (a view) for tap (i, j), phase r, tile t."""
        s = a_buf.stride()
        return a_buf.as_strided(
            (self.k, self.tile, self.c), (self.prm.stride[0] * s[1], self.col_step * s[2], s[3]),
            a_buf.storage_offset() + self._offset(s, i * self.prm.dilation[0], j, r, t))

    def b_mats(self, b_buf: torch.Tensor, i: int, j: int, r: int, t: int, ph: int) -> torch.Tensor:
        """b_buf [N, R, Wb, C] → Bw [K, Tw, C] (a view) for tap (i, j), phase r, tile t, displacement row ph."""
        s = b_buf.stride()
        row = i * self.prm.dilation[0] + ph * self.prm.dilation_patch[0]
        return b_buf.as_strided(
            (self.k, self.win, self.c), (self.prm.stride[0] * s[1], self.win_step * s[2], s[3]),
            b_buf.storage_offset() + self._offset(s, row, j, r, t))

    def band(self, m: torch.Tensor) -> torch.Tensor:
        """m [K, T, Tw] (contiguous) → view [N, pW, oH, T] of m[k(n, h), t, t·band_l + pw·band_p]."""
        s = m.stride()
        return m.as_strided(
            (self.n, self.prm.patch_size[1], self.oh, self.tile),
            ((self.rows // self.prm.stride[0]) * s[0], self.band_p, s[0], s[1] + self.band_l),
            m.storage_offset())

    def out_shape(self) -> tuple[int, ...]:
        """Padded output buffer [N, pH, pW, oH, n_tiles, T, phases]: column ow = (tile·T + t)·phases + r."""
        return (self.n, *self.prm.patch_size, self.oh, self.n_tiles, self.tile, self.phases)

    def padded_inputs(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Zero-padded channels-last buffers [N, R, W', C] (fp32, or fp64 for fp64 inputs) of a and b, and the
        top/left offset of b inside its buffer (a sits at (padH, padW))."""
        prm = self.prm
        (pad_h, pad_w), (ch, cw), pw_n, dph, dpw = (prm.padding, prm.centre, prm.patch_size[1],
                                                    prm.dilation_patch[0], prm.dilation_patch[1])
        top, left = pad_h + ch * dph, pad_w + cw * dpw
        right = pad_w + (pw_n - 1 - cw) * dpw
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        a_buf = _padded_channels_last(a, pad_h, self.rows, pad_w, self.w + 2 * pad_w + self.extra_w, dtype)
        b_buf = _padded_channels_last(b, top, self.rows, left, left + self.w + right + self.extra_w, dtype)
        return a_buf, b_buf, top, left


def _padded_channels_last(x: torch.Tensor, top: int, rows: int, left: int, cols: int, dtype: torch.dtype):
    """x [N, C, H, W] → zeros [N, rows, cols, C] in ``dtype`` with x at (top, left) (one fill, one copy)."""
    n, c, h, w = x.shape
    buf = torch.zeros((n, rows, cols, c), dtype=dtype, device=x.device)
    buf[:, top: top + h, left: left + w].copy_(x.permute(0, 2, 3, 1))
    return buf


def _cpu_loops(plan: _CpuPlan):
    """(phase, tile, displacement row, tap row, tap column) of every bmm."""
    prm = plan.prm
    return itertools.product(range(plan.phases), range(plan.n_tiles), range(prm.patch_size[0]),
                             range(prm.kernel_size[0]), range(prm.kernel_size[1]))


def correlation_cpu_fwd(a: torch.Tensor, b: torch.Tensor, prm: CorrelationParams) -> torch.Tensor:
    """CPU forward (any device, fp32 math): a, b [B, C, H, W] → [B, pH, pW, oH, oW] in the input dtype."""
    _validate(a, b, prm)
    plan = _CpuPlan(a.shape, prm)
    a_buf, b_buf, _, _ = plan.padded_inputs(a, b)
    out = a_buf.new_zeros(plan.out_shape())
    for r, t, ph, i, j in _cpu_loops(plan):
        m = torch.bmm(plan.a_mats(a_buf, i, j, r, t), plan.b_mats(b_buf, i, j, r, t, ph).transpose(1, 2))
        out[:, ph, :, :, t, :, r] += plan.band(m)
    out = out.view(*out.shape[:4], -1)[..., : plan.ow]
    return out.to(a.dtype).contiguous()


def correlation_cpu_bwd(
    grad_out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, prm: CorrelationParams,
    need_a: bool = True, need_b: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """CPU backward: grad_out [B, pH, pW, oH, oW] → (grad_a, grad_b) [B, C, H, W] in the input dtype (or None)."""
    _validate(a, b, prm)
    plan = _CpuPlan(a.shape, prm)
    expected = (plan.n, *prm.patch_size, plan.oh, plan.ow)
    if tuple(grad_out.shape) != expected:
        raise ValueError(f"correlation backward: grad_out has shape {tuple(grad_out.shape)}, expected {expected}")
    a_buf, b_buf, top, left = plan.padded_inputs(a, b)
    shape = plan.out_shape()
    g = F.pad(grad_out.to(a_buf.dtype), (0, shape[4] * shape[5] * shape[6] - plan.ow)).view(shape)
    ga_buf = torch.zeros_like(a_buf) if need_a else None
    gb_buf = torch.zeros_like(b_buf) if need_b else None
    dm = a_buf.new_zeros(plan.k, plan.tile, plan.win)
    filled = None
    for r, t, ph, i, j in _cpu_loops(plan):
        if filled != (r, t, ph):  # dM depends on (phase, tile, ph) only: fill once for all taps
            dm.zero_()
            plan.band(dm).copy_(g[:, ph, :, :, t, :, r])
            filled = (r, t, ph)
        if need_a:
            plan.a_mats(ga_buf, i, j, r, t).add_(torch.bmm(dm, plan.b_mats(b_buf, i, j, r, t, ph)))
        if need_b:
            plan.b_mats(gb_buf, i, j, r, t, ph).add_(torch.bmm(dm.transpose(1, 2), plan.a_mats(a_buf, i, j, r, t)))
    (pad_h, pad_w), (h, w) = prm.padding, (plan.h, plan.w)
    grad_a = grad_b = None
    if need_a:
        grad_a = ga_buf[:, pad_h: pad_h + h, pad_w: pad_w + w].permute(0, 3, 1, 2).to(a.dtype).contiguous()
    if need_b:
        grad_b = gb_buf[:, top: top + h, left: left + w].permute(0, 3, 1, 2).to(b.dtype).contiguous()
    return grad_a, grad_b


# ----------------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------------


class CorrelationFunction(torch.autograd.Function):
    """Autograd wrapper over the Triton or CPU forward/backward pair (``backend`` is "triton" or "cpu")."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, prm: CorrelationParams, backend: str) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.prm, ctx.backend = prm, backend
        if backend == "triton":
            return correlation_triton_fwd(a, b, prm)
        return correlation_cpu_fwd(a, b, prm)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        bwd = correlation_triton_bwd if ctx.backend == "triton" else correlation_cpu_bwd
        grad_a, grad_b = bwd(grad_out, a, b, ctx.prm, need_a, need_b)
        return grad_a, grad_b, None, None


def correlation(
    a: torch.Tensor,
    b: torch.Tensor,
    kernel_size: int | tuple[int, int] = 1,
    patch_size: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    dilation_patch: int | tuple[int, int] = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Spatial correlation of a and b [B, C, H, W] → [B, pH, pW, oH, oW] (formula in the module docstring).

    backend: "auto" (Triton for CUDA tensors, the CPU path otherwise), "triton", "cpu" or "reference".
    """
    if backend not in _BACKENDS:
        raise ValueError(f"correlation: unknown backend {backend!r}; choose from {', '.join(_BACKENDS)}")
    prm = CorrelationParams.make(kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    _validate(a, b, prm)
    if backend == "reference":
        return correlation_reference(a, b, prm.kernel_size, prm.patch_size, prm.stride, prm.padding,
                                     prm.dilation, prm.dilation_patch)
    if backend == "auto":
        backend = "triton" if a.is_cuda else "cpu"
    return CorrelationFunction.apply(a, b, prm, backend)
