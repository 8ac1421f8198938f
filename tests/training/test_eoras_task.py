"""The ``eoras`` training task on a tiny MOVi-layout set written by the video generator here: crops and targets
follow the metadata boxes and K, batches, the hfov fallback, a short ``amodal train`` run whose loss falls, the
evaluation in three temporal modes and the exported weights."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from amodal.cli import main as amodal_main
from amodal.errors import ConfigError
from amodal.models.eoras import crop_intrinsics, intrinsics_from_fov, load_eoras
from amodal.training.data.movi import MoviSplit
from amodal.training.data.synth import video
from amodal.training.tasks import build_task
from amodal.training.tasks.eoras import EoRaSBatch, EoRaSTask, flip_K
from amodal.training.trainer.metrics_log import read_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICRO_MODEL = dict(input_size=32, widths=[8, 8, 16, 16], stem_channels=8, gn_groups=4, fpn_channels=16,
                   bev_width_bins=8, bev_depth_bins=8, bev_height_bins=2, d_model=16, num_heads=2, ffn_dim=32,
                   num_slots=3, decoder_channels=[8, 8], attention_backend="cpu")


@pytest.fixture(scope="module")
def movi_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("eoras_movi")
    p = argparse.ArgumentParser()
    video.add_arguments(p)
    video.generate(out, 3, 7, p.parse_args(["--frames", "6", "--width", "96", "--height", "64",
                                             "--split-held-out", "0.34"]))
    return out / "movi"


def _task_config(root, **extra):
    return {"data_root": str(root), "model": dict(MICRO_MODEL), "seq_len": 4, "eval_window": 2, **extra}


def test_crops_targets_and_intrinsics_follow_the_metadata(movi_root):
    task = EoRaSTask(_task_config(movi_root))
    split = MoviSplit(movi_root / "train")
    assert len(task.tracks) == sum(1 for v, o in split.instance_list if len(split.track(v, o).frame_indices))
    cut = task.tracks[0]
    video_name, obj = cut.name.rsplit("-", 1)
    track = split.track(video_name, int(obj))
    T = len(track.frame_indices)
    M = task.model_config.mask_size
    assert cut.crops.shape == (T, 3, 32, 32) and cut.masks.shape == (T, 2, M, M)
    # the visible box is the middle half of the crop (2x enlargement) unless clipped by the image
    assert (cut.boxes[:, 0] <= torch.from_numpy(track.boxes_xyxy[:, 0]) + 1e-3).all()
    # K follows the stored (Kubric) K: equal to the generator's pixel K, then cropped
    meta = split.video_metadata(video_name)
    K_pix = torch.tensor(meta.camera["K_pixels"], dtype=torch.float32)
    assert torch.allclose(cut.K, crop_intrinsics(K_pix, cut.boxes, 32), atol=1e-3)
    # visible target inside the amodal target (soft masks, a little slack for interpolation)
    vis, amo = cut.masks[:, 1].float(), cut.masks[:, 0].float()
    assert (vis <= amo + 2).float().mean() > 0.99
    fov = EoRaSTask(_task_config(movi_root, hfov_deg=60.0))
    assert torch.allclose(fov.tracks[0].K, crop_intrinsics(intrinsics_from_fov(96, 64, 60.0), cut.boxes, 32))


def test_batches_are_deterministic_and_flips_mirror_K(movi_root):
    task = build_task("eoras", _task_config(movi_root, hflip_prob=0.0))
    a = task.make_batch(np.random.default_rng([0, 0, 3]), 2)
    b = task.make_batch(np.random.default_rng([0, 0, 3]), 2)
    assert isinstance(a, EoRaSBatch) and a.crops.shape == (2, 4, 3, 32, 32) and a.K.shape == (2, 4, 3, 3)
    assert torch.equal(a.crops, b.crops) and torch.equal(a.targets.amodal, b.targets.amodal)
    K = torch.tensor([[30.0, 0.0, 10.0], [0.0, 30.0, 16.0], [0.0, 0.0, 1.0]])
    X = torch.tensor([0.3, 0.1, 2.0])
    u = (K @ X)[0] / X[2]
    uf = (flip_K(K, 32) @ X)[0] / X[2]
    assert torch.isclose(uf, 32 - u)
    with pytest.raises(ConfigError, match="unknown eval modes"):
        build_task("eoras", _task_config(movi_root, eval_mode="bidirectional"))
    with pytest.raises(ConfigError, match="unknown key"):
        build_task("eoras", _task_config(movi_root, model={"slots": 3}))


def test_training_run_loss_falls_evaluates_three_modes_and_exports(movi_root, tmp_path, capsys):
    config = {"task": "eoras", "task_config": _task_config(movi_root), "out_dir": str(tmp_path / "run"), "seed": 0,
              "max_steps": 30, "batch_size": 2, "optimizer": {"name": "adamw", "lr": 3.0e-3, "weight_decay": 5.0e-4},
              "schedule": {"name": "cosine", "warmup_steps": 2}, "checkpoint_every": 1000, "eval_every": 0,
              "log_every": 10, "export": "eoras.safetensors", "device": "cpu"}
    path = tmp_path / "eoras.yaml"
    path.write_text(yaml.safe_dump(config))
    assert amodal_main(["train", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    evaluation = summary["last_eval"]
    for mode in ("offline", "causal", "windowed"):
        assert 0.0 <= evaluation[f"{mode}_miou_full"] <= 1.0
    assert evaluation["score"] == evaluation["offline_miou_full"]
    assert 0.0 < evaluation["baseline_visible_miou_full"] <= 1.0
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [10, 20, 30]
    assert logged[-1]["loss"] < logged[0]["loss"]
    loaded = load_eoras(tmp_path / "run" / "eoras.safetensors")
    assert loaded.config.input_size == 32 and loaded.metadata["model"] == "eoras"
    assert loaded.metadata["score"] == pytest.approx(evaluation["score"])
