"""COCO(+occluder) loader and the segmentation codec."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from amodal.errors import ConfigError
from amodal.training.data.coco import (
    load_coco_instances,
    mask_to_polygons,
    mask_to_rle,
    segmentation_to_mask,
)


def test_polygons_round_trip_exactly_with_holes_filled():
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = ndimage.gaussian_filter(rng.random((48, 40)), 2.5) > 0.52
        polys = mask_to_polygons(m)
        back = segmentation_to_mask(polys, 48, 40)
        assert np.array_equal(back, ndimage.binary_fill_holes(m))
    ring = np.zeros((20, 20), bool)
    ring[4:16, 4:16] = True
    ring[8:12, 8:12] = False
    assert segmentation_to_mask(mask_to_polygons(ring), 20, 20).sum() == 144
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_rle_round_trip_compressed_and_uncompressed():
    m = np.zeros((7, 9), bool)
    m[2:5, 3:8] = True
    rle = mask_to_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 9]
    assert np.array_equal(segmentation_to_mask(rle, 7, 9), m)
    # uncompressed (column-major run lengths starting with zeros)
    flat = m.T.ravel()
    runs, current, count = [], False, 0
    for v in flat:
        if v == current:
            count += 1
        else:
            runs.append(count)
            current, count = v, 1
    runs.append(count)
    assert np.array_equal(segmentation_to_mask({"size": [7, 9], "counts": runs}, 7, 9), m)


def _write_set(tmp_path, annotations, images=None, categories=None, make_files=True):
    root = tmp_path / "ds"
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "width": 12, "height": 10}]
    if make_files:
        for img in images:
            Image.fromarray(np.zeros((img["height"], img["width"], 3), np.uint8)).save(root / "images" / "val" / img["file_name"])
    data = {"images": images, "annotations": annotations, "categories": categories or [{"id": 3, "name": "Knife"}]}
    path = root / "annotations" / "val.json"
    path.write_text(json.dumps(data))
    return path


def _ann(aid=1, **kw):
    ann = {"id": aid, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 3], "area": 12, "iscrowd": 0,
           "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]}  # fmt: skip
    ann.update(kw)
    return ann


def test_loads_records_with_masks_and_occluders(tmp_path):
    occ = [[3, 2, 6, 2, 6, 6, 3, 6]]
    path = _write_set(tmp_path, [_ann(2, bg_object_segmentation=occ), _ann(1, bg_object_segmentation=[])])
    data = load_coco_instances(path)
    assert data.image_root == path.parent.parent / "images" / "val"
    assert data.categories == {3: "Knife"} and data.has_occluders
    rec = data.records[0]
    assert rec.load_image().shape == (10, 12, 3)
    first, second = rec.instances
    assert (first.annotation_id, second.annotation_id) == (1, 2)
    assert first.mask().sum() == 12 and first.bbox_xyxy == (1.0, 1.0, 5.0, 4.0)
    assert first.occluder_mask().sum() == 0
    assert second.occluder_mask().sum() == 12
    plain = load_coco_instances(_write_set(tmp_path / "b", [_ann(1)]))
    assert plain.records[0].instances[0].occluder_mask() is None and not plain.has_occluders


@pytest.mark.parametrize(
    "ann, message",
    [
        (_ann(category_id=99), r"annotation 1 \(image 1\): unknown category_id 99"),
        (_ann(segmentation=[[1, 2, 3, 4, "x", 6]]), r"annotation 1 .*polygon 0 must be a flat list of numbers"),
        (_ann(segmentation="abc"), r"annotation 1 .*segmentation must be a list of polygons or an RLE dict"),
        (_ann(segmentation={"size": [5, 5], "counts": "abc"}), r"annotation 1 .*RLE size \[5, 5\]"),
        (_ann(bbox=[0, 0, -1, 2]), r"annotation 1 .*bbox"),
        (_ann(image_id=4), r"annotation 1 \(image 4\): refers to an image id"),
        (_ann(bg_object_segmentation="x"), r"annotation 1 .*bg_object_segmentation"),
    ],
)
def test_rejects_bad_annotations_naming_them(tmp_path, ann, message):
    with pytest.raises(ConfigError, match=message):
        load_coco_instances(_write_set(tmp_path, [ann]))


def test_degenerate_polygons_are_dropped_as_real_sets_need(tmp_path):
    good = [1, 1, 5, 1, 5, 4, 1, 4]
    anns = [_ann(1, segmentation=[good, [2, 2, 3, 3]]), _ann(2, segmentation=[[1, 2, 3, 4, 5]]), _ann(3)]
    data = load_coco_instances(_write_set(tmp_path, anns))
    assert [i.annotation_id for i in data.records[0].instances] == [1, 3]
    assert data.skipped_annotations == (2,) and data.dropped_polygons == 2
    assert data.records[0].instances[0].mask().sum() == 12


def test_rejects_missing_files_and_bad_json(tmp_path):
    path = _write_set(tmp_path, [_ann()], make_files=False)
    with pytest.raises(ConfigError, match=r"image 1: image file .*a.png does not exist"):
        load_coco_instances(path)
    assert len(load_coco_instances(path, check_files=False)) == 1
    with pytest.raises(ConfigError, match="does not exist"):
        load_coco_instances(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_coco_instances(bad)
    dup = _write_set(tmp_path / "d", [_ann(1), _ann(1)])
    with pytest.raises(ConfigError, match="duplicate annotation id 1"):
        load_coco_instances(dup)


def test_image_size_mismatch_is_reported(tmp_path):
    path = _write_set(tmp_path, [_ann()])
    Image.fromarray(np.zeros((11, 12, 3), np.uint8)).save(path.parent.parent / "images" / "val" / "a.png")
    rec = load_coco_instances(path).records[0]
    with pytest.raises(ConfigError, match=r"12x11 .* says 12x10"):
        rec.load_image()
