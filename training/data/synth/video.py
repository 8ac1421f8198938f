"""Synthetic occluded video instance segmentation (OVIS / YouTube-VIS JSON and the MOVi layout EoRaS reads).

World: a ground plane (X right, Y forward, Z up, metres) seen by a static pinhole camera at height ``h`` pitched
down; textured objects (person, car, animal, box, ball) stand on the plane as upright 2.5-D sprites whose
image position and scale follow from projecting their foot point. They move, enter, leave and cross; a frame
is painted far to near by camera depth, so ground truth is exact: amodal mask = the object's full silhouette
(clipped to the image), visible mask = the pixels where it is on top, occlusion level = 1 − visible/amodal.

Output under ``out``::

    amodal_dataset.json                       kind, seed, n, generator_version, splits, thresholds
    JPEGImages/<video>/<t:05d>.jpg           frames
    annotations/<split>.json                  YouTube-VIS/OVIS JSON (+ amodal_segmentations, occlusion_level,
                                              amodal_areas, depth_m per frame; videos carry camera K, R, t)
    movi/<split>/instance_list.npy            "<video>-<obj>" strings (objects visible in ≥ 1 frame)
    movi/<split>/<video>/rgba_full_<t:05d>.png, segmentation_full_<t:05d>.png (visible, value obj+1),
                        segmentation_<obj>_<t:05d>.png (amodal, value obj+1) (8-bit PNGs
                        when ids < 256, else 16-bit as Kubric writes them), metadata.json,
                        data_ranges.json, depth_full_<t:05d>.tiff (with --depth)

``metadata.json`` follows Kubric (what EoRaS's MOVi loader reads): ``metadata{width,height,num_frames,
num_instances}``, ``camera{K (Kubric's normalised intrinsics, [[fx/W,0,-.5],[0,-fy/H,-.5],[0,0,-1]]),
R (4×4 camera-to-world, Blender axes), focal_length (mm), sensor_width (mm), field_of_view (rad),
positions[T], quaternions[T] (wxyz)}``, ``instances[{bboxes (visible, normalised ymin,xmin,ymax,xmax, max
exclusive), bbox_frames, bboxes_3d[T][8][3], positions[T], visibility[T], category_id, category}]``; we add
``camera.K_pixels`` and OpenCV ``camera.R_world_to_camera``/``t_world_to_camera``. EoRaS's extra BEV renders
(``rgba_bev_full``, ``segmentation_bev_*``, ``metadata_bev.json``) are not produced.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amodal.errors import ConfigError
from amodal.training.data.ovis import (
    BUCKETS,
    NO_OCCLUSION_MAX_LEVEL,
    OCCLUSION_LABELS,
    SLIGHT_OCCLUSION_MAX_LEVEL,
    occlusion_bucket,
    occlusion_label,
    occlusion_score,
)
from amodal.world import render as R
from amodal.world.street import THICKNESS_M, Camera, Scene, SceneObject, VideoConfig, render_frame, scene_for

GENERATOR_VERSION = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = VideoConfig()
    parser.add_argument("--frames", type=int, default=d.frames, help="frames per video")
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--objects-min", type=int, default=d.objects_min)
    parser.add_argument("--objects-max", type=int, default=d.objects_max)
    parser.add_argument("--split", default=d.split, help="split name of the (non held-out) videos")
    parser.add_argument("--split-held-out", type=float, default=d.held_out_fraction,
                        help="fraction of videos (the last ones) written to --held-out-split")
    parser.add_argument("--held-out-split", default=d.held_out_split)
    parser.add_argument("--depth", action="store_true", help="also write MOVi depth_full_*.tiff (float32 metres)")
    parser.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    parser.add_argument("--style", default=d.style, choices=("flat", "camera", "mixed"),
                        help="flat: the first world; camera: photographs, articulated people, vehicles, street "
                             "furniture and camera effects; mixed: camera for 3 videos in 4")


def config_from_args(args: argparse.Namespace) -> VideoConfig:
    return VideoConfig(frames=args.frames, width=args.width, height=args.height, objects_min=args.objects_min,
                       objects_max=args.objects_max, split=args.split, held_out_fraction=args.split_held_out,
                       held_out_split=args.held_out_split, depth=args.depth, jpeg_quality=args.jpeg_quality,
                       style=args.style)


# --------------------------------------------------------------------------------------------------
# Camera and scene
# --------------------------------------------------------------------------------------------------


def _kubric_camera(cam: Camera, n_frames: int) -> dict:
    from scipy.spatial.transform import Rotation

    sensor_width_mm = 36.0
    f_px = float(cam.K[0, 0])
    focal_mm = f_px / cam.width * sensor_width_mm
    c2w_blender = cam.R.T @ np.diag([1.0, -1.0, -1.0])
    matrix_world = np.eye(4)
    matrix_world[:3, :3] = c2w_blender
    matrix_world[:3, 3] = cam.centre
    xyzw = Rotation.from_matrix(c2w_blender).as_quat()
    wxyz = [float(xyzw[3]), float(xyzw[0]), float(xyzw[1]), float(xyzw[2])]
    K_kubric = [[f_px / cam.width, 0.0, -0.5], [0.0, -float(cam.K[1, 1]) / cam.height, -0.5], [0.0, 0.0, -1.0]]
    return {
        "K": K_kubric,
        "R": matrix_world.tolist(),
        "focal_length": focal_mm,
        "sensor_width": sensor_width_mm,
        "field_of_view": float(2 * np.arctan(cam.width / 2 / f_px)),
        "positions": [cam.centre.tolist()] * n_frames,
        "quaternions": [wxyz] * n_frames,
        "K_pixels": cam.K.tolist(),
        "R_world_to_camera": cam.R.tolist(),
        "t_world_to_camera": cam.t.tolist(),
        "height_m": cam.height_m,
    }


def _box3d(obj: SceneObject, pos: np.ndarray) -> list[list[float]]:
    hw, hd = obj.width_m / 2, THICKNESS_M[obj.category] / 2
    return [[float(pos[0] + sx * hw), float(pos[1] + sy * hd), float(sz * obj.height_m)]
            for sx in (-1, 1) for sy in (-1, 1) for sz in (0, 1)]


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, compress_level=1)


def _save_ids(path: Path, array: np.ndarray, max_id: int) -> None:
    """Integer id image as a greyscale PNG: 8-bit when ids fit (< 256), else 16-bit like Kubric's."""
    from PIL import Image

    Image.fromarray(array.astype(np.uint8 if max_id < 256 else np.uint16)).save(path, compress_level=1)


