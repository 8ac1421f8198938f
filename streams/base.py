"""The contract between sources and the engine.

A source is an explicit state machine (connecting → up → reconnecting/ended/error) run by one engine
thread: ``Source.run(sink, stop)`` opens, decodes and pushes ``Frame``s and ``StreamEvent``s into the
sink until the stream ends, a fatal error happens, or ``stop`` is set.  ``run`` never raises for source
problems: it reports them as events (``StreamState.ERROR`` with a reason) and returns.
"""
from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from typing import Literal, Protocol

from amodal.errors import ConfigError
from amodal.types import CameraIntrinsics, Frame, StreamEvent

OverflowPolicy = Literal["block", "drop-oldest"]


class FrameSink(Protocol):
    """Where a source delivers; implemented by the engine's per-source bounded queue."""

    def put_frame(self, frame: Frame) -> bool:
        """Deliver a frame; returns False when the engine no longer wants frames (then stop)."""

    def put_event(self, event: StreamEvent) -> None:
        """Report a state change."""


@dataclass(frozen=True)
class SourceConfig:
    """Per-source settings (one per ``--source`` or per entry of the YAML config's ``sources:``)."""

    uri: str
    stream_id: str
    realtime: bool | None = None  # pace file sources at the stream rate; None = live sources only
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    reconnect: bool | None = None  # None = reconnect live sources (rtsp, http live, v4l2), not files
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    decode_threads: int = 0  # 0 = let FFmpeg choose
    hwaccel: Literal["auto", "none", "cuda"] = "none"
    queue_size: int = 0  # 0 = default (2 for live, 16 for files)
    overflow: OverflowPolicy | None = None  # None = drop-oldest for live sources, block for files
    loop: bool = False  # restart files at EOF (demos)
    max_frames: int | None = None  # stop after this many frames
    poll_interval_s: float = 0.05  # scanner hot-folder polling
    # one decoded-size limit for every decoder (scanner PNG/TIFF/JPEG/BMP, video frames), checked from the header
    # before decoding: 100 MP covers the largest X-ray scans (~10k x 8k cargo) and 8K video (33 MP) while keeping
    # one frame at most 300 MB (RGB) / 200 MB (16-bit), so a tiny file declaring 40000 x 40000 cannot take GBs
    max_image_pixels: int = 100_000_000
    pipeline: str | None = None  # the engine pipeline this source runs through (None = the engine's default)
    camera: CameraIntrinsics | None = None  # intrinsics K or field of view, for stages that reason in 3-D (eoras)

    def __post_init__(self) -> None:
        if not self.uri:
            raise ConfigError("source uri is empty")
        if not self.stream_id:
            raise ConfigError(f"source {self.uri!r} has an empty stream_id")
        for name in ("open_timeout_s", "read_timeout_s", "backoff_initial_s", "backoff_max_s", "poll_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"source {self.stream_id}: {name} must be > 0, got {getattr(self, name)}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(f"source {self.stream_id}: backoff_max_s < backoff_initial_s")
        if self.queue_size < 0:
            raise ConfigError(f"source {self.stream_id}: queue_size must be >= 0, got {self.queue_size}")
        if self.overflow not in (None, "block", "drop-oldest"):
            raise ConfigError(f"source {self.stream_id}: overflow must be 'block' or 'drop-oldest', got {self.overflow!r}")
        if self.hwaccel not in ("auto", "none", "cuda"):
            raise ConfigError(f"source {self.stream_id}: hwaccel must be auto/none/cuda, got {self.hwaccel!r}")
        if self.max_frames is not None and self.max_frames <= 0:
            raise ConfigError(f"source {self.stream_id}: max_frames must be > 0")
        if self.max_image_pixels <= 0:
            raise ConfigError(f"source {self.stream_id}: max_image_pixels must be > 0, got {self.max_image_pixels}")


class Source(abc.ABC):
    """A stream of frames.  Subclasses set ``live`` and implement ``run``."""

    #: live sources (cameras) default to drop-oldest queues and reconnection; files to block
    live: bool = False

    def __init__(self, config: SourceConfig) -> None:
        self.config = config

    @property
    def stream_id(self) -> str:
        return self.config.stream_id

    @property
    def overflow(self) -> OverflowPolicy:
        if self.config.overflow is not None:
            return self.config.overflow
        return "drop-oldest" if self.live else "block"

    @property
    def queue_size(self) -> int:
        if self.config.queue_size:
            return self.config.queue_size
        return 2 if self.live else 16

    @abc.abstractmethod
    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        """Deliver frames and events until the end, a fatal error, or ``stop``; never raises."""
