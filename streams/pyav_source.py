"""Files and network streams decoded by PyAV: one container per session, closed on every path.

State machine (events on the sink): CONNECTING → UP (first decoded frame of a session) → ENDED at end of
file / ``max_frames`` / stop, or ERROR (fatal: a file that cannot be opened, has no video stream, ended
early or lost frames, or declares frames over ``max_image_pixels``), or, for live sources with
reconnection, RECONNECTING (reason, attempt) → UP again after capped exponential backoff.  Every failure
to open (``av.open`` raising anything, a non-UTF-8 metadata byte included) is an open failure: it
reconnects like the others, or ends a file with a fatal ERROR naming the cause.

A file is checked against what its container says was due (``_Completeness``): the video stream's end
(mp4 stream duration, Matroska's per-track DURATION tag, MPEG-TS first pts + duration), its frame count
(mp4), timestamp gaps in constant-rate streams, packets that did not decode (skipped and counted, decoding
goes on), packets/frames the demuxer/decoder flagged corrupt, and a TS file ending inside a packet.  Frames
missing at the end or in gaps end the file with a fatal ERROR ``"ended early: 37 of ~100 frames (...)"``;
damage without missing frames is named in the ENDED reason (``"end of stream; 2 decode errors"``).  Not
detectable: a file cut exactly at a packet boundary whose container states no length (raw TS), and frames
missing before the first decoded one.

Frames are delivered in decode order, each exactly once, with ``index`` counting across reconnects and
loops.  Files are read as fast as the sink accepts them unless ``realtime`` (then paced at the stream's
timestamps); live sources are never paced here: the reader never sleeps between packets, so latency can
only build up in the engine's (drop-oldest) queue.  ``stop`` is checked between packets; a read stalled on
a dead network peer returns after ``read_timeout_s``.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import av
from av.codec.hwaccel import HWAccel

from amodal.streams.backoff import Backoff
from amodal.streams.base import FrameSink, Source, SourceConfig
from amodal.streams.events import make_event, redact
from amodal.streams.images import ImageTooLargeError, check_pixels
from amodal.streams.planes import frame_planes
from amodal.types import Frame, StreamState

#: URI schemes that carry a live stream (no end, reconnect, drop-oldest); http(s) is live only for HLS
LIVE_SCHEMES = frozenset({"rtmp", "rtmps", "srt", "udp", "rtp", "tcp"})
#: schemes PyAV opens here (besides plain paths); anything else is rejected by ``open_source``
PYAV_SCHEMES = frozenset({"file", "http", "https", "hls", "ftp"}) | LIVE_SCHEMES
#: MPEG-TS packet sizes (plain, M2TS with timecode, with Reed-Solomon parity): a whole file is a multiple of one
_TS_PACKET_BYTES = (188, 192, 204)
#: average and base frame rates closer than this (relative) mean a constant-rate stream: timestamp gaps are losses
_CFR_TOLERANCE = 0.005

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
    damage: str | None = None  # "eof" of a file: damage seen without missing frames ("2 decode errors")


def _mkv_duration_tag_s(value: str | None) -> float | None:
    """Matroska's per-track ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``, the track's end time) in seconds."""
    if not value:
        return None
    try:
        hours, minutes, seconds = value.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _read_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int | None, int]:
    """An EBML variable-size integer at ``pos``: ``(value, next pos)``; value None for "unknown size"."""
    first = data[pos]
    length = 8 - first.bit_length() + 1  # leading zero bits + 1
    if first == 0 or pos + length > len(data):
        raise ValueError("bad EBML integer")
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    all_ones = value == (1 << (8 - length)) - 1
    for byte in data[pos + 1:pos + length]:
        value = (value << 8) | byte
        all_ones = all_ones and byte == 0xFF
    return (None if all_ones and not keep_marker else value), pos + length


def _cut_short(path: str, fmt: str) -> str | None:
    """Whether the file itself is shorter than its container structure says (a cut copy), from the bytes:
    MPEG-TS: the size is no multiple of a TS packet; Matroska: the Segment declares more bytes than follow;
    mp4/mov: a top-level box declares more bytes than follow.  None when whole or when it cannot tell."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if "mpegts" in fmt:
                if all(size % n for n in _TS_PACKET_BYTES):
                    return f"the file ({size} bytes) ends inside a transport-stream packet"
                return None
            if "matroska" in fmt:
                head = f.read(4096)
                _, pos = _read_vint(head, 0, keep_marker=True)  # EBML header id
                header_size, pos = _read_vint(head, pos, keep_marker=False)
                if header_size is None:
                    return None
                pos += header_size
                segment_id, pos = _read_vint(head, pos, keep_marker=True)
                segment_size, pos = _read_vint(head, pos, keep_marker=False)
                if segment_id == 0x18538067 and segment_size is not None and pos + segment_size > size:
                    return f"the Matroska segment declares {pos + segment_size} bytes, the file has {size}"
                return None
            if "mp4" in fmt or "mov" in fmt:
                offset = 0
                for _ in range(10_000):
                    if offset + 8 > size:
                        return None if offset == size else f"the file ({size} bytes) ends inside a box header"
                    f.seek(offset)
                    box = f.read(16)
                    box_size, kind = int.from_bytes(box[:4], "big"), box[4:8].decode("latin-1")
                    if box_size == 1 and len(box) == 16:
                        box_size = int.from_bytes(box[8:16], "big")
                    if box_size == 0:  # extends to the end of the file
                        return None
                    if box_size < 8:
                        return None  # not a box structure we understand: no verdict
                    if offset + box_size > size:
                        return f"the mp4 {kind!r} box declares {offset + box_size} bytes, the file has {size}"
                    offset += box_size
    except (OSError, ValueError, IndexError):
        return None
    return None


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


