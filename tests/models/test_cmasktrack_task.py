"""The ``cmasktrack`` training task on a tiny synthetic OVIS set generated here: batches, losses, online evaluation."""
from __future__ import annotations

import argparse

import pytest
import torch

from amodal.errors import ConfigError
from amodal.models.cmasktrack import PairBatch
from amodal.training.data.synth.video import add_arguments, generate
from amodal.training.tasks import build_task
from amodal.training.tasks.cmasktrack import CMaskTrackTask

TINY = {"input_height": 64, "input_width": 96, "fpn_channels": 16, "calibration_channels": 8, "track_dim": 32,
        "box_head_dim": 32, "mask_head_channels": 8, "anchor_sizes": [8, 16, 32, 64, 128], "rpn_post_nms_train": 64,
        "rpn_post_nms_test": 32, "box_batch_size_per_image": 32, "max_detections": 10}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("ovis_tiny")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--frames", "6", "--width", "96", "--height", "64", "--objects-min", "2",
                              "--objects-max", "3", "--split-held-out", "0.5"])
    generate(out, 4, 7, args)
    return out


def test_config_validation(dataset):
    with pytest.raises(ConfigError, match="unknown keys.*'lr_typo'"):
        CMaskTrackTask({"data_root": str(dataset), "lr_typo": 1})
    with pytest.raises(ConfigError, match="data_root is required"):
        CMaskTrackTask({})
    with pytest.raises(ConfigError, match="hflip_prob"):
        CMaskTrackTask({"data_root": str(dataset), "hflip_prob": 2.0})


def test_batches_are_deterministic_pairs_within_the_reference_gap(dataset):
    task = build_task("cmasktrack", {"data_root": str(dataset), "max_ref_gap": 2, **TINY})
    assert isinstance(task, CMaskTrackTask)
    assert task.class_names == ("person", "car", "animal", "box", "ball")
    first = next(iter(task.train_batches(batch_size=2, seed=5, rank=0, world_size=1)))
    again = next(iter(task.train_batches(batch_size=2, seed=5, rank=0, world_size=1)))
    assert isinstance(first, PairBatch) and len(first.images) == 2
    for a, b in zip(first.images + first.ref_images, again.images + again.ref_images):
        torch.testing.assert_close(a, b)
    for t in first.targets + first.ref_targets:
        assert t.masks.shape[0] == t.boxes_xyxy.shape[0] == t.instance_ids.shape[0] == t.labels.shape[0]
        assert (t.boxes_xyxy[:, 2:] > t.boxes_xyxy[:, :2]).all()
        assert t.labels.min() >= 1 if t.labels.numel() else True
    # resuming at batch 3 gives the 4th batch of the uninterrupted stream
    stream = task.train_batches(batch_size=2, seed=5, rank=0, world_size=1)
    fourth = [next(stream) for _ in range(4)][3]
    resumed = next(iter(task.train_batches(batch_size=2, seed=5, rank=0, world_size=1, start_batch=3)))
    torch.testing.assert_close(fourth.images[0], resumed.images[0])


def test_zoomed_pairs_share_one_window_and_their_boxes_are_the_masks_extents(dataset):
    from amodal.training.tasks.cmasktrack import frame_tensors
    from amodal.training.tasks.zoom import ZoomWindow

    plain = build_task("cmasktrack", {"data_root": str(dataset), "hflip_prob": 0.0, **TINY})
    video = plain.train_set.videos[sorted(plain.train_set.videos)[0]]
    frame = plain.train_set.frame(video, 0)
    image, target = frame_tensors(frame, plain.label_of)
    mirrored, flipped = frame_tensors(frame, plain.label_of, ZoomWindow(0, 0, 64, 96, mirror=True))
    assert torch.equal(mirrored, image.flip(-1)) and torch.equal(flipped.masks, target.masks.flip(-1))
    assert flipped.boxes_xyxy[:, 0].tolist() == (96 - target.boxes_xyxy[:, 2]).tolist()
    zoomed, cut = frame_tensors(frame, plain.label_of, ZoomWindow(16, 24, 32, 48, mirror=False))  # 2x, centre
    assert zoomed.shape == image.shape and set(cut.instance_ids.tolist()) <= set(target.instance_ids.tolist())
    for box, mask in zip(cut.boxes_xyxy, cut.masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]

    task = build_task("cmasktrack", {"data_root": str(dataset), "zoom_prob": 1.0, "zoom_max": 3.0, **TINY})
    batch = next(iter(task.train_batches(batch_size=4, seed=1, rank=0, world_size=1)))
    area = lambda targets: sum(float(t.masks.sum()) for t in targets) / max(1, sum(len(t.masks) for t in targets))
    unzoomed = next(iter(plain.train_batches(batch_size=4, seed=1, rank=0, world_size=1)))
    assert area(batch.targets) > 1.5 * area(unzoomed.targets)
    for t, r in zip(batch.targets, batch.ref_targets):
        for target in (t, r):
            assert len(target.masks) == len(target.boxes_xyxy) == len(target.labels) == len(target.instance_ids)
            assert (target.masks.flatten(1).sum(1) > 0).all()
    with pytest.raises(ConfigError, match="zoom_max"):
        CMaskTrackTask({"data_root": str(dataset), "zoom_max": 0.5})


def test_losses_evaluation_and_metadata(dataset):
    torch.manual_seed(0)
    task = CMaskTrackTask({"data_root": str(dataset), **TINY})
    model = task.build_model().train()
    batch = task.batch_to_device(next(iter(task.train_batches(batch_size=1, seed=0, rank=0, world_size=1))),
                                 torch.device("cpu"))
    losses = task.losses(model, batch)
    assert all(k.startswith("loss_") and torch.isfinite(v) for k, v in losses.items()) and "loss_track" in losses
    result = task.evaluate(model, torch.device("cpu"))
    assert model.training  # evaluation restores the mode
    assert set(result) >= {"score", "AP", "AP50", "AP75", "AP_light", "AP_medium", "AP_heavy"}
    assert result["score"] == result["AP"] and -1.0 <= result["AP"] <= 1.0
    assert result["num_predictions"] > 0
    meta = task.export_metadata()
    assert meta["classes"] == list(task.class_names) and meta["config"]["detector"]["min_size"] == 64
    assert {"input_size", "normalisation", "training_data", "metric"} <= set(meta)
