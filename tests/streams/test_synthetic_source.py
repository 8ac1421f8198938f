"""Synthetic scene: deterministic per seed, ground truth consistent with the pixels, occlusions happen."""
from __future__ import annotations

import time

import numpy as np
import pytest

from amodal.errors import ConfigError
from amodal.streams.base import SourceConfig
from amodal.streams.synthetic import SyntheticScene, SyntheticSource, parse_synthetic_uri, synthetic_truth
from amodal.types import StreamState
from tests.support.sink import SourceThread

URI = "synthetic://shapes?w=96&h=72&fps=10&objects=5&seconds=2&seed=7"


def test_deterministic_per_seed() -> None:
    a, b = SyntheticScene(parse_synthetic_uri(URI)), SyntheticScene(parse_synthetic_uri(URI))
    other = SyntheticScene(parse_synthetic_uri(URI.replace("seed=7", "seed=8")))
    for i in (0, 5, 13):
        np.testing.assert_array_equal(a.render(i), b.render(i))
        np.testing.assert_array_equal(a.truth(i).visible_masks, b.truth(i).visible_masks)
    assert not np.array_equal(a.render(0), other.render(0))
    assert not np.array_equal(a.render(0), a.render(5))  # things move


def test_truth_is_consistent_and_occlusion_happens() -> None:
    scene = SyntheticScene(parse_synthetic_uri(URI))
    max_occlusion = 0.0
    for i in range(0, 40, 2):
        truth = scene.truth(i)
        amodal, visible = truth.amodal_masks, truth.visible_masks
        assert amodal.shape == visible.shape == (5, 72, 96)
        assert not (visible & ~amodal).any()  # visible ⊆ amodal
        assert (visible.sum(0) <= 1).all()  # each pixel shows at most one object
        np.testing.assert_array_equal(visible.any(0), amodal.any(0))
        assert sorted(truth.depth_order) == list(truth.object_ids)
        front = truth.depth_order[0]
        np.testing.assert_array_equal(visible[front], amodal[front])  # the front object is never hidden
        image = scene.render(i)
        for obj, mask in zip(scene.objects, visible):
            if mask.any():  # visible pixels carry the object's colour (or its darker band)
                colours = {tuple(c) for c in image[mask]}
                assert colours <= {obj.colour, tuple(v // 2 for v in obj.colour)}
            ys, xs = np.nonzero(amodal[obj.object_id])
            x0, y0, x1, y1 = truth.boxes_xyxy[obj.object_id]
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        max_occlusion = max(max_occlusion, float(truth.occlusion.max()))
    assert max_occlusion > 0.2, "no object was ever substantially occluded"
    assert synthetic_truth(URI, 3).class_names == ("disc", "box", "person", "disc", "box")


def test_source_delivers_rendered_frames_then_ends() -> None:
    source = SyntheticSource(SourceConfig(URI, "syn", realtime=False))
    runner = SourceThread(source).start()
    assert runner.join(10)
    frames = runner.sink.frames
    assert [f.index for f in frames] == list(range(20))
    assert [f.pts_s for f in frames] == [i / 10 for i in range(20)]
    assert frames[0].pixel_format == "rgb24" and frames[0].planes[0].shape == (72, 96, 3)
    np.testing.assert_array_equal(frames[7].planes[0], source.scene.render(7))
    assert runner.sink.states() == [StreamState.CONNECTING, StreamState.UP, StreamState.ENDED]


def test_paced_source_stops_promptly() -> None:
    source = SyntheticSource(SourceConfig("synthetic://people?w=32&h=32&fps=5", "slow"))
    with SourceThread(source) as runner:
        assert runner.sink.wait_frames(2, 5)
        started = time.monotonic()
        assert runner.stop() < 1.0
        assert time.monotonic() - started < 1.0
    frames = runner.sink.frames
    assert 2 <= len(frames) <= 4  # 5 fps: paced, not as fast as possible
    assert runner.sink.events[-1].reason == "stopped"


@pytest.mark.parametrize(
    "uri",
    ["synthetic://nosuch", "synthetic://shapes?w=abc", "synthetic://shapes?fps=0", "synthetic://shapes?colour=red",
     "synthetic://shapes?objects=0", "synthetic://shapes?w=4"],
)
def test_bad_synthetic_uris(uri: str) -> None:
    with pytest.raises(ConfigError):
        parse_synthetic_uri(uri)
