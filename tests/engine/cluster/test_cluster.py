"""The cluster on loopback: a Ray cluster of a head and two worker nodes, three nats-server processes forming a
JetStream cluster (replicas 3).  Streams are placed on both nodes, results read back with durable consumers, a
node is killed and its streams move, one gallery service gives a person one identity across nodes."""
from __future__ import annotations

import functools
import time
from collections import defaultdict

import numpy as np
import pytest

from amodal.engine.cluster import JetStreamSettings, SiteConfig
from amodal.engine.cluster.nats_server import NatsServers, nats_server_binary
from amodal.engine.cluster.placement import nodes, place, stop_streams, stream_states, wait_moved
from amodal.schema import FrameMessage, StatusMessage
from amodal.subscriber_nats import NatsSubscriber
from amodal.types import StreamState

from tests.support.cluster import FAST_FAILURE_DETECTION, local_ray_cluster, person_worker, wait_until

pytestmark = [pytest.mark.timeout(400),
              pytest.mark.skipif(nats_server_binary() is None,
                                 reason="nats-server is not installed (apt-get install nats-server; CI installs it)")]

SYNTHETIC = ["north", "south", "east", "west"]


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    with NatsServers.start(3, tmp_path_factory.mktemp("nats")) as servers:
        yield servers


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray_cluster(system_config=FAST_FAILURE_DETECTION) as (cluster, named):
        yield cluster, named


def _site(nats, streams, **resources) -> SiteConfig:
    return SiteConfig.from_dict({
        "cluster": {"jetstream": {"servers": nats.urls, "replicas": 3, "max_age_s": 600},
                    "num_cpus": 0, "resources": {"engine": 1}, "max_restarts": -1},
        "sources": [{"uri": uri, "stream_id": sid, **({"resources": resources[sid]} if sid in resources else {})}
                    for sid, uri in streams.items()],
    })


def _frames_until(sub: NatsSubscriber, done, timeout_s: float) -> list:
    """Messages read until ``done(messages)`` holds (AssertionError after ``timeout_s``)."""
    messages, deadline = [], time.monotonic() + timeout_s
    while not done(messages):
        assert time.monotonic() < deadline, f"timed out with {len(messages)} messages"
        message = sub.recv(0.5)
        if message is not None:
            messages.append(message)
    return messages


def _frame_seqs(messages, stream_id: str) -> list[int]:
    return [m.seq for m in messages if isinstance(m, FrameMessage) and m.result.stream_id == stream_id]


def _first_after_move(messages, stream_id: str):
    """(the stream's "moved" status event, its first frame after it), or None before both arrived."""
    moved = None
    for m in messages:
        if (isinstance(m, StatusMessage) and m.event.stream_id == stream_id and m.event.state == StreamState.RECONNECTING
                and (m.event.reason or "").startswith("moved")):
            moved = m.event
        elif moved is not None and isinstance(m, FrameMessage) and m.result.stream_id == stream_id:
            return moved, m
    return None


