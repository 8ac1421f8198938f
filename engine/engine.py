"""The engine: sources → bounded queues → micro-batcher → analyzer → publisher.

Threads: one per source (decode), one inference loop (batching, the analyzer, post-processing), one
publisher (owns the ZeroMQ socket).  Data flows one way; the only shared state is the per-source queues
guarded by one condition variable.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time

from amodal.engine.analyzer import Analyzer
from amodal.engine.analyzers import build_analyzer
from amodal.engine.batcher import MicroBatcher
from amodal.engine.config import EngineConfig
from amodal.engine.device import select_device
from amodal.engine.metrics import EngineMetrics
from amodal.engine.publisher import Publisher
from amodal.engine.queues import SourceQueue
from amodal.errors import ConfigError, SchemaError
from amodal.schema import validate_stream_id
from amodal.streams.base import Source, SourceConfig
from amodal.streams.open import open_source
from amodal.types import Frame, FrameResult, StreamEvent, StreamState

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Attached:
    source: Source
    queue: SourceQueue
    stop: threading.Event
    thread: threading.Thread | None = None
    removed: bool = False  # detached by request: ``removed`` is published after the source's last event


class Engine:
    """Run sources through one analyzer and publish the results.

    >>> with Engine(config) as engine:   # starts everything
    ...     engine.wait()                # until every (file) source has ended, or forever for cameras
    """

    def __init__(self, config: EngineConfig, analyzer: Analyzer | None = None) -> None:
        self.config = config
        self.analyzer = analyzer if analyzer is not None else build_analyzer(config.analyzer)
        self.metrics = EngineMetrics()
        self.publisher = Publisher(
            config.publish, send_hwm=config.send_hwm, linger_ms=config.linger_ms, on_published=self._on_published
        )
        self._ready = threading.Condition()
        self._attached: dict[str, _Attached] = {}
        self._queues: dict[str, SourceQueue] = {}
        self._batcher = MicroBatcher(self._ready, config.max_batch_size, config.max_wait_ms)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._ever_attached = False
        self.device = None

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "Engine":
        self.device = select_device(self.config.device)
        self.analyzer.start(self.device)
        self.publisher.start()
        for source_config in self.config.sources:
            self.add_source(source_config)
        self._loop_thread = threading.Thread(target=self._loop, name="amodal-inference", daemon=True)
        self._loop_thread.start()
        return self

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the engine has finished (all sources ended, or stopped); True if it has."""
        return self._done.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop sources, analyse what they already queued, publish it, close the socket."""
        self._stop.set()
        with self._ready:
            attached = list(self._attached.values())
            for a in attached:
                a.stop.set()
                a.queue.closed = True
            self._ready.notify_all()
        deadline = time.monotonic() + timeout_s
        for a in attached:
            if a.thread is not None:
                a.thread.join(max(0.0, deadline - time.monotonic()))
        if self._loop_thread is not None:
            self._loop_thread.join(max(0.1, deadline - time.monotonic()))
        self.analyzer.stop()
        self.publisher.close()
        self._done.set()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------- sources at runtime
    def add_source(self, source: SourceConfig | Source) -> None:
        """Attach a source (its config, or a ready ``Source``) while the engine runs or before ``start``."""
        if isinstance(source, SourceConfig):
            source = open_source(source)
        config = source.config
        try:
            validate_stream_id(config.stream_id)
        except SchemaError as exc:
            raise ConfigError(str(exc)) from exc
        with self._ready:
            if config.stream_id in self._queues:
                raise ConfigError(f"stream {config.stream_id!r} is already attached")
            q = SourceQueue(config.stream_id, source.queue_size, source.overflow, self._ready)
            attached = _Attached(source, q, threading.Event())
            attached.thread = threading.Thread(
                target=self._run_source, args=(attached,), name=f"amodal-source-{config.stream_id}", daemon=True
            )
            self._attached[config.stream_id] = attached
            self._queues[config.stream_id] = q
            self._ever_attached = True
        attached.thread.start()

    def remove_source(self, stream_id: str, timeout_s: float = 5.0) -> None:
        """Detach a source: it stops, its queued frames are still analysed, then ``removed`` is published."""
        with self._ready:
            attached = self._attached.get(stream_id)
            if attached is None:
                raise ConfigError(f"no stream {stream_id!r} is attached; attached: {sorted(self._attached)}")
            attached.removed = True
            attached.stop.set()
            attached.queue.closed = True
            self._ready.notify_all()
        attached.thread.join(timeout_s)

    @property
    def streams(self) -> list[str]:
        with self._ready:
            return list(self._queues)

    def snapshot(self) -> dict:
        """Current metrics (what the ``metrics/`` topic publishes)."""
        with self._ready:
            queues = {
                sid: {"queued": q.queued_frames, "dropped": q.dropped, "accepted": q.accepted, "policy": q.policy}
                for sid, q in self._queues.items()
            }
        return self.metrics.snapshot(queues)

    # ------------------------------------------------------------------------------------- threads
    def _run_source(self, attached: _Attached) -> None:
        source, q = attached.source, attached.queue
        try:
            source.run(q, attached.stop)
        except Exception as exc:  # a source must not raise; if one does, the stream ends, the engine goes on
            log.exception("source %s raised", source.stream_id)
            q.put_event(StreamEvent(source.stream_id, StreamState.ERROR, f"internal error: {exc!r}", time.time_ns(), fatal=True))
        finally:
            with self._ready:
                if attached.removed:
                    q.put_event(StreamEvent(source.stream_id, StreamState.REMOVED, "removed by request", time.time_ns()))
                q.finished = True
                self._ready.notify_all()

    def _loop(self) -> None:
        next_metrics = time.monotonic() + self.config.metrics_interval_s
        try:
            while True:
                batch = self._batcher.collect(self._queues, self._stop)
                if batch.frames:
                    self._analyse(batch.frames)
                for event in batch.events:
                    self.publisher.publish_event(event)
                for stream_id in batch.drained:
                    self._retire(stream_id)
                now = time.monotonic()
                if now >= next_metrics:
                    self.publisher.publish_metrics(self.snapshot())
                    next_metrics = now + self.config.metrics_interval_s
                if batch:
                    continue
                with self._ready:
                    nothing_attached = not self._queues
                # stopping: sources end, their last frames and events are published, then they retire
                if nothing_attached and (self._stop.is_set() or (self.config.exit_when_done and self._ever_attached)):
                    break
        finally:
            self._done.set()

    def _retire(self, stream_id: str) -> None:
        with self._ready:
            self._queues.pop(stream_id, None)
            attached = self._attached.pop(stream_id, None)
        if attached is not None and attached.thread is not None:
            attached.thread.join(1.0)
        self.analyzer.on_source_eos(stream_id)

    def _analyse(self, frames: list[Frame]) -> None:
        start_ns = time.monotonic_ns()
        try:
            results = self.analyzer.process(frames)
        except Exception as exc:  # per-batch failure: counted and reported, the engine keeps serving
            log.exception("analyzer %s failed", self.analyzer.name)
            for stream_id in {f.stream_id for f in frames}:
                self.metrics.record_error(stream_id)
                indexes = [f.index for f in frames if f.stream_id == stream_id]
                reason = f"analyzer {self.analyzer.name} failed on frames {indexes}: {exc!r}"
                self.publisher.publish_event(StreamEvent(stream_id, StreamState.ERROR, reason, time.time_ns()))
            return
        end_ns = time.monotonic_ns()
        model_ms = (end_ns - start_ns) / 1e6
        queue_ms = [(start_ns - f.received_mono_ns) / 1e6 for f in frames]
        self.metrics.record_batch(collections.Counter(f.stream_id for f in frames), model_ms, queue_ms)
        for r, q_ms in zip(results, queue_ms):
            r.stage_ms["queue"] = q_ms  # each result owns its stage_ms dict; filled in place, no copy per frame
            r.stage_ms["model"] = model_ms
        self.publisher.publish_results(results)

    def _on_published(self, result: FrameResult) -> None:
        now_ns = time.monotonic_ns()
        total_ms = (now_ns - result.received_mono_ns) / 1e6
        done_ms = result.stage_ms.get("queue", 0.0) + result.stage_ms.get("model", 0.0)
        self.metrics.record_published(total_ms - done_ms, total_ms)
