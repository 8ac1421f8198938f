"""``amodal bench cluster --part latency`` runs end to end on a short run and writes its JSON and plot (no timing
asserted; the density and failover parts start Ray clusters and are what tests/engine/cluster covers)."""
from __future__ import annotations

import json

import pytest

from amodal.bench import cluster
from amodal.engine.cluster.nats_server import nats_server_binary

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(nats_server_binary() is None,
                                 reason="nats-server is not installed (apt-get install nats-server; CI installs it)")]


def test_cluster_bench_latency_compares_zeromq_and_jetstream(tmp_path):
    argv = ["--part", "latency", "--seconds", "2", "--streams", "1", "--fps", "20", "--out", str(tmp_path)]
    assert cluster.main(argv) == 0
    rows = json.loads((tmp_path / "cluster.json").read_text())["latency"]
    assert [r["transport"] for r in rows] == ["zeromq", "jetstream R1", "zeromq", "jetstream R3"]
    for reference, jetstream in (rows[0:2], rows[2:4]):
        assert reference["frames"] == jetstream["frames"] > 0  # the same frames through both transports
        assert jetstream["end_to_end"]["p50_ms"] > 0 and jetstream["transport_only"]["n"] == jetstream["frames"]
    assert (tmp_path / "cluster.png").stat().st_size > 0
