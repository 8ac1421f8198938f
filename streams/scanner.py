"""X-ray scanner hot folder: ``scanner://DIR?settle_s=0.2&skip_existing=0&give_up_s=5``.

Every new complete image file in ``DIR`` (PNG, TIFF, JPEG, BMP; 8/16-bit grayscale or RGB pseudo-colour)
becomes one frame.  A half-written file is never delivered:

* names of the atomic-write convention are ignored: dot-files and ``*.tmp``, ``*.partial``, ``*.part``,
  ``*.crdownload``, ``*.filepart``, ``*~`` (the scanner renames them when done, and the final name is picked
  up like any other file);
* any other file must have kept the same size and mtime for ``settle_s`` (default ``max(0.2,
  2 * poll_interval_s)``) AND decode completely; a stable file that still does not decode is retried
  until it has been stable for ``give_up_s`` (default ``read_timeout_s``), then reported with a non-fatal
  ERROR event naming the file and skipped (until its size or mtime change again).

Order: by modification time, then name.  A ready file is held back while an older (by that order) file is
still settling, so delivery order follows the order of the files' completion by the scanner.  Files present
when the source starts are delivered first unless ``skip_existing=1``.  ``pts_s`` is the file's mtime
relative to the first delivered file's mtime and ``capture_time_ns`` is its mtime (the scanner's write
time).  A missing folder is reported as RECONNECTING and retried with backoff.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from amodal.errors import ConfigError, SourceError
from amodal.streams.backoff import Backoff
from amodal.streams.base import FrameSink, Source, SourceConfig
from amodal.streams.events import make_event
from amodal.streams.images import IMAGE_SUFFIXES, decode_image
from amodal.types import Frame, StreamState

TEMP_SUFFIXES = (".tmp", ".partial", ".part", ".crdownload", ".filepart", "~")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class ScannerSettings:
    """Hot-folder settings parsed from the ``scanner://`` URI."""

    folder: Path
    settle_s: float
    give_up_s: float
    skip_existing: bool

    def __post_init__(self) -> None:
        if self.settle_s <= 0 or self.give_up_s < self.settle_s:
            raise ConfigError(
                f"scanner {self.folder}: need 0 < settle_s <= give_up_s, got settle_s={self.settle_s}, "
                f"give_up_s={self.give_up_s}"
            )


