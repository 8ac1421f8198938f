"""soak: an engine with a few paced ``synthetic://`` streams and a subscriber, for a set length of time.

Every second: the process's RSS, open files (``/proc/self/fd``), threads (Python's and the kernel's), and
the capture → subscriber latency of the frames received in that second (p50, max) plus capture → publish.
Reported: least-squares slopes per minute (RSS MB/min, latency ms/min, open files/min, threads/min) over the
whole run and after a warm-up (the first tenth, at most 30 s), the maxima, frames lost (sequence gaps) and
crashes.  A steady engine has slopes near 0; a leak shows as a positive RSS or open-files slope.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from amodal.bench.reliability.common import (CrashWatch, free_endpoint, open_fds, os_threads, rounded, rss_mb,
                                             slope_per_min)
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stages.identity import IdentityStage
from amodal.schema import FrameMessage
from amodal.streams.base import SourceConfig
from amodal.subscriber import Subscriber


class _Latencies:
    """Latency samples of the current second, taken by the subscriber thread, swapped out by the sampler."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.receive_ms: list[float] = []
        self.publish_ms: list[float] = []
        self.frames = 0

    def add(self, message: FrameMessage) -> None:
        now_ns = time.time_ns()
        with self.lock:
            self.receive_ms.append((now_ns - message.result.capture_time_ns) / 1e6)
            self.publish_ms.append((message.publish_time_ns - message.result.capture_time_ns) / 1e6)
            self.frames += 1

    def take(self) -> tuple[list[float], list[float]]:
        with self.lock:
            out = (self.receive_ms, self.publish_ms)
            self.receive_ms, self.publish_ms = [], []
            return out


