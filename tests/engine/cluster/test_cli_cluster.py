"""``amodal cluster up / run / status / down`` and ``amodal subscribe nats://`` as a user runs them (each command a
process of its own): a Ray head and a nats-server on loopback, one synthetic stream placed and read back."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from amodal.engine.cluster.nats_server import free_ports, nats_server_binary

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(nats_server_binary() is None,
                                 reason="nats-server is not installed (apt-get install nats-server; CI installs it)")]


def _amodal(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "amodal.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_run_status_subscribe_down(tmp_path):
    ray_port, nats_port = free_ports(2)
    state = ["--state-dir", str(tmp_path / "state")]
    site = tmp_path / "site.yaml"
    site.write_text(
        "cluster:\n"
        f"  address: 127.0.0.1:{ray_port}\n"
        f"  jetstream: {{servers: [nats://127.0.0.1:{nats_port}], max_age_s: 600}}\n"
        "  num_cpus: 0.5\n"
        "sources:\n"
        "  - {uri: 'synthetic://shapes?w=64&h=48&fps=20&objects=1&seconds=1.5', stream_id: lobby,\n"
        "     resources: {CPU: 0.5}}\n")
    up = _amodal("cluster", *state, "up", f"--port={ray_port}", "--num-cpus=1", f"--nats-port={nats_port}")
    assert up.returncode == 0, up.stderr[-2000:]
    started = json.loads((tmp_path / "state" / "state.json").read_text())
    try:
        assert _alive(started["ray_pid"]) and all(_alive(p) for p in started["nats_pids"])
        again = _amodal("cluster", *state, "up", f"--port={ray_port}")
        assert again.returncode == 2 and "already holds" in again.stderr
        run = _amodal("cluster", *state, "run", "--config", str(site), "--follow")
        assert run.returncode == 0, run.stderr[-2000:]
        assert "lobby" in run.stdout and "ended" in run.stdout
        status = _amodal("cluster", *state, "status", "--json")
        assert status.returncode == 0, status.stderr[-2000:]
        listing = json.loads(status.stdout)
        assert [n["alive"] for n in listing["nodes"]] == [True]
        assert listing["streams"]["lobby"]["state"] == "ended"
        assert listing["streams"]["lobby"]["frames_published"] == 30
        read = _amodal("subscribe", f"nats://127.0.0.1:{nats_port}", "--durable", "cli-test", "--json",
                       "--timeout", "2")
        assert read.returncode == 0, read.stderr[-2000:]
        messages = [json.loads(line) for line in read.stdout.splitlines()]
        assert [m["seq"] for m in messages if m["type"] == "frame"] == list(range(30))
        assert [m["state"] for m in messages if m["type"] == "status"][-1] == "ended"
    finally:
        down = _amodal("cluster", *state, "down")
    assert down.returncode == 0, down.stderr[-2000:]
    assert not _alive(started["ray_pid"]) and not any(_alive(p) for p in started["nats_pids"])


def test_commands_name_what_is_missing(tmp_path):
    from amodal.cli_cluster import main as cluster_main
    from amodal.errors import ConfigError, EngineError

    (closed,) = free_ports(1)
    with pytest.raises(EngineError, match=f"no Ray cluster at 127.0.0.1:{closed}"):
        cluster_main(["status", "--state-dir", str(tmp_path), "--address", f"127.0.0.1:{closed}"])
    with pytest.raises(ConfigError, match="site config not found"):
        cluster_main(["run", "--config", str(tmp_path / "missing.yaml")])
