"""The ``layers`` stage: a synthetic layered image through a tiny random-weight SAS denoiser publishes one object per
layer region (frame pixels, layer numbers from 1) after the received objects and gives a received masked object the
layer it sits in; in an engine it runs detached on the newest frame and its results arrive as amendments without
delaying a fast stage's frames; truncated weights are a CheckpointError; the registry builds it from settings."""
from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
import torch

from amodal import Subscriber
from amodal.engine.config import EngineConfig
from amodal.engine.engine import Engine
from amodal.engine.pipeline import Pipeline, StageSlot
from amodal.engine.stage import InputSpec, RatePolicy, Stage, StageBatch
from amodal.engine.stages import build_stage
from amodal.engine.stages.layers import LayersSettings, LayersStage
from amodal.errors import CheckpointError, ConfigError
from amodal.models.sas import LayerInference, build_sas, tiny_config
from amodal.models.weights import save_weights
from amodal.schema import AmendmentMessage, FrameMessage, StatusMessage
from amodal.training.data.synth.layers import LayersConfig, render_layered
from amodal.types import Frame, ObjectResult, RLEMask, StreamState

from tests.support.array_source import ArraySource

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = LayerInference(sampler="ddim", steps=2, ensemble_size=2, layer_limit=3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_config(image_size=32, block_out_channels=(8, 16))
    path = tmp_path_factory.mktemp("sas") / "sas_micro.safetensors"
    return save_weights(build_sas(config=config).state_dict(), path, {"config": config.to_dict()})


@pytest.fixture(scope="module")
def scene():
    """A 48×72 layered image (two 48-px synthetic scenes side by side, so the letterbox pads it)."""
    rng = np.random.default_rng(3)
    image = render_layered(rng, LayersConfig(size=48, objects_min=3, objects_max=4))
    assert max(image.layers) >= 2
    rgb = np.concatenate([image.rgb, image.rgb[:, :24]], axis=1)
    return np.ascontiguousarray(rgb), image


def _frame(rgb: np.ndarray, index: int = 0, stream: str = "belt") -> Frame:
    h, w = rgb.shape[:2]
    return Frame(stream, index, None, time.time_ns(), time.monotonic_ns(), "rgb24", (rgb,), w, h)


class Boxer(Stage):
    """Primary: one object per frame whose visible mask is the left half of the frame."""

    name = "boxer"
    primary = True
    fills = frozenset({"objects", "masks"})
    input_spec = None

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        out = []
        for frame in batch.frames:
            mask = np.zeros((frame.height, frame.width), bool)
            mask[:, : frame.width // 2] = True
            out.append((ObjectResult(3, "item", 0.9, (0.0, 0.0, frame.width / 2, float(frame.height)),
                                     mask=RLEMask.encode(mask)),))
        return out


def test_layer_regions_are_published_in_frame_pixels_after_the_received_objects(weights, scene):
    rgb, _ = scene
    stage = LayersStage(LayersSettings(weights=str(weights), inference=FAST))
    assert stage.default_rate.mode == "newest" and stage.default_rate.is_detached
    assert stage.needs == frozenset() and {"objects", "occlusion_layers", "amodal_masks"} <= stage.fills
    assert stage.input_spec == InputSpec(size_hw=(32, 32))
    boxer = Boxer()
    pipeline = Pipeline.of("scanners", [boxer, StageSlot(stage, RatePolicy())])  # synchronous here
    boxer.start(torch.device("cpu"))
    stage.start(torch.device("cpu"))
    out = pipeline.process([_frame(rgb)], torch.device("cpu"))
    assert not out.failures, out.failures
    objects = out.results[0].objects
    received, layers = objects[0], objects[1:]
    assert received.class_name == "item" and 1 <= len(layers) <= FAST.layer_limit  # random weights: noise masks
    regions = []
    for k, obj in enumerate(layers, start=1):
        assert (obj.class_name, obj.class_id, obj.occlusion_layer) == ("layer", 1, k)
        assert obj.mask is None and 0.0 <= obj.score <= 1.0
        region = obj.amodal_mask.decode()
        assert region.shape == rgb.shape[:2] and region.any()
        ys, xs = np.nonzero(region)
        assert obj.box_xyxy == (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
        regions.append(region)
    visible = received.mask.decode()
    overlaps = [int((r & visible).sum()) for r in regions]
    assert received.occlusion_layer == (int(np.argmax(overlaps)) + 1 if max(overlaps) else None)
    # the same seed gives the same layers
    again = LayersStage(LayersSettings(weights=str(weights), inference=FAST))
    again.start(torch.device("cpu"))
    repeat = Pipeline.of("x", [StageSlot(again, RatePolicy())]).process([_frame(rgb)], torch.device("cpu"))
    assert [o.amodal_mask for o in repeat.results[0].objects] == [o.amodal_mask for o in layers]


def test_truncated_weights_are_a_checkpoint_error_naming_the_file(weights, tmp_path):
    data = weights.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        LayersStage(LayersSettings(weights=str(truncated)))
    with pytest.raises(CheckpointError, match="not found"):
        LayersStage(LayersSettings(weights=str(tmp_path / "missing.safetensors")))


def test_registry_builds_the_stage_from_settings(weights):
    stage = build_stage("layers", {"weights": str(weights), "inference": {"sampler": "dpm", "steps": 3}, "seed": 2})
    assert isinstance(stage, LayersStage) and stage.settings.inference.steps == 3 and stage.settings.seed == 2
    with pytest.raises(ConfigError, match="unknown key"):
        build_stage("layers", {"weights": str(weights), "ensemble": 3})
    with pytest.raises(ConfigError, match="sampler"):
        build_stage("layers", {"weights": str(weights), "inference": {"sampler": "euler"}})


def test_slow_layers_stage_results_arrive_as_amendments_without_delaying_frames(endpoint, weights):
    slow = LayersStage(LayersSettings(weights=str(weights), inference=LayerInference(
        sampler="ddim", steps=6, ensemble_size=2, layer_limit=3)))
    engine = Engine(EngineConfig(publish=endpoint, max_batch_size=4), pipelines={"default": [Boxer(), slow]})
    got = []
    with Subscriber(endpoint) as sub:
        engine.start()
        time.sleep(0.3)
        try:
            engine.add_source(ArraySource("cam", 40, interval_s=0.02, size=(24, 40)))
            deadline, ended = time.monotonic() + 60, False
            while not ended and time.monotonic() < deadline:
                m = sub.recv(0.2)
                if m is not None:
                    got.append(m)
                    ended = isinstance(m, StatusMessage) and m.event.state == StreamState.ENDED
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                if (m := sub.recv(0.1)) is not None:
                    got.append(m)
        finally:
            engine.stop()
    frames = [m for m in got if isinstance(m, FrameMessage)]
    amendments = [m.amendment for m in got if isinstance(m, AmendmentMessage)]
    assert [m.result.frame_index for m in frames] == list(range(40))
    assert all(m.result.analyzer == "boxer" and [o.class_name for o in m.result.objects] == ["item"]
               and m.result.objects[0].occlusion_layer is None for m in frames)  # the fast path does not wait
    assert 1 <= len(amendments) < 40, "newest-frame policy: the slow stage skips frames it cannot keep up with"
    published = {m.result.frame_index for m in frames}
    for a in amendments:
        assert a.stage == "layers" and a.frame_index in published and (a.width, a.height) == (40, 24)
        added = [o for o, ref in zip(a.objects, a.refs) if ref is None]
        assert [o.occlusion_layer for o in added] == list(range(1, len(added) + 1))
        assert all(o.class_name == "layer" and o.amodal_mask.decode().shape == (24, 40) for o in added)
        completed = [o for o, ref in zip(a.objects, a.refs) if ref is not None]
        assert all(o.class_name == "item" and o.occlusion_layer >= 1 for o in completed)


def test_the_shipped_weights_load_by_default():
    stage = LayersStage()
    assert stage.loaded.metadata["model"] == "sas" and stage.loaded.config.image_size == 64
    assert stage.input_spec.size_hw == (64, 64) and stage.loaded.metadata["steps"] > 0
