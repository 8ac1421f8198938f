"""Street furniture of the street world: poles, signs, bollards, trees, fences, benches, bins, poster boards,
parked bicycles and traffic signals (thin, upright and person-sized: the hard negatives a person detector must learn),
standing on the ground like the objects but belonging to no object (their pixels are background in every mask,
and they hide the objects behind them).  Parts are in metres (u right, v down, foot point at (0, 0)); some are
painted with the shipped photographs (tree crowns with grass, posters with pictures)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from amodal.world import photos
from amodal.world.shapes2d import Box, Capsule, Ellipse, Pose, Ring, Shape, rasterise

KINDS = ("pole", "sign", "bollard", "tree", "fence", "bench", "bin", "board", "bicycle", "signal")
_P = (0.13, 0.1, 0.13, 0.1, 0.11, 0.06, 0.08, 0.09, 0.12, 0.08)


@dataclass(frozen=True, slots=True)
class ClutterItem:
    """One static item: kind, ground foot point (x, y) in metres, size, colours, a photograph seed."""

    kind: str
    x_m: float
    y_m: float
    height_m: float
    width_m: float
    colour: tuple[float, float, float]
    accent: tuple[float, float, float]
    photo_seed: int

    def half_extent_m(self) -> float:
        return 0.5 * self.width_m + 0.1


def sample_item(rng: np.random.Generator, x_m: float, y_m: float, kind: str | None = None) -> ClutterItem:
    kind = kind or str(rng.choice(KINDS, p=np.asarray(_P) / sum(_P)))
    size = {"pole": (rng.uniform(3.0, 6.0), rng.uniform(0.06, 0.14)), "sign": (rng.uniform(2.2, 3.0), rng.uniform(0.5, 0.9)),
            "bollard": (rng.uniform(0.7, 1.1), rng.uniform(0.12, 0.25)), "tree": (rng.uniform(3.0, 7.0), rng.uniform(1.5, 3.5)),
            "fence": (rng.uniform(0.9, 1.3), rng.uniform(3.0, 12.0)), "bench": (rng.uniform(0.8, 1.0), rng.uniform(1.4, 2.2)),
            "bin": (rng.uniform(0.8, 1.2), rng.uniform(0.4, 0.7)), "board": (rng.uniform(1.6, 2.6), rng.uniform(0.9, 1.6)),
            "bicycle": (rng.uniform(0.9, 1.1), rng.uniform(1.5, 1.8)), "signal": (rng.uniform(2.6, 4.2), rng.uniform(0.08, 0.14))}[kind]  # fmt: skip
    dark = rng.uniform(0.05, 0.45) * np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.05, 0.05, 3)
    return ClutterItem(kind, float(x_m), float(y_m), float(size[0]), float(size[1]),
                       tuple(float(c) for c in np.clip(dark, 0, 1)),  # type: ignore[arg-type]
                       tuple(float(c) for c in rng.uniform(0.1, 0.95, 3)),  # type: ignore[arg-type]
                       int(rng.integers(2**31)))


Painter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _solid(c) -> Painter:
    col = np.asarray(c, np.float32)
    return lambda u, v: np.broadcast_to(col, np.shape(u) + (3,))


def _parts(item: ClutterItem) -> list[tuple[Shape, Painter]]:
    h, w, c, a = item.height_m, item.width_m, item.colour, item.accent
    rng = np.random.default_rng(item.photo_seed)
    if item.kind == "pole":
        return [(Box(0.0, -h / 2, w / 2, h / 2), _solid(c))]
    if item.kind == "sign":
        plate = Box(0.0, -h + 0.35 * w, w / 2, 0.35 * w, radius=0.02)
        return [(Box(0.0, -h / 2, 0.035, h / 2), _solid(c)), (plate, _solid(a))]
    if item.kind == "bollard":
        return [(Box(0.0, -h / 2, w / 2, h / 2 - w / 4, radius=0.02), _solid(c)), (Ellipse(0.0, -h + w / 2, w / 2, w / 2), _solid(c))]
    if item.kind == "tree":
        tint = np.array([0.5, 0.8, 0.45], np.float32) * rng.uniform(0.5, 1.1)
        k = float(rng.uniform(40, 120))  # texture pixels per metre
        name = str(rng.choice(["grass.png", "gravel.png"]))
        crown = Ellipse(0.0, -h + w * 0.45, w / 2, w * 0.45)
        return [(Box(0.0, -(h - w * 0.6) / 2, 0.1 + 0.02 * h, (h - w * 0.6) / 2), _solid((0.25, 0.18, 0.12))),
                (crown, lambda u, v: photos.tiled(name, u * k, v * k) * tint)]
    if item.kind == "fence":
        parts: list[tuple[Shape, Painter]] = [(Box(0.0, -h + 0.04, w / 2, 0.04), _solid(c)), (Box(0.0, -0.12, w / 2, 0.03), _solid(c))]
        n = max(1, int(round(w / 1.4)))
        xs = np.linspace(-w / 2, w / 2, n + 1)
        for x0, x1 in zip(xs[:-1], xs[1:]):
            parts.append((Capsule(x0, -0.1, x1, -h + 0.05, 0.03, 0.03), _solid(c)))
            parts.append((Capsule(x0, -h + 0.05, x1, -0.1, 0.03, 0.03), _solid(c)))
        for x in xs:
            parts.append((Box(float(x), -h / 2, 0.04, h / 2), _solid(c)))
        return parts
    if item.kind == "bench":
        return [(Box(0.0, -0.45, w / 2, 0.04), _solid(a)), (Box(0.0, -0.7, w / 2, 0.12), _solid(a)),
                (Box(-0.4 * w, -0.22, 0.03, 0.22), _solid(c)), (Box(0.4 * w, -0.22, 0.03, 0.22), _solid(c))]
    if item.kind == "bicycle":
        return _bicycle(h, w, c, a, rng)
    if item.kind == "signal":
        head = Box(0.0, -h + 0.45, 0.14, 0.45, radius=0.03)
        lit = int(rng.integers(3))  # red, amber or green: that lamp bright, the others dim
        dim = ((0.6, 0.1, 0.08), (0.55, 0.45, 0.05), (0.1, 0.5, 0.2))
        bright = ((1.0, 0.25, 0.2), (1.0, 0.8, 0.2), (0.3, 1.0, 0.5))
        lamps = [(Ellipse(0.0, -h + 0.15 + 0.3 * k, 0.08, 0.08), _solid(bright[k] if k == lit else dim[k]))
                 for k in range(3)]
        return [(Box(0.0, -h / 2, w / 2, h / 2), _solid(c)), (head, _solid((0.08, 0.08, 0.08))), *lamps]
    if item.kind == "bin":
        return [(Box(0.0, -h / 2, w / 2, h / 2, radius=0.05), _solid(a)), (Box(0.0, -h, w / 2 + 0.02, 0.04), _solid(c))]
    # board: a poster on two legs, the poster a random photograph
    patch_seed = int(rng.integers(2**31))
    board = Box(0.0, -h + 0.45 * w, w / 2, 0.45 * w)

    def poster(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        p = photos.random_patch(np.random.default_rng(patch_seed), 64, 64)
        iu = np.clip(((u + w / 2) / w * 64).astype(np.int64), 0, 63)
        iv = np.clip(((v - (-h)) / (0.9 * w) * 64).astype(np.int64), 0, 63)
        return p[iv, iu]

    return [(Box(-0.4 * w, -h / 2, 0.03, h / 2), _solid(c)), (Box(0.4 * w, -h / 2, 0.03, h / 2), _solid(c)),
            (Box(0.0, -h + 0.45 * w, w / 2 + 0.03, 0.45 * w + 0.03), _solid(c)), (board, poster)]


def _bicycle(h: float, length: float, frame, saddle, rng: np.random.Generator) -> list[tuple[Shape, Painter]]:
    """A parked bicycle seen from the side, facing left or right: two spoked wheels, a diamond frame, saddle and
    handlebar; wheel radius from the height (h ≈ 1 m at the handlebar), hubs ``length`` minus a wheel apart."""
    s = 1.0 if rng.random() < 0.5 else -1.0  # +1: front wheel on the right
    r = 0.36 * h
    hub_v, hx = -r, s * (0.5 * length - r)
    bb = (-s * 0.05 * length, -r + 0.05)  # bottom bracket, a little below the hubs
    seat = (-s * 0.22 * length, -0.92 * h)
    head = (s * 0.25 * length, -0.86 * h)
    t = 0.018 + 0.012 * float(rng.random())  # tube radius
    tyre, spoke, black = _solid((0.06, 0.06, 0.06)), _solid((0.55, 0.55, 0.55)), _solid((0.1, 0.1, 0.1))
    parts: list[tuple[Shape, Painter]] = []
    for x in (-hx, hx):
        parts.append((Ring(x, hub_v, r, r - 0.045), tyre))
        for k in range(6):
            dx, dv = 0.9 * (r - 0.045) * np.cos(np.pi * k / 6), 0.9 * (r - 0.045) * np.sin(np.pi * k / 6)
            parts.append((Capsule(x - dx, hub_v - dv, x + dx, hub_v + dv, 0.006, 0.006), spoke))
    tubes = [((-hx, hub_v), bb), ((-hx, hub_v), seat), (bb, seat), (bb, head), (seat, head), (head, (hx, hub_v))]
    parts += [(Capsule(p[0], p[1], q[0], q[1], t, t), _solid(frame)) for p, q in tubes]
    parts.append((Box(seat[0] - s * 0.02, seat[1] - 0.04, 0.11, 0.03, radius=0.02), _solid(saddle)))
    grip = (head[0] - s * 0.06, head[1] - 0.1)
    parts.append((Capsule(head[0], head[1], grip[0], grip[1], 0.015, 0.015), black))
    parts.append((Capsule(grip[0], grip[1], grip[0] - s * 0.1, grip[1] + 0.02, 0.02, 0.02), black))
    return parts


def draw_item(canvas: np.ndarray, item: ClutterItem, pose: Pose) -> np.ndarray:
    """Paint ``item`` onto float32 canvas[H, W, 3] (in place, anti-aliased); returns its pixels bool[H, W]."""
    h, w = canvas.shape[:2]
    painted = np.zeros((h, w), bool)
    for shape, paint in _parts(item):
        r = rasterise(shape, pose, h, w)
        if r is None:
            continue
        cov = r.coverage()[..., None]
        colour = paint(r.u, r.v)
        depth = np.clip(-r.dist_px / max(pose.scale * 0.05, 1e-6), 0.0, 1.0)
        colour = colour * (0.75 + 0.25 * np.sqrt(depth))[..., None]
        win = r.window
        canvas[win] = (1 - cov) * canvas[win] + cov * colour
        painted[win] |= r.inside()
    return painted
