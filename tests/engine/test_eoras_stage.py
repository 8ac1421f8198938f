"""The ``eoras`` stage on a synthetic occluding street scene (the world the shipped weights were trained in, another
seed): every tracked object gets an amodal mask that contains its visible mask and an occlusion level
1 − |visible| / |amodal|; on occluded objects the amodal masks recover hidden pixels; all tracks of a micro-batch
(two frames of one stream included) run in one batched step, and per-track state is dropped when a track is lost
and at end of stream.  In windowed mode each frame is completed W − 1 frames of its track later, exactly as the
model's windowed pass over the clip, and handed over as late results (amendments when detached)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from amodal import Subscriber
from amodal.engine.config import EngineConfig
from amodal.engine.detached import DetachedStage
from amodal.engine.engine import Engine
from amodal.engine.stage import Stage
from amodal.schema import AmendmentMessage, FrameMessage
from amodal.engine.engine import build_pipelines
from amodal.engine.config import PipelineConfig, StageConfig
from amodal.engine.pipeline import Pipeline, StageSlot
from amodal.engine.stage import PreparedInput, RatePolicy, StageBatch
from amodal.engine.stages import build_stage, stage_settings
from amodal.engine.stages.eoras import EoRaSSettings, EoRaSStage
from amodal.errors import ConfigError
from amodal.kernels.preprocess import LetterboxGeometry
from amodal.models.eoras import crop_images, crop_intrinsics, enlarged_crop_boxes, paste_masks
from amodal.types import CameraIntrinsics, Frame, ObjectResult, RLEMask

from tests.support.array_source import ArraySource
from tests.support.subscribe import drain
from tests.engine.conftest import free_port
from amodal.world.street import VideoConfig, render_frame, scene_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = 8


@pytest.fixture(scope="module")
def scene():
    """Rendered frames of a heavy-occlusion street scene with exact visible and amodal masks."""
    cfg = VideoConfig(frames=FRAMES)
    for index in range(30):
        sc = scene_for(777, index, cfg)
        if sc.regime == "heavy" and len(sc.objects) >= 3:
            return sc, [render_frame(sc, t, FRAMES) for t in range(FRAMES)]
    raise AssertionError("no heavy scene")


@pytest.fixture(scope="module")
def stage(scene):
    sc, _ = scene
    st = EoRaSStage(EoRaSSettings(intrinsics={"cam": sc.camera.K.tolist()}))
    st.start(torch.device("cpu"))
    yield st
    st.stop()


def _frame(stream: str, t: int, rgb: np.ndarray) -> Frame:
    h, w = rgb.shape[:2]
    return Frame(stream, t, t / 25, t, t, "rgb24", (rgb,), w, h)


def _objects(render) -> tuple[ObjectResult, ...]:
    out = []
    for i in range(render.amodal.shape[0]):
        visible = render.visible_ids == i
        if visible.sum() < 30:
            continue
        ys, xs = np.nonzero(visible)
        out.append(ObjectResult(1, "object", 1.0, (float(xs.min()), float(ys.min()), float(xs.max() + 1),
                                                    float(ys.max() + 1)), mask=RLEMask.encode(visible), track_id=i))
    return tuple(out)


def _batch(frames, objects) -> StageBatch:
    images = tuple(torch.from_numpy(f.planes[0]).permute(2, 0, 1).float() / 255 for f in frames)
    geoms = tuple(LetterboxGeometry(1.0, 0, 0, f.height, f.width, f.height, f.width) for f in frames)
    return StageBatch(tuple(frames), tuple(objects), {EoRaSStage.input_spec: PreparedInput(images, geoms)})


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def test_amodal_masks_contain_the_visible_masks_and_recover_hidden_pixels(stage, scene):
    _, renders = scene
    pred_iou, visible_iou, occluded = [], [], 0
    for start in range(0, FRAMES, 4):  # 4 frames of one stream per micro-batch: each track stepped in frame order
        frames = [_frame("cam", t, renders[t].rgb) for t in range(start, start + 4)]
        objects = [_objects(renders[t]) for t in range(start, start + 4)]
        results = stage.process(_batch(frames, objects))
        for t, objs in zip(range(start, start + 4), results):
            assert len(objs) == len(objects[t - start])
            for obj in objs:
                visible, amodal = obj.mask.decode(), obj.amodal_mask.decode()
                assert amodal.shape == visible.shape == renders[t].visible_ids.shape
                assert (amodal | visible).sum() == amodal.sum()  # amodal ⊇ visible
                assert obj.occlusion_level == pytest.approx(1 - visible.sum() / amodal.sum())
                gt = renders[t].amodal[obj.track_id]
                if (gt & ~visible).sum() > 0.2 * gt.sum():
                    occluded += 1
                    pred_iou.append(_iou(amodal, gt))
                    visible_iou.append(_iou(visible, gt))
    seen = {}
    for t in range(FRAMES):
        for o in _objects(renders[t]):
            seen[o.track_id] = seen.get(o.track_id, 0) + 1
    assert {tid: stage.track_state("cam", tid).received for tid in seen} == seen  # one step per appearance
    assert occluded >= 5
    # the amodal masks are closer to the true full extent of occluded objects than their visible parts are
    assert np.mean(pred_iou) > np.mean(visible_iou) + 0.02, (np.mean(pred_iou), np.mean(visible_iou))


def test_tracks_of_several_streams_run_in_one_step_and_state_is_dropped(scene):
    sc, renders = scene
    st = EoRaSStage(EoRaSSettings(track_lost_frames=2))
    st.start(torch.device("cpu"))
    calls = []
    step = st.loaded.model.step
    st.loaded.model.step = lambda states, crops, K, **kw: calls.append(len(states)) or step(states, crops, K, **kw)
    objs0 = _objects(renders[0])
    frames = [_frame("a", 0, renders[0].rgb), _frame("b", 0, renders[0].rgb)]
    st.process(_batch(frames, [objs0, objs0]))
    assert calls == [2 * len(objs0)]  # every track of both streams in one batched step
    keep = objs0[0].track_id
    assert st.track_state("a", keep).received == 1 and st.track_state("b", keep) is not None
    # stream a: only the first track is seen in frames 1 and 2 → the others are lost (unseen for 2 frames)
    for t in (1, 2):
        st.process(_batch([_frame("a", t, renders[t].rgb)], [tuple(o for o in _objects(renders[t])
                                                                  if o.track_id == keep)]))
    assert st.track_state("a", keep).received == 3
    assert all(st.track_state("a", o.track_id) is None for o in objs0[1:])
    assert all(st.track_state("b", o.track_id) is not None for o in objs0)  # stream b untouched
    st.on_source_eos("b")
    assert all(st.track_state("b", o.track_id) is None for o in objs0)
    assert st.track_state("a", keep) is not None
    st.stop()


def test_registered_with_validated_hashable_settings():
    settings = stage_settings("eoras", {"intrinsics": {"cam": [[300, 0, 160], [0, 300, 96], [0, 0, 1]]}})
    assert hash(settings) == hash(stage_settings("eoras", {"intrinsics": {"cam": [[300, 0, 160], [0, 300, 96],
                                                                                   [0, 0, 1]]}}))
    assert isinstance(build_stage("eoras", settings), EoRaSStage)
    with pytest.raises(ConfigError, match="3x3"):
        stage_settings("eoras", {"intrinsics": {"cam": [[1, 2], [3, 4]]}})
    with pytest.raises(ConfigError, match="unknown key"):
        stage_settings("eoras", {"windw": 3})
    with pytest.raises(ConfigError, match="causal or windowed"):
        stage_settings("eoras", {"mode": "offline"})
    with pytest.raises(ConfigError, match="window must be"):
        stage_settings("eoras", {"mode": "windowed", "window": 1})


WINDOW = 3


def _expected_windowed_masks(stage: EoRaSStage, renders, track: int) -> dict[int, np.ndarray]:
    """frame → the amodal mask of ``track`` from the model's windowed pass over the track's whole clip."""
    frames = [t for t in range(FRAMES) if any(o.track_id == track for o in _objects(renders[t]))]
    crops, Ks, boxes, visibles = [], [], [], []
    for t in frames:
        obj = next(o for o in _objects(renders[t]) if o.track_id == track)
        h, w = renders[t].rgb.shape[:2]
        box = enlarged_crop_boxes(torch.tensor([obj.box_xyxy]), w, h, stage.config.enlarge)
        image = torch.from_numpy(renders[t].rgb).permute(2, 0, 1).float() / 255
        crops.append(crop_images(image[None], torch.zeros(1), box, stage.config.input_size))
        Ks.append(crop_intrinsics(stage.image_intrinsics("cam", w, h), box, stage.config.input_size))
        boxes.append(box)
        visibles.append(obj.mask.decode())
    with torch.inference_mode():
        logits = stage.loaded.model(torch.cat(crops)[None], torch.cat(Ks)[None], mode="windowed",
                                    window=WINDOW).amodal_logits[0]
    out = {}
    for t, lg, box, visible in zip(frames, logits, boxes, visibles):
        h, w = visible.shape
        out[t] = paste_masks(torch.sigmoid(lg)[None], box, w, h, stage.settings.mask_threshold)[0].numpy() | visible
    return out


def test_windowed_mode_completes_each_frame_late_as_the_models_windowed_pass(scene):
    sc, renders = scene
    st = EoRaSStage(EoRaSSettings(intrinsics={"cam": sc.camera.K.tolist()}, mode="windowed", window=WINDOW))
    assert st.lag_frames == WINDOW - 1 and st.default_rate.is_detached
    st.start(torch.device("cpu"))
    completed: dict[tuple[int, int], np.ndarray] = {}
    for t in range(FRAMES):
        objects = _objects(renders[t])
        (returned,) = st.process(_batch([_frame("cam", t, renders[t].rgb)], [objects]))
        assert returned == objects  # nothing completed in the frame's own result
        for late in st.take_late():
            assert late.frame.stream_id == "cam" and late.frame.index <= t
            assert len(late.after) == len(late.before)
            for k, (b, a) in enumerate(zip(late.before, late.after)):
                if a is b:
                    continue
                key = (late.frame.index, a.track_id)
                assert key not in completed  # each object completed once
                completed[key] = a.amodal_mask.decode()
                # a track seen in every frame is completed exactly W - 1 frames late
                if all(any(o.track_id == a.track_id for o in _objects(renders[u])) for u in range(FRAMES)):
                    assert late.frame.index == t - (WINDOW - 1)
    st.on_source_eos("cam")  # the frames still held are completed at the end of the stream
    for late in st.take_late():
        for b, a in zip(late.before, late.after):
            if a is not b:
                completed[(late.frame.index, a.track_id)] = a.amodal_mask.decode()
    expected_keys = {(t, o.track_id) for t in range(FRAMES) for o in _objects(renders[t])}
    assert set(completed) == expected_keys
    assert st.track_state("cam", next(iter(expected_keys))[1]) is None and not st.take_late()
    for track in {k[1] for k in expected_keys}:
        for t, mask in _expected_windowed_masks(st, renders, track).items():
            assert (completed[(t, track)] != mask).mean() < 1e-3, (t, track)
    st.stop()


def test_windowed_stage_runs_detached_and_amends_every_frame(scene):
    sc, renders = scene
    settings = stage_settings("eoras", {"mode": "windowed", "window": WINDOW})
    (slot,) = build_pipelines([PipelineConfig.of("p", [StageConfig("eoras", settings)])])["p"]
    assert slot.rate.is_detached  # a lagging stage's default policy
    st = slot.stage
    with pytest.raises(ConfigError, match="must run detached"):
        Pipeline("p", [StageSlot(st, RatePolicy(detached=False))])
    amendments, events = [], []
    worker = DetachedStage(slot, torch.device("cpu"), amendments.append, events.append)
    worker.start()
    sent = {}
    for t in range(FRAMES):
        sent[t] = _objects(renders[t])
        worker.submit(_frame("cam", t, renders[t].rgb), sent[t])
    worker.end_stream("cam")
    assert worker.drain(120)
    worker.stop()
    assert not events
    amended = {}
    for a in amendments:
        assert a.stage == "eoras" and a.objects
        for ref, obj in zip(a.refs, a.objects):
            assert sent[a.frame_index][ref].track_id == obj.track_id
            amended[(a.frame_index, obj.track_id)] = obj
    assert set(amended) == {(t, o.track_id) for t in range(FRAMES) for o in sent[t]}
    for (t, _), obj in amended.items():
        visible, amodal = obj.mask.decode(), obj.amodal_mask.decode()
        assert (amodal | visible).sum() == amodal.sum()


class GroundTruthTracker(Stage):
    """Primary: the rendered scene's visible masks as tracked objects (what a perfect tracker would give)."""

    name = "truth"
    primary = True
    fills = frozenset({"objects", "masks", "tracks"})

    def __init__(self, renders) -> None:
        self.renders = renders

    def process(self, batch: StageBatch) -> list[tuple[ObjectResult, ...]]:
        return [_objects(self.renders[f.index]) for f in batch.frames]


