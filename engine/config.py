"""Engine configuration: frozen dataclasses, loaded from CLI flags or a YAML file.

```yaml
pipelines:
  cameras:  [{stage: ovis}, {stage: reid, gallery_path: /var/lib/amodal/gallery.amg}]
  scanners: [{stage: maskrcnn, weights: /models/xray.safetensors}]
sources:
  - {uri: "rtsp://10.0.0.5/s1", pipeline: cameras}
  - {uri: "scanner:///srv/xray/belt1", pipeline: scanners}
```

A pipeline entry is a stage name or a mapping ``{stage: NAME, rate: {...}, <the stage's settings>}``; ``rate`` is
a ``RatePolicy`` (``every`` / ``nth`` / ``newest``, or just the mode as a string).  The legacy ``analyzer:`` section
(``{name, weights, score_threshold, …, reid: {…}}``) still works as a one-pipeline config.  Unknown stages, keys and
pipeline names are ``ConfigError``s that name them and list the known ones.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amodal.engine.stage import RatePolicy
from amodal.errors import ConfigError, SchemaError
from amodal.schema import validate_stream_id
from amodal.security import SecuritySettings
from amodal.settings import build_settings, field_names, read_yaml_mapping
from amodal.streams.base import SourceConfig

DEFAULT_PIPELINE = "default"
#: ``decode:`` settings: sources in worker processes (default) or on engine threads
DECODE_MODES = ("processes", "threads")


@dataclass(frozen=True)
class StageConfig:
    """One stage of a pipeline: its registry ``name``, its settings dataclass (None = defaults) and its rate
    policy (None = the stage's default)."""

    name: str
    settings: Any = None
    rate: RatePolicy | None = None

    def __post_init__(self) -> None:
        from amodal.engine.stages import stage_entry, stage_settings

        entry = stage_entry(self.name)
        if not isinstance(self.settings, entry.settings):
            object.__setattr__(self, "settings", stage_settings(self.name, self.settings))


@dataclass(frozen=True)
class PipelineConfig:
    """A named, ordered list of stages."""

    name: str
    stages: tuple[StageConfig, ...]

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or any(c.isspace() for c in self.name):
            raise ConfigError(f"invalid pipeline name {self.name!r}: non-empty, no '/' and no whitespace")
        if not self.stages:
            raise ConfigError(f"pipeline {self.name!r} has no stages")

    @classmethod
    def of(cls, name: str, stages: Sequence[str | StageConfig]) -> "PipelineConfig":
        """``PipelineConfig.of("cams", ["ovis", "reid"])``: stages by name with default settings."""
        return cls(name, tuple(s if isinstance(s, StageConfig) else StageConfig(s) for s in stages))

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)


