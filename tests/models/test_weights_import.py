"""``amodal weights import``: torchvision's own Mask R-CNN state dicts (v1 and v2 layouts, 91 COCO classes, saved
here by torchvision's builders) become our weights; the ``maskrcnn`` stage on them gives torchvision's outputs;
layout mismatches and truncated files name what is wrong."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torchvision.models.detection import (
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)

from amodal.cli import main as amodal_main
from amodal.engine.stages.maskrcnn import MaskRCNNSettings, MaskRCNNStage
from amodal.errors import CheckpointError
from amodal.models.maskrcnn import MaskRCNNConfig
from amodal.models.maskrcnn_import import convert_torchvision_state, torchvision_to_amodal
from amodal.models.weights import load_weights
from amodal.types import Frame

from tests.support.stages import StagesUnderTest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUILDERS = {"v1": maskrcnn_resnet50_fpn, "v2": maskrcnn_resnet50_fpn_v2}
# small input and few proposals keep ResNet-50 cheap on a CPU; the same settings go to both models
SIZES = {"min_size": 160, "max_size": 256, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 100}


def _torchvision_model(variant: str) -> torch.nn.Module:
    """torchvision's Mask R-CNN (91 classes, random init) with BatchNorm statistics and head scales made
    non-trivial: with default statistics a swapped mean/var would go unnoticed, and unscaled random heads score
    every box below 0.05."""
    torch.manual_seed(0)
    model = BUILDERS[variant](weights=None, weights_backbone=None, **SIZES).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
        model.rpn.head.cls_logits.weight.mul_(100.0)
        model.roi_heads.box_predictor.cls_score.weight.mul_(3.0)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{variant: (torchvision model, its state dict saved as torchvision users do)}, built once per module."""
    out = {}
    for variant in BUILDERS:
        model = _torchvision_model(variant)
        path = tmp_path_factory.mktemp(f"tv_{variant}") / f"maskrcnn_{variant}.pth"
        torch.save(model.state_dict(), path)
        out[variant] = (model, path)
    return out


def _frame(rgb: np.ndarray) -> Frame:
    h, w = rgb.shape[:2]
    return Frame("cam", 0, None, time.time_ns(), time.monotonic_ns(), "rgb24", (rgb,), w, h)


