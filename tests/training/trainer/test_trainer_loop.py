"""One real training run of the tiny task: loss, metrics log, evaluation cadence, rotation, export."""
from __future__ import annotations

import math

import pytest
import torch

from amodal.models.weights import load_state_strict, load_weights
from amodal.training.trainer import DistContext, Trainer, train_config_from_dict
from amodal.training.trainer.checkpoint import list_checkpoints
from amodal.training.trainer.metrics_log import read_metrics
from amodal.training.trainer.schedule import lr_factor
from tests.training.trainer.trainer_tiny_task import TinyTask, make_batch, one_thread, tiny_config  # noqa: F401 (one_thread: fixture)

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("loop")
    config = train_config_from_dict(tiny_config(out, max_steps=60, checkpoint_every=15))
    trainer = Trainer(config, TinyTask({}), CPU)
    summary = trainer.train()
    torch.set_num_threads(threads)
    return trainer, summary, read_metrics(out / "metrics.jsonl")


def test_loss_falls_and_model_learns(run):
    _, summary, records = run
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[0] > 0.9  # about ln(3) at the start
    assert losses[-1] < 0.5 * losses[0]
    assert summary.completed and summary.steps == 60
    assert summary.last_eval["accuracy"] >= 0.8


def test_metrics_log_records(run):
    trainer, _, records = run
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [10, 20, 30, 40, 50, 60]
    factor = lr_factor(trainer.config.schedule, 60)
    for r in train:
        assert set(r) == {"step", "loss", "losses", "lr", "samples_per_s", "grad_norm", "world_size"}
        assert set(r["losses"]) == {"loss_cls"} and r["loss"] == pytest.approx(r["losses"]["loss_cls"])
        assert r["lr"] == pytest.approx(0.01 * factor(r["step"] - 1))
        assert r["samples_per_s"] > 0 and r["world_size"] == 1 and math.isfinite(r["grad_norm"])


def test_eval_every_and_at_the_end_once(run):
    trainer, summary, records = run
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [20, 40, 60]  # the end coincides with eval_every: no second evaluation
    best = max(evals, key=lambda r: r["eval"]["score"])
    assert summary.best_score == best["eval"]["score"] == evals[-1]["best_score"]
    assert trainer.best_step == evals[-1]["best_step"]


def test_eval_off_grid_end_and_best_export(tmp_path):
    config = train_config_from_dict(tiny_config(tmp_path, max_steps=25, eval_every=10, checkpoint_every=100,
                                                export_weights="best", export="best_model.safetensors"))
    summary = Trainer(config, TinyTask({}), CPU).train()
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval" in r]
    assert [r["step"] for r in evals] == [10, 20, 25]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [25]  # the final checkpoint even off the cadence
    _, meta = load_weights(tmp_path / "best_model.safetensors")
    assert meta["steps"] == summary.best_step and meta["score"] == summary.best_score


def test_checkpoint_rotation_keeps_newest(run):
    trainer, _, _ = run
    assert [s for s, _ in list_checkpoints(trainer.out_dir)] == [45, 60]
    assert not list((trainer.out_dir / "checkpoints").glob("*.tmp"))


def test_export_round_trip(run):
    trainer, summary, _ = run
    state, meta = load_weights(trainer.config.export_path)
    assert summary.export_path == trainer.config.export_path
    assert meta["classes"] == ["hbar", "vbar", "square"] and meta["input_size"] == [12, 12]
    assert meta["metric"] == "accuracy" and meta["score"] == summary.last_eval["score"]
    assert meta["steps"] == 60 and meta["train_config"] == trainer.config.to_dict()
    assert isinstance(meta["commit"], str) and meta["commit"]
    fresh = TinyTask({}).build_model()
    load_state_strict(fresh, state, trainer.config.export_path)
    images, _ = make_batch(torch.Generator().manual_seed(9), 16, 12, 0.3)
    trainer.model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), trainer.model(images))


def test_bf16_autocast_on_cpu_when_asked(tmp_path):
    config = train_config_from_dict(tiny_config(tmp_path, max_steps=6, amp="bf16", eval_every=0, log_every=3))
    trainer = Trainer(config, TinyTask({}), CPU)
    assert trainer.amp_dtype == torch.bfloat16
    summary = trainer.train()
    assert summary.completed and all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_cuda_mixed_precision_and_resume(tmp_path, amp):
    cuda = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    config = train_config_from_dict(tiny_config(tmp_path, max_steps=20, amp=amp, device="cuda", checkpoint_every=10))
    trainer = Trainer(config, TinyTask({}), cuda)
    assert trainer.amp_dtype == (torch.bfloat16 if amp == "auto" else torch.float16)
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    summary = trainer.train()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert summary.completed and losses[-1] < losses[0]
    resumed = Trainer(train_config_from_dict(tiny_config(tmp_path, max_steps=30, amp=amp, device="cuda")), TinyTask({}), cuda)
    resumed.resume(tmp_path / "checkpoints" / "step_00000010.pt")
    assert resumed.train().steps == 30
