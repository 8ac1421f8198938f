"""The street world of the occlusion world: a ground plane seen by a static pinhole camera, with textured objects
(person, car, animal, box, ball) walking, entering, leaving and crossing behind one another, painted far to near,
so ground truth is exact: amodal mask = the object's full silhouette (clipped to the image), visible mask = the
pixels where it is on top, occlusion level = 1 − visible/amodal.

World: X right, Y forward, Z up, metres; the camera at height ``h`` pitched down; objects are upright 2.5-D sprites
whose image position and scale follow from projecting their foot point.  Used by the demo's feed, the benchmarks
and ``amodal data synth video`` (which writes datasets of it in the OVIS and MOVi layouts).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amodal.errors import ConfigError
from amodal.world import render as R

REGIMES = ("light", "medium", "heavy")
_CATEGORY_P = {"person": 0.35, "car": 0.2, "animal": 0.2, "box": 0.15, "ball": 0.1}
_SPEED = {"person": 0.8, "car": 1.6, "animal": 1.1, "box": 0.0, "ball": 1.3}
THICKNESS_M = {"person": 0.3, "car": 1.8, "animal": 0.4, "box": 0.8, "ball": 0.5}
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


def scene_for(seed: int, index: int, cfg: VideoConfig) -> Scene:
    """The scene of video ``index`` of a dataset generated with ``seed`` (regimes cycle light/medium/heavy
    from a seed-dependent start, so every few videos span all three)."""
    offset = int(np.random.default_rng([seed, 0x5EED]).integers(3))
    return make_scene(np.random.default_rng([seed, index]), cfg, REGIMES[(index + offset) % 3])