@pytest.mark.parametrize("variant", list(BUILDERS))
def test_import_then_the_stage_gives_torchvisions_detections(saved, variant, tmp_path, capsys):
    reference, pth = saved[variant]
    out = tmp_path / "coco.safetensors"
    assert amodal_main(["weights", "import", str(pth), str(out), "--min-size", "160", "--max-size", "256",
                        "--proposals", "100"]) == 0
    assert f"{out}: maskrcnn_resnet50_fpn{'_v2' if variant == 'v2' else ''}" in capsys.readouterr().out

    state, meta = load_weights(out)
    coco = [c.replace(" ", "_") for c in MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:]]
    assert meta["classes"] == coco and len(coco) == 90 and coco.count("N/A") == 10
    assert meta["source"] == "torchvision COCO" and MaskRCNNConfig.from_dict(meta["config"]).variant == variant
    assert meta["normalisation"]["mean"] == [0.485, 0.456, 0.406] and meta["input_size"]["min_size"] == 160
    assert amodal_main(["weights", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert '"source": "torchvision COCO"' in shown and '"source_sha256":' in shown and '"class_names"' not in shown
    # every tensor arrives unchanged under its name (BatchNorm counters excepted: bookkeeping)
    theirs = reference.state_dict()
    assert all(torch.equal(state[k], v) for k, v in theirs.items() if not k.endswith("num_batches_tracked"))

    stage = StagesUnderTest(MaskRCNNStage(MaskRCNNSettings(weights=str(out), score_threshold=0.3)))
    assert stage.stage.loaded.config.variant == variant
    rgb = np.random.default_rng(0).integers(0, 255, (120, 176, 3), dtype=np.uint8)
    (result,) = stage.process([_frame(rgb)])
    with torch.inference_mode():
        expected = reference([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0])[0]
    keep = expected["scores"] >= 0.3
    assert int(keep.sum()) >= 2, "the reference model must detect something for the comparison to mean anything"
    assert len(result.objects) == int(keep.sum())
    for obj, box, score, label, mask in zip(result.objects, expected["boxes"][keep], expected["scores"][keep],
                                            expected["labels"][keep], expected["masks"][keep, 0]):
        assert obj.class_name == coco[int(label) - 1]
        assert obj.score == pytest.approx(float(score), abs=1e-3)
        np.testing.assert_allclose(obj.box_xyxy, box.numpy(), atol=0.5)  # px; v2's BatchNorm arithmetic differs ~0.1
        ours, theirs_mask = obj.mask.decode(), (mask > 0.5).numpy()
        assert (ours & theirs_mask).sum() >= 0.99 * (ours | theirs_mask).sum()


def test_layout_mismatches_name_the_keys_and_legacy_names_are_read(saved):
    reference, _ = saved["v1"]
    state = reference.state_dict()
    config = MaskRCNNConfig(class_names=tuple(f"c{i}" for i in range(90)), backbone="resnet50", variant="v1")

    broken = {k: v for k, v in state.items() if k != "roi_heads.box_head.fc7.weight"}
    broken["rpn.head.bbox_pred.weight"] = torch.zeros(3, 256, 1, 1)
    broken["backbone.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        convert_torchvision_state(broken, config, "mine.pth")
    message = str(err.value)
    assert "does not match the model" in message and "mine.pth" in message
    assert "1 missing: roi_heads.box_head.fc7.weight" in message
    assert "1 unexpected: backbone.extra.weight" in message
    assert "rpn.head.bbox_pred.weight: file (3, 256, 1, 1) vs model (12, 256, 1, 1)" in message

    # neither layout's box head: named, not guessed
    with pytest.raises(CheckpointError, match="not a torchvision Mask R-CNN layout.*fc6"):
        torchvision_to_amodal({k: v for k, v in state.items() if not k.startswith("roi_heads.box_head.")})

    # the published hub files still carry torchvision < 0.13 names for the RPN conv, the FPN and the mask head
    legacy = {}
    for k, v in state.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
            k = k.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.").replace(
                f"fpn.layer_blocks.{i}.0.", f"fpn.layer_blocks.{i}.")
        legacy[k] = v
    assert {"roi_heads.mask_head.mask_fcn4.weight", "backbone.fpn.layer_blocks.3.bias"} <= set(legacy)
    converted, legacy_config = torchvision_to_amodal(legacy)
    assert legacy_config.variant == "v1" and legacy_config.num_classes == 91
    assert torch.equal(converted["roi_heads.mask_head.3.0.weight"], state["roi_heads.mask_head.3.0.weight"])
    assert torch.equal(converted["rpn.head.conv.0.0.bias"], state["rpn.head.conv.0.0.bias"])
    assert torch.equal(converted["backbone.fpn.inner_blocks.2.0.weight"], state["backbone.fpn.inner_blocks.2.0.weight"])


def test_truncated_or_wrong_files_exit_2_with_a_clear_line(saved, tmp_path, capsys):
    _, pth = saved["v1"]
    cut = tmp_path / "cut.pth"
    data = pth.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    assert amodal_main(["weights", "import", str(cut), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amodal weights: error:") and "cut.pth" in err and "weights-only" in err
    assert not (tmp_path / "o.safetensors").exists()

    assert amodal_main(["weights", "import", str(pth), str(tmp_path / "o.bin")]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err
    assert amodal_main(["weights", "import", str(pth), str(tmp_path / "o.safetensors"), "--classes", "a,b"]) == 2
    assert "2 class names given, the classifier has 90 classes" in capsys.readouterr().err