def test_engine_publishes_windowed_completions_as_amendments_of_their_frames(scene):
    _, renders = scene
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    eoras = EoRaSStage(EoRaSSettings(mode="windowed", window=WINDOW))
    crop_Ks = []
    step = eoras.loaded.model.step
    eoras.loaded.model.step = lambda states, crops, K, **kw: crop_Ks.append(K) or step(states, crops, K, **kw)
    source = ArraySource("cam", FRAMES, images=[r.rgb for r in renders])
    camera = CameraIntrinsics(K=((300.0, 0.0, 150.0), (0.0, 300.0, 90.0), (0.0, 0.0, 1.0)))
    source.config = dataclasses.replace(source.config, camera=camera)
    engine = Engine(EngineConfig(publish=endpoint, max_batch_size=2),
                    pipelines={"default": [GroundTruthTracker(renders), eoras]})
    with Subscriber(endpoint) as sub:
        engine.start()
        time.sleep(0.3)
        try:
            engine.add_source(source)
            got = drain(sub, {"cam"}, timeout_s=60)
            engine.stop()  # the detached stage completes what it holds at the end of the stream
            got += drain(sub, set(), extra_s=1.0)
        finally:
            engine.stop()
    frames = {m.result.frame_index: m.result for m in got if isinstance(m, FrameMessage)}
    assert sorted(frames) == list(range(FRAMES))
    assert all(o.amodal_mask is None for r in frames.values() for o in r.objects)  # not in the frame's own result
    amended = set()
    for m in got:
        if isinstance(m, AmendmentMessage):
            a = m.amendment
            assert a.stage == "eoras"
            for ref, obj in zip(a.refs, a.objects):
                assert frames[a.frame_index].objects[ref].track_id == obj.track_id
                assert (obj.amodal_mask.decode() | obj.mask.decode()).sum() == obj.amodal_mask.decode().sum()
                amended.add((a.frame_index, obj.track_id))
    assert amended == {(t, o.track_id) for t, r in frames.items() for o in r.objects}
    # the source's camera reached the stage: the first crop's K is the camera's K cut to that crop
    first = _objects(renders[0])[0]
    h, w = renders[0].rgb.shape[:2]
    box = enlarged_crop_boxes(torch.tensor([first.box_xyxy]), w, h, eoras.config.enlarge)
    assert torch.allclose(crop_Ks[0][0], crop_intrinsics(torch.tensor(camera.K), box, eoras.config.input_size)[0])


