"""JetStream-enabled ``nats-server`` processes: one, or several forming a cluster (routes between them).

``NatsServers.start(count, ...)`` writes one config file per server (``server_name``, ``jetstream`` with its own
``store_dir``, and with several servers a ``cluster`` block whose ``routes`` name every other server), starts the
processes, and waits until each answers its monitoring endpoint's ``/healthz?js-enabled-only=true``.  A JetStream
cluster then elects its meta leader by itself (a few seconds); ``JetStreamSink`` and ``NatsSubscriber`` retry their
first stream call until it has.  We run the Debian ``nats-server`` package as it is: no broker code of our own.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from amodal.errors import EngineError

CLUSTER_NAME = "amodal"


class NatsServerError(EngineError):
    """A ``nats-server`` could not be found, configured or started."""


def nats_server_binary() -> str | None:
    """The ``nats-server`` executable on PATH (or /usr/sbin, where Debian puts it), else None."""
    return shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free right now on ``host``."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclasses.dataclass(frozen=True)
class NatsServerSpec:
    """One server: client ``port``, cluster ``route_port`` (0 = no cluster), monitoring ``http_port``."""

    name: str
    host: str
    port: int
    route_port: int
    http_port: int
    store_dir: str

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"


def server_config(spec: NatsServerSpec, routes: list[str], max_store_bytes: int | None = None) -> str:
    """The config file text of one server (nats-server's own format; JSON values are valid in it)."""
    jetstream = {"store_dir": spec.store_dir}
    if max_store_bytes is not None:
        jetstream["max_file_store"] = int(max_store_bytes)
    lines = [f"server_name: {json.dumps(spec.name)}", f"host: {json.dumps(spec.host)}", f"port: {spec.port}",
             f"http_port: {spec.http_port}", f"jetstream: {json.dumps(jetstream)}"]
    if spec.route_port:
        cluster = {"name": CLUSTER_NAME, "listen": f"{spec.host}:{spec.route_port}", "routes": routes}
        lines.append(f"cluster: {json.dumps(cluster)}")
    return "\n".join(lines) + "\n"


class NatsServers:
    """Started ``nats-server`` processes; ``stop()`` (or the context manager) ends them."""

    def __init__(self, specs: list[NatsServerSpec], processes: list[subprocess.Popen], config_dir: Path) -> None:
        self.specs, self.processes, self.config_dir = specs, processes, config_dir

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.specs]

    @classmethod
    def start(cls, count: int, workdir: str | Path, *, host: str = "127.0.0.1", ports: list[int] | None = None,
              extra_routes: list[str] = (), timeout_s: float = 20.0, max_store_bytes: int | None = None,
              detach: bool = False) -> "NatsServers":
        """Start ``count`` servers whose stores and configs live under ``workdir``; ``ports``: their client ports
        (default: free ones); ``extra_routes``: routes to servers elsewhere (joining a cluster); ``detach``: the
        servers outlive this process (``amodal cluster up``)."""
        binary = nats_server_binary()
        if binary is None:
            raise NatsServerError("nats-server is not installed (Debian: apt-get install nats-server)")
        if count < 1:
            raise NatsServerError(f"need at least one nats-server, got {count}")
        if ports is not None and len(ports) != count:
            raise NatsServerError(f"{count} servers need {count} client ports, got {ports}")
        clustered = count > 1 or bool(extra_routes)
        free = free_ports(3 * count, host)
        client_ports = list(ports) if ports is not None else free[:count]
        workdir = Path(workdir)
        specs = [NatsServerSpec(f"n{i}-{client_ports[i]}", host, client_ports[i],
                                free[count + i] if clustered else 0, free[2 * count + i],
                                str(workdir / f"n{i}-{client_ports[i]}" / "jetstream")) for i in range(count)]
        processes: list[subprocess.Popen] = []
        try:
            for spec in specs:
                Path(spec.store_dir).mkdir(parents=True, exist_ok=True)
                routes = [f"nats-route://{o.host}:{o.route_port}" for o in specs if o is not spec] + list(extra_routes)
                config = workdir / f"{spec.name}.conf"
                config.write_text(server_config(spec, routes, max_store_bytes))
                log = open(workdir / f"{spec.name}.log", "ab")
                processes.append(subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=detach))
                log.close()
            servers = cls(specs, processes, workdir)
            servers.wait_healthy(timeout_s)
            return servers
        except BaseException:
            for p in processes:
                p.kill()
                p.wait(5)
            raise

    def wait_healthy(self, timeout_s: float) -> None:
        """Until every server's ``/healthz?js-enabled-only=true`` answers 200; ``NatsServerError`` naming the
        server (and the end of its log) otherwise."""
        deadline = time.monotonic() + timeout_s
        for spec, process in zip(self.specs, self.processes):
            while True:
                if process.poll() is not None:
                    raise NatsServerError(f"nats-server {spec.name} exited with {process.returncode}: "
                                          f"{self._log_tail(spec)}")
                if _healthy(spec):
                    break
                if time.monotonic() > deadline:
                    raise NatsServerError(f"nats-server {spec.name} not healthy after {timeout_s} s: "
                                          f"{self._log_tail(spec)}")
                time.sleep(0.1)

    def _log_tail(self, spec: NatsServerSpec) -> str:
        path = self.config_dir / f"{spec.name}.log"
        return path.read_text(errors="replace")[-600:] if path.exists() else "(no log)"

    def kill(self, index: int) -> None:
        """SIGKILL one server (tests of a lost server)."""
        self.processes[index].kill()
        self.processes[index].wait(10)

    def restart(self, index: int, timeout_s: float = 20.0) -> None:
        """Start a killed server again with its config and store (what it had stored comes back)."""
        spec = self.specs[index]
        if self.processes[index].poll() is None:
            raise NatsServerError(f"nats-server {spec.name} is still running")
        with open(self.config_dir / f"{spec.name}.log", "ab") as log:
            self.processes[index] = subprocess.Popen([nats_server_binary(), "-c", str(self.config_dir / f"{spec.name}.conf")],
                                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_healthy(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def __enter__(self) -> "NatsServers":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _healthy(spec: NatsServerSpec) -> bool:
    try:
        with urllib.request.urlopen(f"http://{spec.host}:{spec.http_port}/healthz?js-enabled-only=true",
                                    timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_pid(pid: int, timeout_s: float = 10.0) -> bool:
    """SIGTERM a server started with ``detach`` (its pid from the state file), SIGKILL after ``timeout_s``;
    False when it was not running."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True
