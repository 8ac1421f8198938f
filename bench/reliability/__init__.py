"""``amodal bench reliability [--part fuzz-media|fuzz-messages|rtsp-restarts|soak] [--out DIR] [sizes…]``:
rerunnable, bounded reliability campaigns (docs/reliability.md).

* ``fuzz-media`` (``fuzz_media.py``): ≥ 1,000 damaged mp4/mkv/ts/avi/png/tiff/jpg/dcm files as engine sources
  beside a good clip, and in a ``scanner://`` hot folder: 0 crashes, 0 hangs, one final event per bad file,
  every frame of the good clip.
* ``fuzz-messages`` (``fuzz_messages.py``): ≥ 10,000 malformed messages over a real PUB socket to an
  ``amodal.Subscriber`` and to an ``amodal subscribe --json`` process, and malformed requests to the gallery
  ``QueryServer``: 0 escapes, bounded memory, an error reply for every malformed request.
* ``rtsp-restarts`` (``rtsp_restarts.py``): kill/restart cycles of one of two real RTSP servers with an engine
  on both: every restart recovered, the other stream's longest gap between frames.
* ``soak`` (``soak.py``): synthetic streams and a subscriber for a set time: RSS, open files, threads and
  publish latency sampled every second; slopes per minute and maxima.

Each part writes ``reliability_<part>.json`` (with device, versions and commit) and ``reliability_<part>.png``
to ``--out``; the exit status is non-zero when an invariant does not hold.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amodal.bench.common import new_figure, save_figure, write_results

PARTS = ("fuzz-media", "fuzz-messages", "rtsp-restarts", "soak")


def invariants(part: str, results: dict[str, Any]) -> list[str]:
    """The invariants of ``part`` that ``results`` break (empty: all hold)."""
    s = results.get("summary", {})
    broken = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            broken.append(what)

    if part == "fuzz-media":
        need(s["crashes"] == 0, f"{s['crashes']} crashes")
        need(s["hangs"] == 0, f"{s['hangs']} hangs")
        need(s["not_one_final_event"] == 0, f"{s['not_one_final_event']} files without exactly one final event")
        need(s["good_incomplete"] == 0, f"{s['good_incomplete']} waves where the good clip was incomplete")
        need(s["engine_alive"] and not s["engine_failures"], "the engine died")
        for key in ("scanner_unaccounted", "scanner_accounted_twice", "scanner_good_missing"):
            need(not s.get(key), f"{key} = {s.get(key)}")
    elif part == "fuzz-messages":
        for target in ("subscriber", "subscribe_process", "query_server"):
            t = results.get(target)
            if t is None:
                continue
            need(t["escapes"] == 0, f"{target}: {t['escapes']} escapes")
            need(t["alive"], f"{target}: not alive at the end")
            need(t["sentinel_ok"], f"{target}: a valid message after the fuzz was not handled")
        q = results.get("query_server")
        if q is not None:
            need(q["missing_replies"] == 0, f"query_server: {q['missing_replies']} requests without a reply")
            need(q["malformed_not_refused"] == 0, f"query_server: {q['malformed_not_refused']} malformed requests "
                                                  "answered ok")
    elif part == "rtsp-restarts":
        if s.get("skipped"):
            return []
        need(s["cycles"] > 0, "no cycle ran")
        need(s["recovered"] == s["cycles"], f"{s['cycles'] - s['recovered']} of {s['cycles']} restarts not recovered")
        need(s["crashes"] == 0, f"{s['crashes']} crashes")
        need(s["other_stream_frames"] > 0, "the other stream delivered nothing")
    elif part == "soak":
        need(s["samples"] >= 3, "fewer than 3 samples")
        need(s["crashes"] == 0, f"{s['crashes']} crashes")
        need(s["frames_received"] > 0, "the subscriber received nothing")
        need(not s["engine_failures"], f"engine failures: {s['engine_failures']}")
        for key in ("rss_mb_per_min", "latency_ms_per_min"):
            need(s[key]["all"] == s[key]["all"], f"no {key} slope")  # nan: not enough samples
    return broken


def _run_part(part: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if part == "fuzz-media":
        from amodal.bench.reliability import fuzz_media

        return fuzz_media.run(out, files=args.files, seed=args.seed, wave=args.wave,
                              hang_timeout_s=args.hang_timeout, time_limit_s=args.time_limit)
    if part == "fuzz-messages":
        from amodal.bench.reliability import fuzz_messages

        return fuzz_messages.run(out, messages=args.messages, queries=args.queries, seed=args.seed,
                                 time_limit_s=args.time_limit)
    if part == "rtsp-restarts":
        from amodal.bench.reliability import rtsp_restarts

        return rtsp_restarts.run(out, cycles=args.cycles, time_limit_s=args.time_limit)
    from amodal.bench.reliability import soak

    return soak.run(out, seconds=args.soak_seconds, streams=args.soak_streams, fps=args.soak_fps)


def _plotter(part: str) -> Callable[[dict[str, Any], Any], None]:
    import importlib

    return importlib.import_module(f"amodal.bench.reliability.{part.replace('-', '_')}").plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amodal bench reliability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable); default all")
    parser.add_argument("--out", default="out/bench/reliability", help="where the JSON and PNG files go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds per part, at most (fuzz, rtsp)")
    parser.add_argument("--files", type=int, default=1000, help="fuzz-media: bad files")
    parser.add_argument("--wave", type=int, default=12, help="fuzz-media: bad sources attached at once")
    parser.add_argument("--hang-timeout", type=float, default=60.0,
                        help="fuzz-media: seconds a wave's sources have to send their final event")
    parser.add_argument("--messages", type=int, default=10_000, help="fuzz-messages: malformed messages per subscriber")
    parser.add_argument("--queries", type=int, default=10_000, help="fuzz-messages: malformed gallery requests")
    parser.add_argument("--cycles", type=int, default=100, help="rtsp-restarts: kill/restart cycles")
    parser.add_argument("--soak-seconds", type=float, default=300.0, help="soak: length")
    parser.add_argument("--soak-streams", type=int, default=3, help="soak: synthetic streams")
    parser.add_argument("--soak-fps", type=float, default=10.0, help="soak: frames per second per stream")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    status = 0
    for part in args.part or PARTS:
        name = f"reliability_{part.replace('-', '_')}"
        results = _run_part(part, args, out)
        broken = invariants(part, results)
        results["invariants_broken"] = broken
        path = write_results(out, name, results)
        fig, axes = new_figure(ncols=2)
        _plotter(part)(results, axes[0])
        save_figure(fig, out, name)
        print(f"{part}: {'OK' if not broken else 'BROKEN: ' + '; '.join(broken)}  "
              f"{json_summary(results.get('summary', {}))}  → {path}", flush=True)
        status |= bool(broken)
    return int(status)


def json_summary(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (list, dict)))
