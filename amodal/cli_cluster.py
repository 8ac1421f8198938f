"""``amodal cluster up | run | status | stop | down``: streams on a Ray cluster, results in NATS JetStream.

  amodal cluster up [--address HEAD:6379] [--nats-servers 3] [--nats-port 4222] [--nats-routes nats-route://...]
      start this machine's part: a Ray head (or a node joining ``--address``) and JetStream nats-server(s)
  amodal cluster run --config site.yaml [--follow]
      place every source of the site file on a node with the resources it asks for (README, "Cluster")
  amodal cluster status [--json]        nodes, streams, where each runs and its state
  amodal cluster stop [--stream ID]     stop streams (all by default); their queued results are stored first
  amodal cluster down                   stop the streams, then the nats-servers and Ray processes ``up`` started here

``up`` keeps what it started in ``--state-dir`` (``state.json``, the nats-server configs, logs and JetStream
store); the other commands find the Ray cluster there (or at ``--address``).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from amodal.errors import ConfigError, EngineError

DEFAULT_STATE_DIR = Path(os.environ.get("AMODAL_CLUSTER_DIR", Path.home() / ".amodal" / "cluster"))


def _ray_command() -> list[str]:
    """The ``ray`` CLI of this Python environment."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


def _read_state(state_dir: Path) -> dict:
    path = state_dir / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(state_dir: Path, state: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps(state, indent=2))


def _connect(args, configured: str | None = None) -> None:
    """Join the Ray cluster: ``--address``, else the site file's ``cluster.address`` (unless ``auto``), else the one
    ``up`` started (``--state-dir``), else Ray's ``auto``."""
    address = (args.address or (configured if configured not in (None, "auto") else None)
               or _read_state(Path(args.state_dir)).get("ray_address") or "auto")
    if address != "auto":  # Ray retries an unreachable address for minutes; say so at once instead
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5.0).close()
        except (OSError, ValueError) as exc:
            raise EngineError(f"no Ray cluster at {address}: {exc} (start one with `amodal cluster up`)") from exc
    import ray

    try:
        ray.init(address=address, namespace="amodal", log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError) as exc:
        raise EngineError(f"no Ray cluster at {address}: {exc} (start one with `amodal cluster up`)") from exc


