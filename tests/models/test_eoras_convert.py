"""The official EoRaS checkpoint layout → our weights: a state dict built to the official names and shapes (as the
official model code defines them: FPN50 with GroupNorm bottlenecks and a BatchNorm stem, BEVTrans's Down blocks,
three 2-layer transformer decoders, fm+vm decoders, sin-cos positions; random values, DDP ``module.`` prefix),
gzipped like ``checkpoint-0050.pth.gz``, converted by ``amodal convert eoras`` and loaded; missing / misshaped /
unexpected keys are named."""
from __future__ import annotations

import gzip
import io

import pytest
import torch

from amodal.cli import main as amodal_main
from amodal.errors import CheckpointError
from amodal.models.eoras import load_eoras
from amodal.models.eoras.convert import convert_official_state, official_config, read_official_checkpoint
from amodal.models.eoras.parts import sin_cos_positions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _official_layout() -> dict[str, tuple[int, ...]]:
    """Names → shapes of ``Amodal_imgcrop_simplebevcrop_bid`` (d_model 512, 8 slots, 2 layers, decoder fm+vm,
    pos_type sincos), written from the official module definitions, not from our model."""
    s: dict[str, tuple[int, ...]] = {}

    def bn(p: str, c: int) -> None:
        s.update({f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
                  f"{p}.num_batches_tracked": ()})

    def gn(p: str, c: int) -> None:
        s.update({f"{p}.weight": (c,), f"{p}.bias": (c,)})

    def conv(p: str, cin: int, cout: int, k: int, bias: bool = True) -> None:
        s[f"{p}.weight"] = (cout, cin, k, k)
        if bias:
            s[f"{p}.bias"] = (cout,)

    fe = "feature_extractor"
    conv(f"{fe}.conv1", 3, 64, 7, bias=False)
    bn(f"{fe}.bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"{fe}.layer{li}.{b}"
            cin = inplanes if b == 0 else planes * 4
            conv(f"{p}.conv1", cin, planes, 1, bias=False)
            gn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3, bias=False)
            gn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes, planes * 4, 1, bias=False)
            gn(f"{p}.bn3", planes * 4)
            if b == 0:
                conv(f"{p}.downsample.0", cin, planes * 4, 1, bias=False)
                gn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    conv(f"{fe}.conv6", 2048, 256, 3)
    conv(f"{fe}.conv7", 256, 256, 3)
    for name, cin in (("latlayer1", 2048), ("latlayer2", 1024), ("latlayer3", 512)):
        conv(f"{fe}.{name}", cin, 256, 1)
    conv(f"{fe}.toplayer1", 256, 256, 3)
    conv(f"{fe}.toplayer2", 256, 256, 3)
    s[f"{fe}.mean"] = (3,)
    s[f"{fe}.std"] = (3,)
    # BEVTrans: Down([1280, 640], [640, 256]) = Conv, DownSampling, Conv, DownSampling
    for i, (cin, cout) in enumerate(((1280, 640), (640, 256))):
        p = f"bev_generator.conv.layers.{2 * i}.layer"
        conv(f"{p}.0", cin, cout, 1)
        bn(f"{p}.1", cout)
        conv(f"{p}.3", cout, cout, 3)
        bn(f"{p}.4", cout)
        q = f"bev_generator.conv.layers.{2 * i + 1}.Down"
        conv(f"{q}.0", cout, cout, 3)
        bn(f"{q}.1", cout)
    for dec in ("slot_update_bev", "slot_update_feature", "feature_update"):
        for layer in range(2):
            p = f"{dec}.layers.{layer}"
            for attn in ("self_attn", "multihead_attn"):
                s.update({f"{p}.{attn}.in_proj_weight": (1536, 512), f"{p}.{attn}.in_proj_bias": (1536,),
                          f"{p}.{attn}.out_proj.weight": (512, 512), f"{p}.{attn}.out_proj.bias": (512,)})
            s.update({f"{p}.linear1.weight": (2048, 512), f"{p}.linear1.bias": (2048,),
                      f"{p}.linear2.weight": (512, 2048), f"{p}.linear2.bias": (512,)})
            for n in (1, 2, 3):
                gn(f"{p}.norm{n}", 512)
    s.update({"fea_fc.weight": (512, 256), "fea_fc.bias": (512,), "bev_fc.weight": (512, 256), "bev_fc.bias": (512,)})
    for dec in ("dec_fm", "dec_vm"):
        for n, (cin, cout) in enumerate(((1024, 512), (512, 256), (256, 1)), start=1):
            s[f"{dec}.deconv{n}.weight"] = (cin, cout, 3, 3)  # ConvTranspose2d: [in, out, k, k]
            s[f"{dec}.deconv{n}.bias"] = (cout,)
    s["slot.weight"] = (8, 512)
    s.update({"slot_pos": (1, 8, 512), "fea_pos": (1, 256, 512), "bev_pos": (1, 256, 512)})
    return s


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in _official_layout().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("_pos"):
            state[k] = sin_cos_positions(shape[1], shape[2])
        else:
            state[k] = torch.randn(shape, generator=g) * 0.02
    return state


