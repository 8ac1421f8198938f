"""MBF's background augmentation on constructed images, and the ``mbf`` training task on a tiny synthetic persons
set generated here: P×K batches, a short ``amodal train`` run whose loss falls, evaluation and the exported file."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from amodal.cli import main as amodal_main
from amodal.errors import ConfigError
from amodal.models.mbf import load_mbf
from amodal.training.data.reid_augment import (
    ReIDAugmentConfig,
    background_augment,
    paste_foreground,
    paste_region,
    random_erase,
)
from amodal.training.data.synth import persons
from amodal.training.tasks import build_task
from amodal.training.tasks.mbf import MBFBatch, MBFTask
from amodal.training.trainer.metrics_log import read_metrics

MICRO = {"input_height": 64, "input_width": 32, "patch_size": 8, "stride": 8, "embed_dim": 32, "depth": 2,
         "num_heads": 2, "recovery_layers": 1, "ids_per_batch": 4, "images_per_id": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def persons_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("persons_mbf")
    parser = argparse.ArgumentParser()
    persons.add_arguments(parser)
    args = parser.parse_args(["--height", "64", "--width", "32", "--cameras", "3", "--images-per-camera-min", "2"])
    persons.generate(out, 12, 5, args)
    return out


def _scene(seed: int = 0):
    """A 32×16 image of value 50 whose body (parsing 2) fills the centre column; a donor of value 200 with its
    foreground (parsing 3) in rows 4..27, columns 4..11."""
    image = np.full((32, 16, 3), 50, np.uint8)
    parsing = np.zeros((32, 16), np.uint8)
    parsing[2:30, 5:11] = 2
    donor = np.full((32, 16, 3), 200, np.uint8)
    donor[:, :, 1] = np.arange(16, dtype=np.uint8)[None, :]  # position-dependent, to check where pixels come from
    donor_parsing = np.zeros((32, 16), np.uint8)
    donor_parsing[4:28, 4:12] = 3
    return image, parsing, donor, donor_parsing, np.random.default_rng(seed)


@pytest.mark.parametrize("half", ["top", "bottom", "left", "right"])
def test_paste_foreground_copies_only_donor_foreground_inside_the_half(half):
    image, _, donor, donor_parsing, rng = _scene()
    out, covered = paste_foreground(image, donor, donor_parsing, half, rng, max_shift=0.0)
    expected = donor_parsing > 0
    rows = {"top": slice(16, 32), "bottom": slice(0, 16)}.get(half)
    cols = {"left": slice(8, 16), "right": slice(0, 8)}.get(half)
    if rows is not None:
        expected[rows] = False
    if cols is not None:
        expected[:, cols] = False
    np.testing.assert_array_equal(covered, expected)
    np.testing.assert_array_equal(out[covered], donor[covered])
    np.testing.assert_array_equal(out[~covered], image[~covered])


def test_paste_region_is_flush_with_its_edge():
    image, _, donor, _, rng = _scene(1)
    _, covered = paste_region(image, donor, "bottom", rng, extent=(0.5, 0.5))
    ys, xs = np.nonzero(covered)
    assert ys.max() == 31 and ys.min() == 24 and xs.max() - xs.min() + 1 == 8
    assert covered.sum() == 8 * 8


@pytest.mark.parametrize("foreground_prob", [1.0, 0.0])
def test_background_augment_marks_covered_pixels_background(foreground_prob):
    image, parsing, donor, donor_parsing, _ = _scene()
    config = ReIDAugmentConfig(apply_prob=1.0, foreground_prob=foreground_prob, erase_prob=1.0)
    hits = 0
    for seed in range(8):
        out, target, covered = background_augment(image, parsing, donor, donor_parsing, np.random.default_rng(seed),
                                                  config)
        assert covered.any()
        assert (target[covered] == 0).all()
        np.testing.assert_array_equal(target[~covered], parsing[~covered])
        np.testing.assert_array_equal(out[~covered], image[~covered])
        hits += int((parsing[covered] > 0).any())  # some body was actually hidden
        again = background_augment(image, parsing, donor, donor_parsing, np.random.default_rng(seed), config)
        for a, b in zip((out, target, covered), again):
            np.testing.assert_array_equal(a, b)
    assert hits >= 6


def test_background_augment_off_and_erasing():
    image, parsing, donor, donor_parsing, rng = _scene()
    out, target, covered = background_augment(image, parsing, donor, donor_parsing, rng,
                                              ReIDAugmentConfig(erase_prob=0.0), occlusion=False)
    assert not covered.any() and (out == image).all() and (target == parsing).all()
    erased, covered = random_erase(image, np.random.default_rng(2), area=(0.1, 0.1))
    assert abs(int(covered.sum()) - 0.1 * 32 * 16) <= 8 and (erased[~covered] == image[~covered]).all()
    with pytest.raises(ConfigError, match="donor size"):
        background_augment(image, parsing, donor[:16], donor_parsing[:16], rng)
    with pytest.raises(ConfigError, match="apply_prob"):
        ReIDAugmentConfig(apply_prob=1.5)


def test_task_config_errors(persons_set):
    with pytest.raises(ConfigError, match="unknown keys.*'lr_typo'"):
        MBFTask({"data_root": str(persons_set), "lr_typo": 1})
    with pytest.raises(ConfigError, match="data_root is required"):
        MBFTask({})
    with pytest.raises(ConfigError, match="2 ids"):
        MBFTask({"data_root": str(persons_set), "images_per_id": 1})
    with pytest.raises(ConfigError, match="fewer than ids_per_batch"):
        MBFTask({"data_root": str(persons_set), **{**MICRO, "ids_per_batch": 50}})


def test_batches_are_pk_deterministic_and_resumable(persons_set):
    task = build_task("mbf", {"data_root": str(persons_set), **MICRO})
    assert isinstance(task, MBFTask)
    stream = task.train_batches(batch_size=8, seed=3, rank=0, world_size=1)
    batches = [next(stream) for _ in range(3)]
    first = batches[0]
    assert isinstance(first, MBFBatch)
    assert first.images.shape == first.holistic_images.shape == (8, 3, 64, 32)
    assert first.parsing.shape == (8, 64, 32) and first.parsing.max() <= 4
    assert 0.0 <= float(first.images.min()) and float(first.images.max()) <= 1.0
    pids = first.pids.view(4, 2)
    assert (pids[:, 0] == pids[:, 1]).all() and len(set(pids[:, 0].tolist())) == 4
    assert int(first.camera_ids.max()) <= task.model_config.num_cameras
    resumed = next(iter(task.train_batches(batch_size=8, seed=3, rank=0, world_size=1, start_batch=2)))
    torch.testing.assert_close(resumed.images, batches[2].images)
    torch.testing.assert_close(resumed.parsing, batches[2].parsing)
    other_rank = next(iter(task.train_batches(batch_size=8, seed=3, rank=1, world_size=2)))
    assert not torch.equal(other_rank.images, first.images)
    with pytest.raises(ConfigError, match="batch_size 6 must equal"):
        next(iter(task.train_batches(batch_size=6, seed=0, rank=0, world_size=1)))


def test_training_run_loss_falls_evaluates_and_exports(persons_set, tmp_path, capsys):
    config = {
        "task": "mbf", "task_config": {"data_root": str(persons_set), **MICRO, "erase_prob": 0.0},
        "out_dir": str(tmp_path / "run"), "seed": 0, "max_steps": 40, "batch_size": 8,
        "optimizer": {"name": "adamw", "lr": 2.0e-3, "weight_decay": 0.0}, "eval_every": 0, "log_every": 10,
        "checkpoint_every": 40, "keep_checkpoints": 1, "export": "mbf.safetensors", "device": "cpu",
    }
    path = tmp_path / "mbf.yaml"
    path.write_text(yaml.safe_dump(config))
    assert amodal_main(["train", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    evaluation = summary["last_eval"]
    assert {"rank1", "rank5", "mAP", "rank1_nocam", "mAP_nocam", "score"} <= set(evaluation)
    assert evaluation["score"] == evaluation["mAP"] and 0.0 < evaluation["mAP"] <= 1.0
    assert 0.0 <= evaluation["rank1"] <= 1.0 and evaluation["num_valid_queries"] > 0
    assert -1.0 <= evaluation["match_threshold_eer"] <= 1.0 and 0.0 <= evaluation["eer_false_accept"] <= 1.0
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [10, 20, 30, 40]
    assert logged[-1]["losses"]["loss_id"] < logged[0]["losses"]["loss_id"]
    assert logged[-1]["loss"] < logged[0]["loss"]

    loaded = load_mbf(summary["export"])
    assert loaded.model.embedding_dim == loaded.config.embedding_dim == 32 * 6
    assert loaded.metadata["input_size"] == {"height": 64, "width": 32}
    assert loaded.metadata["embedding"]["dim"] == 32 * 6 and loaded.metadata["score"] == evaluation["score"]
    emb = loaded.model.embed(torch.rand(2, 3, 64, 32), camera_ids=None)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
