"""``amodal bench decode``: sources decoded on engine threads against decode worker processes, in one run.

  * throughput: raw PyAV decode of a 720p H.264 clip (the reference) against the ``identity`` engine on the same
    clip, one stream decoded as fast as possible, the same decoder thread count everywhere, ``decode: threads``
    and ``decode: processes``; the three are run round-robin (a busy shared machine slows them alike), best kept;
  * live: 1, 2, 4, 8 streams of the clip paced at 25 fps like cameras (drop-oldest queues): total frames/s
    received by a subscriber (in its own process), capture → subscriber latency p50/p99, drops; per mode: threads,
    a process per source, a pool of 2 decode processes (``decode_workers: 2``);
  * memory: during each live run, RSS and PSS of the engine process plus its decode workers (and, in process
    mode, the fork server and resource tracker), sampled every 0.5 s (max kept), in total and per stream.
    RSS counts the shared rings and libraries in every process that maps them; PSS splits them.

Writes ``decode.json`` and ``decode.png`` under ``--out``.  Top-level imports stay light: the subscriber process
imports this module.
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np

from amodal.bench.common import new_figure, save_figure, subscribe_until_ended, write_results


# ------------------------------------------------------------------------------------------------------ memory
def _proc_kb(pid: int, path: str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MB: psutil when installed, else /proc."""
    try:
        import psutil

        info = psutil.Process(pid).memory_full_info()
        return info.rss / 2**20, getattr(info, "pss", 0) / 2**20
    except ImportError:
        return _proc_kb(pid, "status", "VmRSS:") / 1024, _proc_kb(pid, "smaps_rollup", "Pss:") / 1024
    except Exception:  # noqa: BLE001 - the process ended between listing and reading
        return 0.0, 0.0


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (every thread's ``children`` list)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _engine_processes(decode: str, exclude: set[int]) -> list[int]:
    """This process and, in process mode, its descendants (decode workers, fork server, resource tracker), except
    ``exclude`` and theirs."""
    out, todo = [os.getpid()], [os.getpid()]
    while decode != "threads" and todo:  # (a fork server left by an earlier process-mode run is not this engine's)
        for child in _children(todo.pop()):
            if child not in exclude:
                out.append(child)
                todo.append(child)
    return out


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads) so far, from /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class _ProcessSampler:
    """Samples the engine's processes every ``interval_s``: the largest total RSS / PSS seen (``memory``), and the
    CPU seconds each used while sampled (a process's last sample before it exits counts: sample often)."""

    def __init__(self, decode: str, exclude: set[int], interval_s: float, memory: bool) -> None:
        self.decode, self.exclude, self.interval_s, self.memory = decode, exclude, interval_s, memory
        self.rss_mb = self.pss_mb = 0.0
        self.processes = 0
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, first: bool = False) -> None:
        pids = _engine_processes(self.decode, self.exclude)
        for pid in pids:
            cpu = _cpu_s(pid)
            if cpu is not None:
                # processes there before the run count from then; new ones (workers) from their start
                self._cpu_first.setdefault(pid, cpu if first else 0.0)
                self._cpu_last[pid] = cpu
        if self.memory and not first:
            samples = [_memory_mb(p) for p in pids]
            rss, pss = sum(m[0] for m in samples), sum(m[1] for m in samples)
            if rss > self.rss_mb:
                self.rss_mb, self.pss_mb, self.processes = rss, pss, len(pids)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu_last[p] - self._cpu_first[p] for p in self._cpu_last)

    def __enter__(self) -> "_ProcessSampler":
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ------------------------------------------------------------------------------------------------------ engine
#: the decode settings compared: sources on threads, a process per source, a pool of 2 processes (this machine's cores)
MODES = {"threads": {"decode": "threads"}, "processes": {"decode": "processes"},
         "pool": {"decode": "processes", "decode_workers": 2}}


def run_engine(sources: list, decode: str, *, max_batch_size: int = 8, max_wait_ms: float = 2.0,
               timeout_s: float = 600, sample_memory: bool = False) -> dict:
    """The ``identity`` engine on ``sources`` in mode ``decode`` (a ``MODES`` key); a subscriber in its own process
    receives."""
    import multiprocessing as mp

    from amodal.bench.latency import _free_endpoint
    from amodal.engine.config import EngineConfig
    from amodal.engine.engine import Engine
    from amodal.engine.stages.identity import IdentityStage

    ctx = mp.get_context("spawn")
    endpoint = _free_endpoint()
    config = EngineConfig(publish=endpoint, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, **MODES[decode])
    engine = Engine(config, pipelines={"default": [IdentityStage()]}).start()
    ready, (parent, child) = ctx.Event(), ctx.Pipe(duplex=False)
    sub = ctx.Process(target=subscribe_until_ended, args=(endpoint, len(sources), timeout_s, ready, child), daemon=True)
    sub.start()
    ready.wait(120)
    time.sleep(0.5)  # the subscription reaches the publisher
    sampler = _ProcessSampler(decode, {sub.pid}, 0.5 if sample_memory else 0.05, memory=sample_memory).__enter__()
    start_ns = time.time_ns()
    for s in sources:
        engine.add_source(s)
    got = parent.recv() if parent.poll(timeout_s + 60) else {"latency_ms": [], "wall_ns": [], "lost": -1}
    sampler.__exit__()
    sub.join(10)
    dropped = sum(s.get("dropped", 0) for s in engine.snapshot()["streams"].values())
    engine.stop()
    wall_s = (max(got["wall_ns"]) - start_ns) / 1e9 if got["wall_ns"] else float("nan")
    return {"received": len(got["latency_ms"]), "wall_s": wall_s, "latency_ms": got["latency_ms"], "lost": got["lost"],
            "dropped_in_snapshot": dropped, "cpu_s": sampler.cpu_s, "rss_mb": sampler.rss_mb,
            "pss_mb": sampler.pss_mb, "processes": sampler.processes}


