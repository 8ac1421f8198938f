"""``amodal bench pipeline [--part preprocess|overhead|slow]``: what pipelines of stages cost, each against its
reference in the same run.

* ``preprocess``: a micro-batch of 8 decoded 720p yuv420p frames to one model input, once per batch through
  ``amodal.kernels.preprocess`` (what the engine does), against the previous release's per-frame path (numpy colour
  conversion of each frame, then resize, letterbox and normalise per frame in torch); at the frame's own size (the
  input ``ovis``, ``maskrcnn`` and ``reid`` declare) and letterboxed to 640×384.
* ``overhead``: engine frames/s with a pipeline of three ``identity`` stages against one, the 720p clip decoded as
  fast as possible, runs alternated.
* ``slow``: a 25 fps paced 720p stream through a fast stage, with and without a stage that sleeps 1 s per batch
  under the newest-frame policy: the fast path's capture → subscriber latency (p50/p99) in both runs.

Writes ``pipeline.json`` and ``pipeline.png`` (device, versions, commit).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amodal.bench.common import new_figure, save_figure, time_cpu_ms, write_results
from amodal.bench.latency import make_test_file, percentiles, run_engine
from amodal.engine.device import select_device
from amodal.engine.pipeline import StageSlot
from amodal.engine.preprocess import prepare_inputs
from amodal.engine.stage import InputSpec, RatePolicy, Stage, StageBatch
from amodal.engine.stages.identity import IdentityStage
from amodal.streams.base import SourceConfig
from amodal.types import Frame, ObjectResult

PARTS = ("preprocess", "overhead", "slow")


def decoded_frames(path: Path, n: int) -> list[Frame]:
    """The first ``n`` frames of ``path`` as the engine holds them (yuv420p planes)."""
    from amodal.streams.open import open_source

    frames: list[Frame] = []

    class _Collect:
        def put_frame(self, frame: Frame) -> bool:
            frames.append(frame)
            return len(frames) < n

        def put_event(self, event) -> None:
            pass

    import threading

    open_source(SourceConfig(uri=str(path), stream_id="bench", realtime=False, max_frames=n)).run(_Collect(),
                                                                                                 threading.Event())
    return frames[:n]


def per_frame_path(frames: list[Frame], spec: InputSpec, device: torch.device) -> list[torch.Tensor]:
    """The previous release's path: each frame converted to RGB on its own (numpy), then resized, letterboxed and
    normalised on its own."""
    out = []
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    for f in frames:
        rgb = torch.from_numpy(f.to_rgb()).to(device).permute(2, 0, 1).float().div_(255.0)
        if spec.size_hw is not None:
            out_h, out_w = spec.size_hw
            scale = min(out_h / f.height, out_w / f.width)
            rh, rw = round(f.height * scale), round(f.width * scale)
            resized = F.interpolate(rgb[None], size=(rh, rw), mode="bilinear", align_corners=False)[0]
            py, px = (out_h - rh) // 2, (out_w - rw) // 2
            rgb = F.pad(resized, (px, out_w - rw - px, py, out_h - rh - py))
        out.append((rgb - mean) / std)
    return out


def bench_preprocess(clip: Path, device: torch.device, reps: int) -> list[dict]:
    frames = decoded_frames(clip, 8)
    rows = []
    for label, spec in (("native 1280x720", InputSpec()),
                        ("letterbox 640x384", InputSpec(size_hw=(384, 640), mean=(0.485, 0.456, 0.406),
                                                        std=(0.229, 0.224, 0.225)))):
        batched = prepare_inputs(frames, [spec], device)[spec].images
        reference = per_frame_path(frames, spec, device)
        max_err = max(float((a - b).abs().max()) for a, b in zip(batched, reference))
        times = time_cpu_ms({"once per batch": lambda: prepare_inputs(frames, [spec], device),
                             "per frame": lambda: per_frame_path(frames, spec, device)}, reps)
        batch_ms, frame_ms = times["once per batch"][0], times["per frame"][0]
        rows.append({"input": label, "batch_ms": round(batch_ms, 2), "per_frame_ms": round(frame_ms, 2),
                     "speedup": round(frame_ms / batch_ms, 2), "max_abs_difference": max_err})
        print(f"preprocess 8 x 720p → {label}: once per batch {batch_ms:.1f} ms, per frame {frame_ms:.1f} ms "
              f"({frame_ms / batch_ms:.2f}x); max |difference| {max_err:.2g}", flush=True)
    return rows


def pipeline_us_per_frame(frames: list[Frame], stages: int, device: torch.device, reps: int = 2000) -> float:
    """What the pipeline machinery itself costs per frame (batches of ``len(frames)``, no decode, no publish)."""
    from amodal.engine.pipeline import Pipeline

    pipeline = Pipeline.of("bench", [IdentityStage() for _ in range(stages)])
    for slot in pipeline.slots:
        slot.stage.start(device)
    for _ in range(50):
        pipeline.process(frames, device)
    start = time.perf_counter()
    for _ in range(reps):
        pipeline.process(frames, device)
    return (time.perf_counter() - start) / reps / len(frames) * 1e6


def bench_overhead(clip: Path, repeats: int) -> dict:
    frames = decoded_frames(clip, 8)
    cpu = torch.device("cpu")
    us = {n: pipeline_us_per_frame(frames, n, cpu) for n in (1, 3)}
    print(f"pipeline machinery per frame: 1 identity stage {us[1]:.1f} µs, 3 stages {us[3]:.1f} µs", flush=True)
    fps: dict[str, list[float]] = {"1 identity": [], "3 identity": []}
    for _ in range(repeats):
        for label, stages in (("1 identity", [IdentityStage()]),
                              ("3 identity", [IdentityStage(), IdentityStage(), IdentityStage()])):
            run = run_engine([SourceConfig(uri=str(clip), stream_id="f0", realtime=False, decode_threads=2)],
                             stages=stages)
            fps[label].append(run["received"] / run["wall_s"])
    one, three = float(np.median(fps["1 identity"])), float(np.median(fps["3 identity"]))
    print(f"engine fps: 1 identity stage {one:.0f}, 3 identity stages {three:.0f} ({three / one:.3f}x)", flush=True)
    return {"fps_1_stage": fps["1 identity"], "fps_3_stages": fps["3 identity"], "median_1": one, "median_3": three,
            "ratio": three / one, "mean_ratio": float(np.mean(fps["3 identity"]) / np.mean(fps["1 identity"])),
            "pipeline_us_per_frame_1_stage": us[1], "pipeline_us_per_frame_3_stages": us[3]}


class SleepStage(Stage):
    """A slow secondary stage: sleeps ``seconds`` per batch, then marks each object's layer."""

    name = "sleep"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        time.sleep(self.seconds)
        return list(batch.objects)


