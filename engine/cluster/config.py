"""The cluster's configuration: a site file is an engine config (pipelines, sources) plus a ``cluster:`` section.

```yaml
cluster:
  address: auto                 # the Ray cluster to join (auto = the one `amodal cluster up` started)
  jetstream: {servers: [nats://10.0.0.1:4222, nats://10.0.0.2:4222, nats://10.0.0.3:4222], replicas: 3,
              max_age_s: 86400, max_bytes: 50000000000}
  num_cpus: 1                   # what each stream asks for unless its source entry says otherwise
  num_gpus: 0
  max_restarts: -1              # restarts of a stream's worker after node deaths (-1 = for ever)
pipelines:
  cameras: [ovis, {stage: reid, gallery: "ray://amodal-gallery", gallery_path: /shared/gallery.amg}]
sources:
  - {uri: "rtsp://10.0.1.5/s1", stream_id: door, pipeline: cameras, resources: {GPU: 1, memory: 4e9}}
  - {uri: "rtsp://10.0.1.6/s1", stream_id: hall, pipeline: cameras}
```

A source's ``resources`` map Ray resources: ``CPU``, ``GPU``, ``memory`` (bytes) and any custom resource a node was
started with (``amodal cluster up --resources '{"camera_node": 8}'``); the stream's worker is placed only on a node
that has them.  Everything else in the file is the engine config (``EngineConfig.from_dict``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amodal.engine.config import EngineConfig
from amodal.errors import ConfigError
from amodal.settings import build_settings, read_yaml_mapping
from amodal.subscriber_nats import STREAM_NAME, as_servers

NAMESPACE = "amodal"  # the Ray namespace of every named actor the cluster starts
WORKER_PREFIX = "amodal-stream-"


@dataclass(frozen=True)
class JetStreamSettings:
    """Where results go: ``servers`` (NATS URLs), the JetStream ``stream`` capturing ``amodal.>`` and its limits:
    ``replicas`` (1, or 3 on a three-server cluster: a write is stored once a majority has it), ``max_age_s`` and
    ``max_bytes`` (-1 = unlimited; the oldest messages go first), ``duplicate_window_s`` (messages with a
    ``Nats-Msg-Id`` seen within it are stored once); ``publish_timeout_s`` per acknowledged publish;
    ``max_pending``: messages a sink holds while the servers do not acknowledge (beyond: the oldest are dropped and
    counted); ``connect_timeout_s`` for the first connection and the stream to appear."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream: str = STREAM_NAME
    replicas: int = 1
    max_age_s: float = 24 * 3600.0
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    publish_timeout_s: float = 5.0
    max_pending: int = 20000
    connect_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "servers", tuple(as_servers(self.servers)))
        if self.replicas not in (1, 2, 3, 4, 5):
            raise ConfigError(f"jetstream replicas must be 1-5, got {self.replicas!r}")
        for name in ("max_age_s", "duplicate_window_s", "publish_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"jetstream {name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.max_bytes, int) or (self.max_bytes < 1 and self.max_bytes != -1):
            raise ConfigError(f"jetstream max_bytes must be -1 (unlimited) or > 0, got {self.max_bytes!r}")
        if not isinstance(self.max_pending, int) or self.max_pending < 1:
            raise ConfigError(f"jetstream max_pending must be an int >= 1, got {self.max_pending!r}")
        if not self.stream.isidentifier():
            raise ConfigError(f"jetstream stream name must be letters, digits and '_', got {self.stream!r}")


@dataclass(frozen=True)
class StreamResources:
    """What one stream's worker asks Ray for: ``num_cpus``, ``num_gpus``, ``memory_bytes`` (None = no memory
    reservation) and custom ``resources``."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.memory_bytes is not None and (not isinstance(self.memory_bytes, (int, float)) or self.memory_bytes <= 0):
            raise ConfigError(f"memory must be a number of bytes > 0, got {self.memory_bytes!r}")
        for key, value in self.resources.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"resource {key!r} must be a number > 0, got {value!r}")
        object.__setattr__(self, "resources", dict(self.resources))

    @classmethod
    def from_mapping(cls, raw: Any, defaults: "StreamResources", where: str) -> "StreamResources":
        """``{CPU: 1, GPU: 1, memory: 4e9, <custom>: n}`` on top of ``defaults``."""
        if raw is None:
            return defaults
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: resources must be a mapping like {{GPU: 1, memory: 4e9}}, got {raw!r}")
        raw = dict(raw)
        custom = {str(k): v for k, v in raw.items() if k not in ("CPU", "GPU", "memory")}
        memory = raw.get("memory", defaults.memory_bytes)
        try:
            return cls(num_cpus=raw.get("CPU", defaults.num_cpus), num_gpus=raw.get("GPU", defaults.num_gpus),
                       memory_bytes=None if memory is None else int(float(memory)),
                       resources={**defaults.resources, **custom})
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes is not None:
            options["memory"] = int(self.memory_bytes)
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


@dataclass(frozen=True)
class ClusterSettings:
    """The ``cluster:`` section: ``address`` of the Ray cluster (``auto`` = the local one ``amodal cluster up``
    started), ``jetstream``, the per-stream defaults ``num_cpus``/``num_gpus``/``memory``/``resources``,
    ``max_restarts`` of a stream's worker (-1 = unlimited) and the ``strategy`` spreading workers over nodes."""

    address: str = "auto"
    jetstream: JetStreamSettings = field(default_factory=JetStreamSettings)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: float | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    max_restarts: int = -1
    strategy: str = "SPREAD"

    def __post_init__(self) -> None:
        if not isinstance(self.max_restarts, int) or self.max_restarts < -1:
            raise ConfigError(f"cluster max_restarts must be an int >= -1, got {self.max_restarts!r}")
        if self.strategy not in ("SPREAD", "DEFAULT"):
            raise ConfigError(f"cluster strategy must be SPREAD or DEFAULT, got {self.strategy!r}")

    @property
    def defaults(self) -> StreamResources:
        return StreamResources(self.num_cpus, self.num_gpus,
                               None if self.memory is None else int(float(self.memory)), dict(self.resources))


@dataclass(frozen=True)
class SiteConfig:
    """A site: the engine config of every stream, the cluster settings, and each stream's resources."""

    engine: EngineConfig
    cluster: ClusterSettings
    resources: Mapping[str, StreamResources]

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SiteConfig":
        return cls.from_dict(read_yaml_mapping(path, "site config"), where=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "site config") -> "SiteConfig":
        data = dict(data)
        cluster = build_settings(ClusterSettings, data.pop("cluster", None), f"{where}: cluster")
        raw_resources: dict[int, Any] = {}
        sources = []
        for i, entry in enumerate(data.get("sources") or []):
            if isinstance(entry, Mapping) and "resources" in entry:
                entry = dict(entry)
                raw_resources[i] = entry.pop("resources")
            sources.append(entry)
        if sources:
            data["sources"] = sources
        engine = EngineConfig.from_dict(data, where)
        if not engine.sources:
            raise ConfigError(f"{where}: no sources to place")
        resources = {s.stream_id: StreamResources.from_mapping(raw_resources.get(i), cluster.defaults,
                                                               f"{where}: sources[{i}]")
                     for i, s in enumerate(engine.sources)}
        return cls(engine, cluster, resources)
