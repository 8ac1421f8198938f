"""amodal.kernels.attention: Triton (interpreter on CPU) and SDPA paths against the eager reference, forward and
every gradient, on awkward shapes; launcher errors; MultiheadAttention against nn.MultiheadAttention."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from amodal.errors import KernelUnsupportedError
from amodal.kernels.attention import MultiheadAttention, attention, attention_reference
from tests.support.sm90 import SM90_MAX_SHARED_BYTES, aot_compile

# (atol, rtol) for the output and for the gradients, against an fp32 reference on the same (rounded) inputs
TOLERANCES = {
    torch.float32: ((1e-5, 2e-5), (2e-5, 5e-5)),
    torch.float16: ((2e-3, 2e-3), (1e-2, 1e-2)),
    torch.bfloat16: ((1.6e-2, 1.6e-2), (6e-2, 4e-2)),
}

# (B, H, Lq, Lk, D): L = 1, primes, Lq != Lk, partial and multiple tiles, a non-power-of-two head dim
SHAPES = [
    (1, 1, 1, 1, 16),
    (2, 3, 7, 13, 16),
    (1, 2, 37, 5, 64),
    (2, 1, 13, 37, 48),
    (1, 1, 130, 70, 32),
    (1, 2, 19, 29, 128),
]


def _inputs(shape, dtype, device="cpu", seed=0):
    batch, heads, len_q, len_k, dim = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, len_q, dim, generator=gen)
    k = torch.randn(batch, heads, len_k, dim, generator=gen)
    v = torch.randn(batch, heads, len_k, dim, generator=gen)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]


def _mask(batch, len_k, fully_masked_row, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, len_k, generator=gen) < 0.35
    mask[:, 0] = False  # at least one live key per row ...
    if fully_masked_row:
        mask[-1] = True  # ... except in the last batch item
    return mask.to(device)


def _run(q, k, v, mask, backend, grad_out):
    out = attention(q, k, v, key_padding_mask=mask, backend=backend)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.to(out.dtype))
    return out, grads


def _expected(q, k, v, mask, grad_out):
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    out = attention_reference(q32, k32, v32, key_padding_mask=mask)
    return out, torch.autograd.grad(out, (q32, k32, v32), grad_out)


def _assert_matches(q, k, v, mask, backend, dtype):
    (out_tol, grad_tol) = TOLERANCES[dtype]
    gen = torch.Generator().manual_seed(2)
    grad_out = torch.randn(q.shape, generator=gen).to(q.device)
    out, grads = _run(q, k, v, mask, backend, grad_out)
    exp_out, exp_grads = _expected(q, k, v, mask, grad_out)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), exp_out, atol=out_tol[0], rtol=out_tol[1])
    for name, got, exp in zip(("dq", "dk", "dv"), grads, exp_grads):
        assert got.shape == exp.shape, name
        torch.testing.assert_close(got.float(), exp, atol=grad_tol[0], rtol=grad_tol[1], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_reference(shape, dtype):
    q, k, v = _inputs(shape, dtype)
    _assert_matches(q, k, v, None, "triton", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 2, 7, 13, 16), (3, 1, 37, 70, 64), (2, 1, 5, 1, 48), (2, 1, 9, 33, 96)],
                         ids=lambda s: "x".join(map(str, s)))
def test_triton_key_padding_mask_matches_reference(shape, dtype):
    q, k, v = _inputs(shape, dtype)
    mask = _mask(shape[0], shape[3], fully_masked_row=shape[0] > 1)
    _assert_matches(q, k, v, mask, "triton", dtype)


@pytest.mark.parametrize("backend", ["triton", "cpu", "reference"])
def test_fully_masked_row_gives_zeros_and_no_gradient(backend):
    q, k, v = _inputs((2, 2, 5, 9, 16), torch.float32)
    mask = _mask(2, 9, fully_masked_row=True)
    out = attention(q, k, v, key_padding_mask=mask, backend=backend)
    assert torch.isfinite(out).all()
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    assert out[0].abs().sum() > 0
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    for grad in (dq, dk, dv):
        assert torch.isfinite(grad).all()
        assert torch.equal(grad[-1], torch.zeros_like(grad[-1]))
    # ignored keys of a live row get no gradient either
    ignored = mask[0]
    assert torch.equal(dk[0][:, ignored], torch.zeros_like(dk[0][:, ignored]))
    assert torch.equal(dv[0][:, ignored], torch.zeros_like(dv[0][:, ignored]))


def test_triton_accepts_strided_inputs():
    """q/k/v as [B,L,H,D] views transposed to [B,H,L,D], as MultiheadAttention passes them."""
    batch, len_q, len_k, heads, dim = 2, 11, 19, 3, 32
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(batch, len_q, heads, dim, generator=gen).transpose(1, 2).requires_grad_()
    kv = torch.randn(batch, len_k, 2, heads, dim, generator=gen)
    k = kv[:, :, 0].transpose(1, 2).requires_grad_()
    v = kv[:, :, 1].transpose(1, 2).requires_grad_()
    assert not q.is_contiguous() and not k.is_contiguous()
    _assert_matches(q, k, v, _mask(batch, len_k, fully_masked_row=False), "triton", torch.float32)


def test_custom_scale():
    q, k, v = _inputs((1, 2, 9, 17, 16), torch.float32)
    got = attention(q, k, v, scale=0.3, backend="triton")
    torch.testing.assert_close(got, attention_reference(q, k, v, scale=0.3), atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got, attention_reference(q, k, v), atol=1e-3)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_path_matches_reference(dtype, masked):
    shape = (3, 2, 23, 41, 64)
    q, k, v = _inputs(shape, dtype)
    mask = _mask(shape[0], shape[3], fully_masked_row=True) if masked else None
    _assert_matches(q, k, v, mask, "cpu", dtype)


def test_auto_on_cpu_uses_the_cpu_path():
    q, k, v = _inputs((1, 1, 4, 6, 16), torch.float32)
    torch.testing.assert_close(attention(q, k, v), attention(q, k, v, backend="cpu"), atol=0, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_reference_gradcheck_float64(masked):
    q, k, v = _inputs((2, 1, 3, 5, 4), torch.float64)
    mask = _mask(2, 5, fully_masked_row=True) if masked else None
    assert torch.autograd.gradcheck(lambda a, b, c: attention_reference(a, b, c, key_padding_mask=mask), (q, k, v))


def test_cpu_path_gradcheck_float64():
    q, k, v = _inputs((2, 1, 3, 5, 4), torch.float64)
    mask = _mask(2, 5, fully_masked_row=True)
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, key_padding_mask=mask, backend="cpu"),
                                    (q, k, v))


# ---------------------------------------------------------------------------------------------------- errors
def test_error_bad_ndim():
    q = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"q must be \[B, H, L, D\], got 3 dims \(2, 5, 16\)"):
        attention(q, q, q)


def test_error_mismatched_batch_heads_and_dims():
    q = torch.randn(2, 2, 5, 16)
    with pytest.raises(ValueError, match="batch/head sizes differ"):
        attention(q, torch.randn(3, 2, 5, 16), torch.randn(3, 2, 5, 16))
    with pytest.raises(ValueError, match="batch/head sizes differ"):
        attention(q, torch.randn(2, 4, 5, 16), torch.randn(2, 4, 5, 16))
    with pytest.raises(ValueError, match="head dims differ: q 16, k 32, v 32"):
        attention(q, torch.randn(2, 2, 5, 32), torch.randn(2, 2, 5, 32))
    with pytest.raises(ValueError, match="key lengths differ"):
        attention(q, torch.randn(2, 2, 5, 16), torch.randn(2, 2, 6, 16))


@pytest.mark.parametrize("dim", [8, 256])
def test_error_head_dim_out_of_range(dim):
    q = torch.randn(1, 1, 4, dim)
    with pytest.raises(KernelUnsupportedError, match=f"head dim {dim} outside \\[16, 128\\]"):
        attention(q, q, q, backend="triton")


def test_error_mask_shape_and_dtype():
    q = torch.randn(2, 1, 4, 16)
    expected = r"key_padding_mask must be bool \[B, Lk\] = \[2, 4\], got torch.bool \[2, 5\]"
    with pytest.raises(ValueError, match=expected):
        attention(q, q, q, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="got torch.float32"):
        attention(q, q, q, key_padding_mask=torch.zeros(2, 4))


def test_error_dtype_and_backend():
    q = torch.randn(1, 1, 4, 16, dtype=torch.float64)
    with pytest.raises(KernelUnsupportedError, match="dtype torch.float64 unsupported"):
        attention(q, q, q, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        attention(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match="dtypes differ"):
        attention(q, q.float(), q)


# ---------------------------------------------------------------------------------------------------- module
def _copy_of(theirs: nn.MultiheadAttention, **kwargs) -> MultiheadAttention:
    ours = MultiheadAttention(theirs.embed_dim, theirs.num_heads, kdim=theirs.kdim, vdim=theirs.vdim,
                              batch_first=theirs.batch_first, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_multihead_self_attention_matches_torch(backend):
    torch.manual_seed(4)
    theirs = nn.MultiheadAttention(64, 4, batch_first=True)
    nn.init.normal_(theirs.in_proj_bias)
    ours = _copy_of(theirs, backend=backend)
    x = torch.randn(2, 13, 64, requires_grad=True)
    mask = _mask(2, 13, fully_masked_row=False)
    got = ours(x, x, x, key_padding_mask=mask)
    expected = theirs(x, x, x, key_padding_mask=mask, need_weights=False)[0]
    assert got.shape == (2, 13, 64)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    (g_ours,) = torch.autograd.grad(got.square().sum(), x)
    (g_theirs,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-4, rtol=1e-3)


def test_multihead_cross_attention_kdim_vdim_sequence_first():
    """MBF-style cross-attention (4 queries over 7 tokens), separate key/value widths, [L, B, E] layout."""
    torch.manual_seed(5)
    theirs = nn.MultiheadAttention(32, 2, kdim=24, vdim=40, batch_first=False)
    ours = _copy_of(theirs, backend="triton")
    query, key, value = torch.randn(4, 3, 32), torch.randn(7, 3, 24), torch.randn(7, 3, 40)
    got = ours(query, key, value)
    expected = theirs(query, key, value, need_weights=False)[0]
    assert got.shape == (4, 3, 32)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_multihead_rejects_bad_sizes():
    with pytest.raises(ValueError, match="embed_dim 30 must be a positive multiple of num_heads 4"):
        MultiheadAttention(30, 4)
    module = MultiheadAttention(32, 2)
    with pytest.raises(ValueError, match="feature sizes 16/16/16 != embed_dim/kdim/vdim 32/32/32"):
        x = torch.randn(1, 3, 16)
        module(x, x, x)


def test_importing_the_kernels_touches_no_cuda():
    """No device queries at import: every torch.cuda entry point that would touch a device raises here."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "def boom(*a, **k):\n    raise SystemExit('CUDA touched at import')\n"
        "for name in ('init', 'is_available', 'device_count', 'get_device_properties', 'get_device_name',"
        " 'current_device', 'get_device_capability'):\n    setattr(torch.cuda, name, boom)\n"
        "import amodal.kernels.attention, amodal.kernels.slot_attention\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------- GPU
