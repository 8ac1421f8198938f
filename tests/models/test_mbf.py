"""MBF on micro configs: output shapes, the shared-block part pooling, each loss on constructed cases, gradients to
every parameter, embeddings, and weights files (round trip and the CheckpointError cases)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from amodal.errors import CheckpointError, ConfigError
from amodal.kernels.attention import MultiheadAttention
from amodal.models.mbf import (
    MBFConfig,
    MBFTargets,
    batch_hard_triplet_loss,
    build_mbf,
    id_loss,
    load_mbf,
    mbf_losses,
    parsing_loss,
    recovery_loss,
    separation_loss,
    tiny_config,
    vote_patch_labels,
)
from amodal.models.mbf.backbone import TransformerBlock
from amodal.models.mbf.parts import part_key_padding_mask, pool_parts
from amodal.models.weights import save_weights


def micro(**kw) -> MBFConfig:
    base = dict(num_ids=5, num_cameras=3, input_height=32, input_width=16, patch_size=8, stride=8, embed_dim=32,
                depth=2, num_heads=2, recovery_layers=2)
    return MBFConfig(**{**base, **kw})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(n: int = 6, cfg: MBFConfig | None = None, seed: int = 0):
    cfg = cfg or micro()
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, cfg.input_height, cfg.input_width, generator=g)
    cams = torch.arange(n) % (cfg.num_cameras + 1)  # every known camera and the unknown one
    pids = torch.arange(n) // 2
    parsing = torch.randint(0, 5, (n, cfg.input_height, cfg.input_width), generator=g)
    return images, cams, pids, parsing


def test_config_validation_and_sizes():
    cfg = MBFConfig()
    assert cfg.grid_size == (16, 8) and cfg.num_patches == 128 and cfg.embedding_dim == 768 * 6
    assert MBFConfig(stride=11).num_patches == 22 * 11 == 242  # the paper's overlapping variant
    assert tiny_config().num_patches == 128
    assert MBFConfig.from_dict(micro().to_dict()) == micro()
    with pytest.raises(ConfigError, match="stride 20 exceeds patch_size 16"):
        MBFConfig(stride=20)
    with pytest.raises(ConfigError, match="embed_dim 30 is not a multiple of num_heads 4"):
        MBFConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="part_threshold"):
        MBFConfig(part_threshold=1.5)
    with pytest.raises(ConfigError, match="unknown keys"):
        MBFConfig.from_dict({"num_idz": 3})


@pytest.mark.parametrize("stride,recovery", [(8, True), (6, False)])
def test_output_shapes(stride, recovery):
    cfg = micro(stride=stride, foreground_recovery=recovery)
    model = build_mbf(config=cfg).train()
    images, cams, _, _ = _batch(4, cfg)
    out = model(images, cams, holistic_images=images)
    n, length, d, k = 4, cfg.num_patches, cfg.embed_dim, cfg.num_parts
    assert length == (4 * 2 if stride == 8 else 5 * 2)
    assert out.global_feature.shape == (n, d) and out.global_logits.shape == (n, cfg.num_ids)
    assert out.part_features.shape == (n, k, d) and out.part_logits.shape == (n, k, cfg.num_ids)
    assert out.part_present.shape == (n, k) and out.part_present.dtype == torch.bool
    assert out.parsing_logits.shape == (n, length, cfg.parsing_classes)
    if recovery:
        assert out.recovered_tokens.shape == out.holistic_tokens.shape == (n, length, d)
        assert out.recovered_feature.shape == (n, d) and out.recovered_logits.shape == (n, cfg.num_ids)
        assert not out.holistic_tokens.requires_grad
    else:
        assert out.recovered_tokens is None and out.recovered_feature is None and out.holistic_tokens is None
    assert model.embedding_dim == d * (1 + k + int(recovery))


def test_all_attention_runs_through_our_kernel_module():
    model = build_mbf(config=micro())
    ours = [m for m in model.modules() if isinstance(m, MultiheadAttention)]
    assert len(ours) == 2 + 2 + 1  # blocks, recovery layers, read-out
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def test_forward_queries_equals_the_full_block():
    torch.manual_seed(0)
    block = TransformerBlock(32, 2, 2.0).eval()
    x = torch.randn(3, 7, 32)
    mask = torch.rand(3, 7) < 0.4
    mask[:, 0] = False
    torch.testing.assert_close(block.forward_queries(x, 2, mask), block(x, mask)[:, :2], atol=1e-5, rtol=1e-5)


def test_part_pooling_sees_only_its_patches():
    torch.manual_seed(1)
    block = TransformerBlock(32, 2, 2.0).eval()
    tokens = torch.randn(2, 1 + 6, 32)
    probs = torch.zeros(2, 6, 4)
    probs[:, :2, 0] = 0.9  # part 0 (head): patches 0, 1
    probs[:, 2:, 1] = 0.41  # part 1 (upper): patches 2..5, just above the threshold
    probs[:, 2:, 2] = 0.4  # part 2 (lower): at the threshold, so no patch
    mask = part_key_padding_mask(probs, 0.4)
    assert mask.shape == (8, 7) and not mask[:, 0].any()
    assert mask[0].tolist() == [False, False, False, True, True, True, True]
    assert mask[2].tolist() == [False] + [True] * 6
    parts = pool_parts(tokens, probs, block, 0.4)
    head_only = block(tokens[:, :3])[:, 0]
    torch.testing.assert_close(parts[:, 0], head_only, atol=1e-5, rtol=1e-5)
    upper_only = block(torch.cat([tokens[:, :1], tokens[:, 3:]], dim=1))[:, 0]
    torch.testing.assert_close(parts[:, 1], upper_only, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts[:, 2], block(tokens[:, :1])[:, 0], atol=1e-5, rtol=1e-5)


def test_vote_patch_labels_grid():
    parsing = torch.zeros(1, 16, 16, dtype=torch.long)
    parsing[0, :8, :8] = 1  # top-left patch: head
    parsing[0, 8:13, :8] = 2  # bottom-left: 5 of 8 rows upper → upper
    parsing[0, 8:12, 8:] = 3  # bottom-right: 4 rows lower, 4 background → tie → background
    labels = vote_patch_labels(parsing, 8, 8, 5)
    assert labels.tolist() == [[1, 0, 2, 0]]
    overlapping = vote_patch_labels(parsing, 8, 4, 5)
    assert overlapping.shape == (1, 9) and overlapping[0, 0] == 1 and overlapping[0, 6] == 2


def test_batch_hard_triplet_separated_vs_swapped():
    pids = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    swapped = separated[[0, 2, 1, 3]]  # each id now has one point in each cluster
    low = batch_hard_triplet_loss(separated, pids)
    high = batch_hard_triplet_loss(swapped, pids)
    assert low < 1e-3 and high > 9.0
    # softplus(d_ap - d_an) by hand for the separated case: d_ap = 0.1, d_an = 9.9 (anchor 1) or 9.9 (anchor 2)
    expected = torch.nn.functional.softplus(torch.tensor(0.1 - 9.9))
    torch.testing.assert_close(low, expected, atol=1e-5, rtol=1e-4)
    # an anchor without a positive is skipped; no valid anchor at all gives 0
    assert batch_hard_triplet_loss(separated[:3], torch.tensor([0, 0, 1])) < 1e-3
    assert batch_hard_triplet_loss(separated[:2], torch.tensor([0, 1])) == 0.0


def test_id_loss_label_smoothing_and_weights():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    pids = torch.tensor([0, 0])
    assert id_loss(logits, pids, 0.0, torch.tensor([1.0, 0.0])) < 1e-3  # the wrong sample is weighted out
    assert id_loss(logits, pids, 0.0) > 4.0
    assert id_loss(logits, pids, 0.1, torch.tensor([1.0, 0.0])) > id_loss(logits, pids, 0.0, torch.tensor([1.0, 0.0]))
    assert id_loss(logits, pids, 0.1, torch.zeros(2)) == 0.0


def test_separation_parsing_and_recovery_losses():
    orthogonal = torch.eye(4)[None].repeat(2, 1, 1)
    assert separation_loss(orthogonal) < 1e-6
    identical = torch.ones(2, 4, 8)
    torch.testing.assert_close(separation_loss(identical), torch.tensor(1.0))
    labels = torch.tensor([[0, 1, 2, 4]])
    perfect = torch.nn.functional.one_hot(labels, 5).float() * 20.0
    assert parsing_loss(perfect, labels) < 1e-6 and parsing_loss(perfect.flip(-1), labels) > 10.0
    a = torch.zeros(1, 3, 2)
    torch.testing.assert_close(recovery_loss(a + 2.0, a), torch.tensor(4.0))


def test_mbf_losses_use_the_voted_patch_labels():
    torch.manual_seed(0)
    cfg = micro()
    model = build_mbf(config=cfg).train()
    images, cams, pids, parsing = _batch(6, cfg)
    out = model(images, cams, holistic_images=images)
    losses = mbf_losses(out, MBFTargets(pids, parsing), cfg)
    assert set(losses) == {"loss_id", "loss_triplet", "loss_parsing", "loss_separation", "loss_recovery"}
    voted = vote_patch_labels(parsing, 8, 8, 5)
    torch.testing.assert_close(losses["loss_parsing"], parsing_loss(out.parsing_logits, voted))
    assert not torch.allclose(losses["loss_parsing"], parsing_loss(out.parsing_logits, torch.zeros_like(voted)))
    with pytest.raises(ValueError, match="holistic"):
        mbf_losses(model(images, cams), MBFTargets(pids, parsing), cfg)


@pytest.mark.parametrize("metric_features", ["raw", "necked"])
def test_metric_losses_see_the_configured_features(metric_features):
    torch.manual_seed(0)
    cfg = micro(metric_features=metric_features, foreground_recovery=False)
    model = build_mbf(config=cfg).train()
    images, cams, pids, parsing = _batch(6, cfg)
    out = model(images, cams)
    losses = mbf_losses(out, MBFTargets(pids, parsing), cfg)
    glob, parts = ((out.global_necked, out.part_necked) if metric_features == "necked"
                   else (out.global_feature, out.part_features))
    expected = 0.5 * (batch_hard_triplet_loss(glob, pids)
                      + torch.stack([batch_hard_triplet_loss(parts[:, j], pids) for j in range(4)]).mean())
    torch.testing.assert_close(losses["loss_triplet"], expected)
    torch.testing.assert_close(losses["loss_separation"], cfg.separation_weight * separation_loss(parts))
    with pytest.raises(ConfigError, match="metric_features"):
        micro(metric_features="bn")


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    cfg = micro()
    model = build_mbf(config=cfg).train()
    images, cams, pids, parsing = _batch(8, cfg)
    with torch.no_grad():  # make every part visible, so each part's ID term has samples
        model.part_classifier.conv.bias.copy_(torch.tensor([-5.0, 5.0, 5.0, 5.0, 5.0]))
    out = model(images, cams, holistic_images=images.flip(-1))
    total = sum(mbf_losses(out, MBFTargets(pids, parsing), cfg).values())
    total.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and
               (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not missing, missing


def test_embed_is_normalised_in_eval_mode_and_checks_inputs():
    cfg = micro()
    model = build_mbf(config=cfg).train()
    images, cams, _, _ = _batch(3, cfg)
    emb = model.embed(images)
    assert emb.shape == (3, model.embedding_dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert model.training  # restored
    torch.testing.assert_close(model.embed(images[:1]), emb[:1], atol=1e-5, rtol=1e-5)  # batch-independent (eval BN)
    assert not torch.allclose(model.embed(images, cams % cfg.num_cameras), emb)  # the camera embedding is used
    with pytest.raises(ConfigError, match=r"\[N, 3, 32, 16\].*\(3, 3, 16, 16\)"):
        model.embed(torch.rand(3, 3, 16, 16))
    with pytest.raises(ConfigError, match="camera ids must be in 0..2"):
        model.embed(images, torch.tensor([0, 1, 7]))


def test_weights_round_trip_and_checkpoint_errors(tmp_path):
    cfg = micro()
    model = build_mbf(config=cfg).eval()
    path = save_weights(model.state_dict(), tmp_path / "mbf.safetensors", {"config": cfg.to_dict()})
    loaded = load_mbf(path)
    assert loaded.config == cfg and not loaded.model.training
    assert (loaded.config.input_height, loaded.config.input_width) == (32, 16)
    images, _, _, _ = _batch(2, cfg)
    torch.testing.assert_close(loaded.model.embed(images), model.embed(images))

    half_state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    half = load_mbf(save_weights(half_state, tmp_path / "half.safetensors", {"config": cfg.to_dict()}))
    assert next(half.model.parameters()).dtype == torch.float32  # fp16 files (the shipped one) load as fp32
    torch.testing.assert_close(half.model.embed(images), model.embed(images), atol=5e-3, rtol=0)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_mbf(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_mbf(tmp_path / "missing.safetensors")
    other = save_weights(model.state_dict(), tmp_path / "other.safetensors", {"config": micro(embed_dim=64).to_dict()})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_mbf(other)
    no_config = save_weights(model.state_dict(), tmp_path / "bare.safetensors", {})
    with pytest.raises(CheckpointError, match="no 'config'"):
        load_mbf(no_config)