def _raw_decode(clip: Path, threads: int) -> tuple[float, float]:
    """Raw PyAV decode of ``clip``: (fps, CPU seconds this process used, all its threads)."""
    from amodal.bench.latency import pyav_raw_fps

    cpu = time.process_time()
    fps = pyav_raw_fps(clip, threads)
    return fps, time.process_time() - cpu


def throughput(clip: Path, threads: int, repeats: int, frames: int) -> dict:
    """Raw PyAV decode vs the identity engine (threads, processes), round-robin.  Per run: frames/s (wall) and CPU
    ms per frame (this process's threads, plus the decode workers and their helpers in process mode; the
    subscriber is not counted).  On a machine shared with other jobs the wall figure also measures how much of the
    contended CPU each set of threads gets, so the CPU per frame is the steadier comparison."""
    from amodal.streams.base import SourceConfig

    def engine(decode: str) -> tuple[float, float]:
        source = SourceConfig(uri=str(clip), stream_id="clip", realtime=False, decode_threads=threads)
        run = run_engine([source], decode)
        return run["received"] / run["wall_s"], run["cpu_s"] * 1e3 / max(1, run["received"])

    fps: dict[str, list[float]] = {"pyav_raw": [], "threads": [], "processes": []}
    cpu_ms: dict[str, list[float]] = {k: [] for k in fps}
    for _ in range(repeats):
        raw_fps, raw_cpu_s = _raw_decode(clip, threads)
        for key, (f, c) in (("pyav_raw", (raw_fps, raw_cpu_s * 1e3 / frames)), ("threads", engine("threads")),
                            ("processes", engine("processes"))):
            fps[key].append(f)
            cpu_ms[key].append(c)
        print("  " + ", ".join(f"{k} {fps[k][-1]:.0f} fps {cpu_ms[k][-1]:.2f} cpu-ms/frame" for k in fps), flush=True)
    best_fps = {k: max(v) for k, v in fps.items()}
    median_cpu = {k: float(np.median(v)) for k, v in cpu_ms.items()}
    return {"threads_per_decoder": threads, "fps_runs": fps, "cpu_ms_per_frame_runs": cpu_ms, "best_fps": best_fps,
            "median_cpu_ms_per_frame": median_cpu,
            "threads_vs_raw": best_fps["threads"] / best_fps["pyav_raw"],
            "processes_vs_raw": best_fps["processes"] / best_fps["pyav_raw"],
            "threads_vs_raw_cpu": median_cpu["pyav_raw"] / median_cpu["threads"],
            "processes_vs_raw_cpu": median_cpu["pyav_raw"] / median_cpu["processes"]}


def live(clip: Path, streams: int, decode: str, seconds: float, threads: int) -> dict:
    from amodal.bench.latency import percentiles
    from amodal.streams.base import SourceConfig

    sources = [SourceConfig(uri=str(clip), stream_id=f"cam{i}", realtime=True, decode_threads=threads, queue_size=2,
                            overflow="drop-oldest", max_frames=int(seconds * 25)) for i in range(streams)]
    run = run_engine(sources, decode, max_batch_size=max(1, streams), max_wait_ms=1.0, sample_memory=True)
    due = streams * int(seconds * 25)
    return {"streams": streams, "decode": decode, "fps_total": run["received"] / run["wall_s"], "received": run["received"],
            "due": due, "lost": run["lost"], **percentiles(run["latency_ms"]),
            "rss_mb": round(run["rss_mb"], 1), "pss_mb": round(run["pss_mb"], 1),
            "rss_mb_per_stream": round(run["rss_mb"] / streams, 1), "pss_mb_per_stream": round(run["pss_mb"] / streams, 1),
            "processes": run["processes"]}