def run(out: Path, *, seconds: float = 300.0, streams: int = 3, fps: float = 10.0, width: int = 160,
        height: int = 120) -> dict[str, Any]:
    endpoint = free_endpoint()
    latencies = _Latencies()
    stop = threading.Event()
    samples: list[dict[str, float]] = []
    with CrashWatch() as watch:
        engine = Engine(EngineConfig(publish=endpoint, exit_when_done=False, wait_for_subscribers=1,
                                     wait_for_subscribers_timeout_s=30.0),
                        pipelines={"default": [IdentityStage()]})
        sub = Subscriber(endpoint)
        receive_errors: list[str] = []

        def receive() -> None:
            while not stop.is_set():
                try:
                    message = sub.recv(0.2)
                except Exception as exc:  # noqa: BLE001 - counted as a crash
                    receive_errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if isinstance(message, FrameMessage):
                    latencies.add(message)

        reader = threading.Thread(target=receive, name="soak-subscriber", daemon=True)
        reader.start()
        engine.start()  # waits for the subscriber
        for i in range(streams):
            engine.add_source(SourceConfig(uri=f"synthetic://shapes?w={width}&h={height}&fps={fps}&objects=4&seed={i}",
                                           stream_id=f"soak{i}"))
        t0 = time.monotonic()
        next_s = t0 + 1.0
        print(f"soak: {streams} synthetic streams at {fps:g} fps ({width}x{height}) for {seconds:g} s", flush=True)
        try:
            while time.monotonic() - t0 < seconds:
                time.sleep(max(0.0, next_s - time.monotonic()))
                next_s += 1.0
                receive_ms, publish_ms = latencies.take()
                samples.append({
                    "t_s": rounded(time.monotonic() - t0, 2), "rss_mb": rounded(rss_mb(), 2),
                    "open_fds": open_fds(), "threads": threading.active_count(), "os_threads": os_threads(),
                    "frames": len(receive_ms),
                    "latency_p50_ms": rounded(float(np.median(receive_ms)), 2) if receive_ms else float("nan"),
                    "latency_max_ms": rounded(float(np.max(receive_ms)), 2) if receive_ms else float("nan"),
                    "publish_p50_ms": rounded(float(np.median(publish_ms)), 2) if publish_ms else float("nan"),
                })
                if len(samples) % 60 == 0:
                    s = samples[-1]
                    print(f"  {s['t_s']:.0f} s: RSS {s['rss_mb']} MB, {s['open_fds']} fds, {s['os_threads']} "
                          f"threads, latency p50 {s['latency_p50_ms']} ms", flush=True)
            alive = bool(engine._loop_thread and engine._loop_thread.is_alive())  # noqa: SLF001
            failures = list(engine.failures)
            snapshot = engine.snapshot()
        finally:
            engine.stop()
            stop.set()
            reader.join(5)
            stats = sub.stats
            sub.close()
    t = [s["t_s"] for s in samples]
    warm = min(30.0, 0.1 * seconds)
    late = [i for i, s in enumerate(samples) if s["t_s"] >= warm]

    def slopes(key: str) -> dict[str, float]:
        values = [s[key] for s in samples]
        return {"all": rounded(slope_per_min(t, values), 4),
                "after_warmup": rounded(slope_per_min([t[i] for i in late], [values[i] for i in late]), 4)}

    def maximum(key: str) -> float:
        values = np.asarray([s[key] for s in samples], dtype=np.float64)
        return rounded(float(np.nanmax(values)), 2) if np.isfinite(values).any() else float("nan")

    summary = {
        "seconds": seconds, "samples": len(samples), "streams": streams, "fps": fps,
        "frames_received": int(sum(s["frames"] for s in samples)),
        "frames_analysed": int(sum(v.get("frames_analysed", 0) for v in snapshot.get("streams", {}).values())),
        "frames_dropped": int(sum(v.get("dropped", 0) for v in snapshot.get("streams", {}).values())),
        "lost_messages": int(sum(stats.lost.values())), "malformed": stats.malformed,
        "rss_mb_per_min": slopes("rss_mb"), "latency_ms_per_min": slopes("latency_p50_ms"),
        "open_fds_per_min": slopes("open_fds"), "threads_per_min": slopes("os_threads"),
        "rss_mb_max": maximum("rss_mb"), "rss_mb_first_last": [samples[0]["rss_mb"], samples[-1]["rss_mb"]]
        if samples else None,
        "latency_p50_ms_median": rounded(float(np.nanmedian([s["latency_p50_ms"] for s in samples])), 2)
        if samples else None,
        "latency_ms_max": maximum("latency_max_ms"), "open_fds_max": maximum("open_fds"),
        "threads_max": maximum("os_threads"),
        "crashes": watch.summary()["uncaught_thread_exceptions"] + len(receive_errors) + int(not alive),
        "engine_failures": failures,
    }
    return {"parameters": {"seconds": seconds, "streams": streams, "fps": fps, "size": [width, height],
                           "warmup_s": warm},
            "summary": summary, "crash_watch": watch.summary(), "receive_errors": receive_errors[:10],
            "samples": samples, "engine_snapshot": snapshot}


def plot(results: dict[str, Any], ax_row) -> None:
    samples = results["samples"]
    t = np.array([s["t_s"] for s in samples])
    s = results["summary"]
    ax = ax_row[0]
    ax.plot(t, [x["rss_mb"] for x in samples], label="RSS (MB)")
    ax2 = ax.twinx()
    ax2.plot(t, [x["open_fds"] for x in samples], "g", lw=0.8, label="open files")
    ax2.plot(t, [x["os_threads"] for x in samples], "r", lw=0.8, label="threads")
    ax.set_xlabel("s")
    ax.set_ylabel("RSS (MB)")
    ax2.set_ylabel("open files / threads")
    ax.set_title(f"soak: RSS {s['rss_mb_per_min']['after_warmup']:+.3f} MB/min after warm-up")
    ax2.legend(loc="lower right")
    ax = ax_row[1]
    ax.plot(t, [x["latency_p50_ms"] for x in samples], label="p50 per second")
    ax.plot(t, [x["latency_max_ms"] for x in samples], lw=0.6, label="max per second")
    ax.set_xlabel("s")
    ax.set_ylabel("capture → subscriber latency (ms)")
    ax.set_title(f"latency {s['latency_ms_per_min']['after_warmup']:+.3f} ms/min after warm-up")
    ax.legend()