@dataclass
class _VideoResult:
    name: str
    split: str
    video_entry: dict
    annotations: list[dict]
    movi_instances: list[str]
    labels: list[str]
    track_buckets: list[str]
    score: float
    bucket: str


def write_video(out_dir: Path, name: str, split: str, scene: Scene, cfg: VideoConfig) -> _VideoResult:
    """Render one video and write its frames (JPEG + MOVi layout); return its OVIS JSON pieces."""
    from PIL import Image

    T, H, W, N = cfg.frames, cfg.height, cfg.width, len(scene.objects)
    jpeg_dir = out_dir / "JPEGImages" / name
    movi_dir = out_dir / "movi" / split / name
    jpeg_dir.mkdir(parents=True, exist_ok=True)
    movi_dir.mkdir(parents=True, exist_ok=True)
    segs = [[None] * T for _ in range(N)]
    amodal_segs = [[None] * T for _ in range(N)]
    areas = [[None] * T for _ in range(N)]
    amodal_areas = [[None] * T for _ in range(N)]
    boxes = [[None] * T for _ in range(N)]
    occ = [[None] * T for _ in range(N)]
    levels = [[None] * T for _ in range(N)]
    depths = [[None] * T for _ in range(N)]
    movi_boxes: list[list] = [[] for _ in range(N)]
    movi_frames: list[list[int]] = [[] for _ in range(N)]
    visibility = [[0] * T for _ in range(N)]
    positions = [[None] * T for _ in range(N)]
    boxes3d = [[None] * T for _ in range(N)]
    for t in range(T):
        fr = render_frame(scene, t, T)
        Image.fromarray(fr.rgb).save(jpeg_dir / f"{t:05d}.jpg", quality=cfg.jpeg_quality)
        rgba = np.concatenate([fr.rgb, np.full((H, W, 1), 255, np.uint8)], axis=2)
        _save_png(movi_dir / f"rgba_full_{t:05d}.png", rgba)
        _save_ids(movi_dir / f"segmentation_full_{t:05d}.png", fr.visible_ids.astype(np.int32) + 1, N)
        if cfg.depth:
            import tifffile

            tifffile.imwrite(movi_dir / f"depth_full_{t:05d}.tiff", fr.depth_m[..., None])
        for i in range(N):
            amo = fr.amodal[i]
            _save_ids(movi_dir / f"segmentation_{i}_{t:05d}.png", amo.astype(np.uint16) * (i + 1), N)
            vis = fr.visible_ids == i
            a_area, v_area = int(amo.sum()), int(vis.sum())
            positions[i][t] = fr.positions[i].tolist()
            boxes3d[i][t] = _box3d(scene.objects[i], fr.positions[i])
            visibility[i][t] = v_area
            if a_area == 0:
                continue
            amodal_segs[i][t] = R.rle_encode(amo)
            amodal_areas[i][t] = a_area
            level = 1.0 - v_area / a_area
            levels[i][t] = level
            depths[i][t] = float(fr.object_depth_m[i])
            if v_area == 0:
                continue
            segs[i][t] = R.rle_encode(vis)
            areas[i][t] = v_area
            x, y, w, h = R.bbox_xywh(vis)
            boxes[i][t] = [x, y, w, h]
            occ[i][t] = occlusion_label(level)
            movi_boxes[i].append([y / H, x / W, (y + h) / H, (x + w) / W])
            movi_frames[i].append(t)
    cam_json = {"K": scene.camera.K.tolist(), "R": scene.camera.R.tolist(), "t": scene.camera.t.tolist()}
    video_entry = {"width": W, "height": H, "length": T, "name": name,
                   "file_names": [f"{name}/{t:05d}.jpg" for t in range(T)], "camera": cam_json,
                   "regime": scene.regime}
    annotations = []
    labels = []
    track_buckets = []
    movi_instances = []
    instances_meta = []
    for i, obj in enumerate(scene.objects):
        cat_id = {n: c for c, n in R.CATEGORIES}[obj.category]
        instances_meta.append({
            "category_id": cat_id, "category": obj.category, "asset_id": obj.category,
            "bboxes": movi_boxes[i], "bbox_frames": movi_frames[i], "bboxes_3d": boxes3d[i],
            "positions": positions[i], "visibility": visibility[i],
            "size_m": [obj.width_m, THICKNESS_M[obj.category], obj.height_m]})
        if not movi_frames[i]:
            continue
        movi_instances.append(f"{name}-{i}")
        track_labels = [label for label in occ[i] if label is not None]
        labels.extend(track_labels)
        track_buckets.append(occlusion_bucket(occlusion_score(track_labels)))
        annotations.append({
            "video_id": None, "category_id": cat_id, "iscrowd": 0, "height": H, "width": W, "length": 1,
            "segmentations": segs[i], "areas": areas[i], "bboxes": boxes[i], "occlusion": occ[i],
            "amodal_segmentations": amodal_segs[i], "amodal_areas": amodal_areas[i], "occlusion_level": levels[i],
            "depth_m": depths[i], "movi_object": i})
    metadata = {
        "metadata": {"width": W, "height": H, "num_frames": T, "num_instances": N, "video_name": name,
                     "generator": "amodal synth video", "generator_version": GENERATOR_VERSION},
        "camera": _kubric_camera(scene.camera, T),
        "instances": instances_meta,
    }
    (movi_dir / "metadata.json").write_text(json.dumps(metadata))
    (movi_dir / "data_ranges.json").write_text("{}")
    score = occlusion_score(labels)
    return _VideoResult(name, split, video_entry, annotations, movi_instances, labels, track_buckets, score,
                        occlusion_bucket(score))


