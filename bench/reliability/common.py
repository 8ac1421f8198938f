"""What every reliability campaign shares: counting crashes (uncaught thread exceptions, logged internal
errors), a recording engine sink, process gauges (RSS, open files, threads), slopes, and the test helpers
(``tests/support``) of this checkout."""
from __future__ import annotations

import collections
import importlib
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amodal.engine.sink import Sink
from amodal.types import Frame, FrameResult, StreamEvent, StreamState

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_support(module: str):
    """``tests.support.<module>`` of this checkout (RTSP server, media makers): the campaigns drive the same
    real servers and media as the tests.  Raises ``RuntimeError`` outside a source checkout."""
    if not (REPO_ROOT / "tests" / "support" / f"{module}.py").is_file():
        raise RuntimeError(f"tests/support/{module}.py not found under {REPO_ROOT}: run the reliability bench from "
                           "a source checkout (pip install -e .)")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(f"tests.support.{module}")


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


# ------------------------------------------------------------------------------------------- crashes
class CrashWatch:
    """Counts what would be a crash: exceptions that escape a thread (``threading.excepthook``) and
    exceptions the engine caught but logged as internal failures (``log.exception`` on an ``amodal``
    logger: a source that raised, a stage that failed).  ``with CrashWatch() as watch: ...``."""

    def __init__(self, logger: str = "amodal") -> None:
        self.uncaught: list[dict[str, str]] = []
        self.logged: list[dict[str, str]] = []
        self._logger = logging.getLogger(logger)
        self._previous_hook = None
        self._handler = _ExceptionLogHandler(self.logged)

    def __enter__(self) -> "CrashWatch":
        self._previous_hook = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            self.uncaught.append({
                "thread": args.thread.name if args.thread is not None else "?",
                "exception": f"{args.exc_type.__name__}: {args.exc_value}",
                "traceback": "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)),
            })
            self._previous_hook(args)

        threading.excepthook = hook
        self._logger.addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.excepthook = self._previous_hook
        self._logger.removeHandler(self._handler)

    def summary(self) -> dict[str, Any]:
        return {"uncaught_thread_exceptions": len(self.uncaught), "logged_internal_exceptions": len(self.logged),
                "uncaught": self.uncaught[:20], "logged": self.logged[:20]}


class _ExceptionLogHandler(logging.Handler):
    def __init__(self, into: list) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.into.append({"logger": record.name, "message": record.getMessage()[:500],
                              "traceback": "".join(traceback.format_exception(*record.exc_info))[-4000:]})


# ------------------------------------------------------------------------------------------- engine sink
def is_final(event: StreamEvent) -> bool:
    """A stream's last word: ``ended``, ``removed``, or a fatal ``error``."""
    return event.state in (StreamState.ENDED, StreamState.REMOVED) or (event.state == StreamState.ERROR and event.fatal)


class RecordingSink(Sink):
    """An engine sink that keeps, per stream, the frames it delivered (count, monotonic arrival times, and an
    optional label per frame) and every status event; waits on any delivery."""

    name = "reliability-recorder"

    def __init__(self, label: Callable[[Frame], str | None] | None = None, keep_times: bool = False) -> None:
        self.frames: collections.Counter[str] = collections.Counter()
        self.events: dict[str, list[StreamEvent]] = collections.defaultdict(list)
        self.labels: dict[str, list[str | None]] = collections.defaultdict(list)
        self.times_s: dict[str, list[float]] = collections.defaultdict(list)
        self._label = label
        self._keep_times = keep_times
        self._cond = threading.Condition()

    def write_results(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        now_s = time.monotonic()
        with self._cond:
            for frame in frames:
                self.frames[frame.stream_id] += 1
                if self._label is not None:
                    self.labels[frame.stream_id].append(self._label(frame))
                if self._keep_times:
                    self.times_s[frame.stream_id].append(now_s)
            self._cond.notify_all()

    def write_event(self, event: StreamEvent) -> None:
        with self._cond:
            self.events[event.stream_id].append(event)
            self._cond.notify_all()

    def finals(self, stream_id: str) -> list[StreamEvent]:
        with self._cond:
            return [e for e in self.events.get(stream_id, ()) if is_final(e)]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds (called under the sink's lock); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True


# ------------------------------------------------------------------------------------------- gauges
def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (``/proc/PID/status`` VmRSS); nan when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def open_fds(pid: int | str = "self") -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def os_threads(pid: int | str = "self") -> int:
    """Kernel threads of a process (Python's and the native libraries' own: ZeroMQ I/O, FFmpeg, OpenMP)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return -1


def slope_per_min(t_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against time, per minute (nan for fewer than 3 finite points)."""
    t, v = np.asarray(t_s, dtype=np.float64), np.asarray(values, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(v)
    if ok.sum() < 3 or np.ptp(t[ok]) == 0:
        return float("nan")
    return float(np.polyfit(t[ok] / 60.0, v[ok], 1)[0])


def rounded(value: float, digits: int = 3) -> float:
    return float(round(value, digits)) if np.isfinite(value) else float("nan")