def test_one_identity_for_a_person_on_two_nodes(nats, ray_cluster):
    """cam1 runs on node_a, cam2 on node_b, both with the reid stage calling one gallery service: every person
    gets one global id on both cameras, and the service holds each identity's sightings from both streams."""
    import ray

    _, named = ray_cluster
    site = _site(nats, {"cam1": "test://cam1", "cam2": "test://cam2"},
                 cam1={"node_a": 1}, cam2={"node_b": 1})
    gallery = "ray://amodal-gallery-test"
    builds = {"cam1": functools.partial(person_worker, 0, gallery), "cam2": functools.partial(person_worker, 1, gallery)}
    handles = place(site, build_for=builds, detached=False)
    try:
        placed = {sid: info["node_id"] for sid, info in stream_states(handles).items()}
        assert placed == {"cam1": named["node_a"].node_id, "cam2": named["node_b"].node_id}
        with NatsSubscriber(nats.urls, ["cam1", "cam2"], timeout_s=60) as sub:
            messages = _frames_until(sub, lambda ms: {m.event.stream_id for m in ms if isinstance(m, StatusMessage)
                                                      and m.event.state == StreamState.ENDED} == {"cam1", "cam2"}, 120)
    finally:
        stop_streams(handles)
    from tests.support.person_streams import render_person_streams

    scene = render_person_streams(cameras=2, identities=3, frames=6, seed=11)
    final: dict[tuple[str, int], int] = {}
    for m in messages:
        if isinstance(m, FrameMessage):
            for obj in m.result.objects:
                if obj.global_id is not None:
                    final[(m.result.stream_id, obj.track_id)] = obj.global_id
    per_person = [{final.get((s.stream_id, s.track_of_identity[k])) for s in scene} for k in range(3)]
    assert all(len(ids) == 1 and None not in ids for ids in per_person), per_person
    assert len(set().union(*per_person)) == 3, per_person
    service = ray.get_actor("amodal-gallery-test", namespace="amodal")
    try:
        stats = ray.get(service.stats.remote(), timeout=30)
        assert stats["identities"] == 3 and stats["sightings"] == 6, stats
        embedding = next(o.embedding for m in messages if isinstance(m, FrameMessage) for o in m.result.objects
                         if o.global_id is not None)
        best = ray.get(service.search.remote(embedding.astype(np.float32)[None], 1), timeout=30)[0][0]
        assert {s.stream_id for s in best.sightings} == {"cam1", "cam2"}
    finally:
        ray.kill(service)


def test_streams_spread_survive_a_node_and_durable_readers_resume(nats, ray_cluster):
    """Four synthetic streams over two nodes; a durable reader stops and resumes without a gap; node_a dies, its
    streams restart on node_b with a status event naming it, and every stream's frame sequence stays gap-free."""
    cluster, named = ray_cluster
    uris = {sid: f"synthetic://shapes?w=64&h=48&fps=10&objects=1&seed={i}" for i, sid in enumerate(SYNTHETIC)}
    handles = place(_site(nats, uris), detached=False)
    try:
        before = {sid: info["node_id"] for sid, info in stream_states(handles).items()}
        assert set(before.values()) == {named["node_a"].node_id, named["node_b"].node_id}, before
        # a durable reader of "north" reads 8 frames, stops; its successor starts at the 9th
        with NatsSubscriber(nats.urls, ["north"], durable="resume", status=False) as first:
            seen = _frames_until(first, lambda ms: len(ms) >= 8, 60)
        with NatsSubscriber(nats.urls, ["north"], durable="resume", status=False) as second:
            more = _frames_until(second, lambda ms: len(ms) >= 8, 60)
        assert [m.seq for m in seen + more] == list(range(16))

        with NatsSubscriber(nats.urls, durable="all-streams") as reader:
            early = _frames_until(reader, lambda ms: all(len(_frame_seqs(ms, s)) >= 5 for s in SYNTHETIC), 60)
            moved = [sid for sid, node in before.items() if node == named["node_a"].node_id]
            killed_ns = time.time_ns()
            cluster.remove_node(named["node_a"], allow_graceful=False)
            after = wait_moved(handles, named["node_a"].node_id, timeout_s=90)
            assert set(after.values()) == {named["node_b"].node_id}

            messages = early + _frames_until(reader, lambda ms: all(_first_after_move(ms, sid) for sid in moved), 90)
        for sid in moved:
            event, frame = _first_after_move(messages, sid)
            assert named["node_b"].node_id[:12] in event.reason, event
            print(f"{sid}: kill -> first frame on the new node {(frame.publish_time_ns - killed_ns) / 1e9:.2f} s")
        assert not reader.stats.lost, reader.stats.lost
        for sid in SYNTHETIC:
            seqs = _frame_seqs(messages, sid)
            assert seqs == list(range(len(seqs))), (sid, seqs)  # from the first frame stored, none missing
    finally:
        stop_streams(handles)
    alive = {n["node_id"] for n in nodes() if n["alive"]}
    assert named["node_a"].node_id not in alive and named["node_b"].node_id in alive
