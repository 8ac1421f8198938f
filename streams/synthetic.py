"""Synthetic camera: ``synthetic://NAME?w=320&h=240&fps=25&objects=4&seconds=10&seed=0``.

Streams a moving-shapes scene of the occlusion world (``amodal.world.shapes``: moving, mutually occluding
shapes on a static textured background, deterministic per seed, scenes ``shapes`` and ``people``);
``synthetic_truth(uri, index)`` gives the exact ground truth of any frame of the stream a URI describes.
The scene names (``SyntheticScene``, ``SyntheticSpec``, ``SyntheticTruth``, ``SHAPE_KINDS`` …) stay
importable from here.

Frames are rgb24 ``uint8[H, W, 3]`` with ``pts_s = index / fps``; paced at ``fps`` unless the config says
``realtime=False``; ``seconds`` (default endless) bounds the stream, after which it is ENDED.
"""
from __future__ import annotations

import threading
import time
from urllib.parse import parse_qsl, urlsplit

from amodal.errors import ConfigError
from amodal.streams.base import FrameSink, Source, SourceConfig
from amodal.streams.events import make_event
from amodal.types import Frame, StreamState
from amodal.world.shapes import SCENES, SHAPE_KINDS, SceneObject, SyntheticScene, SyntheticSpec, SyntheticTruth

__all__ = ["SCENES", "SHAPE_KINDS", "SceneObject", "SyntheticScene", "SyntheticSource", "SyntheticSpec",
           "SyntheticTruth", "parse_synthetic_uri", "synthetic_truth"]

_PARAMS = {"w": int, "h": int, "fps": float, "objects": int, "seconds": float, "seed": int}


def parse_synthetic_uri(uri: str) -> SyntheticSpec:
    """``synthetic://NAME?w=..&h=..&fps=..&objects=..&seconds=..&seed=..`` → ``SyntheticSpec``."""
    if not uri.startswith("synthetic://"):
        raise ConfigError(f"not a synthetic URI: {uri!r}")
    parts = urlsplit(uri)
    scene = (parts.netloc + parts.path).strip("/") or "shapes"
    values: dict[str, object] = {}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _PARAMS:
            raise ConfigError(f"{uri!r}: unknown synthetic parameter {key!r}; allowed: {sorted(_PARAMS)}")
        try:
            values[key] = _PARAMS[key](raw)
        except ValueError as exc:
            raise ConfigError(f"{uri!r}: parameter {key}={raw!r} is not a {_PARAMS[key].__name__}") from exc
    return SyntheticSpec(
        scene=scene,
        width=int(values.get("w", 320)),
        height=int(values.get("h", 240)),
        fps=float(values.get("fps", 25.0)),
        objects=int(values.get("objects", 4)),
        seconds=values.get("seconds"),  # type: ignore[arg-type]
        seed=int(values.get("seed", 0)),
    )


def synthetic_truth(uri: str, index: int) -> SyntheticTruth:
    """Ground truth of frame ``index`` of the stream a ``synthetic://`` URI describes."""
    return SyntheticScene(parse_synthetic_uri(uri)).truth(index)


class SyntheticSource(Source):
    """A camera-like source rendering a ``SyntheticScene``; live (drop-oldest) by default."""

    live = True

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self.spec = parse_synthetic_uri(config.uri)
        self.scene = SyntheticScene(self.spec)

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        sid = self.stream_id
        sink.put_event(make_event(sid, StreamState.CONNECTING))
        paced = self.config.realtime is not False
        total = self.spec.total_frames
        if self.config.max_frames is not None:
            total = self.config.max_frames if total is None else min(total, self.config.max_frames)
        start_mono_ns = time.monotonic_ns()
        start_wall_ns = time.time_ns()
        period_ns = 1e9 / self.spec.fps
        sink.put_event(make_event(sid, StreamState.UP, f"synthetic scene {self.spec.scene}"))
        index = 0
        while total is None or index < total:
            if paced:
                wait_s = (start_mono_ns + index * period_ns - time.monotonic_ns()) / 1e9
                if wait_s > 0 and stop.wait(wait_s):
                    break
            if stop.is_set():
                break
            rgb = self.scene.render(index)
            frame = Frame(
                stream_id=sid,
                index=index,
                pts_s=index / self.spec.fps,
                capture_time_ns=start_wall_ns + int(index * period_ns) if paced else time.time_ns(),
                received_mono_ns=time.monotonic_ns(),
                pixel_format="rgb24",
                planes=(rgb,),
                width=self.spec.width,
                height=self.spec.height,
            )
            if not sink.put_frame(frame):
                sink.put_event(make_event(sid, StreamState.ENDED, "sink closed"))
                return
            index += 1
        if stop.is_set():
            sink.put_event(make_event(sid, StreamState.ENDED, "stopped"))
        else:
            reason = "max_frames reached" if self.config.max_frames is not None and index >= self.config.max_frames else "end of stream"
            sink.put_event(make_event(sid, StreamState.ENDED, reason))
