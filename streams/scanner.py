"""X-ray scanner hot folder: ``scanner://DIR?settle_s=0.2&skip_existing=0&give_up_s=5``.

Every new complete image file in ``DIR`` (PNG, TIFF, JPEG, BMP; 8/16-bit grayscale or RGB pseudo-colour)
becomes one frame.  DICOS / DICOM files (``*.dcm``, ``*.dicos``, or any other name whose content starts with the
``DICM`` preamble) are decoded by ``amodal.streams.dicom``: 16-bit pixel data as ``gray16`` with the rescale slope and
intercept applied, each frame of a multi-frame file one frame (in file order, ``pts_s`` advancing by the file's
Frame Time when it has one), and the scan's identifiers (scanner, bag, series, acquisition time, frame k of N) in
``Frame.scan``, which the engine publishes with the frame's results.  A half-written file is never delivered:

* names of the atomic-write convention are ignored: dot-files and ``*.tmp``, ``*.partial``, ``*.part``,
  ``*.crdownload``, ``*.filepart``, ``*~`` (the scanner renames them when done, and the final name is picked
  up like any other file);
* any other file must have kept the same size and mtime for ``settle_s`` (default ``max(0.2,
  2 * poll_interval_s)``) AND decode completely; a stable file that does not decode (an empty one
  included) is retried every ``settle_s`` until it has been stable for ``give_up_s`` (default
  ``read_timeout_s``), then reported with a non-fatal ERROR event naming the file and skipped (until its
  size or mtime change again).  An image whose header declares more than ``max_image_pixels`` is skipped
  at once with a non-fatal ERROR naming the file and its size, before anything is decoded.

Order: by modification time, then name.  A ready file is held back while an older (by that order) file is
still settling (its size or mtime still changing), so delivery order follows the order of the files'
completion by the scanner; a stable file that does not decode holds back nothing.  A file rewritten under
a delivered name, or a new file re-using the name of a removed one, is a new bag.  Files present when the
source starts are delivered first unless ``skip_existing=1``.  ``pts_s`` is the file's mtime relative to
the first delivered file's mtime and ``capture_time_ns`` is its mtime (the scanner's write time).  A
missing or unreadable folder is reported as RECONNECTING and retried with backoff; an entry that cannot
be stat'ed (a symlink loop) is reported once with a non-fatal ERROR; directories are ignored.

Overflow: ``block`` by default (a scanner is not a camera: every bag is analysed); while the engine's
queue is full the source does not read the next file, so the folder is the buffer.  With an explicit
``overflow: drop-oldest`` each drop is reported by the queue (``dropped``), named by ``frame_label``.
"""
from __future__ import annotations

import collections
import enum
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from amodal.errors import ConfigError, SourceError
from amodal.streams.backoff import Backoff
from amodal.streams.base import FrameSink, OverflowPolicy, Source, SourceConfig
from amodal.streams.dicom import DICOM_SUFFIXES, DicomFrame, decode_dicom, has_dicm_preamble, is_dicom_name
from amodal.streams.events import make_event
from amodal.streams.images import IMAGE_SUFFIXES, ImageTooLargeError, decode_image
from amodal.types import Frame, ScanInfo, StreamState

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
    """Whether a directory entry name may be a finished image or DICOM file (not a temp/hidden/unknown file).
    Names with another suffix (or none) are candidates only when their content starts with the DICM preamble."""
    lower = name.lower()
    if is_temporary(name):
        return False
    return os.path.splitext(lower)[1] in IMAGE_SUFFIXES | DICOM_SUFFIXES


def is_temporary(name: str) -> bool:
    """Dot-files and names of the atomic-write convention: never read."""
    return name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES)


class _FileState(enum.Enum):
    """Where one file of the folder stands."""

    SETTLING = "settling"  # seen, size/mtime changed less than settle_s ago: holds back every newer file
    RETRYING = "retrying"  # stable but not (yet) a decodable image: tried again every settle_s, holds back nothing
    DONE = "done"  # delivered, or skipped with an ERROR event; a new size/mtime makes it a new file


@dataclass
class _Tracked:
    """One file's state and the (size, mtime) it is about; ``since_s`` is when that (size, mtime) was first seen."""

    size: int
    mtime_ns: int
    since_s: float
    state: _FileState = _FileState.SETTLING
    attempts: int = 0
    next_attempt_s: float = 0.0


