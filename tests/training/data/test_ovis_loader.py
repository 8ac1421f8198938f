"""OVIS / YouTube-VIS loader: decoding (RLE str, uncompressed RLE, polygon, None), frames, clips, buckets, errors."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from amodal.errors import ConfigError
from amodal.training.data.ovis import (
    OvisDataset,
    decode_segmentation,
    occlusion_bucket,
    occlusion_label,
    occlusion_score,
)
from amodal.training.data.synth import video


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ovis")
    p = argparse.ArgumentParser()
    video.add_arguments(p)
    video.generate(out, 2, 7, p.parse_args(["--frames", "8", "--width", "64", "--height", "48"]))
    return out


def _write_set(root: Path, annotations: list[dict], length: int = 3, size: tuple[int, int] = (8, 10)) -> Path:
    h, w = size
    (root / "JPEGImages" / "v").mkdir(parents=True, exist_ok=True)
    for t in range(length):
        Image.fromarray(np.full((h, w, 3), 40 * t, np.uint8)).save(root / "JPEGImages" / "v" / f"{t}.png")
    doc = {"videos": [{"id": 1, "width": w, "height": h, "length": length,
                       "file_names": [f"v/{t}.png" for t in range(length)]}],
           "categories": [{"id": 1, "name": "person"}], "annotations": annotations}
    (root / "annotations").mkdir(exist_ok=True)
    path = root / "annotations" / "x.json"
    path.write_text(json.dumps(doc))
    return path


def test_thresholds_and_buckets() -> None:
    assert occlusion_label(0.0) == "no_occlusion"
    assert occlusion_label(0.0099) == "no_occlusion"
    assert occlusion_label(0.01) == "slight_occlusion"
    assert occlusion_label(0.5) == "slight_occlusion"
    assert occlusion_label(0.5001) == "severe_occlusion"
    # top ⌈4/2⌉ = two severe → 0.75 → heavy; top ⌈3/2⌉ = [0.25, 0] → 0.125 → light
    assert occlusion_score(["severe_occlusion", "no_occlusion", "severe_occlusion", "no_occlusion"]) == 0.75
    assert occlusion_score(["slight_occlusion", "no_occlusion", "no_occlusion"]) == 0.125
    assert [occlusion_bucket(s) for s in (0.25, 0.2501, 0.5, 0.5001)] == ["light", "medium", "medium", "heavy"]


def test_decode_all_segmentation_kinds() -> None:
    m = np.zeros((6, 7), bool)
    m[1:4, 2:6] = True
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    as_str = {"size": [6, 7], "counts": rle["counts"].decode("ascii")}
    np.testing.assert_array_equal(decode_segmentation(as_str, 6, 7), m)
    # uncompressed RLE: column-major run lengths starting with background
    flat = m.flatten(order="F").astype(np.uint8)
    runs, current, count = [], 0, 0
    for value in flat:
        if value == current:
            count += 1
        else:
            runs.append(count)
            current, count = value, 1
    runs.append(count)
    np.testing.assert_array_equal(decode_segmentation({"size": [6, 7], "counts": runs}, 6, 7), m)
    poly = [[2.0, 1.0, 6.0, 1.0, 6.0, 4.0, 2.0, 4.0]]
    assert decode_segmentation(poly, 6, 7)[2, 3]
    assert decode_segmentation(None, 6, 7) is None
    with pytest.raises(ValueError, match="size"):
        decode_segmentation(as_str, 7, 7)


def test_frames_round_trip_synthetic_set(synth: Path) -> None:
    ds = OvisDataset(synth / "annotations" / "train.json")
    assert set(ds.categories.values()) >= {"person", "car", "animal", "box", "ball"}
    n = 0
    for frame in ds.frames():
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        for inst in frame.instances:
            assert inst.mask.shape == (48, 64) and inst.mask.any()
            assert inst.amodal_mask is not None and not (inst.mask & ~inst.amodal_mask).any()
            x1, y1, x2, y2 = inst.box_xyxy
            ys, xs = np.nonzero(inst.mask)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert inst.occlusion == occlusion_label(inst.occlusion_level)
        n += 1
    assert n == 16
    for vid in ds.videos:
        score, bucket = ds.video_bucket(vid)
        assert bucket == occlusion_bucket(score)
        for tr in ds.tracks(vid):
            got = ds.track_bucket(tr)
            assert got is not None and got[1] in ("light", "medium", "heavy")


def test_clips_reference_within_gap(synth: Path) -> None:
    ds = OvisDataset(synth / "annotations" / "train.json")
    clips = list(ds.clips(clip_len=2, max_ref_gap=3, stride=3, seed=1))
    assert clips
    for clip in clips:
        idx = [f.frame_index for f in clip.frames]
        assert idx == list(range(idx[0], idx[0] + 2))
        ref = clip.reference.frame_index
        assert ref not in idx and abs(ref - idx[-1]) <= 3
    again = [c.reference.frame_index for c in ds.clips(clip_len=2, max_ref_gap=3, stride=3, seed=1)]
    assert again == [c.reference.frame_index for c in clips]
    with pytest.raises(ConfigError, match="clip_len"):
        next(ds.clips(clip_len=0))


def test_bad_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json.*not valid JSON"):
        OvisDataset(path)
    with pytest.raises(ConfigError, match="not found"):
        OvisDataset(tmp_path / "missing.json")


def test_mismatched_lengths_name_annotation_and_video(tmp_path: Path) -> None:
    ann = {"id": 9, "video_id": 1, "category_id": 1, "segmentations": [None, None], "areas": [None, None],
           "bboxes": [None, None]}
    with pytest.raises(ConfigError, match=r"annotation 9 segmentations has 2 entries, video 1 has 3 frames"):
        OvisDataset(_write_set(tmp_path, [ann]))


def test_unknown_video_category_and_label(tmp_path: Path) -> None:
    base = {"id": 4, "video_id": 1, "category_id": 1, "segmentations": [None] * 3}
    with pytest.raises(ConfigError, match="annotation 4 refers to unknown video 2"):
        OvisDataset(_write_set(tmp_path, [{**base, "video_id": 2}]))
    with pytest.raises(ConfigError, match="unknown category 3"):
        OvisDataset(_write_set(tmp_path, [{**base, "category_id": 3}]))
    with pytest.raises(ConfigError, match="occlusion label 'partial'"):
        OvisDataset(_write_set(tmp_path, [{**base, "occlusion": ["partial", None, None]}]))


def test_video_length_mismatch_and_missing_frame(tmp_path: Path) -> None:
    path = _write_set(tmp_path, [])
    doc = json.loads(path.read_text())
    doc["videos"][0]["length"] = 5
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="video 1 length 5 != 3 file_names"):
        OvisDataset(path)
    path = _write_set(tmp_path, [])
    (tmp_path / "JPEGImages" / "v" / "1.png").unlink()
    ds = OvisDataset(path)
    with pytest.raises(ConfigError, match=r"1\.png: frame 1 of video 1"):
        list(ds.frames())


def test_rle_of_wrong_size_names_annotation(tmp_path: Path) -> None:
    m = np.ones((4, 4), np.uint8)
    rle = mask_utils.encode(np.asfortranarray(m))
    seg = {"size": [4, 4], "counts": rle["counts"].decode("ascii")}
    ds = OvisDataset(_write_set(tmp_path, [{"id": 2, "video_id": 1, "category_id": 1,
                                            "segmentations": [seg, None, None]}]))
    with pytest.raises(ConfigError, match="annotation 2 frame 0"):
        ds.instances(ds.videos[1], 0)
