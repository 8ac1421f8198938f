"""Temporal feature calibration: shapes, gradients (finite differences in float64), deformable offset layout."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import deform_conv2d

from amodal.errors import ConfigError
from amodal.models.cmasktrack.calibration import TemporalCalibration


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomised(module: TemporalCalibration, seed: int, scale: float = 0.3) -> TemporalCalibration:
    """The zero-initialised offset head made non-zero, so offsets are fractional and all gradients flow."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.offset_out.weight.copy_(torch.randn(module.offset_out.weight.shape, generator=g) * scale)
        module.offset_out.bias.copy_(torch.randn(module.offset_out.bias.shape, generator=g) * scale)
    return module


def test_shapes_every_level_and_identity_at_init():
    torch.manual_seed(0)
    cal = TemporalCalibration(channels=8, hidden_channels=6)
    cur = OrderedDict((k, torch.randn(2, 8, h, w)) for k, (h, w) in {"0": (24, 40), "1": (12, 20), "p": (3, 5)}.items())
    ref = OrderedDict((k, torch.randn_like(v)) for k, v in cur.items())
    out = cal.calibrate_levels(cur, ref)
    assert list(out) == list(cur)
    for k in cur:
        assert out[k].shape == cur[k].shape
        off = cal.offsets(cur[k], ref[k])
        assert off.shape == (2, 18, *cur[k].shape[-2:])
        assert torch.count_nonzero(off) == 0  # zero-initialised head: the regular 3×3 grid
        plain = torch.nn.functional.conv2d(ref[k], cal.weight, padding=1)
        torch.testing.assert_close(out[k], plain + cur[k], rtol=1e-4, atol=1e-4)


def test_mismatched_reference_is_a_clear_error():
    cal = TemporalCalibration(channels=4, hidden_channels=4)
    with pytest.raises(ConfigError, match=r"\(1, 4, 6, 6\).*\(1, 4, 6, 7\)"):
        cal(torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 7))


def test_gradcheck_float64_reference_backend():
    torch.manual_seed(1)
    cal = _randomised(TemporalCalibration(channels=2, hidden_channels=3, patch_size=3, dilation_patch=2,
                                          correlation_backend="reference"), seed=1).double()
    cur = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cal(a, b), (cur, ref), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_gradients_reach_offset_convolutions_with_default_backend():
    torch.manual_seed(2)
    cal = _randomised(TemporalCalibration(channels=8, hidden_channels=8), seed=2)
    cur, ref = torch.randn(2, 8, 12, 20), torch.randn(2, 8, 12, 20)
    (cal(cur, ref) ** 2).mean().backward()
    for name, p in cal.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_deform_offset_layout_dx_plus_one_shifts_input_left():
    """Offsets (dy, dx) = (0, +1) on every tap of an identity kernel read the input one column to the right:
    channel 2k is dy and 2k+1 is dx of tap k, the layout ``TemporalCalibration`` documents."""
    torch.manual_seed(3)
    x = torch.randn(1, 3, 7, 9)
    weight = torch.zeros(3, 3, 3, 3)
    for c in range(3):
        weight[c, c, 1, 1] = 1.0  # centre tap, per channel identity
    offsets = torch.zeros(1, 18, 7, 9)
    offsets[:, 1::2] = 1.0  # dx of every tap
    out = deform_conv2d(x, offsets, weight, padding=(1, 1))
    torch.testing.assert_close(out[..., :-1], x[..., 1:])
    assert torch.count_nonzero(out[..., -1]) == 0  # sampled beyond the right border: zero
    offsets = torch.zeros(1, 18, 7, 9)
    offsets[:, 0::2] = -1.0  # dy = -1: one row up
    out = deform_conv2d(x, offsets, weight, padding=(1, 1))
    torch.testing.assert_close(out[..., 1:, :], x[..., :-1, :])
