"""Shared rendering helpers for the synthetic occlusion worlds (video and layers).

Objects are 2.5-D sprites: a category silhouette built from primitives in metres (x right, z up from the
object's foot point), rasterised at a given pixel scale, coloured by per-part textures evaluated in the
object's own metric frame (so an instance looks the same in every frame), and composited far to near.

Conventions: images are uint8[H, W, 3] RGB; masks are bool[H, W]; pixel centres at (x + 0.5, y + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Fixed category list (ids are stable: datasets and weights refer to them).
CATEGORIES: tuple[tuple[int, str], ...] = ((1, "person"), (2, "car"), (3, "animal"), (4, "box"), (5, "ball"))
CATEGORY_NAMES: dict[int, str] = dict(CATEGORIES)
# Physical size ranges in metres: (height_min, height_max, width/height ratio range).
_SIZE_M = {
    "person": ((1.5, 1.9), (0.28, 0.34)),
    "car": ((1.35, 1.6), (2.4, 2.9)),
    "animal": ((0.6, 1.2), (1.2, 1.6)),
    "box": ((0.5, 1.3), (0.8, 1.6)),
    "ball": ((0.3, 0.7), (1.0, 1.0)),
}


def coco_categories() -> list[dict]:
    """The category list in COCO/YouTube-VIS form: ``[{"id", "name", "supercategory"}]``."""
    return [{"id": cid, "name": name, "supercategory": "object"} for cid, name in CATEGORIES]


# --------------------------------------------------------------------------------------------------
# Primitives and shapes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Primitive:
    """One solid in object metres: kind ``ellipse`` (a = centre x, b = centre z, c = rx, d = rz),
    ``box`` (x0, z0, x1, z1) or ``capsule`` (segment (a, b)-(c, d), radius r). ``part`` picks the texture."""

    kind: str
    a: float
    b: float
    c: float
    d: float
    r: float = 0.0
    part: int = 0


def _leg(x_hip: float, z_hip: float, length: float, angle: float, radius: float, part: int) -> Primitive:
    return Primitive("capsule", x_hip, z_hip, x_hip + length * np.sin(angle), z_hip - length * np.cos(angle),
                     radius, part)


def shape_primitives(category: str, height_m: float, width_m: float, phase: float, facing: int) -> list[Primitive]:
    """Silhouette of one category at animation ``phase`` (radians), ``facing`` +1 right / -1 left.
    Parts: 0 main body texture, 1 secondary (head/skin, windows), 2 dark (trousers, wheels)."""
    h, w, f = height_m, width_m, float(facing)
    if category == "person":
        swing = 0.45 * np.sin(phase)
        leg_len = 0.47 * h
        head_r = 0.065 * h
        return [
            _leg(-0.2 * w * f, leg_len, leg_len - 0.02 * h, swing, 0.055 * h, 2),
            _leg(0.2 * w * f, leg_len, leg_len - 0.02 * h, -swing, 0.055 * h, 2),
            Primitive("capsule", -0.5 * w, 0.82 * h, -0.5 * w - 0.08 * h * np.sin(-swing), 0.5 * h, 0.035 * h, 0),
            Primitive("capsule", 0.5 * w, 0.82 * h, 0.5 * w + 0.08 * h * np.sin(-swing), 0.5 * h, 0.035 * h, 0),
            Primitive("box", -0.5 * w, 0.44 * h, 0.5 * w, 0.84 * h, part=0),
            Primitive("ellipse", 0.0, 0.86 * h, 0.5 * w, 0.04 * h, part=0),
            Primitive("ellipse", 0.02 * h * f, 1.0 * h - head_r, head_r * 0.9, head_r, part=1),
        ]
    if category == "car":
        wheel_r = 0.2 * h
        return [
            Primitive("box", -0.5 * w, 0.15 * h, 0.5 * w, 0.58 * h, part=0),
            Primitive("ellipse", 0.5 * w * f, 0.36 * h, 0.04 * w, 0.2 * h, part=0),
            Primitive("box", -0.3 * w * f, 0.55 * h, 0.22 * w * f, 1.0 * h, part=1) if f > 0 else
            Primitive("box", -0.22 * w, 0.55 * h, 0.3 * w, 1.0 * h, part=1),
            Primitive("ellipse", -0.32 * w, wheel_r, wheel_r, wheel_r, part=2),
            Primitive("ellipse", 0.32 * w, wheel_r, wheel_r, wheel_r, part=2),
        ]
    if category == "animal":
        swing = 0.5 * np.sin(phase)
        leg_len = 0.5 * h
        body_cz = 0.66 * h
        return [
            _leg(-0.32 * w, body_cz, leg_len + 0.1 * h, swing, 0.05 * h, 0),
            _leg(-0.22 * w, body_cz, leg_len + 0.1 * h, -swing, 0.05 * h, 0),
            _leg(0.22 * w, body_cz, leg_len + 0.1 * h, swing, 0.05 * h, 0),
            _leg(0.32 * w, body_cz, leg_len + 0.1 * h, -swing, 0.05 * h, 0),
            Primitive("ellipse", 0.0, body_cz, 0.4 * w, 0.2 * h, part=0),
            Primitive("capsule", 0.3 * w * f, body_cz + 0.05 * h, 0.42 * w * f, 0.88 * h, 0.07 * h, 0),
            Primitive("ellipse", 0.44 * w * f, 0.88 * h, 0.1 * w, 0.12 * h, part=1),
            Primitive("capsule", -0.38 * w * f, body_cz + 0.08 * h, -0.5 * w * f, body_cz - 0.15 * h, 0.025 * h, 1),
        ]
    if category == "box":
        lid = 0.15 * h
        return [
            Primitive("box", -0.5 * w, 0.0, 0.5 * w, h - lid, part=0),
            Primitive("box", -0.5 * w, h - lid, 0.5 * w, h, part=1),
        ]
    if category == "ball":
        bounce = 0.25 * h * abs(np.sin(phase))
        return [Primitive("ellipse", 0.0, h / 2 + bounce, w / 2, h / 2, part=0)]
    raise ValueError(f"unknown category {category!r}")


def sample_size_m(category: str, rng: np.random.Generator) -> tuple[float, float]:
    """(height_m, width_m) of a new instance."""
    (h0, h1), (r0, r1) = _SIZE_M[category]
    height = float(rng.uniform(h0, h1))
    return height, float(height * rng.uniform(r0, r1))


def extent_m(category: str, height_m: float, width_m: float) -> tuple[float, float, float, float]:
    """Conservative (x0, z0, x1, z1) bounds of a shape in metres, animation and facing included."""
    pad = 0.2 * height_m
    top = height_m * (1.3 if category == "ball" else 1.05)
    return -0.5 * width_m - pad, 0.0 - 0.01, 0.5 * width_m + pad, top


def rasterise(prims: list[Primitive], x_m: np.ndarray, z_m: np.ndarray) -> np.ndarray:
    """Part index (int8[h, w], −1 outside) of each sample point (metres)."""
    part = np.full(x_m.shape, -1, dtype=np.int8)
    for p in prims:
        if p.kind == "ellipse":
            inside = ((x_m - p.a) / p.c) ** 2 + ((z_m - p.b) / p.d) ** 2 <= 1.0
        elif p.kind == "box":
            x0, x1 = min(p.a, p.c), max(p.a, p.c)
            z0, z1 = min(p.b, p.d), max(p.b, p.d)
            inside = (x_m >= x0) & (x_m <= x1) & (z_m >= z0) & (z_m <= z1)
        elif p.kind == "capsule":
            dx, dz = p.c - p.a, p.d - p.b
            denom = dx * dx + dz * dz
            t = np.clip(((x_m - p.a) * dx + (z_m - p.b) * dz) / max(denom, 1e-12), 0.0, 1.0)
            inside = (x_m - p.a - t * dx) ** 2 + (z_m - p.b - t * dz) ** 2 <= p.r * p.r
        else:
            raise ValueError(f"unknown primitive kind {p.kind!r}")
        part[inside] = p.part
    return part


# --------------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------------


def sample_bilinear(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear sample of a periodic grid float32[gh, gw(, C)] at grid coordinates (u along w, v along h)."""
    gh, gw = grid.shape[:2]
    u0 = np.floor(u).astype(np.int64)
    v0 = np.floor(v).astype(np.int64)
    fu = (u - u0).astype(np.float32)
    fv = (v - v0).astype(np.float32)
    u0 %= gw
    v0 %= gh
    u1 = (u0 + 1) % gw
    v1 = (v0 + 1) % gh
    if grid.ndim == 3:
        fu = fu[..., None]
        fv = fv[..., None]
    top = grid[v0, u0] * (1 - fu) + grid[v0, u1] * fu
    bottom = grid[v1, u0] * (1 - fu) + grid[v1, u1] * fu
    return top * (1 - fv) + bottom * fv


