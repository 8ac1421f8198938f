"""The camera-like street world: exact masks with articulated people, vehicles and street furniture in the way;
the camera effects keep pixel ownership; the H.264 round trip is deterministic; no person photographs."""
from __future__ import annotations

import numpy as np
import pytest

from amodal.errors import ConfigError
from amodal.world import photos, vehicles
from amodal.world.camera_fx import CameraFX, h264_roundtrip
from amodal.world.clutter import sample_item
from amodal.world.persons_body import sample_identity
from amodal.world.street import (Camera, Scene, SceneObject, VideoConfig, make_background, make_camera,
                                 render_frame, scene_for)


def _scene(objects: tuple[SceneObject, ...], clutter=(), fx: CameraFX = CameraFX()) -> Scene:
    rng = np.random.default_rng(5)
    cam: Camera = make_camera(rng, 160, 96)
    return Scene(cam, objects, make_background(rng, cam), "light", 1.0, 0.0, 1.0, 0.0, 0.0, 1, clutter, fx)


def _obj(category: str, x: float, y: float, view: str, look, height: float, width: float) -> SceneObject:
    return SceneObject(category, height, width, np.array([x, y]), np.zeros(2), 0.0, 0.0, 0.0, 1, (), view, look)


def test_person_behind_a_car_behind_a_pole_masks_are_exact():
    rng = np.random.default_rng(0)
    person = _obj("person", 0.0, 6.0, "front", sample_identity(rng), 1.75, 0.5)
    car = _obj("car", 0.3, 4.8, "back", vehicles.sample_look(rng, "car"), 1.5, 1.8)
    pole = sample_item(rng, 0.2, 3.5, "pole")
    fr = render_frame(_scene((person, car), (pole,)), 0, 2)
    assert fr.amodal[0].sum() > 100 and fr.amodal[1].sum() > 100
    # the car hides part of the person; the pole hides part of both: those pixels are nobody's
    vis_person, vis_car = fr.visible_ids == 0, fr.visible_ids == 1
    assert (fr.amodal[0] & fr.amodal[1]).any()
    assert not (vis_person & fr.amodal[1]).any()
    assert (vis_person <= fr.amodal[0]).all() and (vis_car <= fr.amodal[1]).all()
    hidden_by_pole = fr.amodal[1] & (fr.visible_ids == -1)
    assert hidden_by_pole.any()
    assert (fr.depth_m[hidden_by_pole] < fr.object_depth_m[1] * 1.5).all()


def test_camera_effects_change_pixels_not_masks():
    rng = np.random.default_rng(1)
    objs = (_obj("person", -0.5, 8.0, "side", sample_identity(rng), 1.7, 0.5),
            _obj("car", 1.0, 10.0, "side", vehicles.sample_look(rng, "van"), 2.2, 5.0))
    clean = render_frame(_scene(objs), 0, 2)
    rough = render_frame(_scene(objs, fx=CameraFX(background_blur_px=2.0, blur_px=1.0, noise_std=0.03, crf=35,
                                                  soften=1.8, vignette=0.3, gamma=1.2)), 0, 2)
    np.testing.assert_array_equal(clean.visible_ids, rough.visible_ids)
    np.testing.assert_array_equal(clean.amodal, rough.amodal)
    assert np.abs(clean.rgb.astype(int) - rough.rgb.astype(int)).mean() > 2


def test_h264_round_trip_is_deterministic_and_lossy():
    rgb = (np.random.default_rng(2).random((48, 66, 3)) * 255).astype(np.uint8)  # odd sizes: edge kept as is
    a, b = h264_roundtrip(rgb, 30), h264_roundtrip(rgb, 30)
    np.testing.assert_array_equal(a, b)
    assert a.shape == rgb.shape and not np.array_equal(a, rgb)
    np.testing.assert_array_equal(h264_roundtrip(rgb, 0), rgb)


def test_scenes_render_people_from_every_side_at_realistic_sizes():
    cfg = VideoConfig(frames=4, width=320, height=192, objects_min=4, objects_max=8, style="camera")
    views, heights = set(), []
    for k in range(12):
        scene = scene_for(3, k, cfg)
        fr = render_frame(scene, 2, cfg.frames)
        for i, obj in enumerate(scene.objects):
            if obj.category == "person":
                views.add(obj.view)
                rows = np.flatnonzero(fr.amodal[i].any(axis=1))
                if rows.size and 0 < rows[0] and rows[-1] < cfg.height - 1:  # whole body in view
                    heights.append(rows[-1] + 1 - rows[0])
    assert views == {"side", "front", "back"}
    assert min(heights) < 30 and max(heights) > 60


def test_no_photograph_shows_people_vehicles_or_animals():
    names = set(photos.TEXTURES + photos.PICTURES)
    assert not names & {"astronaut.png", "camera.png", "motorcycle_left.png", "chelsea.png", "horse.png"}
    patch = photos.random_patch(np.random.default_rng(0), 20, 30)
    assert patch.shape == (20, 30, 3) and 0 <= patch.min() and patch.max() <= 1


