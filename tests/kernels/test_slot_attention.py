"""amodal.kernels.slot_attention: Triton (interpreter on CPU) and CPU paths against the eager reference, forward,
attention map and every gradient; launcher errors; the iterative SlotAttention module trains."""
from __future__ import annotations

import pytest
import torch

import amodal.kernels.slot_attention as slot_module
from amodal.errors import KernelUnsupportedError
from amodal.kernels.slot_attention import (
    SlotAttention,
    slot_attention,
    slot_attention_reference,
    slot_attention_with_attn,
)
from tests.support.sm90 import SM90_MAX_SHARED_BYTES, aot_compile

# (atol, rtol) for updates/attn and for gradients, against an fp32 reference on the same (rounded) inputs
TOLERANCES = {
    torch.float32: ((1e-5, 2e-5), (2e-5, 5e-5)),
    torch.float16: ((2e-3, 2e-3), (5e-3, 1e-2)),
    torch.bfloat16: ((1.6e-2, 1.6e-2), (3e-2, 4e-2)),
}

# (B, S, N, D): one slot / one input, 3 and 7 slots, primes, a non-power-of-two feature dim, several input blocks
SHAPES = [
    (1, 1, 1, 16),
    (2, 3, 13, 16),
    (2, 7, 37, 20),
    (3, 5, 150, 64),
    (1, 17, 40, 128),
]


def _inputs(shape, dtype, device="cpu", seed=0):
    batch, slots, inputs, dim = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, slots, dim, generator=gen)
    k = torch.randn(batch, inputs, dim, generator=gen)
    v = torch.randn(batch, inputs, dim, generator=gen)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]


