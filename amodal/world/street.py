"""The street world of the occlusion world: a ground plane seen by a static pinhole camera, with textured objects
(person, car, animal, box, ball) walking, entering, leaving and crossing behind one another, painted far to near,
so ground truth is exact: amodal mask = the object's full silhouette (clipped to the image), visible mask = the
pixels where it is on top, occlusion level = 1 − visible/amodal.

World: X right, Y forward, Z up, metres; the camera at height ``h`` pitched down; objects are upright 2.5-D sprites
whose image position and scale follow from projecting their foot point.  Used by the demo's feed, the benchmarks
and ``amodal data synth video`` (which writes datasets of it in the OVIS and MOVi layouts).

Two styles.  ``flat`` (the first world, the default, what the demo shows): primitive silhouettes with flat
textures on a noise ground, camera at eye level.  ``camera`` (closer to what real cameras see): real photographs
(scikit-image's) as ground, backdrops and posters; articulated people (``persons_body``: front / back / side,
clothing, skin and hair colours, bags, faces, some in dark suits) and cars / vans with windows, wheels and lights
(``vehicles``) seen from eye level up to ~10 m and 20-200 px tall, groups crossing, some standing or parked; in
40 % of scenes an eye-level camera with the first objects 1.3-5 m away (some 0.9-1.5 m: head and shoulders),
filling the frame and cut by its edges (as in hand-held, doorway and in-car footage); street furniture
(``clutter``: poles, signals, bollards, parked bicycles, fences, ...) that hides them and looks person-like; cast
shadows, defocus, motion blur, colour response, vignetting, sensor noise and an H.264 round trip (``camera_fx``);
domain randomisation (colours, photographs, camera quality) where realism is out of reach.
``mixed`` draws one of the two per video.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from amodal.errors import ConfigError
from amodal.world import photos, vehicles
from amodal.world import render as R
from amodal.world.camera_fx import CameraFX, apply_lens_and_response, gaussian_blur, h264_roundtrip, line_blur, sample_fx, sensor_noise
from amodal.world.clutter import ClutterItem, draw_item, sample_item
from amodal.world.persons_body import Identity, Paint, draw_parts, draw_person, sample_identity
from amodal.world.shapes2d import Capsule, Ellipse, Pose, rasterise

REGIMES = ("light", "medium", "heavy")
_CATEGORY_P = {"person": 0.5, "car": 0.3, "animal": 0.08, "box": 0.07, "ball": 0.05}
_SPEED = {"person": 0.8, "car": 1.6, "animal": 1.1, "box": 0.0, "ball": 1.3}
THICKNESS_M = {"person": 0.3, "car": 1.8, "animal": 0.4, "box": 0.8, "ball": 0.5}
_NEAR_M = 0.8
_CATEGORY_P_FLAT = {"person": 0.35, "car": 0.2, "animal": 0.2, "box": 0.15, "ball": 0.1}
STYLES = ("flat", "camera", "mixed")
_CAMERA_SHARE = 0.75  # style "mixed": the share of videos in the camera style
_CLOSE_SHARE = 0.4  # style "camera": the share of scenes seen from eye level with their first objects 1.3-5 m away
_VERY_CLOSE_SHARE = 0.2  # close scenes: the share of near objects 0.9-1.5 m away (head and shoulders in view)
_NEAR_CLUTTER = ("pole", "bollard", "bicycle", "signal", "sign", "bin", "fence")
_SUIT_SHARE = 0.2  # style "camera": the share of people in a dark suit, shirt and tie
PERSON_VIEWS = ("side", "front", "back")


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
    style: str = "flat"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(f"--style must be one of {STYLES}, got {self.style!r}")
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
    """A static camera from eye level (1.4 m, nearly level) to a pole or a first floor (10 m, pitched down up to
    ~40°): higher cameras look down more steeply, as surveillance cameras are mounted."""
    hfov = np.deg2rad(rng.uniform(45, 80))
    cam_h = float(1.4 + 8.6 * rng.beta(1.1, 1.6))
    pitch = np.deg2rad(rng.uniform(2, 10) + (cam_h - 1.4) / 8.6 * rng.uniform(5, 28))
    return _pinhole(width, height, hfov, cam_h, pitch)


def make_camera_close(rng: np.random.Generator, width: int, height: int) -> Camera:
    """An eye-level camera (hand-held, a doorway or a dashboard camera: 1.1-1.9 m, nearly level) for scenes whose
    nearest people and vehicles fill much of the frame and are cut by its edges."""
    hfov = np.deg2rad(rng.uniform(40, 75))
    return _pinhole(width, height, hfov, float(rng.uniform(1.1, 1.9)), np.deg2rad(rng.uniform(-2, 9)))


def _pinhole(width: int, height: int, hfov: float, cam_h: float, pitch: float) -> Camera:
    f = (width / 2) / np.tan(hfov / 2)
    x_axis = np.array([1.0, 0.0, 0.0])
    z_axis = np.array([0.0, np.cos(pitch), -np.sin(pitch)])
    y_axis = np.cross(z_axis, x_axis)
    Rm = np.stack([x_axis, y_axis, z_axis])
    t = -Rm @ np.array([0.0, 0.0, cam_h])
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Camera(K, Rm, t, cam_h, width, height)


def ground_point(cam: Camera, u_px: float, v_px: float) -> tuple[float, float] | None:
    """World (x, y) where the ray through pixel (u, v) meets the ground; None above the horizon."""
    ray = np.array([(u_px + 0.5 - cam.K[0, 2]) / cam.K[0, 0], (v_px + 0.5 - cam.K[1, 2]) / cam.K[1, 1], 1.0]) @ cam.R
    if ray[2] > -1e-3:
        return None
    lam = -cam.height_m / ray[2]
    return float(ray[0] * lam), float(ray[1] * lam)


def horizon_row(cam: Camera) -> float:
    """Image row of the horizon (negative when it lies above the image)."""
    pitch = np.arcsin(-cam.R[2, 2]) if abs(cam.R[2, 2]) <= 1 else 0.0
    return float(cam.K[1, 2] - cam.K[1, 1] * np.tan(pitch))


def _ground_sample(rng: np.random.Generator, cam: Camera, spread: float) -> tuple[float, float]:
    """A ground point whose image row lies between just below the horizon and a little below the image (objects
    that close are cut by the bottom edge, as near people are in real footage)."""
    H, W = cam.height, cam.width
    lo = max(horizon_row(cam) + 0.04 * H, 0.0)
    for _ in range(20):
        v = lo + (1.25 * H - lo) * float(rng.beta(1.6, 1.0))
        u = W / 2 + spread * (W / 2) * float(rng.uniform(-1, 1))
        point = ground_point(cam, u, v)
        if point is not None and point[1] > 1.0:
            return point
    return 0.0, 8.0


def _near_sample(rng: np.random.Generator, cam: Camera, depth_m: tuple[float, float] | None = None
                 ) -> tuple[float, float]:
    """A ground point ``depth_m`` in front of the camera (default: 1.3-5 m, and one time in five 0.9-1.5 m, where a
    person shows only head and shoulders), anywhere across the view (objects there are 100-500 px tall and often
    cut by the image's edges)."""
    if depth_m is None:
        depth_m = (0.9, 1.5) if rng.random() < _VERY_CLOSE_SHARE else (1.3, 5.0)
    depth = float(rng.uniform(*depth_m))
    return float(rng.uniform(-0.9, 0.9)) * cam.half_width_m(depth), depth


def street_identity(rng: np.random.Generator) -> Identity:
    """A person's look with a face, now and then in a dark suit (jacket, light shirt, tie, dark trousers)."""
    ident = sample_identity(rng)
    if rng.random() < _SUIT_SHARE:
        jacket = tuple(float(x) for x in rng.uniform(0.04, 0.22) * (1 + rng.uniform(-0.15, 0.15, 3)))
        shirt = tuple(float(x) for x in np.clip(rng.uniform(0.75, 0.97) + rng.uniform(-0.05, 0.05, 3), 0, 1))
        ident = replace(ident, upper=Paint(jacket, shirt, "suit", float(rng.uniform(40, 90))),  # type: ignore[arg-type]
                        lower=Paint(jacket, jacket), lower_kind="trousers", long_sleeves=True)  # type: ignore[arg-type]
    return replace(ident, face=True)


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
    view: str = "side"  # person: side | front | back; car: side | back | front
    look: object = None  # person: persons_body.Identity; car: vehicles.VehicleLook; others: None


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
    clutter: tuple[ClutterItem, ...] = ()
    fx: CameraFX = CameraFX()
    shadow: tuple[float, float, float] = (0.0, 0.0, 0.0)  # sun shadow: shear, length (× height), darkening
    style: str = "camera"  # flat | camera


def _sample_category(rng: np.random.Generator) -> str:
    names = list(_CATEGORY_P)
    return str(rng.choice(names, p=np.array(list(_CATEGORY_P.values()))))


def _object_size(rng: np.random.Generator, cat: str, view: str, look: object) -> tuple[float, float]:
    if cat == "person":
        height = float(rng.uniform(1.0, 1.45) if rng.random() < 0.08 else rng.normal(1.72, 0.09))
        return height, height * 0.3
    if cat == "car":
        van = getattr(look, "kind", "car") == "van"
        height = float(rng.uniform(1.9, 2.5) if van else rng.uniform(1.38, 1.6))
        across = rng.uniform(4.6, 5.6) if van else rng.uniform(3.8, 4.8)
        if view != "side":
            across = rng.uniform(1.9, 2.1) if van else rng.uniform(1.7, 1.9)
        return height, float(across)
    return R.sample_size_m(cat, rng)


def _regime_plan(rng: np.random.Generator, regime: str, cfg: VideoConfig) -> tuple[int, float, float]:
    """How many objects a scene of ``regime`` holds (light: the fewest of ``cfg``'s range, heavy: the most), how
    widely its groups spread across the view (a share of its half width) and how fast they move (a scale)."""
    span = cfg.objects_max - cfg.objects_min
    lo, hi = {"light": (0.0, 0.34), "medium": (0.33, 0.67), "heavy": (0.66, 1.0)}[regime]
    n = int(rng.integers(cfg.objects_min + round(lo * span), cfg.objects_min + round(hi * span) + 1))
    spread = {"light": 0.85, "medium": 0.45, "heavy": 0.2}[regime]
    speed_scale = {"light": 0.35, "medium": 0.8, "heavy": 0.8}[regime]
    return n, spread, speed_scale


def sample_objects(rng: np.random.Generator, cam: Camera, regime: str, cfg: VideoConfig, *, near: bool = False
                   ) -> tuple[SceneObject, ...]:
    """Objects in groups that share a path (groups of people walking together, queues of cars, herds): light
    scenes are mostly singletons spread across the view, heavy ones a few tight groups crossing the centre, which
    is what makes occlusion persistent rather than a brief crossing.  People walk across (seen from the side) or
    towards / away from the camera (front / back), some stand; cars drive across or along the view, some are
    parked.  ``near``: the first group, and each later one with probability 1/2, starts 1.3-5 m from the camera."""
    n, spread, speed_scale = _regime_plan(rng, regime, cfg)
    group_max = {"light": 1, "medium": 3, "heavy": 5}[regime]
    T = cfg.frames
    objs: list[SceneObject] = []
    while len(objs) < n:
        size = min(int(rng.integers(1, group_max + 1)), n - len(objs))
        cat = _sample_category(rng)
        if near and (not objs or rng.random() < 0.5):
            mid_x, depth0 = _near_sample(rng, cam)
        else:
            mid_x, depth0 = _ground_sample(rng, cam, spread)
        half = cam.half_width_m(depth0)
        view = "side"
        if cat == "person":
            view = str(rng.choice(PERSON_VIEWS, p=[0.5, 0.25, 0.25]))
        elif cat == "car":
            view = str(rng.choice(vehicles.VIEWS, p=[0.5, 0.3, 0.2]))
        static = (cat == "box" and rng.random() < 0.7) or (cat == "car" and rng.random() < 0.3) or (
            cat == "person" and rng.random() < 0.12)
        direction = 1 if rng.random() < 0.5 else -1
        along = view in ("front", "back")
        vx = 0.0 if static else direction * _SPEED[cat] * speed_scale * rng.uniform(0.4, 1.0) * 2 * half / T
        vy = 0.0 if static else float(rng.uniform(-0.04, 0.04)) * depth0 / 8
        if along and not static:
            step = float(rng.uniform(0.03, 0.08) if cat == "person" else rng.uniform(0.1, 0.4))
            vx, vy = float(rng.uniform(-0.1, 0.1)) * step, (-step if view == "front" else step)
        t_window = 0.15 if regime == "heavy" else 0.25
        t_mid = float(rng.uniform((0.5 - t_window) * T, (0.5 + t_window) * T))
        depth = depth0
        for member in range(size):
            if member:
                cat = cat if rng.random() < 0.8 else _sample_category(rng)
                depth += float(rng.uniform(0.3, 2.0))
                mid_x += float(rng.uniform(-0.8, 0.8))
            look: object = None
            member_view = view if cat in ("person", "car") else "side"
            if cat == "person":
                look = street_identity(rng)
            elif cat == "car":
                look = vehicles.sample_look(rng, "van" if rng.random() < 0.25 else "car")
            h, w = _object_size(rng, cat, member_view, look)
            v = np.array([vx * rng.uniform(0.95, 1.05), vy])
            if cat == "box" and member:
                v = np.zeros(2)
            moving = float(np.hypot(*v))
            objs.append(SceneObject(
                category=cat, height_m=h, width_m=w, mid_xy=np.array([mid_x, depth]), velocity_xy=v,
                t_mid=t_mid, phase0=float(rng.uniform(0, 2 * np.pi)), phase_rate=float(2 * np.pi * moving / (0.9 * h)),
                facing=direction, textures=R.instance_textures(cat, rng), view=member_view, look=look))
    return tuple(objs)


def _ground_colour(rng: np.random.Generator, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """float32[H, W, 3] ground: asphalt, paving or a photographed surface, with lane lines, a kerb or a crossing."""
    kind = str(rng.choice(["asphalt", "paving", "photo"], p=[0.45, 0.3, 0.25]))
    k = float(rng.uniform(40, 160))  # texture pixels per metre
    if kind == "asphalt":
        grey = float(rng.uniform(0.18, 0.5))
        tex = photos.tiled("gravel.png", gx * k, gy * k).mean(axis=-1, keepdims=True)
        ground = grey * (0.75 + 0.5 * tex) * (1 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)
    elif kind == "paving":
        tint = np.clip(rng.uniform(0.45, 1.0) * (1 + rng.uniform(-0.15, 0.15, 3)), 0, 1.2).astype(np.float32)
        ground = photos.tiled("brick.png", gx * k * 0.5, gy * k * 0.5).mean(axis=-1, keepdims=True) * tint
    else:
        name = str(rng.choice(photos.TEXTURES))
        tint = np.clip(rng.uniform(0.5, 1.1, 3), 0, 1).astype(np.float32)
        ground = photos.tiled(name, gx * k, gy * k) * tint
    ground = np.broadcast_to(ground, gx.shape + (3,)).astype(np.float32).copy()
    paint = np.array([0.9, 0.9, 0.88], np.float32) if rng.random() < 0.8 else np.array([0.9, 0.75, 0.2], np.float32)
    if rng.random() < 0.5:  # lane lines along the view
        lane = float(rng.uniform(2.8, 3.8))
        x0 = float(rng.uniform(0, lane))
        line = np.abs(((gx - x0) / lane + 0.5) % 1.0 - 0.5) * lane < 0.07
        if rng.random() < 0.5:
            line &= ((gy / 3.0) % 1.0) < 0.5
        ground[line] = 0.35 * ground[line] + 0.65 * paint
    if rng.random() < 0.25:  # pedestrian crossing
        y0 = float(rng.uniform(4, 20))
        zebra = (gy > y0) & (gy < y0 + 4.0) & (((gx / 1.0) % 1.0) < 0.5)
        ground[zebra] = 0.3 * ground[zebra] + 0.7 * paint
    if rng.random() < 0.5:  # a kerb and a pavement beyond it
        xk = float(rng.uniform(-8, 8)) * (1 if rng.random() < 0.5 else -1)
        side = (gx > xk) if xk > 0 else (gx < xk)
        pave = photos.tiled("brick.png", gx * k * 0.4, gy * k * 0.4).mean(axis=-1, keepdims=True) * rng.uniform(0.5, 0.9)
        ground = np.where(side[..., None], pave * (1 + rng.uniform(-0.1, 0.1, 3)), ground)
        kerb = np.abs(gx - xk) < 0.12
        ground[kerb] = ground[kerb] * 0.4 + 0.45
    return ground.astype(np.float32)


def _backdrop(rng: np.random.Generator, H: int, W: int, rays: np.ndarray) -> np.ndarray:
    """float32[H, W, 3] above the horizon: a photograph, a building facade with windows, or a sky."""
    kind = str(rng.choice(["photo", "facade", "sky"], p=[0.35, 0.45, 0.2]))
    if kind == "photo":
        return photos.random_patch(rng, H, W)
    sky_top = R.random_colour(rng, 0.45, 0.95)
    vert = np.clip(rays[..., 2] * 3, 0, 1)[..., None]
    sky = (np.clip(sky_top + 0.15, 0, 1) * (1 - vert) + sky_top * vert).astype(np.float32)
    if kind == "sky":
        return sky
    wall = photos.tiled(str(rng.choice(photos.TEXTURES)), *np.meshgrid(np.arange(W) * 1.5, np.arange(H) * 1.5))
    wall = wall.mean(axis=-1, keepdims=True) * rng.uniform(0.4, 1.0, 3).astype(np.float32)
    cw, ch = int(rng.integers(10, 40)), int(rng.integers(10, 30))
    yy, xx = np.mgrid[0:H, 0:W]
    win = ((xx % cw) > cw * 0.3) & ((yy % ch) > ch * 0.35)
    wall = np.where(win[..., None], np.float32(rng.uniform(0.05, 0.35)) * np.ones(3, np.float32), wall)
    roof = H * float(rng.uniform(0.0, 0.5))
    facade_rows = yy > roof + 10 * np.sin(xx / W * rng.uniform(1, 6))
    return np.where(facade_rows[..., None], wall, sky).astype(np.float32)


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
    ground = _ground_colour(rng, gx, gy)
    above = _backdrop(rng, H, W, rays)
    haze = (np.clip(dist / float(rng.uniform(40, 150)), 0, 1) * 0.8)[..., None]
    colour = np.where(down[..., None], ground * (1 - haze) + above.mean(axis=(0, 1)) * haze, above)
    ray_scale = np.linalg.norm(rays @ cam.R.T, axis=-1).astype(np.float32)
    return Background(colour.astype(np.float32), dist, ray_scale)


def sample_clutter(rng: np.random.Generator, cam: Camera, *, near: bool = False) -> tuple[ClutterItem, ...]:
    """0–9 pieces of street furniture on the visible ground; in one scene in four a row of 2–5 parked bicycles;
    now and then a fence or a pole right in front of the camera, hiding much of the scene behind it.  ``near``
    (close scenes): 1–3 more poles, bollards, bicycles, signals, signs, bins or fences 1.5–6 m away, as large in the
    frame as the near people."""
    items = [sample_item(rng, *_ground_sample(rng, cam, 1.0)) for _ in range(int(rng.integers(0, 10)))]
    if rng.random() < 0.25:
        x, y = _near_sample(rng, cam, (1.5, 8.0)) if near else _ground_sample(rng, cam, 0.8)
        step = float(rng.uniform(0.45, 0.8))
        items += [sample_item(rng, x + k * step, y + 0.01 * k, "bicycle") for k in range(int(rng.integers(2, 6)))]
    if rng.random() < 0.15:
        x, y = _ground_sample(rng, cam, 0.3)
        items.append(sample_item(rng, x, float(rng.uniform(1.2, 3.0)), str(rng.choice(["fence", "pole", "bollard"]))))
    if near:
        items += [sample_item(rng, *_near_sample(rng, cam, (1.5, 6.0)), str(rng.choice(_NEAR_CLUTTER)))
                  for _ in range(int(rng.integers(1, 4)))]
    return tuple(items)


def make_scene(rng: np.random.Generator, cfg: VideoConfig, regime: str) -> Scene:
    close = bool(rng.random() < _CLOSE_SHARE)
    cam = (make_camera_close if close else make_camera)(rng, cfg.width, cfg.height)
    bg = make_background(rng, cam)
    objs = sample_objects(rng, cam, regime, cfg, near=close)
    clutter = sample_clutter(rng, cam, near=close)
    fx = sample_fx(rng)
    shadow = (float(rng.uniform(-1.2, 1.2)), float(rng.uniform(0.2, 0.9)), float(rng.choice([0.0, rng.uniform(0.2, 0.5)])))
    return Scene(cam, objs, bg, regime, light_gain=float(rng.uniform(0.55, 1.2)), light_amp=float(rng.uniform(0, 0.12)),
                 light_freq=float(rng.uniform(0.5, 2.0)), light_phase=float(rng.uniform(0, 2 * np.pi)),
                 light_tilt=float(rng.uniform(-0.25, 0.25)), noise_seed=int(rng.integers(2**31)),
                 clutter=clutter, fx=fx, shadow=shadow)


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


def object_position(obj: SceneObject, t: float) -> np.ndarray:
    xy = obj.mid_xy + obj.velocity_xy * (t - obj.t_mid)
    return np.array([xy[0], xy[1], 0.0])


def _draw_object(colour: np.ndarray, obj: SceneObject, u_f: float, v_f: float, scale: float, t: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Paint one object (in place); (amodal bool[H, W], painted bool[H, W] incl. carried bags)."""
    H, W = colour.shape[:2]
    phase = obj.phase0 + obj.phase_rate * t
    if obj.category == "person" and obj.look is not None:
        pose = Pose(u_f, v_f - scale * obj.height_m, scale=scale * obj.height_m, flip=obj.facing < 0)
        body = draw_person(colour, obj.look, pose, obj.view, phase)  # type: ignore[arg-type]
        return body.amodal, body.painted
    if obj.category == "car" and obj.look is not None:
        pose = Pose(u_f, v_f, scale=scale, flip=obj.facing < 0)
        body = draw_parts(colour, vehicles.vehicle_parts(obj.look, obj.view, obj.width_m, obj.height_m), pose)  # type: ignore[arg-type]
        return body.amodal, body.painted
    x0, z0, x1, z1 = R.extent_m(obj.category, obj.height_m, obj.width_m)
    c0, c1 = max(int(np.floor(u_f + x0 * scale)), 0), min(int(np.ceil(u_f + x1 * scale)), W)
    r0, r1 = max(int(np.floor(v_f - z1 * scale)), 0), min(int(np.ceil(v_f - z0 * scale)), H)
    amodal = np.zeros((H, W), bool)
    if c0 >= c1 or r0 >= r1:
        return amodal, amodal
    yy, xx = np.mgrid[r0:r1, c0:c1]
    x_m = (xx + 0.5 - u_f) / scale
    z_m = (v_f - (yy + 0.5)) / scale
    parts = R.rasterise(R.shape_primitives(obj.category, obj.height_m, obj.width_m, phase, obj.facing), x_m, z_m)
    inside = parts >= 0
    paint = R.paint_parts(parts, x_m, z_m, obj.textures, obj.height_m)
    colour[r0:r1, c0:c1][inside] = paint[inside]
    amodal[r0:r1, c0:c1] = inside
    return amodal, amodal


def _cast_shadow(colour: np.ndarray, u_f: float, v_f: float, height_px: float, width_px: float,
                 shadow: tuple[float, float, float]) -> None:
    """Darken the ground under and beside an object (a soft contact shadow and, in sun, a sheared cast shadow)."""
    H, W = colour.shape[:2]
    shear, length, strength = shadow
    shapes = [Ellipse(0.0, 0.0, 0.6 * width_px + 1, 0.05 * height_px + 1)]
    dark = [0.35]
    if strength > 0:
        shapes.append(Capsule(0.0, 0.0, shear * height_px * length, -0.35 * length * height_px,
                              0.3 * width_px + 0.5, 0.25 * width_px + 0.5))
        dark.append(strength)
    pose = Pose(u_f, v_f)
    for shape, k in zip(shapes, dark):
        r = rasterise(shape, pose, H, W)
        if r is not None:
            colour[r.window] *= (1 - k * np.clip(0.5 - r.dist_px / 3.0, 0, 1))[..., None]


def _motion_blur(colour: np.ndarray, visible: np.ndarray, du: float, dv: float, exposure: float) -> None:
    """Blur one object's pixels along its image motion during the exposure (in place)."""
    length = float(np.hypot(du, dv)) * exposure
    if length < 1.0 or not visible.any():
        return
    pad = int(np.ceil(length)) + 1
    ys, xs = np.nonzero(visible)
    r0, r1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, colour.shape[0])
    c0, c1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, colour.shape[1])
    region = colour[r0:r1, c0:c1]
    blurred = line_blur(region, length, float(np.arctan2(dv, du)))
    alpha = line_blur(visible[r0:r1, c0:c1, None].astype(np.float32), length, float(np.arctan2(dv, du)))
    colour[r0:r1, c0:c1] = alpha * blurred + (1 - alpha) * region


def _frame_start(scene: Scene, t: int) -> tuple[np.ndarray, ...]:
    """What every style's frame ``t`` starts from: the objects' positions float[N, 3], their projected centres uv float[N, 2] and depths z
    float[N], the background's colour and depth (copies to draw on), no object ids (int16[H, W] of -1), empty amodal
    masks bool[N, H, W], and each object's depth for ordering (inf behind the near plane)."""
    cam = scene.camera
    N = len(scene.objects)
    positions = np.stack([object_position(o, t) for o in scene.objects]) if N else np.zeros((0, 3))
    uv, z = cam.project(positions) if N else (np.zeros((0, 2)), np.zeros(0))
    ids = np.full((cam.height, cam.width), -1, np.int16)
    amodal = np.zeros((N, cam.height, cam.width), bool)
    object_depth = np.where(z > _NEAR_M, z, np.inf)
    return (positions, uv, z, scene.background.colour.copy(), scene.background.depth_m.copy(), ids, amodal,
            object_depth)


def render_frame(scene: Scene, t: int, n_frames: int) -> FrameRender:
    """Frame ``t`` of ``scene`` with its exact ground truth (in the scene's style)."""
    if scene.style == "flat":
        return _render_frame_flat(scene, t, n_frames)
    cam = scene.camera
    W = cam.width
    N = len(scene.objects)
    positions, uv, z, colour, depth, ids, amodal, object_depth = _frame_start(scene, t)
    # sprites: (camera depth, order key, kind, index); clutter is static
    sprites = [(float(z[i]), i, "object") for i in range(N) if np.isfinite(object_depth[i])]
    if scene.clutter:
        c_pos = np.array([[c.x_m, c.y_m, 0.0] for c in scene.clutter])
        c_uv, c_z = cam.project(c_pos)
        sprites += [(float(c_z[k]), N + k, "clutter") for k in range(len(scene.clutter)) if c_z[k] > _NEAR_M]
    else:
        c_uv = np.zeros((0, 2))
    for zi, key, kind in sprites:
        if kind == "object":
            obj, (u_f, v_f) = scene.objects[key], uv[key]
            scale = cam.K[0, 0] / zi
            _cast_shadow(colour, u_f, v_f, obj.height_m * scale, obj.width_m * scale, scene.shadow)
    if scene.fx.background_blur_px > 0:
        colour = gaussian_blur(colour, scene.fx.background_blur_px)
    ray_scale = scene.background.ray_scale
    for zi, key, kind in sorted(sprites, key=lambda s: (-s[0], s[1])):
        scale = cam.K[0, 0] / zi  # pixels per metre
        if kind == "clutter":
            item = scene.clutter[key - N]
            u_f, v_f = c_uv[key - N]
            painted = draw_item(colour, item, Pose(u_f, v_f, scale=scale))
            ids[painted] = -1
            depth[painted] = zi * ray_scale[painted]
            continue
        u_f, v_f = uv[key]
        amo, painted = _draw_object(colour, scene.objects[key], u_f, v_f, scale, t)
        if not amo.any():
            continue
        amodal[key] = amo
        ids[painted & ~amo] = -1
        ids[amo] = key
        depth[amo] = zi * ray_scale[amo]
    if scene.fx.exposure_frames > 0 and N:
        nxt = np.stack([object_position(o, t + 1) for o in scene.objects])
        uv1, _ = cam.project(nxt)
        for i in range(N):
            if np.isfinite(object_depth[i]):
                _motion_blur(colour, ids == i, *(uv1[i] - uv[i]), scene.fx.exposure_frames)
    # Lighting: global gain with a slow flicker and a horizontal gradient that drifts over time.
    phase = 2 * np.pi * scene.light_freq * t / n_frames + scene.light_phase
    gain = scene.light_gain * (1 + scene.light_amp * np.sin(phase))
    xs_norm = (np.arange(W, dtype=np.float32) + 0.5) / W - 0.5
    tilt = 1 + scene.light_tilt * np.cos(phase) * xs_norm
    colour = colour * (gain * tilt)[None, :, None]
    colour = apply_lens_and_response(colour.astype(np.float32), scene.fx)
    noise_rng = np.random.default_rng([scene.noise_seed, t])
    colour = sensor_noise(colour, scene.fx, noise_rng) if scene.fx.noise_std > 0 else colour + noise_rng.normal(
        0, 0.01, colour.shape).astype(np.float32)
    rgb = np.clip(colour * 255 + 0.5, 0, 255).astype(np.uint8)
    rgb = h264_roundtrip(rgb, scene.fx.crf)
    return FrameRender(rgb, ids, amodal, depth, object_depth, positions)




# --------------------------------------------------------------------------------------------------
# The flat world (style "flat"): the first street world, kept byte for byte (the demo and the weights
# trained on it use it)
# --------------------------------------------------------------------------------------------------


def make_camera_flat(rng: np.random.Generator, width: int, height: int) -> Camera:
    """The flat world's camera: eye level to 3 m, pitched down 6-16°."""
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


def _sample_category_flat(rng: np.random.Generator) -> str:
    names = list(_CATEGORY_P_FLAT)
    return str(rng.choice(names, p=np.array(list(_CATEGORY_P_FLAT.values()))))


def sample_objects_flat(rng: np.random.Generator, cam: Camera, regime: str, cfg: VideoConfig) -> tuple[SceneObject, ...]:
    """Objects in groups that share a path (herds, groups of people walking together, queues of cars):
    light scenes are mostly singletons spread across the view, heavy ones a few tight groups crossing the
    centre, which is what makes occlusion persistent rather than a brief crossing."""
    n, spread, speed_scale = _regime_plan(rng, regime, cfg)
    group_max = {"light": 1, "medium": 2, "heavy": 4}[regime]
    T = cfg.frames
    objs: list[SceneObject] = []
    while len(objs) < n:
        size = min(int(rng.integers(1, group_max + 1)), n - len(objs))
        cat = _sample_category_flat(rng)
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
                cat = cat if rng.random() < 0.75 else _sample_category_flat(rng)
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


def make_background_flat(rng: np.random.Generator, cam: Camera) -> Background:
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


def make_scene_flat(rng: np.random.Generator, cfg: VideoConfig, regime: str) -> Scene:
    cam = make_camera_flat(rng, cfg.width, cfg.height)
    bg = make_background_flat(rng, cam)
    objs = sample_objects_flat(rng, cam, regime, cfg)
    return Scene(cam, objs, bg, regime, light_gain=float(rng.uniform(0.8, 1.15)), light_amp=float(rng.uniform(0, 0.12)),
                 light_freq=float(rng.uniform(0.5, 2.0)), light_phase=float(rng.uniform(0, 2 * np.pi)),
                 light_tilt=float(rng.uniform(-0.25, 0.25)), noise_seed=int(rng.integers(2**31)), style="flat")


def _render_frame_flat(scene: Scene, t: int, n_frames: int) -> FrameRender:
    """A frame of the flat world: primitive sprites, contact shadows, lighting and faint noise."""
    cam = scene.camera
    H, W = cam.height, cam.width
    positions, uv, z, colour, depth, ids, amodal, object_depth = _frame_start(scene, t)
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
    from a seed-dependent start, so every few videos span all three); style ``mixed`` draws the camera style for
    three videos in four (from (seed, index)), the flat style for the rest."""
    offset = int(np.random.default_rng([seed, 0x5EED]).integers(3))
    regime = REGIMES[(index + offset) % 3]
    style = cfg.style
    if style == "mixed":
        style = "camera" if np.random.default_rng([seed, index, 0x57]).random() < _CAMERA_SHARE else "flat"
    make = make_scene if style == "camera" else make_scene_flat
    return make(np.random.default_rng([seed, index]), cfg, regime)
