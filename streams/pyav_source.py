"""Files and network streams decoded by PyAV: one container per session, closed on every path.

State machine (events on the sink): CONNECTING → UP (first decoded frame of a session) → ENDED at end of
file / ``max_frames`` / stop, or ERROR (fatal: corrupt or truncated file, no video stream), or, for live
sources with reconnection, RECONNECTING (reason, attempt) → UP again after capped exponential backoff.

Frames are delivered in decode order, each exactly once, with ``index`` counting across reconnects and
loops.  Files are read as fast as the sink accepts them unless ``realtime`` (then paced at the stream's
timestamps); live sources are never paced here: the reader never sleeps between packets, so latency can
only build up in the engine's (drop-oldest) queue.  ``stop`` is checked between packets; a read stalled on
a dead network peer returns after ``read_timeout_s``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import av
from av.codec.hwaccel import HWAccel

from amodal.errors import SourceError
from amodal.streams.backoff import Backoff
from amodal.streams.base import FrameSink, Source, SourceConfig
from amodal.streams.events import make_event, redact
from amodal.streams.planes import frame_planes
from amodal.types import Frame, StreamState

#: URI schemes that carry a live stream (no end, reconnect, drop-oldest); http(s) is live only for HLS
LIVE_SCHEMES = frozenset({"rtmp", "rtmps", "srt", "udp", "rtp", "tcp"})
#: schemes PyAV opens here (besides plain paths); anything else is rejected by ``open_source``
PYAV_SCHEMES = frozenset({"file", "http", "https", "hls", "ftp"}) | LIVE_SCHEMES
#: container formats whose header states the duration precisely enough to detect a truncated file
_DURATION_HEADER_FORMATS = ("matroska", "webm", "mov", "mp4")
#: a file counts as truncated when its last frame ends this much (or more) before the stated duration
_TRUNCATION_SLACK_S = 0.25

_Outcome = Literal["eof", "stopped", "sink-closed", "max-frames", "failed"]


def is_live_url(uri: str) -> bool:
    """Whether a PyAV URI is a live stream: rtmp/srt/udp/rtp/tcp, or http(s) HLS (``.m3u8``)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in LIVE_SCHEMES:
        return True
    return scheme in ("http", "https", "hls") and parts.path.lower().endswith(".m3u8")


