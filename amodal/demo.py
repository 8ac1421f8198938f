"""``make demo``: the whole path on an embedded default feed, paced like a camera.

1. renders the default feed and encodes it to an H.264 MP4 (so the demo exercises the real PyAV file path): for
   camera pipelines a street scene of the occlusion world (``amodal.world.street``: people, cars, animals, boxes and
   balls walking behind each other on a textured ground plane, a scene none of the training videos contains); for
   ``maskrcnn`` a scene of discs, boxes and person-like shapes that cross and occlude each other;
2. starts the engine with the pipeline (default ``ovis``, the shipped weights trained here on synthetic data),
   publishing on a loopback ZeroMQ port and writing the annotated video through the engine's annotated-video sink;
   the engine waits for the demo's subscriber before it attaches the feed, then plays the file in real time like a
   camera (25 fps, newest frame wins when the model is slower: dropped frames are reported, latency stays bounded);
3. subscribes like any client: one console line per frame;
4. ends with the published fps and the capture → subscriber latency (p50 / p99), and the annotated video's path.

``--feed xray`` (``make demo-xray``) runs a baggage scanner's belt instead: rendered bags dropped into a hot folder
as DICOS files, the ``xray`` pipeline, what was found per bag, the annotated video (``amodal.demo_xray``).
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

from amodal.cli_subscribe import summary_line
from amodal.engine.config import DEFAULT_PIPELINE, EngineConfig, PipelineConfig, parse_stage_list, pipeline_from_analyzer
from amodal.engine.engine import Engine
from amodal.schema import FrameMessage, StatusMessage
from amodal.streams.base import SourceConfig
from amodal.streams.synthetic import SyntheticScene, SyntheticSpec
from amodal.subscriber import Subscriber
from amodal.types import StreamState

SHAPES_FEED = SyntheticSpec(scene="shapes", width=256, height=192, fps=25.0, objects=5, seed=7)
STREET_SEED, STREET_INDEX = 2026, 4  # a medium-occlusion street scene outside every training set (seed 3)
FEED_FPS = 25
FEEDS = ("street", "shapes", "xray")
DEFAULT_STAGES = "ovis,eoras"


def render_shapes(seconds: float) -> Iterator[np.ndarray]:
    """uint8[H, W, 3] frames of the moving-shapes scene."""
    scene = SyntheticScene(SHAPES_FEED)
    for i in range(int(seconds * SHAPES_FEED.fps)):
        yield scene.render(i)


def render_street(seconds: float) -> Iterator[np.ndarray]:
    """uint8[H, W, 3] frames of one occlusion-world street scene at 320×192, its objects' paths spread over
    the whole clip."""
    from amodal.world.street import VideoConfig, render_frame, scene_for

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pipeline(args: argparse.Namespace) -> PipelineConfig:
    if args.analyzer:  # the previous release's flag
        return pipeline_from_analyzer({"name": args.analyzer, **({"weights": args.weights} if args.weights else {})},
                                      "--analyzer")
    pipeline = PipelineConfig.of(DEFAULT_PIPELINE, parse_stage_list(args.pipeline))
    if args.weights:
        import dataclasses

        first = pipeline.stages[0]
        stages = (dataclasses.replace(first, settings=dataclasses.replace(first.settings, weights=args.weights)),
                  *pipeline.stages[1:])
        pipeline = dataclasses.replace(pipeline, stages=stages)
    return pipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m amodal.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--pipeline", default=None,
                   help=f"stages, e.g. ovis,reid (default {DEFAULT_STAGES}; xray for --feed xray, or xray,layers)")
    p.add_argument("--analyzer", choices=("ovis", "reid", "maskrcnn", "identity"), help="legacy: one analyzer")
    p.add_argument("--feed", choices=FEEDS, help="default: shapes for maskrcnn, street otherwise")
    p.add_argument("--weights", default=None, help="the first stage's weights (default: the shipped ones)")
    p.add_argument("--fast", action="store_true", help="read the file as fast as possible, every frame analysed "
                                                       "(default: paced at 25 fps like a camera)")
    xray = p.add_argument_group("--feed xray (a baggage scanner's hot folder)")
    xray.add_argument("--bags", type=int, default=6, help="bags dropped into the hot folder (default 6)")
    xray.add_argument("--interval-s", type=float, default=0.5, help="seconds between two bags (default 0.5)")
    xray.add_argument("--size", type=int, default=256, help="scan size in pixels, square (default 256)")
    xray.add_argument("--gray16", action="store_true", help="16-bit grayscale DICOS scans instead of 8-bit RGB")
    xray.add_argument("--score-threshold", type=float, default=0.08,
                      help="the xray stage's threshold (default 0.08: the shipped tiny weights are weak, their "
                           "class scores stay low)")
    xray.add_argument("--max-items", type=int, default=5, help="most items published per bag (default 5)")
    xray.add_argument("--video-fps", type=int, default=2, help="bags per second in the annotated video (default 2)")
    xray.add_argument("--amendments-wait-s", type=float, default=300.0,
                      help="after the last bag, how long to wait for detached stages' amendments (default 300)")
    args = p.parse_args(argv)
    if args.feed == "xray":
        from amodal import demo_xray

        args.pipeline = args.pipeline or "xray"
        return demo_xray.main(args)
    args.pipeline = args.pipeline or DEFAULT_STAGES

    pipeline = _pipeline(args)
    kind = args.feed or ("shapes" if pipeline.stage_names[0] == "maskrcnn" else "street")
    render = render_shapes if kind == "shapes" else render_street
    feed = encode_feed(args.out / "feed.mp4", render(args.seconds))
    n_frames = int(args.seconds * FEED_FPS)
    print(f"demo feed: {feed} ({args.seconds:g} s of the {kind} scene, {n_frames} frames)")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    annotated = args.out / "annotated.mp4"
    source = (SourceConfig(uri=str(feed), stream_id="demo", realtime=False) if args.fast else
              SourceConfig(uri=str(feed), stream_id="demo", realtime=True, overflow="drop-oldest", queue_size=2))
    config = EngineConfig(sources=(source,), pipelines=(pipeline,), publish=endpoint, max_batch_size=4,
                          annotate=str(annotated), wait_for_subscribers=1, wait_for_subscribers_timeout_s=30.0)
    engine = Engine(config)
    latencies_ms: list[float] = []
    published: list[int] = []
    done = threading.Event()

    def subscribe() -> None:
        with Subscriber(endpoint, streams=["demo"]) as sub:
            for msg in sub:
                print(summary_line(msg), flush=True)
                if isinstance(msg, FrameMessage):
                    published.append(msg.result.frame_index)
                    latencies_ms.append((time.time_ns() - msg.result.capture_time_ns) / 1e6)
                elif isinstance(msg, StatusMessage) and msg.event.state in (StreamState.ENDED, StreamState.ERROR):
                    if msg.event.state == StreamState.ENDED or msg.event.fatal:
                        break
        done.set()

    threading.Thread(target=subscribe, daemon=True).start()
    started = time.monotonic()
    engine.start()  # attaches the feed once the subscriber above has subscribed
    print(f"engine: {','.join(pipeline.stage_names)} on {engine.device}, publishing on {endpoint}"
          f"{' (file read as fast as possible)' if args.fast else ' (feed paced at 25 fps like a camera)'}")
    done.wait(600)
    engine.wait(30)
    engine.stop()
    elapsed_s = time.monotonic() - started
    if not published:
        print("no frame was published", file=sys.stderr)
        return 1
    p50, p99 = np.percentile(latencies_ms, [50, 99])
    print(f"frames published: {len(published)} of {n_frames} ({n_frames - len(published)} dropped by the "
          f"newest-frame-wins policy: the pipeline is slower than the feed)" if len(published) < n_frames
          else f"frames published: {len(published)} of {n_frames}")
    print(f"throughput: {len(published) / elapsed_s:.1f} fps; capture → subscriber latency p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms")
    print(f"annotated video: {annotated.resolve()} ({len(published)} frames: visible masks, amodal outlines, "
          f"occluders, track ids, occlusion levels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
