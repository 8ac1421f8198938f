"""The ``xray`` training task on tiny synthetic scans generated here (8-bit and 16-bit): targets with zero occluder
masks for free items, deterministic batches, evaluation with COCO mask AP, a training run that lowers its loss,
and exact resume through the generic trainer."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from amodal.errors import ConfigError
from amodal.models.xray import XrayBatch, load_xray
from amodal.training.data.coco import load_coco_instances
from amodal.training.data.synth.xray import add_arguments, generate
from amodal.training.tasks import build_task
from amodal.training.tasks.xray import XrayTask, decode_record, training_instances
from amodal.training.trainer import DistContext, HookBase, Trainer, train_config_from_dict
from amodal.training.trainer.checkpoint import latest_checkpoint
from amodal.training.trainer.metrics_log import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
MODEL = {"image_size": 64, "rpn_post_nms_train": 64, "rpn_post_nms_test": 32, "box_batch_size_per_image": 32,
         "box_detections_per_img": 8, "max_mask_rois": 8}


def _generate(out, gray16: bool):
    for split, n, seed in (("train", 6, 3), ("val", 4, 5)):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        argv = ["--width", "64", "--height", "64", "--items-min", "2", "--items-max", "3", "--clutter-min", "0",
                "--clutter-max", "1", "--split", split] + (["--gray16"] if gray16 else [])
        generate(out, n, seed, parser.parse_args(argv))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("xray8"), gray16=False)


@pytest.fixture(scope="module")
def dataset16(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("xray16"), gray16=True)


def _task(root, **model) -> XrayTask:
    return build_task("xray", {"data_root": str(root), "model": {**MODEL, **model}})


def test_config_validation(dataset):
    with pytest.raises(ConfigError, match="unknown key.*lr_typo"):
        XrayTask({"data_root": str(dataset), "lr_typo": 1})
    with pytest.raises(ConfigError, match="missing required key data_root"):
        XrayTask({})
    with pytest.raises(ConfigError, match="task_config.model: unknown key.*bilayr"):
        XrayTask({"data_root": str(dataset), "model": {"bilayr": False}})
    with pytest.raises(ConfigError, match="preset"):
        XrayTask({"data_root": str(dataset), "preset": "vit_h"})


def test_targets_give_free_items_an_all_zero_occluder_mask(dataset):
    task = _task(dataset)
    assert task.class_names[10] == "Knife" and len(task.class_names) == 12
    data = load_coco_instances(dataset / "annotations" / "train.json")
    seen_free = seen_occluded = 0
    for record in data.records:
        sample = decode_record(record, task.label_of)
        for k, inst in enumerate(training_instances(record)):
            if inst.occluder_segmentation:
                seen_occluded += 1
                assert np.array_equal(sample.occluders[k], inst.occluder_mask())
                assert sample.occluders[k].any()
            else:
                seen_free += 1
                assert not sample.occluders[k].any()
    assert seen_free and seen_occluded


def test_batches_are_deterministic_and_resume_at_any_batch(dataset):
    task = _task(dataset)
    first = next(iter(task.train_batches(batch_size=2, seed=5, rank=0, world_size=1)))
    again = next(iter(task.train_batches(batch_size=2, seed=5, rank=0, world_size=1)))
    assert isinstance(first, XrayBatch) and len(first.images) == 2
    for a, b in zip(first.images, again.images):
        torch.testing.assert_close(a, b)
    for t in first.targets:
        n = t.boxes_xyxy.shape[0]
        assert t.masks.shape == t.occluder_masks.shape and t.masks.shape[0] == n == t.labels.shape[0]
        assert (t.boxes_xyxy[:, 2:] > t.boxes_xyxy[:, :2]).all() and (t.labels >= 1).all()
    stream = task.train_batches(batch_size=2, seed=5, rank=0, world_size=1)
    fourth = [next(stream) for _ in range(4)][3]
    resumed = next(iter(task.train_batches(batch_size=2, seed=5, rank=0, world_size=1, start_batch=3)))
    for a, b in zip(fourth.images, resumed.images):
        torch.testing.assert_close(a, b)


def test_gray16_scans_keep_their_full_range(dataset16):
    task = _task(dataset16)
    batch = next(iter(task.train_batches(batch_size=1, seed=0, rank=0, world_size=1)))
    image = batch.images[0]
    assert image.shape[0] == 3 and torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    record = task._records[int(np.random.default_rng([0, 0]).permutation(len(task._records))[0])]
    raw = record.load_image()
    assert raw.dtype == np.uint16
    values = torch.unique(image[0])
    assert values.numel() > 256  # finer than 8 bits
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_evaluation_and_metadata(dataset):
    torch.manual_seed(0)
    task = _task(dataset)
    model = task.build_model().train()
    result = task.evaluate(model, torch.device("cpu"))
    assert model.training  # evaluation restores the mode
    assert set(result) >= {"score", "AP", "AP50", "AP75", "occluded/AP", "occluded/AP50", "num_predictions"}
    assert result["score"] == result["AP"] and -1.0 <= result["AP"] <= 1.0
    assert result["num_predictions"] > 0 and result["num_gt_occluded"] > 0
    meta = task.export_metadata()
    json.dumps(meta)
    assert meta["classes"] == list(task.class_names) and meta["config"]["image_size"] == 64
    assert {"input_size", "normalisation", "training_data", "metric"} <= set(meta)


def _train_config(out, data_root, **kw):
    raw = dict(task="xray", task_config={"data_root": str(data_root), "model": MODEL}, out_dir=str(out), seed=0,
               max_steps=8, batch_size=2, optimizer={"name": "adamw", "lr": 1.0e-3, "weight_decay": 0.05},
               schedule={"name": "cosine", "warmup_steps": 2, "warmup_factor": 0.1}, grad_clip_norm=10.0,
               amp="none", checkpoint_every=4, keep_checkpoints=3, eval_every=0, log_every=1,
               export="model.safetensors", export_weights="final", device="cpu")
    raw.update(kw)
    return train_config_from_dict(raw)


class Preempted(Exception):
    """Stands for a job killed mid-training."""


class PreemptAt(HookBase):
    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if self.trainer.step == self.step:
            raise Preempted(f"pre-empted at step {self.step}")


def test_training_lowers_the_loss_and_resumes_exactly(dataset, tmp_path):
    straight = Trainer(_train_config(tmp_path / "a", dataset), _task(dataset), CPU)
    summary = straight.train()
    assert summary.completed and summary.export_path is not None
    log = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    first, last = np.mean([r["loss"] for r in log[:3]]), np.mean([r["loss"] for r in log[-3:]])
    assert last < first, (first, last)
    loaded = load_xray(summary.export_path)
    assert loaded.metadata["model"] == "xray_bilayer_sam" and loaded.config.image_size == 64

    first_part = Trainer(_train_config(tmp_path / "b", dataset), _task(dataset), CPU, extra_hooks=[PreemptAt(6)])
    with pytest.raises(Preempted):
        first_part.train()
    resumed = Trainer(_train_config(tmp_path / "b", dataset), _task(dataset), CPU)
    resumed.resume(latest_checkpoint(tmp_path / "b"))
    assert resumed.step == 4
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
