"""The engine: sources → bounded queues → micro-batcher → each stream's pipeline of stages → sinks.

Threads: one per source (decode; with ``decode: processes``, the default, it relays what the source's decode worker
process sends: ``amodal.streams.worker``), one inference loop (batching, preprocessing, the synchronous stages of every
pipeline), one worker per detached (slow) stage, and the sinks' own threads (the ZeroMQ publisher owns its socket).
Data flows one way; the only shared state is the per-source queues guarded by one condition variable.  Stages
start, process, end streams and stop on the thread that runs them (the inference thread, or their worker).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence

import torch

from amodal.engine.batcher import MicroBatcher
from amodal.engine.config import EngineConfig, PipelineConfig
from amodal.engine.detached import DetachedStage
from amodal.engine.device import select_device
from amodal.engine.metrics import EngineMetrics
from amodal.engine.pipeline import Pipeline, StageFailure, StageSlot
from amodal.engine.publisher import Publisher
from amodal.engine.queues import SourceQueue
from amodal.engine.sink import Sink
from amodal.engine.stage import RatePolicy, Stage
from amodal.engine.stages import STAGES, build_stage
from amodal.errors import ConfigError, EngineError, SchemaError
from amodal.schema import validate_stream_id
from amodal.security import is_loopback_endpoint
from amodal.streams.base import Source, SourceConfig
from amodal.streams.open import open_source
from amodal.streams.worker import run_in_worker
from amodal.streams.worker_pool import DecodePool
from amodal.types import Amendment, Frame, FrameResult, StreamEvent, StreamState

log = logging.getLogger(__name__)

#: what a programmatic pipeline entry may be: a stage (its default rate policy) or a stage with its policy
StageLike = Stage | StageSlot


@dataclasses.dataclass
class _Attached:
    source: Source
    queue: SourceQueue
    stop: threading.Event
    pipeline: str
    thread: threading.Thread | None = None
    removed: bool = False  # detached by request: ``removed`` is published after the source's last event


def _providers() -> dict[str, list[str]]:
    """capability → registered stages that fill it (for error hints); stage classes declare static fills."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    for name, entry in STAGES.items():
        for capability in getattr(entry.factory, "fills", frozenset()):
            out[capability].append(name)
    return out


def build_pipelines(configs: Sequence[PipelineConfig]) -> dict[str, list[StageSlot]]:
    """Stage instances for ``configs``: a stage used with the same settings by several pipelines (or twice) is
    built — and its model loaded — once."""
    instances: dict[tuple[str, object], Stage] = {}
    out: dict[str, list[StageSlot]] = {}
    for pipeline in configs:
        slots = []
        for stage_config in pipeline.stages:
            key = (stage_config.name, stage_config.settings)
            if key not in instances:
                instances[key] = build_stage(stage_config.name, stage_config.settings)
            stage = instances[key]
            slots.append(StageSlot(stage, stage_config.rate or stage.default_rate))
        out[pipeline.name] = slots
    return out


