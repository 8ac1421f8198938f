"""Slot attention's attention step (Locatello et al., 2020): softmax over slots, weighted mean over inputs.

Math, per batch item (q: slots [S, D], k/v: inputs [N, D], ``scale`` defaults to D^-1/2)::

    logits[s, n] = scale · q_s · k_n                      [S, N]
    a[:, n]      = softmax_s(logits[:, n])                 slots compete for each input n
    den_s        = Σ_n a[s, n] + eps
    updates_s    = Σ_n a[s, n] v_n / den_s                 [S, D]  (weighted mean of the inputs)

Because ``den_s`` only rescales slot ``s``, the forward is one pass over the inputs: a program owns a block of inputs
and *all* slots (S ≤ 128 is small), computes the column softmax in registers and accumulates ``Σ a v`` and ``Σ a``.
Input blocks are split over programs; each writes fp32 partial sums that are added afterwards (deterministic, no
atomics). The per-input log-sum-exp over slots (base 2) is saved for the backward.

Backward, with g_s = ∂L/∂updates_s::

    gU_s   = g_s / den_s,  gden_s = -(g_s · updates_s) / den_s
    da[s, n] = gU_s · v_n + gden_s
    dv_n   = Σ_s a[s, n] gU_s
    dl[s, n] = a[s, n] (da[s, n] - Σ_s' a[s', n] da[s', n])
    dq_s = scale Σ_n dl[s, n] k_n,   dk_n = scale Σ_s dl[s, n] q_s

dk and dv of a block of inputs belong to one program; dq is reduced over programs through fp32 partial sums.
The attention map ``a`` can be returned for visualisation; it carries no gradient (every backend detaches it).
Slot and input blocks are padded to ≥ 16 (masked), so every ``tl.dot`` dimension is ≥ 16 even for S = 1.

Triton path limits: fp32/fp16/bf16, 1 ≤ S ≤ 128, 1 ≤ D ≤ 512 (any value, padded to a power of two by masked loads),
and the padded slot tile S·D·bytes ≤ 32 KiB (it lives in shared memory: e.g. up to 32 slots at D = 512 in bf16,
16 in fp32); beyond that the launcher raises KernelUnsupportedError — use backend="cpu" (eager, any device).
fp32 dots use TF32 only when ``torch.get_float32_matmul_precision()`` allows it.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import nn

from amodal.errors import KernelUnsupportedError

MAX_SLOTS = 128
MAX_DIM = 512
MAX_SLOT_TILE_BYTES = 32 * 1024  # padded S × D × element size (shared memory): 32 slots × 512 bf16, 16 × 512 fp32
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "triton", "cpu", "reference")
_LOG2_E = 1.4426950408889634
TARGET_PROGRAMS = 512  # input chunks are sized so that batch × splits ≈ this many programs


# ----------------------------------------------------------------------------------------------------------- reference
def slot_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-8, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager slot attention in fp32 (fp64 for fp64). q [B,S,D], k/v [B,N,D] → (updates [B,S,D], attn [B,S,N]) in
    q's dtype; attn is the softmax over slots (differentiable here, detached by the public functions)."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bsd,bnd->bsn", q.to(compute), k.to(compute)) * scale
    attn = torch.softmax(logits, dim=1)
    weights = attn / (attn.sum(dim=-1, keepdim=True) + eps)
    updates = torch.einsum("bsn,bnd->bsd", weights, v.to(compute))
    return updates.to(q.dtype), attn.to(q.dtype)


# ------------------------------------------------------------------------------------------------------ triton kernels
@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation; UPCAST runs it in fp32 (the interpreter mis-computes bf16 dots)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _slot_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, part_u_ptr, part_den_ptr, lse_ptr, attn_ptr,
    stride_qb, stride_qs, stride_kb, stride_kn, stride_vb, stride_vn, stride_ab, stride_as,
    num_slots, num_inputs, dim, chunk_n, num_splits, scale_log2,
    RETURN_ATTN: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program: all slots × the inputs of one chunk of one batch item → partial Σ a v [S, D] and Σ a [S]."""
    pid = tl.program_id(0)
    b = (pid // num_splits).to(tl.int64)
    split = pid % num_splits
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    s_in = offs_s < num_slots
    d_in = offs_d < dim
    q = tl.load(q_ptr + b * stride_qb + offs_s[:, None] * stride_qs + offs_d[None, :],
                mask=s_in[:, None] & d_in[None, :], other=0.0)
    k_base = k_ptr + b * stride_kb
    v_base = v_ptr + b * stride_vb

    acc_u = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
    acc_den = tl.zeros([BLOCK_S], tl.float32)
    n_start = split * chunk_n
    n_end = tl.minimum(n_start + chunk_n, num_inputs)
    for start_n in range(n_start, n_end, BLOCK_N):
        offs_n = start_n + offs_n0
        n_in = offs_n < n_end
        k_t = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=n_in[None, :] & d_in[:, None],
                      other=0.0)
        logits = _dot(q, k_t, UPCAST, PRECISION) * scale_log2
        logits = tl.where(s_in[:, None], logits, float("-inf"))
        col_max = tl.max(logits, 0)
        p = tl.exp2(logits - col_max[None, :])
        col_sum = tl.sum(p, 0)
        a = p / col_sum[None, :]
        a = tl.where(n_in[None, :], a, 0.0)
        tl.store(lse_ptr + b * num_inputs + offs_n, col_max + tl.log2(col_sum), mask=n_in)
        if RETURN_ATTN:
            tl.store(attn_ptr + b * stride_ab + offs_s[:, None] * stride_as + offs_n[None, :],
                     a.to(attn_ptr.dtype.element_ty), mask=s_in[:, None] & n_in[None, :])
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=n_in[:, None] & d_in[None, :],
                    other=0.0)
        acc_u += _dot(a.to(v.dtype), v, UPCAST, PRECISION)
        acc_den += tl.sum(a, 1)

    part = b * num_splits + split
    tl.store(part_u_ptr + part * num_slots * dim + offs_s[:, None] * dim + offs_d[None, :], acc_u,
             mask=s_in[:, None] & d_in[None, :])
    tl.store(part_den_ptr + part * num_slots + offs_s, acc_den, mask=s_in)