def _assert_matches(q, k, v, backend, dtype):
    out_tol, grad_tol = TOLERANCES[dtype]
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(2)).to(q.device)
    updates, attn = slot_attention_with_attn(q, k, v, backend=backend)
    grads = torch.autograd.grad(updates, (q, k, v), grad_out.to(dtype))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    exp_updates, exp_attn = slot_attention_reference(q32, k32, v32)
    exp_grads = torch.autograd.grad(exp_updates, (q32, k32, v32), grad_out)
    assert updates.dtype == dtype and updates.shape == q.shape
    assert attn.shape == (q.shape[0], q.shape[1], k.shape[1]) and not attn.requires_grad
    torch.testing.assert_close(updates.float(), exp_updates, atol=out_tol[0], rtol=out_tol[1])
    torch.testing.assert_close(attn.float(), exp_attn.detach(), atol=out_tol[0], rtol=out_tol[1])
    for name, got, exp in zip(("dq", "dk", "dv"), grads, exp_grads):
        assert got.shape == exp.shape, name
        torch.testing.assert_close(got.float(), exp, atol=grad_tol[0], rtol=grad_tol[1], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_reference(shape, dtype):
    _assert_matches(*_inputs(shape, dtype), "triton", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_multi_block_chunks_match_reference(monkeypatch, dtype):
    """Few programs, so each one loops over several input blocks and partial sums are added over splits."""
    monkeypatch.setattr(slot_module, "TARGET_PROGRAMS", 4)
    shape = (2, 3, 333, 16)
    cfg = slot_module._config(2, 3, 333, 16, torch.float32)
    assert cfg["chunk_n"] > cfg["BLOCK_N"] and cfg["num_splits"] > 1
    _assert_matches(*_inputs(shape, dtype), "triton", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_path_matches_reference(dtype):
    _assert_matches(*_inputs((3, 7, 61, 32), dtype), "cpu", dtype)


def test_strided_inputs_and_custom_scale_eps():
    gen = torch.Generator().manual_seed(3)
    kv = torch.randn(2, 29, 2, 24, generator=gen)
    k, v = kv[:, :, 0], kv[:, :, 1]
    q = torch.randn(2, 24, 5, generator=gen).transpose(1, 2)
    got = slot_attention(q, k, v, eps=0.5, scale=0.7, backend="triton")
    expected = slot_attention_reference(q, k, v, eps=0.5, scale=0.7)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=2e-5)
    assert not torch.allclose(got, slot_attention_reference(q, k, v)[0], atol=1e-3)


def test_attention_is_softmax_over_slots_and_updates_are_weighted_means():
    q, k, v = _inputs((2, 4, 9, 16), torch.float32)
    updates, attn = slot_attention_with_attn(q, k, v, eps=0.0, backend="triton")
    torch.testing.assert_close(attn.sum(dim=1), torch.ones(2, 9), atol=1e-6, rtol=0)
    # a weighted mean of the inputs: with all values equal, every update equals that value
    same = torch.ones(2, 9, 16) * 3.0
    torch.testing.assert_close(slot_attention(q, k, same, eps=0.0, backend="triton"), torch.full((2, 4, 16), 3.0))
    assert updates.shape == (2, 4, 16)


def test_auto_on_cpu_uses_the_cpu_path():
    q, k, v = _inputs((1, 3, 6, 16), torch.float32)
    torch.testing.assert_close(slot_attention(q, k, v), slot_attention(q, k, v, backend="cpu"), atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    q, k, v = _inputs((2, 3, 5, 4), torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: slot_attention(a, b, c, eps=1e-3, backend=backend), (q, k, v))


# ---------------------------------------------------------------------------------------------------- errors
def test_errors_name_the_sizes():
    q = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match=r"k must be 3-D .*got \(2, 5, 1, 16\)"):
        slot_attention(q, torch.randn(2, 5, 1, 16), torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="batch/input sizes differ"):
        slot_attention(q, torch.randn(3, 5, 16), torch.randn(3, 5, 16))
    with pytest.raises(ValueError, match="batch/input sizes differ"):
        slot_attention(q, torch.randn(2, 5, 16), torch.randn(2, 6, 16))
    with pytest.raises(ValueError, match="feature dims differ: q 16, k 8, v 8"):
        slot_attention(q, torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="eps must be >= 0, got -1"):
        slot_attention(q, torch.randn(2, 5, 16), torch.randn(2, 5, 16), eps=-1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        slot_attention(q, q, q, backend="gpu")


def test_triton_limits_raise_kernel_unsupported():
    with pytest.raises(KernelUnsupportedError, match="129 slots outside"):
        x = torch.randn(1, 129, 16)
        slot_attention(x, torch.randn(1, 4, 16), torch.randn(1, 4, 16), backend="triton")
    with pytest.raises(KernelUnsupportedError, match="feature dim 520 outside"):
        x = torch.randn(1, 2, 520)
        slot_attention(x, x, x, backend="triton")
    with pytest.raises(KernelUnsupportedError, match=r"64 slots × dim 512 in torch.bfloat16 exceeds the 32 KiB"):
        x = torch.randn(1, 64, 512, dtype=torch.bfloat16)
        slot_attention(x, x[:, :3], x[:, :3], backend="triton")
    with pytest.raises(KernelUnsupportedError, match="dtype torch.float64"):
        x = torch.randn(1, 2, 16, dtype=torch.float64)
        slot_attention(x, x, x, backend="triton")


# ---------------------------------------------------------------------------------------------------- module
def _toy_batch(gen: torch.Generator, batch: int = 16, num_inputs: int = 12, dim: int = 8):
    """Inputs are two clusters of points; the target asks the slots to recover the two cluster centres."""
    centres = torch.randn(batch, 2, dim, generator=gen) * 2.0
    assign = torch.randint(0, 2, (batch, num_inputs), generator=gen)
    points = centres.gather(1, assign[..., None].expand(-1, -1, dim)) + 0.1 * torch.randn(batch, num_inputs, dim,
                                                                                          generator=gen)
    return points, centres.sum(dim=1)


def test_slot_attention_module_trains():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    module = SlotAttention(num_slots=3, dim=16, iters=2, input_dim=8, backend="cpu")
    head = torch.nn.Linear(16, 8)
    params = list(module.parameters()) + list(head.parameters())
    optimiser = torch.optim.Adam(params, lr=3e-3)
    points, target = _toy_batch(gen)
    losses = []
    for _ in range(25):
        slots, attn = module(points)
        loss = (head(slots).sum(dim=1) - target).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert attn.shape == (16, 3, 12)
    assert all(p.grad is not None for p in module.parameters())
    assert losses[-1] < 0.5 * losses[0], losses


def test_slot_attention_module_triton_matches_cpu_backend():
    torch.manual_seed(1)
    cpu = SlotAttention(num_slots=4, dim=16, iters=2, input_dim=12, backend="cpu")
    triton_module = SlotAttention(num_slots=4, dim=16, iters=2, input_dim=12, backend="triton")
    triton_module.load_state_dict(cpu.state_dict())
    inputs = torch.randn(2, 10, 12)
    slots0 = cpu.initial_slots(2, generator=torch.Generator().manual_seed(5))
    got = triton_module(inputs, slots=slots0)
    expected = cpu(inputs, slots=slots0)
    torch.testing.assert_close(got.slots, expected.slots, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.attn, expected.attn, atol=1e-5, rtol=1e-4)
    used = [name for name, _ in cpu.named_parameters() if not name.startswith("slots_")]  # slots given: no init
    g_got = torch.autograd.grad(got.slots.sum(), [dict(triton_module.named_parameters())[n] for n in used])
    g_exp = torch.autograd.grad(expected.slots.sum(), [dict(cpu.named_parameters())[n] for n in used])
    for a, b in zip(g_got, g_exp):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_slot_attention_module_rejects_bad_config_and_slots():
    with pytest.raises(ValueError, match="iters must be >= 1, got 0"):
        SlotAttention(num_slots=2, dim=8, iters=0)
    module = SlotAttention(num_slots=2, dim=8)
    with pytest.raises(ValueError, match=r"slots must be \[1, S, 8\], got \(1, 2, 4\)"):
        module(torch.randn(1, 5, 8), slots=torch.randn(1, 2, 4))


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(4, 8, 1000, 64), (2, 3, 4096, 512), (3, 64, 257, 96), (1, 1, 1, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_triton_matches_reference(shape, dtype):
    q, k, v = _inputs(shape, dtype, device="cuda")
    grad_out = torch.randn(q.shape, device="cuda")
    torch.set_float32_matmul_precision("high")  # TF32 for the Triton path's fp32 dots ...
    try:
        updates, attn = slot_attention_with_attn(q, k, v)
        grads = torch.autograd.grad(updates, (q, k, v), grad_out.to(dtype))
    finally:
        torch.set_float32_matmul_precision("highest")  # ... not for the reference
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    exp_updates, exp_attn = slot_attention_reference(q32, k32, v32)
    exp_grads = torch.autograd.grad(exp_updates, (q32, k32, v32), grad_out)
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    torch.testing.assert_close(updates.float(), exp_updates, atol=tol, rtol=tol)
    torch.testing.assert_close(attn.float(), exp_attn.detach(), atol=tol, rtol=tol)
    for name, got, exp in zip(("dq", "dk", "dv"), grads, exp_grads):
        torch.testing.assert_close(got.float(), exp, atol=3 * tol, rtol=3 * tol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------------- GPU compiler
# The interpreter accepts things the GPU compiler rejects (tl.dot dims < 16, shared memory beyond the SM's limit).
# Compile the kernels ahead of time for sm_90 (H100/H200) with the launchers' own configs; no GPU needed (the wheel's
# ptxas), run in a subprocess because TRITON_INTERPRET is fixed at import.
def test_kernels_compile_for_sm90_within_shared_memory(tmp_path):
    jobs = []
    # EoRaS's case (8 slots × 512, bf16) and the largest fp32 slot tile the launcher accepts (64 × 128)
    for dtype, torch_dtype, slots, dim in (("bf16", torch.bfloat16, 8, 512), ("fp32", torch.float32, 64, 128)):
        cfg = slot_module._config(32, slots, 4096, dim, torch_dtype)
        launch = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
        blocks = {key: cfg[key] for key in ("BLOCK_S", "BLOCK_N", "BLOCK_D")}
        for kernel, extra in (("_slot_attention_fwd_kernel", {"RETURN_ATTN": True}),
                              ("_slot_attention_bwd_kernel", {})):
            jobs.append({"module": "amodal.kernels.slot_attention", "kernel": kernel, "dtype": dtype,
                         "constexprs": {**blocks, **extra, "UPCAST": False, "PRECISION": "tf32"}, **launch})
    results = aot_compile(jobs, tmp_path)
    assert len(results) == len(jobs)
    for result in results:
        assert 0 < result["shared"] <= SM90_MAX_SHARED_BYTES, result
