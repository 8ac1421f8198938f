"""``--sam PATH`` / ``sam_path``: a tiny SamModel written with ``save_pretrained`` and loaded by path the way a user's
facebook/sam-vit-* folder would be — by ``amodal train --sam`` for the xray task, and by the ``xray`` stage setting
(``amodal run --sam``), which also serves a weights file that leaves the frozen SAM weights to the folder."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from amodal.cli_run import build_config, parser
from amodal.engine.stages.xray import XraySettings, XrayStage
from amodal.errors import CheckpointError, ConfigError
from amodal.models.weights import save_weights
from amodal.models.xray import build_xray, frozen_sam_keys, load_xray, sam_config, tiny_config, trained_state
from amodal.models.xray.sam import init_from_scratch
from amodal.training import cli as train_cli
from amodal.training.data.synth.xray import add_arguments, generate
from amodal.types import Frame
from tests.support.stages import StagesUnderTest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 64
SAM_ARCH = dict(encoder_hidden=48, encoder_heads=2, encoder_mlp_dim=96, embed_dim=32, decoder_heads=2,
                decoder_mlp_dim=64, decoder_iou_hidden=32)
SMALL = dict(rpn_post_nms_train=64, rpn_post_nms_test=32, box_batch_size_per_image=32, box_detections_per_img=8,
             max_mask_rois=8)


def _save_sam(folder, **arch):
    from transformers import SamModel

    torch.manual_seed(1)
    sam = SamModel(sam_config(tiny_config(image_size=SIZE, **{**SAM_ARCH, **arch})))
    init_from_scratch(sam)
    sam.save_pretrained(folder)
    return sam


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam") / "sam-vit-tiny"
    _save_sam(folder)
    return folder


def _paper_like(sam_path=None):
    """The paper's split of trainable parts (LoRA on qkv, the encoder frozen) on the tiny SAM."""
    return tiny_config(image_size=SIZE, sam_path=sam_path, lora_targets=("qkv",), encoder_trainable=(), **SMALL)


def _frame(seed: int = 0) -> Frame:
    image = np.random.default_rng(seed).integers(0, 65535, (SIZE, SIZE), dtype=np.uint16)
    return Frame("belt", 0, 0.0, 0, 0, "gray16", (image,), SIZE, SIZE)


def test_stage_serves_weights_without_the_frozen_sam_from_the_folder(sam_folder, tmp_path):
    torch.manual_seed(0)
    model = build_xray(config=_paper_like(str(sam_folder))).eval()
    frozen = frozen_sam_keys(model)
    assert frozen and all(k.startswith(("encoder.", "positional.")) for k in frozen)
    assert any(".lora_A." in k for k in trained_state(model))
    small = save_weights(trained_state(model), tmp_path / "lora.safetensors", {"config": model.config.to_dict()})
    full = save_weights(model.state_dict(), tmp_path / "full.safetensors", {"config": model.config.to_dict()})
    assert set(trained_state(model)) == set(model.state_dict()) - frozen

    settings = XraySettings(weights=str(small), sam_path=str(sam_folder), score_threshold=0.0)
    stages = StagesUnderTest(XrayStage(settings))
    served = stages.stage.loaded.model
    for key, value in model.state_dict().items():
        torch.testing.assert_close(served.state_dict()[key], value, msg=key)
    result = stages.process([_frame()])[0]
    reference = StagesUnderTest(XrayStage(XraySettings(weights=str(full), score_threshold=0.0))).process([_frame()])[0]
    assert [o.box_xyxy for o in result.objects] == [o.box_xyxy for o in reference.objects]

    with pytest.raises(CheckpointError, match="missing"):
        load_xray(small)  # without the folder the frozen weights are nowhere
    other = tmp_path / "sam-other"
    _save_sam(other, encoder_hidden=64)
    with pytest.raises(CheckpointError, match="encoder_hidden: file 48 vs folder 64"):
        load_xray(small, sam_path=other)
    with pytest.raises(CheckpointError, match="config.json"):
        load_xray(small, sam_path=tmp_path / "missing")


def test_amodal_run_sam_flag_reaches_the_xray_stage(sam_folder):
    config = build_config(parser().parse_args(["--source", "scanner:///tmp/in", "--pipeline", "xray",
                                               "--sam", str(sam_folder)]))
    assert config.pipelines[0].stages[0].settings.sam_path == str(sam_folder)
    with pytest.raises(ConfigError, match="--sam do not apply to stage 'identity'"):
        build_config(parser().parse_args(["--source", "scanner:///tmp/in", "--pipeline", "identity", "--sam", "x"]))


def _dataset(root):
    for split, n, seed in (("train", 4, 3), ("val", 2, 5)):
        p = argparse.ArgumentParser()
        add_arguments(p)
        generate(root, n, seed, p.parse_args(["--width", "64", "--height", "64", "--items-min", "2", "--items-max",
                                              "2", "--clutter-min", "0", "--clutter-max", "1", "--split", split]))
    return root


def test_amodal_train_sam_flag_starts_from_the_folder(sam_folder, tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    model = {"image_size": SIZE, "lora_targets": ["qkv"], "encoder_trainable": [], **SMALL}
    raw = dict(task="xray", task_config={"data_root": str(data), "model": model}, out_dir=str(tmp_path / "run"),
               seed=0, max_steps=2, batch_size=2, optimizer={"name": "adamw", "lr": 1.0e-3}, amp="none",
               eval_every=0, log_every=1, export="model.safetensors", export_weights="final", device="cpu")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(raw))
    assert train_cli.main([str(tmp_path / "train.yaml"), "--sam", str(sam_folder)]) == 0
    export = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["export"]
    loaded = load_xray(export)
    assert loaded.config.encoder_hidden == 48 and loaded.config.embed_dim == 32  # the folder's architecture
    from transformers import SamModel

    sam = SamModel.from_pretrained(str(sam_folder), local_files_only=True)
    trained = loaded.model.encoder.state_dict()
    for key, value in sam.vision_encoder.state_dict().items():  # frozen during training: still the folder's
        key = key.replace("attn.qkv.weight", "attn.qkv.base_layer.weight").replace("attn.qkv.bias",
                                                                                  "attn.qkv.base_layer.bias")
        torch.testing.assert_close(trained[key], value, msg=key)
    other = dict(raw, task="maskrcnn")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert train_cli.main([str(tmp_path / "other.yaml"), "--sam", str(sam_folder)]) == 2
    assert "--sam applies to the xray task" in capsys.readouterr().err
