"""``make demo``: the whole path on an embedded default feed.

1. renders the default feed and encodes it to an H.264 MP4 (so the demo exercises the real PyAV file path):
   for ``ovis`` (the default) and ``reid`` a street scene from the occlusion-world video generator
   (``amodal data synth video``: people, cars, animals, boxes and balls walking behind each other on a textured
   ground plane, a scene none of the training videos contains); for ``maskrcnn`` a scene of discs, boxes and
   person-like shapes that cross and occlude each other;
2. starts the engine on it with the analyzer's shipped weights (trained here by ``amodal train`` /
   ``amodal.training.train_maskrcnn`` on synthetic data), publishing on a loopback ZeroMQ port;
3. subscribes like any client: one console line per frame;
4. writes an annotated MP4 (masks, boxes, labels, track ids) and prints its path.
"""
from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np

from amodal.draw import draw_result
from amodal.engine.config import AnalyzerConfig, EngineConfig
from amodal.engine.engine import Engine
from amodal.schema import FrameMessage, StatusMessage
from amodal.cli_subscribe import summary_line
from amodal.streams.base import SourceConfig
from amodal.streams.synthetic import SyntheticScene, SyntheticSpec
from amodal.subscriber import Subscriber
from amodal.types import FrameResult, StreamState

SHAPES_FEED = SyntheticSpec(scene="shapes", width=256, height=192, fps=25.0, objects=5, seed=7)
STREET_SEED, STREET_INDEX = 2026, 4  # a medium-occlusion street scene outside every training set (seed 3)
FEED_FPS = 25
FEEDS = ("street", "shapes")


def render_shapes(seconds: float) -> Iterator[np.ndarray]:
    """uint8[H, W, 3] frames of the moving-shapes scene."""
    scene = SyntheticScene(SHAPES_FEED)
    for i in range(int(seconds * SHAPES_FEED.fps)):
        yield scene.render(i)


def render_street(seconds: float) -> Iterator[np.ndarray]:
    """uint8[H, W, 3] frames of one occlusion-world street scene at 320×192, its objects' paths spread over
    the whole clip."""
    from amodal.training.data.synth.video import VideoConfig, render_frame, scene_for

    frames = int(seconds * FEED_FPS)
    config = VideoConfig(frames=frames, objects_min=4, objects_max=7)
    scene = scene_for(STREET_SEED, STREET_INDEX, config)
    for t in range(frames):
        yield render_frame(scene, t, frames).rgb


def encode_feed(path: Path, frames: Iterable[np.ndarray], fps: int = FEED_FPS) -> Path:
    """Encode RGB ``frames`` into an H.264 MP4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
                stream.options = {"crf": "18", "preset": "veryfast"}
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        if stream is not None:
            container.mux(stream.encode(None))
    return path


def write_annotated(feed: Path, results: dict[int, FrameResult], out: Path) -> Path:
    """Decode ``feed`` again and draw each frame's published result onto it."""
    with av.open(str(feed)) as src, av.open(str(out), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream("libx264", rate=vin.average_rate or 25)
        vout.width, vout.height, vout.pix_fmt = vin.width, vin.height, "yuv420p"
        for i, frame in enumerate(src.decode(vin)):
            image = frame.to_ndarray(format="rgb24")
            if i in results:
                image = draw_result(image, results[i])
            dst.mux(vout.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        dst.mux(vout.encode(None))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m amodal.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--analyzer", default="ovis", choices=("ovis", "reid", "maskrcnn", "identity"))
    p.add_argument("--feed", choices=FEEDS, help="default: shapes for maskrcnn, street otherwise")
    p.add_argument("--weights", default=None, help="default: the shipped weights")
    p.add_argument("--realtime", action="store_true", help="pace the file at 25 fps like a camera")
    args = p.parse_args(argv)

    kind = args.feed or ("shapes" if args.analyzer == "maskrcnn" else "street")
    render = render_shapes if kind == "shapes" else render_street
    feed = encode_feed(args.out / "feed.mp4", render(args.seconds))
    print(f"demo feed: {feed} ({args.seconds:.0f} s of the {kind} scene)")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    config = EngineConfig(
        sources=(),
        analyzer=AnalyzerConfig(name=args.analyzer, weights=args.weights, score_threshold=0.5),
        publish=endpoint,
        max_batch_size=4,
    )
    engine = Engine(config).start()
    results: dict[int, FrameResult] = {}
    done = threading.Event()

    def subscribe() -> None:
        with Subscriber(endpoint, streams=["demo"]) as sub:
            ready.set()
            for msg in sub:
                print(summary_line(msg), flush=True)
                if isinstance(msg, FrameMessage):
                    results[msg.result.frame_index] = msg.result
                elif isinstance(msg, StatusMessage) and msg.event.state in (StreamState.ENDED, StreamState.ERROR):
                    if msg.event.state == StreamState.ENDED or msg.event.fatal:
                        break
        done.set()

    ready = threading.Event()
    threading.Thread(target=subscribe, daemon=True).start()
    ready.wait(5)
    time.sleep(0.3)  # the subscription reaches the publisher
    print(f"engine: {config.analyzer.name} on {engine.device}, publishing on {endpoint}")
    engine.add_source(SourceConfig(uri=str(feed), stream_id="demo", realtime=args.realtime))
    done.wait(600)
    engine.wait(5)
    engine.stop()
    snapshot = engine.snapshot()
    latency = snapshot["latency"]["total"]
    print(f"frames published: {len(results)}; engine latency (decode→publish) p50 {latency.get('p50_ms')} ms, p99 {latency.get('p99_ms')} ms")
    out = write_annotated(feed, results, args.out / "annotated.mp4")
    objects = sum(len(r.objects) for r in results.values())
    print(f"annotated video: {out.resolve()} ({objects} objects drawn over {len(results)} frames)")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
