"""MOVi-layout loader: tracks of the synthetic set match its OVIS JSON exactly; malformed layouts are named."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from amodal.errors import ConfigError
from amodal.training.data.movi import MoviSplit
from amodal.training.data.ovis import OvisDataset
from amodal.training.data.synth import video


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("movi")
    p = argparse.ArgumentParser()
    video.add_arguments(p)
    video.generate(out, 2, 21, p.parse_args(["--frames", "6", "--width", "64", "--height", "48", "--depth"]))
    return out


def test_tracks_match_ovis_annotations(synth: Path) -> None:
    split = MoviSplit(synth / "movi" / "train")
    raw = json.loads((synth / "annotations" / "train.json").read_text())
    ovis = OvisDataset(synth / "annotations" / "train.json")
    assert len(split) == len(raw["annotations"])
    names = {v.id: v.name for v in ovis.videos.values()}
    by_key = {(names[a["video_id"]], a["movi_object"]): a for a in raw["annotations"]}
    for track in split:
        a = by_key[(track.video, track.obj)]
        ov = next(tr for tr in ovis.tracks(a["video_id"]) if tr.id == a["id"])
        assert track.frame_indices.tolist() == [t for t in range(6) if a["segmentations"][t] is not None]
        assert track.category_id == a["category_id"]
        assert track.K.shape == (3, 3)
        for k, t in enumerate(track.frame_indices.tolist()):
            np.testing.assert_array_equal(track.visible[k], ov.mask(t, 48, 64))
            np.testing.assert_array_equal(track.amodal[k], ov.amodal_mask(t, 48, 64))
            x, y, w, h = a["bboxes"][t]
            np.testing.assert_allclose(track.boxes_xyxy[k], [x, y, x + w, y + h], atol=1e-4)
        assert track.rgb.shape == (len(track.frame_indices), 48, 64, 3)
    assert (synth / "movi" / "train" / "vid00000" / "depth_full_00000.tiff").is_file()


def test_kubric_intrinsics_project_like_pixel_intrinsics(synth: Path) -> None:
    meta = json.loads((synth / "movi" / "train" / "vid00000" / "metadata.json").read_text())
    cam = meta["camera"]
    K_px, R, t = (np.asarray(cam[k]) for k in ("K_pixels", "R_world_to_camera", "t_world_to_camera"))
    world = np.array([0.7, 6.0, 0.4])
    pc = R @ world + t
    uv_px = (K_px @ pc)[:2] / pc[2]
    # Kubric: camera-to-world 4×4 with Blender axes, K in normalised image coordinates.
    c2w = np.asarray(cam["R"])
    p_blender = np.linalg.inv(c2w) @ np.append(world, 1.0)
    q = np.asarray(cam["K"]) @ p_blender[:3]
    uv_norm = q[:2] / q[2]
    np.testing.assert_allclose(uv_norm * [64, 48], uv_px, atol=1e-6)


def test_bad_layouts_are_named(tmp_path: Path, synth: Path) -> None:
    with pytest.raises(ConfigError, match="instance_list.npy: not found"):
        MoviSplit(tmp_path)
    root = tmp_path / "split"
    shutil.copytree(synth / "movi" / "train", root)
    np.save(root / "instance_list.npy", np.array(["vid00000_3"]))
    with pytest.raises(ConfigError, match="'vid00000_3' is not '<video>-<obj>'"):
        MoviSplit(root)
    np.save(root / "instance_list.npy", np.array(["vid00000-0"]))
    meta_path = root / "vid00000" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["instances"][0]["bbox_frames"] = meta["instances"][0]["bbox_frames"] + [0]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="instance 0 has .* bboxes but .* bbox_frames"):
        MoviSplit(root)[0]
    meta_path.write_text("{}")
    with pytest.raises(ConfigError, match="vid00000/metadata.json: malformed MOVi metadata"):
        MoviSplit(root)[0]
    meta_path.unlink()
    with pytest.raises(ConfigError, match="metadata of video 'vid00000' not found"):
        MoviSplit(root)[0]
    np.save(root / "instance_list.npy", np.array(["x-1"], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="not a plain string array"):
        MoviSplit(root)
