"""Fused multi-head attention (FlashAttention-2 style), non-causal, with an optional key padding mask.

Math, per batch ``b`` and head ``h`` (q: [Lq, D], k/v: [Lk, D], ``scale`` defaults to D^-1/2)::

    S = scale · q kᵀ                       [Lq, Lk]
    S[:, j] = -inf  where key_padding_mask[b, j] is True (that key is ignored)
    P = softmax(S, dim=-1)                 row-wise
    O = P v                                [Lq, D]

A query row whose keys are *all* ignored has no distribution to normalise: by convention its output is zero (never
NaN) and it passes no gradient back — every backend below follows that convention.

The Triton forward streams key blocks through an online softmax (running max ``m`` and sum ``l``, both fp32, in the
base-2 domain) and saves the row log-sum-exp ``lse = m + log2(l)`` for the backward, which recomputes
``P = exp2(S·log2(e) - lse)`` block by block:

    delta_i = Σ_d dO[i, d] · O[i, d]                     (preprocess kernel)
    dV = Pᵀ dO,  dP = dO vᵀ,  dS = P ∘ (dP - delta),  dK = scale · dSᵀ q   (one kernel per key block)
    dQ = scale · dS k                                                     (one kernel per query block)

The backward uses two kernels (key-block-major for dK/dV, query-block-major for dQ) instead of one kernel with atomic
dQ updates: it is deterministic and needs no fp32 dQ scratch buffer.

Supported by the Triton path: fp32/fp16/bf16 inputs (fp32 accumulation), any Lq/Lk ≥ 1 (partial tiles are masked in
the kernel), head dims 16 ≤ D ≤ 128 (any value: D is padded to the next power of two by masked loads; 16, 32, 48, 64,
80, 96, 128 all work), arbitrary strides with a unit stride on the head dim. fp32 inputs use TF32 dots only when
``torch.get_float32_matmul_precision()`` allows it (PyTorch's own rule for fp32 matmuls), IEEE fp32 otherwise.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from amodal.errors import KernelUnsupportedError

MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 128
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("auto", "triton", "cpu", "reference")
_LOG2_E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------- reference
def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Eager attention in fp32 (fp64 for fp64 inputs). q [B,H,Lq,D], k/v [B,H,Lk,D], mask [B,Lk] bool (True =
    ignore) → [B,H,Lq,D] in q's dtype; rows with every key ignored are zero."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    if key_padding_mask is not None:
        ignore = key_padding_mask[:, None, None, :]
        scores = scores.masked_fill(ignore, float("-inf"))
        row_alive = (~key_padding_mask).any(dim=-1)[:, None, None, None]
        # a fully ignored row would be softmax(-inf…) = NaN: give it finite logits, then zero its weights
        scores = scores.masked_fill(~row_alive, 0.0)
        probs = torch.softmax(scores, dim=-1) * row_alive
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v.to(compute)).to(q.dtype)


# ------------------------------------------------------------------------------------------------------ triton kernels
@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation; UPCAST runs it in fp32 (the interpreter mis-computes bf16 dots)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, mask_ptr,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol,
    stride_mb,
    num_heads, len_q, len_k, head_dim, scale_log2,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, head); loops over all key blocks (online softmax)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(len_q, BLOCK_M)
    bh = pid // num_m
    pid_m = pid % num_m
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < len_q
    d_in = offs_d < head_dim

    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    q = tl.load(q_base + offs_m[:, None] * stride_ql + offs_d[None, :], mask=m_in[:, None] & d_in[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, len_k, BLOCK_N):
        offs_n = start_n + offs_n0
        n_in = offs_n < len_k
        n_live = n_in
        if HAS_MASK:
            ignore = tl.load(mask_ptr + b * stride_mb + offs_n, mask=n_in, other=1)
            n_live = n_in & (ignore == 0)
        k_t = tl.load(k_base + offs_n[None, :] * stride_kl + offs_d[:, None], mask=n_in[None, :] & d_in[:, None],
                      other=0.0)
        s = _dot(q, k_t, UPCAST, PRECISION) * scale_log2
        s = tl.where(n_live[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys so far ignored: keep exp2 finite
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vl + offs_d[None, :], mask=n_in[:, None] & d_in[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_base = o_ptr + b * stride_ob + h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_ol + offs_d[None, :], o.to(o_ptr.dtype.element_ty),
             mask=m_in[:, None] & d_in[None, :])
    lse = tl.where(empty, 0.0, m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    tl.store(lse_ptr + bh.to(tl.int64) * len_q + offs_m, lse, mask=m_in)


@triton.jit
def _attention_bwd_preprocess_kernel(
    o_ptr, do_ptr, delta_ptr,
    stride_ob, stride_oh, stride_ol,
    stride_dob, stride_doh, stride_dol,
    num_heads, len_q, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta[bh, i] = Σ_d dO[i, d] · O[i, d] in fp32."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(len_q, BLOCK_M)
    bh = pid // num_m
    pid_m = pid % num_m
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < len_q
    mask = m_in[:, None] & (offs_d < head_dim)[None, :]
    o = tl.load(o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :], mask=mask,
                other=0.0)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol + offs_d[None, :], mask=mask,
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + bh.to(tl.int64) * len_q + offs_m, delta, mask=m_in)


@triton.jit
def _attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, mask_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_dkb, stride_dkh, stride_dkl,
    stride_dvb, stride_dvh, stride_dvl,
    stride_mb,
    num_heads, len_q, len_k, head_dim, scale, scale_log2,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program: BLOCK_N keys of one (batch, head); loops over all query blocks, accumulating dK and dV."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(len_k, BLOCK_N)
    bh = pid // num_n
    pid_n = pid % num_n
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_in = offs_n < len_k
    d_in = offs_d < head_dim
    n_live = n_in
    if HAS_MASK:
        ignore = tl.load(mask_ptr + b * stride_mb + offs_n, mask=n_in, other=1)
        n_live = n_in & (ignore == 0)
    kv_mask = n_in[:, None] & d_in[None, :]
    k = tl.load(k_ptr + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kl + offs_d[None, :], mask=kv_mask,
                other=0.0)
    v = tl.load(v_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vl + offs_d[None, :], mask=kv_mask,
                other=0.0)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    do_base = do_ptr + b * stride_dob + h * stride_doh
    row_base = bh.to(tl.int64) * len_q

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, len_q, BLOCK_M):
        offs_m = start_m + offs_m0
        m_in = offs_m < len_q
        q_t = tl.load(q_base + offs_m[None, :] * stride_ql + offs_d[:, None], mask=m_in[None, :] & d_in[:, None],
                      other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dol + offs_d[None, :], mask=m_in[:, None] & d_in[None, :],
                     other=0.0)
        lse = tl.load(lse_ptr + row_base + offs_m, mask=m_in, other=0.0)
        delta = tl.load(delta_ptr + row_base + offs_m, mask=m_in, other=0.0)
        s_t = _dot(k, q_t, UPCAST, PRECISION) * scale_log2
        p_t = tl.exp2(s_t - lse[None, :])
        p_t = tl.where(n_live[:, None] & m_in[None, :], p_t, 0.0)
        dv += _dot(p_t.to(do.dtype), do, UPCAST, PRECISION)
        dp_t = _dot(v, tl.trans(do), UPCAST, PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q_t.dtype), tl.trans(q_t), UPCAST, PRECISION)
    dk = dk * scale
    tl.store(dk_ptr + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkl + offs_d[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvl + offs_d[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, mask_ptr, dq_ptr,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_dqb, stride_dqh, stride_dql,
    stride_mb,
    num_heads, len_q, len_k, head_dim, scale, scale_log2,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, head); loops over all key blocks, accumulating dQ."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(len_q, BLOCK_M)
    bh = pid // num_m
    pid_m = pid % num_m
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < len_q
    d_in = offs_d < head_dim
    row_mask = m_in[:, None] & d_in[None, :]
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :], mask=row_mask,
                other=0.0)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol + offs_d[None, :],
                 mask=row_mask, other=0.0)
    row_base = bh.to(tl.int64) * len_q
    lse = tl.load(lse_ptr + row_base + offs_m, mask=m_in, other=0.0)
    delta = tl.load(delta_ptr + row_base + offs_m, mask=m_in, other=0.0)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, len_k, BLOCK_N):
        offs_n = start_n + offs_n0
        n_in = offs_n < len_k
        n_live = n_in
        if HAS_MASK:
            ignore = tl.load(mask_ptr + b * stride_mb + offs_n, mask=n_in, other=1)
            n_live = n_in & (ignore == 0)
        t_mask = n_in[None, :] & d_in[:, None]
        k_t = tl.load(k_base + offs_n[None, :] * stride_kl + offs_d[:, None], mask=t_mask, other=0.0)
        v_t = tl.load(v_base + offs_n[None, :] * stride_vl + offs_d[:, None], mask=t_mask, other=0.0)
        s = _dot(q, k_t, UPCAST, PRECISION) * scale_log2
        p = tl.exp2(s - lse[:, None])
        p = tl.where(n_live[None, :], p, 0.0)
        dp = _dot(do, v_t, UPCAST, PRECISION)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k_t.dtype), tl.trans(k_t), UPCAST, PRECISION)
    dq = dq * scale
    tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dql + offs_d[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=row_mask)


# ---------------------------------------------------------------------------------------------------------- launchers
def _pow2_block(length: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(length, 1))))


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


def _launch_configs(len_q: int, len_k: int, head_dim: int) -> dict[str, dict[str, int]]:
    """Fixed heuristic per kernel ("fwd", "pre", "dkdv", "dq"): block sizes (≥ 16, clipped to the sequence),
    warps and pipeline depth by head dim. dK/dV: wide key blocks, narrow query steps; dQ the reverse."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    small_d = block_d <= 64
    launch = {"num_warps": 4 if small_d else 8, "num_stages": 3 if small_d else 2}
    return {
        "fwd": {"BLOCK_M": _pow2_block(len_q, 16, 128), "BLOCK_N": _pow2_block(len_k, 16, 64), "BLOCK_D": block_d,
                **launch},
        "pre": {"BLOCK_M": _pow2_block(len_q, 16, 64), "BLOCK_D": block_d, "num_warps": 4, "num_stages": 1},
        "dkdv": {"BLOCK_M": _pow2_block(len_q, 16, 32), "BLOCK_N": _pow2_block(len_k, 16, 128 if small_d else 64),
                 "BLOCK_D": block_d, **launch},
        "dq": {"BLOCK_M": _pow2_block(len_q, 16, 128 if small_d else 64), "BLOCK_N": _pow2_block(len_k, 16, 32),
               "BLOCK_D": block_d, **launch},
    }


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None) -> None:
    """Shape checks shared by every backend; raise ValueError naming the sizes."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"attention: {name} must be [B, H, L, D], got {t.ndim} dims {tuple(t.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"attention: batch/head sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"attention: k and v key lengths differ: k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[3] != k.shape[3] or q.shape[3] != v.shape[3]:
        raise ValueError(f"attention: head dims differ: q {q.shape[3]}, k {k.shape[3]}, v {v.shape[3]}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"attention: dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if key_padding_mask is not None:
        expected = (k.shape[0], k.shape[2])
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != expected:
            raise ValueError(f"attention: key_padding_mask must be bool [B, Lk] = {list(expected)}, got "
                             f"{key_padding_mask.dtype} {list(key_padding_mask.shape)}")


def _check_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None) -> None:
    """What the Triton path additionally needs; raises KernelUnsupportedError with the actual values."""
    if q.dtype not in _TRITON_DTYPES:
        raise KernelUnsupportedError(f"attention[triton]: dtype {q.dtype} unsupported (fp32, fp16, bf16)")
    head_dim = q.shape[3]
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise KernelUnsupportedError(
            f"attention[triton]: head dim {head_dim} outside [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    devices = {t.device for t in (q, k, v)} | ({key_padding_mask.device} if key_padding_mask is not None else set())
    if len(devices) != 1:
        raise KernelUnsupportedError(f"attention[triton]: tensors on different devices {sorted(map(str, devices))}")
    if q.device.type != "cuda" and not _interpreting():
        raise KernelUnsupportedError(
            f"attention[triton]: tensors are on {q.device}; the Triton path needs CUDA (or TRITON_INTERPRET=1)")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _empty_bhld_like(t: torch.Tensor) -> torch.Tensor:
    """[B,H,L,D] output laid out as [B,L,H,D] (so the caller's transpose(1,2).reshape(B,L,H·D) is free)."""
    batch, heads, length, dim = t.shape
    return torch.empty(batch, length, heads, dim, dtype=t.dtype, device=t.device).transpose(1, 2)


def _mask_arg(key_padding_mask: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int]:
    if key_padding_mask is None:
        return fallback, 0
    mask_u8 = key_padding_mask.to(torch.uint8).contiguous()
    return mask_u8, mask_u8.stride(0)


def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward. Returns (o [B,H,Lq,D] in q's dtype, lse [B·H, Lq] fp32, base-2)."""
    _check_inputs(q, k, v, key_padding_mask)
    _check_triton(q, k, v, key_padding_mask)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    batch, heads, len_q, head_dim = q.shape
    len_k = k.shape[2]
    o = _empty_bhld_like(q)
    lse = torch.empty(batch * heads, len_q, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    cfg = _launch_configs(len_q, len_k, head_dim)["fwd"]
    upcast, precision = _dot_options(q.dtype)
    mask_t, stride_mb = _mask_arg(key_padding_mask, q)
    grid = (triton.cdiv(len_q, cfg["BLOCK_M"]) * batch * heads,)
    _attention_fwd_kernel[grid](
        q, k, v, o, lse, mask_t,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(o), stride_mb,
        heads, len_q, len_k, head_dim, scale * _LOG2_E,
        HAS_MASK=key_padding_mask is not None, UPCAST=upcast, PRECISION=precision, **cfg,
    )
    return o, lse


def attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward. Returns (dq, dk, dv) shaped like q, k, v."""
    q, k, v, do = _unit_last(q), _unit_last(k), _unit_last(v), _unit_last(do)
    batch, heads, len_q, head_dim = q.shape
    len_k = k.shape[2]
    dq, dk, dv = _empty_bhld_like(q), _empty_bhld_like(k), _empty_bhld_like(v)
    if dq.numel() == 0 or dk.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    cfgs = _launch_configs(len_q, len_k, head_dim)
    upcast, precision = _dot_options(q.dtype)
    mask_t, stride_mb = _mask_arg(key_padding_mask, q)
    has_mask = key_padding_mask is not None

    delta = torch.empty_like(lse)
    cfg = cfgs["pre"]
    _attention_bwd_preprocess_kernel[(triton.cdiv(len_q, cfg["BLOCK_M"]) * batch * heads,)](
        o, do, delta, *_strides3(o), *_strides3(do), heads, len_q, head_dim, **cfg,
    )
    cfg = cfgs["dkdv"]
    _attention_bwd_dkdv_kernel[(triton.cdiv(len_k, cfg["BLOCK_N"]) * batch * heads,)](
        q, k, v, do, lse, delta, mask_t, dk, dv,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do), *_strides3(dk), *_strides3(dv), stride_mb,
        heads, len_q, len_k, head_dim, scale, scale * _LOG2_E,
        HAS_MASK=has_mask, UPCAST=upcast, PRECISION=precision, **cfg,
    )
    cfg = cfgs["dq"]
    _attention_bwd_dq_kernel[(triton.cdiv(len_q, cfg["BLOCK_M"]) * batch * heads,)](
        q, k, v, do, lse, delta, mask_t, dq,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do), *_strides3(dq), stride_mb,
        heads, len_q, len_k, head_dim, scale, scale * _LOG2_E,
        HAS_MASK=has_mask, UPCAST=upcast, PRECISION=precision, **cfg,
    )
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------------- autograd
class AttentionFunction(torch.autograd.Function):
    """Triton forward/backward; gradients for q, k, v (the mask and scale get none)."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, scale):  # type: ignore[override]
        o, lse = attention_fwd(q, k, v, key_padding_mask, scale)
        ctx.save_for_backward(q, k, v, o, lse, key_padding_mask)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):  # type: ignore[override]
        q, k, v, o, lse, key_padding_mask = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, key_padding_mask, ctx.scale)
        return dq, dk, dv, None, None


# ---------------------------------------------------------------------------------------------------- CPU path
def attention_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """torch SDPA (its CPU flash kernel on CPU) with the mask converted and fully ignored rows zeroed."""
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    keep = ~key_padding_mask  # SDPA's boolean mask: True = attend
    alive = keep.any(dim=-1)
    attn_mask = (keep | ~alive[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    return out.masked_fill(~alive[:, None, None, None], 0.0)


# ---------------------------------------------------------------------------------------------------- public op
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Non-causal attention. q [B,H,Lq,D], k/v [B,H,Lk,D], key_padding_mask bool [B,Lk] (True = ignore that key)
    → [B,H,Lq,D] in q's dtype. Rows whose keys are all ignored are zero.

    backend: "auto" (Triton for CUDA tensors, torch SDPA otherwise), "triton", "cpu" (torch SDPA on the tensors'
    device), "reference" (eager fp32).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"attention: backend must be one of {_BACKENDS}, got {backend!r}")
    _check_inputs(q, k, v, key_padding_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "auto":
        backend = "triton" if q.is_cuda else "cpu"
    if backend == "reference":
        return attention_reference(q, k, v, key_padding_mask, scale)
    if backend == "cpu":
        return attention_cpu(q, k, v, key_padding_mask, scale)
    return AttentionFunction.apply(q, k, v, key_padding_mask, scale)


class MultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` (same parameter names, so its state dict loads) that runs ``attention``.

    forward(query [B,Lq,E], key [B,Lk,kdim], value [B,Lk,vdim], key_padding_mask bool [B,Lk]) → [B,Lq,E]
    (sequence-first [L,B,E] when ``batch_first=False``). No dropout, no attention weights returned.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads != 0:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} must be a positive multiple of "
                             f"num_heads {num_heads}")
        if backend not in _BACKENDS:
            raise ValueError(f"MultiheadAttention: backend must be one of {_BACKENDS}, got {backend!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first = batch_first
        self.backend = backend
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.MultiheadAttention's initialisation: Xavier-uniform projections, zero biases."""
        for weight in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if weight is not None:
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        e = self.embed_dim
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split(e)
        if self._qkv_same_embed_dim:
            if query is key and key is value:
                return F.linear(query, self.in_proj_weight, self.in_proj_bias).split(e, dim=-1)
            w_q, w_k, w_v = self.in_proj_weight.split(e)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
            raise ValueError(f"MultiheadAttention: query/key/value must be 3-D, got {tuple(query.shape)}, "
                             f"{tuple(key.shape)}, {tuple(value.shape)}")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if query.shape[-1] != self.embed_dim or key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise ValueError(f"MultiheadAttention: feature sizes {query.shape[-1]}/{key.shape[-1]}/{value.shape[-1]} "
                             f"!= embed_dim/kdim/vdim {self.embed_dim}/{self.kdim}/{self.vdim}")
        q, k, v = self._project(query, key, value)
        batch, len_q, len_k = query.shape[0], query.shape[1], key.shape[1]
        heads, dim = self.num_heads, self.head_dim
        q = q.view(batch, len_q, heads, dim).transpose(1, 2)
        k = k.view(batch, len_k, heads, dim).transpose(1, 2)
        v = v.view(batch, len_k, heads, dim).transpose(1, 2)
        out = attention(q, k, v, key_padding_mask=key_padding_mask, backend=self.backend)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, len_q, self.embed_dim))
        return out if self.batch_first else out.transpose(0, 1)


__all__ = [
    "AttentionFunction",
    "MultiheadAttention",
    "attention",
    "attention_bwd",
    "attention_cpu",
    "attention_fwd",
    "attention_reference",
]