def _write_official(path, state, gz: bool = True):
    buf = io.BytesIO()
    torch.save({"epoch": 50, "model": {f"module.{k}": v for k, v in state.items()}, "iters": 1234}, buf)
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1) if gz else buf.getvalue())


def test_official_layout_converts_through_the_cli_and_loads(tmp_path, official_state, capsys):
    # the full-size file uncompressed (gzip of 290 MB of random floats alone takes ~40 s here); the gzip path is
    # tested below on a part of it
    src, dst = tmp_path / "checkpoint-0050.pth", tmp_path / "eoras_movib.safetensors"
    _write_official(src, official_state, gz=False)
    assert amodal_main(["convert", "eoras", str(src), str(dst)]) == 0
    assert "conv6" in capsys.readouterr().out
    loaded = load_eoras(dst)
    cfg = loaded.config
    assert (cfg.d_model, cfg.num_slots, cfg.num_layers, cfg.bev_projection) == (512, 8, 2, "image_normalised")
    ours = loaded.model.state_dict()
    pairs = {"feature_extractor.layer3.5.conv2.weight": "backbone.layer3.5.conv2.weight",
             "feature_extractor.bn1.running_var": "backbone.bn1.running_var",
             "bev_generator.conv.layers.3.Down.0.weight": "bev.down.1.6.weight",
             "bev_generator.conv.layers.2.layer.4.running_mean": "bev.down.1.4.running_mean",
             "slot_update_bev.layers.1.multihead_attn.in_proj_weight":
                 "fusion.slots_from_bev.layers.1.multihead_attn.in_proj_weight",
             "feature_update.layers.0.norm3.bias": "fusion.front_from_slots.layers.0.norm3.bias",
             "dec_vm.deconv1.weight": "visible_decoder.deconv1.weight", "slot.weight": "fusion.slots.weight",
             "fea_fc.weight": "front_proj.weight"}
    for official, mine in pairs.items():
        assert torch.equal(ours[mine], official_state[official]), official
    assert loaded.metadata["dropped_official_keys"] == sorted(
        ["bev_pos", "fea_pos", "slot_pos", "feature_extractor.conv6.bias", "feature_extractor.conv6.weight",
         "feature_extractor.conv7.bias", "feature_extractor.conv7.weight", "feature_extractor.mean",
         "feature_extractor.std"])
    # the converted backbone runs (the whole paper-sized model is ~30 GMAC per frame: too slow for this suite)
    with torch.no_grad():
        p3 = loaded.model.backbone(torch.rand(1, 3, 32, 32))
    assert p3.shape == (1, 256, 4, 4) and torch.isfinite(p3).all()


def test_gzipped_checkpoint_and_movid_pitch(tmp_path, official_state):
    src = tmp_path / "checkpoint-0050.pth.gz"
    part = {k: official_state[k] for k in ("slot.weight", "feature_update.layers.1.linear1.weight")}
    _write_official(src, part)
    assert src.read_bytes()[:2] == b"\x1f\x8b"
    state = read_official_checkpoint(src)
    assert set(state) == set(part) and all(torch.equal(state[k], part[k]) for k in part)
    assert official_config(state, "movid").bev_pitch_rad == pytest.approx(0.1318, abs=1e-3)


def test_missing_misshaped_and_unexpected_keys_are_named(official_state):
    state = dict(official_state)
    del state["dec_vm.deconv2.bias"]
    state["fea_fc.weight"] = torch.zeros(512, 128)
    state["dec_occ.deconv1.weight"] = torch.zeros(1024, 512, 3, 3)
    with pytest.raises(CheckpointError) as err:
        convert_official_state(state, official_config(state))
    message = str(err.value)
    assert "visible_decoder.deconv2.bias" in message and "missing" in message
    assert "fea_fc.weight → front_proj.weight: checkpoint (512, 128) vs model (512, 256)" in message
    assert "dec_occ.deconv1.weight" in message and "unexpected" in message


def test_truncated_official_checkpoint_is_a_clear_error(tmp_path, official_state):
    src = tmp_path / "checkpoint-0050.pth.gz"
    _write_official(src, {"slot.weight": official_state["slot.weight"]})
    src.write_bytes(src.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_official_checkpoint(src)
    assert amodal_main(["convert", "eoras", str(src), str(tmp_path / "x.safetensors")]) == 1