class Engine:
    """Run sources through their pipelines and deliver the results to the sinks.

    >>> with Engine(config) as engine:   # starts everything
    ...     engine.wait()                # until every (file) source has ended, or forever for cameras

    ``pipelines`` replaces the config's pipelines with stage instances (tests, embedding amodal in a program):
    ``{"default": [OvisStage(...), StageSlot(SlowStage(), RatePolicy("newest"))]}``.  ``sinks`` are added to the
    ZeroMQ publisher.
    """

    def __init__(self, config: EngineConfig, pipelines: Mapping[str, Sequence[StageLike]] | None = None,
                 sinks: Sequence[Sink] = ()) -> None:
        self.config = config
        if pipelines is None:
            slots = build_pipelines(config.pipelines)
        else:
            slots = {name: [s if isinstance(s, StageSlot) else StageSlot(s, s.default_rate) for s in stages]
                     for name, stages in pipelines.items()}
        providers = _providers()
        self.pipelines = {name: Pipeline(name, s, providers) for name, s in slots.items()}
        self.default_pipeline = config.default_pipeline or (
            next(iter(self.pipelines)) if len(self.pipelines) == 1 else "default")
        self.metrics = EngineMetrics()
        self.publisher = Publisher(config.publish, send_hwm=config.send_hwm, linger_ms=config.linger_ms,
                                   on_published=self._on_published, security=config.security)
        if config.security is None and not is_loopback_endpoint(config.publish):
            log.warning("publishing on %s beyond loopback WITHOUT CURVE: any host that reaches it can subscribe; "
                        "set security: (README, 'Security')", config.publish)
        for pipeline in self.pipelines.values():
            for slot in pipeline.slots:
                slot.stage.use_security(config.security)
        self.sinks: list[Sink] = [self.publisher, *sinks]
        self.heartbeat_mono = time.monotonic()  # the inference loop's last turn (health)
        self.monitor = None
        if config.metrics_port is not None:
            from amodal.engine.monitor import EngineMonitor

            self.monitor = EngineMonitor(config.metrics_host, config.metrics_port, lambda: self.heartbeat_mono,
                                         stream_down_s=config.health_stream_down_s, stall_s=config.health_stall_s)
            self.sinks.append(self.monitor)
        if config.annotate:
            from amodal.engine.annotate import AnnotatedVideoSink

            self.sinks.append(AnnotatedVideoSink(config.annotate, per_stream=len(config.sources) != 1))
        self._decode_pool = (DecodePool(config.decode_workers)
                             if config.decode == "processes" and config.decode_workers else None)
        self._ready = threading.Condition()
        self._attached: dict[str, _Attached] = {}
        self._queues: dict[str, SourceQueue] = {}
        self._batcher = MicroBatcher(self._ready, config.max_batch_size, config.max_wait_ms)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._loop_started = threading.Event()
        self._start_error: BaseException | None = None
        self._ever_attached = False
        self._detached: dict[int, DetachedStage] = {}
        self._reported_sinks: set[int] = set()
        self.failures: list[str] = []  # fatal engine failures (a sink that died); `amodal run` exits non-zero
        self.device: torch.device | None = None
        for source_config in config.sources:
            self._pipeline_of(source_config.pipeline, f"source {source_config.stream_id}")

    # ------------------------------------------------------------------------------------ lifecycle
    @property
    def sync_stages(self) -> list[Stage]:
        """The distinct stages that run on the inference thread."""
        return list({id(s.stage): s.stage for p in self.pipelines.values() for s in p.sync}.values())

    def start(self) -> "Engine":
        self.device = select_device(self.config.device)
        for sink in self.sinks:
            sink.start()
        self._loop_thread = threading.Thread(target=self._loop, name="amodal-inference", daemon=True)
        self._loop_thread.start()
        self._loop_started.wait()
        if self._start_error is None:
            try:
                self._start_detached()
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below, after cleaning up
                self._start_error = exc
        if self._start_error is not None:
            self.stop()
            raise self._start_error
        if self.config.wait_for_subscribers:
            n = self.publisher.wait_for_subscribers(self.config.wait_for_subscribers,
                                                    self.config.wait_for_subscribers_timeout_s)
            if n < self.config.wait_for_subscribers:
                log.warning("only %d of %d subscribers after %.1f s; starting the sources anyway", n,
                            self.config.wait_for_subscribers, self.config.wait_for_subscribers_timeout_s)
        for source_config in self.config.sources:
            self.add_source(source_config)
        return self

    def _start_detached(self) -> None:
        for pipeline in self.pipelines.values():
            for slot in pipeline.detached:
                if id(slot.stage) not in self._detached:
                    worker = DetachedStage(slot, self.device, self._emit_amendment, self._write_event,
                                           self.config.max_batch_size)
                    self._detached[id(slot.stage)] = worker
                    worker.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the engine has finished (all sources ended, or stopped); True if it has."""
        return self._done.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop sources, analyse what they already queued, let detached stages finish, deliver, close the sinks."""
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
        if self._decode_pool is not None:  # its sources have stopped
            self._decode_pool.close(max(1.0, deadline - time.monotonic()))
        if self._loop_thread is not None:
            self._loop_thread.join(max(0.1, deadline - time.monotonic()))
        for worker in self._detached.values():  # slow stages finish what they hold, up to the stop timeout
            worker.stop(max(5.0, deadline - time.monotonic()))
        for sink in self.sinks:
            sink.close()
        self._check_sinks()
        self._done.set()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------- sources at runtime
    def _pipeline_of(self, name: str | None, where: str) -> str:
        name = name or self.default_pipeline
        if name not in self.pipelines:
            raise ConfigError(f"{where}: unknown pipeline {name!r}; known pipelines: {', '.join(self.pipelines)}")
        return name

    def add_source(self, source: SourceConfig | Source) -> None:
        """Attach a source (its config, or a ready ``Source``) while the engine runs or before ``start``."""
        config = source if isinstance(source, SourceConfig) else source.config
        try:
            validate_stream_id(config.stream_id)
        except SchemaError as exc:
            raise ConfigError(str(exc)) from exc
        pipeline = self._pipeline_of(config.pipeline, f"source {config.stream_id}")
        if isinstance(source, SourceConfig):
            source = open_source(source)
        if self.config.decode == "processes":  # same Source contract; decoding runs in a worker process
            source = run_in_worker(source, self._decode_pool)
        with self._ready:
            if config.stream_id in self._queues:
                raise ConfigError(f"stream {config.stream_id!r} is already attached")
            q = SourceQueue(config.stream_id, source.queue_size, source.overflow, self._ready,
                            frame_label=getattr(source, "frame_label", None))
            attached = _Attached(source, q, threading.Event(), pipeline)
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
                sid: {"queued": q.queued_frames, "dropped": q.dropped, "accepted": q.accepted, "policy": q.policy,
                      "pipeline": self._attached[sid].pipeline if sid in self._attached else None}
                for sid, q in self._queues.items()
            }
        snapshot = self.metrics.snapshot(queues)
        if self._detached:
            snapshot["detached_stages"] = {
                w.stage.name: {"processed": w.processed, "superseded": w.superseded, "dropped": w.dropped}
                for w in self._detached.values()}
        if self.failures:
            snapshot["failures"] = list(self.failures)
        return snapshot

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
        try:
            for stage in self.sync_stages:
                stage.start(self.device)
        except BaseException as exc:  # noqa: BLE001 - raised to start()'s caller
            self._start_error = exc
            self._loop_started.set()
            self._done.set()
            return
        self._loop_started.set()
        next_metrics = time.monotonic() + self.config.metrics_interval_s
        try:
            while True:
                self.heartbeat_mono = time.monotonic()
                batch = self._batcher.collect(self._queues, self._stop)
                if batch.frames:
                    self._analyse(batch.frames)
                for event in batch.events:
                    self._write_event(event)
                for stream_id in batch.drained:
                    self._retire(stream_id)
                now = time.monotonic()
                if now >= next_metrics:
                    metrics = self.snapshot()
                    for sink in self.sinks:
                        sink.write_metrics(metrics)
                    next_metrics = now + self.config.metrics_interval_s
                if self._check_sinks():
                    self._stop_sources()
                if batch:
                    continue
                with self._ready:
                    nothing_attached = not self._queues
                # stopping: sources end, their last frames and events are published, then they retire
                if nothing_attached and (self._stop.is_set() or (self.config.exit_when_done and self._ever_attached)):
                    break
            for worker in self._detached.values():  # results promised to subscribers: let slow stages finish
                worker.drain(self.config.linger_ms / 1000.0 + 60.0)
        finally:
            for stage in self.sync_stages:
                try:
                    stage.stop()
                except Exception as exc:  # noqa: BLE001
                    log.exception("stage %s failed to stop", stage.name)
                    self._write_event(StreamEvent("*", StreamState.ERROR, f"stage {stage.name} failed to stop: {exc!r}",
                                                  time.time_ns()))
            self._done.set()

    def _stop_sources(self) -> None:
        self._stop.set()
        with self._ready:
            for a in self._attached.values():
                a.stop.set()
                a.queue.closed = True
            self._ready.notify_all()

    def _retire(self, stream_id: str) -> None:
        with self._ready:
            self._queues.pop(stream_id, None)
            attached = self._attached.pop(stream_id, None)
        if attached is None:
            return
        if attached.thread is not None:
            attached.thread.join(1.0)
        pipeline = self.pipelines[attached.pipeline]
        for slot in pipeline.sync:
            try:
                slot.stage.on_source_eos(stream_id)
            except Exception as exc:  # noqa: BLE001 - reported; the other streams are unaffected
                log.exception("stage %s failed at the end of stream %s", slot.stage.name, stream_id)
                self.metrics.record_error(stream_id)
                self._write_event(StreamEvent(stream_id, StreamState.ERROR,
                                              f"stage {slot.stage.name} failed at end of stream: {exc!r}",
                                              time.time_ns()))
        for slot in pipeline.detached:
            self._detached[id(slot.stage)].end_stream(stream_id)

    def _analyse(self, frames: list[Frame]) -> None:
        start_ns = time.monotonic_ns()
        with self._ready:
            pipeline_of = {sid: a.pipeline for sid, a in self._attached.items()}
            cameras = {sid: a.source.config.camera for sid, a in self._attached.items()
                       if a.source.config.camera is not None}
        by_pipeline: dict[str, list[Frame]] = collections.defaultdict(list)
        for f in frames:
            by_pipeline[pipeline_of.get(f.stream_id, self.default_pipeline)].append(f)
        for name, pipeline_frames in by_pipeline.items():
            pipeline = self.pipelines[name]
            output = pipeline.process(pipeline_frames, self.device, cameras)
            for failure in output.failures:
                self._report_failure(failure)
            if not output.results:
                continue
            model_ms = (time.monotonic_ns() - start_ns) / 1e6  # preprocessing and every synchronous stage
            queue_ms = [(start_ns - f.received_mono_ns) / 1e6 for f in output.frames]
            self.metrics.record_batch(collections.Counter(f.stream_id for f in output.frames), model_ms, queue_ms)
            for r, q_ms in zip(output.results, queue_ms):
                r.stage_ms["queue"] = q_ms  # each result owns its stage_ms dict; filled in place
                r.stage_ms["model"] = model_ms
            for sink in self.sinks:
                sink.write_results(output.frames, output.results)
            for slot in pipeline.detached:
                worker = self._detached[id(slot.stage)]
                for frame, result in zip(output.frames, output.results):
                    worker.submit(frame, result.objects, cameras.get(frame.stream_id))

    def _report_failure(self, failure: StageFailure) -> None:
        self.metrics.record_error(failure.stream_id)
        reason = f"stage {failure.stage} failed on frames {list(failure.frame_indexes)}: {failure.reason}"
        self._write_event(StreamEvent(failure.stream_id, StreamState.ERROR, reason, time.time_ns()))

    def _write_event(self, event: StreamEvent) -> None:
        for sink in self.sinks:
            sink.write_event(event)

    def _emit_amendment(self, amendment: Amendment) -> None:
        for sink in self.sinks:
            sink.write_amendment(amendment)

    def _check_sinks(self) -> bool:
        """Report sinks whose thread died (once each); True when one did."""
        failed = False
        for sink in self.sinks:
            if sink.failure is None:
                continue
            failed = True
            if id(sink) in self._reported_sinks:
                continue
            self._reported_sinks.add(id(sink))
            message = f"sink {sink.name} failed: {sink.failure!r}; the engine stops"
            log.error(message)
            self.failures.append(message)
            with self._ready:
                streams = list(self._attached) or ["*"]
            for stream_id in streams:
                event = StreamEvent(stream_id, StreamState.ERROR, message, time.time_ns(), fatal=True)
                for other in self.sinks:
                    if other.failure is None:
                        other.write_event(event)
        return failed

    def _on_published(self, result: FrameResult) -> None:
        now_ns = time.monotonic_ns()
        total_ms = (now_ns - result.received_mono_ns) / 1e6
        done_ms = result.stage_ms.get("queue", 0.0) + result.stage_ms.get("model", 0.0)
        self.metrics.record_published(total_ms - done_ms, total_ms)
        if self.monitor is not None:
            self.monitor.observe_published(total_ms - done_ms, total_ms)


__all__ = ["Engine", "EngineError", "RatePolicy", "StageSlot", "build_pipelines"]
