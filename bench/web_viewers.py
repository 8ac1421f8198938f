"""``amodal bench web``: what the live view (``amodal run --http``) costs the engine, against the engine without it,
in one run.

* engine frames/s: unpaced streams (an H.264 clip decoded in a loop, or the synthetic scene) through an
  ``identity`` pipeline (the engine's own rate, the heaviest load a view can meet), in four setups run in turn,
  ``--rounds`` times alternated: no view at all (the reference), the view with no viewer, 5 stalled viewers (connections that open ``/streams/{id}/video`` with a tiny receive
  buffer and never read), 5 reading viewers (reading the MJPEG as fast as it comes; their received frames/s too);
* the per-frame cost of the view's picture (with the scene's 6 objects, visible and amodal masks): the frame and
  masks scaled to the view's width, ``draw_result`` (the ``--annotate`` drawing) and the Pillow JPEG, against
  drawing at full size first (the reference), at the stream size and at 1280×720; and the encoder thread's own
  mean time per picture in the runs with a view.

Writes ``web.json`` and ``web.png`` (device, versions, commit).
"""
from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from amodal.bench.common import new_figure, save_figure, time_cpu_ms, write_results
from amodal.bench.latency import make_test_file
from amodal.draw import draw_result
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stages.identity import IdentityStage
from amodal.engine.web import LiveView, WebSettings
from amodal.engine.web.encoder import encode_jpeg, render
from amodal.streams.base import SourceConfig
from amodal.streams.synthetic import SyntheticScene, parse_synthetic_uri
from amodal.types import Frame, FrameResult, ObjectResult, RLEMask