def parse_scanner_uri(config: SourceConfig) -> ScannerSettings:
    """``scanner://DIR`` (absolute ``scanner:///data/in`` or relative ``scanner://in``) with query options."""
    uri = config.uri
    if not uri.startswith("scanner://"):
        raise ConfigError(f"not a scanner URI: {uri!r}")
    rest = uri[len("scanner://"):]
    parts = urlsplit("x://h/" + rest)  # only to split path and query; the folder may be relative
    folder = unquote(parts.path[len("/"):])
    if not folder:
        raise ConfigError(f"scanner URI has no folder: {uri!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"settle_s", "give_up_s", "skip_existing"})
    if unknown:
        raise ConfigError(f"{uri!r}: unknown scanner options {unknown}; allowed: settle_s, give_up_s, skip_existing")
    try:
        settle_s = float(query.get("settle_s", max(0.2, 2 * config.poll_interval_s)))
        give_up_s = float(query.get("give_up_s", max(config.read_timeout_s, settle_s)))
    except ValueError as exc:
        raise ConfigError(f"{uri!r}: settle_s/give_up_s must be numbers ({exc})") from exc
    skip = query.get("skip_existing", "0").lower()
    if skip not in _TRUE + _FALSE:
        raise ConfigError(f"{uri!r}: skip_existing must be 0/1, got {skip!r}")
    return ScannerSettings(Path(folder), settle_s, give_up_s, skip in _TRUE)


def is_candidate(name: str) -> bool:
    """Whether a directory entry name may be a finished image (not a temp/hidden/unknown file)."""
    lower = name.lower()
    if name.startswith(".") or lower.endswith(TEMP_SUFFIXES):
        return False
    return os.path.splitext(lower)[1] in IMAGE_SUFFIXES


@dataclass
class _Pending:
    """A file seen but not yet delivered: its last (size, mtime) and since when it has not changed."""

    size: int
    mtime_ns: int
    stable_since_s: float


class ScannerSource(Source):
    """Polls a folder every ``poll_interval_s`` and delivers each completed image once."""

    live = True

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self.settings = parse_scanner_uri(config)
        self._failed: dict[str, tuple[int, int]] = {}

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        sid = self.stream_id
        folder = self.settings.folder
        reconnect = self.config.reconnect if self.config.reconnect is not None else True
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        pending: dict[str, _Pending] = {}
        done: set[str] = set()
        self._failed: dict[str, tuple[int, int]] = {}  # skipped undecodable files: (size, mtime_ns)
        index = 0
        first_mtime_ns: int | None = None
        up = False
        sink.put_event(make_event(sid, StreamState.CONNECTING))
        while not stop.is_set():
            try:
                entries = _list_candidates(folder)
            except OSError as exc:
                reason = f"scanner folder {folder}: {type(exc).__name__}: {exc.strerror or exc}"
                if not reconnect:
                    sink.put_event(make_event(sid, StreamState.ERROR, reason, fatal=True))
                    return
                up = False
                delay_s = backoff.next_delay_s()
                sink.put_event(make_event(sid, StreamState.RECONNECTING, reason, attempt=backoff.attempt))
                if stop.wait(delay_s):
                    break
                continue
            if not up:
                if self.settings.skip_existing and index == 0 and not done:
                    done.update(entries)
                up = True
                sink.put_event(make_event(sid, StreamState.UP, attempt=backoff.attempt))
                backoff.reset()
            now_s = time.monotonic()
            for name in self._ready(entries, pending, done, now_s):
                if stop.is_set():
                    break
                frame = self._read(folder / name, pending, done, now_s, sink, index, first_mtime_ns)
                if frame is None:
                    continue
                if first_mtime_ns is None:
                    first_mtime_ns = frame.capture_time_ns
                if not sink.put_frame(frame):
                    sink.put_event(make_event(sid, StreamState.ENDED, "sink closed"))
                    return
                index += 1
                if self.config.max_frames is not None and index >= self.config.max_frames:
                    sink.put_event(make_event(sid, StreamState.ENDED, "max_frames reached"))
                    return
            stop.wait(self.config.poll_interval_s)
        sink.put_event(make_event(sid, StreamState.ENDED, "stopped"))

    def _ready(
        self, entries: dict[str, os.stat_result], pending: dict[str, _Pending], done: set[str], now_s: float
    ) -> list[str]:
        """Update what is settling; return names stable for ``settle_s``, oldest first, none after a
        file that is still settling (so delivery keeps the mtime-then-name order)."""
        for name in list(pending):
            if name not in entries:  # deleted or renamed away before it settled
                del pending[name]
        for name, st in entries.items():
            if name in self._failed and self._failed[name] != (st.st_size, st.st_mtime_ns):
                del self._failed[name]  # a skipped file was rewritten: give it another chance
                done.discard(name)
            if name in done:
                continue
            seen = pending.get(name)
            if seen is None or seen.size != st.st_size or seen.mtime_ns != st.st_mtime_ns:
                pending[name] = _Pending(st.st_size, st.st_mtime_ns, now_s)
        ready: list[str] = []
        for name in sorted(pending, key=lambda n: (pending[n].mtime_ns, n)):
            item = pending[name]
            if item.size == 0 or now_s - item.stable_since_s < self.settings.settle_s:
                break
            ready.append(name)
        return ready

    def _read(
        self, path: Path, pending: dict[str, _Pending], done: set[str], now_s: float, sink: FrameSink, index: int,
        first_mtime_ns: int | None,
    ) -> Frame | None:
        """Decode a settled file; None when it is not (yet) a complete image or changed meanwhile."""
        item = pending[path.name]
        try:
            pixel_format, planes = decode_image(path)
            st = path.stat()
        except (SourceError, OSError) as exc:
            if not path.exists():
                del pending[path.name]
            elif now_s - item.stable_since_s >= self.settings.give_up_s:
                del pending[path.name]
                done.add(path.name)
                self._failed[path.name] = (item.size, item.mtime_ns)
                reason = f"scanner file {path} is not a decodable image, skipped: {exc}"
                sink.put_event(make_event(self.stream_id, StreamState.ERROR, reason, fatal=False))
            return None
        if st.st_size != item.size or st.st_mtime_ns != item.mtime_ns:
            pending[path.name] = _Pending(st.st_size, st.st_mtime_ns, time.monotonic())  # written meanwhile
            return None
        del pending[path.name]
        done.add(path.name)
        origin_ns = first_mtime_ns if first_mtime_ns is not None else item.mtime_ns
        height, width = planes[0].shape[:2]
        return Frame(
            stream_id=self.stream_id,
            index=index,
            pts_s=(item.mtime_ns - origin_ns) / 1e9,
            capture_time_ns=item.mtime_ns,
            received_mono_ns=time.monotonic_ns(),
            pixel_format=pixel_format,
            planes=planes,
            width=width,
            height=height,
        )


def _list_candidates(folder: Path) -> dict[str, os.stat_result]:
    """Regular files in ``folder`` whose names may be finished images, with their stat."""
    entries: dict[str, os.stat_result] = {}
    with os.scandir(folder) as it:
        for entry in it:
            if not is_candidate(entry.name):
                continue
            try:
                if entry.is_file():
                    entries[entry.name] = entry.stat()
            except FileNotFoundError:  # vanished between listing and stat
                continue
    return entries