# ------------------------------------------------------------------------------------------------------ up
def _start_ray(command: list[str], state_dir: Path, timeout_s: float) -> int:
    """``ray start ... --block`` as a process of its own session (it outlives this command and takes its Ray
    processes down with it when it gets SIGTERM: ``down`` stops exactly what ``up`` started, never other Ray
    instances of the machine); its pid once Ray reports it started."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "ray.log"
    with open(log_path, "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(command + ["--block"], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while True:
        text = log_path.read_bytes()[offset:].decode(errors="replace")
        if "Ray runtime started" in text:
            return process.pid
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.terminate()
            raise EngineError(f"`ray start` did not start ({'exit ' + str(process.returncode) if process.returncode is not None else 'timeout'}): "
                              f"{text[-800:]}")
        time.sleep(0.2)


def cmd_up(args) -> int:
    from amodal.engine.cluster.nats_server import NatsServers

    state_dir = Path(args.state_dir)
    state = _read_state(state_dir)
    if state.get("nats_pids") or state.get("ray_started"):
        raise ConfigError(f"{state_dir} already holds a started cluster part; `amodal cluster down` first")
    state = {"nats_pids": [], "nats_urls": [], "ray_started": False}
    if not args.no_ray:
        command = _ray_command() + ["start", "--disable-usage-stats", "--include-dashboard=false"]
        if args.address:
            command += [f"--address={args.address}"]
        else:
            command += ["--head", f"--port={args.port}"]
        if args.num_cpus is not None:
            command += [f"--num-cpus={args.num_cpus}"]
        if args.num_gpus is not None:
            command += [f"--num-gpus={args.num_gpus}"]
        if args.resources:
            json.loads(args.resources)  # a clear error before Ray's
            command += [f"--resources={args.resources}"]
        state["ray_pid"] = _start_ray(command, state_dir, args.timeout)
        state["ray_started"] = True
        state["ray_address"] = args.address or f"127.0.0.1:{args.port}"
        print(f"ray: {'joined' if args.address else 'head started at'} {state['ray_address']}")
    if args.nats_servers:
        routes = [r for r in (args.nats_routes or "").split(",") if r]
        ports = list(range(args.nats_port, args.nats_port + args.nats_servers))
        servers = NatsServers.start(args.nats_servers, state_dir / "nats", host=args.nats_host, ports=ports,
                                    extra_routes=routes, detach=True)
        state["nats_pids"] = [p.pid for p in servers.processes]
        state["nats_urls"] = servers.urls
        state["nats_routes"] = [f"nats-route://{s.host}:{s.route_port}" for s in servers.specs if s.route_port]
        print(f"nats: {len(servers.urls)} JetStream server(s) at {','.join(servers.urls)}")
        if state["nats_routes"]:
            print(f"nats: cluster routes (--nats-routes of servers joining): {','.join(state['nats_routes'])}")
    _write_state(state_dir, state)
    return 0


# ----------------------------------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from amodal.engine.cluster import SiteConfig
    from amodal.engine.cluster.placement import place, stream_states

    site = SiteConfig.from_yaml(args.config)
    _connect(args, site.cluster.address)
    handles = place(site, ready_timeout_s=args.timeout)
    states = stream_states(handles)
    for sid, info in states.items():
        print(f"{sid:<20} node {info.get('node_id', '?')[:12]}  {info.get('host', '')}  {info.get('state')}")
    if not args.follow:
        return 0
    last: dict[str, str] = {}
    while True:
        states = stream_states(handles)
        for sid, info in states.items():
            line = f"{info.get('state')} on node {str(info.get('node_id'))[:12]}"
            if last.get(sid) != line:
                print(f"{sid:<20} {line}", flush=True)
                last[sid] = line
        if all(info.get("state") in ("ended", "failed") for info in states.values()):
            return 1 if any(info.get("state") == "failed" for info in states.values()) else 0
        time.sleep(1.0)


# -------------------------------------------------------------------------------------------------- status
def cmd_status(args) -> int:
    from amodal.engine.cluster.placement import nodes, stream_states, workers

    _connect(args)
    listing = {"nodes": nodes(), "streams": stream_states(workers())}
    if args.json:
        print(json.dumps(listing, default=str))
        return 0
    print("nodes:")
    for n in listing["nodes"]:
        resources = ", ".join(f"{k}={v:g}" for k, v in sorted(n["resources"].items()) if not k.startswith("node:"))
        print(f"  {n['node_id'][:12]}  {n['address']:<15} {'alive' if n['alive'] else 'DEAD':<5}  {resources}")
    print("streams:")
    for sid, info in sorted(listing["streams"].items()):
        print(f"  {sid:<20} {info.get('state'):<11} node {str(info.get('node_id'))[:12]}  "
              f"published {info.get('published', '-')}{'  (moved)' if info.get('restarted') else ''}")
    return 0


# ------------------------------------------------------------------------------------------------ stop/down
def cmd_stop(args) -> int:
    from amodal.engine.cluster.placement import stop_streams, workers

    _connect(args)
    handles = workers()
    if args.stream:
        unknown = sorted(set(args.stream) - set(handles))
        if unknown:
            raise ConfigError(f"no such streams {unknown}; placed: {sorted(handles)}")
        handles = {sid: h for sid, h in handles.items() if sid in args.stream}
    for sid in stop_streams(handles):
        print(f"stopped {sid}")
    return 0


def cmd_down(args) -> int:
    from amodal.engine.cluster.nats_server import stop_pid

    state_dir = Path(args.state_dir)
    state = _read_state(state_dir)
    if state.get("ray_started"):
        try:
            args.stream = None
            cmd_stop(args)
        except EngineError as exc:
            print(f"streams: {exc}", file=sys.stderr)
        import ray

        ray.shutdown()
        if state.get("ray_pid"):
            print(f"ray: {'stopped' if stop_pid(state['ray_pid'], timeout_s=60) else 'was not running:'} "
                  f"pid {state['ray_pid']}")
    for pid in state.get("nats_pids", []):
        print(f"nats: {'stopped' if stop_pid(pid) else 'was not running:'} pid {pid}")
    _write_state(state_dir, {})
    return 0


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    state_help = "where `up` keeps what it started"
    address_help = "Ray cluster address HOST:PORT (default: from --state-dir)"
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help=state_help)
    parser.add_argument("--address", default=None, help=address_help)
    common = argparse.ArgumentParser(add_help=False)  # the same options after the subcommand
    common.add_argument("--state-dir", default=argparse.SUPPRESS, help=state_help)
    common.add_argument("--address", default=argparse.SUPPRESS, help=address_help)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", parents=[common],
                        help="start a Ray head (or join --address) and JetStream nats-server(s) here")
    up.add_argument("--port", type=int, default=6379, help="the Ray head's port")
    up.add_argument("--num-cpus", type=int, default=None)
    up.add_argument("--num-gpus", type=int, default=None)
    up.add_argument("--resources", default=None, help='custom resources of this node, JSON: \'{"camera_node": 8}\'')
    up.add_argument("--no-ray", action="store_true", help="only the nats-server(s)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds for Ray to start")
    up.add_argument("--nats-servers", type=int, default=1, help="local nats-server processes (0 = none; 3 for a "
                                                                "replicated JetStream on one machine)")
    up.add_argument("--nats-port", type=int, default=4222, help="client port of the first local nats-server")
    up.add_argument("--nats-host", default="127.0.0.1", help="interface the nats-servers listen on")
    up.add_argument("--nats-routes", default="", help="nats-route://HOST:PORT,... of servers on other machines")
    run = sub.add_parser("run", parents=[common], help="place the sources of a site file on the cluster")
    run.add_argument("--config", required=True, help="site YAML: engine config + cluster: section")
    run.add_argument("--follow", action="store_true", help="print state changes until every stream has ended")
    run.add_argument("--timeout", type=float, default=120.0, help="seconds for every stream to start")
    status = sub.add_parser("status", parents=[common], help="nodes and streams")
    status.add_argument("--json", action="store_true")
    stop = sub.add_parser("stop", parents=[common], help="stop streams")
    stop.add_argument("--stream", action="append", help="this stream only (repeatable)")
    sub.add_parser("down", parents=[common], help="stop streams, nats-servers and Ray started here")
    args = parser.parse_args(argv)
    handler = {"up": cmd_up, "run": cmd_run, "status": cmd_status, "stop": cmd_stop, "down": cmd_down}[args.command]
    return handler(args)
