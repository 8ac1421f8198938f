"""Persons for ReID (Market-1501 / Occluded-Duke-like): identities seen by several cameras, with occluders.

Each identity has a fixed appearance (clothes, patterns, hair, skin, shoes, proportions, bag); each camera
has its own background scene, photometry (gain, colour cast, gamma, blur, noise, JPEG quality) and
viewpoint statistics (front / back / side).  Occluders (cars, pillars/poles, other people, bags, boxes)
hide a sampled 20–60 % of the person's full silhouette in many images.  Looks ``street``: the people of the
camera-style street world (``amodal.world.street.street_identity``: faces, one in five in a dark suit) in front
of real photographs (``amodal.world.photos``), for re-id on what the street-trained detectors find.

Layout written (Market-1501, readable unchanged by Market/Duke loaders):
  ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with ``PPPP_cCsS_FFFFFF_NN.jpg``
  (pid 4 digits, ``-1`` for junk, ``0000`` for distractors); ``parsing/<name>.png`` (uint8 labels:
  0 background, 1 head, 2 upper, 3 lower, 4 shoes; occluded body pixels are 0);
  ``persons_meta.json`` (per image: pid, camera, view, occluder, occluded fraction);
  ``amodal_dataset.json`` (marker).  Style ``occluded-duke`` (default): every query is occluded, the gallery
  mixes occluded and clear images; style ``market``: queries are occluded like the gallery.
Train and test identities are disjoint.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from amodal.errors import ConfigError
from amodal.training.data.synth.contact import save_grid
from amodal.world.persons_body import VIEWS, Identity, draw_person, sample_identity
from amodal.world.photos import random_patch
from amodal.world.street import street_identity
from amodal.world.shapes2d import Box, Ellipse, Pose, Shape, rasterise

GENERATOR_VERSION = 1
MARKER = "amodal_dataset.json"
META = "persons_meta.json"
OCCLUDERS: tuple[str, ...] = ("car", "pillar", "person", "bag", "boxes")
LOOKS: tuple[str, ...] = ("plain", "street")
PARSING_COLOURS = np.array([[0, 0, 0], [255, 200, 0], [220, 40, 40], [40, 90, 230], [40, 200, 80]], dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class PersonsConfig:
    height: int = 128
    width: int = 64
    cameras: int = 6
    cameras_per_id_min: int = 2
    cameras_per_id_max: int = 4
    images_per_camera_min: int = 1
    images_per_camera_max: int = 3
    train_fraction: float = 0.5
    occluded_fraction: float = 0.4  # train / gallery images with an occluder
    occlusion_min: float = 0.2  # fraction of the full body silhouette hidden
    occlusion_max: float = 0.6
    distractor_fraction: float = 0.1  # pid 0 images added to the gallery, relative to its size
    junk_fraction: float = 0.05  # pid -1 images added to the gallery
    style: str = "occluded-duke"
    jpeg_quality_min: int = 75
    looks: str = "plain"

    def __post_init__(self) -> None:
        if not (32 <= self.height <= 1024 and 16 <= self.width <= 512):
            raise ConfigError(f"image size must be within 32..1024 x 16..512 (HxW), got {self.height}x{self.width}")
        if not 2 <= self.cameras <= 9:
            raise ConfigError(f"--cameras must be in 2..9 (file names hold one digit), got {self.cameras}")
        if not 2 <= self.cameras_per_id_min <= self.cameras_per_id_max:
            raise ConfigError(
                f"need 2 <= cameras-per-id-min <= cameras-per-id-max, got {self.cameras_per_id_min}, "
                f"{self.cameras_per_id_max}"
            )
        if not 1 <= self.images_per_camera_min <= self.images_per_camera_max:
            raise ConfigError(
                f"need 1 <= images-per-camera-min <= images-per-camera-max, got {self.images_per_camera_min}, "
                f"{self.images_per_camera_max}"
            )
        if not 0.0 < self.train_fraction < 1.0:
            raise ConfigError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if not 0.0 <= self.occlusion_min <= self.occlusion_max < 1.0:
            raise ConfigError(f"need 0 <= occlusion-min <= occlusion-max < 1, got {self.occlusion_min}, {self.occlusion_max}")
        for name in ("occluded_fraction", "distractor_fraction", "junk_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.style not in ("occluded-duke", "market"):
            raise ConfigError(f"--style must be occluded-duke or market, got {self.style!r}")
        if self.looks not in LOOKS:
            raise ConfigError(f"--looks must be one of {LOOKS}, got {self.looks!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PersonsConfig()
    parser.add_argument("--height", type=int, default=d.height, help="image height (real ReID uses 256)")
    parser.add_argument("--width", type=int, default=d.width, help="image width (real ReID uses 128)")
    parser.add_argument("--cameras", type=int, default=d.cameras, help="number of cameras (2..9)")
    parser.add_argument("--cameras-per-id-min", type=int, default=d.cameras_per_id_min)
    parser.add_argument("--cameras-per-id-max", type=int, default=d.cameras_per_id_max)
    parser.add_argument("--images-per-camera-min", type=int, default=d.images_per_camera_min)
    parser.add_argument("--images-per-camera-max", type=int, default=d.images_per_camera_max)
    parser.add_argument("--occluded-fraction", type=float, default=d.occluded_fraction,
                        help="fraction of train/gallery images with an occluder")  # fmt: skip
    parser.add_argument("--occlusion-min", type=float, default=d.occlusion_min, help="least hidden body fraction")
    parser.add_argument("--occlusion-max", type=float, default=d.occlusion_max, help="most hidden body fraction")
    parser.add_argument("--style", choices=("occluded-duke", "market"), default=d.style)
    parser.add_argument("--looks", choices=LOOKS, default=d.looks,
                        help="street: the street world's people (faces, one in five in a dark suit) in front of "
                             "real photographs, as the camera-style street world renders them")


def config_from_args(args: argparse.Namespace) -> PersonsConfig:
    return PersonsConfig(
        height=args.height,
        width=args.width,
        cameras=args.cameras,
        cameras_per_id_min=args.cameras_per_id_min,
        cameras_per_id_max=min(args.cameras_per_id_max, args.cameras),
        images_per_camera_min=args.images_per_camera_min,
        images_per_camera_max=args.images_per_camera_max,
        occluded_fraction=args.occluded_fraction,
        occlusion_min=args.occlusion_min,
        occlusion_max=args.occlusion_max,
        style=args.style,
        looks=args.looks,
    )


# ----------------------------------------------------------------------------------------------- cameras
@dataclass(frozen=True, slots=True, eq=False)
class Camera:
    index: int  # 1-based, as in file names
    background: np.ndarray  # float32[Hb, Wb, 3] scene the crops come from
    gain: float
    cast: np.ndarray  # float[3] per-channel multipliers
    gamma: float
    blur_sigma_px: float
    noise_sigma: float  # in [0, 1] intensity units
    jpeg_quality: int
    view_probs: np.ndarray  # float[3] over VIEWS


def make_camera(rng: np.random.Generator, index: int, cfg: PersonsConfig) -> Camera:
    h, w = cfg.height, cfg.width
    hb, wb = int(h * 1.4), w * 4
    wall = rng.uniform(0.3, 0.8) * (1.0 + rng.uniform(-0.15, 0.15, 3))  # muted urban tones
    floor = rng.uniform(0.2, 0.55) * (1.0 + rng.uniform(-0.08, 0.08, 3))
    horizon = int(hb * rng.uniform(0.45, 0.75))
    bg = np.empty((hb, wb, 3), dtype=np.float32)
    bg[:horizon] = wall
    bg[horizon:] = floor
    for _ in range(int(rng.integers(3, 9))):  # windows, doors, shop signs, trees
        x0, y0 = int(rng.integers(0, wb)), int(rng.integers(0, max(horizon - 4, 1)))
        bw, bh = int(rng.integers(w // 6, w)), int(rng.integers(h // 10, h // 2))
        colourful = rng.random() < 0.3  # a shop sign or poster; otherwise windows and doors
        tone = rng.uniform(0.05, 0.95, 3) if colourful else rng.uniform(0.1, 0.7) * (1.0 + rng.uniform(-0.1, 0.1, 3))
        bg[y0 : min(y0 + bh, horizon), x0 : x0 + bw] = tone
    spacing = rng.uniform(0.05, 0.12) * h
    y = float(horizon)
    while y < hb:  # floor tiles / kerb lines, widening towards the camera
        bg[int(y) : int(y) + 1] *= 0.8
        spacing *= 1.25
        y += spacing
    yy, xx = np.mgrid[0:hb, 0:wb]
    bg *= (1.0 + 0.15 * np.sin(xx / wb * rng.uniform(2, 8) + rng.uniform(0, 6)) * np.cos(yy / hb * 3))[..., None]
    if cfg.looks == "street":  # a photograph above the horizon: shop fronts, walls, posters
        photo = random_patch(rng, horizon, wb)
        bg[:horizon] = 0.35 * bg[:horizon] + 0.65 * photo
    bg = ndimage.gaussian_filter(bg, (1.0, 1.0, 0))
    views = rng.dirichlet(np.ones(3) * 1.5)
    return Camera(
        index=index,
        background=np.clip(bg, 0, 1).astype(np.float32),
        gain=float(rng.uniform(0.8, 1.2)),
        cast=rng.uniform(0.9, 1.1, 3),
        gamma=float(rng.uniform(0.85, 1.15)),
        blur_sigma_px=float(rng.uniform(0.0, 0.9)) * h / 128,
        noise_sigma=float(rng.uniform(0.005, 0.03)),
        jpeg_quality=int(rng.integers(cfg.jpeg_quality_min, 96)),
        view_probs=views,
    )


# --------------------------------------------------------------------------------------------- occluders
@dataclass(frozen=True, slots=True)
class OccluderSpec:
    """One occluder's fixed randomness; ``shapes(s)`` places it with extent parameter s ∈ [0, 1]."""

    kind: str
    colour: tuple[float, float, float]
    side: float  # −1 left / +1 right
    param: float  # free shape parameter in [0, 1]
    other: Identity | None
    other_view: str

    def shapes(self, s: float, h: int, w: int) -> list[tuple[Shape, tuple[float, float, float]]]:
        col = self.colour
        if self.kind == "car":
            top = h * (1.0 - 0.95 * s)
            cx = w / 2 + self.side * w * 0.3 * self.param
            glass = (0.15, 0.2, 0.28)
            return [
                (Box(cx, top + h, 1.2 * w, h, radius=0.15 * w), col),
                (Box(cx - self.side * 0.2 * w, top + 0.12 * h, 0.5 * w, 0.06 * h, radius=0.03 * w), glass),
                (Ellipse(cx + 0.6 * w, top + 0.45 * h, 0.2 * w, 0.2 * w), (0.05, 0.05, 0.05)),
                (Ellipse(cx - 0.6 * w, top + 0.45 * h, 0.2 * w, 0.2 * w), (0.05, 0.05, 0.05)),
            ]
        if self.kind == "pillar":
            inner = -0.05 * w + s * 0.95 * w
            edge = inner if self.side < 0 else w - inner
            hw = abs(edge - (-w if self.side < 0 else 2 * w)) / 2
            cx = (edge + (-w if self.side < 0 else 2 * w)) / 2
            return [(Box(cx, h / 2, hw, h, radius=0.0), col), (Box(edge + self.side * 1.5, h / 2, 1.5, h), tuple(0.7 * c for c in col))]
        if self.kind == "bag":
            cx = w * (0.3 + 0.4 * self.param)
            top = h * (1.0 - 0.75 * s)
            return [
                (Box(cx, (top + h) / 2 + 2, 0.35 * w, (h - top) / 2 + 2, radius=0.06 * w), col),
                (Box(cx, top - 0.04 * h, 0.12 * w, 0.04 * h, radius=0.02 * w), tuple(0.5 * c for c in col)),
            ]
        if self.kind == "boxes":
            cx = w / 2 + self.side * w * (0.1 + 0.3 * self.param)
            top = h * (1.0 - 0.8 * s)
            mid = (top + h) / 2
            return [
                (Box(cx, (mid + h) / 2 + 1, 0.42 * w, (h - mid) / 2 + 1), col),
                (Box(cx + 0.05 * w * self.side, (top + mid) / 2, 0.36 * w, (mid - top) / 2), tuple(0.85 * c for c in col)),
                (Box(cx, mid, 0.42 * w, 0.6), tuple(0.6 * c for c in col)),
            ]
        raise ValueError(f"no shapes for occluder kind {self.kind!r}")

    def person_pose(self, s: float, h: int, w: int) -> Pose:
        scale = h * (1.1 + 0.2 * self.param)
        cx = w / 2 + self.side * w * (1.15 - 0.95 * s)
        return Pose(cx, h * (0.02 + 0.05 * self.param), 0.0, scale, self.side > 0)


