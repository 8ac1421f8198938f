"""SAS denoiser: UNet input/output shapes, the linear noise schedule, the loss falling over training steps on a fixed
batch, the variational term, diffusers samplers, the layer loop (stops on an empty ensemble and at the limit, the
cumulative mask only grows), weights round trip and truncated files."""
from __future__ import annotations

import math

import pytest
import torch

from amodal.errors import CheckpointError, ConfigError
from amodal.models.sas import (
    DiffusionTerms,
    LayerInference,
    SASConfig,
    SASOutputs,
    SASTargets,
    build_sas,
    decompose,
    layer_loop,
    load_sas,
    noise_masks,
    sample_masks,
    sas_losses,
    select_member,
    tiny_config,
    training_scheduler,
    vb_term,
)
from amodal.models.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def micro(**overrides) -> SASConfig:
    """A 32×32 two-level UNet (fast on one CPU thread)."""
    return tiny_config(**{"image_size": 32, "block_out_channels": (8, 16), **overrides})


def _inputs(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 3, size, size), generator=g)
    cumulative = (torch.rand((n, 1, size, size), generator=g) > 0.7).float()
    masks = torch.zeros((n, 1, size, size))
    masks[:, :, size // 4: size // 2, size // 4: 3 * size // 4] = 1.0
    return images, cumulative, masks


def test_tiny_unet_maps_five_input_channels_to_noise_and_variance():
    cfg = tiny_config()
    assert cfg.image_size == 64 and cfg.in_channels == 5 and cfg.out_channels == 2
    model = build_sas(config=cfg)
    images, cumulative, masks = _inputs(2, 64)
    out = model(images, cumulative, masks, torch.tensor([0, 999]))
    assert out.noise.shape == (2, 1, 64, 64) and out.variance_values.shape == (2, 1, 64, 64)
    assert out.model_output().shape == (2, 2, 64, 64)
    assert model.unet.config.in_channels == 5 and model.unet.config.out_channels == 2
    fixed = build_sas(config=micro(learn_sigma=False))
    out = fixed(*_inputs(1, 32), torch.tensor([5]))
    assert out.variance_values is None and out.model_output().shape == (1, 1, 32, 32)
    with pytest.raises(ConfigError, match="cumulative must be"):
        fixed(images[:1, :, :32, :32], cumulative[:1, :, :16, :16], masks[:1, :, :32, :32], torch.tensor([5]))


def test_config_validation_and_round_trip():
    cfg = micro(attention_levels=(1,))
    assert SASConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="norm_num_groups"):
        tiny_config(block_out_channels=(12, 16))
    with pytest.raises(ConfigError, match="attention_levels"):
        tiny_config(attention_levels=(3,))
    with pytest.raises(ConfigError, match="unknown key"):
        SASConfig.from_dict({"widths": [8]})


def test_the_ablation_ignores_the_cumulative_mask():
    torch.manual_seed(0)
    model = build_sas(config=micro(use_cumulative=False)).eval()
    images, cumulative, masks = _inputs(1, 32)
    t = torch.tensor([300])
    a = model(images, cumulative, masks, t).noise
    b = model(images, torch.ones_like(cumulative), masks, t).noise
    assert torch.equal(a, b)
    full = build_sas(config=micro()).eval()
    assert not torch.equal(full(images, cumulative, masks, t).noise, full(images, 1 - cumulative, masks, t).noise)


def test_linear_schedule_with_1000_steps_and_closed_form_noising():
    sched = training_scheduler(tiny_config())
    assert sched.config.num_train_timesteps == 1000 and sched.config.variance_type == "learned_range"
    assert sched.betas[0].item() == pytest.approx(1e-4) and sched.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(sched.betas[1:] - sched.betas[:-1], torch.full((999,), (0.02 - 1e-4) / 999), atol=1e-9)
    x0 = torch.ones((2, 1, 4, 4))
    targets = noise_masks(sched, x0, torch.Generator().manual_seed(1))
    abar = torch.cumprod(1 - sched.betas.double(), 0)[targets.timesteps].float().view(-1, 1, 1, 1)
    assert torch.allclose(targets.x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * targets.noise, atol=1e-5)
    # ᾱ_T ≈ 4e-5: x_T is (nearly) pure noise, so sampling may start from N(0, I)
    assert torch.cumprod(1 - sched.betas.double(), 0)[-1].item() < 1e-4