@dataclass(frozen=True, slots=True)
class PartTexture:
    """Appearance of one object part: two colours (float32[3] in [0, 1]) mixed by a pattern."""

    colour_a: np.ndarray
    colour_b: np.ndarray
    pattern: str  # solid | stripes | checker | noise
    period_m: float
    angle: float
    noise: np.ndarray  # float32[8, 8] in [0, 1]

    def colour(self, x_m: np.ndarray, z_m: np.ndarray) -> np.ndarray:
        """float32[..., 3] colour at object-metric points."""
        if self.pattern == "stripes":
            s = x_m * np.cos(self.angle) + z_m * np.sin(self.angle)
            mix = (np.sin(2 * np.pi * s / self.period_m) > 0).astype(np.float32)
        elif self.pattern == "checker":
            mix = ((np.floor(x_m / self.period_m) + np.floor(z_m / self.period_m)) % 2).astype(np.float32)
        elif self.pattern == "noise":
            mix = sample_bilinear(self.noise, x_m / self.period_m * 2, z_m / self.period_m * 2)
        else:
            mix = 0.25 * sample_bilinear(self.noise, x_m / self.period_m * 4, z_m / self.period_m * 4)
        mix = mix.astype(np.float32)[..., None]
        return self.colour_a * (1 - mix) + self.colour_b * mix


