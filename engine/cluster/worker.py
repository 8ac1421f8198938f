"""``StreamWorker``: the Ray actor that runs one ``amodal.engine.Engine`` for its stream(s) on the node Ray placed it.

The engine's results go to JetStream (``JetStreamSink``); its ZeroMQ publisher binds an ephemeral loopback port
that nothing needs.  The engine starts in the constructor, so when Ray restarts the actor on a surviving node
after its node died (``max_restarts``) the stream runs again without anyone asking: the restarted worker first
publishes a ``reconnecting`` status event on each of its streams naming the node it now runs on, then starts the
engine; the JetStream sink continues each subject's sequence numbers where the lost node's worker stopped.

``build`` (tests, programs embedding amodal) replaces the config's sources, and its pipelines unless it returns
None for them: a picklable callable returning ``(pipelines or None, [Source, ...])``, called on the worker's node.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from amodal.engine.cluster.config import JetStreamSettings
from amodal.engine.cluster.jetstream import JetStreamSink
from amodal.engine.config import EngineConfig
from amodal.types import StreamEvent, StreamState

log = logging.getLogger(__name__)

Build = Callable[[], tuple[Mapping | None, Sequence]]


class StreamWorker:
    """Run as a Ray actor (``placement.place``); ``info()`` answers ``amodal cluster status``."""

    def __init__(self, name: str, config: EngineConfig, jetstream: JetStreamSettings, build: Build | None = None) -> None:
        import ray

        context = ray.get_runtime_context()
        self.name = name
        self.node_id = context.get_node_id()
        self.host = socket.gethostname()
        self.restarted = bool(context.was_current_actor_reconstructed)
        self.started_ns = time.time_ns()
        pipelines, sources = build() if build is not None else (None, ())
        config = dataclasses.replace(config, publish="tcp://127.0.0.1:*", wait_for_subscribers=0, annotate=None,
                                     metrics_port=None, sources=() if build is not None else config.sources)
        self.stream_ids = [s.stream_id for s in config.sources] + [s.stream_id for s in sources]
        self.sink = JetStreamSink(jetstream, name)
        from amodal.engine.engine import Engine

        self.engine = Engine(config, pipelines=pipelines, sinks=[self.sink])
        if self.restarted:  # queued before the engine starts its sources: the first status event after the move
            for stream_id in self.stream_ids:
                self.sink.write_event(StreamEvent(
                    stream_id, StreamState.RECONNECTING,
                    f"moved: its node was lost; restarted on node {self.node_id[:12]} ({self.host})", time.time_ns()))
        self.engine.start()
        for source in sources:
            self.engine.add_source(source)
        self._stopped = threading.Event()

    def info(self) -> dict:
        """Where this worker runs and how its streams are doing."""
        snapshot = self.engine.snapshot()
        if self.engine.failures:
            state = "failed"
        elif self.engine.wait(0):
            state = "ended"
        else:
            state = "running"
        return {"name": self.name, "node_id": self.node_id, "host": self.host, "streams": self.stream_ids,
                "state": state, "restarted": self.restarted, "started_ns": self.started_ns,
                "published": sum(self.sink.published.values()), "dropped": self.sink.dropped,
                "frames_published": sum(n for subject, n in self.sink.published.items()
                                        if subject.startswith("amodal.frames.")),
                "metrics": snapshot.get("streams", {})}

    def wait(self, timeout_s: float) -> bool:
        """True once every stream of this worker has ended (file sources)."""
        return self.engine.wait(timeout_s)

    def stop(self) -> None:
        """Stop the engine: queued frames are analysed and stored, then the sink disconnects."""
        if not self._stopped.is_set():
            self._stopped.set()
            self.engine.stop()