def test_vb_term_is_a_kl_that_vanishes_for_the_true_posterior():
    sched = training_scheduler(micro())
    terms = DiffusionTerms(sched)
    x0 = torch.zeros((3, 1, 8, 8))
    x0[:, :, 2:6, 2:6] = 1.0
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 999])
    x_t = sched.add_noise(x0, noise, t)
    targets = SASTargets(x0, x_t, noise, t)
    # ε̂ = ε and v = −1 (log σ² = log β̃_t) is exactly q(x_{t−1} | x_t, x_0): KL 0
    exact = vb_term(terms, SASOutputs(noise, -torch.ones_like(x0)), targets)
    assert exact.abs().max().item() < 1e-4
    wrong = vb_term(terms, SASOutputs(noise + 0.5, torch.ones_like(x0)), targets)
    assert (wrong > 0).all() and wrong[0] > 1e-2 and wrong[1] > 1e-4  # near T every posterior ≈ N(0, β): small
    assert vb_term(terms, SASOutputs(noise, -torch.ones_like(x0)), SASTargets(x0, x_t, noise, torch.zeros(3).long())
                   ).isfinite().all()  # t = 0: the decoder likelihood


def test_training_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = micro()
    model = build_sas(config=cfg)
    sched = training_scheduler(cfg)
    terms = DiffusionTerms(sched)
    images, cumulative, masks = _inputs(8, 32)
    targets = noise_masks(sched, masks, torch.Generator().manual_seed(3))

    def loss() -> torch.Tensor:
        out = model(images, cumulative, targets.x_t, targets.timesteps)
        parts = sas_losses(out, targets, terms)
        assert set(parts) == {"loss_mse", "loss_vb"} and all(torch.isfinite(v) for v in parts.values())
        return sum(parts.values())

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = loss().item()
    for _ in range(15):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 0.8 * before


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm"])
def test_samplers_give_reproducible_masks_of_the_input_size(sampler):
    torch.manual_seed(0)
    model = build_sas(config=micro()).eval()
    images, cumulative, _ = _inputs(2, 32)
    a = sample_masks(model, images, cumulative, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(5))
    b = sample_masks(model, images, cumulative, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(5))
    c = sample_masks(model, images, cumulative, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(6))
    assert a.shape == (2, 1, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1.0 + 1e-5  # x̂_0 kept in [−1, 1] as the seed's clip_denoised
    with pytest.raises(ConfigError, match="sampler"):
        sample_masks(model, images, cumulative, sampler="euler", steps=4)


def test_select_member_keeps_the_member_nearest_the_mean_and_drops_empty_ones():
    samples = torch.zeros((4, 8, 8))
    samples[0, :4, :4] = 1.0  # 16 px
    samples[1, :4, :5] = 1.0  # 20 px, nearest the mean of the three non-empty members
    samples[2, :4, :6] = 1.0  # 24 px
    samples[3, 0, 0] = 1.0  # 1 px of 64 < 2 %: empty
    chosen, score = select_member(samples, 0.5, 0.02)
    assert torch.equal(chosen, samples[1] > 0.5)
    expected = (16 / 20 + 1.0 + 20 / 24 + 0.0) / 4  # IoU with the chosen member, the empty one counting 0
    assert score == pytest.approx(expected)
    assert select_member(torch.full((3, 8, 8), 0.4), 0.5) == (None, 0.0)


def _scripted(per_call: list[torch.Tensor], calls: list[torch.Tensor]):
    """A sample_fn answering call i with per_call[i] (one ensemble for every image), recording the cumulative masks."""

    def sample(images, cumulative):
        calls.append(cumulative.clone())
        answer = per_call[min(len(calls) - 1, len(per_call) - 1)]
        return answer.expand(images.shape[0], *answer.shape).clone()

    return sample


def test_layer_loop_stops_when_every_member_is_empty():
    layer = torch.zeros((2, 16, 16))
    layer[:, 2:8, 2:8] = 1.0
    empty = torch.zeros((2, 16, 16))
    calls: list[torch.Tensor] = []
    out = layer_loop(_scripted([layer, empty], calls), torch.zeros((3, 3, 16, 16)),
                     LayerInference(ensemble_size=2, layer_limit=5))
    assert len(calls) == 2 and all(r.num_layers == 1 and r.stopped == "empty" for r in out)
    assert torch.equal(out[0].layers[0], layer[0] > 0.5)
    first = layer_loop(_scripted([empty], []), torch.zeros((1, 3, 16, 16)), LayerInference(ensemble_size=2))
    assert first[0].num_layers == 0 and first[0].stopped == "empty" and first[0].cumulative.shape == (1, 16, 16)


def test_layer_loop_stops_at_the_limit_and_the_cumulative_mask_only_grows():
    masks = []
    for k in range(6):
        m = torch.zeros((3, 16, 16))
        m[:, 2 * k: 2 * k + 4, :] = 1.0  # overlapping bands, each partly new
        masks.append(m)
    calls: list[torch.Tensor] = []
    out = layer_loop(_scripted(masks, calls), torch.zeros((2, 3, 16, 16)),
                     LayerInference(ensemble_size=3, layer_limit=4))
    assert len(calls) == 4
    for r in out:
        assert r.num_layers == 4 and r.stopped == "limit" and r.cumulative.shape == (5, 16, 16)
        for k in range(4):
            assert (r.cumulative[k] <= r.cumulative[k + 1]).all()  # monotone
            assert torch.equal(r.cumulative[k + 1], r.cumulative[k] | r.layers[k])
    # the model saw, for layer k, the union of the layers found before it
    for k, cum in enumerate(calls):
        assert torch.equal(cum[0, 0] > 0.5, out[0].cumulative[k])


def test_decompose_runs_the_model_per_layer_up_to_the_limit():
    torch.manual_seed(0)
    model = build_sas(config=micro()).eval()
    images, _, _ = _inputs(2, 32)
    out = decompose(model, images, LayerInference(sampler="ddim", steps=2, ensemble_size=2, layer_limit=2),
                    torch.Generator().manual_seed(0))
    assert len(out) == 2
    for r in out:
        assert r.num_layers <= 2 and r.layers.dtype == torch.bool and r.layers.shape[1:] == (32, 32)
        assert r.scores.shape == (r.num_layers,) and ((r.scores >= 0) & (r.scores <= 1)).all()
    with pytest.raises(ConfigError, match="images must be"):
        decompose(model, images[:, :, :16, :16])


def test_inference_settings_are_validated():
    with pytest.raises(ConfigError, match="sampler"):
        LayerInference(sampler="plms")
    with pytest.raises(ConfigError, match="layer_limit"):
        LayerInference(layer_limit=0)
    with pytest.raises(ConfigError, match="threshold"):
        LayerInference(threshold=1.0)


def test_weights_round_trip_and_truncated_file(tmp_path):
    torch.manual_seed(0)
    cfg = micro()
    model = build_sas(config=cfg)
    path = save_weights(model.state_dict(), tmp_path / "sas.safetensors", {"config": cfg.to_dict()})
    loaded = load_sas(path)
    assert loaded.config == cfg and not loaded.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_sas(truncated)
    other = save_weights(model.state_dict(), tmp_path / "other.safetensors", {"config": micro(learn_sigma=False).to_dict()})
    with pytest.raises(CheckpointError, match="does not match"):
        load_sas(other)
    assert all(math.isfinite(float(p.detach().sum())) for p in loaded.model.parameters())