# -------------------------------------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    from amodal.bench.latency import count_frames, make_test_file

    p = argparse.ArgumentParser(prog="amodal bench decode", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench/decode"))
    p.add_argument("--seconds", type=float, default=20.0, help="length of the 720p test clip")
    p.add_argument("--threads", type=int, default=2, help="decoder threads (the same for PyAV and the engine)")
    p.add_argument("--repeats", type=int, default=3, help="round-robin repeats of the throughput runs")
    p.add_argument("--streams", default="1,2,4,8", help="live stream counts")
    p.add_argument("--live-seconds", type=float, default=8.0, help="length of each live run")
    p.add_argument("--live-threads", type=int, default=1, help="decoder threads of each live stream")
    args = p.parse_args(argv)
    started = time.monotonic()
    load_start = os.getloadavg()
    clip = make_test_file(args.out / "clip_720p.mp4", args.seconds)
    frames = count_frames(clip)
    from amodal.streams.base import SourceConfig

    warm = SourceConfig(uri=str(clip), stream_id="warm", max_frames=5)
    run_engine([warm], "processes", timeout_s=60)  # warm up: the fork server, the engine's imports
    print(f"throughput, 720p clip of {frames} frames, {args.threads} decoder threads:", flush=True)
    tp = throughput(clip, args.threads, args.repeats, frames)
    print(f"engine/raw PyAV fps: threads {tp['threads_vs_raw']:.2f}x, processes {tp['processes_vs_raw']:.2f}x; "
          f"raw/engine CPU per frame: threads {tp['threads_vs_raw_cpu']:.2f}x, processes {tp['processes_vs_raw_cpu']:.2f}x",
          flush=True)
    live_runs = []
    for n in [int(s) for s in args.streams.split(",") if s]:
        for decode in MODES:
            r = live(clip, n, decode, args.live_seconds, args.live_threads)
            live_runs.append(r)
            print(f"live 720p25 x {n} ({decode}): {r['fps_total']:.1f} fps of {25 * n} due, p50 {r.get('p50_ms')} "
                  f"p99 {r.get('p99_ms')} ms, RSS {r['rss_mb']:.0f} MB ({r['rss_mb_per_stream']:.0f}/stream), "
                  f"PSS {r['pss_mb']:.0f} MB", flush=True)
    results = {
        "note": ("a shared 2-core machine busy with other people's jobs: absolute figures vary run to run; the "
                 "ratios of runs interleaved in this one run are the claims"),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "clip": {"frames": frames, "size": "1280x720", "codec": "h264 (testsrc2, veryfast, GOP 50)"},
        "throughput": tp, "live": live_runs,
        "targets_met": {"engine (processes) >= 0.9x raw PyAV decode, fps": tp["processes_vs_raw"] >= 0.9,
                        "engine (processes) >= 0.9x raw PyAV decode, CPU per frame": tp["processes_vs_raw_cpu"] >= 0.9},
        "modes": MODES,
        "not_measured": ["NVDEC (hwaccel: cuda) with the fused preprocessing kernel up to 32 streams (no GPU here)",
                         "the pool in the single-stream throughput run (one source: the same as a process per source)"],
        "bench_seconds": round(time.monotonic() - started, 1),
    }
    path = write_results(args.out, "decode", results)
    _plot(results, args.out)
    print(f"wrote {path} and {args.out / 'decode.png'} in {results['bench_seconds']:.0f} s")
    return 0


def _plot(results: dict, out: Path) -> None:
    fig, axes = new_figure(5, width_in=4.0)
    throughput_results = results["throughput"]
    names = ["raw PyAV", "engine\nthreads", "engine\nprocesses"]
    for col, (key, label, ratio) in enumerate([("best_fps", "frames/s, 1 stream 720p (best)", "processes_vs_raw"),
                                               ("median_cpu_ms_per_frame", "CPU ms per frame (median)",
                                                "processes_vs_raw_cpu")]):
        values = throughput_results[key]
        ax = axes[0][col]
        ax.bar([0, 1, 2], [values["pyav_raw"], values["threads"], values["processes"]],
               color=["grey", "tab:orange", "tab:blue"])
        ax.set_xticks([0, 1, 2], names)
        ax.set_ylabel(label)
        ax.set_title(f"processes: {throughput_results[ratio]:.2f}x raw")
    by_mode = {m: [r for r in results["live"] if r["decode"] == m] for m in MODES}
    colors = {"threads": "tab:orange", "processes": "tab:blue", "pool": "tab:green"}
    for col, (key, label) in enumerate([("fps_total", "total frames/s received"), ("p99_ms", "p99 capture → subscriber (ms)"),
                                        ("pss_mb_per_stream", "PSS per stream (MB)")], start=2):
        ax = axes[0][col]
        for mode, rows in by_mode.items():
            ax.plot([r["streams"] for r in rows], [r.get(key, np.nan) for r in rows], marker="o", color=colors[mode],
                    label=mode)
        if key == "fps_total":
            counts = [r["streams"] for r in by_mode["threads"]]
            ax.plot(counts, [25 * n for n in counts], "k--", linewidth=0.8, label="due (25 fps each)")
        ax.set_xlabel("live 720p25 streams")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.legend()
    save_figure(fig, out, "decode")


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