def test_a_source_camera_comes_first_then_the_stage_settings_then_the_field_of_view():
    st = EoRaSStage(EoRaSSettings(intrinsics={"cam": [[500, 0, 80], [0, 500, 60], [0, 0, 1]]}, hfov_deg=90))
    assert st.image_intrinsics("cam", 160, 120)[0, 0] == 500
    assert st.image_intrinsics("cam", 160, 120, CameraIntrinsics(K=((200, 0, 80), (0, 200, 60), (0, 0, 1))))[0, 0] == 200
    assert st.image_intrinsics("other", 160, 120)[0, 0] == pytest.approx(80.0)  # hfov 90°: f = w / 2
    assert st.image_intrinsics("other", 160, 120, CameraIntrinsics(hfov_deg=60))[0, 0] == pytest.approx(
        80 / np.tan(np.radians(30)))
    config = EngineConfig.from_dict({"sources": [{"uri": "a.mp4", "stream_id": "a", "camera": {"hfov_deg": 70}},
                                                 {"uri": "b.mp4", "stream_id": "b",
                                                  "camera": {"K": [[300, 0, 160], [0, 300, 96], [0, 0, 1]]}}]})
    assert config.sources[0].camera == CameraIntrinsics(hfov_deg=70)
    assert config.sources[1].camera.K[0] == (300.0, 0.0, 160.0)
    for bad, message in [({"K": [[1, 2], [3, 4]]}, "3x3"), ({}, "exactly one"), ({"hfov_deg": 200}, "hfov_deg"),
                         ({"fov": 60}, "unknown key")]:
        with pytest.raises(ConfigError, match=message):
            EngineConfig.from_dict({"sources": [{"uri": "a.mp4", "stream_id": "a", "camera": bad}]})
