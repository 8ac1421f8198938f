"""Correlation: reference vs the formula, gradcheck, CPU path and Triton kernels (interpreter on CPU) vs reference."""
from __future__ import annotations

import itertools

import pytest
import torch

from amodal.errors import KernelUnsupportedError
from amodal.kernels.correlation import (
    CorrelationParams,
    correlation,
    correlation_cpu_bwd,
    correlation_reference,
    correlation_triton_bwd,
)

TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (3e-2, 3e-2), torch.float64: (1e-10, 1e-10)}

# (B, C, H, W), params: awkward sizes, partial tiles, even and odd patches, every geometric knob
CASES = [
    ((1, 1, 1, 1), dict(patch_size=1)),
    ((2, 3, 5, 7), dict(patch_size=3)),
    ((1, 3, 7, 5), dict(patch_size=4, dilation_patch=2)),
    ((2, 2, 6, 11), dict(kernel_size=3, patch_size=(3, 2), stride=2, padding=1, dilation=2, dilation_patch=(2, 1))),
    ((1, 5, 9, 13), dict(kernel_size=(2, 3), patch_size=5, stride=(1, 3), padding=(0, 2))),
]
CASE_IDS = ["1x1", "patch3", "patch4dp2", "k3s2p1d2", "k2x3s1x3"]