def test_styles_flat_by_default_mixed_draws_both_and_unknown_is_refused():
    assert scene_for(3, 0, VideoConfig(frames=4)).style == "flat"
    styles = [scene_for(3, k, VideoConfig(frames=4, style="mixed")).style for k in range(16)]
    assert set(styles) == {"flat", "camera"} and styles.count("camera") > styles.count("flat")
    with pytest.raises(ConfigError, match="--style"):
        VideoConfig(style="cartoon")


def test_close_scenes_hold_people_that_fill_the_frame_and_are_cut_by_its_edges():
    """Some camera-style scenes are seen from eye level with people 1.3-5 m away: taller than half the frame
    and cut by its edges, as in hand-held and doorway footage; others keep them small and whole."""
    cfg = VideoConfig(frames=4, width=320, height=192, objects_min=2, objects_max=6, style="camera")
    tall_cut = small = 0
    for k in range(24):
        scene = scene_for(21, k, cfg)
        fr = render_frame(scene, 2, cfg.frames)
        for i, obj in enumerate(scene.objects):
            rows = np.flatnonzero(fr.amodal[i].any(axis=1))
            if obj.category != "person" or not rows.size:
                continue
            cut = rows[0] == 0 or rows[-1] == cfg.height - 1
            tall_cut += bool(cut and rows.size > cfg.height / 2)
            small += bool(rows.size < cfg.height / 4)
    assert tall_cut >= 3 and small >= 3, (tall_cut, small)


def test_faces_are_drawn_on_the_head_only_and_not_from_behind():
    from dataclasses import replace

    from amodal.world.persons_body import HEAD, draw_person
    from amodal.world.shapes2d import Pose

    ident = sample_identity(np.random.default_rng(4))
    for view in ("front", "side", "back"):
        plain, faced = np.full((2, 240, 120, 3), 0.5, np.float32)
        body = draw_person(plain, ident, Pose(60, 10, scale=220), view, 0.0)
        draw_person(faced, replace(ident, face=True), Pose(60, 10, scale=220), view, 0.0)
        changed = np.abs(plain - faced).max(axis=-1) > 1e-6
        if view == "back":
            assert not changed.any()
        else:  # eyes, brows, nose and mouth (and the shorter hair that shows them) lie within the head: above
            # the neck (0.15 of the body's height below the top of the head, at 10 px)
            rows = np.flatnonzero(changed.any(axis=1))
            assert changed.sum() > 50 and rows.max() < 10 + 0.15 * 220
            assert (body.labels[changed] == HEAD).mean() > 0.9


def test_suits_show_a_shirt_and_tie_below_the_collar():
    from amodal.world.persons_body import Paint

    suit = Paint((0.1, 0.1, 0.1), (0.9, 0.9, 0.9), "suit", 80.0)
    v, u = np.mgrid[0.17:0.5:0.01, -0.1:0.1:0.005]
    colour = suit.colour(u, v)
    shirt = (colour == 0.9).all(axis=-1)
    tie = np.isclose(colour, [0.45, 0.07, 0.1]).all(axis=-1)
    assert shirt.any() and tie.any() and not (shirt | tie)[v > 0.4].any()
    assert (np.abs(u[tie]) <= np.abs(u[shirt]).max()).all()


@pytest.mark.parametrize("kind", ["bicycle", "signal"])
def test_bicycles_and_signals_are_person_sized_furniture_that_belongs_to_no_object(kind):
    """Parked bicycles and traffic signals (hard negatives for a person detector) are drawn as furniture: their
    pixels are nobody's in the masks, and they hide the person behind them."""
    rng = np.random.default_rng(4)
    person = _obj("person", 0.0, 6.0, "side", sample_identity(rng), 1.75, 0.5)
    item = sample_item(rng, 0.0, 5.0, kind)  # just in front of the person
    alone = render_frame(_scene((person,)), 0, 2)
    behind = render_frame(_scene((person,), (item,)), 0, 2)
    np.testing.assert_array_equal(alone.amodal, behind.amodal)  # the person's whole silhouette is unchanged
    hidden = (alone.visible_ids == 0) & (behind.visible_ids == -1)
    assert hidden.sum() >= (5 if kind == "bicycle" else 40)  # a bicycle's thin tubes hide little of a person
    painted = np.abs(behind.rgb.astype(int) - render_frame(_scene(()), 0, 2).rgb.astype(int)).sum(axis=2) > 30
    assert (painted & (behind.visible_ids == -1)).sum() > 100  # drawn, and owned by no object


def test_close_scenes_put_furniture_near_the_camera_and_some_bicycles_in_rows():
    """Close scenes have poles, bollards, bicycles, signals, ... 1.5-6 m away, as large as the near people."""
    cfg = VideoConfig(frames=4, width=320, height=192, objects_min=2, objects_max=6, style="camera")
    near_items, rows = 0, 0
    for k in range(40):
        scene = scene_for(33, k, cfg)
        depths = [c.y_m for c in scene.clutter]
        near_items += sum(1.5 <= d <= 6.0 for d in depths)
        bikes = [c.y_m for c in scene.clutter if c.kind == "bicycle"]
        rows += any(np.sum(np.abs(np.asarray(bikes) - b) < 0.06) >= 2 for b in bikes)
    assert near_items >= 15 and rows >= 3, (near_items, rows)
