"""``amodal train`` end to end (in process) and a real two-process torchrun/gloo run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from amodal.cli import main as amodal_main
from amodal.models.weights import load_weights
from amodal.training.trainer.checkpoint import list_checkpoints, load_checkpoint
from amodal.training.trainer.metrics_log import read_metrics
from tests.training.trainer.trainer_tiny_task import one_thread, tiny_config  # noqa: F401 (one_thread: fixture)

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("one_thread")


def _write(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "from_yaml", **kw)))
    return path


def test_cli_train_then_resume(tmp_path, capsys):
    config = _write(tmp_path, max_steps=30)
    out = tmp_path / "run"
    assert amodal_main(["train", str(config), "--out", str(out), "--max-steps", "12"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 12 and summary["export"] == str(out / "model.safetensors")
    _, meta = load_weights(out / "model.safetensors")
    assert meta["steps"] == 12 and meta["score"] == summary["last_eval"]["score"]
    assert not (tmp_path / "from_yaml").exists()  # --out replaced out_dir

    assert amodal_main(["train", str(config), "--out", str(out), "--max-steps", "12"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err

    assert amodal_main(["train", str(config), "--out", str(out), "--max-steps", "20", "--resume"]) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == [10, 12, 20]
    assert load_weights(out / "model.safetensors")[1]["steps"] == 20


def test_cli_reports_config_errors(tmp_path, capsys):
    config = _write(tmp_path, optimizer={"name": "sgd", "lr": 0})
    assert amodal_main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr" in err and "train.yaml" in err
    assert amodal_main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_truncated_checkpoint_on_resume(tmp_path, capsys):
    config = _write(tmp_path, max_steps=10)
    out = tmp_path / "run"
    assert amodal_main(["train", str(config), "--out", str(out)]) == 0
    (_, last), = list_checkpoints(out)
    last.write_bytes(last.read_bytes()[:1000])
    assert amodal_main(["train", str(config), "--out", str(out), "--max-steps", "20", "--resume"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def _torchrun(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "amodal.training.cli", str(config), "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    config = _write(tmp_path, max_steps=12, checkpoint_every=6, log_every=3, eval_every=6, batch_size=16,
                    task_config={"dropout": 0.3})
    out = tmp_path / "ddp"
    return config, out, _torchrun(config, out)


def test_torchrun_two_ranks_gloo(ddp_run):
    _, out, proc = ddp_run
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1  # one summary: rank 0's
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [3, 6, 9, 12]  # rank 1 wrote nothing
    assert [r["step"] for r in records if "eval" in r] == [6, 12]
    assert all(r["world_size"] == 2 for r in records if "loss" in r)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "metrics.jsonl", "model.safetensors"]
    assert [s for s, _ in list_checkpoints(out)] == [6, 12]
    state = load_checkpoint(out / "checkpoints" / "step_00000012.pt")
    assert state["rng"].shape[0] == 2 and not torch.equal(state["rng"][0], state["rng"][1])  # both ranks' RNGs
    assert load_weights(out / "model.safetensors")[1]["train_config"]["batch_size"] == 16


@pytest.mark.slow
def test_torchrun_resume_is_exact(ddp_run, tmp_path):
    """Both ranks resume from step 6, each with its own RNG row: the same final weights, bit for bit."""
    config, out, _ = ddp_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    (again / "checkpoints" / "step_00000012.pt").unlink()
    (again / "model.safetensors").unlink()
    _torchrun(config, again, "--resume")
    straight, _ = load_weights(out / "model.safetensors")
    resumed, _ = load_weights(again / "model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