def random_colour(rng: np.random.Generator, lo: float = 0.1, hi: float = 0.95) -> np.ndarray:
    return rng.uniform(lo, hi, size=3).astype(np.float32)


def random_texture(rng: np.random.Generator, base: np.ndarray | None = None, patterned: bool = True) -> PartTexture:
    a = random_colour(rng) if base is None else base
    b = np.clip(a + rng.uniform(-0.45, 0.45, size=3), 0, 1).astype(np.float32)
    pattern = str(rng.choice(["stripes", "checker", "noise", "solid"])) if patterned else "solid"
    return PartTexture(a, b, pattern, float(rng.uniform(0.08, 0.4)), float(rng.uniform(0, np.pi)),
                       rng.random((8, 8), dtype=np.float32))


def instance_textures(category: str, rng: np.random.Generator) -> tuple[PartTexture, PartTexture, PartTexture]:
    """Textures of parts 0, 1, 2 for one instance of ``category``."""
    main = random_texture(rng)
    if category == "person":
        skin = np.array([0.9, 0.72, 0.6], np.float32) * rng.uniform(0.45, 1.05)
        second = random_texture(rng, np.clip(skin, 0, 1).astype(np.float32), patterned=False)
        third = random_texture(rng, random_colour(rng, 0.05, 0.5), patterned=False)
    elif category == "car":
        second = random_texture(rng, np.array([0.15, 0.2, 0.28], np.float32) * rng.uniform(0.6, 1.4),
                                patterned=False)
        third = random_texture(rng, np.array([0.06, 0.06, 0.06], np.float32), patterned=False)
        main = random_texture(rng, patterned=False) if rng.random() < 0.6 else main
    else:
        second = random_texture(rng, np.clip(main.colour_a * rng.uniform(0.5, 0.9), 0, 1).astype(np.float32),
                                patterned=False)
        third = random_texture(rng, random_colour(rng, 0.05, 0.4), patterned=False)
    return main, second, third


def paint_parts(parts: np.ndarray, x_m: np.ndarray, z_m: np.ndarray, textures: tuple[PartTexture, ...],
                height_m: float) -> np.ndarray:
    """float32[h, w, 3] colours of a rasterised sprite (zeros outside), with a soft top-lit shading."""
    out = np.zeros(parts.shape + (3,), np.float32)
    for k, tex in enumerate(textures):
        sel = parts == k
        if sel.any():
            out[sel] = tex.colour(x_m[sel], z_m[sel])
    shade = 0.72 + 0.28 * np.clip(z_m / max(height_m, 1e-6), 0, 1.2)
    return out * shade[..., None]


# --------------------------------------------------------------------------------------------------
# Masks and encodings
# --------------------------------------------------------------------------------------------------


def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE with ``counts`` as str (JSON-able) of a bool[H, W] mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def bbox_xywh(mask: np.ndarray) -> list[float] | None:
    """Tight box [x, y, w, h] of a bool mask in pixels (pixel edges), None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1 - xs[0]), float(ys[-1] + 1 - ys[0])]


def outline(mask: np.ndarray) -> np.ndarray:
    """bool[H, W] one-pixel inner boundary of a mask."""
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def palette(k: int) -> np.ndarray:
    """A distinct display colour (uint8[3]) for index k."""
    hue = (k * 0.61803398875) % 1.0
    h6 = hue * 6
    i = int(h6) % 6
    f = h6 - int(h6)
    q, t = 1 - f, f
    rgb = [(1, t, 0), (q, 1, 0), (0, 1, t), (0, q, 1), (t, 0, 1), (1, 0, q)][i]
    return (np.array(rgb) * 255).astype(np.uint8)


def overlay(image: np.ndarray, visible: list[np.ndarray], amodal: list[np.ndarray],
            colour_ids: list[int] | None = None) -> np.ndarray:
    """uint8[H, W, 3]: visible masks tinted, occluded parts (amodal − visible) hatched, amodal outlines drawn;
    ``colour_ids`` (e.g. track ids) keep an instance's colour stable across frames."""
    out = image.astype(np.float32)
    h, w = image.shape[:2]
    hatch = ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 4) == 0
    ids = list(range(len(visible))) if colour_ids is None else colour_ids
    for k, vis, amo in zip(ids, visible, amodal):
        colour = palette(k).astype(np.float32)
        out[vis] = 0.7 * out[vis] + 0.3 * colour
        occluded = amo & ~vis & hatch
        out[occluded] = colour
        out[outline(amo)] = colour
    return np.clip(out, 0, 255).astype(np.uint8)
