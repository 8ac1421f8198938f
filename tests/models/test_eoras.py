"""EoRaS on the tiny config: shapes and gradients, the BEV projection against K, crop intrinsics, the temporal modes
against their step-by-step streaming runs, per-track state reset, the ablation flags and weights loading."""
from __future__ import annotations

import math

import pytest
import torch

from amodal.errors import CheckpointError, ConfigError
from amodal.models.eoras import (
    EoRaSConfig,
    EoRaSTargets,
    build_eoras,
    crop_images,
    crop_intrinsics,
    enlarged_crop_boxes,
    eoras_losses,
    intrinsics_from_fov,
    kubric_to_pixel_intrinsics,
    load_eoras,
    paste_masks,
    tiny_config,
)
from amodal.models.eoras.geometry import bev_grid_points, project_to_grid
from amodal.models.eoras.parts import BEVTranslation
from amodal.models.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICRO = dict(input_size=32, widths=(8, 8, 16, 16), stem_channels=8, gn_groups=4, fpn_channels=16,
             bev_width_bins=8, bev_depth_bins=8, bev_height_bins=2, d_model=16, num_heads=2, ffn_dim=32,
             num_slots=3, decoder_channels=(8, 8), attention_backend="cpu")


def _K(n: int, size: int = 32) -> torch.Tensor:
    K = torch.tensor([[40.0, 0.0, size / 2], [0.0, 40.0, size / 2], [0.0, 0.0, 1.0]])
    return K.expand(n, 3, 3).clone()


def _model(**overrides):
    torch.manual_seed(0)
    return build_eoras(config=tiny_config(**{**MICRO, **overrides})).eval()


def _clip(B: int = 2, T: int = 5, size: int = 32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, T, 3, size, size, generator=g), _K(B * T, size).reshape(B, T, 3, 3)


