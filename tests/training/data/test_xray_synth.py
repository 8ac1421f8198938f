"""Synthetic X-ray world: determinism, COCO round trip, Beer–Lambert additivity, 16-bit output, classes."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from amodal.errors import ConfigError
from amodal.training.data.coco import load_coco_instances, read_image
from amodal.training.data.synth import xray
from amodal.world.shapes2d import Box, Pose
from amodal.world.xray_items import ITEM_BUILDERS, PIDRAY_CLASSES, Component, Part, render_components
from amodal.world.xray_physics import Detector, measure, pseudo_colour

TINY = ["--width", "96", "--height", "80", "--items-min", "2", "--items-max", "3", "--clutter-min", "1", "--clutter-max", "2"]


def tiny_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    xray.add_arguments(parser)
    return parser.parse_args([*TINY, *extra])


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("xray")
    summary = xray.generate(out, 3, 5, tiny_args("--split", "val"))
    return out, summary


def test_generation_is_deterministic_per_seed(tiny_set, tmp_path):
    out, _ = tiny_set
    again = tmp_path / "again"
    xray.generate(again, 3, 5, tiny_args("--split", "val"))
    assert (again / "annotations/val.json").read_bytes() == (out / "annotations/val.json").read_bytes()
    for k in range(3):
        name = f"images/val/val_{k:06d}.png"
        assert np.array_equal(read_image(again / name), read_image(out / name))
    other = tmp_path / "other"
    xray.generate(other, 1, 6, tiny_args("--split", "val"))
    assert not np.array_equal(read_image(other / "images/val/val_000000.png"), read_image(out / "images/val/val_000000.png"))


def test_round_trip_through_the_coco_loader(tiny_set):
    out, summary = tiny_set
    marker = json.loads((out / "amodal_dataset.json").read_text())
    assert marker["kind"] == "xray" and marker["seed"] == 5 and marker["n"] == 3 and marker["generator_version"] == 1
    data = load_coco_instances(out / "annotations/val.json")
    assert [data.categories[k] for k in range(1, 13)] == list(PIDRAY_CLASSES)
    assert len(data) == 3 and sum(len(r.instances) for r in data.records) == summary["instances"] >= 6
    for rec in data.records:
        img = rec.load_image()
        assert img.shape == (80, 96, 3) and img.dtype == np.uint8
        for inst in rec.instances:
            mask = inst.mask()
            ys, xs = np.nonzero(mask)
            assert inst.area == mask.sum() > 0
            assert inst.bbox_xywh == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            occ = inst.occluder_mask()
            x0, y0, x1, y1 = (int(v) for v in inst.bbox_xyxy)
            outside_box = occ.copy()
            outside_box[y0:y1, x0:x1] = False
            assert not outside_box.any()
            others = np.zeros_like(mask)
            for other in rec.instances:
                if other.annotation_id != inst.annotation_id:
                    others |= other.mask()
            assert not (occ & ~others).any()  # occluders are other items' pixels


def _plate(material: str, thickness_mm: float, cx: float, cy: float) -> Component:
    return Component("item", material, 1, (Part(Box(0, 0, 20, 14), material, thickness_mm),), Pose(cx, cy, 0.0, 1.0))


def test_overlapping_items_add_attenuation():
    """−log T of the overlap = sum of the parts' −log T (Beer–Lambert), on the raw channels."""
    rng = np.random.default_rng(0)
    h, w = 64, 80
    blade = Component("item", "Knife", 11, tuple(ITEM_BUILDERS["Knife"](rng)), Pose(38, 30, 0.3, 0.35))
    can = Component("item", "Sprayer", 9, tuple(ITEM_BUILDERS["Sprayer"](rng)), Pose(42, 34, 1.4, 0.35))
    ideal = Detector(noise=False, psf_sigma_px=0.0)
    logs = {}
    for key, comps in {"a": [blade], "b": [can], "ab": [blade, can]}.items():
        a_low, a_high, masks = render_components(comps, h, w)
        t_low, t_high = measure(a_low, a_high, ideal, rng)
        logs[key] = (-np.log(t_low.astype(np.float64)), -np.log(t_high.astype(np.float64)), masks)
    overlap = logs["ab"][2][0] & logs["ab"][2][1]
    assert overlap.sum() > 20
    for ch in (0, 1):
        got = logs["ab"][ch][overlap]
        want = logs["a"][ch][overlap] + logs["b"][ch][overlap]
        ok = want < math.log(min(ideal.photons_low, ideal.photons_high)) - 0.1  # beyond the detector floor
        assert ok.sum() > 10
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4)

    # with the real detector (PSF + photon noise): region means still add up
    real = Detector()
    a_plate, b_plate = _plate("aluminium", 12.0, 30, 32), _plate("plastic", 40.0, 50, 32)
    means = {}
    for key, comps in {"0": [], "a": [a_plate], "b": [b_plate], "ab": [a_plate, b_plate]}.items():
        a_low, a_high, _ = render_components(comps, h, w)
        t_low, t_high = measure(a_low, a_high, real, np.random.default_rng(1))
        core = np.zeros((h, w), bool)
        core[22:42, 34:46] = True  # interior of the overlap (x 30..50 and 30..70 overlap on 30..50)
        means[key] = (-np.log(t_low[core]).mean(), -np.log(t_high[core]).mean())
    for ch in (0, 1):
        assert means["ab"][ch] == pytest.approx(means["a"][ch] + means["b"][ch] - means["0"][ch], rel=0.03)


