"""``amodal bench analyzer --pipeline STAGES``: model-only fps against engine fps at batch sizes 1–16.

Model-only: the pipeline's stages (with the batch preprocessing; detached stages run in line too) on pre-decoded
frames in batches of B (the ceiling).  Engine: the same pipeline in the engine, B concurrent file streams decoded as fast as possible and
micro-batched up to B (decode, queues, batching, post-processing and publishing included), received by a
subscriber.  Both in one run; the ratio engine/model is the engine's efficiency.  Writes
``analyzer_<stages>.json`` + ``.png``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from amodal.bench.common import new_figure, save_figure, write_results
from amodal.bench.latency import _free_endpoint
from amodal.demo import FEED_FPS, encode_feed, render_shapes, render_street
from amodal.engine.config import (
    DEFAULT_PIPELINE,
    EngineConfig,
    PipelineConfig,
    parse_stage_list,
    pipeline_from_analyzer,
)
from amodal.engine.device import select_device
from amodal.engine.engine import Engine, build_pipelines
from amodal.engine.pipeline import Pipeline, StageSlot
from amodal.engine.stage import RatePolicy
from amodal.schema import FrameMessage, StatusMessage
from amodal.streams.base import SourceConfig
from amodal.streams.open import open_source
from amodal.subscriber import Subscriber
from amodal.types import StreamState


def _decode_all(path: Path, n: int) -> list:
    class Keep:
        def __init__(self):
            self.frames = []

        def put_frame(self, frame):
            self.frames.append(frame)
            return len(self.frames) < n

        def put_event(self, event):
            pass

    import threading

    sink = Keep()
    open_source(SourceConfig(uri=str(path), stream_id="bench", max_frames=n)).run(sink, threading.Event())
    return sink.frames


def model_fps(config: PipelineConfig, device: torch.device, frames: list, batch: int, repeats: int) -> float:
    # every stage in line, detached (slow) ones included: the model-only figure is what the stages can do
    slots = [StageSlot(slot.stage, RatePolicy()) for slot in build_pipelines([config])[config.name]]
    pipeline = Pipeline(config.name, slots)
    stages = list({id(s.stage): s.stage for s in pipeline.slots}.values())
    for stage in stages:
        stage.start(device)

    def end_stream() -> None:
        for stage in stages:
            stage.on_source_eos("bench")

    pipeline.process(frames[:batch], device)  # warm-up
    end_stream()
    done, start = 0, time.perf_counter()
    for _ in range(repeats):
        for k in range(0, len(frames) - batch + 1, batch):
            pipeline.process(frames[k : k + batch], device)
            done += batch
        end_stream()
    if device.type == "cuda":
        torch.cuda.synchronize()
    for stage in stages:
        stage.stop()
    return done / (time.perf_counter() - start)


def engine_fps(config: PipelineConfig, device_name: str, clip: Path, batch: int, frames_per_stream: int) -> float:
    endpoint = _free_endpoint()
    engine = Engine(EngineConfig(publish=endpoint, pipelines=(config,), max_batch_size=batch, max_wait_ms=20.0,
                                 device=device_name)).start()
    sub = Subscriber(endpoint)
    time.sleep(0.3)
    start = time.perf_counter()
    for i in range(batch):
        engine.add_source(SourceConfig(uri=str(clip), stream_id=f"s{i}", realtime=False, max_frames=frames_per_stream))
    received, ended = 0, set()
    deadline = time.monotonic() + 1800
    while len(ended) < batch and time.monotonic() < deadline:
        msg = sub.recv(1.0)
        if isinstance(msg, FrameMessage):
            received += 1
        elif isinstance(msg, StatusMessage) and msg.event.state in (StreamState.ENDED, StreamState.ERROR):
            ended.add(msg.event.stream_id)
    elapsed = time.perf_counter() - start
    engine.stop()
    sub.close()
    return received / elapsed


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="amodal bench analyzer", description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="ovis", help="stages, e.g. ovis,reid")
    p.add_argument("--analyzer", help="legacy: one analyzer (reid means ovis,reid)")
    p.add_argument("--batches", default="1,2,4,8,16")
    p.add_argument("--frames", type=int, default=32, help="frames per stream / per model-only pass")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("out/bench/analyzer"))
    args = p.parse_args(argv)
    config = (pipeline_from_analyzer(args.analyzer, "--analyzer") if args.analyzer
              else PipelineConfig.of(DEFAULT_PIPELINE, parse_stage_list(args.pipeline)))
    name = "_".join(config.stage_names)
    device = select_device(args.device)
    render = render_shapes if config.stage_names[0] == "maskrcnn" else render_street  # the demo's feed
    clip = encode_feed(args.out / "feed.mp4", render(max(2.0, args.frames / FEED_FPS + 0.5)))
    frames = _decode_all(clip, args.frames)
    rows = []
    for batch in [int(b) for b in args.batches.split(",") if b]:
        m = model_fps(config, device, frames, batch, args.repeats)
        e = engine_fps(config, args.device, clip, batch, args.frames)
        rows.append({"batch": batch, "model_fps": m, "engine_fps": e, "engine_vs_model": e / m})
        print(f"{name} batch {batch:2d}: model {m:7.1f} fps, engine {e:7.1f} fps ({e / m:.2f}x)", flush=True)
    path = write_results(args.out, f"analyzer_{name}", {"pipeline": list(config.stage_names), "device": str(device), "rows": rows,
                                                                  "frame_size": [frames[0].width, frames[0].height]})
    fig, axes = new_figure(1)
    ax = axes[0][0]
    ax.plot([r["batch"] for r in rows], [r["model_fps"] for r in rows], marker="o", label="model only")
    ax.plot([r["batch"] for r in rows], [r["engine_fps"] for r in rows], marker="s", label="engine (decode→publish)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (= concurrent streams)")
    ax.set_ylabel("frames/s")
    ax.set_title(f"{','.join(config.stage_names)} on {device}")
    ax.legend()
    save_figure(fig, args.out, f"analyzer_{name}")
    print(f"wrote {path}")
    return 0
