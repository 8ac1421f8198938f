"""Placing a site's streams on a Ray cluster, listing them, stopping them.

Each stream gets its own ``StreamWorker`` actor, named ``amodal-stream-<stream id>`` in the ``amodal`` namespace,
asking for the stream's resources (``StreamResources``), ``scheduling_strategy="SPREAD"`` so that streams are
balanced over the nodes that have those resources, ``lifetime="detached"`` so the streams outlive the
``amodal cluster run`` process, and ``max_restarts`` so that Ray re-creates a worker whose node died on a surviving
node that has the resources (Ray's own supervision: no scheduler of ours).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

from amodal.engine.cluster.config import NAMESPACE, WORKER_PREFIX, SiteConfig
from amodal.engine.cluster.worker import Build, StreamWorker
from amodal.errors import EngineError

log = logging.getLogger(__name__)


class PlacementError(EngineError):
    """A stream could not be placed (no node has its resources, a name is taken, the cluster is unreachable)."""


def worker_name(stream_id: str) -> str:
    return f"{WORKER_PREFIX}{stream_id}"


def place(site: SiteConfig, *, build_for: Mapping[str, Build] | None = None, ready_timeout_s: float = 120.0,
          detached: bool = True) -> dict[str, object]:
    """Start one worker per source of ``site`` and wait until each has started its engine; stream id → actor.

    ``build_for``: stream id → a ``build`` callable for that worker (its pipelines and sources; tests);
    ``detached=False`` ties the workers to this driver (they end with it)."""
    import ray

    actor_class = ray.remote(StreamWorker)
    handles: dict[str, object] = {}
    for source in site.engine.sources:
        sid = source.stream_id
        name = worker_name(sid)
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            pass
        else:
            raise PlacementError(f"stream {sid!r} is already placed (actor {name}); `amodal cluster stop` first")
        config = dataclasses.replace(site.engine, sources=(source,))
        options = dict(site.resources[sid].ray_options(), name=name, namespace=NAMESPACE,
                       max_restarts=site.cluster.max_restarts, max_task_retries=-1 if site.cluster.max_restarts else 0,
                       max_concurrency=4, scheduling_strategy=site.cluster.strategy)
        if detached:
            options["lifetime"] = "detached"
        build = None if build_for is None else build_for.get(sid)
        handles[sid] = actor_class.options(**options).remote(name, config, site.cluster.jetstream, build)
    _wait_ready(handles, ready_timeout_s)
    return handles


def _wait_ready(handles: Mapping[str, object], timeout_s: float) -> None:
    import ray

    refs = {sid: h.info.remote() for sid, h in handles.items()}
    ready, waiting = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    if waiting:
        late = [sid for sid, ref in refs.items() if ref in waiting]
        raise PlacementError(f"streams {late} were not running after {timeout_s} s: no node has the resources they "
                             f"ask for, or their engines failed to start (`ray status`, the workers' logs)")
    for sid, ref in refs.items():
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise PlacementError(f"stream {sid!r}: its worker failed to start: {exc}") from exc


def workers() -> dict[str, object]:
    """The stream workers of this cluster's namespace: stream id → actor handle."""
    import ray

    out = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"] if isinstance(entry, dict) else entry
        namespace = entry.get("namespace") if isinstance(entry, dict) else NAMESPACE
        if namespace == NAMESPACE and name.startswith(WORKER_PREFIX):
            try:
                out[name[len(WORKER_PREFIX):]] = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                continue  # stopped meanwhile
    return out


def stream_states(handles: Mapping[str, object], timeout_s: float = 5.0) -> dict[str, dict]:
    """stream id → the worker's ``info()``, or ``{"state": "unavailable", "reason": ...}`` (restarting, dead)."""
    import ray

    refs = {sid: h.info.remote() for sid, h in handles.items()}
    out = {}
    deadline = time.monotonic() + timeout_s
    for sid, ref in refs.items():
        try:
            out[sid] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except (ray.exceptions.RayError, TimeoutError) as exc:
            out[sid] = {"state": "unavailable", "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return out


def nodes() -> list[dict]:
    """The cluster's nodes: id, address, alive, resources."""
    import ray

    return [{"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"), "alive": bool(n.get("Alive")),
             "resources": n.get("Resources", {})} for n in ray.nodes()]


def stop_streams(handles: Mapping[str, object], timeout_s: float = 30.0) -> list[str]:
    """Stop the workers' engines (their queued results are stored), then kill the actors; the stopped stream ids."""
    import ray

    refs = {sid: h.stop.remote() for sid, h in handles.items()}
    ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    for handle in handles.values():
        ray.kill(handle, no_restart=True)
    return list(handles)


def wait_moved(handles: Mapping[str, object], away_from: str, timeout_s: float,
               poll_s: float = 0.25) -> dict[str, str]:
    """Block until no worker runs on node ``away_from`` any more; stream id → node id now."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = stream_states(handles, timeout_s=min(5.0, max(0.5, deadline - time.monotonic())))
        placed = {sid: s.get("node_id") for sid, s in states.items()}
        if all(node not in (None, away_from) for node in placed.values()):
            return placed
        if time.monotonic() > deadline:
            raise PlacementError(f"streams still not moved off node {away_from[:12]} after {timeout_s} s: {placed}")
        time.sleep(poll_s)