def _naive(a: torch.Tensor, b: torch.Tensor, k, patch, stride, pad, dil, dp) -> torch.Tensor:
    """The formula, element by element (tiny inputs only)."""
    n_, c_, h_, w_ = a.shape
    oh = (h_ + 2 * pad[0] - ((k[0] - 1) * dil[0] + 1)) // stride[0] + 1
    ow = (w_ + 2 * pad[1] - ((k[1] - 1) * dil[1] + 1)) // stride[1] + 1
    out = torch.zeros(n_, patch[0], patch[1], oh, ow, dtype=a.dtype)
    for n, ph, pw, h, w, i, j in itertools.product(range(n_), range(patch[0]), range(patch[1]), range(oh), range(ow),
                                                   range(k[0]), range(k[1])):
        y, x = -pad[0] + h * stride[0] + i * dil[0], -pad[1] + w * stride[1] + j * dil[1]
        yb, xb = y + (ph - (patch[0] - 1) // 2) * dp[0], x + (pw - (patch[1] - 1) // 2) * dp[1]
        if 0 <= y < h_ and 0 <= x < w_ and 0 <= yb < h_ and 0 <= xb < w_:
            out[n, ph, pw, h, w] += (a[n, :, y, x] * b[n, :, yb, xb]).sum()
    return out


def _inputs(shape, dtype, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    b = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    return a, b


def _forward_backward(a, b, params, backend, grad_out=None):
    a = a.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    if backend == "reference":
        out = correlation_reference(a, b, **params)
    else:
        out = correlation(a, b, backend=backend, **params)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
    grad_a, grad_b = torch.autograd.grad(out, (a, b), grad_out)
    return out, grad_a, grad_b, grad_out


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize(
    "params",
    [
        dict(kernel_size=(1, 1), patch_size=(2, 2), stride=(1, 1), padding=(0, 0), dilation=(1, 1), dilation_patch=(2, 2)),
        dict(kernel_size=(2, 1), patch_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), dilation_patch=(1, 3)),
    ],
)
def test_reference_matches_the_formula(params):
    a, b = _inputs((2, 2, 5, 6), torch.float64, requires_grad=False)
    expected = _naive(a, b, params["kernel_size"], params["patch_size"], params["stride"], params["padding"],
                      params["dilation"], params["dilation_patch"])
    torch.testing.assert_close(correlation_reference(a, b, **params), expected)


def test_reference_gradcheck_float64():
    a, b = _inputs((1, 2, 4, 5), torch.float64)
    params = dict(kernel_size=2, patch_size=2, stride=1, padding=1, dilation=1, dilation_patch=2)
    assert torch.autograd.gradcheck(lambda x, y: correlation_reference(x, y, **params), (a, b))


def test_cpu_path_gradcheck_float64():
    a, b = _inputs((1, 2, 4, 5), torch.float64)
    params = dict(kernel_size=2, patch_size=(3, 2), stride=(1, 2), padding=1, dilation=1, dilation_patch=(1, 2))
    assert torch.autograd.gradcheck(lambda x, y: correlation(x, y, backend="cpu", **params), (a, b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape,params",
    CASES + [
        ((2, 4, 12, 37), dict(patch_size=16, dilation_patch=2)),
        # column phases (stride 1, dilation_patch 2) with taps and several tiles per phase
        ((1, 3, 6, 37), dict(kernel_size=(1, 3), patch_size=3, padding=(0, 2), dilation=2, dilation_patch=(1, 2))),
        # several tiles without phases (stride 2)
        ((1, 2, 4, 70), dict(patch_size=3, stride=(1, 2), dilation_patch=3)),
    ],
    ids=CASE_IDS + ["cmasktrack", "phases-taps-tiles", "tiles-stride2"],
)
def test_cpu_path_matches_reference(shape, params, dtype):
    a, b = _inputs(shape, dtype)
    out_ref, ga_ref, gb_ref, grad_out = _forward_backward(a, b, params, "reference")
    out, ga, gb, _ = _forward_backward(a, b, params, "cpu", grad_out)
    scale = shape[1]
    _close(out, out_ref, dtype, scale)
    _close(ga, ga_ref, dtype, scale)
    _close(gb, gb_ref, dtype, scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_path_half_inputs(dtype):
    params = dict(kernel_size=2, patch_size=4, stride=2, dilation_patch=2)
    a, b = _inputs((1, 4, 7, 9), dtype)
    out_ref, ga_ref, gb_ref, grad_out = _forward_backward(a, b, params, "reference")
    out, ga, gb, _ = _forward_backward(a, b, params, "cpu", grad_out)
    assert out.dtype == ga.dtype == gb.dtype == dtype
    for actual, expected in ((out, out_ref), (ga, ga_ref), (gb, gb_ref)):
        _close(actual, expected, dtype, scale=4.0)


def test_cpu_backward_only_requested_gradients():
    prm = CorrelationParams.make(1, 3, 1, 0, 1, 1)
    a, b = _inputs((1, 2, 4, 4), torch.float32, requires_grad=False)
    g = torch.ones(1, 3, 3, 4, 4)
    grad_a, grad_b = correlation_cpu_bwd(g, a, b, prm, need_a=False, need_b=True)
    assert grad_a is None and grad_b is not None and grad_b.shape == a.shape


@pytest.mark.parametrize("shape,params", CASES, ids=CASE_IDS)
def test_triton_interpreter_matches_reference_fp32(shape, params):
    a, b = _inputs(shape, torch.float32)
    out_ref, ga_ref, gb_ref, grad_out = _forward_backward(a, b, params, "reference")
    out, ga, gb, _ = _forward_backward(a, b, params, "triton", grad_out)
    scale = shape[1]
    _close(out, out_ref, torch.float32, scale)
    _close(ga, ga_ref, torch.float32, scale)
    _close(gb, gb_ref, torch.float32, scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,params", [CASES[2], CASES[3]], ids=[CASE_IDS[2], CASE_IDS[3]])
def test_triton_interpreter_half_precision(shape, params, dtype):
    a, b = _inputs(shape, dtype)
    out_ref, ga_ref, gb_ref, grad_out = _forward_backward(a, b, params, "reference")
    out, ga, gb, _ = _forward_backward(a, b, params, "triton", grad_out)
    assert out.dtype == ga.dtype == gb.dtype == dtype
    for actual, expected in ((out, out_ref), (ga, ga_ref), (gb, gb_ref)):
        _close(actual, expected, dtype, scale=shape[1])


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_even_patch_uses_one_displacement_convention(backend):
    """patch 16, dilation_patch 2 (CMaskTrack): index 7 is the zero shift, index 8 is +2 rows/cols, forward and
    backward alike (the backward is checked against the reference's autograd)."""
    a, b = _inputs((1, 2, 6, 7), torch.float32)
    params = dict(patch_size=16, dilation_patch=2)
    out, ga, gb, grad_out = _forward_backward(a, b, params, backend)
    torch.testing.assert_close(out[:, 7, 7], (a * b).sum(1).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 8, 8, :-2, :-2], (a[:, :, :-2, :-2] * b[:, :, 2:, 2:]).sum(1).detach(),
                               rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(out[:, 0, 0, :, :]) == 0  # shift −14 leaves the 6×7 map entirely
    if backend != "reference":
        _, ga_ref, gb_ref, _ = _forward_backward(a, b, params, "reference", grad_out)
        _close(ga, ga_ref, torch.float32, 2.0)
        _close(gb, gb_ref, torch.float32, 2.0)


def test_auto_backend_on_cpu_tensors_is_the_cpu_path():
    a, b = _inputs((1, 3, 5, 6), torch.float32, requires_grad=False)
    torch.testing.assert_close(correlation(a, b, patch_size=3), correlation(a, b, patch_size=3, backend="cpu"))


def test_errors_name_the_sizes():
    a = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\].*\(2, 5, 5\)"):
        correlation(a[0], a[0])
    with pytest.raises(ValueError, match=r"same shape.*\(1, 2, 5, 5\).*\(1, 3, 5, 5\)"):
        correlation(a, torch.randn(1, 3, 5, 5))
    with pytest.raises(KernelUnsupportedError, match="torch.int32"):
        correlation(a.int(), a.int())
    with pytest.raises(KernelUnsupportedError, match="same dtype"):
        correlation(a, a.half())
    with pytest.raises(KernelUnsupportedError, match="float64"):
        correlation(a.double(), a.double(), backend="triton")
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        correlation(a, a, patch_size=0)
    with pytest.raises(ValueError, match="too small.*kernel_size \\(7, 7\\)"):
        correlation(a, a, kernel_size=7)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        correlation(a, a, backend="cuda")
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        correlation(a, a, kernel_size=(1, 2, 3))
    prm = CorrelationParams.make(1, 3, 1, 0, 1, 1)
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 3, 3, 4, 4\), expected \(1, 3, 3, 5, 5\)"):
        correlation_triton_bwd(torch.zeros(1, 3, 3, 4, 4), a, a, prm)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape,params",
    [
        ((4, 64, 24, 32), dict(patch_size=21, dilation_patch=2)),
        ((2, 32, 19, 23), dict(patch_size=16, dilation_patch=2)),
        ((3, 17, 13, 29), dict(kernel_size=3, patch_size=(5, 4), stride=2, padding=1, dilation=2, dilation_patch=(1, 2))),
    ],
    ids=["flownetc", "cmasktrack", "general"],
)
def test_triton_cuda_matches_reference(shape, params, dtype):
    a, b = (x.cuda() for x in _inputs(shape, dtype))
    out_ref, ga_ref, gb_ref, grad_out = _forward_backward(a, b, params, "reference")
    out, ga, gb, _ = _forward_backward(a, b, params, "auto", grad_out)
    # TF32-level tolerance: fp32 kernels accumulate in a different order than the reference's reductions
    rtol, atol = (2e-3, 2e-3) if dtype == torch.float32 else TOL[dtype]
    for actual, expected in ((out, out_ref), (ga, ga_ref), (gb, gb_ref)):
        torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * shape[1] ** 0.5)