class ScannerSource(Source):
    """Polls a folder every ``poll_interval_s`` and delivers each completed image once.

    Per file (``_FileState``): SETTLING → (stable for ``settle_s``) decode → DONE (delivered), or RETRYING
    when it does not decode (an empty file too) → tried again every ``settle_s`` → DONE, skipped with a
    non-fatal ERROR naming the file, once it has been stable and undecodable for ``give_up_s``.  An image
    whose header declares more than ``max_image_pixels`` is skipped at once (decoding would not help).  A
    file whose size or mtime changes starts again as SETTLING (a rewritten or re-used name is a new bag);
    a file that vanishes is forgotten.  Only SETTLING files hold back newer ones, so one bad file never
    stalls the folder.
    """

    live = True

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self.settings = parse_scanner_uri(config)
        self._files: dict[str, _Tracked] = {}
        self._bad_entries: set[str] = set()  # listed names that cannot be stat'ed (reported once)
        # names without an image/DICOM suffix: (size, mtime_ns) → whether the content starts with the DICM preamble
        self._sniffed: dict[str, tuple[int, int, bool]] = {}
        self._sniff_seen: set[str] = set()
        # frame index -> file name of recently delivered frames, for ``frame_label`` (a queue's drop notices)
        self._labels: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._max_labels = max(1024, 4 * self.queue_size)

    @property
    def overflow(self) -> OverflowPolicy:
        """A scanner is not a camera: every bag is analysed.  By default the source waits for queue space
        and the hot folder itself is the buffer (the next file is not read while the queue is full)."""
        return self.config.overflow if self.config.overflow is not None else "block"

    def frame_label(self, frame: Frame) -> str | None:
        """The file a recently delivered frame was read from (for the queue's ``dropped`` notices)."""
        if frame.stream_id != self.stream_id:
            return None
        return self._labels.get(frame.index)

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        sid = self.stream_id
        folder = self.settings.folder
        reconnect = self.config.reconnect if self.config.reconnect is not None else True
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        self._files = {}
        self._bad_entries = set()
        self._sniffed = {}
        self._labels.clear()
        index = 0
        first_mtime_ns: int | None = None
        listed_once = False
        up = False
        sink.put_event(make_event(sid, StreamState.CONNECTING))
        while not stop.is_set():
            try:
                sniffed_before, self._sniff_seen = self._sniffed, set()
                entries, bad = _list_candidates(folder, self._is_dicom_content)
                self._sniffed = {n: v for n, v in sniffed_before.items() if n in self._sniff_seen}
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
            now_s = time.monotonic()
            if not listed_once:
                listed_once = True
                if self.settings.skip_existing:
                    self._files = {n: _Tracked(st.st_size, st.st_mtime_ns, now_s, _FileState.DONE)
                                   for n, st in entries.items()}
            if not up:
                up = True
                sink.put_event(make_event(sid, StreamState.UP, attempt=backoff.attempt))
                backoff.reset()
            self._report_bad_entries(bad, sink)
            for name in self._ready(entries, now_s):
                if stop.is_set():
                    break
                frames = self._read(folder / name, time.monotonic(), sink, index, first_mtime_ns)
                if frames is None:
                    continue
                if first_mtime_ns is None:
                    first_mtime_ns = frames[0].capture_time_ns
                for frame in frames:
                    scan = frame.scan
                    label = name if scan is None or scan.frame_count == 1 else (
                        f"{name} frame {scan.frame_number}/{scan.frame_count}")
                    self._labels[frame.index] = label
                    while len(self._labels) > self._max_labels:
                        self._labels.popitem(last=False)
                    if not sink.put_frame(frame):  # blocks while a block-policy queue is full
                        sink.put_event(make_event(sid, StreamState.ENDED, "sink closed"))
                        return
                    index += 1
                    if self.config.max_frames is not None and index >= self.config.max_frames:
                        sink.put_event(make_event(sid, StreamState.ENDED, "max_frames reached"))
                        return
            stop.wait(self.config.poll_interval_s)
        sink.put_event(make_event(sid, StreamState.ENDED, "stopped"))

    def _report_bad_entries(self, bad: dict[str, str], sink: FrameSink) -> None:
        """One non-fatal ERROR per listed name that cannot be stat'ed (a symlink loop ...), until it goes away."""
        for name, detail in bad.items():
            if name not in self._bad_entries:
                reason = f"scanner entry {self.settings.folder / name} cannot be read, ignored: {detail}"
                sink.put_event(make_event(self.stream_id, StreamState.ERROR, reason, fatal=False))
        self._bad_entries = set(bad)

    def _ready(self, entries: dict[str, os.stat_result], now_s: float) -> list[str]:
        """Update every file's state from the listing; return the names to try now, oldest (mtime, name)
        first, none after a file that is still SETTLING (so delivery follows the order of completion)."""
        files = self._files
        for name in [n for n in files if n not in entries]:  # deleted or renamed away
            del files[name]
        for name, st in entries.items():
            tracked = files.get(name)
            if tracked is None or (tracked.size, tracked.mtime_ns) != (st.st_size, st.st_mtime_ns):
                files[name] = _Tracked(st.st_size, st.st_mtime_ns, now_s)
        ready: list[str] = []
        waiting = [n for n, t in files.items() if t.state != _FileState.DONE]
        for name in sorted(waiting, key=lambda n: (files[n].mtime_ns, n)):
            tracked = files[name]
            if tracked.state == _FileState.SETTLING:
                if now_s - tracked.since_s < self.settings.settle_s:
                    break
                ready.append(name)
            elif now_s >= tracked.next_attempt_s:  # RETRYING: due again; never holds back the others
                ready.append(name)
        return ready

    def _is_dicom_content(self, name: str, path: Path, st: os.stat_result) -> bool:
        """Whether a file without an image/DICOM suffix starts with the DICM preamble (read once per size/mtime)."""
        self._sniff_seen.add(name)
        known = self._sniffed.get(name)
        if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
            return known[2]
        found = has_dicm_preamble(path)
        self._sniffed[name] = (st.st_size, st.st_mtime_ns, found)
        return found

    def _decode(self, path: Path) -> list[DicomFrame] | tuple[str, tuple]:
        """DICOM frames for a DICOM file (by name or content), else an image's ``(pixel_format, planes)``."""
        if is_dicom_name(path.name) or path.suffix.lower() not in IMAGE_SUFFIXES:
            return decode_dicom(path, self.config.max_image_pixels)
        return decode_image(path, self.config.max_image_pixels)

    def _read(
        self, path: Path, now_s: float, sink: FrameSink, index: int, first_mtime_ns: int | None
    ) -> list[Frame] | None:
        """Decode a settled file into its frames (one per image; one per frame of a multi-frame DICOM file); None
        when it is not (yet) a complete image, changed meanwhile or vanished."""
        tracked = self._files[path.name]
        if tracked.size == 0:
            self._failed(path, tracked, now_s, sink, "empty (0 bytes)")
            return None
        try:
            decoded = self._decode(path)
        except ImageTooLargeError as exc:  # the header is final: waiting would not make it smaller
            tracked.state = _FileState.DONE
            reason = f"scanner file {path} skipped: {exc}"
            sink.put_event(make_event(self.stream_id, StreamState.ERROR, reason, fatal=False))
            return None
        except (SourceError, OSError) as exc:
            self._failed(path, tracked, now_s, sink, str(exc))
            return None
        try:
            st = path.stat()
        except FileNotFoundError:
            del self._files[path.name]
            return None
        except OSError as exc:
            self._failed(path, tracked, now_s, sink, f"cannot stat: {exc}")
            return None
        if (st.st_size, st.st_mtime_ns) != (tracked.size, tracked.mtime_ns):  # written meanwhile: settle again
            self._files[path.name] = _Tracked(st.st_size, st.st_mtime_ns, time.monotonic())
            return None
        tracked.state = _FileState.DONE
        origin_ns = first_mtime_ns if first_mtime_ns is not None else tracked.mtime_ns
        pts_s = (tracked.mtime_ns - origin_ns) / 1e9
        if isinstance(decoded, tuple):
            # an image file says nothing of the scan but its name, which every frame carries (to subscribers too)
            decoded = [DicomFrame(decoded[0], decoded[1], scan=ScanInfo(file_name=path.name))]  # type: ignore[arg-type]
        frames = []
        for k, part in enumerate(decoded):
            height, width = part.planes[0].shape[:2]
            frames.append(Frame(
                stream_id=self.stream_id,
                index=index + k,
                pts_s=pts_s + part.offset_s,
                capture_time_ns=tracked.mtime_ns,
                received_mono_ns=time.monotonic_ns(),
                pixel_format=part.pixel_format,
                planes=part.planes,
                width=width,
                height=height,
                scan=part.scan,
            ))
        return frames

    def _failed(self, path: Path, tracked: _Tracked, now_s: float, sink: FrameSink, detail: str) -> None:
        """A stable file that did not decode: retry after ``settle_s``, or give up after ``give_up_s`` with an
        ERROR naming it.  A file that vanished meanwhile is forgotten."""
        if not os.path.lexists(path):
            self._files.pop(path.name, None)
            return
        tracked.attempts += 1
        stable_s = now_s - tracked.since_s
        if stable_s >= self.settings.give_up_s:
            tracked.state = _FileState.DONE
            reason = (f"scanner file {path} skipped after {tracked.attempts} attempts over {stable_s:.1f} s "
                      f"without change: {detail}")
            sink.put_event(make_event(self.stream_id, StreamState.ERROR, reason, fatal=False))
        else:
            tracked.state = _FileState.RETRYING
            tracked.next_attempt_s = now_s + self.settings.settle_s


def _list_candidates(
    folder: Path, is_dicom_content: Callable[[str, Path, os.stat_result], bool]
) -> tuple[dict[str, os.stat_result], dict[str, str]]:
    """Regular files in ``folder`` that may be finished images or DICOM files, with their stat; and the candidate
    names that cannot be stat'ed (symlink loops, permission errors), with why.  A name without an image/DICOM
    suffix is a candidate when ``is_dicom_content`` says its content starts with the DICM preamble.  Directories
    and other non-regular entries are left alone; only a failure to list the folder itself raises."""
    entries: dict[str, os.stat_result] = {}
    bad: dict[str, str] = {}
    with os.scandir(folder) as it:
        for entry in it:
            by_name = is_candidate(entry.name)
            if not by_name and is_temporary(entry.name):
                continue
            try:
                if entry.is_file():
                    st = entry.stat()
                    if by_name or is_dicom_content(entry.name, Path(entry.path), st):
                        entries[entry.name] = st
            except FileNotFoundError:  # vanished between listing and stat (or a dangling symlink)
                continue
            except OSError as exc:
                if by_name:
                    bad[entry.name] = f"{type(exc).__name__}: {exc.strerror or exc}"
    return entries, bad