def parse_stage_list(text: str) -> tuple[str, ...]:
    """``"ovis,reid"`` → ("ovis", "reid") (the ``--pipeline`` shorthand)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ConfigError(f"--pipeline needs stage names separated by commas, got {text!r}")
    return names


@dataclass(frozen=True)
class EngineConfig:
    """Sources, pipelines, batching, device and sinks of one engine.

    ``default_pipeline``: the pipeline of sources that name none (None = the only pipeline, else ``default``);
    ``wait_for_subscribers``: before attaching the configured sources, wait until this many ``Subscriber``s have
    subscribed (at most ``wait_for_subscribers_timeout_s``, then start anyway with a warning) — for file jobs whose
    consumers must see every frame; ``annotate``: write an annotated MP4 per stream (``{stream}`` in the path is
    replaced by the stream id; without it, several streams get ``<stem>_<stream>.mp4``); ``security``: CURVE on every
    socket the engine serves (``amodal.security``; required in practice when ``publish`` binds beyond loopback);
    ``metrics_port``: serve Prometheus metrics at ``/metrics`` and health at ``/health`` on ``metrics_host``
    (unhealthy when a stream has been down longer than ``health_stream_down_s`` or the inference loop has not
    turned for ``health_stall_s``)."""

    sources: tuple[SourceConfig, ...] = ()
    pipelines: tuple[PipelineConfig, ...] = (PipelineConfig.of(DEFAULT_PIPELINE, ["identity"]),)
    default_pipeline: str | None = None
    publish: str = "tcp://127.0.0.1:5555"
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    send_hwm: int = 10000  # per-subscriber queue in the PUB socket; a slow subscriber loses, never slows
    linger_ms: int = 2000  # how long close() waits to flush queued messages
    metrics_interval_s: float = 1.0
    exit_when_done: bool = True  # stop when every source has ended (files); live sources never end
    wait_for_subscribers: int = 0
    wait_for_subscribers_timeout_s: float = 10.0
    annotate: str | None = None
    security: SecuritySettings | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    health_stream_down_s: float = 30.0
    health_stall_s: float = 10.0
    # where sources decode: "processes" (each source in its own worker process, frames through shared memory;
    # amodal.streams.worker) or "threads" (a thread of the engine process each; for debugging)
    decode: str = "processes"
    # with decode: processes, 0 = one worker process per source; N = a pool of N worker processes shared by all
    # sources (amodal.streams.worker_pool: fewer processes, but a crash restarts every source of that worker)
    decode_workers: int = 0

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ConfigError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        if not isinstance(self.decode_workers, int) or self.decode_workers < 0:
            raise ConfigError(f"decode_workers must be an integer >= 0 (0 = a process per source), "
                              f"got {self.decode_workers!r}")
        if self.max_batch_size <= 0:
            raise ConfigError(f"max_batch_size must be > 0, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.send_hwm <= 0 or self.linger_ms < 0 or self.metrics_interval_s <= 0:
            raise ConfigError("send_hwm and metrics_interval_s must be > 0, linger_ms >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not isinstance(self.wait_for_subscribers, int) or self.wait_for_subscribers < 0:
            raise ConfigError(f"wait_for_subscribers must be an integer >= 0, got {self.wait_for_subscribers!r}")
        if self.metrics_port is not None and not (isinstance(self.metrics_port, int) and 0 <= self.metrics_port < 65536):
            raise ConfigError(f"metrics_port must be a TCP port (0 = any free one), got {self.metrics_port!r}")
        if self.health_stream_down_s <= 0 or self.health_stall_s <= 0:
            raise ConfigError("health_stream_down_s and health_stall_s must be > 0")
        if self.wait_for_subscribers_timeout_s <= 0:
            raise ConfigError(f"wait_for_subscribers_timeout_s must be > 0, got {self.wait_for_subscribers_timeout_s}")
        names = [p.name for p in self.pipelines]
        if not names:
            raise ConfigError("no pipelines: give pipelines:, --pipeline or --analyzer")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"duplicate pipeline names {duplicates}")
        self.pipeline_for(None)  # the default exists
        seen: set[str] = set()
        for source in self.sources:
            try:
                validate_stream_id(source.stream_id)
            except SchemaError as exc:
                raise ConfigError(str(exc)) from exc
            if source.stream_id in seen:
                raise ConfigError(f"duplicate stream id {source.stream_id!r}")
            seen.add(source.stream_id)

    def pipeline_for(self, name: str | None, where: str = "config") -> PipelineConfig:
        """The pipeline called ``name`` (None = the default one); ConfigError listing the known ones."""
        by_name = {p.name: p for p in self.pipelines}
        if name is None:
            name = self.default_pipeline or (self.pipelines[0].name if len(self.pipelines) == 1 else DEFAULT_PIPELINE)
            if name not in by_name:
                raise ConfigError(f"{where}: names no pipeline and there is no default one (set default_pipeline: "
                                  f"one of {', '.join(by_name)})")
        if name not in by_name:
            raise ConfigError(f"{where}: unknown pipeline {name!r}; known pipelines: {', '.join(by_name)}")
        return by_name[name]

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "EngineConfig":
        """Load a YAML config (see README); ``overrides`` replace top-level keys."""
        data = read_yaml_mapping(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> "EngineConfig":
        data = dict(data)
        known = set(field_names(cls)) | {"source_defaults", "analyzer"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        defaults = data.pop("source_defaults", None) or {}
        if not isinstance(defaults, Mapping):
            raise ConfigError(f"{where}: source_defaults must be a mapping")
        sources = []
        for i, entry in enumerate(data.pop("sources", None) or []):
            if isinstance(entry, str):
                entry = {"uri": entry}
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{where}: sources[{i}] must be a URI or a mapping")
            merged = {**defaults, **entry}
            merged.setdefault("stream_id", f"s{i}")
            sources.append(build_settings(SourceConfig, merged, f"{where}: sources[{i}]"))
        analyzer = data.pop("analyzer", None)
        if analyzer is not None and "pipelines" in data:
            raise ConfigError(f"{where}: give pipelines: or the legacy analyzer:, not both")
        if analyzer is not None:
            data["pipelines"] = (pipeline_from_analyzer(analyzer, f"{where}: analyzer"),)
        elif "pipelines" in data:
            data["pipelines"] = pipelines_from_mapping(data["pipelines"], f"{where}: pipelines")
        config = build_settings(cls, {**data, "sources": tuple(sources)}, where)
        for source in config.sources:  # (an Engine given stage instances checks against its own pipelines)
            config.pipeline_for(source.pipeline, f"{where}: source {source.stream_id}")
        return config


def pipelines_from_mapping(raw: Any, where: str) -> tuple[PipelineConfig, ...]:
    """``{name: [stage entries]}`` → pipelines."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: must map pipeline names to lists of stages")
    return tuple(pipeline_from_list(str(name), stages, f"{where}.{name}") for name, stages in raw.items())