GPU_TOLERANCES = {  # TF32 dots for fp32 (when allowed), tensor-core fp16/bf16
    torch.float32: ((5e-3, 5e-3), (2e-2, 2e-2)),
    torch.float16: ((2e-3, 2e-3), (1e-2, 1e-2)),
    torch.bfloat16: ((1.6e-2, 1.6e-2), (6e-2, 4e-2)),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 4, 257, 300, 64), (1, 8, 129, 129, 128), (3, 2, 4, 128, 80),
                                   (2, 2, 1000, 37, 16), (1, 1, 1, 1, 96)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("masked", [False, True])
def test_gpu_triton_matches_reference(shape, dtype, masked):
    q, k, v = _inputs(shape, dtype, device="cuda")
    mask = _mask(shape[0], shape[3], fully_masked_row=shape[0] > 1, device="cuda") if masked else None
    out_tol, grad_tol = GPU_TOLERANCES[dtype]
    grad_out = torch.randn(q.shape, device="cuda")
    torch.set_float32_matmul_precision("high")  # let the Triton path use TF32 for fp32 ...
    try:
        out, grads = _run(q, k, v, mask, "auto", grad_out)
    finally:
        torch.set_float32_matmul_precision("highest")  # ... but not the reference
    exp_out, exp_grads = _expected(q, k, v, mask, grad_out)
    torch.testing.assert_close(out.float(), exp_out, atol=out_tol[0], rtol=out_tol[1])
    for name, got, exp in zip(("dq", "dk", "dv"), grads, exp_grads):
        torch.testing.assert_close(got.float(), exp, atol=grad_tol[0], rtol=grad_tol[1], msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------- GPU compiler
# The interpreter accepts things the GPU compiler rejects (tl.dot dims < 16, shared memory beyond the SM's limit).
# Compile the kernels ahead of time for sm_90 (H100/H200) with the launchers' own configs; no GPU needed (the wheel's
# ptxas), run in a subprocess because TRITON_INTERPRET is fixed at import.
def test_kernels_compile_for_sm90_within_shared_memory(tmp_path):
    from amodal.kernels.attention import _launch_configs

    kernels = {"fwd": "_attention_fwd_kernel", "pre": "_attention_bwd_preprocess_kernel",
               "dkdv": "_attention_bwd_dkdv_kernel", "dq": "_attention_bwd_dq_kernel"}
    jobs = []
    # bf16 at head dim 64 (the models' case) and fp32/TF32 at head dim 128 (the largest tiles)
    for dtype, dim, precision, names in (("bf16", 64, "tf32", ("fwd", "pre", "dkdv", "dq")),
                                         ("fp32", 128, "tf32", ("fwd", "dkdv", "dq"))):
        cfgs = _launch_configs(4096, 4096, dim)
        for name in names:
            cfg = dict(cfgs[name])
            launch = {"num_warps": cfg.pop("num_warps"), "num_stages": cfg.pop("num_stages")}
            if name != "pre":
                cfg.update(HAS_MASK=True, UPCAST=False, PRECISION=precision)
            jobs.append({"module": "amodal.kernels.attention", "kernel": kernels[name], "dtype": dtype,
                         "constexprs": cfg, **launch})
    results = aot_compile(jobs, tmp_path)
    assert len(results) == len(jobs)
    for result in results:
        assert 0 < result["shared"] <= SM90_MAX_SHARED_BYTES, result
