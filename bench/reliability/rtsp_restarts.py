"""rtsp-restarts: one of two real RTSP servers (GStreamer, ``tests/support/rtsp.py``) killed and restarted on
the same port, again and again, while one engine reads both.

Per cycle: hard-kill the server (a camera losing power) → the engine reports ``reconnecting`` for that stream
→ start the server again → the stream is recovered once it reports ``up`` again and delivers frames.  The
other stream must not notice: its longest gap between delivered frames over the whole campaign is reported
(with p99), and its reconnects counted.  Also reported: the engine's RSS, open files and threads before and
after the cycles (a leak per reconnect would show), and crashes (uncaught thread exceptions, internal errors).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from amodal.bench.reliability.common import (CrashWatch, RecordingSink, free_endpoint, open_fds, os_threads,
                                             rounded, rss_mb, test_support)
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stages.identity import IdentityStage
from amodal.streams.base import SourceConfig
from amodal.types import StreamState

RESTARTING, STEADY = "restarting", "steady"


def _source(uri: str, stream_id: str) -> SourceConfig:
    return SourceConfig(uri=uri, stream_id=stream_id, open_timeout_s=3.0, read_timeout_s=2.0,
                        backoff_initial_s=0.1, backoff_max_s=1.0)


def _gauges() -> dict[str, float]:
    return {"rss_mb": rounded(rss_mb(), 1), "open_fds": open_fds(), "threads": os_threads()}


def run(out: Path, *, cycles: int = 100, time_limit_s: float = 1800.0, recover_timeout_s: float = 30.0,
        frames_after_up: int = 5) -> dict[str, Any]:
    rtsp = test_support("rtsp")
    if not rtsp.gst_rtsp_available():
        reason = "GStreamer's RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0, x264enc) is not installed"
        print(f"rtsp-restarts: skipped: {reason} (.ci/system-deps.sh installs it)", flush=True)
        return {"summary": {"skipped": reason, "cycles": 0}}
    started = time.monotonic()
    servers = {name: rtsp.RtspServer(("/cam0",), width=160, height=120, fps=25, gop=10).start()
               for name in (RESTARTING, STEADY)}
    recorder = RecordingSink(keep_times=True)
    rows: list[dict[str, Any]] = []
    with CrashWatch() as watch:
        engine = Engine(EngineConfig(publish=free_endpoint(), exit_when_done=False),
                        pipelines={"default": [IdentityStage()]}, sinks=[recorder]).start()
        try:
            for name, server in servers.items():
                engine.add_source(_source(server.url(), name))
            warm = recorder.wait_for(lambda: all(recorder.frames[s] >= 10 for s in servers), 60.0)
            if not warm:
                raise RuntimeError(f"the RTSP streams never started: {dict(recorder.frames)}")
            before = _gauges()
            steady_from = len(recorder.times_s[STEADY])
            print(f"rtsp-restarts: {cycles} cycles of {servers[RESTARTING].url()} beside {servers[STEADY].url()}",
                  flush=True)
            for cycle in range(cycles):
                if time.monotonic() - started > time_limit_s:
                    break
                rows.append(_cycle(servers[RESTARTING], recorder, recover_timeout_s, frames_after_up))
                rows[-1]["cycle"] = cycle
                if not rows[-1]["recovered"]:
                    print(f"  cycle {cycle}: NOT recovered: {rows[-1]}", flush=True)
                elif cycle % 10 == 0:
                    print(f"  cycle {cycle}: recovered in {rows[-1]['recovery_s']} s", flush=True)
            time.sleep(1.0)
            after = _gauges()
            steady_times = np.asarray(recorder.times_s[STEADY][steady_from:])
            alive = bool(engine._loop_thread and engine._loop_thread.is_alive())  # noqa: SLF001
            failures = list(engine.failures)
            events = {s: [(e.state.value, e.reason) for e in recorder.events[s]] for s in servers}
        finally:
            engine.stop()
            for server in servers.values():
                server.stop()
    gaps = np.diff(steady_times) if len(steady_times) > 1 else np.zeros(1)
    internal = [r for evs in events.values() for _, r in evs if r and "internal error" in r]
    steady_reconnects = sum(1 for state, _ in events[STEADY] if state == StreamState.RECONNECTING.value)
    recovery = [r["recovery_s"] for r in rows if r["recovered"]]
    summary = {
        "cycles": len(rows), "recovered": sum(r["recovered"] for r in rows),
        "recovery_s_p50": rounded(float(np.median(recovery)), 2) if recovery else None,
        "recovery_s_max": rounded(max(recovery), 2) if recovery else None,
        "detect_s_max": rounded(max((r["detect_s"] or 0.0) for r in rows), 2) if rows else None,
        "other_stream_frames": int(len(steady_times)),
        "other_stream_max_gap_s": rounded(float(gaps.max()), 3),
        "other_stream_p99_gap_s": rounded(float(np.percentile(gaps, 99)), 3),
        "other_stream_reconnects": steady_reconnects,
        "crashes": watch.summary()["uncaught_thread_exceptions"] + len(internal),
        "engine_alive": alive, "engine_failures": failures,
        "rss_mb_before_after": [before["rss_mb"], after["rss_mb"]],
        "open_fds_before_after": [before["open_fds"], after["open_fds"]],
        "threads_before_after": [before["threads"], after["threads"]],
        "seconds": rounded(time.monotonic() - started, 1),
        "stopped_by_time_limit": len(rows) < cycles,
    }
    return {"parameters": {"cycles": cycles, "time_limit_s": time_limit_s, "recover_timeout_s": recover_timeout_s,
                           "frames_after_up": frames_after_up, "source": "160x120 25 fps H.264, gop 10, TCP"},
            "summary": summary, "crash_watch": watch.summary(), "cycles": rows,
            "other_stream_gaps_s": [rounded(float(g), 3) for g in gaps],
            "internal_errors": internal[:20]}


def _cycle(server, recorder: RecordingSink, recover_timeout_s: float, frames_after_up: int) -> dict[str, Any]:
    """Kill, wait for ``reconnecting``, restart, wait for ``up`` and frames."""
    events = recorder.events[RESTARTING]
    n_events = len(events)
    t_kill = time.monotonic()
    server.kill()
    seen = recorder.wait_for(lambda: any(e.state == StreamState.RECONNECTING for e in events[n_events:]), 20.0)
    detect_s = time.monotonic() - t_kill if seen else None
    n_events = len(events)
    t_start = time.monotonic()
    try:
        server.start()
    except RuntimeError as exc:  # the server itself failed to come back: not the engine's fault, but reported
        return {"recovered": False, "detect_s": detect_s, "recovery_s": None, "server_start_failed": str(exc)[:300]}
    server_start_s = time.monotonic() - t_start
    up_frames: list[int] = []

    def recovered() -> bool:
        if not up_frames:
            if any(e.state == StreamState.UP for e in events[n_events:]):
                up_frames.append(recorder.frames[RESTARTING])
            return False
        return recorder.frames[RESTARTING] >= up_frames[0] + frames_after_up

    ok = recorder.wait_for(recovered, recover_timeout_s)
    reconnect_attempts = sum(1 for e in events[n_events:] if e.state == StreamState.RECONNECTING)
    return {"recovered": ok, "detect_s": rounded(detect_s, 3) if detect_s is not None else None,
            "server_start_s": rounded(server_start_s, 3),
            "recovery_s": rounded(time.monotonic() - t_start, 3) if ok else None,
            "failed_attempts_while_down": reconnect_attempts}


def plot(results: dict[str, Any], ax_row) -> None:
    ax = ax_row[0]
    s = results["summary"]
    if s.get("skipped"):
        ax.set_title(f"rtsp-restarts skipped: {s['skipped'][:60]}")
        return
    rows = results["cycles"]
    ax.plot([r["cycle"] for r in rows if r["recovered"]], [r["recovery_s"] for r in rows if r["recovered"]], ".",
            label="restart → up + frames")
    ax.plot([r["cycle"] for r in rows if r["detect_s"] is not None],
            [r["detect_s"] for r in rows if r["detect_s"] is not None], "x", label="kill → reconnecting")
    ax.set_xlabel("cycle")
    ax.set_ylabel("s")
    ax.set_title(f"rtsp-restarts: {s['recovered']}/{s['cycles']} recovered")
    ax.legend()
    ax = ax_row[1]
    gaps = results["other_stream_gaps_s"]
    ax.plot(np.asarray(gaps) * 1e3, lw=0.5)
    ax.set_xlabel("frame of the other stream")
    ax.set_ylabel("gap to the previous frame (ms)")
    ax.set_title(f"other stream: max gap {s['other_stream_max_gap_s'] * 1e3:.0f} ms, "
                 f"{s['other_stream_reconnects']} reconnects")
