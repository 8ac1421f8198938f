"""The maskrcnn stage: weights from local files (safetensors with metadata, torchvision .pth), masks end
to end, clear errors for bad checkpoints, and the shipped weights find the demo's objects."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from amodal.engine.stages.maskrcnn import MaskRCNNSettings, MaskRCNNStage
from amodal.errors import CheckpointError
from amodal.models.maskrcnn import MaskRCNNConfig, build_maskrcnn
from amodal.models.weights import load_weights, save_weights
from amodal.pretrained import WEIGHTS_DIR
from amodal.streams.synthetic import SyntheticScene, SyntheticSpec
from amodal.types import Frame

from tests.support.stages import StagesUnderTest

TINY = MaskRCNNConfig(class_names=("a", "b"), backbone="tiny", fpn_channels=16, min_size=64, max_size=96,
                      tiny_widths=(8, 8, 16, 16), box_head_dim=32, mask_head_channels=8, box_score_thresh=0.0)


def _frame(image: np.ndarray, index: int = 0, fmt: str = "rgb24") -> Frame:
    h, w = image.shape[:2]
    return Frame("s", index, None, time.time_ns(), time.monotonic_ns(), fmt, (image,), w, h)


def test_tiny_model_from_safetensors_runs_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = build_maskrcnn(config=TINY)
    path = save_weights(model.state_dict(), tmp_path / "m.safetensors", {"config": TINY.to_dict(), "classes": ["a", "b"]})
    state, meta = load_weights(path)
    assert meta["classes"] == ["a", "b"] and set(state) == set(model.state_dict())
    analyzer = StagesUnderTest(MaskRCNNStage(MaskRCNNSettings(weights=str(path), score_threshold=0.0, max_detections=5)))
    rgb = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    gray16 = np.random.default_rng(1).integers(0, 65535, (48, 80), dtype=np.uint16)
    results = analyzer.process([_frame(rgb), _frame(gray16, 1, "gray16")])
    assert [r.frame_index for r in results] == [0, 1]
    for r in results:
        assert (r.width, r.height) == (80, 48) and len(r.objects) <= 5
        for obj in r.objects:
            assert obj.class_name in ("a", "b") and obj.mask.decode().shape == (48, 80)


def test_torchvision_state_dict_loads_weights_only(tmp_path):
    from amodal.models.maskrcnn import load_maskrcnn

    config = MaskRCNNConfig(class_names=tuple(f"c{i}" for i in range(3)), backbone="resnet18")
    model = build_maskrcnn(config=config)
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    # a .pth without our metadata is read as torchvision's resnet50 layout: the mismatch is reported clearly
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_maskrcnn(tmp_path / "tv.pth")


def test_truncated_and_foreign_checkpoints_give_clear_errors(tmp_path):
    model = build_maskrcnn(config=TINY)
    path = save_weights(model.state_dict(), tmp_path / "m.safetensors", {"config": TINY.to_dict()})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        MaskRCNNStage(MaskRCNNSettings(weights=str(tmp_path / "cut.safetensors")))
    with pytest.raises(CheckpointError, match="not found"):
        MaskRCNNStage(MaskRCNNSettings(weights=str(tmp_path / "missing.safetensors")))
    other = TINY.to_dict() | {"fpn_channels": 8}
    save_weights(model.state_dict(), tmp_path / "mismatch.safetensors", {"config": other})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        MaskRCNNStage(MaskRCNNSettings(weights=str(tmp_path / "mismatch.safetensors")))
    import pickle

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": object()}))
    with pytest.raises(CheckpointError, match="weights-only"):
        MaskRCNNStage(MaskRCNNSettings(weights=str(tmp_path / "evil.pth")))


@pytest.mark.skipif(not (WEIGHTS_DIR / MaskRCNNStage.shipped_weights).is_file(), reason="shipped weights not built")
def test_shipped_weights_segment_the_demo_scene():
    """On held-out synthetic frames, most clearly visible objects are found with a good mask."""
    analyzer = StagesUnderTest(MaskRCNNStage(MaskRCNNSettings(score_threshold=0.5)))
    scene = SyntheticScene(SyntheticSpec(width=256, height=192, objects=5, seed=7))
    found = total = 0
    for index in (0, 40, 80, 120):
        truth = scene.truth(index)
        result = analyzer.process([_frame(scene.render(index), index)])[0]
        masks = [o.mask.decode() for o in result.objects]
        for vis in truth.visible_masks:
            if vis.sum() < 200:
                continue
            total += 1
            best = max((np.logical_and(vis, m).sum() / np.logical_or(vis, m).sum() for m in masks), default=0.0)
            found += best >= 0.5
    assert total > 0 and found / total >= 0.6, f"found {found} of {total} objects with mask IoU >= 0.5"


@pytest.mark.skipif(not (WEIGHTS_DIR / "maskrcnn_street_synthetic.safetensors").is_file(), reason="not shipped")
def test_other_shipped_weights_by_name_and_bad_names_refused():
    from amodal.errors import ConfigError

    stage = MaskRCNNStage(MaskRCNNSettings(weights="shipped:maskrcnn_street_synthetic.safetensors"))
    assert stage.class_names == ("person", "car", "animal", "box", "ball")
    with pytest.raises(ConfigError, match="maskrcnn_street_synthetic.safetensors") as refused:  # lists what ships
        MaskRCNNStage(MaskRCNNSettings(weights="shipped:nope.safetensors"))
    assert "'nope.safetensors'" in str(refused.value) and "retrain" not in str(refused.value)
    with pytest.raises(ConfigError, match="shipped:FILE"):
        MaskRCNNStage(MaskRCNNSettings(weights="shipped:../_weights/x.safetensors"))