def test_tiny_config_shapes_and_every_parameter_gets_a_gradient():
    model = _model().train()
    crops, K = _clip()
    out = model(crops, K, mode="offline")
    M = model.config.mask_size
    assert M == 8 * (32 // 8 - 1) + 1 == 25
    assert out.amodal_logits.shape == out.visible_logits.shape == (2, 5, M, M)
    targets = EoRaSTargets((torch.rand(2, 5, M, M) > 0.5).float(), (torch.rand(2, 5, M, M) > 0.5).float())
    losses = eoras_losses(out, targets, model.config)
    assert set(losses) == {"loss_amodal", "loss_visible"}
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_paper_config_builds_the_official_sizes():
    cfg = EoRaSConfig()
    assert (cfg.feature_size, cfg.bev_size, cfg.mask_size, cfg.decoder_in_channels) == (16, (16, 16), 121, 1024)
    model = build_eoras(config=cfg)
    assert model.bev.down[0][0].in_channels == 256 * 5
    assert model.amodal_decoder.deconv1.weight.shape == (1024, 512, 3, 3)


def test_bev_projection_puts_a_known_point_at_the_pixel_K_predicts():
    cfg = tiny_config(**MICRO)
    bev = BEVTranslation(cfg)
    K = torch.tensor([[[30.0, 0.0, 14.0], [0.0, 25.0, 17.0], [0.0, 0.0, 1.0]]])
    pts = bev.points
    # pick a grid cell whose projection falls inside the crop, compute its pixel by hand from K
    u = K[0, 0, 0] * pts[0] / pts[2] + K[0, 0, 2]
    v = K[0, 1, 1] * pts[1] / pts[2] + K[0, 1, 2]
    inside = (pts[2] > 0) & (u > 2) & (u < 30) & (v > 2) & (v < 30)
    idx = int(torch.nonzero(inside)[len(torch.nonzero(inside)) // 2])
    grid = project_to_grid(K, pts, cfg.input_size, "crop")[0, idx]
    assert torch.allclose(grid, torch.stack([2 * u[idx] / 32 - 1, 2 * v[idx] / 32 - 1]), atol=1e-5)
    # a feature map that is 1 only in the P3 cell containing that pixel: the sampled volume is non-zero there
    f = cfg.feature_size
    p3 = torch.zeros(1, cfg.fpn_channels, f, f)
    col, row = int(u[idx] // (32 / f)), int(v[idx] // (32 / f))
    p3[0, :, row, col] = 1.0
    volume = bev.sample(p3, K)  # [1, C, Hb, Db, Wb]
    Wb, Hb, Db = cfg.bev_width_bins, cfg.bev_height_bins, cfg.bev_depth_bins
    w, rest = divmod(idx, Hb * Db)
    h, d = divmod(rest, Db)
    assert volume[0, 0, h, d, w] > 0.2
    # and the exact sampled value is the bilinear weight of that cell at the projected point
    expected = torch.nn.functional.grid_sample(p3[:, :1], grid.view(1, 1, 1, 2), align_corners=False)[0, 0, 0, 0]
    assert torch.isclose(volume[0, 0, h, d, w], expected)
    # points behind the camera sample nothing
    behind = project_to_grid(K, torch.tensor([[0.0], [0.0], [-5.0]]), 32, "crop")
    assert (behind.abs() > 1).all()


def test_crop_intrinsics_follow_the_crop_and_resize():
    K = torch.tensor([[200.0, 0.0, 160.0], [0.0, 180.0, 96.0], [0.0, 0.0, 1.0]])
    box = torch.tensor([[100.0, 40.0, 180.0, 100.0]])
    Kc = crop_intrinsics(K, box, 128)[0]
    X = torch.tensor([0.7, -0.2, 5.0])
    uv = (K @ X)[:2] / X[2]
    uv_crop = (Kc @ X)[:2] / X[2]
    expected = torch.stack([(uv[0] - 100) * 128 / 80, (uv[1] - 40) * 128 / 60])
    assert torch.allclose(uv_crop, expected, atol=1e-4)
    # roi_align cuts the same mapping: a bright pixel at (u, v) lands at the crop pixel the crop K gives
    image = torch.zeros(1, 1, 192, 320)
    image[0, 0, 70, 140] = 1.0  # pixel centre (140.5, 70.5)
    crop = crop_images(image, torch.tensor([0]), box, 128, sampling_ratio=1)[0, 0]
    r, c = divmod(int(crop.argmax()), 128)
    assert abs((c + 0.5) - (140.5 - 100) * 128 / 80) <= 1.0 and abs((r + 0.5) - (70.5 - 40) * 128 / 60) <= 1.1


def test_intrinsics_from_fov_and_kubric_conversion():
    K = intrinsics_from_fov(320, 192, 90.0)
    assert torch.allclose(K, torch.tensor([[160.0, 0, 160], [0, 160.0, 96], [0, 0, 1]]))
    kub = torch.tensor([[0.5, 0.0, -0.5], [0.0, -160 / 192, -0.5], [0.0, 0.0, -1.0]])
    assert torch.allclose(kubric_to_pixel_intrinsics(kub, 320, 192), K)
    with pytest.raises(ConfigError, match="hfov_deg"):
        intrinsics_from_fov(320, 192, 180.0)


def test_enlarged_boxes_and_paste_back():
    boxes = enlarged_crop_boxes(torch.tensor([[10.0, 10.0, 20.0, 30.0], [300.0, 0.0, 320.0, 5.0]]), 320, 192, 2.0)
    assert boxes.tolist()[0] == [5.0, 0.0, 25.0, 40.0]
    assert boxes[1, 2] == 320 and boxes[1, 1] == 0
    probs = torch.zeros(1, 25, 25)
    probs[0, :, :13] = 1.0  # left half of the crop
    mask = paste_masks(probs, boxes[:1], 320, 192)[0]
    assert mask[:40, 5:14].all() and not mask[:, 16:].any() and not mask[40:].any() and not mask[:, :5].any()


@pytest.mark.parametrize("overrides", [{}, {"use_bev": False}, {"use_slots": False}])
def test_causal_clip_equals_its_step_by_step_streaming_run(overrides):
    model = _model(**overrides)
    crops, K = _clip()
    with torch.no_grad():
        clip = model(crops, K, mode="causal")
        states = [None, None]
        for t in range(crops.shape[1]):
            outs, states = model.step(states, crops[:, t], K[:, t], mode="causal")
            for b in range(2):
                assert outs[b].frame == t
                assert torch.allclose(outs[b].amodal_logits, clip.amodal_logits[b, t], atol=1e-5)
                assert torch.allclose(outs[b].visible_logits, clip.visible_logits[b, t], atol=1e-5)
        assert all(not s.pending for s in states)


@pytest.mark.parametrize("window", [2, 3])
def test_windowed_clip_equals_streaming_with_lag_and_flush(window):
    model = _model()
    crops, K = _clip(B=1, T=5)
    with torch.no_grad():
        clip = model(crops, K, mode="windowed", window=window)
        emitted, state = [], None
        for t in range(5):
            outs, (state,) = model.step([state], crops[:, t], K[:, t], mode="windowed", window=window)
            if t < window - 1:
                assert outs[0] is None
            else:
                assert outs[0].frame == t - window + 1
                emitted.append(outs[0])
            assert len(state.pending) <= window - 1
        emitted += model.flush(state)
    assert [o.frame for o in emitted] == list(range(5))
    for o in emitted:
        assert torch.allclose(o.amodal_logits, clip.amodal_logits[0, o.frame], atol=1e-5)


def test_offline_equals_windowed_with_the_whole_clip_and_differs_from_causal():
    model = _model()
    crops, K = _clip(B=1, T=4)
    with torch.no_grad():
        offline = model(crops, K, mode="offline").amodal_logits
        whole = model(crops, K, mode="windowed", window=4).amodal_logits
        causal = model(crops, K, mode="causal").amodal_logits
    assert torch.allclose(offline, whole, atol=1e-5)
    assert torch.allclose(offline[:, -1], causal[:, -1], atol=1e-5)  # the last frame has no future
    assert not torch.allclose(offline[:, 0], causal[:, 0], atol=1e-4)


def test_per_track_state_reset_and_independence():
    model = _model()
    crops, K = _clip(B=2, T=4)
    with torch.no_grad():
        _, states = model.step([None, None], crops[:, 0], K[:, 0])
        _, states = model.step(states, crops[:, 1], K[:, 1])
        # track 1 ends; a new track arrives in its place (state None) together with the running track 0
        outs, new = model.step([states[0], None], crops[:, 2], K[:, 2])
        fresh, _ = model.step([None], crops[1:, 2], K[1:, 2])
        alone, _ = model.step([states[0]], crops[:1, 2], K[:1, 2])
    assert new[1].received == 1 and outs[1].frame == 0
    assert torch.allclose(outs[1].amodal_logits, fresh[0].amodal_logits, atol=1e-5)  # reset = a first frame
    assert torch.allclose(outs[0].amodal_logits, alone[0].amodal_logits, atol=1e-5)  # batching changes nothing
    assert not torch.allclose(new[0].slots, new[1].slots)


def test_step_rejects_offline_and_bad_windows():
    model = _model()
    crops, K = _clip(B=1, T=1)
    with pytest.raises(ConfigError, match="offline"):
        model.step([None], crops[:, 0], K[:, 0], mode="offline")
    with pytest.raises(ConfigError, match="window"):
        model(crops, K, mode="windowed", window=0)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="d_model"):
        EoRaSConfig(d_model=30, num_heads=4)
    with pytest.raises(ConfigError, match="unknown key"):
        EoRaSConfig.from_dict({"slots": 3})
    assert EoRaSConfig.from_dict(tiny_config().to_dict()) == tiny_config()


def test_weights_roundtrip_and_truncated_file(tmp_path):
    model = _model()
    path = tmp_path / "eoras.safetensors"
    save_weights(model.state_dict(), path, {"config": model.config.to_dict()})
    loaded = load_eoras(path)
    crops, K = _clip(B=1, T=2)
    with torch.no_grad():
        assert torch.allclose(loaded.model(crops, K).amodal_logits, model(crops, K).amodal_logits)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_eoras(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_eoras(tmp_path / "missing.safetensors")


def test_bev_grid_cell_centres_and_pitch():
    pts = bev_grid_points((-10, 10), (-3.5, 1.5), (0, 20), 4, 5, 2)
    assert pts.shape == (3, 40)
    assert torch.allclose(pts[:, 0], torch.tensor([-7.5, -3.0, 5.0]))
    rot = bev_grid_points((-10, 10), (-3.5, 1.5), (0, 20), 4, 5, 2, pitch_rad=math.pi / 2)
    assert torch.allclose(rot[:, 0], torch.tensor([-7.5, -5.0, -3.0]), atol=1e-5)