def occluder_layer(spec: OccluderSpec, s: float, h: int, w: int, paint: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(bool[H, W] occluder pixels, float32[H, W, 4] RGBA layer or None) for extent ``s``."""
    canvas = np.zeros((h, w, 3), dtype=np.float32)
    alpha = np.zeros((h, w), dtype=np.float32)
    inside = np.zeros((h, w), dtype=bool)
    if spec.kind == "person":
        if spec.other is None:
            raise ValueError("a person occluder needs an identity")
        body = draw_person(canvas, spec.other, spec.person_pose(s, h, w), spec.other_view, spec.param * 6.28)
        inside = body.amodal
        alpha = ndimage.gaussian_filter(inside.astype(np.float32), 0.5)
        alpha = np.maximum(alpha, inside.astype(np.float32))
    else:
        for shape, colour in spec.shapes(s, h, w):
            r = rasterise(shape, Pose(0.0, 0.0), h, w)
            if r is None:
                continue
            win = r.window
            cov = r.coverage()
            inside[win] |= r.inside()
            if paint:
                canvas[win] = (1 - cov[..., None]) * canvas[win] + cov[..., None] * np.asarray(colour)
                alpha[win] = np.maximum(alpha[win], cov)
    if not paint:
        return inside, None
    return inside, np.concatenate([canvas, alpha[..., None]], axis=2)


def fit_occluder(
    spec: OccluderSpec, body: np.ndarray, target: float, h: int, w: int, iters: int = 12
) -> tuple[float, float]:
    """Bisection on the extent s so that the hidden fraction of ``body`` ≈ target; returns (s, fraction)."""
    area = max(int(body.sum()), 1)

    def frac(s: float) -> float:
        return float((occluder_layer(spec, s, h, w, paint=False)[0] & body).sum()) / area

    lo, hi = 0.0, 1.0
    f_hi = frac(hi)
    if f_hi < target:
        return hi, f_hi
    best = (hi, f_hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = frac(mid)
        if abs(f - target) < abs(best[1] - target):
            best = (mid, f)
        if f < target:
            lo = mid
        else:
            hi = mid
    return best


def sample_occluder(rng: np.random.Generator, ident_pool: list[Identity]) -> OccluderSpec:
    kind = str(rng.choice(OCCLUDERS, p=[0.25, 0.2, 0.25, 0.15, 0.15]))
    palette = {
        "car": rng.uniform(0.1, 0.9, 3),
        "pillar": np.full(3, rng.uniform(0.35, 0.75)) * rng.uniform(0.9, 1.1, 3),
        "bag": rng.uniform(0.05, 0.6, 3),
        "boxes": np.array([0.62, 0.46, 0.28]) * rng.uniform(0.8, 1.15),
        "person": np.zeros(3),
    }
    other = ident_pool[int(rng.integers(len(ident_pool)))] if kind == "person" else None
    return OccluderSpec(
        kind=kind,
        colour=tuple(float(c) for c in np.clip(palette[kind], 0, 1)),  # type: ignore[arg-type]
        side=float(rng.choice([-1.0, 1.0])),
        param=float(rng.uniform(0, 1)),
        other=other,
        other_view=str(rng.choice(VIEWS)),
    )


# ----------------------------------------------------------------------------------------------- images
@dataclass(frozen=True, slots=True, eq=False)
class PersonImage:
    rgb: np.ndarray  # uint8[H, W, 3]
    parsing: np.ndarray  # uint8[H, W] in 0..4
    meta: dict


def render_person_image(
    rng: np.random.Generator,
    ident: Identity,
    camera: Camera,
    cfg: PersonsConfig,
    occlude: bool,
    ident_pool: list[Identity],
    fragment: bool = False,
) -> PersonImage:
    """One detection crop of ``ident`` seen by ``camera``; ``fragment`` renders a junk crop (a body part)."""
    h, w = cfg.height, cfg.width
    bg = camera.background
    y0 = int(rng.integers(0, bg.shape[0] - h + 1))
    x0 = int(rng.integers(0, bg.shape[1] - w + 1))
    canvas = bg[y0 : y0 + h, x0 : x0 + w].copy() * float(rng.uniform(0.9, 1.1))
    view = VIEWS[int(rng.choice(3, p=camera.view_probs))]
    phase = float(rng.uniform(0, 2 * math.pi))
    if fragment:
        scale = h * rng.uniform(1.8, 3.0)
        top = -rng.uniform(0.1, 0.8) * scale
    else:
        scale = h * min(ident.height_scale * rng.uniform(0.95, 1.03), 0.99)
        top = rng.uniform(0.005, max(h - scale, 0.01 * h) - 0.004 * h)
    pose = Pose(w / 2 + rng.uniform(-0.07, 0.07) * w, top, rng.uniform(-0.03, 0.03), scale, bool(rng.random() < 0.5))
    body = draw_person(canvas, ident, pose, view, phase)
    labels = body.labels.copy()
    meta = {"view": view, "occluder": None, "occluded_fraction": 0.0}
    if occlude and body.amodal.any():
        target = float(rng.uniform(cfg.occlusion_min, cfg.occlusion_max))
        best = None
        for _ in range(6):  # a kind that cannot reach the target (a thin pole) is replaced by another
            spec = sample_occluder(rng, ident_pool)
            s, f = fit_occluder(spec, body.amodal, target, h, w)
            if best is None or abs(f - target) < abs(best[2] - target):
                best = (spec, s, f)
            if cfg.occlusion_min <= f <= cfg.occlusion_max:
                break
        spec, s, f = best
        inside, layer = occluder_layer(spec, s, h, w, paint=True)
        a = layer[..., 3:4]
        canvas = (1 - a) * canvas + a * layer[..., :3]
        labels[inside] = 0
        meta.update(occluder=spec.kind, occluded_fraction=round(float((inside & body.amodal).sum()) / max(int(body.amodal.sum()), 1), 4))
    # camera photometry: gain, colour cast, gamma, optics blur, sensor noise
    img = np.clip(canvas * camera.gain * camera.cast, 0, 1) ** camera.gamma
    if camera.blur_sigma_px > 0.05:
        img = ndimage.gaussian_filter(img, (camera.blur_sigma_px, camera.blur_sigma_px, 0))
    img = img + camera.noise_sigma * rng.standard_normal(img.shape)
    rgb = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    meta["body_fraction_of_image"] = round(float(body.amodal.mean()), 4)
    return PersonImage(rgb, labels, meta)


def market_name(pid: int, camera: int, seq: int, frame: int, box: int) -> str:
    """Market-1501 file name ``PPPP_cCsS_FFFFFF_NN.jpg`` (``-1`` for junk)."""
    pid_text = "-1" if pid < 0 else f"{pid:04d}"
    return f"{pid_text}_c{camera}s{seq}_{frame:06d}_{box:02d}.jpg"


# ----------------------------------------------------------------------------------------------- dataset
def _plan(rng: np.random.Generator, n: int, cfg: PersonsConfig) -> list[tuple[int, int, int]]:
    """Per identity: (pid, camera, count) visits, each identity in ≥ cameras_per_id_min cameras."""
    visits = []
    for pid in range(1, n + 1):
        k = int(rng.integers(cfg.cameras_per_id_min, min(cfg.cameras_per_id_max, cfg.cameras) + 1))
        for cam in sorted(rng.choice(np.arange(1, cfg.cameras + 1), size=k, replace=False).tolist()):
            visits.append((pid, int(cam), int(rng.integers(cfg.images_per_camera_min, cfg.images_per_camera_max + 1))))
    return visits


def generate(out_dir: Path, n: int, seed: int, args: argparse.Namespace) -> dict:
    """Write ``n`` identities (split train/test) in Market-1501 layout; deterministic per seed."""
    cfg = config_from_args(args)
    if n < 2:
        raise ConfigError(f"persons needs n >= 2 identities (train and test are disjoint), got {n}")
    out_dir = Path(out_dir)
    folders = {"train": out_dir / "bounding_box_train", "query": out_dir / "query", "gallery": out_dir / "bounding_box_test"}
    for folder in (*folders.values(), out_dir / "parsing"):
        folder.mkdir(parents=True, exist_ok=True)
    plan_rng = np.random.default_rng([seed, 0])
    cameras = {c: make_camera(np.random.default_rng([seed, 1, c]), c, cfg) for c in range(1, cfg.cameras + 1)}
    look = street_identity if cfg.looks == "street" else sample_identity
    identities = {pid: look(np.random.default_rng([seed, 2, pid])) for pid in range(1, n + 1)}
    strangers = [look(np.random.default_rng([seed, 3, k])) for k in range(max(8, n // 4))]
    order = plan_rng.permutation(np.arange(1, n + 1)).tolist()
    n_train = min(max(1, round(n * cfg.train_fraction)), n - 1)
    train_ids = set(order[:n_train])
    visits = _plan(plan_rng, n, cfg)
    query_cam = {pid: int(plan_rng.choice([c for p, c, _ in visits if p == pid])) for pid in identities if pid not in train_ids}

    jobs: list[tuple[str, int, int, bool]] = []  # (folder, pid, camera, is_query)
    for pid, cam, count in visits:
        for j in range(count):
            if pid in train_ids:
                jobs.append(("train", pid, cam, False))
            elif cam == query_cam[pid] and j == 0:
                jobs.append(("query", pid, cam, True))
            else:
                jobs.append(("gallery", pid, cam, False))
    n_gallery = sum(1 for j in jobs if j[0] == "gallery")
    n_distractors = int(round(cfg.distractor_fraction * n_gallery))
    n_junk = int(round(cfg.junk_fraction * n_gallery))
    for _ in range(n_distractors):
        jobs.append(("gallery", 0, int(plan_rng.integers(1, cfg.cameras + 1)), False))
    for _ in range(n_junk):
        jobs.append(("gallery", -1, int(plan_rng.integers(1, cfg.cameras + 1)), False))

    meta: dict[str, dict] = {}
    counts = {"train": 0, "query": 0, "gallery": 0}
    start = time.perf_counter()
    for index, (folder, pid, cam, is_query) in enumerate(tqdm(jobs, desc="synth persons", unit="img", file=sys.stderr)):
        rng = np.random.default_rng([seed, 4, index])
        if pid > 0:
            ident = identities[pid]
        else:
            ident = strangers[int(rng.integers(len(strangers)))] if pid == 0 else look(rng)
        if is_query and cfg.style == "occluded-duke":
            occlude = True
        else:
            occlude = pid >= 0 and bool(rng.random() < cfg.occluded_fraction)
        pool = [identities[p] for p in identities if p != pid][:16] + strangers
        img = render_person_image(rng, ident, cameras[cam], cfg, occlude, pool, fragment=pid < 0)
        name = market_name(pid, cam, int(rng.integers(1, 7)), 1 + 25 * index + int(rng.integers(0, 25)), 1 + int(rng.integers(0, 8)))
        Image.fromarray(img.rgb).save(folders[folder] / name, quality=cameras[cam].jpeg_quality)
        Image.fromarray(img.parsing).save(out_dir / "parsing" / (Path(name).stem + ".png"))
        meta[name] = {"folder": folders[folder].name, "pid": pid, "camera": cam, **img.meta}
        counts[folder] += 1
    elapsed = time.perf_counter() - start
    (out_dir / META).write_text(json.dumps({"images": meta}, indent=0))
    (out_dir / MARKER).write_text(
        json.dumps(
            {"kind": "persons", "seed": seed, "n": n, "generator_version": GENERATOR_VERSION, "style": cfg.style,
             "looks": cfg.looks, "format": "market1501", "height": cfg.height, "width": cfg.width, "cameras": cfg.cameras,
             "train_ids": len(train_ids), "test_ids": n - len(train_ids), "images": counts,
             "parsing_labels": {"0": "background", "1": "head", "2": "upper", "3": "lower", "4": "shoes"}},  # fmt: skip
            indent=1,
        )
    )
    occluded = [m for m in meta.values() if m["occluder"]]
    return {
        "identities": n,
        "train_ids": len(train_ids),
        "test_ids": n - len(train_ids),
        "images": counts,
        "distractors": n_distractors,
        "junk": n_junk,
        "occluded_images": len(occluded),
        "mean_occluded_fraction": round(float(np.mean([m["occluded_fraction"] for m in occluded])), 3) if occluded else 0.0,
        "images_per_s": round(len(jobs) / max(elapsed, 1e-9), 1),
    }


def contact_sheet(dataset_dir: Path, out_png: Path, max_items: int) -> Path:
    """Query images next to gallery images of the same identity, each with its parsing map."""
    from amodal.training.data.market import load_reid_dataset

    data = load_reid_dataset(Path(dataset_dir))
    chosen = []
    for q in data.query:
        if len(chosen) >= max_items:
            break
        chosen.append(q)
        for g in data.gallery:
            if g.pid == q.pid and g.camid != q.camid and len(chosen) < max_items:
                chosen.append(g)
                break
    chosen += [t for t in data.train[: max(0, max_items - len(chosen))]]
    if not chosen:
        raise ConfigError(f"{dataset_dir}: no images to show")
    tiles, labels = [], []
    for item in chosen:
        rgb = np.asarray(Image.open(item.path).convert("RGB"))
        parsing = np.asarray(Image.open(item.parsing_path)) if item.parsing_path else np.zeros(rgb.shape[:2], np.uint8)
        tiles.append(np.concatenate([rgb, PARSING_COLOURS[np.clip(parsing, 0, 4)]], axis=1))
        labels.append(f"{item.path.parent.name[:5]} {Path(item.path).stem[:7]}")
    return save_grid(tiles, labels, out_png)
