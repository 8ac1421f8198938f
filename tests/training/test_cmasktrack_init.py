"""CMaskTrack R-CNN initialised from COCO Mask R-CNN weights (the paper's recipe): ``init_from`` + ``class_map`` in
the task config copy the detector and the mapped class rows, a training step runs, unknown names fail clearly."""
from __future__ import annotations

import argparse

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from amodal.errors import CheckpointError, ConfigError
from amodal.models.cmasktrack import build_cmasktrack
from amodal.models.maskrcnn import COCO_CATEGORY_NAMES
from amodal.models.maskrcnn_import import CLASS_ROWS, import_torchvision_maskrcnn, transfer_detector_weights
from amodal.models.weights import load_weights
from amodal.training.data.synth.video import add_arguments, generate
from amodal.training.tasks.cmasktrack import CMaskTrackTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ResNet-50-FPN v1 (the weights' architecture) on 96x64 frames; the rest small for a CPU step
R50 = {"backbone": "resnet50", "variant": "v1", "box_head_dim": 1024, "mask_head_channels": 256,
       "input_height": 64, "input_width": 96, "calibration_channels": 8, "track_dim": 32,
       "anchor_sizes": [8, 16, 32, 64, 128], "rpn_post_nms_train": 64, "rpn_post_nms_test": 32,
       "box_batch_size_per_image": 32, "max_detections": 10}
CLASS_MAP = {"person": "person", "car": "car", "truck": "car", "dog": "animal"}
COCO_LABEL = {"person": 1, "car": 3, "truck": 8, "dog": 18}  # torchvision's 91-slot indices


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ovis_tiny")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    generate(out, 2, 7, parser.parse_args(["--frames", "4", "--width", "96", "--height", "64", "--objects-min", "2",
                                           "--objects-max", "3", "--split-held-out", "0.5"]))
    return out