@triton.jit
def _slot_attention_bwd_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, out_ptr, den_ptr, lse_ptr, part_dq_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qs, stride_kb, stride_kn, stride_vb, stride_vn, stride_gb, stride_gs,
    stride_dkb, stride_dkn, stride_dvb, stride_dvn,
    num_slots, num_inputs, dim, chunk_n, num_splits, scale, scale_log2,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program: all slots × one chunk of inputs → dk, dv of those inputs and a partial dq [S, D].
    out/den are the fp32 updates [B,S,D] and den+eps [B,S], both contiguous."""
    pid = tl.program_id(0)
    b = (pid // num_splits).to(tl.int64)
    split = pid % num_splits
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    s_in = offs_s < num_slots
    d_in = offs_d < dim
    sd_mask = s_in[:, None] & d_in[None, :]
    q = tl.load(q_ptr + b * stride_qb + offs_s[:, None] * stride_qs + offs_d[None, :], mask=sd_mask, other=0.0)
    g = tl.load(g_ptr + b * stride_gb + offs_s[:, None] * stride_gs + offs_d[None, :], mask=sd_mask,
                other=0.0).to(tl.float32)
    out = tl.load(out_ptr + b * num_slots * dim + offs_s[:, None] * dim + offs_d[None, :], mask=sd_mask, other=0.0)
    den = tl.load(den_ptr + b * num_slots + offs_s, mask=s_in, other=1.0)
    g_u = g / den[:, None]
    g_den = -tl.sum(g * out, 1) / den
    g_u_in = g_u.to(q.dtype)
    k_base = k_ptr + b * stride_kb
    v_base = v_ptr + b * stride_vb

    dq = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
    n_start = split * chunk_n
    n_end = tl.minimum(n_start + chunk_n, num_inputs)
    for start_n in range(n_start, n_end, BLOCK_N):
        offs_n = start_n + offs_n0
        n_in = offs_n < n_end
        nd_mask = n_in[:, None] & d_in[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=nd_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=nd_mask, other=0.0)
        lse = tl.load(lse_ptr + b * num_inputs + offs_n, mask=n_in, other=0.0)
        logits = _dot(q, tl.trans(k), UPCAST, PRECISION) * scale_log2
        a = tl.exp2(logits - lse[None, :])
        a = tl.where(s_in[:, None] & n_in[None, :], a, 0.0)
        da = _dot(g_u_in, tl.trans(v), UPCAST, PRECISION) + g_den[:, None]
        dv = _dot(tl.trans(a.to(q.dtype)), g_u_in, UPCAST, PRECISION)
        dl = a * (da - tl.sum(a * da, 0)[None, :])
        dl_in = dl.to(q.dtype)
        dk = _dot(tl.trans(dl_in), q, UPCAST, PRECISION) * scale
        dq += _dot(dl_in, k, UPCAST, PRECISION)
        tl.store(dk_ptr + b * stride_dkb + offs_n[:, None] * stride_dkn + offs_d[None, :],
                 dk.to(dk_ptr.dtype.element_ty), mask=nd_mask)
        tl.store(dv_ptr + b * stride_dvb + offs_n[:, None] * stride_dvn + offs_d[None, :],
                 dv.to(dv_ptr.dtype.element_ty), mask=nd_mask)

    part = b * num_splits + split
    tl.store(part_dq_ptr + part * num_slots * dim + offs_s[:, None] * dim + offs_d[None, :], dq * scale,
             mask=sd_mask)


# ---------------------------------------------------------------------------------------------------------- launchers
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _dot_options(dtype: torch.dtype) -> tuple[bool, str]:
    """(upcast dots to fp32, tl.dot input precision) for this dtype on this run. The precision only matters for fp32
    operands: TF32 when ``torch.get_float32_matmul_precision()`` allows it, else IEEE (also under the interpreter and
    for bf16 dots upcast there); fp16/bf16 operands always take tensor cores ("tf32" is Triton's default)."""
    upcast = dtype == torch.bfloat16 and _interpreting()
    if dtype != torch.float32 and not upcast:
        return False, "tf32"
    tf32_ok = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest" and not _interpreting()
    return upcast, ("tf32" if tf32_ok else "ieee")


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> None:
    """Shape checks shared by every backend; raise ValueError naming the sizes."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 3:
            raise ValueError(f"slot_attention: {name} must be 3-D ([B,S,D] / [B,N,D]), got {tuple(t.shape)}")
    if q.shape[0] != k.shape[0] or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"slot_attention: batch/input sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if q.shape[2] != k.shape[2] or q.shape[2] != v.shape[2]:
        raise ValueError(f"slot_attention: feature dims differ: q {q.shape[2]}, k {k.shape[2]}, v {v.shape[2]}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"slot_attention: dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not eps >= 0.0:
        raise ValueError(f"slot_attention: eps must be >= 0, got {eps}")


def _check_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """What the Triton path additionally needs; raises KernelUnsupportedError with the actual values."""
    if q.dtype not in _TRITON_DTYPES:
        raise KernelUnsupportedError(f"slot_attention[triton]: dtype {q.dtype} unsupported (fp32, fp16, bf16)")
    num_slots, dim = q.shape[1], q.shape[2]
    if not 1 <= num_slots <= MAX_SLOTS:
        raise KernelUnsupportedError(f"slot_attention[triton]: {num_slots} slots outside [1, {MAX_SLOTS}]")
    if not 1 <= dim <= MAX_DIM:
        raise KernelUnsupportedError(f"slot_attention[triton]: feature dim {dim} outside [1, {MAX_DIM}]")
    tile_bytes = _slot_tile_bytes(num_slots, dim, q.dtype)
    if tile_bytes > MAX_SLOT_TILE_BYTES:
        raise KernelUnsupportedError(
            f"slot_attention[triton]: {num_slots} slots × dim {dim} in {q.dtype} exceeds the "
            f"{MAX_SLOT_TILE_BYTES // 1024} KiB slot tile (padded S·D·bytes = {tile_bytes})")
    devices = {t.device for t in (q, k, v)}
    if len(devices) != 1:
        raise KernelUnsupportedError(f"slot_attention[triton]: tensors on different devices "
                                     f"{sorted(map(str, devices))}")
    if q.device.type != "cuda" and not _interpreting():
        raise KernelUnsupportedError(
            f"slot_attention[triton]: tensors are on {q.device}; the Triton path needs CUDA (or TRITON_INTERPRET=1)")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _slot_tile_bytes(num_slots: int, dim: int, dtype: torch.dtype) -> int:
    """Bytes of one padded [S, D] tile, which a program keeps resident (shared-memory bound on the GPU)."""
    elem = torch.finfo(dtype).bits // 8
    return max(16, triton.next_power_of_2(num_slots)) * max(16, triton.next_power_of_2(dim)) * elem


def _config(batch: int, num_slots: int, num_inputs: int, dim: int, dtype: torch.dtype) -> dict[str, int]:
    """Block sizes, pipeline depth and the input split (~TARGET_PROGRAMS programs in all); every block dim ≥ 16.
    Input tiles are kept to ~16 KiB, slot × input tiles to 4096 elements, and the pipeline shallower for wide rows,
    so shared memory stays < 227 KiB."""
    elem = torch.finfo(dtype).bits // 8
    block_s = max(16, triton.next_power_of_2(num_slots))
    block_d = max(16, triton.next_power_of_2(dim))
    block_n = max(16, min(64, triton.next_power_of_2(num_inputs), 16384 // (block_d * elem), 4096 // block_s))
    num_blocks = triton.cdiv(num_inputs, block_n)
    splits = max(1, min(num_blocks, triton.cdiv(TARGET_PROGRAMS, batch)))
    chunk_n = triton.cdiv(num_blocks, splits) * block_n
    row_bytes = block_d * elem
    return {
        "BLOCK_S": block_s, "BLOCK_N": block_n, "BLOCK_D": block_d,
        "chunk_n": chunk_n, "num_splits": triton.cdiv(num_inputs, chunk_n),
        "num_warps": 4 if block_d * block_s <= 4096 else 8,
        "num_stages": 3 if row_bytes < 1024 else (2 if row_bytes < 2048 else 1),
    }


def slot_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, scale: float, return_attn: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton forward. Returns (updates [B,S,D] q.dtype, attn [B,S,N] q.dtype (empty unless return_attn),
    updates fp32 [B,S,D], den + eps fp32 [B,S], lse fp32 [B,N] (base 2))."""
    _check_inputs(q, k, v, eps)
    _check_triton(q, k, v)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    batch, num_slots, dim = q.shape
    num_inputs = k.shape[1]
    device = q.device
    lse = torch.empty(batch, num_inputs, dtype=torch.float32, device=device)
    attn_shape = (batch, num_slots, num_inputs) if return_attn else (0, 0, 0)
    attn = torch.empty(attn_shape, dtype=q.dtype, device=device)
    if batch == 0 or num_inputs == 0:
        updates32 = torch.zeros(batch, num_slots, dim, dtype=torch.float32, device=device)
        den = torch.full((batch, num_slots), eps, dtype=torch.float32, device=device)
        return updates32.to(q.dtype), attn, updates32, den, lse
    cfg = _config(batch, num_slots, num_inputs, dim, q.dtype)
    splits = cfg["num_splits"]
    part_u = torch.empty(batch, splits, num_slots, dim, dtype=torch.float32, device=device)
    part_den = torch.empty(batch, splits, num_slots, dtype=torch.float32, device=device)
    upcast, precision = _dot_options(q.dtype)
    attn_arg = attn if return_attn else q
    stride_ab, stride_as = (attn.stride(0), attn.stride(1)) if return_attn else (0, 0)
    _slot_attention_fwd_kernel[(batch * splits,)](
        q, k, v, part_u, part_den, lse, attn_arg,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), stride_ab, stride_as,
        num_slots, num_inputs, dim, cfg["chunk_n"], splits, scale * _LOG2_E,
        RETURN_ATTN=return_attn,
        BLOCK_S=cfg["BLOCK_S"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"],
        UPCAST=upcast, PRECISION=precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    den = part_den.sum(dim=1) + eps
    updates32 = part_u.sum(dim=1) / den[..., None]
    return updates32.to(q.dtype), attn, updates32, den, lse


def slot_attention_bwd(
    g: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, updates32: torch.Tensor, den: torch.Tensor,
    lse: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward. Returns (dq, dk, dv) shaped like q, k, v."""
    q, k, v, g = _unit_last(q), _unit_last(k), _unit_last(v), _unit_last(g)
    batch, num_slots, dim = q.shape
    num_inputs = k.shape[1]
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if batch == 0 or num_inputs == 0:
        return torch.zeros_like(q), dk.zero_(), dv.zero_()
    cfg = _config(batch, num_slots, num_inputs, dim, q.dtype)
    splits = cfg["num_splits"]
    part_dq = torch.empty(batch, splits, num_slots, dim, dtype=torch.float32, device=q.device)
    upcast, precision = _dot_options(q.dtype)
    _slot_attention_bwd_kernel[(batch * splits,)](
        q, k, v, g, updates32.contiguous(), den.contiguous(), lse, part_dq, dk, dv,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), g.stride(0), g.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        num_slots, num_inputs, dim, cfg["chunk_n"], splits, scale, scale * _LOG2_E,
        BLOCK_S=cfg["BLOCK_S"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"],
        UPCAST=upcast, PRECISION=precision, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return part_dq.sum(dim=1).to(q.dtype), dk, dv


# ---------------------------------------------------------------------------------------------------- autograd
class SlotAttentionFunction(torch.autograd.Function):
    """Triton forward/backward; gradients for q, k, v. The returned attention map is non-differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, eps, scale, return_attn):  # type: ignore[override]
        updates, attn, updates32, den, lse = slot_attention_fwd(q, k, v, eps, scale, return_attn)
        ctx.save_for_backward(q, k, v, updates32, den, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(attn)
        return updates, attn

    @staticmethod
    def backward(ctx, g, _g_attn):  # type: ignore[override]
        q, k, v, updates32, den, lse = ctx.saved_tensors
        dq, dk, dv = slot_attention_bwd(g, q, k, v, updates32, den, lse, ctx.scale)
        return dq, dk, dv, None, None, None


# ---------------------------------------------------------------------------------------------------- CPU path
def slot_attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager in the input dtype with batched matmuls; divides the [S, D] sums instead of the [S, N] weights."""
    attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)).mul_(scale), dim=1)
    updates = torch.bmm(attn, v) / (attn.sum(dim=-1, keepdim=True) + eps)
    return updates, attn


# ---------------------------------------------------------------------------------------------------- public op
def _dispatch(q, k, v, eps, scale, backend, return_attn) -> tuple[torch.Tensor, torch.Tensor]:
    if backend not in _BACKENDS:
        raise ValueError(f"slot_attention: backend must be one of {_BACKENDS}, got {backend!r}")
    _check_inputs(q, k, v, eps)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "auto":
        backend = "triton" if q.is_cuda else "cpu"
    if backend == "reference":
        updates, attn = slot_attention_reference(q, k, v, eps, scale)
    elif backend == "cpu":
        updates, attn = slot_attention_cpu(q, k, v, eps, scale)
    else:
        updates, attn = SlotAttentionFunction.apply(q, k, v, eps, scale, return_attn)
    return updates, attn.detach()


def slot_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-8, scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Slot-attention updates. q [B,S,D] (slots), k/v [B,N,D] (inputs) → [B,S,D] in q's dtype.

    backend: "auto" (Triton for CUDA tensors, the eager CPU path otherwise), "triton", "cpu", "reference".
    """
    return _dispatch(q, k, v, eps, scale, backend, return_attn=False)[0]


def slot_attention_with_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-8, scale: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``slot_attention``, also returning the softmax-over-slots map attn [B,S,N] (detached, q's dtype)."""
    return _dispatch(q, k, v, eps, scale, backend, return_attn=True)


class SlotAttentionOutput(NamedTuple):
    """What ``SlotAttention`` returns."""

    slots: torch.Tensor  # [B, S, dim]
    attn: torch.Tensor  # [B, S, N], softmax over slots of the last iteration, detached


class SlotAttention(nn.Module):
    """Iterative slot attention (Locatello et al.): LayerNorm'd inputs → k, v; ``iters`` rounds of
    slots ← GRU(slot_attention(q(slots), k, v), slots) + MLP residual. Slots start from a learned Gaussian
    (mean, log-sigma) unless given (e.g. carried over from the previous frame).

    forward(inputs [B,N,input_dim], slots [B,S,dim] | None) → SlotAttentionOutput(slots [B,S,dim], attn [B,S,N]).
    """

    def __init__(
        self,
        num_slots: int,
        dim: int,
        iters: int = 3,
        input_dim: int | None = None,
        hidden_dim: int | None = None,
        eps: float = 1e-8,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        input_dim = dim if input_dim is None else input_dim
        hidden_dim = 2 * dim if hidden_dim is None else hidden_dim
        for name, value in (("num_slots", num_slots), ("dim", dim), ("iters", iters), ("input_dim", input_dim),
                            ("hidden_dim", hidden_dim)):
            if value < 1:
                raise ValueError(f"SlotAttention: {name} must be >= 1, got {value}")
        if backend not in _BACKENDS:
            raise ValueError(f"SlotAttention: backend must be one of {_BACKENDS}, got {backend!r}")
        self.num_slots, self.dim, self.iters, self.eps, self.backend = num_slots, dim, iters, eps, backend
        self.norm_inputs = nn.LayerNorm(input_dim)
        self.to_k = nn.Linear(input_dim, dim, bias=False)
        self.to_v = nn.Linear(input_dim, dim, bias=False)
        self.norm_slots = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))
        self.slots_mu = nn.Parameter(torch.empty(1, 1, dim))
        self.slots_log_sigma = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.slots_mu)
        nn.init.xavier_uniform_(self.slots_log_sigma)

    def initial_slots(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples [batch, num_slots, dim] from N(mu, sigma²) (reparameterised, so mu/sigma get gradients)."""
        noise = torch.randn(batch, self.num_slots, self.dim, generator=generator, device=self.slots_mu.device,
                            dtype=self.slots_mu.dtype)
        return self.slots_mu + self.slots_log_sigma.exp() * noise

    def forward(self, inputs: torch.Tensor, slots: torch.Tensor | None = None) -> SlotAttentionOutput:
        if inputs.ndim != 3:
            raise ValueError(f"SlotAttention: inputs must be [B, N, input_dim], got {tuple(inputs.shape)}")
        batch = inputs.shape[0]
        if slots is None:
            slots = self.initial_slots(batch)
        elif slots.ndim != 3 or slots.shape[0] != batch or slots.shape[2] != self.dim:
            raise ValueError(f"SlotAttention: slots must be [{batch}, S, {self.dim}], got {tuple(slots.shape)}")
        inputs = self.norm_inputs(inputs)
        k, v = self.to_k(inputs), self.to_v(inputs)
        attn = inputs.new_empty(0)
        for _ in range(self.iters):
            q = self.to_q(self.norm_slots(slots))
            updates, attn = slot_attention_with_attn(q, k, v, eps=self.eps, backend=self.backend)
            num_slots = slots.shape[1]
            slots = self.gru(updates.reshape(-1, self.dim), slots.reshape(-1, self.dim)).view(batch, num_slots,
                                                                                                self.dim)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return SlotAttentionOutput(slots, attn)


__all__ = [
    "SlotAttention",
    "SlotAttentionFunction",
    "SlotAttentionOutput",
    "slot_attention",
    "slot_attention_bwd",
    "slot_attention_cpu",
    "slot_attention_fwd",
    "slot_attention_reference",
    "slot_attention_with_attn",
]