SETUPS = ("no view", "view, no viewer", "5 stalled viewers", "5 reading viewers")
VIEWERS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _open_video(port: int, stream_id: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /streams/{stream_id}/video HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


class _Reader(threading.Thread):
    """A viewer that reads the MJPEG response as fast as it comes, counting the pictures."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.pictures, self.stop = sock, 0, threading.Event()

    def run(self) -> None:
        self.sock.settimeout(0.5)
        tail = b""
        while not self.stop.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            chunk = tail + data
            self.pictures += chunk.count(b"--amodalframe")
            tail = chunk[-16:]


def run_setup(setup: str, uris: list[str], seconds: float, warmup_s: float) -> dict:
    """Engine frames/s over ``seconds`` (after ``warmup_s``) in one setup; ``uris``: one per stream."""
    port = _free_port()
    view = None if setup == "no view" else LiveView(WebSettings(port=port))
    # unpaced, and blocking: the sources render only the frames the engine takes, none to be dropped
    sources = tuple(SourceConfig(uri, f"s{i}", realtime=False, overflow="block", loop=not uri.startswith("synthetic:"))
                    for i, uri in enumerate(uris))
    engine = Engine(EngineConfig(publish=f"tcp://127.0.0.1:{_free_port()}", exit_when_done=False, sources=sources),
                    pipelines={"default": [IdentityStage()]}, sinks=[view] if view is not None else [])
    if view is not None:
        view.attach(engine)
    sockets: list[socket.socket] = []
    readers: list[_Reader] = []
    engine.start()
    try:
        if setup.startswith("5 "):
            deadline = time.monotonic() + 30.0
            while not all(f"s{i}" in view.state for i in range(len(uris))):  # /video is 404 before a stream shows
                if time.monotonic() > deadline:
                    raise RuntimeError("the streams did not show in the view within 30 s")
                time.sleep(0.05)
            for i in range(VIEWERS):
                stalled = setup == "5 stalled viewers"
                sock = _open_video(port, f"s{i % len(uris)}", rcvbuf=4096 if stalled else None)
                sockets.append(sock)
                if not stalled:
                    readers.append(_Reader(sock))
                    readers[-1].start()
        time.sleep(warmup_s)
        before = engine.snapshot()["streams"]
        pictures_before = sum(r.pictures for r in readers)
        encoded_before = (view.encoder.encoded, view.encoder.encode_s) if view is not None else (0, 0.0)
        started = time.monotonic()
        time.sleep(seconds)
        after = engine.snapshot()["streams"]
        wall_s = time.monotonic() - started
        frames = sum(after[s]["frames_analysed"] - before.get(s, {}).get("frames_analysed", 0) for s in after)
        row = {"setup": setup, "engine_fps": frames / wall_s, "frames": frames, "wall_s": wall_s,
               "dropped": sum(s["dropped"] for s in after.values())}
        if readers:
            row["viewer_pictures_per_s"] = (sum(r.pictures for r in readers) - pictures_before) / wall_s / VIEWERS
        if view is not None:
            n = view.encoder.encoded - encoded_before[0]
            row["view_encoded_per_s"] = n / wall_s
            if n:
                row["view_ms_per_picture"] = 1e3 * (view.encoder.encode_s - encoded_before[1]) / n
    finally:
        for r in readers:
            r.stop.set()
        for sock in sockets:
            sock.close()
        engine.stop()
    return row


def annotated_result(uri: str, index: int) -> tuple[np.ndarray, FrameResult]:
    """A frame of the synthetic scene and a result with its true objects (visible and amodal masks)."""
    scene = SyntheticScene(parse_synthetic_uri(uri))
    rgb, truth = scene.render(index), scene.truth(index)
    h, w = rgb.shape[:2]
    objects = tuple(
        ObjectResult(i, name, 0.9, tuple(float(v) for v in truth.boxes_xyxy[i]), mask=RLEMask.encode(truth.visible_masks[i]),
                     track_id=int(truth.object_ids[i]), amodal_mask=RLEMask.encode(truth.amodal_masks[i]),
                     occlusion_level=float(truth.occlusion[i]))
        for i, name in enumerate(truth.class_names))
    return rgb, FrameResult("bench", index, None, 0, w, h, objects)


def encoding_costs(sizes: list[tuple[int, int]], max_width: int, quality: int, reps: int) -> list[dict]:
    """ms per picture: the view's path (frame and masks scaled to ``max_width``, drawn, JPEG) and its JPEG part,
    against drawing at full size then scaling in the JPEG step (the reference)."""
    rows = []
    for w, h in sizes:
        rgb, result = annotated_result(f"synthetic://shapes?w={w}&h={h}&objects=6&seed=1", 40)
        frame = Frame("bench", 40, None, 0, 0, "rgb24", (rgb,), w, h)
        shown = render(frame, result, max_width)
        timings = time_cpu_ms({
            "view": lambda: encode_jpeg(render(frame, result, max_width), max_width, quality),
            "jpeg": lambda: encode_jpeg(shown, max_width, quality),
            "full_size_draw": lambda: encode_jpeg(draw_result(rgb, result), max_width, quality),
        }, reps)
        rows.append({"width": w, "height": h, "objects": len(result.objects), "max_width": max_width,
                     "view_ms": timings["view"][0], "jpeg_ms": timings["jpeg"][0],
                     "draw_ms": timings["view"][0] - timings["jpeg"][0],
                     "full_size_draw_then_jpeg_ms": timings["full_size_draw"][0],
                     "jpeg_bytes": len(encode_jpeg(shown, max_width, quality))})
    return rows


def plot(out: str, runs: list[dict], costs: list[dict]) -> None:
    fig, axes = new_figure(2, width_in=6.0, height_in=4.0)
    ax = axes[0][0]
    for i, setup in enumerate(SETUPS):
        values = [r["engine_fps"] for r in runs if r["setup"] == setup]
        ax.bar(i, statistics.mean(values), color="C0" if i == 0 else "C1")
        ax.plot([i] * len(values), values, "k.", ms=5)
    ax.set_xticks(range(len(SETUPS)), [s.replace(", ", ",\n").replace(" viewers", "\nviewers") for s in SETUPS],
                  fontsize=8)
    ax.set_ylabel("engine frames/s (all streams)")
    ax.set_title("engine rate with the live view")
    ax = axes[0][1]
    labels = [f"{c['width']}x{c['height']}" for c in costs]
    x = np.arange(len(costs))
    ax.bar(x - 0.2, [c["draw_ms"] for c in costs], 0.4, label=f"view: scale to ≤{costs[0]['max_width']} px, draw")
    ax.bar(x - 0.2, [c["jpeg_ms"] for c in costs], 0.4, bottom=[c["draw_ms"] for c in costs], label="view: JPEG")
    ax.bar(x + 0.2, [c["full_size_draw_then_jpeg_ms"] for c in costs], 0.4, label="reference: draw full size, JPEG")
    ax.set_xticks(x, labels)
    ax.set_ylabel("ms per picture (one core)")
    ax.set_title("the view's cost per picture")
    ax.legend(fontsize=8)
    save_figure(fig, out, "web")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="amodal bench web", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--source", choices=("file", "synthetic"), default="file",
                   help="file: an H.264 clip (ffmpeg testsrc2) decoded in a loop, cheap to decode, so the engine is "
                        "the bottleneck; synthetic: the rendered shapes scene (rendering dominates)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--seconds", type=float, default=6.0, help="measured time per setup and round")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (stalled viewers' buffers fill)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=30, help="repetitions of the per-picture timing")
    p.add_argument("--large", default="1280x720", metavar="WxH", help="the second size of the per-picture timing")
    p.add_argument("--out", default="out/bench")
    args = p.parse_args(argv)
    if args.source == "file":
        clip = make_test_file(Path(args.out) / f"web_clip_{args.width}x{args.height}.mp4", 10.0, args.width, args.height)
        uris = [str(clip)] * args.streams
    else:
        uris = [f"synthetic://shapes?w={args.width}&h={args.height}&objects=4&seed={i}" for i in range(args.streams)]
    runs = []
    for round_ in range(args.rounds):
        for setup in SETUPS:
            row = run_setup(setup, uris, args.seconds, args.warmup)
            row["round"] = round_
            runs.append(row)
            print(f"round {round_} {setup:<20} engine {row['engine_fps']:7.1f} frames/s"
                  + (f"  viewers {row['viewer_pictures_per_s']:.1f} pictures/s each" if "viewer_pictures_per_s" in row else ""),
                  flush=True)
    reference = statistics.mean(r["engine_fps"] for r in runs if r["setup"] == "no view")
    summary = {setup: {"engine_fps_mean": statistics.mean(r["engine_fps"] for r in runs if r["setup"] == setup),
                       "ratio_to_no_view": (statistics.mean(r["engine_fps"] for r in runs if r["setup"] == setup) / reference
                                            if reference > 0 else None)}
               for setup in SETUPS}
    settings = WebSettings()
    large_w, large_h = (int(v) for v in args.large.lower().split("x"))
    costs = encoding_costs([(args.width, args.height), (large_w, large_h)], settings.max_width, settings.jpeg_quality, args.reps)
    for c in costs:
        print(f"{c['width']}x{c['height']}: view {c['view_ms']:.2f} ms per picture (JPEG {c['jpeg_ms']:.2f} ms); "
              f"full-size draw then JPEG {c['full_size_draw_then_jpeg_ms']:.2f} ms")
    path = write_results(args.out, "web", {
        "config": {"streams": args.streams, "source": args.source, "size": [args.width, args.height], "seconds": args.seconds,
                   "warmup_s": args.warmup, "rounds": args.rounds, "viewers": VIEWERS, "stage": "identity",
                   "view_max_fps": settings.max_fps, "view_max_width": settings.max_width,
                   "jpeg_quality": settings.jpeg_quality},
        "runs": runs, "summary": summary, "picture_cost": costs})
    plot(args.out, runs, costs)
    print(f"wrote {path}")
    return 0