class _Completeness:
    """What one pass over a file decoded, against what its container says was due.

    Stated end of the video stream (seconds, on the frames' pts clock): ``start_time + duration`` of the
    stream (mp4; MPEG-TS, where FFmpeg reads it from the last pts), else Matroska's per-track DURATION tag,
    else the container's duration when the video is its only stream.  A decoded frame "ends" at
    ``pts + 1/average_rate``.  Missing frames are counted at the end (stated end - last decoded end, in frame
    intervals) and, in constant-rate streams only (average rate = base rate), in timestamp gaps of more than
    1.5 intervals.  One frame short at the end counts only with corroboration (the mp4 frame count, or damage
    seen), since a container may round the last frame's duration.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 frame_s: float) -> None:
        self.frame_s = frame_s
        avg, base = stream.average_rate, stream.base_rate
        self.constant_rate = bool(avg and base) and abs(float(avg) / float(base) - 1.0) < _CFR_TOLERANCE
        self.frames = 0
        self.decode_errors = 0
        self.corrupt_packets = 0
        self.corrupt_frames = 0
        self.gap_frames = 0
        self.gaps = 0
        self.first_gap_s: float | None = None
        self.last_pts_s: float | None = None
        self.stated_frames = int(stream.frames or 0)
        self.stated_end_s, self.stated_what = self._stated_end(container, stream)

    @staticmethod
    def _stated_end(container: av.container.InputContainer,
                    stream: av.video.stream.VideoStream) -> tuple[float | None, str]:
        start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if stream.duration and stream.time_base:
            duration_s = float(stream.duration * stream.time_base)
            return start_s + duration_s, f"stream duration {duration_s:.2f} s"
        tag_s = _mkv_duration_tag_s(stream.metadata.get("DURATION"))
        if tag_s is not None:
            return tag_s, f"track duration {tag_s:.2f} s"
        if container.duration and len(container.streams) == 1:
            duration_s = container.duration / 1e6
            origin_s = container.start_time / 1e6 if container.start_time else 0.0
            return origin_s + duration_s, f"container duration {duration_s:.2f} s"
        return None, ""

    def packet(self, packet: av.Packet) -> None:
        if packet.is_corrupt:
            self.corrupt_packets += 1

    def frame(self, av_frame: av.VideoFrame, pts_s: float | None) -> None:
        self.frames += 1
        if av_frame.is_corrupt:
            self.corrupt_frames += 1
        if pts_s is None:
            return
        if self.last_pts_s is not None and pts_s > self.last_pts_s:
            gap_s = pts_s - self.last_pts_s
            if self.constant_rate and gap_s > 1.5 * self.frame_s:
                self.gaps += 1
                self.gap_frames += round(gap_s / self.frame_s) - 1
                if self.first_gap_s is None:
                    self.first_gap_s = self.last_pts_s
        if self.last_pts_s is None or pts_s > self.last_pts_s:
            self.last_pts_s = pts_s

    def damage(self) -> list[str]:
        """What went wrong without (necessarily) losing frames."""
        notes = []
        if self.decode_errors:
            notes.append(_plural(self.decode_errors, "decode error"))
        if self.corrupt_packets:
            notes.append(_plural(self.corrupt_packets, "corrupt packet"))
        if self.corrupt_frames:
            notes.append(_plural(self.corrupt_frames, "corrupt frame"))
        return notes

    def verdict(self, fmt: str, path: str | None) -> tuple[str | None, str | None]:
        """``(missing, damage)``: why frames are missing (the file ended early / has holes), and damage seen
        without missing frames."""
        damage = self.damage()
        cut = _cut_short(path, fmt) if path is not None else None
        missing_end = 0
        last_end_s = self.last_pts_s + self.frame_s if self.last_pts_s is not None else None
        if self.stated_end_s is not None and last_end_s is not None:
            short_s = self.stated_end_s - last_end_s
            count_short = self.stated_frames > self.frames + self.gap_frames
            if short_s > 1.5 * self.frame_s or (short_s > 0.5 * self.frame_s and (count_short or damage or cut)):
                missing_end = max(1, round(short_s / self.frame_s))
        elif self.stated_frames > self.frames and (damage or cut):  # no usable times: the mp4 count, corroborated
            missing_end = self.stated_frames - self.frames
        if not missing_end and not self.gap_frames and not cut:
            return None, "; ".join(damage) or None
        parts = []
        if missing_end and last_end_s is not None and self.stated_end_s is not None:
            parts.append(f"{self.stated_what}, last frame ends at {last_end_s:.2f} s of {self.stated_end_s:.2f} s")
        if self.gap_frames:
            parts.append(f"{self.gap_frames} missing in {_plural(self.gaps, 'gap')}, the first after "
                         f"{self.first_gap_s:.2f} s")
        if cut:
            parts.append(cut)
        if missing_end or self.gap_frames:
            expected = self.stated_frames or self.frames + self.gap_frames + missing_end
            counted = f"{self.frames} of ~{expected} frames"
        else:  # cut short, but the container's numbers were read from the cut file itself: the loss is unknown
            counted = f"{self.frames} frames, how many more were due is unknown"
        head = "incomplete" if self.gap_frames and not missing_end else "ended early"
        return f"{head}: {counted} ({'; '.join(parts)})" + "".join(f"; {d}" for d in damage), None


class _Progress:
    """Counters that survive reconnects and loops (one per ``run``)."""

    def __init__(self) -> None:
        self.index = 0
        self.corrupt_packets = 0
        self.up = False  # the last state reported was UP (loops do not repeat it)
        self.damage_reported = False  # a looped file's damage is reported once


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
        if isinstance(exc, UnicodeError):
            detail = f"container metadata is not valid text ({exc})"
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
                        if session.damage and not progress.damage_reported:  # once, not at every pass
                            progress.damage_reported = True
                            reason = f"{redact(self.config.uri)}: looping a damaged file: {session.damage}"
                            sink.put_event(make_event(sid, StreamState.ERROR, reason, fatal=False))
                        continue
                    if self.config.loop:
                        reason = f"{redact(self.config.uri)}: no frames decoded, cannot loop"
                        sink.put_event(make_event(sid, StreamState.ERROR, reason, fatal=True))
                        return
                    reason = "end of stream" + (f"; {session.damage}" if session.damage else "")
                    sink.put_event(make_event(sid, StreamState.ENDED, reason))
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
        # metadata is not needed to decode video: a non-UTF-8 title must not make a playable file unopenable
        kwargs: dict = {"options": self.options, "timeout": (self.config.open_timeout_s, self.config.read_timeout_s),
                        "metadata_errors": "replace"}
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
        except Exception as exc:  # FFmpeg/OS errors, and whatever else av.open raises (UnicodeDecodeError ...)
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
        rate = stream.average_rate or stream.guessed_rate
        frame_s = 1.0 / float(rate) if rate else 0.04
        completeness = _Completeness(container, stream, frame_s)
        try:  # the coded size is known once the stream is probed: refuse a huge one before decoding anything
            ctx = stream.codec_context
            check_pixels(f"{redact(self.config.uri)}: video stream", ctx.width, ctx.height,
                         self.config.max_image_pixels)
        except ImageTooLargeError as exc:
            return _Session("failed", reason=str(exc))
        read_started = time.monotonic()
        try:
            for packet in container.demux(stream):
                if stop.is_set():
                    return _Session("stopped", session.frames)
                completeness.packet(packet)
                try:
                    frames = packet.decode()
                except av.InvalidDataError:
                    # a damaged packet: skip it and go on (what follows the next keyframe decodes again);
                    # a file's final event says how many there were
                    completeness.decode_errors += 1
                    progress.corrupt_packets += 1
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
                    try:  # a resolution change mid-stream can declare a huge frame too
                        check_pixels(f"{redact(self.config.uri)}: frame {progress.index}", av_frame.width,
                                     av_frame.height, self.config.max_image_pixels)
                    except ImageTooLargeError as exc:
                        return _Session("failed", session.frames, str(exc))
                    completeness.frame(av_frame, pts_s)
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
                    if self.config.max_frames is not None and progress.index >= self.config.max_frames:
                        return _Session("max-frames", session.frames)
                read_started = time.monotonic()
        except (av.FFmpegError, OSError) as exc:
            reason = self.describe_failure(exc, time.monotonic() - read_started, opening=False)
            return _Session("failed", session.frames, f"{reason} after {session.frames} frames")
        if not self.live:
            uri = redact(self.config.uri)
            if session.frames == 0:
                damage = "; ".join(completeness.damage())
                return _Session("failed", 0, f"{uri}: no frame could be decoded" + (f" ({damage})" if damage else ""))
            path = self.url if os.path.isfile(self.url) else None
            missing, damage = completeness.verdict(container.format.name, path)
            if missing:
                return _Session("failed", session.frames, f"{uri}: {missing}")
            session.damage = damage
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
