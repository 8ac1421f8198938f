"""``amodal bench latency``: the spine's throughput and latency against references measured in the same run.

Measured side by side (ratios are the claims; absolute numbers depend on the machine):
  * decode: ``ffmpeg -f null`` of a 720p H.264 file (the decode ceiling) vs raw PyAV decode vs our
    ``PyAVSource`` (decode + plane copy into ``Frame``s), all with the same decoder thread count;
  * engine: the ``identity`` analyzer end to end (decode → queue → batch → publish → subscriber) for N
    concurrent streams vs raw PyAV decode;
  * publishing: our ``Publisher`` (FrameResult → msgpack → PUB) vs raw pyzmq + msgpack, ~1 KB messages;
  * live latency: capture → subscriber p50/p95/p99 for N concurrent 25 fps streams, and for a live RTSP
    720p25 stream from GStreamer's RTSP server over minutes (drift = slope of latency over time).
Writes ``latency.json`` and ``latency.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import threading
import time
from pathlib import Path

import av
import msgpack
import numpy as np
import zmq

from amodal.bench.common import new_figure, save_figure, subscribe_until_ended, write_results
from amodal.engine.stages.identity import IdentityStage
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.publisher import Publisher
from amodal.streams.base import SourceConfig
from amodal.streams.open import open_source
from amodal.types import FrameResult, ObjectResult, RLEMask

REPO = Path(__file__).resolve().parents[1]


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def make_test_file(path: Path, seconds: float, width: int = 1280, height: int = 720, fps: int = 25) -> Path:
    """A 720p H.264 clip (testsrc2, GOP 50) made by ffmpeg, reused when already there."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# ------------------------------------------------------------------------------------------- decode
def ffmpeg_null_fps(path: Path, frames: int, threads: int) -> float:
    start = time.perf_counter()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-threads", str(threads), "-i", str(path), "-f", "null", "-"], check=True)
    return frames / (time.perf_counter() - start)


def pyav_raw_fps(path: Path, threads: int) -> float:
    start = time.perf_counter()
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        n = sum(1 for _ in c.decode(stream))
    return n / (time.perf_counter() - start)


class _CountingSink:
    def __init__(self) -> None:
        self.frames = 0
        self.events = []

    def put_frame(self, frame) -> bool:
        self.frames += 1
        return True

    def put_event(self, event) -> None:
        self.events.append(event)


def source_decode_fps(path: Path, threads: int) -> float:
    source = open_source(SourceConfig(uri=str(path), stream_id="bench", realtime=False, decode_threads=threads))
    sink = _CountingSink()
    start = time.perf_counter()
    source.run(sink, threading.Event())
    return sink.frames / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------- engine
