"""What every benchmark records next to its numbers: device, versions, commit; JSON + plot writing."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amodal.provenance import git_commit


def environment() -> dict[str, Any]:
    """Device name, library versions, CPU count and commit for a results file."""
    import numpy as np
    import torch

    env: dict[str, Any] = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
    }
    for name in ("triton", "av", "zmq", "faiss"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            env[name] = None
    return env


def write_results(out_dir: str | Path, name: str, results: dict[str, Any]) -> Path:
    """Write ``{environment, **results}`` to ``out_dir/name.json``; returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **results}, indent=2, default=float))
    return path


def new_figure(ncols: int = 1, width_in: float = 6.0, height_in: float = 4.0):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width_in * ncols, height_in), squeeze=False)


def save_figure(fig, out_dir: str | Path, name: str) -> Path:
    import matplotlib.pyplot as plt

    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def time_cpu_ms(steps: dict[str, Callable[[], Any]], reps: int) -> dict[str, tuple[float, float, float]]:
    """Round-robin over the methods (so a busy shared CPU slows them alike); (p50, p20, p80) ms per method."""
    for step in steps.values():
        step()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            samples[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = (statistics.median(values), values[len(values) // 5], values[(4 * len(values)) // 5])
    return out


def time_gpu_ms(steps: dict[str, Callable[[], Any]]) -> dict[str, tuple[float, float, float] | str]:
    """``triton.testing.do_bench`` per method, (p50, p20, p80) ms; a method that raises (say a forced SDPA
    backend refusing the shape, or out of memory) gets its error message instead."""
    import torch
    import triton.testing

    out: dict[str, tuple[float, float, float] | str] = {}
    for name, step in steps.items():
        try:
            p50, p20, p80 = triton.testing.do_bench(step, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
            out[name] = (p50, p20, p80)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            out[name] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            torch.cuda.empty_cache()
    return out


def subscribe_until_ended(endpoint: str, streams: int, timeout_s: float, ready, conn) -> None:
    """Subscriber process: receive until every stream has ended; send back counts and latencies."""
    from amodal.schema import FrameMessage, StatusMessage
    from amodal.subscriber import Subscriber
    from amodal.types import StreamState

    sub = Subscriber(endpoint)
    ready.set()
    ended: set[str] = set()
    latencies_ms: list[float] = []
    wall_ns: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(ended) < streams and time.monotonic() < deadline:
        msg = sub.recv(1.0)
        if isinstance(msg, FrameMessage):
            now_ns = time.time_ns()
            latencies_ms.append((now_ns - msg.result.capture_time_ns) / 1e6)
            wall_ns.append(now_ns)
        elif isinstance(msg, StatusMessage) and (
            msg.event.state == StreamState.ENDED or (msg.event.state == StreamState.ERROR and msg.event.fatal)
        ):
            ended.add(msg.event.stream_id)
    conn.send({"latency_ms": latencies_ms, "wall_ns": wall_ns, "lost": sum(sub.stats.lost.values())})
    sub.close()