def generate(out_dir: Path, n: int, seed: int, args: argparse.Namespace) -> dict:
    """Write ``n`` videos under ``out_dir``; returns counts and the OVIS occlusion-bucket histogram."""
    from tqdm import tqdm

    cfg = config_from_args(args)
    if n <= 0:
        raise ConfigError(f"n must be > 0, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_held = int(round(cfg.held_out_fraction * n))
    results: list[_VideoResult] = []
    for k in tqdm(range(n), desc="synth video", unit="video", leave=False):
        scene = scene_for(seed, k, cfg)
        split = cfg.held_out_split if k >= n - n_held else cfg.split
        results.append(write_video(out_dir, f"vid{k:05d}", split, scene, cfg))
    splits: dict[str, list[str]] = {}
    for split in dict.fromkeys(r.split for r in results):
        part = [r for r in results if r.split == split]
        splits[split] = [r.name for r in part]
        videos, anns = [], []
        for vid, r in enumerate(part, start=1):
            videos.append({"id": vid, **r.video_entry, "occlusion_score": r.score, "occlusion_bucket": r.bucket})
            for a in r.annotations:
                anns.append({"id": len(anns) + 1, **a, "video_id": vid})
        doc = {"info": {"description": "amodal synthetic occluded video instance segmentation", "seed": seed,
                        "generator_version": GENERATOR_VERSION},
               "licenses": [], "videos": videos, "categories": R.coco_categories(), "annotations": anns}
        (out_dir / "annotations").mkdir(exist_ok=True)
        (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(doc))
        np.save(out_dir / "movi" / split / "instance_list.npy",
                np.array([s for r in part for s in r.movi_instances], dtype=str))
    buckets = {b: sum(r.bucket == b for r in results) for b in BUCKETS}
    track_buckets = {b: sum(r.track_buckets.count(b) for r in results) for b in BUCKETS}
    labels = {lab: sum(r.labels.count(lab) for r in results) for lab in OCCLUSION_LABELS}
    marker = {
        "kind": "video", "seed": seed, "n": n, "generator_version": GENERATOR_VERSION, "style": cfg.style,
        "frames": cfg.frames, "width": cfg.width, "height": cfg.height, "categories": R.coco_categories(),
        "splits": splits, "ovis_annotations": {s: f"annotations/{s}.json" for s in splits}, "movi_root": "movi",
        "occlusion_thresholds": {"no_occlusion_below": NO_OCCLUSION_MAX_LEVEL,
                                 "slight_occlusion_up_to": SLIGHT_OCCLUSION_MAX_LEVEL},
        "occlusion_buckets_videos": buckets, "occlusion_buckets_tracks": track_buckets,
    }
    (out_dir / "amodal_dataset.json").write_text(json.dumps(marker, indent=1))
    return {"videos": n, "frames": n * cfg.frames, "instances": sum(len(r.annotations) for r in results),
            "splits": {s: len(v) for s, v in splits.items()}, "occlusion_buckets_videos": buckets,
            "occlusion_buckets_tracks": track_buckets, "frame_labels": labels}


# --------------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------------


def contact_sheet(dataset_dir: Path, out_png: Path, max_items: int) -> Path:
    """PNG grid: one row per video (up to ``max_items``), 4 frames each, visible masks tinted, occluded
    parts hatched and amodal outlines drawn; the row label gives the video and its OVIS bucket."""
    from PIL import Image, ImageDraw

    from amodal.training.data.ovis import OvisDataset

    dataset_dir = Path(dataset_dir)
    ann_files = sorted((dataset_dir / "annotations").glob("*.json"))
    rows = []
    if ann_files:
        for ann in ann_files:
            ds = OvisDataset(ann, dataset_dir / "JPEGImages")
            for video in ds.videos.values():
                if len(rows) >= max_items:
                    break
                ts = np.linspace(0, video.length - 1, min(4, video.length)).round().astype(int)
                tiles = []
                for t in ts:
                    fr = ds.frame(video, int(t))
                    vis = [inst.mask for inst in fr.instances]
                    amo = [inst.amodal_mask if inst.amodal_mask is not None else inst.mask for inst in fr.instances]
                    colours = [inst.track_id for inst in fr.instances]
                    tiles.append(R.overlay(fr.image, vis, amo, colours))
                score, bucket = ds.video_bucket(video.id)
                rows.append((f"{ann.stem}/{video.name} {bucket} ({score:.2f})", np.concatenate(tiles, axis=1)))
    else:
        from amodal.training.data.movi import MoviSplit

        for inst_list in sorted(dataset_dir.glob("**/instance_list.npy")):
            split = MoviSplit(inst_list.parent)
            for video in split.videos():
                if len(rows) >= max_items:
                    break
                meta = split.video_metadata(video)
                T = meta.num_frames
                tiles = []
                for t in np.linspace(0, T - 1, min(4, T)).round().astype(int):
                    rgb, vis_ids = split.frame(video, int(t))
                    amodal = [split.amodal_mask(video, k, int(t)) for k in range(meta.num_instances)]
                    tiles.append(R.overlay(rgb, [vis_ids == k + 1 for k in range(meta.num_instances)], amodal,
                                           list(range(meta.num_instances))))
                rows.append((f"{inst_list.parent.name}/{video}", np.concatenate(tiles, axis=1)))
    if not rows:
        raise ConfigError(f"{dataset_dir}: no videos found to draw")
    label_h = 14
    width = max(r[1].shape[1] for r in rows)
    height = sum(r[1].shape[0] + label_h for r in rows)
    sheet = Image.new("RGB", (width, height), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for label, strip in rows:
        draw.text((4, y + 1), label, fill=(255, 255, 255))
        sheet.paste(Image.fromarray(strip), (0, y + label_h))
        y += strip.shape[0] + label_h
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