def _file_path(uri: str) -> str:
    """``file:///a/b.mp4`` → ``/a/b.mp4``; other URIs unchanged."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


@dataclass
class _Session:
    """What one opened container did; ``reason`` explains ``failed``."""

    outcome: _Outcome
    frames: int = 0
    reason: str | None = None


class _Progress:
    """Counters that survive reconnects and loops (one per ``run``)."""

    def __init__(self) -> None:
        self.index = 0
        self.corrupt_packets = 0
        self.up = False  # the last state reported was UP (loops do not repeat it)


class PyAVSource(Source):
    """A file, ``file://``, http(s)/HLS, rtmp, srt ... stream opened with ``av.open``.

    ``live`` defaults from the URI (``is_live_url``); subclasses (RTSP, V4L2) pass it, a container
    ``format_name`` and FFmpeg ``options``.
    """

    def __init__(
        self,
        config: SourceConfig,
        *,
        url: str | None = None,
        live: bool | None = None,
        format_name: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        super().__init__(config)
        self.url = url if url is not None else _file_path(config.uri)
        self.live = is_live_url(config.uri) if live is None else live
        self.format_name = format_name
        self.options = dict(options or {})
        self._hwaccel_failure: str | None = None  # set once the hardware decoder failed to open
        self._progress = _Progress()

    @property
    def corrupt_packets(self) -> int:
        """Packets of a live stream skipped because they did not decode (lost/damaged data)."""
        return self._progress.corrupt_packets

    # -- policy ------------------------------------------------------------------------------------
    @property
    def reconnect(self) -> bool:
        return self.config.reconnect if self.config.reconnect is not None else self.live

    @property
    def paced(self) -> bool:
        """Files are paced at their timestamps only when asked; live streams pace themselves."""
        return bool(self.config.realtime) and not self.live

    # -- hooks for subclasses ----------------------------------------------------------------------
    def capture_time_ns(self, container: av.container.InputContainer, pts_s: float | None, receipt_ns: int) -> int:
        """Wall clock of capture; files and plain network streams only know the receipt time."""
        return receipt_ns

    def describe_failure(self, exc: BaseException, elapsed_s: float, opening: bool) -> str:
        """A one-line reason naming the source (credentials redacted) and what went wrong."""
        what = "open" if opening else "read"
        limit_s = self.config.open_timeout_s if opening else self.config.read_timeout_s
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if isinstance(exc, (av.ExitError, TimeoutError)) or (
            isinstance(exc, av.InvalidDataError) and elapsed_s >= limit_s * 0.95
        ):
            return f"{redact(self.config.uri)}: {what} timed out after {elapsed_s:.1f} s ({detail})"
        return f"{redact(self.config.uri)}: {what} failed: {type(exc).__name__}: {detail}"

    # -- the state machine -------------------------------------------------------------------------
    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        sid = self.stream_id
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        progress = self._progress = _Progress()
        sink.put_event(make_event(sid, StreamState.CONNECTING))
        while True:
            if stop.is_set():
                sink.put_event(make_event(sid, StreamState.ENDED, "stopped"))
                return
            session = self._session(sink, stop, progress, attempt=backoff.attempt)
            if session.frames:
                backoff.reset()
            if session.outcome in ("stopped", "sink-closed", "max-frames"):
                reason = {"stopped": "stopped", "sink-closed": "sink closed", "max-frames": "max_frames reached"}
                sink.put_event(make_event(sid, StreamState.ENDED, reason[session.outcome]))
                return
            if session.outcome == "eof":
                if not self.live:
                    if self.config.loop and session.frames:
                        continue
                    if self.config.loop:
                        reason = f"{redact(self.config.uri)}: no frames decoded, cannot loop"
                        sink.put_event(make_event(sid, StreamState.ERROR, reason, fatal=True))
                        return
                    sink.put_event(make_event(sid, StreamState.ENDED, "end of stream"))
                    return
                session.reason = f"{redact(self.config.uri)}: stream ended (end of file or connection closed)"
                if not self.reconnect:
                    sink.put_event(make_event(sid, StreamState.ENDED, session.reason))
                    return
            if not self.reconnect:
                sink.put_event(make_event(sid, StreamState.ERROR, session.reason, fatal=True))
                return
            delay_s = backoff.next_delay_s()
            progress.up = False
            sink.put_event(make_event(sid, StreamState.RECONNECTING, session.reason, attempt=backoff.attempt))
            if stop.wait(delay_s):
                sink.put_event(make_event(sid, StreamState.ENDED, "stopped"))
                return

    def _open(self) -> tuple[av.container.InputContainer, str | None]:
        """Open the container (hardware decoding first when asked); returns it and a fallback note."""
        kwargs: dict = {"options": self.options, "timeout": (self.config.open_timeout_s, self.config.read_timeout_s)}
        if self.format_name:
            kwargs["format"] = self.format_name
        wants_hw = self.config.hwaccel in ("cuda", "auto") and self._hwaccel_failure is None
        if wants_hw:
            try:
                return av.open(self.url, hwaccel=HWAccel(device_type="cuda", allow_software_fallback=True), **kwargs), None
            except (av.FFmpegError, OSError) as exc:
                hw_error = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
            container = av.open(self.url, **kwargs)  # raises the source's own problem if it has one
            self._hwaccel_failure = f"hwaccel cuda unavailable ({hw_error}); decoding on CPU"
            return container, (self._hwaccel_failure if self.config.hwaccel == "cuda" else None)
        note = self._hwaccel_failure if self.config.hwaccel == "cuda" else None
        return av.open(self.url, **kwargs), note

    def _session(self, sink: FrameSink, stop: threading.Event, progress: _Progress, attempt: int) -> _Session:
        started = time.monotonic()
        try:
            container, note = self._open()
        except (av.FFmpegError, OSError, SourceError) as exc:
            return _Session("failed", reason=self.describe_failure(exc, time.monotonic() - started, opening=True))
        try:
            return self._decode(container, note, sink, stop, progress, attempt)
        except Exception as exc:  # run() must never raise: anything unexpected becomes this session's failure
            return _Session("failed", reason=f"{redact(self.config.uri)}: unexpected {type(exc).__name__}: {exc}")
        finally:
            container.close()

    def _decode(
        self,
        container: av.container.InputContainer,
        note: str | None,
        sink: FrameSink,
        stop: threading.Event,
        progress: _Progress,
        attempt: int,
    ) -> _Session:
        sid = self.stream_id
        if not container.streams.video:
            return _Session("failed", reason=f"{redact(self.config.uri)}: no video stream")
        stream = container.streams.video[0]
        # frame threading delays every output by thread_count frames: live streams use slice threads only
        stream.thread_type = "SLICE" if self.live else "AUTO"
        if self.config.decode_threads:
            stream.codec_context.thread_count = self.config.decode_threads
        session = _Session("eof")
        pace_origin: tuple[int, float] | None = None  # (monotonic ns, pts s) of the session's first frame
        last_end_s: float | None = None
        frame_s = 1.0 / float(stream.average_rate) if stream.average_rate else 0.04
        read_started = time.monotonic()
        try:
            for packet in container.demux(stream):
                if stop.is_set():
                    return _Session("stopped", session.frames)
                try:
                    frames = packet.decode()
                except av.InvalidDataError as exc:
                    if not self.live:
                        reason = (f"{redact(self.config.uri)}: corrupt data after {session.frames} frames "
                                  f"({getattr(exc, 'strerror', None) or exc})")
                        return _Session("failed", session.frames, reason)
                    progress.corrupt_packets += 1  # a lost packet on a live stream: skip it
                    continue
                for av_frame in frames:
                    receipt_ns = time.time_ns()
                    mono_ns = time.monotonic_ns()
                    if not progress.up:
                        progress.up = True
                        sink.put_event(make_event(sid, StreamState.UP, note, attempt=attempt))
                    pts_s = float(av_frame.time) if av_frame.time is not None else None
                    if self.paced:
                        pace_origin = self._pace(pace_origin, pts_s, session.frames, frame_s, stop)
                        if stop.is_set():
                            return _Session("stopped", session.frames)
                        # a paced file frame is "captured" when it is released, as a camera's would be
                        receipt_ns, mono_ns = time.time_ns(), time.monotonic_ns()
                    pixel_format, planes = frame_planes(av_frame)
                    frame = Frame(
                        stream_id=sid,
                        index=progress.index,
                        pts_s=pts_s,
                        capture_time_ns=self.capture_time_ns(container, pts_s, receipt_ns),
                        received_mono_ns=mono_ns,
                        pixel_format=pixel_format,
                        planes=planes,
                        width=av_frame.width,
                        height=av_frame.height,
                    )
                    if not sink.put_frame(frame):
                        return _Session("sink-closed", session.frames)
                    progress.index += 1
                    session.frames += 1
                    if pts_s is not None:
                        last_end_s = pts_s + frame_s
                    if self.config.max_frames is not None and progress.index >= self.config.max_frames:
                        return _Session("max-frames", session.frames)
                read_started = time.monotonic()
        except (av.FFmpegError, OSError) as exc:
            reason = self.describe_failure(exc, time.monotonic() - read_started, opening=False)
            return _Session("failed", session.frames, f"{reason} after {session.frames} frames")
        if not self.live:
            truncated = self._truncation(container, stream, session.frames, last_end_s)
            if truncated:
                return _Session("failed", session.frames, truncated)
        return session

    def _pace(
        self, origin: tuple[int, float] | None, pts_s: float | None, n: int, frame_s: float, stop: threading.Event
    ) -> tuple[int, float]:
        """Wait until this frame's time relative to the session's first frame; returns the origin."""
        t_s = pts_s if pts_s is not None else n * frame_s
        if origin is None:
            return time.monotonic_ns(), t_s
        due_ns = origin[0] + int((t_s - origin[1]) * 1e9)
        wait_s = (due_ns - time.monotonic_ns()) / 1e9
        if wait_s > 0:
            stop.wait(wait_s)
        return origin

    def _truncation(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream, frames: int,
        last_end_s: float | None,
    ) -> str | None:
        """A reason when the file ended before what its header promised (frame count or duration)."""
        uri = redact(self.config.uri)
        if frames == 0:
            return f"{uri}: no frame could be decoded"
        if stream.frames and frames < stream.frames:
            return f"{uri}: truncated: decoded {frames} of {stream.frames} frames"
        fmt = container.format.name
        if container.duration and last_end_s is not None and any(f in fmt for f in _DURATION_HEADER_FORMATS):
            duration_s = container.duration / 1e6
            start_s = container.start_time / 1e6 if container.start_time else 0.0
            if last_end_s - start_s < duration_s - _TRUNCATION_SLACK_S:
                return (f"{uri}: truncated: stream ends at {last_end_s - start_s:.2f} s of a stated "
                        f"{duration_s:.2f} s ({frames} frames decoded)")
        return None
