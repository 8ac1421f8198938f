"""The bilayer X-ray segmenter on tiny configs: shapes, losses, gradients, LoRA freezing, decoder initialisation,
occluder targets, the single-decoder ablation, scanner input mapping, weights files and real-SAM folders."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from amodal.errors import CheckpointError, ConfigError
from amodal.models.weights import save_weights
from amodal.models.xray import (
    XrayBatch,
    XraySam,
    XraySamConfig,
    XrayTargets,
    build_sam,
    build_xray,
    load_xray,
    occlusion_levels,
    sam_config,
    scanner_image_to_tensor,
    tiny_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 64


def _config(**kw) -> XraySamConfig:
    return tiny_config(image_size=SIZE, **kw)


def _targets(h: int, w: int) -> XrayTargets:
    """Two items: item 0 (label 3) lies partly under item 1 (label 11); nothing lies over item 1."""
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 4:30, 4:34] = 1
    masks[1, 16:44, 20:52] = 1
    occluders = torch.zeros_like(masks)
    occluders[0] = masks[0] & masks[1]
    boxes = torch.tensor([[4.0, 4.0, 34.0, 30.0], [20.0, 16.0, 52.0, 44.0]])
    return XrayTargets(boxes, torch.tensor([3, 11]), masks, occluders)


def _batch() -> XrayBatch:
    g = torch.Generator().manual_seed(0)
    return XrayBatch([torch.rand(3, SIZE, SIZE, generator=g), torch.rand(3, 48, SIZE, generator=g)],
                     [_targets(SIZE, SIZE), _targets(48, SIZE)])


def test_shapes_losses_and_gradients():
    torch.manual_seed(0)
    model = build_xray(config=_config()).train()
    out = model(_batch())
    p = out.mask_logits.shape[0]
    assert p > 0 and out.mask_logits.shape == (p, 4 * SIZE // 16, 4 * SIZE // 16)
    assert out.occluder_logits is not None and out.occluder_logits.shape == out.mask_logits.shape
    assert out.mask_targets.shape == out.occluder_targets.shape == (p, SIZE, SIZE)
    losses = model.losses(out)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
                           "loss_occluder"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.target_decoder, model.occluder_decoder, model.prompter, model.fpn, model.rpn, model.roi_heads):
        grads = [q.grad for q in part.parameters() if q.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), type(part).__name__
    lora = [q for n, q in model.encoder.named_parameters() if "lora_A" in n]
    assert lora and all(q.grad is not None for q in lora)


def test_occluder_loss_is_a_quarter_of_the_occluder_bce():
    torch.manual_seed(0)
    model = build_xray(config=_config()).train()
    out = model(_batch())
    from amodal.models.xray.model import mask_bce

    full = model.losses(out)["loss_occluder"]
    torch.testing.assert_close(full, 0.25 * mask_bce(out.occluder_logits, out.occluder_targets))


def test_lora_step_leaves_frozen_sam_weights_untouched():
    torch.manual_seed(0)
    model = build_xray(config=_config(encoder_trainable=())).train()  # as on a real SAM: only LoRA adapts it
    frozen = {n: q.detach().clone() for n, q in model.encoder.named_parameters() if not q.requires_grad}
    frozen.update({f"positional.{n}": q.detach().clone() for n, q in model.positional.named_parameters()})
    lora = {n: q.detach().clone() for n, q in model.encoder.named_parameters() if "lora_" in n}
    assert any("qkv.base_layer.weight" in n for n in frozen) and any("proj.base_layer.weight" in n for n in frozen)
    assert all(not q.requires_grad for q in model.positional.parameters())
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    sum(model.losses(model(_batch())).values()).backward()
    opt.step()
    now = dict(model.encoder.named_parameters())
    for n, before in frozen.items():
        after = model.positional.positional_embedding if n.startswith("positional.") else now[n]
        assert torch.equal(before, after), n
    assert any(not torch.equal(before, now[n]) for n, before in lora.items())


def test_paper_config_adapts_qkv_only_with_rank_16():
    config = XraySamConfig()
    assert config.lora_rank == 16 and config.lora_targets == ("qkv",) and config.image_size == 512
    assert config.encoder_trainable == ()  # the pretrained encoder stays frozen but for its LoRA adapters
    assert config.embed_size == 32 and config.embed_dim == 256 and len(config.class_names) == 12


def test_both_decoders_start_as_copies_of_sams_decoder():
    torch.manual_seed(0)
    config = _config()
    sam = build_sam(config)
    original = {k: v.clone() for k, v in sam.mask_decoder.state_dict().items()}
    model = XraySam(config, sam=sam)
    for decoder in (model.occluder_decoder, model.target_decoder):
        state = decoder.state_dict()
        assert state.keys() == original.keys()
        assert all(torch.equal(state[k], original[k]) for k in original)
    occ = dict(model.occluder_decoder.named_parameters())
    assert all(q.data_ptr() != occ[n].data_ptr() for n, q in model.target_decoder.named_parameters())


def test_unoccluded_items_get_an_all_zero_occluder_target():
    torch.manual_seed(0)
    model = build_xray(config=_config()).train()
    batch = _batch()
    out = model(batch)
    item_masks = batch.targets[0].masks.float()
    occluders = batch.targets[0].occluder_masks.float()
    n0 = out.mask_targets.shape[0]  # both scans carry the same two items at the same place
    seen = set()
    for row in range(n0):
        target = out.mask_targets[row]
        for k in range(2):
            if torch.equal(target, item_masks[k]):
                seen.add(k)
                torch.testing.assert_close(out.occluder_targets[row], occluders[k])
    assert seen == {0, 1}  # both items were sampled as positives: the occluded one and the free one
    free = [r for r in range(n0) if torch.equal(out.mask_targets[r], item_masks[1])]
    assert all(out.occluder_targets[r].sum() == 0 for r in free)


def test_single_decoder_ablation():
    torch.manual_seed(0)
    model = build_xray(config=_config(bilayer=False)).train()
    assert model.occluder_decoder is None
    out = model(_batch())
    assert out.occluder_logits is None and "loss_occluder" not in model.losses(out)
    model.eval()
    (det,) = model.detect([torch.rand(3, 40, SIZE)])
    assert det.masks.shape[1:] == (40, SIZE) and torch.equal(det.occluder_masks, torch.zeros_like(det.masks))


def test_detect_returns_masks_and_occluders_at_the_scan_resolution():
    torch.manual_seed(0)
    model = build_xray(config=_config()).eval()
    dets = model.detect([torch.rand(3, SIZE, SIZE), torch.rand(3, 50, 80)])
    for det, (h, w) in zip(dets, [(SIZE, SIZE), (50, 80)]):
        n = det.scores.shape[0]
        assert n > 0 and det.boxes_xyxy.shape == (n, 4) and det.labels.shape == (n,)
        assert det.masks.shape == det.occluder_masks.shape == (n, h, w)
        assert ((det.masks >= 0) & (det.masks <= 1)).all() and det.occlusion.shape == (n,)
        assert (det.boxes_xyxy[:, 2] <= w + 1e-3).all() and (det.boxes_xyxy[:, 3] <= h + 1e-3).all()


def test_occlusion_levels():
    masks = torch.zeros(2, 4, 4)
    masks[:, :2] = 1.0  # 8 pixels each
    occ = torch.zeros(2, 4, 4)
    occ[0, 0] = 1.0  # covers 4 of item 0's 8 pixels
    torch.testing.assert_close(occlusion_levels(masks, occ), torch.tensor([0.5, 0.0]))


def test_scanner_images_map_to_float_rgb_in_unit_range():
    rgb = np.array([[[0, 128, 255]]], np.uint8)
    torch.testing.assert_close(scanner_image_to_tensor(rgb)[:, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]))
    gray = np.array([[0, 65535], [1, 40000]], np.uint16)
    x = scanner_image_to_tensor(gray)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.tensor([[0.0, 1.0], [1 / 65535, 40000 / 65535]]))
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert x[0, 1, 0] > 0  # the full 16-bit range survives: no 8-bit quantisation
    with pytest.raises(ConfigError, match="uint8"):
        scanner_image_to_tensor(np.zeros((4, 4), np.float32))
    with pytest.raises(ConfigError, match="grayscale"):
        scanner_image_to_tensor(np.zeros((4, 4, 3), np.uint16))


def test_config_validation():
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        tiny_config(image_size=70)
    with pytest.raises(ConfigError, match="not attention projections"):
        tiny_config(lora_targets=("mlp",))
    with pytest.raises(ConfigError, match="unknown key.*bogus"):
        XraySamConfig.from_dict({"bogus": 1})
    assert XraySamConfig.from_dict(_config().to_dict()) == _config()


def test_weights_round_trip_fp16_and_truncated_file(tmp_path):
    torch.manual_seed(0)
    model = build_xray(config=_config()).eval()
    path = save_weights({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                        tmp_path / "x.safetensors", {"config": model.config.to_dict(), "classes": ["a"]})
    loaded = load_xray(path)
    assert loaded.config == model.config and loaded.metadata["classes"] == ["a"]
    for k, v in model.state_dict().items():
        w = loaded.model.state_dict()[k]
        assert w.dtype == v.dtype
        torch.testing.assert_close(w, v.half().to(v.dtype) if v.is_floating_point() else v)
    data = path.read_bytes()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_xray(truncated)
    other = save_weights({"w": torch.zeros(2)}, tmp_path / "other.safetensors", {"config": model.config.to_dict()})
    with pytest.raises(CheckpointError, match="does not match"):
        load_xray(other)


def _saved_sam(tmp_path, image_size: int):
    """A tiny SamModel (another width than the tiny preset) written with save_pretrained, as users keep
    facebook/sam-vit-* folders."""
    from transformers import SamModel

    from amodal.models.xray.sam import init_from_scratch

    torch.manual_seed(1)
    arch = tiny_config(image_size=image_size, encoder_hidden=48, encoder_heads=2, encoder_mlp_dim=96, embed_dim=32,
                       decoder_heads=2, decoder_mlp_dim=64, decoder_iou_hidden=32)
    sam = SamModel(sam_config(arch))
    init_from_scratch(sam)
    folder = tmp_path / "sam-vit-tiny"
    sam.save_pretrained(folder)
    return sam, folder


@pytest.mark.parametrize("saved_size", [SIZE, 32])
def test_loads_a_save_pretrained_sam_folder_by_path(tmp_path, saved_size):
    sam, folder = _saved_sam(tmp_path, saved_size)
    model = build_xray(config=_config(sam_path=str(folder)))
    assert model.config.encoder_hidden == 48 and model.config.embed_dim == 32 and model.config.sam_path == str(folder)
    enc = dict(model.encoder.named_parameters())
    ref = dict(sam.vision_encoder.named_parameters())
    torch.testing.assert_close(enc["layers.0.attn.qkv.base_layer.weight"], ref["layers.0.attn.qkv.weight"])
    torch.testing.assert_close(enc["layers.2.mlp.lin1.weight"], ref["layers.2.mlp.lin1.weight"])
    assert enc["pos_embed"].shape == (1, SIZE // 16, SIZE // 16, 48)
    if saved_size == SIZE:
        torch.testing.assert_close(enc["pos_embed"], ref["pos_embed"])
    else:  # position tables interpolated to the new grid: a global-attention layer's relative table grows
        assert enc["layers.1.attn.rel_pos_h"].shape[0] == 2 * (SIZE // 16) - 1
    for decoder in (model.occluder_decoder, model.target_decoder):
        for k, v in sam.mask_decoder.state_dict().items():
            torch.testing.assert_close(decoder.state_dict()[k], v)
    model.train()
    losses = model.losses(model(_batch()))
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(CheckpointError, match="config.json"):
        build_xray(config=_config(sam_path=str(tmp_path / "missing")))


def test_exported_weights_rebuild_without_the_sam_folder(tmp_path):
    sam, folder = _saved_sam(tmp_path, SIZE)
    model = build_xray(config=_config(sam_path=str(folder))).eval()
    path = save_weights(model.state_dict(), tmp_path / "m.safetensors", {"config": model.config.to_dict()})
    import shutil

    shutil.rmtree(folder)
    loaded = load_xray(path)
    assert loaded.config == dataclasses.replace(model.config, sam_path=None)
    image = torch.rand(3, SIZE, SIZE)
    a, b = model.detect([image])[0], loaded.model.detect([image])[0]
    torch.testing.assert_close(a.boxes_xyxy, b.boxes_xyxy)
    torch.testing.assert_close(a.masks, b.masks)


def test_no_roi_anywhere_gives_empty_outputs():
    torch.manual_seed(0)
    model = build_xray(config=_config(box_score_thresh=1.01)).eval()  # nothing can pass the score threshold
    (det,) = model.detect([torch.rand(3, SIZE, SIZE)])
    assert det.scores.shape == (0,) and det.masks.shape == det.occluder_masks.shape == (0, SIZE, SIZE)


def test_box_region_mask_loss_scores_only_inside_the_box():
    from amodal.models.xray.model import mask_bce

    targets = torch.zeros(1, 64, 64)
    targets[0, 16:48, 16:48] = 1.0
    logits = torch.full((1, 16, 16), -8.0)
    logits[0, 4:12, 4:12] = 8.0  # right inside the box...
    logits[0, 0, :] = 8.0  # ...and wrong far outside it
    box = torch.tensor([[12.0, 12.0, 52.0, 52.0]])
    assert mask_bce(logits, targets, box) < 0.2 < mask_bce(logits, targets)
    wrong = -logits
    assert mask_bce(wrong, targets, box) > 2.0


def test_box_region_masks_are_cut_to_their_boxes():
    from amodal.models.xray.model import boxes_to_masks

    inside = boxes_to_masks(torch.tensor([[1.0, 0.0, 3.0, 2.0]]), (4, 5))
    expected = torch.zeros(1, 4, 5, dtype=torch.bool)
    expected[0, 0:2, 1:3] = True
    assert torch.equal(inside, expected)
    torch.manual_seed(0)
    model = build_xray(config=_config(mask_loss_region="box")).eval()
    (det,) = model.detect([torch.rand(3, SIZE, SIZE)])
    outside = ~boxes_to_masks(det.boxes_xyxy, (SIZE, SIZE))
    assert det.masks.shape[0] > 0 and det.masks[outside].abs().max() == 0


def test_prompter_positional_encoding_tells_cells_apart():
    from amodal.models.xray.model import sine_positional_encoding

    pe = sine_positional_encoding(64, 8, 16, torch.zeros(1))
    assert pe.shape == (1, 64, 8, 16)
    cells = pe[0].flatten(1).t()
    assert torch.cdist(cells, cells).add(torch.eye(128) * 10).min() > 1e-3  # every cell encoded differently
