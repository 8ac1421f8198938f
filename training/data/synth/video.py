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
from amodal.training.data.synth import _render as R

GENERATOR_VERSION = 1
REGIMES = ("light", "medium", "heavy")
_CATEGORY_P = {"person": 0.35, "car": 0.2, "animal": 0.2, "box": 0.15, "ball": 0.1}
_SPEED = {"person": 0.8, "car": 1.6, "animal": 1.1, "box": 0.0, "ball": 1.3}
_THICKNESS_M = {"person": 0.3, "car": 1.8, "animal": 0.4, "box": 0.8, "ball": 0.5}
_NEAR_M = 0.8


@dataclass(frozen=True, slots=True)
class VideoConfig:
    frames: int = 24
    width: int = 320
    height: int = 192
    objects_min: int = 2
    objects_max: int = 8
    split: str = "train"
    held_out_fraction: float = 0.0
    held_out_split: str = "valid"
    depth: bool = False
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ConfigError(f"--frames must be ≥ 2, got {self.frames}")
        if self.width < 32 or self.height < 32:
            raise ConfigError(f"--width/--height must be ≥ 32, got {self.width}x{self.height}")
        if not 1 <= self.objects_min <= self.objects_max:
            raise ConfigError(f"need 1 ≤ --objects-min ≤ --objects-max, got {self.objects_min}, {self.objects_max}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ConfigError(f"--split-held-out must be in [0, 1), got {self.held_out_fraction}")
        if self.split == self.held_out_split:
            raise ConfigError(f"--split and --held-out-split are both {self.split!r}")
        for name in (self.split, self.held_out_split):
            if not name or "/" in name or "-" in name:
                raise ConfigError(f"split name {name!r} must be non-empty without '/' or '-'")


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


def config_from_args(args: argparse.Namespace) -> VideoConfig:
    return VideoConfig(frames=args.frames, width=args.width, height=args.height, objects_min=args.objects_min,
                       objects_max=args.objects_max, split=args.split, held_out_fraction=args.split_held_out,
                       held_out_split=args.held_out_split, depth=args.depth, jpeg_quality=args.jpeg_quality)


# --------------------------------------------------------------------------------------------------
# Camera and scene
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Camera:
    """Pinhole camera, OpenCV axes: x_cam = R @ X_world + t; pixel = K @ x_cam / z."""

    K: np.ndarray  # float64[3, 3] pixels
    R: np.ndarray  # float64[3, 3] world → camera
    t: np.ndarray  # float64[3]
    height_m: float
    width: int
    height: int

    @property
    def centre(self) -> np.ndarray:
        return -self.R.T @ self.t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uv float[N, 2] pixels, z float[N] camera depth) of world points float[N, 3]."""
        pc = points @ self.R.T + self.t
        z = pc[:, 2]
        uv = (pc[:, :2] / np.maximum(z, 1e-9)[:, None]) * self.K[[0, 1], [0, 1]] + self.K[:2, 2]
        return uv, z

    def half_width_m(self, depth_m: float) -> float:
        return depth_m * (self.width / 2) / self.K[0, 0]


def make_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    hfov = np.deg2rad(rng.uniform(55, 75))
    f = (width / 2) / np.tan(hfov / 2)
    pitch = np.deg2rad(rng.uniform(6, 16))
    cam_h = float(rng.uniform(1.5, 3.0))
    x_axis = np.array([1.0, 0.0, 0.0])
    z_axis = np.array([0.0, np.cos(pitch), -np.sin(pitch)])
    y_axis = np.cross(z_axis, x_axis)
    Rm = np.stack([x_axis, y_axis, z_axis])
    t = -Rm @ np.array([0.0, 0.0, cam_h])
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Camera(K, Rm, t, cam_h, width, height)


@dataclass(frozen=True, slots=True)
class SceneObject:
    category: str
    height_m: float
    width_m: float
    mid_xy: np.ndarray  # float[2] ground position at frame t_mid
    velocity_xy: np.ndarray  # float[2] metres per frame
    t_mid: float
    phase0: float
    phase_rate: float  # radians per frame
    facing: int
    textures: tuple


@dataclass(frozen=True, slots=True)
class Background:
    colour: np.ndarray  # float32[H, W, 3]
    depth_m: np.ndarray  # float32[H, W] ray distance (sky: 1000)
    ray_scale: np.ndarray  # float32[H, W] ray length per unit camera depth


@dataclass(frozen=True, slots=True)
class Scene:
    camera: Camera
    objects: tuple[SceneObject, ...]
    background: Background
    regime: str
    light_gain: float
    light_amp: float
    light_freq: float
    light_phase: float
    light_tilt: float
    noise_seed: int


def _sample_category(rng: np.random.Generator) -> str:
    names = list(_CATEGORY_P)
    return str(rng.choice(names, p=np.array(list(_CATEGORY_P.values()))))


def sample_objects(rng: np.random.Generator, cam: Camera, regime: str, cfg: VideoConfig) -> tuple[SceneObject, ...]:
    """Objects in groups that share a path (herds, groups of people walking together, queues of cars):
    light scenes are mostly singletons spread across the view, heavy ones a few tight groups crossing the
    centre, which is what makes occlusion persistent rather than a brief crossing."""
    span = cfg.objects_max - cfg.objects_min
    lo, hi = {"light": (0.0, 0.34), "medium": (0.33, 0.67), "heavy": (0.66, 1.0)}[regime]
    n = int(rng.integers(cfg.objects_min + round(lo * span), cfg.objects_min + round(hi * span) + 1))
    spread = {"light": 0.85, "medium": 0.45, "heavy": 0.2}[regime]
    speed_scale = {"light": 0.35, "medium": 0.8, "heavy": 0.8}[regime]
    group_max = {"light": 1, "medium": 2, "heavy": 4}[regime]
    T = cfg.frames
    objs: list[SceneObject] = []
    while len(objs) < n:
        size = min(int(rng.integers(1, group_max + 1)), n - len(objs))
        cat = _sample_category(rng)
        depth0 = float(rng.uniform(3.5, 12.0))
        half = cam.half_width_m(depth0)
        mid_x = spread * half * rng.uniform(-1, 1)
        static = cat == "box" and rng.random() < 0.7
        direction = 1 if rng.random() < 0.5 else -1
        vx = 0.0 if static else direction * _SPEED[cat] * speed_scale * rng.uniform(0.4, 1.0) * 2 * half / T
        vy = 0.0 if static else float(rng.uniform(-0.04, 0.04)) * depth0 / 8
        t_window = 0.15 if regime == "heavy" else 0.25
        t_mid = float(rng.uniform((0.5 - t_window) * T, (0.5 + t_window) * T))
        depth = depth0
        for member in range(size):
            if member:
                cat = cat if rng.random() < 0.75 else _sample_category(rng)
                depth += float(rng.uniform(0.3, 2.0))
                mid_x += float(rng.uniform(-0.8, 0.8))
            h, w = R.sample_size_m(cat, rng)
            v = np.array([vx * rng.uniform(0.95, 1.05), vy])
            if cat == "box" and member:
                v = np.zeros(2)
            objs.append(SceneObject(
                category=cat, height_m=h, width_m=w, mid_xy=np.array([mid_x, depth]), velocity_xy=v,
                t_mid=t_mid, phase0=float(rng.uniform(0, 2 * np.pi)), phase_rate=float(2 * np.pi * abs(v[0]) / (0.9 * h)),
                facing=direction, textures=R.instance_textures(cat, rng)))
    return tuple(objs)


def make_background(rng: np.random.Generator, cam: Camera) -> Background:
    H, W = cam.height, cam.width
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(xs + 0.5 - cam.K[0, 2]) / cam.K[0, 0], (ys + 0.5 - cam.K[1, 2]) / cam.K[1, 1],
                     np.ones_like(xs)], axis=-1) @ cam.R  # world directions
    down = rays[..., 2] < -1e-6
    lam = np.where(down, -cam.height_m / np.where(down, rays[..., 2], -1.0), 0.0)
    gx = rays[..., 0] * lam
    gy = rays[..., 1] * lam
    dist = np.where(down, lam * np.linalg.norm(rays, axis=-1), 1000.0).astype(np.float32)
    ground_a = R.random_colour(rng, 0.2, 0.6)
    ground_b = np.clip(ground_a + rng.uniform(-0.2, 0.2, 3), 0, 1).astype(np.float32)
    noise = rng.random((64, 64), dtype=np.float32)
    cell = float(rng.uniform(0.3, 1.0))
    mix = R.sample_bilinear(noise, gx / cell, gy / cell)[..., None]
    ground = ground_a * (1 - mix) + ground_b * mix
    tile = float(rng.uniform(2.0, 5.0))
    lines = (np.abs(((gx / tile) % 1.0) - 0.5) > 0.48) | (np.abs(((gy / tile) % 1.0) - 0.5) > 0.48)
    if rng.random() < 0.6:
        ground = np.where(lines[..., None], ground * 0.7, ground)
    sky_top = R.random_colour(rng, 0.45, 0.95)
    sky_bottom = np.clip(sky_top + 0.15, 0, 1)
    vert = np.clip(rays[..., 2] * 3, 0, 1)[..., None]
    sky = sky_bottom * (1 - vert) + sky_top * vert
    haze = np.clip(dist / 60.0, 0, 1)[..., None]
    colour = np.where(down[..., None], ground * (1 - haze) + sky_bottom * haze, sky)
    ray_scale = np.linalg.norm(rays @ cam.R.T, axis=-1).astype(np.float32)
    return Background(colour.astype(np.float32), dist, ray_scale)


def make_scene(rng: np.random.Generator, cfg: VideoConfig, regime: str) -> Scene:
    cam = make_camera(rng, cfg.width, cfg.height)
    bg = make_background(rng, cam)
    objs = sample_objects(rng, cam, regime, cfg)
    return Scene(cam, objs, bg, regime, light_gain=float(rng.uniform(0.8, 1.15)), light_amp=float(rng.uniform(0, 0.12)),
                 light_freq=float(rng.uniform(0.5, 2.0)), light_phase=float(rng.uniform(0, 2 * np.pi)),
                 light_tilt=float(rng.uniform(-0.25, 0.25)), noise_seed=int(rng.integers(2**31)))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameRender:
    rgb: np.ndarray  # uint8[H, W, 3]
    visible_ids: np.ndarray  # int16[H, W]: object index on top, −1 background
    amodal: np.ndarray  # bool[N, H, W]
    depth_m: np.ndarray  # float32[H, W] ray distance
    object_depth_m: np.ndarray  # float64[N] camera depth of each foot point (inf when behind the camera)
    positions: np.ndarray  # float64[N, 3] world foot points


def object_position(obj: SceneObject, t: int) -> np.ndarray:
    xy = obj.mid_xy + obj.velocity_xy * (t - obj.t_mid)
    return np.array([xy[0], xy[1], 0.0])


def render_frame(scene: Scene, t: int, n_frames: int) -> FrameRender:
    cam = scene.camera
    H, W = cam.height, cam.width
    N = len(scene.objects)
    positions = np.stack([object_position(o, t) for o in scene.objects]) if N else np.zeros((0, 3))
    uv, z = cam.project(positions) if N else (np.zeros((0, 2)), np.zeros(0))
    colour = scene.background.colour.copy()
    depth = scene.background.depth_m.copy()
    ids = np.full((H, W), -1, np.int16)
    amodal = np.zeros((N, H, W), bool)
    object_depth = np.where(z > _NEAR_M, z, np.inf)
    sprites = []
    for i, obj in enumerate(scene.objects):
        if not np.isfinite(object_depth[i]):
            continue
        scale = cam.K[0, 0] / z[i]  # pixels per metre
        x0, z0, x1, z1 = R.extent_m(obj.category, obj.height_m, obj.width_m)
        u_f, v_f = uv[i]
        c0, c1 = int(np.floor(u_f + x0 * scale)), int(np.ceil(u_f + x1 * scale))
        r0, r1 = int(np.floor(v_f - z1 * scale)), int(np.ceil(v_f - z0 * scale))
        c0, c1, r0, r1 = max(c0, 0), min(c1, W), max(r0, 0), min(r1, H)
        if c0 >= c1 or r0 >= r1:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1]
        x_m = (xx + 0.5 - u_f) / scale
        z_m = (v_f - (yy + 0.5)) / scale
        phase = obj.phase0 + obj.phase_rate * t
        parts = R.rasterise(R.shape_primitives(obj.category, obj.height_m, obj.width_m, phase, obj.facing), x_m, z_m)
        inside = parts >= 0
        if not inside.any():
            continue
        amodal[i, r0:r1, c0:c1] = inside
        # Contact shadow on the ground (not part of any mask).
        shadow = ((x_m / (0.6 * obj.width_m + 0.1)) ** 2 + (z_m / (0.08 * obj.height_m)) ** 2) <= 1.0
        colour[r0:r1, c0:c1][shadow & (ids[r0:r1, c0:c1] < 0)] *= 0.65
        sprites.append((z[i], i, (r0, r1, c0, c1), parts, x_m, z_m))
    ray_scale = scene.background.ray_scale
    for zi, i, (r0, r1, c0, c1), parts, x_m, z_m in sorted(sprites, key=lambda s: (-s[0], s[1])):
        obj = scene.objects[i]
        inside = parts >= 0
        paint = R.paint_parts(parts, x_m, z_m, obj.textures, obj.height_m)
        colour[r0:r1, c0:c1][inside] = paint[inside]
        ids[r0:r1, c0:c1][inside] = i
        depth[r0:r1, c0:c1][inside] = zi * ray_scale[r0:r1, c0:c1][inside]
    # Lighting: global gain with a slow flicker and a horizontal gradient that drifts over time.
    phase = 2 * np.pi * scene.light_freq * t / n_frames + scene.light_phase
    gain = scene.light_gain * (1 + scene.light_amp * np.sin(phase))
    xs_norm = (np.arange(W, dtype=np.float32) + 0.5) / W - 0.5
    tilt = 1 + scene.light_tilt * np.cos(phase) * xs_norm
    colour = colour * (gain * tilt)[None, :, None]
    noise = np.random.default_rng([scene.noise_seed, t]).normal(0, 0.01, colour.shape).astype(np.float32)
    rgb = np.clip((colour + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
    return FrameRender(rgb, ids, amodal, depth, object_depth, positions)


# --------------------------------------------------------------------------------------------------
# Writing
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
    hw, hd = obj.width_m / 2, _THICKNESS_M[obj.category] / 2
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
            "size_m": [obj.width_m, _THICKNESS_M[obj.category], obj.height_m]})
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


def scene_for(seed: int, index: int, cfg: VideoConfig) -> Scene:
    """The scene of video ``index`` of a dataset generated with ``seed`` (regimes cycle light/medium/heavy
    from a seed-dependent start, so every few videos span all three)."""
    offset = int(np.random.default_rng([seed, 0x5EED]).integers(3))
    return make_scene(np.random.default_rng([seed, index]), cfg, REGIMES[(index + offset) % 3])


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
        "kind": "video", "seed": seed, "n": n, "generator_version": GENERATOR_VERSION,
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
