"""Two (or more) synthetic cameras watching the same people: frames, exact person tracks and a source for them.

The people and cameras come from the ReID generator (``amodal data synth persons``): each identity keeps its
clothes and proportions, each camera has its own background and photometry, each frame a new pose and view.
A frame holds every identity side by side; ``TruthPrimary`` plays the primary stage (detection + tracking)
with the exact boxes and per-stream track ids, so the ``reid`` stage is tested on its own.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from amodal.engine.stage import Stage, StageBatch
from amodal.streams.base import FrameSink, Source, SourceConfig
from amodal.training.data.synth.persons import PersonsConfig, make_camera, render_person_image
from amodal.world.persons_body import sample_identity
from amodal.types import Frame, ObjectResult, StreamEvent, StreamState

GAP_PX = 16


@dataclass(frozen=True)
class PersonStream:
    stream_id: str
    images: tuple[np.ndarray, ...]  # uint8[H, W, 3] per frame
    track_of_identity: dict[int, int]  # identity index → this stream's track id
    boxes_xyxy: dict[int, tuple[float, float, float, float]]  # identity index → box (same in every frame)
    occluded_fraction: dict[tuple[int, int], float]  # (frame, identity) → hidden fraction of the body


def render_person_streams(*, cameras: int = 2, identities: int = 3, frames: int = 6, seed: int = 0,
                          occlude_every: int = 3) -> list[PersonStream]:
    """``cameras`` streams of ``frames`` frames, each showing all ``identities`` (in a per-camera order); every
    ``occlude_every``-th sighting is partly occluded."""
    cfg = PersonsConfig()
    rng = np.random.default_rng(seed)
    people = [sample_identity(rng) for _ in range(identities)]
    pool = [sample_identity(rng) for _ in range(8)]  # occluding passers-by
    h, w = cfg.height, cfg.width
    height, width = h + 2 * GAP_PX, identities * (w + GAP_PX) + GAP_PX
    streams = []
    for c in range(cameras):
        camera = make_camera(rng, c + 1, cfg)
        order = rng.permutation(identities)  # left-to-right placement differs per camera
        track_ids = {int(k): 100 * (c + 1) + int(t) for t, k in enumerate(rng.permutation(identities))}
        boxes = {int(k): (float(GAP_PX + slot * (w + GAP_PX)), float(GAP_PX),
                          float(GAP_PX + slot * (w + GAP_PX) + w), float(GAP_PX + h)) for slot, k in enumerate(order)}
        images, occluded = [], {}
        for t in range(frames):
            canvas = np.full((height, width, 3), 90, dtype=np.uint8)
            for k in range(identities):
                occlude = (t + k) % occlude_every == occlude_every - 1
                person = render_person_image(rng, people[k], camera, cfg, occlude, pool)
                x1, y1 = int(boxes[k][0]), int(boxes[k][1])
                canvas[y1 : y1 + h, x1 : x1 + w] = person.rgb
                occluded[(t, k)] = float(person.meta["occluded_fraction"])
            images.append(canvas)
        streams.append(PersonStream(f"cam{c + 1}", tuple(images), track_ids, boxes, occluded))
    return streams


def frame_of(stream: PersonStream, index: int) -> Frame:
    image = stream.images[index]
    now = time.time_ns()
    return Frame(stream.stream_id, index, index / 25, now, time.monotonic_ns(), "rgb24", (image,),
                 image.shape[1], image.shape[0])


class TruthPrimary(Stage):
    """The primary stage with exact answers: every identity is a tracked ``person`` with its true box."""

    name = "truth"
    primary = True
    fills = frozenset({"objects", "tracks", "person_tracks", "occlusion_levels"})

    def __init__(self, streams: Sequence[PersonStream]) -> None:
        self.streams = {s.stream_id: s for s in streams}

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        results = []
        for frame in batch.frames:
            stream = self.streams[frame.stream_id]
            results.append(tuple(
                ObjectResult(class_id=1, class_name="person", score=0.95, box_xyxy=stream.boxes_xyxy[k],
                             track_id=track_id, occlusion_level=stream.occluded_fraction[(frame.index, k)])
                for k, track_id in sorted(stream.track_of_identity.items())))
        return results


class PersonStreamSource(Source):
    """Delivers a ``PersonStream``'s frames as rgb24, ``interval_s`` apart."""

    def __init__(self, stream: PersonStream, interval_s: float = 0.0) -> None:
        super().__init__(SourceConfig(uri=f"test://{stream.stream_id}", stream_id=stream.stream_id))
        self.stream, self.interval_s = stream, interval_s

    def run(self, sink: FrameSink, stop: threading.Event) -> None:
        sink.put_event(StreamEvent(self.stream_id, StreamState.CONNECTING, time_ns=time.time_ns()))
        sink.put_event(StreamEvent(self.stream_id, StreamState.UP, time_ns=time.time_ns()))
        for i in range(len(self.stream.images)):
            if stop.is_set() or not sink.put_frame(frame_of(self.stream, i)):
                break
            if self.interval_s:
                time.sleep(self.interval_s)
        sink.put_event(StreamEvent(self.stream_id, StreamState.ENDED, time_ns=time.time_ns()))
