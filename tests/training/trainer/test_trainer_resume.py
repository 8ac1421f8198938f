"""Exact resume (bitwise on CPU), RNG-state round trip, corrupt and foreign checkpoints."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from amodal.errors import CheckpointError
from amodal.training.trainer import DistContext, HookBase, Trainer, train_config_from_dict
from amodal.training.trainer.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from amodal.training.trainer.metrics_log import read_metrics
from amodal.training.trainer.rng import capture_rng, restore_rng
from tests.training.trainer.trainer_tiny_task import TinyTask, make_batch, one_thread, tiny_config  # noqa: F401 (one_thread: fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Preempted(Exception):
    """Raised by a hook to simulate a job killed mid-run."""


class PreemptAt(HookBase):
    """Kills the run right after step ``step`` (a crash or a pre-empted job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if self.trainer.step == self.step:
            raise Preempted(f"pre-empted at step {self.step}")


def _config(out, **kw):
    # SGD with momentum, step schedule with warm-up, dropout, clipping: every piece of state matters
    raw = dict(max_steps=16, checkpoint_every=8, keep_checkpoints=5, eval_every=5, log_every=4,
               optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1.0e-4},
               schedule={"name": "step", "warmup_steps": 4, "milestones": [0.5, 0.75], "gamma": 0.5},
               task_config={"dropout": 0.3})
    raw.update(kw)
    return train_config_from_dict(tiny_config(out, **raw))


def test_resume_is_bitwise_exact(tmp_path):
    straight = Trainer(_config(tmp_path / "a"), TinyTask({"dropout": 0.3}), CPU)
    straight.train()

    first = Trainer(_config(tmp_path / "b"), TinyTask({"dropout": 0.3}), CPU, extra_hooks=[PreemptAt(11)])
    with pytest.raises(Preempted):
        first.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [8]
    assert not (tmp_path / "b" / "model.safetensors").exists()  # an interrupted run exports nothing
    assert max(r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")) == 10

    resumed = Trainer(_config(tmp_path / "b"), TinyTask({"dropout": 0.3}), CPU)
    resumed.resume(latest_checkpoint(tmp_path / "b"))
    assert resumed.step == 8
    resumed.train()

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    log_b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    # records past the checkpoint (step 10) were dropped on resume and written again, identically
    strip = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in log_a]
    assert strip == [{k: v for k, v in r.items() if k != "samples_per_s"} for r in log_b]


class IndexedTinyTask(TinyTask):
    """Batches seeded per (seed, rank, index): the stream can start at any batch without producing the earlier ones."""

    def __init__(self, config):
        super().__init__(config)
        self.produced = 0

    def train_batches(self, *, batch_size, seed, rank, world_size, start_batch=0):
        index = start_batch
        while True:
            gen = torch.Generator().manual_seed((seed * 1000 + rank) * 1_000_000 + index)
            self.produced += 1
            yield make_batch(gen, batch_size, self.config.image_size, self.config.noise)
            index += 1


def test_resume_with_start_batch_is_exact_and_skips_nothing(tmp_path):
    straight = Trainer(_config(tmp_path / "a"), IndexedTinyTask({"dropout": 0.3}), CPU)
    straight.train()
    first = Trainer(_config(tmp_path / "b"), IndexedTinyTask({"dropout": 0.3}), CPU, extra_hooks=[PreemptAt(11)])
    with pytest.raises(Preempted):
        first.train()
    task = IndexedTinyTask({"dropout": 0.3})
    resumed = Trainer(_config(tmp_path / "b"), task, CPU)
    resumed.resume(latest_checkpoint(tmp_path / "b"))
    resumed.train()
    assert task.produced == 16 - 8
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_resume_without_exact_parts_diverges(tmp_path):
    """The check above can fail: restarting from the checkpoint's weights alone does not reproduce the run."""
    straight = Trainer(_config(tmp_path / "a"), TinyTask({"dropout": 0.3}), CPU)
    straight.train()
    state = load_checkpoint(latest_checkpoint(tmp_path / "a").with_name("step_00000008.pt"))
    naive = Trainer(_config(tmp_path / "c"), TinyTask({"dropout": 0.3}), CPU)
    naive.model.load_state_dict(state["model"])
    naive.step = 8  # optimiser momentum, schedule position and RNG left fresh
    naive.scheduler.last_epoch = 8
    naive.train()
    assert not torch.equal(naive.model.head.weight, straight.model.head.weight)


def test_rng_states_round_trip():
    state = capture_rng(torch.device("cpu"))
    draws = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    restore_rng(state, torch.device("cpu"))
    again = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    assert draws[:4] == again[:4] and torch.equal(draws[4], again[4])
    with pytest.raises(CheckpointError, match="truncated"):
        restore_rng(state[:100], torch.device("cpu"))


@pytest.fixture
def checkpoint(tmp_path):
    Trainer(_config(tmp_path, max_steps=8), TinyTask({"dropout": 0.3}), CPU).train()
    return latest_checkpoint(tmp_path)


def test_truncated_checkpoint_is_a_checkpoint_error(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(checkpoint)
    assert str(checkpoint) in str(err.value)
    trainer = Trainer(_config(checkpoint.parent.parent / "other"), TinyTask({"dropout": 0.3}), CPU)
    with pytest.raises(CheckpointError, match="step_00000008.pt"):
        trainer.resume(checkpoint)


def test_garbage_and_foreign_files_are_checkpoint_errors(tmp_path, checkpoint):
    garbage = tmp_path / "step_00000001.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage)
    weights_only_dict = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, weights_only_dict)
    with pytest.raises(CheckpointError, match="not an amodal training checkpoint"):
        load_checkpoint(weights_only_dict)


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


def test_loading_never_unpickles_code(tmp_path):
    evil = tmp_path / "step_00000002.pt"
    torch.save({"format": "amodal-train-checkpoint/1", "payload": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(evil)
    assert _Payload.ran is False