def test_gray16_writes_raw_high_energy_transmission(tmp_path):
    xray.generate(tmp_path, 1, 0, tiny_args("--gray16"))
    path = tmp_path / "images/train/train_000000.png"
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    raw = read_image(path)
    assert raw.dtype == np.uint16 and raw.ndim == 2
    assert raw.max() > 60000 and (raw > 255).mean() > 0.9 and raw.min() < 60000
    data = load_coco_instances(tmp_path / "annotations/train.json")
    assert data.records[0].load_image().shape == (80, 96)


def test_pseudo_colour_separates_materials():
    h, w = 40, 100
    comps = [_plate("plastic", 60.0, 25, 20), _plate("steel", 1.5, 75, 20)]
    a_low, a_high, _ = render_components(comps, h, w)
    t_low, t_high = measure(a_low, a_high, Detector(noise=False), np.random.default_rng(0))
    rgb = pseudo_colour(t_low, t_high).astype(int)
    organic, metal, empty = rgb[20, 25], rgb[20, 75], rgb[2, 2]
    assert organic[0] > organic[2] + 40  # orange
    assert metal[2] > metal[0] + 30  # blue
    assert empty.min() >= 250  # open beam is white
    assert (metal.sum() > organic.sum()) == (t_high[20, 75] > t_high[20, 25])  # darkness follows attenuation


def test_every_class_builds_a_plausible_item():
    rng = np.random.default_rng(3)
    assert list(ITEM_BUILDERS) == list(PIDRAY_CLASSES) and len(PIDRAY_CLASSES) == 12
    for cid, name in enumerate(PIDRAY_CLASSES, start=1):
        comp = Component("item", name, cid, tuple(ITEM_BUILDERS[name](rng)), Pose(100, 100, 0.5, 0.4))
        a_low, a_high, masks = render_components([comp], 200, 200)
        assert masks[0].sum() > 30, name
        assert (a_low[masks[0]] > a_high[masks[0]]).all(), name  # attenuation falls with energy
        _, n_parts = ndimage.label(masks[0])
        assert n_parts <= 2, name  # one object (a sub-pixel tip may break off at this scale)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="items-min"):
        xray.config_from_args(tiny_args("--items-min", "4", "--items-max", "2"))
    with pytest.raises(ConfigError, match="split"):
        xray.config_from_args(tiny_args("--split", "a/b"))


def test_separable_fold_field_matches_direct_evaluation():
    from amodal.world.shapes2d import Ellipse, Wobbly

    blob = Wobbly(Ellipse(0, 0, 50, 30), ((5.0, 0.05, 0.3, 1.0), (3.0, 0.03, 2.0, 0.2)))
    gy, gx = np.mgrid[0:37, 0:53].astype(float)
    u, v = Pose(20, 15, 0.7, 0.8, True).to_local(gx + 0.5, gy + 0.5)
    direct = sum(a * np.sin(f * (u * np.cos(d) + v * np.sin(d)) + p) for a, f, d, p in blob.waves)
    np.testing.assert_allclose(blob.field(u, v), direct, atol=1e-9)
    np.testing.assert_allclose(blob.field(u[3], v[3]), direct[3], atol=1e-9)  # 1-D input: direct path
