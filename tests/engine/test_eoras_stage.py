"""The ``eoras`` stage on a synthetic occluding street scene (the world the shipped weights were trained in, another
seed): every tracked object gets an amodal mask that contains its visible mask and an occlusion level
1 − |visible| / |amodal|; on occluded objects the amodal masks recover hidden pixels; all tracks of a micro-batch
(two frames of one stream included) run in one batched step, and per-track state is dropped when a track is lost
and at end of stream."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from amodal.engine.stage import PreparedInput, StageBatch
from amodal.engine.stages import build_stage, stage_settings
from amodal.engine.stages.eoras import EoRaSSettings, EoRaSStage
from amodal.errors import ConfigError
from amodal.kernels.preprocess import LetterboxGeometry
from amodal.types import Frame, ObjectResult, RLEMask
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
        stage_settings("eoras", {"window": 3})
