"""Drops through the whole engine: a camera faster than a slow stage loses frames, and every lost frame is
named by a ``dropped`` status message; analysed and dropped frames together are every frame, once."""
from __future__ import annotations

import re
import time

from amodal import Subscriber
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.stage import StageBatch
from amodal.engine.stages.identity import IdentityStage
from amodal.schema import FrameMessage, StatusMessage
from amodal.types import ObjectResult, StreamState
from tests.support.array_source import ArraySource


class _SlowStage(IdentityStage):
    """50 ms per batch: far slower than a camera delivering a frame every 2 ms."""

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        time.sleep(0.05)
        return super().process(batch)


def _named_frames(reason: str) -> list[int]:
    named = reason.split("dropped ", 1)[1].split(" (drop-oldest")[0]
    assert " more (up to frame" not in named, reason  # this test keeps notices short enough to name each frame
    return [int(n) for n in re.findall(r"(?:^frame |: |, )(\d+)", named)]


def test_every_frame_is_analysed_or_reported_dropped(endpoint: str) -> None:
    engine = Engine(EngineConfig(publish=endpoint, max_batch_size=1), pipelines={"default": [_SlowStage()]}).start()
    sub = Subscriber(endpoint)
    time.sleep(0.3)  # the subscription reaches the publisher (ZeroMQ slow joiner)
    camera = ArraySource("cam", 150, interval_s=0.002, live=True)
    got: list = []
    try:
        engine.add_source(camera)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = sub.recv(0.2)
            if msg is not None:
                got.append(msg)
                if isinstance(msg, StatusMessage) and msg.event.state == StreamState.ENDED:
                    break
    finally:
        engine.stop()
        sub.close()
    analysed = [m.result.frame_index for m in got if isinstance(m, FrameMessage)]
    notices = [m.event for m in got if isinstance(m, StatusMessage) and m.event.state == StreamState.DROPPED]
    dropped = [i for e in notices for i in _named_frames(e.reason)]
    assert notices and all(not e.fatal and e.stream_id == "cam" for e in notices)
    assert sorted(analysed + dropped) == list(range(150)), (analysed, dropped)
    assert dropped, "the camera outran the stage: some frames must have been dropped"
