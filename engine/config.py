"""Engine configuration: one frozen dataclass, loaded from CLI flags or a YAML file."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from amodal.errors import ConfigError, SchemaError
from amodal.schema import validate_stream_id
from amodal.streams.base import SourceConfig


@dataclass(frozen=True)
class ReidConfig:
    """The ``reid`` stage on person tracks: MBF weights, the gallery and its query endpoint.

    ``weights``: MBF safetensors (None = the shipped ones); ``gallery_path``: where the gallery is restored from
    and saved to (None = in memory only); ``save_interval_s``: autosave period (0 = only at shutdown);
    ``match_threshold``: cosine similarity a new track needs to join a known identity (None = the weights'
    measured equal-error threshold of cross-camera same-person pairs, else 0.6); ``min_observations``:
    frames a track is seen before it gets an identity; ``query_endpoint``: ZeroMQ REP endpoint answering gallery
    queries (None = no endpoint); ``min_box_height_px``: person boxes shorter than this are not embedded;
    ``track_lost_frames``: a person track not seen for this many frames of its stream is ended in the gallery,
    so that its identity can go to a new track of the same stream (the person re-appearing after a break).
    """

    weights: str | None = None
    gallery_path: str | None = None
    save_interval_s: float = 10.0
    match_threshold: float | None = None
    min_observations: int = 3
    query_endpoint: str | None = None
    person_class: str = "person"
    min_box_height_px: float = 16.0
    track_lost_frames: int = 25

    def __post_init__(self) -> None:
        if self.match_threshold is not None and not -1.0 <= self.match_threshold <= 1.0:
            raise ConfigError(f"analyzer.reid.match_threshold is a cosine similarity in [-1, 1], got {self.match_threshold}")
        if self.min_observations < 1:
            raise ConfigError(f"analyzer.reid.min_observations must be >= 1, got {self.min_observations}")
        if self.save_interval_s < 0:
            raise ConfigError(f"analyzer.reid.save_interval_s must be >= 0, got {self.save_interval_s}")
        if self.track_lost_frames < 1:
            raise ConfigError(f"analyzer.reid.track_lost_frames must be >= 1, got {self.track_lost_frames}")
        if self.min_box_height_px < 0:
            raise ConfigError(f"analyzer.reid.min_box_height_px must be >= 0, got {self.min_box_height_px}")


@dataclass(frozen=True)
class AnalyzerConfig:
    """Which analyzer runs and its settings (``weights`` is a local file; nothing is downloaded).

    For ``reid``, ``weights`` are the primary ``ovis`` stage's and ``reid`` configures the secondary stage."""

    name: str = "identity"
    weights: str | None = None
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    max_detections: int = 100
    reid: ReidConfig = field(default_factory=ReidConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"analyzer.score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ConfigError(f"analyzer.mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if self.max_detections <= 0:
            raise ConfigError(f"analyzer.max_detections must be > 0, got {self.max_detections}")


@dataclass(frozen=True)
class EngineConfig:
    """Sources, analyzer, batching, device and publishing of one engine."""

    sources: tuple[SourceConfig, ...] = ()
    analyzer: AnalyzerConfig = field(default_factory=AnalyzerConfig)
    publish: str = "tcp://127.0.0.1:5555"
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    send_hwm: int = 10000  # per-subscriber queue in the PUB socket; a slow subscriber loses, never slows
    linger_ms: int = 2000  # how long close() waits to flush queued messages
    metrics_interval_s: float = 1.0
    exit_when_done: bool = True  # stop when every source has ended (files); live sources never end

    def __post_init__(self) -> None:
        if self.max_batch_size <= 0:
            raise ConfigError(f"max_batch_size must be > 0, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.send_hwm <= 0 or self.linger_ms < 0 or self.metrics_interval_s <= 0:
            raise ConfigError("send_hwm and metrics_interval_s must be > 0, linger_ms >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        seen: set[str] = set()
        for source in self.sources:
            try:
                validate_stream_id(source.stream_id)
            except SchemaError as exc:
                raise ConfigError(str(exc)) from exc
            if source.stream_id in seen:
                raise ConfigError(f"duplicate stream id {source.stream_id!r}")
            seen.add(source.stream_id)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "EngineConfig":
        """Load a YAML config (see README); ``overrides`` replace top-level keys."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "EngineConfig":
        data = dict(data)
        known = {f.name for f in fields(cls)} | {"source_defaults"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        defaults = data.pop("source_defaults", None) or {}
        sources = []
        for i, entry in enumerate(data.pop("sources", None) or []):
            if isinstance(entry, str):
                entry = {"uri": entry}
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: sources[{i}] must be a URI or a mapping")
            merged = {**defaults, **entry}
            merged.setdefault("stream_id", f"s{i}")
            sources.append(_build(SourceConfig, merged, f"{where}: sources[{i}]"))
        analyzer = data.pop("analyzer", None) or {}
        if isinstance(analyzer, str):
            analyzer = {"name": analyzer}
        if not isinstance(analyzer, dict):
            raise ConfigError(f"{where}: analyzer must be a name or a mapping")
        if "reid" in analyzer:
            reid = analyzer["reid"] or {}
            if not isinstance(reid, dict):
                raise ConfigError(f"{where}: analyzer.reid must be a mapping")
            analyzer = {**analyzer, "reid": _build(ReidConfig, reid, f"{where}: analyzer.reid")}
        return _build(cls, {**data, "sources": tuple(sources), "analyzer": _build(AnalyzerConfig, analyzer, f"{where}: analyzer")}, where)


def _build(kind: type, values: dict[str, Any], where: str):
    names = {f.name for f in fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(names)}")
    try:
        return kind(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
