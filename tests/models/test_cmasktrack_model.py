"""CMaskTrack R-CNN end to end on tiny configs: losses, optimisation, online inference, weights round trip."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from amodal.errors import CheckpointError
from amodal.models.cmasktrack import (
    CMaskTrackConfig,
    InstanceTargets,
    OnlineTracker,
    PairBatch,
    build_cmasktrack,
    cmasktrack_losses,
    load_cmasktrack,
)
from amodal.models.maskrcnn import MaskRCNNConfig
from amodal.models.weights import save_weights

H, W = 64, 96
LOSS_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "loss_track"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def micro_config(calibration: bool = True) -> CMaskTrackConfig:
    detector = MaskRCNNConfig(
        class_names=("a", "b"), backbone="tiny", tiny_widths=(8, 8, 16, 16), fpn_channels=16, min_size=H, max_size=W,
        anchor_sizes=(8, 16, 32, 64, 128), box_head_dim=32, mask_head_channels=8, rpn_post_nms_train=64,
        rpn_post_nms_test=32, box_batch_size_per_image=32, box_detections_per_img=10)
    return CMaskTrackConfig(detector=detector, calibration=calibration, calibration_channels=8, track_dim=32)


def _targets(boxes: list[list[int]], labels: list[int], ids: list[int]) -> InstanceTargets:
    masks = torch.zeros(len(boxes), H, W, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = 1
    return InstanceTargets(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels),
                           masks, torch.tensor(ids))


def _image(targets: InstanceTargets, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, H, W, generator=g) * 0.2
    for k, m in enumerate(targets.masks):
        img[k % 3][m.bool()] = 0.9
    return img


def _batch() -> PairBatch:
    cur = [_targets([[4, 6, 30, 40], [50, 10, 80, 50]], [1, 2], [11, 12]), _targets([[20, 20, 60, 60]], [2], [21])]
    ref = [_targets([[8, 6, 34, 40]], [1], [11]), _targets([[24, 18, 64, 58], [70, 5, 90, 30]], [2, 1], [21, 22])]
    return PairBatch([_image(t, i) for i, t in enumerate(cur)], [_image(t, 9 + i) for i, t in enumerate(ref)], cur, ref)


def test_forward_outputs_and_losses_finite():
    torch.manual_seed(0)
    model = build_cmasktrack(config=micro_config()).train()
    out = model(_batch())
    assert len(out.track_logits) == 2
    for logits, tgt, boxes, ref in zip(out.track_logits, out.track_targets, out.positive_boxes, _batch().ref_targets):
        assert logits.shape == (boxes.shape[0], ref.boxes_xyxy.shape[0] + 1)
        assert tgt.shape == (boxes.shape[0],)
    # image 0: only instance 11 is in the reference (index 0 → target 1); instance 12 is new (target 0)
    cur_ids = _batch().targets[0].instance_ids[out.positive_matched[0]]
    assert out.track_targets[0].tolist() == [1 if i == 11 else 0 for i in cur_ids.tolist()]
    losses = cmasktrack_losses(out)
    assert set(losses) == LOSS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    assert out.mask_logits.shape[1:] == (3, 28, 28)


def test_a_few_optimisation_steps_reduce_the_loss():
    torch.manual_seed(1)
    model = build_cmasktrack(config=micro_config()).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = _batch()
    totals = []
    for _ in range(5):
        loss = sum(cmasktrack_losses(model(batch)).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        opt.step()
        totals.append(float(loss.detach()))
    assert totals[-1] < 0.8 * totals[0], totals


def test_calibration_off_has_no_calibration_parameters_and_still_trains():
    model = build_cmasktrack(config=micro_config(calibration=False)).train()
    assert model.calibration is None and not any("calibration" in k for k in model.state_dict())
    losses = cmasktrack_losses(model(_batch()))
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())


def test_online_tracker_calibrates_against_the_same_streams_previous_frame():
    torch.manual_seed(2)
    model = build_cmasktrack(config=micro_config())
    seen = []
    original = model.detect

    def spy(images, features, ref_features, sizes):
        seen.append(({k: v.clone() for k, v in features.items()}, {k: v.clone() for k, v in ref_features.items()}))
        return original(images, features, ref_features, sizes)

    model.detect = spy  # type: ignore[method-assign]
    tracker = OnlineTracker(model, score_threshold=0.0)
    a0, b0, a1 = (torch.rand(3, H, W) for _ in range(3))
    out = tracker.step([("a", a0), ("b", b0), ("a", a1)])
    assert len(out) == 3 and all(o.masks.shape[1:] == (H, W) for o in out)
    assert len(seen) == 2  # wave 1: a0 and b0 batched; wave 2: a1
    (f0, r0), (f1, r1) = seen
    for k in f0:
        torch.testing.assert_close(r0[k], f0[k])  # first frames: calibrated against themselves
        torch.testing.assert_close(r1[k][0], f0[k][0])  # a1 against a0, not b0
    tracker.reset("a")
    assert tracker.streams == ["b"]


def test_weights_round_trip_and_checkpoint_errors(tmp_path):
    torch.manual_seed(3)
    config = micro_config()
    model = build_cmasktrack(config=config)
    path = save_weights(model.state_dict(), tmp_path / "m.safetensors", {"config": config.to_dict()})
    loaded = load_cmasktrack(path)
    assert loaded.config == config
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_cmasktrack(truncated)
    other = save_weights(model.state_dict(), tmp_path / "other.safetensors",
                         {"config": replace(config, calibration=False).to_dict()})
    with pytest.raises(CheckpointError, match="does not match the model.*unexpected"):
        load_cmasktrack(other)
    bare = save_weights(model.state_dict(), tmp_path / "bare.safetensors", {"classes": ["a", "b"]})
    with pytest.raises(CheckpointError, match="no 'config'"):
        load_cmasktrack(bare)
    bad = save_weights(model.state_dict(), tmp_path / "bad.safetensors", {"config": {"detector": {}, "track_dim": 3}})
    with pytest.raises(CheckpointError, match="not a CMaskTrack R-CNN config"):
        load_cmasktrack(bad)
