"""SAM's attention through our dispatcher, registered with transformers' AttentionInterface: the encoder (windowed
and global layers, relative-position bias folded into q and k) and the whole detector give what SDPA gives."""
from __future__ import annotations

import pytest
import torch

from amodal.kernels.attention import attention
from amodal.models.xray import build_xray, tiny_config
from amodal.models.xray.attention import DISPATCHER, dispatcher_attention, fold_relative_bias

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 128  # a 8 × 8 map: windowed layers (window 4) and global ones


def _pair():
    torch.manual_seed(0)
    config = tiny_config(image_size=SIZE, rpn_post_nms_test=32, box_detections_per_img=8, max_mask_rois=8)
    sdpa = build_xray(config=config).eval()
    ours = build_xray(config=config.__class__(**{**config.__dict__, "attention": "dispatcher"})).eval()
    ours.load_state_dict(sdpa.state_dict())
    return sdpa, ours


def test_sam_modules_select_the_registered_dispatcher():
    from transformers import AttentionInterface

    _, ours = _pair()
    assert AttentionInterface._global_mapping[DISPATCHER] is dispatcher_attention
    assert {type(layer.attn).__name__ for layer in ours.encoder.layers} == {"SamVisionDispatcherAttention"}
    assert ours.target_decoder.config._attn_implementation == DISPATCHER


def test_encoder_output_equals_sdpa():
    sdpa, ours = _pair()
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        a = sdpa.encoder(pixels).last_hidden_state
        b = ours.encoder(pixels).last_hidden_state
    assert a.shape == (2, 64, SIZE // 16, SIZE // 16)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_detections_equal_sdpa():
    sdpa, ours = _pair()
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, 96, SIZE)]
    with torch.inference_mode():
        for a, b in zip(sdpa.detect(images), ours.detect(images)):
            torch.testing.assert_close(b.boxes_xyxy, a.boxes_xyxy, rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(b.masks, a.masks, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kh, kw, d", [(3, 5, 16), (7, 7, 24), (1, 4, 8)])
def test_folded_bias_gives_the_biased_scores(kh, kw, d):
    g = torch.Generator().manual_seed(kh * 10 + kw)
    b, h, length = 2, 3, kh * kw
    q, k, v = (torch.randn(b, h, length, d, generator=g, dtype=torch.float64) for _ in range(3))
    rel_h = torch.randn(b, h, length, kh, generator=g, dtype=torch.float64)
    rel_w = torch.randn(b, h, length, kw, generator=g, dtype=torch.float64)
    scale = d ** -0.5
    j = torch.arange(length)
    bias = rel_h[..., j // kw] + rel_w[..., j % kw]  # [B, H, L, L]
    expected = torch.softmax(scale * q @ k.transpose(-1, -2) + bias, dim=-1) @ v
    q2, k2, v2 = fold_relative_bias(q, k, v, rel_h, rel_w, scale)
    got = attention(q2, k2, v2, scale=1.0, backend="reference")[..., :d]
    torch.testing.assert_close(got, expected)
    module = torch.nn.Module().eval()
    out, _ = dispatcher_attention(module, q.float(), k.float(), v.float(), None, scaling=scale,
                                  rel_pos=(rel_h.float(), rel_w.float()))
    torch.testing.assert_close(out.transpose(1, 2), expected.float(), rtol=1e-4, atol=1e-5)


def test_stage_setting_selects_the_dispatcher():
    from amodal.engine.stages.xray import XraySettings, XrayStage
    from amodal.errors import ConfigError

    stage = XrayStage(XraySettings(attention="dispatcher"))  # the shipped weights, attention overridden
    assert stage.loaded.config.attention == "dispatcher"
    assert {type(layer.attn).__name__ for layer in stage.loaded.model.encoder.layers} == {"SamVisionDispatcherAttention"}
    with pytest.raises(ConfigError, match="attention must be one of"):
        XraySettings(attention="flash")