def pipeline_from_list(name: str, entries: Any, where: str) -> PipelineConfig:
    if isinstance(entries, str):
        entries = list(parse_stage_list(entries))
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ConfigError(f"{where}: a pipeline is a non-empty list of stages")
    return PipelineConfig(name, tuple(stage_from_entry(e, f"{where}[{i}]") for i, e in enumerate(entries)))


def stage_from_entry(entry: Any, where: str) -> StageConfig:
    """``"ovis"`` or ``{stage: ovis, rate: newest, score_threshold: 0.6}`` → StageConfig."""
    from amodal.engine.stages import stage_entry, stage_settings

    if isinstance(entry, str):
        entry = {"stage": entry}
    if not isinstance(entry, Mapping) or "stage" not in entry:
        raise ConfigError(f"{where}: a stage is a name or a mapping with 'stage: NAME', got {entry!r}")
    entry = dict(entry)
    name = entry.pop("stage")
    stage_entry(str(name), where)
    rate = entry.pop("rate", None)
    if isinstance(rate, str):
        rate = {"mode": rate}
    rate_policy = None if rate is None else build_settings(RatePolicy, rate, f"{where}.rate")
    return StageConfig(str(name), stage_settings(str(name), entry, where), rate_policy)


_LEGACY_DETECTION_KEYS = ("weights", "score_threshold", "mask_threshold", "max_detections")


def pipeline_from_analyzer(raw: Any, where: str, name: str = DEFAULT_PIPELINE) -> PipelineConfig:
    """The legacy ``analyzer: {name, weights, score_threshold, …, reid: {…}}`` as a pipeline: ``reid`` means
    ``ovis`` (weights, thresholds) then ``reid`` (the ``reid:`` section), as it always did; ``identity`` takes no
    settings; any other analyzer is a one-stage pipeline with the detection settings."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a name or a mapping")
    raw = dict(raw)
    known = {"name", "reid", *_LEGACY_DETECTION_KEYS}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    analyzer = str(raw.pop("name", "identity"))
    reid = raw.pop("reid", None)
    if analyzer == "identity":
        return PipelineConfig.of(name, ["identity"])
    if analyzer == "reid":
        return PipelineConfig(name, (StageConfig("ovis", stage_from_entry({"stage": "ovis", **raw}, where).settings),
                                     stage_from_entry({"stage": "reid", **(reid or {})}, f"{where}.reid")))
    if reid is not None:
        raise ConfigError(f"{where}: a reid: section needs name: reid")
    return PipelineConfig(name, (stage_from_entry({"stage": analyzer, **raw}, where),))
