"""TrainConfig validation (errors name the key), the lr schedule, AMP resolution, task resolution."""
from __future__ import annotations

import pytest
import torch

from amodal.errors import ConfigError
from amodal.training.tasks import TASKS, resolve_task
from amodal.training.trainer import ScheduleConfig, load_train_config, train_config_from_dict
from amodal.training.trainer.schedule import lr_factor
from amodal.training.trainer.trainer import resolve_amp
from tests.training.trainer.trainer_tiny_task import TASK_PATH, TinyTask, tiny_config


@pytest.mark.parametrize(("change", "key"), [
    ({"max_step": 10}, "max_step"),
    ({"optimizer": {"name": "sgd", "lrr": 0.1}}, "optimizer.lrr"),
    ({"optimizer": {"name": "sgd", "lr": -1.0}}, "optimizer.lr"),
    ({"optimizer": {"name": "lamb"}}, "optimizer.name"),
    ({"optimizer": {"name": "adamw", "betas": [0.9]}}, "optimizer.betas"),
    ({"schedule": {"name": "linear"}}, "schedule.name"),
    ({"schedule": {"name": "step", "milestones": [0.5, 30]}}, "schedule.milestones"),
    ({"schedule": {"name": "step", "milestones": [0.8, 0.5]}}, "schedule.milestones"),
    ({"schedule": {"name": "step", "milestones": [400]}}, "schedule.milestones"),
    ({"schedule": {"warmup_steps": 500}}, "schedule.warmup_steps"),
    ({"schedule": {"warmup_factor": 0.0}}, "schedule.warmup_factor"),
    ({"amp": "fp8"}, "amp"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_steps": 2.5}, "max_steps"),
    ({"keep_checkpoints": True}, "keep_checkpoints"),
    ({"grad_clip_norm": 0}, "grad_clip_norm"),
    ({"export": "model.pt"}, "export"),
    ({"export_weights": "last"}, "export_weights"),
    ({"device": "tpu"}, "device"),
    ({"task_config": [1, 2]}, "task_config"),
    ({"log_every": 0}, "log_every"),
    ({"dist_timeout_s": 0}, "dist_timeout_s"),
])
def test_bad_values_name_the_key(tmp_path, change, key):
    raw = tiny_config(tmp_path, max_steps=100)
    raw.update(change)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train_config_from_dict(raw)


def test_missing_required_key(tmp_path):
    raw = tiny_config(tmp_path)
    del raw["batch_size"]
    with pytest.raises(ConfigError, match="batch_size"):
        train_config_from_dict(raw)


def test_yaml_round_trip_and_overrides(tmp_path):
    import yaml

    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", schedule={"name": "step", "milestones": [0.5]})))
    config = load_train_config(path, max_steps=80, out_dir=str(tmp_path / "other"), device=None)
    assert config.max_steps == 80 and config.out_dir == str(tmp_path / "other") and config.device == "cpu"
    assert config.schedule.milestone_steps(80) == (40,)
    assert config.export_path == tmp_path / "other" / "model.safetensors"
    assert train_config_from_dict(config.to_dict()) == config
    path.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="train.yaml"):
        load_train_config(path)


def test_schedule_factors():
    warm_step = ScheduleConfig(name="step", warmup_steps=10, warmup_factor=0.1, milestones=(0.5, 0.75), gamma=0.1)
    f = lr_factor(warm_step, 100)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == 1.0
    assert f(49) == 1.0 and f(50) == pytest.approx(0.1) and f(75) == pytest.approx(0.01)
    cosine = lr_factor(ScheduleConfig(name="cosine", final_factor=0.1), 100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.55) and cosine(100) == pytest.approx(0.1)
    assert lr_factor(ScheduleConfig(name="constant"), 100)(99) == 1.0


def test_amp_resolution():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("none", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16  # only when asked explicitly
    with pytest.raises(ConfigError, match="fp16"):
        resolve_amp("fp16", cpu)


def test_task_resolution():
    assert TASKS["cmasktrack"] == "amodal.training.tasks.cmasktrack:CMaskTrackTask"
    assert resolve_task(TASK_PATH) is TinyTask
    with pytest.raises(ConfigError, match="unknown task 'nope'.*cmasktrack"):
        resolve_task("nope")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_task("amodal.training.no_such_module:Task")
    with pytest.raises(ConfigError, match="has no class"):
        resolve_task("amodal.training.task:NoSuchTask")