@pytest.fixture(scope="module")
def coco_weights(tmp_path_factory):
    """A torchvision maskrcnn_resnet50_fpn state dict (91 classes), imported as a user would."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("coco")
    torch.save(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), folder / "tv.pth")
    import_torchvision_maskrcnn(folder / "tv.pth", folder / "coco.safetensors")
    return folder / "coco.safetensors"


def _rows(tensor: torch.Tensor, label: int, per_class: int) -> torch.Tensor:
    return tensor[label * per_class:(label + 1) * per_class]


def test_init_from_copies_the_detector_and_mapped_rows_then_trains(dataset, coco_weights):
    task = CMaskTrackTask({"data_root": str(dataset), **R50, "init_from": str(coco_weights), "class_map": CLASS_MAP})
    assert task.class_names == ("person", "car", "animal", "box", "ball")
    torch.manual_seed(3)
    fresh = build_cmasktrack(config=task.model_config).state_dict()
    torch.manual_seed(3)
    model = task.build_model()
    source, _ = load_weights(coco_weights)
    state = model.state_dict()

    shared = [k for k in source if k not in CLASS_ROWS]
    assert len(shared) > 300 and all(torch.equal(state[k], source[k]) for k in shared)
    ours = {name: i + 1 for i, name in enumerate(task.class_names)}
    for key, per_class in CLASS_ROWS.items():
        def ours_row(name, key=key, per_class=per_class):
            return _rows(state[key], ours[name], per_class)

        def coco_row(name, key=key, per_class=per_class):
            return _rows(source[key], COCO_LABEL[name], per_class)

        assert torch.equal(_rows(state[key], 0, per_class), _rows(source[key], 0, per_class))  # background
        assert torch.equal(ours_row("person"), coco_row("person"))
        assert torch.equal(ours_row("animal"), coco_row("dog"))
        torch.testing.assert_close(ours_row("car"), (coco_row("car") + coco_row("truck")) / 2)
        for unmapped in ("box", "ball"):  # fresh initialisation, as without init_from
            assert torch.equal(ours_row(unmapped), _rows(fresh[key], ours[unmapped], per_class))
    untouched = [k for k in state if k.startswith(("calibration.", "track_head."))]
    assert untouched and all(torch.equal(state[k], fresh[k]) for k in untouched)
    record = task.export_metadata()["initialised_from"]
    assert record["mapped"] == {"person": ["person"], "car": ["car", "truck"], "animal": ["dog"]}
    assert record["unmapped"] == ["box", "ball"] and record["source"] == "torchvision COCO"

    model.train()
    batch = next(iter(task.train_batches(batch_size=1, seed=0, rank=0, world_size=1)))
    losses = task.losses(model, batch)
    assert all(torch.isfinite(v) for v in losses.values()) and "loss_track" in losses
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(model.state_dict()["roi_heads.box_head.fc6.weight"], source["roi_heads.box_head.fc6.weight"])

    broken = {k: v for k, v in source.items() if k != "rpn.head.cls_logits.bias"}
    with pytest.raises(CheckpointError, match=r"1 missing: rpn\.head\.cls_logits\.bias"):
        transfer_detector_weights(model, broken, COCO_CATEGORY_NAMES, task.class_names, CLASS_MAP)


def test_init_from_errors_name_what_to_change(dataset, coco_weights):
    base = {"data_root": str(dataset), **R50, "init_from": str(coco_weights)}
    with pytest.raises(ConfigError, match=r"unknown source classes \['persn'\].*unknown categories \['vehicle'\]"):
        CMaskTrackTask({**base, "class_map": {"persn": "person", "traffic light": "vehicle"}})
    tiny = {k: v for k, v in base.items() if k not in ("backbone", "box_head_dim", "mask_head_channels")}
    with pytest.raises(ConfigError, match=r"set backbone: 'resnet50' \(not 'tiny'\), box_head_dim: 1024"):
        CMaskTrackTask(tiny)
    with pytest.raises(ConfigError, match="variant: 'v1' \\(not 'v2'\\)"):
        CMaskTrackTask({**base, "variant": "v2"})
    with pytest.raises(ConfigError, match="class_map needs init_from"):
        CMaskTrackTask({"data_root": str(dataset), "class_map": CLASS_MAP})


def test_init_from_our_street_detector_with_a_wider_tiny_trunk(dataset, tmp_path):
    """The street recipe: CMaskTrack starts from our own Mask R-CNN weights with a non-default tiny trunk;
    ``tiny_widths`` is a task key, and a mismatch names it."""
    from amodal.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
    from amodal.models.weights import save_weights

    tiny = {"backbone": "tiny", "tiny_widths": [8, 16, 16, 24], "fpn_channels": 16, "box_head_dim": 32,
            "mask_head_channels": 8, "input_height": 64, "input_width": 96, "calibration_channels": 8,
            "track_dim": 16, "anchor_sizes": [8, 16, 32, 64, 128], "rpn_post_nms_train": 32,
            "rpn_post_nms_test": 16, "box_batch_size_per_image": 16, "max_detections": 10}
    names = ("person", "car", "animal", "box", "ball")
    config = MaskRCNNConfig(class_names=names, backbone="tiny", tiny_widths=(8, 16, 16, 24), fpn_channels=16,
                            box_head_dim=32, mask_head_channels=8, min_size=64, max_size=96)
    torch.manual_seed(0)
    source = build_maskrcnn(config=config).state_dict()
    path = save_weights(source, tmp_path / "street.safetensors", {"config": config.to_dict()})
    task = CMaskTrackTask({"data_root": str(dataset), **tiny, "init_from": str(path),
                           "class_map": {n: n for n in names}})
    state = task.build_model().state_dict()
    assert task.model_config.detector.tiny_widths == (8, 16, 16, 24)
    assert all(torch.equal(state[k], v) for k, v in source.items())
    with pytest.raises(ConfigError, match=r"set tiny_widths: \(8, 16, 16, 24\) \(not \(16, 32, 64, 96\)\)"):
        CMaskTrackTask({"data_root": str(dataset), **{k: v for k, v in tiny.items() if k != "tiny_widths"},
                        "init_from": str(path)})
