"""``amodal bench cluster [--part latency|density|failover]``: the cluster's transport, density and failover on one
machine, each against its reference in the same run.

* ``latency``: one engine publishes the same results through ZeroMQ (the single-machine default, the reference)
  and JetStream at once; a ``Subscriber`` and a ``NatsSubscriber`` read them side by side.  Per transport: capture →
  subscriber (end to end) and publish → subscriber (the transport alone) p50/p99, for JetStream on one nats-server
  (replicas 1) and on a three-server cluster (replicas 3, each write acknowledged by a majority).
* ``density``: a one-worker-node Ray cluster runs 1, 2, 4 … paced synthetic streams (one worker actor each, the
  ``identity`` pipeline); the frames per second each stream delivers to JetStream against its nominal rate.  The
  largest count still delivering ≥ 95 % is the streams-per-node figure for that node size (here: ``--node-cpus``).
* ``failover``: four streams over two worker nodes, one node killed; per moved stream the time from the kill to its
  first frame stored by its new node, with Ray's default node-death detection and with a faster one.

Writes ``cluster.json`` and ``cluster.png`` (device, versions, commit).
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from amodal.bench.common import new_figure, save_figure, write_results
from amodal.bench.latency import percentiles

PARTS = ("latency", "density", "failover")
FAST_DETECTION = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                  "health_check_failure_threshold": 3}


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _read_frames(sub, stream_ids: set[str], deadline_s: float, out: list) -> None:
    """Append (publish_time_ns, capture_time_ns, received_ns) per frame until every stream ended."""
    from amodal.schema import FrameMessage, StatusMessage
    from amodal.types import StreamState

    ended: set[str] = set()
    deadline = time.monotonic() + deadline_s
    while ended != stream_ids and time.monotonic() < deadline:
        message = sub.recv(0.5)
        now = time.time_ns()
        if isinstance(message, FrameMessage):
            out.append((message.publish_time_ns, message.result.capture_time_ns, now))
        elif isinstance(message, StatusMessage) and message.event.state == StreamState.ENDED:
            ended.add(message.event.stream_id)


# ------------------------------------------------------------------------------------------------- latency
def bench_latency(seconds: float, fps: float, streams: int, warmup_s: float = 1.0) -> list[dict]:
    from amodal import NatsSubscriber, Subscriber
    from amodal.engine.cluster import JetStreamSettings
    from amodal.engine.cluster.jetstream import JetStreamSink
    from amodal.engine.cluster.nats_server import NatsServers
    from amodal.engine.config import EngineConfig
    from amodal.engine.engine import Engine
    from amodal.streams.base import SourceConfig

    rows = []
    for servers_n, replicas in ((1, 1), (3, 3)):
        with tempfile.TemporaryDirectory() as tmp, NatsServers.start(servers_n, tmp) as nats:
            publish = _free_endpoint()
            ids = {f"cam{i}" for i in range(streams)}
            sources = tuple(SourceConfig(uri=f"synthetic://shapes?w=320&h=240&fps={fps}&objects=4&seed={i}"
                                         f"&seconds={seconds}", stream_id=f"cam{i}") for i in range(streams))
            sink = JetStreamSink(JetStreamSettings(servers=tuple(nats.urls), replicas=replicas, max_age_s=600), "bench")
            config = EngineConfig(sources=sources, publish=publish, wait_for_subscribers=1)
            got: dict[str, list] = {"zeromq": [], "jetstream": []}
            zmq_sub = Subscriber(publish)
            engine = Engine(config, sinks=[sink])
            threads = [threading.Thread(target=_read_frames, args=(zmq_sub, ids, seconds + 60, got["zeromq"]))]
            engine.start()
            nats_sub = NatsSubscriber(nats.urls, deliver="all")
            threads.append(threading.Thread(target=_read_frames, args=(nats_sub, ids, seconds + 60, got["jetstream"])))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            engine.stop()
            zmq_sub.close()
            nats_sub.close()
        for transport, samples in got.items():
            start = min(c for _, c, _ in samples) + warmup_s * 1e9
            kept = [(p, c, r) for p, c, r in samples if c >= start]
            rows.append({"transport": transport if transport == "zeromq" else f"jetstream R{replicas}",
                         "servers": servers_n if transport == "jetstream" else 0, "frames": len(kept),
                         "end_to_end": percentiles([(r - c) / 1e6 for _, c, r in kept]),
                         "transport_only": percentiles([(r - p) / 1e6 for p, _, r in kept])})
        print(rows[-2], rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ clusters
class _LocalCluster:
    """A Ray head (no stream slots) and worker nodes with ``{engine: slots, <name>: 1}``; this process drives."""

    def __init__(self, names, cpus_per_node: int, system_config=None) -> None:
        import ray
        from ray.cluster_utils import Cluster

        head = {"num_cpus": 1, "include_dashboard": False}
        if system_config:
            head["_system_config"] = system_config
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.nodes = {n: self.cluster.add_node(num_cpus=cpus_per_node, resources={"engine": 64, n: 1}) for n in names}
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, namespace="amodal", log_to_driver=False)

    def close(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def _site(nats_urls, uris: dict[str, str], replicas: int):
    from amodal.engine.cluster import SiteConfig

    return SiteConfig.from_dict({"cluster": {"jetstream": {"servers": list(nats_urls), "replicas": replicas},
                                             "num_cpus": 0, "resources": {"engine": 1}},
                                 "sources": [{"uri": u, "stream_id": s} for s, u in uris.items()]})


def bench_density(counts: list[int], seconds: float, fps: float, node_cpus: int, warmup_s: float = 3.0) -> list[dict]:
    from amodal.engine.cluster.jetstream import JetStreamSink  # noqa: F401 - imported here so failures show early
    from amodal.engine.cluster.nats_server import NatsServers
    from amodal.engine.cluster.placement import place, stop_streams, stream_states

    rows = []
    with tempfile.TemporaryDirectory() as tmp, NatsServers.start(1, tmp) as nats:
        cluster = _LocalCluster(["node_a"], node_cpus)
        try:
            for count in counts:
                uris = {f"d{count}-{i}": f"synthetic://shapes?w=320&h=240&fps={fps}&objects=4&seed={i}"
                        for i in range(count)}
                t0 = time.monotonic()
                handles = place(_site(nats.urls, uris, 1), detached=False, ready_timeout_s=300)
                start_s = time.monotonic() - t0
                time.sleep(warmup_s)  # first connections, sequence look-ups, the first batches
                first = {sid: s["frames_published"] for sid, s in stream_states(handles, 30).items()}
                time.sleep(seconds)
                last = {sid: s["frames_published"] for sid, s in stream_states(handles, 30).items()}
                stop_streams(handles)
                per_stream = [(last[s] - first[s]) / seconds for s in uris]
                rows.append({"streams": count, "nominal_fps": fps, "start_all_s": round(start_s, 1),
                             "delivered_fps_mean": round(float(np.mean(per_stream)), 2),
                             "delivered_fps_min": round(float(np.min(per_stream)), 2),
                             "delivered_ratio_min": round(float(np.min(per_stream)) / fps, 3)})
                print(rows[-1], flush=True)
        finally:
            cluster.close()
    return rows


def bench_failover(system_config, label: str, fps: float, timeout_s: float = 180.0) -> dict:
    from amodal import NatsSubscriber
    from amodal.engine.cluster.nats_server import NatsServers
    from amodal.engine.cluster.placement import place, stop_streams, stream_states, wait_moved
    from amodal.schema import FrameMessage, StatusMessage
    from amodal.types import StreamState

    with tempfile.TemporaryDirectory() as tmp, NatsServers.start(3, tmp) as nats:
        cluster = _LocalCluster(["node_a", "node_b"], 1, system_config)
        try:
            uris = {f"f{i}": f"synthetic://shapes?w=160&h=120&fps={fps}&objects=2&seed={i}" for i in range(4)}
            handles = place(_site(nats.urls, uris, 3), detached=False, ready_timeout_s=300)
            dead = cluster.nodes["node_a"].node_id
            moved = [sid for sid, s in stream_states(handles).items() if s["node_id"] == dead]
            with NatsSubscriber(nats.urls, deliver="new") as sub:
                time.sleep(2.0)
                killed_ns = time.time_ns()
                cluster.cluster.remove_node(cluster.nodes["node_a"], allow_graceful=False)
                wait_moved(handles, dead, timeout_s)
                moved_at: dict[str, int] = {}
                first_frame: dict[str, int] = {}
                deadline = time.monotonic() + timeout_s
                while len(first_frame) < len(moved) and time.monotonic() < deadline:
                    m = sub.recv(0.5)
                    if isinstance(m, StatusMessage) and m.event.state == StreamState.RECONNECTING \
                            and (m.event.reason or "").startswith("moved"):
                        moved_at[m.event.stream_id] = m.event.time_ns
                    elif isinstance(m, FrameMessage) and m.result.stream_id in moved_at \
                            and m.result.stream_id not in first_frame:
                        first_frame[m.result.stream_id] = m.publish_time_ns
                lost = dict(sub.stats.lost)
            stop_streams(handles)
        finally:
            cluster.close()
    result = {"detection": label, "system_config": system_config or "ray defaults", "moved_streams": moved,
              "kill_to_moved_event_s": {s: round((moved_at[s] - killed_ns) / 1e9, 2) for s in moved_at},
              "kill_to_first_frame_s": {s: round((first_frame[s] - killed_ns) / 1e9, 2) for s in first_frame},
              "lost_messages": lost}
    print(result, flush=True)
    return result


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="amodal bench cluster", description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=PARTS, action="append", help="default: all")
    p.add_argument("--out", type=Path, default=Path("out/bench/cluster"))
    p.add_argument("--seconds", type=float, default=20.0, help="latency: length of each run")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--streams", type=int, default=2, help="latency: streams of the engine")
    p.add_argument("--density-counts", default="1,2,4,6")
    p.add_argument("--density-seconds", type=float, default=10.0)
    p.add_argument("--node-cpus", type=int, default=2, help="density: CPUs of the worker node")
    args = p.parse_args(argv)
    parts = args.part or list(PARTS)
    results: dict = {}
    if "latency" in parts:
        results["latency"] = bench_latency(args.seconds, args.fps, args.streams)
    if "density" in parts:
        counts = [int(c) for c in args.density_counts.split(",")]
        results["density"] = bench_density(counts, args.density_seconds, args.fps, args.node_cpus)
    if "failover" in parts:
        results["failover"] = [bench_failover(None, "ray defaults", 10.0),
                               bench_failover(FAST_DETECTION, "health check 0.5 s x 3", 10.0)]
    path = write_results(args.out, "cluster", results)
    plot(results, args.out, args.node_cpus)
    print(f"wrote {path}")
    return 0


def plot(results: dict, out: Path, node_cpus: int) -> Path:
    """``cluster.png`` of a results dict (a run's, or one read back from ``cluster.json``)."""
    fig, axes = new_figure(ncols=3, width_in=4.5)
    if "latency" in results:
        rows = results["latency"]
        x = np.arange(len(rows))
        axes[0][0].bar(x - 0.2, [r["end_to_end"]["p50_ms"] for r in rows], 0.4, label="p50")
        axes[0][0].bar(x + 0.2, [r["end_to_end"]["p99_ms"] for r in rows], 0.4, label="p99")
        # each JetStream run has its own ZeroMQ reference (same engine, same payloads, read side by side)
        labels = [f"zeromq\n(ref. of {rows[i + 1]['transport']})" if r["transport"] == "zeromq" and i + 1 < len(rows)
                  else r["transport"] for i, r in enumerate(rows)]
        axes[0][0].set_xticks(x, labels, fontsize=7)
        axes[0][0].set_ylabel("capture → subscriber, ms")
        axes[0][0].legend()
    if "density" in results:
        rows = results["density"]
        axes[0][1].plot([r["streams"] for r in rows], [r["delivered_ratio_min"] for r in rows], "o-")
        axes[0][1].axhline(0.95, color="grey", ls=":")
        axes[0][1].set_xlabel(f"streams on one {node_cpus}-CPU node")
        axes[0][1].set_ylabel("worst stream: delivered / nominal fps")
    if "failover" in results:
        for i, run in enumerate(results["failover"]):
            values = list(run["kill_to_first_frame_s"].values())
            axes[0][2].scatter([i] * len(values), values)
        axes[0][2].set_xticks(range(len(results["failover"])), [r["detection"] for r in results["failover"]],
                              fontsize=7)
        axes[0][2].set_ylabel("kill → first frame on the new node, s")
    return save_figure(fig, out, "cluster")