def run_engine(sources: list[SourceConfig], max_batch_size: int = 8, max_wait_ms: float = 2.0, timeout_s: float = 900,
               stages=None) -> dict:
    """Run the engine on ``sources`` through ``stages`` (default: one ``identity`` stage; stage instances or
    ``StageSlot``s) with a subscriber in its own process (as real subscribers are); returns frames received, wall
    time and capture → subscriber latency samples."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    endpoint = _free_endpoint()
    engine = Engine(EngineConfig(publish=endpoint, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms), pipelines={"default": stages or [IdentityStage()]}).start()
    ready, (parent, child) = ctx.Event(), ctx.Pipe(duplex=False)
    proc = ctx.Process(target=subscribe_until_ended, args=(endpoint, len(sources), timeout_s, ready, child), daemon=True)
    proc.start()
    ready.wait(60)
    time.sleep(0.5)  # the subscription reaches the publisher
    start_ns = time.time_ns()
    for s in sources:
        engine.add_source(s)
    got = parent.recv() if parent.poll(timeout_s + 60) else {"latency_ms": [], "wall_ns": [], "lost": -1}
    proc.join(10)
    snapshot = engine.snapshot()
    engine.stop()
    wall_s = (max(got["wall_ns"]) - start_ns) / 1e9 if got["wall_ns"] else float("nan")
    return {"received": len(got["latency_ms"]), "wall_s": wall_s, "latency_ms": got["latency_ms"],
            "t_s": [(t - start_ns) / 1e9 for t in got["wall_ns"]], "lost": got["lost"], "snapshot": snapshot}


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2), "n": len(samples)}


def engine_throughput(path: Path, streams: int, threads: int) -> dict:
    sources = [SourceConfig(uri=str(path), stream_id=f"f{i}", realtime=False, decode_threads=threads) for i in range(streams)]
    run = run_engine(sources)
    return {"streams": streams, "fps_total": run["received"] / run["wall_s"], "received": run["received"], "lost": run["lost"]}


def engine_live_latency(path: Path, streams: int, threads: int) -> dict:
    """Files paced at 25 fps like cameras: capture (decode) → subscriber latency."""
    sources = [SourceConfig(uri=str(path), stream_id=f"live{i}", realtime=True, decode_threads=threads, queue_size=2,
                            overflow="drop-oldest") for i in range(streams)]
    run = run_engine(sources, max_batch_size=max(1, streams), max_wait_ms=1.0)
    return {"streams": streams, **percentiles(run["latency_ms"]), "fps_total": run["received"] / run["wall_s"], "lost": run["lost"],
            "dropped": sum(s.get("dropped", 0) for s in run["snapshot"]["streams"].values())}


# --------------------------------------------------------------------------------------- publishing
def _sample_result(i: int) -> FrameResult:
    mask = np.zeros((128, 128), dtype=bool)
    mask[10:60, 20:90] = True
    rle = RLEMask.encode(mask)
    objs = tuple(
        ObjectResult(1, "person", 0.9, (10.0 + k, 20.0, 60.0, 90.0), rle, track_id=k, occlusion_level=0.2,
                     embedding=np.zeros(32, np.float16))
        for k in range(2)  # two tracked people with masks and short embeddings: a ~1 KB message
    )
    return FrameResult("pub", i, i / 25, time.time_ns(), 128, 128, objs, "bench")


def publish_rates(n: int) -> dict:
    """Messages/s: ours (FrameResult → schema → PUB thread) vs raw pyzmq + msgpack of the same payload."""
    from amodal import schema

    results = [_sample_result(i) for i in range(n)]
    payload_bytes = len(schema.encode_frame(results[0], 0, 0))
    ctx = zmq.Context.instance()

    def drain(endpoint: str, count: int, box: dict) -> None:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        box["ready"].set()
        got = 0
        while got < count and sub.poll(5000):
            sub.recv_multipart()
            got += 1
        box["got"] = got
        sub.close(0)

    # raw: the same dicts packed and sent in a loop
    endpoint = _free_endpoint()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(endpoint)
    box = {"ready": threading.Event()}
    t = threading.Thread(target=drain, args=(endpoint, n, box))
    t.start()
    box["ready"].wait()
    time.sleep(0.3)
    dicts = [msgpack.unpackb(schema.encode_frame(r, i, 0)) for i, r in enumerate(results)]
    start = time.perf_counter()
    for d in dicts:
        pub.send_multipart((b"frames/pub/", msgpack.packb(d, use_bin_type=True)))
    t.join()
    raw_rate = box["got"] / (time.perf_counter() - start)
    pub.close(0)

    # ours
    endpoint = _free_endpoint()
    publisher = Publisher(endpoint, send_hwm=10_000_000)
    publisher.start()
    box = {"ready": threading.Event()}
    t = threading.Thread(target=drain, args=(endpoint, n, box))
    t.start()
    box["ready"].wait()
    time.sleep(0.3)
    start = time.perf_counter()
    for k in range(0, n, 8):  # as the engine hands them over: one list per micro-batch
        publisher.publish_results(results[k : k + 8])
    t.join()
    ours_rate = box["got"] / (time.perf_counter() - start)
    publisher.close()
    return {"payload_bytes": payload_bytes, "messages": n, "raw_msgs_per_s": raw_rate, "ours_msgs_per_s": ours_rate,
            "ratio": ours_rate / raw_rate}


# ---------------------------------------------------------------------------------------------- RTSP
def _load_rtsp_helper():
    path = REPO / "tests" / "support" / "rtsp.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("amodal_bench_rtsp_support", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module if module.gst_rtsp_available() else None


def rtsp_latency(seconds: float, threads: int) -> dict:
    helper = _load_rtsp_helper()
    if helper is None:
        return {"skipped": "GStreamer RTSP server (tests/support/rtsp.py + gir1.2-gst-rtsp-server-1.0) not available"}
    server = helper.RtspServer(("/cam",), width=1280, height=720, fps=25, gop=25).start()
    try:
        source = SourceConfig(uri=server.url("/cam"), stream_id="rtsp", decode_threads=threads, max_frames=int(seconds * 25))
        run = run_engine([source], max_batch_size=1, max_wait_ms=0.0, timeout_s=seconds + 120)
    finally:
        server.stop()
    lat, t = np.array(run["latency_ms"]), np.array(run["t_s"])
    if len(lat) < 10:
        return {"error": f"only {len(lat)} frames received", "snapshot": run["snapshot"]}
    slope_ms_per_min = float(np.polyfit(t, lat, 1)[0] * 60.0)
    minutes = []
    for m in range(int(np.ceil(t.max() / 60.0))):
        sel = lat[(t >= 60 * m) & (t < 60 * (m + 1))]
        if len(sel):
            minutes.append({"minute": m, **percentiles(sel.tolist())})
    return {"seconds": seconds, "frames": int(len(lat)), "fps": len(lat) / run["wall_s"], **percentiles(lat.tolist()),
            "drift_ms_per_min": round(slope_ms_per_min, 3), "per_minute": minutes, "lost": run["lost"],
            "series_t_s": t[:: max(1, len(t) // 2000)].round(3).tolist(), "series_ms": lat[:: max(1, len(t) // 2000)].round(2).tolist()}


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="amodal bench latency", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/bench/latency"))
    p.add_argument("--seconds", type=float, default=20.0, help="length of the 720p test clip")
    p.add_argument("--threads", type=int, default=2, help="decoder threads (same for every reference)")
    p.add_argument("--streams", default="1,2,4", help="concurrent stream counts")
    p.add_argument("--rtsp-seconds", type=float, default=300.0, help="live RTSP run length (0 skips)")
    p.add_argument("--publish-messages", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3, help="repeats of each decode measurement (best is kept)")
    args = p.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        print("ffmpeg not found (make system-deps)")
        return 2
    clip = make_test_file(args.out / "clip_720p.mp4", args.seconds)
    frames = count_frames(clip)
    stream_counts = [int(s) for s in args.streams.split(",") if s]
    best = lambda f: max(f() for _ in range(args.repeats))  # noqa: E731
    decode = {
        "frames": frames,
        "threads": args.threads,
        "ffmpeg_null_fps": best(lambda: ffmpeg_null_fps(clip, frames, args.threads)),
        "pyav_raw_fps": best(lambda: pyav_raw_fps(clip, args.threads)),
        "source_fps": best(lambda: source_decode_fps(clip, args.threads)),
    }
    decode["source_vs_ffmpeg"] = decode["source_fps"] / decode["ffmpeg_null_fps"]
    print(f"decode 720p: ffmpeg -f null {decode['ffmpeg_null_fps']:.0f} fps, PyAV {decode['pyav_raw_fps']:.0f} fps, "
          f"our source {decode['source_fps']:.0f} fps ({decode['source_vs_ffmpeg']:.2f}x ffmpeg)", flush=True)
    engine = []
    for n in stream_counts:
        r = best(lambda: engine_throughput(clip, n, args.threads)["fps_total"]) if n == 1 else engine_throughput(clip, n, args.threads)["fps_total"]
        engine.append({"streams": n, "fps_total": r})
        print(f"engine identity, {n} stream(s): {r:.0f} fps total", flush=True)
    engine_vs_pyav = engine[0]["fps_total"] / decode["pyav_raw_fps"] if engine and engine[0]["streams"] == 1 else None
    if engine_vs_pyav is not None:
        print(f"engine (1 stream) vs raw PyAV decode: {engine_vs_pyav:.2f}x", flush=True)
    live = []
    for n in stream_counts:
        r = engine_live_latency(clip, n, args.threads)
        live.append(r)
        print(f"live 25 fps x {n}: latency p50 {r.get('p50_ms')} p95 {r.get('p95_ms')} p99 {r.get('p99_ms')} ms", flush=True)
    publish = publish_rates(args.publish_messages)
    print(f"publishing {publish['payload_bytes']} B messages: ours {publish['ours_msgs_per_s']:.0f}/s, raw {publish['raw_msgs_per_s']:.0f}/s ({publish['ratio']:.2f}x)", flush=True)
    rtsp = rtsp_latency(args.rtsp_seconds, args.threads) if args.rtsp_seconds > 0 else {"skipped": "--rtsp-seconds 0"}
    if "p99_ms" in rtsp:
        print(f"RTSP 720p25 {rtsp['seconds']:.0f} s: p50 {rtsp['p50_ms']} p95 {rtsp['p95_ms']} p99 {rtsp['p99_ms']} ms, drift {rtsp['drift_ms_per_min']} ms/min", flush=True)
    else:
        print(f"RTSP: {rtsp}", flush=True)
    targets = {
        "decode >= 0.9x ffmpeg -f null": decode["source_vs_ffmpeg"] >= 0.9,
        "engine identity >= 0.9x raw PyAV": engine_vs_pyav is not None and engine_vs_pyav >= 0.9,
        "publishing >= 0.5x raw pyzmq+msgpack": publish["ratio"] >= 0.5,
        "RTSP p99 < 60 ms": "p99_ms" in rtsp and rtsp["p99_ms"] < 60,
    }
    results = {"decode": decode, "engine": engine, "engine_vs_pyav": engine_vs_pyav, "live": live, "publish": publish,
               "rtsp": rtsp, "targets_met": targets}
    path = write_results(args.out, "latency", results)
    _plot(results, args.out)
    for name, ok in targets.items():
        print(f"  [{'x' if ok else ' '}] {name}")
    print(f"wrote {path} and {args.out / 'latency.png'}")
    return 0


def _plot(results: dict, out: Path) -> None:
    fig, axes = new_figure(3, width_in=5.0)
    ax = axes[0][0]
    d = results["decode"]
    names = ["ffmpeg -f null", "PyAV raw", "our source"] + [f"engine x{e['streams']}" for e in results["engine"]]
    values = [d["ffmpeg_null_fps"], d["pyav_raw_fps"], d["source_fps"]] + [e["fps_total"] for e in results["engine"]]
    ax.bar(range(len(values)), values, color=["grey", "grey", "tab:blue"] + ["tab:green"] * len(results["engine"]))
    ax.set_xticks(range(len(values)), names, rotation=30, ha="right")
    ax.set_ylabel("frames/s (720p H.264)")
    ax.set_title("decode and engine throughput")
    ax = axes[0][1]
    for r in results["live"]:
        if "p50_ms" in r:
            ax.plot(["p50", "p95", "p99"], [r["p50_ms"], r["p95_ms"], r["p99_ms"]], marker="o", label=f"{r['streams']} x 25 fps")
    pub = results["publish"]
    ax.set_ylabel("capture → subscriber latency (ms)")
    ax.set_title(f"live latency; publish {pub['ratio']:.2f}x raw zmq")
    ax.legend()
    ax = axes[0][2]
    rtsp = results["rtsp"]
    if "series_ms" in rtsp:
        ax.plot(rtsp["series_t_s"], rtsp["series_ms"], ".", markersize=2)
        ax.axhline(rtsp["p99_ms"], color="red", linestyle="--", label=f"p99 {rtsp['p99_ms']} ms")
        ax.set_xlabel("time (s)")
        ax.legend()
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"RTSP 720p25, drift {rtsp.get('drift_ms_per_min', 'n/a')} ms/min")
    save_figure(fig, out, "latency")