def bench_slow(clip: Path, seconds: float) -> dict:
    out = {}
    for label, stages in (("fast only", [IdentityStage()]),
                          ("fast + 1 s newest-frame stage", [IdentityStage(),
                                                             StageSlot(SleepStage(1.0), RatePolicy("newest"))])):
        source = SourceConfig(uri=str(clip), stream_id="cam", realtime=True, overflow="drop-oldest", queue_size=2,
                              decode_threads=2, max_frames=int(seconds * 25))
        run = run_engine([source], max_batch_size=1, max_wait_ms=0.0, stages=stages)
        out[label] = {**percentiles(run["latency_ms"]), "frames": run["received"]}
        print(f"25 fps stream, {label}: capture → subscriber {out[label]}", flush=True)
    base, slow = out["fast only"]["p99_ms"], out["fast + 1 s newest-frame stage"]["p99_ms"]
    out["p99_ratio"] = slow / base
    print(f"p99 with the slow stage / without: {slow / base:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="amodal bench pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=PARTS, action="append", help="default: all")
    p.add_argument("--out", type=Path, default=Path("out/bench/pipeline"))
    p.add_argument("--clip-seconds", type=float, default=20.0)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3, help="overhead: alternated engine runs per pipeline")
    p.add_argument("--slow-seconds", type=float, default=30.0, help="slow: length of each paced run")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    parts = args.part or list(PARTS)
    device = select_device(args.device)
    clip = make_test_file(args.out / "clip720p.mp4", args.clip_seconds)
    results: dict = {"device": str(device)}
    if "preprocess" in parts:
        results["preprocess"] = bench_preprocess(clip, device, args.reps)
    if "overhead" in parts:
        results["overhead"] = bench_overhead(clip, args.repeats)
    if "slow" in parts:
        results["slow"] = bench_slow(clip, args.slow_seconds)
    path = write_results(args.out, "pipeline", results)
    fig, axes = new_figure(ncols=3, width_in=4.5)
    if "preprocess" in results:
        rows = results["preprocess"]
        x = np.arange(len(rows))
        axes[0][0].bar(x - 0.2, [r["batch_ms"] for r in rows], 0.4, label="once per batch")
        axes[0][0].bar(x + 0.2, [r["per_frame_ms"] for r in rows], 0.4, label="per frame (0.1)")
        axes[0][0].set_xticks(x, [r["input"] for r in rows])
        axes[0][0].set_ylabel("ms per 8 × 720p frames")
        axes[0][0].legend()
    if "overhead" in results:
        o = results["overhead"]
        axes[0][1].bar(["1 identity", "3 identity"], [o["median_1"], o["median_3"]])
        axes[0][1].set_ylabel("engine frames/s")
    if "slow" in results:
        s = results["slow"]
        labels = [k for k in s if k != "p99_ratio"]
        axes[0][2].bar(labels, [s[k].get("p99_ms", 0.0) for k in labels])
        axes[0][2].set_ylabel("p99 capture → subscriber (ms)")
        axes[0][2].tick_params(axis="x", labelsize=7)
    fig.suptitle(f"pipelines on {device}")
    save_figure(fig, args.out, "pipeline")
    print(f"wrote {path}")
    return 0
