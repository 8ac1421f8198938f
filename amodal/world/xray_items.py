"""Parametric baggage contents for the X-ray world: the 12 PIDray prohibited classes, clutter and bags.

Every builder takes a numpy Generator and returns parts in the object's local frame, in millimetres
(long axis along u).  A part is a 2-D outline, a material and a thickness profile:
  ``flat``  t = thickness_mm inside the outline (plates, blades, shells seen face-on);
  ``round`` t = thickness_mm · sqrt(1 − (1 − depth/half_width)²) (solid cylinders / rounded bodies);
  ``tube``  chord of a hollow cylinder of radius half_width and wall wall_mm (cans, tubes, cartridge cases);
  ``soft``  t = thickness_mm · sqrt(depth/half_width) · (1 + 0.4·fold field) (folded clothes).
Parts of one object overlap freely: attenuation is additive, exactly as the real internal structure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from amodal.world.shapes2d import (
    Band,
    Box,
    Capsule,
    Ellipse,
    Polygon,
    Polyline,
    Pose,
    Raster,
    Ring,
    Shape,
    Wobbly,
    bezier,
    rasterise,
    rotate_points,
)
from amodal.world.xray_physics import MATERIALS

# PIDray's 12 classes; ids 1..12 in this order (SYSTEMS §4).
PIDRAY_CLASSES: tuple[str, ...] = (
    "Baton", "Pliers", "Hammer", "Powerbank", "Scissors", "Wrench",
    "Gun", "Bullet", "Sprayer", "HandCuffs", "Knife", "Lighter",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Part:
    shape: Shape
    material: str
    thickness_mm: float
    profile: str = "flat"  # flat | round | tube | soft
    half_width_mm: float = 1.0  # cross-section radius for round / tube / soft
    wall_mm: float = 0.0  # tube wall

    def __post_init__(self) -> None:
        if self.material not in MATERIALS:
            raise ValueError(f"unknown material {self.material!r}")
        if self.profile not in ("flat", "round", "tube", "soft"):
            raise ValueError(f"unknown profile {self.profile!r}")


@dataclass(frozen=True, slots=True)
class Component:
    """One object in the bag: ``kind`` item | clutter | bag; ``category_id`` 1..12 for items, else 0."""

    kind: str
    name: str
    category_id: int
    parts: tuple[Part, ...]
    pose: Pose


def part_thickness_mm(part: Part, raster: Raster, scale_px_per_mm: float) -> np.ndarray:
    """float thickness (mm) of ``part`` over the raster window (0 outside), anti-aliased at the outline."""
    cov = raster.coverage()
    if part.profile == "flat":
        return part.thickness_mm * cov
    depth = np.maximum(-raster.dist_px, 0.0) / scale_px_per_mm  # mm inside the outline
    x = np.clip(depth / part.half_width_mm, 0.0, 1.0)
    if part.profile == "round":
        return cov * part.thickness_mm * np.sqrt(np.clip(1.0 - (1.0 - x) ** 2, 0.0, 1.0))
    if part.profile == "tube":
        r_axis = np.maximum(part.half_width_mm - depth, 0.0)
        outer = 2.0 * np.sqrt(np.maximum(part.half_width_mm**2 - r_axis**2, 0.0))
        inner_r = max(part.half_width_mm - part.wall_mm, 0.0)
        inner = 2.0 * np.sqrt(np.maximum(inner_r**2 - r_axis**2, 0.0))
        return cov * (outer - inner)
    fold = part.shape.field(raster.u, raster.v) if isinstance(part.shape, Wobbly) else 0.0
    amp = sum(abs(w[0]) for w in part.shape.waves) if isinstance(part.shape, Wobbly) else 1.0
    return cov * part.thickness_mm * np.sqrt(x) * np.clip(1.0 + 0.4 * fold / max(amp, 1e-6), 0.3, 1.6)


def component_rasters(comp: Component, height: int, width: int, cache: dict | None = None) -> list[Raster | None]:
    """Rasters of ``comp``'s parts (None for parts off the image), memoised in ``cache`` when given."""
    if cache is not None and comp in cache:
        return cache[comp]
    rasters = [rasterise(part.shape, comp.pose, height, width) for part in comp.parts]
    if cache is not None:
        cache[comp] = rasters
    return rasters


def render_components(components: list[Component], height: int, width: int, cache: dict | None = None):
    """Sum attenuations of all parts → (A_low float32[H, W], A_high float32[H, W], masks list[bool[H, W]]).

    ``masks[k]`` is component k's silhouette (pixel centres inside any of its parts).
    """
    a_low = np.zeros((height, width), dtype=np.float32)
    a_high = np.zeros((height, width), dtype=np.float32)
    masks = []
    for comp in components:
        mask = np.zeros((height, width), dtype=bool)
        for part, raster in zip(comp.parts, component_rasters(comp, height, width, cache)):
            if raster is None:
                continue
            t = part_thickness_mm(part, raster, comp.pose.scale).astype(np.float32)
            mat = MATERIALS[part.material]
            win = raster.window
            a_low[win] += mat.mu_low_per_mm * t
            a_high[win] += mat.mu_high_per_mm * t
            mask[win] |= raster.inside()
        masks.append(mask)
    return a_low, a_high, masks


# ------------------------------------------------------------------------------------------ prohibited items
def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def revolver(rng: np.random.Generator) -> list[Part]:
    """Revolver: steel barrel, frame and cylinder with brass cartridges in the chambers, wooden/rubber grip."""
    barrel, r_cyl = _u(rng, 60, 150), _u(rng, 17, 21)
    grip_len, tilt = _u(rng, 80, 100), _u(rng, 0.3, 0.55)
    grip = ((-r_cyl - 8, 8), (-r_cyl + 14, 10), (-r_cyl + 14 - grip_len * math.sin(tilt), 10 + grip_len * math.cos(tilt)),
            (-r_cyl - 16 - grip_len * math.sin(tilt), 8 + grip_len * math.cos(tilt)))  # fmt: skip
    parts = [
        Part(Capsule(r_cyl, -6, r_cyl + barrel, -6, 8, 8), "steel", 16, "tube", 8, 3.5),
        Part(Box(0, -2, r_cyl + 6, 15, radius=4), "steel", 10),
        Part(Box(0, -2, r_cyl, r_cyl * 0.8, radius=4), "steel", 2 * r_cyl, "round", r_cyl * 0.8),
        Part(Polygon(grip), str(rng.choice(["wood", "rubber"])), 30, "round", 12),
        Part(Ring(r_cyl * 0.4, 22, 12, 8.5), "steel", 6),
    ]
    for k in (-1, 0, 1):  # chambers seen side-on: cartridges along the cylinder
        parts.append(Part(Box(0, -2 + k * r_cyl * 0.55, r_cyl - 2, 4.5, radius=2), "brass", 9, "round", 4.5))
    return parts


def gun(rng: np.random.Generator) -> list[Part]:
    """Pistol (85 %: steel slide + barrel, polymer/steel frame, grip with a loaded magazine) or revolver."""
    if rng.random() < 0.15:
        return revolver(rng)
    length, h = _u(rng, 150, 200), _u(rng, 26, 34)
    grip_len, grip_w, tilt = _u(rng, 90, 115), _u(rng, 28, 36), _u(rng, 0.2, 0.4)
    rear = -length / 2 + 4
    dx, dy = grip_len * math.sin(tilt), grip_len * math.cos(tilt)
    grip = ((rear, h / 2), (rear + grip_w + 6, h / 2), (rear + grip_w - dx, h / 2 + dy), (rear - dx, h / 2 + dy))
    inset = 5.0
    mag = (
        (rear + inset, h / 2 + 4),
        (rear + grip_w - inset, h / 2 + 4),
        (rear + grip_w - inset - dx * 0.95, h / 2 + dy * 0.95),
        (rear + inset - dx * 0.95, h / 2 + dy * 0.95),
    )
    slide_mat = "steel" if rng.random() < 0.85 else "aluminium"
    frame_mat = "plastic" if rng.random() < 0.6 else "steel"
    guard_x = rear + grip_w + 20
    return [
        Part(Box(0, 0, length / 2, h / 2, radius=3), slide_mat, _u(rng, 6, 9)),
        Part(Capsule(-length / 2 + 15, 0, length / 2, 0, 6.5, 6.5), "steel", 13, "tube", 6.5, 2.5),
        Part(Polygon(grip), frame_mat, _u(rng, 24, 30) if frame_mat == "plastic" else 5, "round", grip_w / 2),
        Part(Box(rear + length * 0.4, h / 2 + 6, length * 0.3, 6), frame_mat, 18 if frame_mat == "plastic" else 4),
        Part(Polygon(mag), "steel", 2.5),
        Part(Polygon(mag), "brass", 9.0, "round", (grip_w - 2 * inset) / 2),
        Part(Ring(guard_x, h / 2 + 10, 14, 10.5), frame_mat, 9 if frame_mat == "plastic" else 3),
        Part(Box(guard_x - 4, h / 2 + 9, 2, 7, angle=0.3), "steel", 5),
    ]


def knife(rng: np.random.Generator) -> list[Part]:
    """Blade (bevelled steel), handle (wood/plastic/aluminium) with a steel tang, rivets and bolster."""
    bl, bw = _u(rng, 80, 200), _u(rng, 16, 35)
    hl, hw = _u(rng, 80, 120), _u(rng, 18, 26)
    tip_up = _u(rng, 0.05, 0.4)
    blade = (
        (0, -bw / 2), (bl * 0.75, -bw / 2), (bl, -bw / 2 + bw * tip_up),
        (bl * 0.8, bw * 0.3), (bl * 0.4, bw / 2), (0, bw / 2),
    )  # fmt: skip
    handle_mat = str(rng.choice(["wood", "plastic", "aluminium"]))
    parts = [
        Part(Polygon(blade), "steel", _u(rng, 2.0, 3.5), "round", bw / 2),
        Part(Box(-hl / 2, 0, hl / 2, hw / 2, radius=hw * 0.4), handle_mat, hw * 0.7, "round", hw / 2),
        Part(Box(-hl * 0.45, 0, hl * 0.42, bw * 0.16), "steel", 2.5),
        Part(Box(-3, 0, 4, max(bw, hw) / 2 + 1, radius=2), "steel", 9),
    ]
    for k in range(int(rng.integers(0, 4))):
        parts.append(Part(Ellipse(-hl * (0.25 + 0.25 * k), 0, 2.5, 2.5), "brass", hw * 0.7, "round", 2.5))
    return parts


def scissors(rng: np.random.Generator) -> list[Part]:
    """Two steel blades crossing at a pivot screw, shanks to two (plastic or steel) finger rings."""
    bl, rr, opening = _u(rng, 60, 110), _u(rng, 11, 16), _u(rng, 0.03, 0.5)
    ring_mat = "plastic" if rng.random() < 0.7 else "steel"
    parts: list[Part] = []
    for side in (-1.0, 1.0):
        a = side * opening / 2
        blade = rotate_points(((-10, -6 * side), (bl, -2.5 * side), (bl, 1.0 * side), (-10, 5 * side)), a)
        ring_c = rotate_points(((-2.6 * rr, side * rr * 0.95),), a)[0]
        shank = (rotate_points(((-4, 0),), a)[0], (ring_c[0] + rr * 0.75, ring_c[1] - side * rr * 0.3))
        parts += [
            Part(Polygon(blade), "steel", 2.0),
            Part(Capsule(*shank[0], *shank[1], 4.0, 4.5), ring_mat, 7 if ring_mat == "plastic" else 2.5),
            Part(Capsule(*shank[0], *shank[1], 1.5, 1.5), "steel", 2.0),
            Part(Ring(ring_c[0], ring_c[1], rr, rr - 4.0), ring_mat, 7 if ring_mat == "plastic" else 2.5),
        ]
    parts.append(Part(Ellipse(0, 0, 3.5, 3.5), "steel", 6, "round", 3.5))
    return parts


def bullet(rng: np.random.Generator) -> list[Part]:
    """Cartridge: brass case (hollow, powder inside), lead/copper-jacketed bullet, primer."""
    case_len, r = _u(rng, 35, 55), _u(rng, 4.8, 6.2)
    bullet_len = _u(rng, 15, 28)
    return [
        Part(Box(0, 0, case_len / 2, r, radius=0.8), "brass", 2 * r, "tube", r, 0.6),
        Part(Box(0, 0, case_len / 2 - 1, r - 0.7), "plastic", 2 * r - 1.4, "round", r - 0.7),
        Part(Capsule(case_len / 2 - 3, 0, case_len / 2 + bullet_len - r * 0.9, 0, r * 0.9, r * 0.35), "lead", 2 * r * 0.9,
             "round", r * 0.9),
        Part(Box(-case_len / 2 + 1.2, 0, 1.2, r * 0.5), "brass", 2 * r * 0.5, "round", r * 0.5),
    ]  # fmt: skip


def baton(rng: np.random.Generator) -> list[Part]:
    """Expandable baton: nested steel tubes (collapsed or extended), rubber/foam grip, steel tip."""
    extended = rng.random() < 0.55
    radii = (12.5, 9.5, 7.0)
    seg = _u(rng, 160, 200)
    parts: list[Part] = []
    if extended:
        u0 = -1.5 * seg
        for k, r in enumerate(radii):
            parts.append(Part(Capsule(u0 + k * seg * 0.95, 0, u0 + (k + 1) * seg, 0, r, r), "steel", 2 * r, "tube", r, 1.5))
        tip_u = u0 + 3 * seg
    else:
        for r in radii:
            parts.append(Part(Capsule(-seg / 2, 0, seg / 2, 0, r, r), "steel", 2 * r, "tube", r, 1.5))
        tip_u = seg / 2
    grip_start = parts[0].shape.x0
    parts.append(Part(Capsule(grip_start, 0, grip_start + seg * 0.6, 0, 16, 16), "rubber", 32, "tube", 16, 3.5))
    parts.append(Part(Ellipse(tip_u, 0, 8, 8), "steel", 16, "round", 8))
    return parts


def pliers(rng: np.random.Generator) -> list[Part]:
    """Forged steel jaws and pivot, two steel handles with rubber sleeves."""
    jl, hl, spread = _u(rng, 35, 60), _u(rng, 100, 150), _u(rng, 0.08, 0.25)
    parts = [Part(Ellipse(0, 0, 11, 11), "steel", 14, "round", 11)]
    for side in (-1.0, 1.0):
        jaw = ((-5, side * 11), (jl, side * 3.5), (jl, -side * 0.5), (-5, -side * 3))
        end = (-hl, side * hl * math.tan(spread))
        parts += [
            Part(Polygon(jaw), "steel", 8),
            Part(Capsule(-4, side * 3, end[0], end[1], 5, 6), "steel", 6),
            Part(Capsule(end[0] * 0.35, end[1] * 0.35, end[0], end[1], 9, 10), "rubber", 14, "round", 9),
        ]
    return parts


def hammer(rng: np.random.Generator) -> list[Part]:
    """Steel head with a claw, wooden or steel-cored handle with a rubber grip."""
    head_len, head_h, handle_len = _u(rng, 90, 130), _u(rng, 22, 30), _u(rng, 230, 320)
    right = 0.4 * head_len  # the head spans [-0.6, 0.4] x head_len
    claw = (
        (right - 5, -head_h / 2), (right + 35, -head_h / 2 - 18),
        (right + 38, -head_h / 2 - 10), (right + 5, head_h / 2),
    )  # fmt: skip
    wood = rng.random() < 0.5
    parts = [
        Part(Box(-head_len * 0.1, 0, head_len / 2, head_h / 2, radius=3), "steel", head_h, "round", head_h / 2),
        Part(Polygon(claw), "steel", 12),
        Part(Ellipse(-head_len * 0.6 + 4, 0, 8, head_h / 2 + 2), "steel", 20, "round", 8),
    ]
    hw = 14.0
    if wood:
        parts.append(Part(Box(0, handle_len / 2 + head_h / 2 - 6, hw, handle_len / 2, radius=6), "wood", 26, "round", hw))
    else:
        parts.append(Part(Box(0, handle_len / 2 + head_h / 2 - 6, 6, handle_len / 2, radius=3), "steel", 12, "tube", 6, 2))
        parts.append(
            Part(Box(0, handle_len * 0.75 + head_h / 2, hw, handle_len / 4, radius=6), "rubber", 26, "round", hw)
        )
    return parts


def powerbank(rng: np.random.Generator) -> list[Part]:
    """Plastic/aluminium case, 2–4 cylindrical Li-ion cells or one pouch cell, circuit board and USB port."""
    n_cells = int(rng.integers(2, 5))
    cyl = rng.random() < 0.7
    hw = 34.0
    hh = n_cells * 9.5 + 3 if cyl else _u(rng, 30, 40)
    case_mat = "plastic" if rng.random() < 0.6 else "aluminium"
    parts = [Part(Box(0, 0, hw + 14, hh + 2, radius=6), case_mat, 5 if case_mat == "plastic" else 2)]
    if cyl:
        for k in range(n_cells):
            v = -hh + 3 + 9.5 + 19 * k
            parts.append(Part(Box(-6, v, 32.5, 9, radius=8.5), "battery", 18, "round", 9))
    else:
        parts.append(Part(Box(-6, 0, 32, hh - 2, radius=2), "battery", _u(rng, 6, 10)))
    parts.append(Part(Box(hw + 6, 0, 6, hh * 0.8), "pcb", 1.6))
    parts.append(Part(Box(hw + 10, _u(rng, -hh / 2, hh / 2), 3.5, 6), "steel", 6))
    for _ in range(int(rng.integers(2, 6))):
        parts.append(Part(Box(hw + _u(rng, 2, 10), _u(rng, -hh * 0.7, hh * 0.7), 1.5, 1.5), "copper", 2))
    return parts


def wrench(rng: np.random.Generator) -> list[Part]:
    """Combination spanner: steel shaft, open jaw at one end, ring at the other."""
    length, w, r = _u(rng, 140, 240), _u(rng, 9, 15), _u(rng, 12, 19)
    half = length / 2
    return [
        Part(Box(0, 0, half - r * 0.6, w / 2, radius=2), "steel", 5.5),
        Part(Ring(half, 0, r, r * 0.55, gap_rad=0.6, gap_dir_rad=_u(rng, -0.3, 0.3)), "steel", 7),
        Part(Ring(-half, 0, r * 0.9, r * 0.5), "steel", 8),
    ]


def sprayer(rng: np.random.Generator) -> list[Part]:
    """Aerosol can lying down: aluminium/steel shell, liquid, domed top, valve cup and plastic nozzle."""
    cl, r = _u(rng, 120, 190), _u(rng, 22, 33)
    shell = "aluminium" if rng.random() < 0.6 else "steel"
    wall = 0.45 if shell == "aluminium" else 0.25
    fill = _u(rng, 0.4, 0.95)
    return [
        Part(Box(0, 0, cl / 2, r, radius=r * 0.25), shell, 2 * r, "tube", r, wall),
        Part(Box(-cl / 2 * (1 - fill), 0, cl / 2 * fill - 2, r - 1.5), "water", 2 * r - 3, "round", r - 1.5),
        Part(Ellipse(cl / 2 + 3, 0, 8, r * 0.8), shell, 2 * r * 0.8, "tube", r * 0.8, wall * 2),
        Part(Ring(cl / 2 + 9, 0, 8, 5), "steel", 4),
        Part(Box(cl / 2 + 20, 0, 9, 10, radius=3), "plastic", 18, "round", 9),
        Part(Capsule(-cl / 2 + 5, r * 0.3, cl / 2 + 8, 0, 1.2, 1.2), "plastic", 2.4, "round", 1.2),
    ]


def handcuffs(rng: np.random.Generator) -> list[Part]:
    """Two steel cuffs (ring + ratchet arm) joined by a short chain of links."""
    r_out = _u(rng, 33, 40)
    chain = _u(rng, 10, 40)  # free length between the two swivels
    sep = r_out + 10 + chain / 2
    parts: list[Part] = []
    for side in (-1.0, 1.0):
        cx = side * sep
        parts.append(Part(Ring(cx, 0, r_out, r_out - 7), "steel", 6))
        parts.append(Part(Ring(cx, 0, r_out - 2, r_out - 9, gap_rad=_u(rng, 1.2, 2.2), gap_dir_rad=_u(rng, 0, 6.28)),
                          "steel", 4))  # fmt: skip
        parts.append(Part(Box(side * (sep - r_out - 4), 0, 6, 9, radius=2), "steel", 10))
    link_n = max(2, math.ceil(chain / 9))
    for k in range(link_n):
        cx = -chain / 2 + chain * (k + 0.5) / link_n
        parts.append(Part(Ring(cx, _u(rng, -2, 2), 7, 3.0), "steel", 5, "round", 2.0))
    return parts


def lighter(rng: np.random.Generator) -> list[Part]:
    """Disposable (plastic body, liquid butane, steel hood, flint wheel) or steel petrol lighter."""
    steel_case = rng.random() < 0.3
    hl, hw = _u(rng, 32, 42), _u(rng, 10, 14)
    if steel_case:
        return [
            Part(Box(0, 0, hl, hw, radius=3), "steel", 3),
            Part(Box(-hl * 0.2, 0, hl * 0.75, hw - 2), "fabric", 2 * hw - 4, "round", hw - 2),
            Part(Ellipse(hl * 0.8, hw * 0.2, 4, 4), "steel", 8, "round", 4),
            Part(Box(hl * 0.8, -hw * 0.4, 3, 2), "steel", 6),
        ]
    return [
        Part(Box(0, 0, hl, hw, radius=4), "plastic", 2 * hw * 0.85, "tube", hw, 1.5),
        Part(Box(-hl * 0.25, 0, hl * 0.7, hw - 1.8), "plastic", 2 * hw * 0.7, "round", hw - 1.8),
        Part(Box(hl + 3, 0, 5, hw * 0.9, radius=1), "steel", 2 * hw * 0.9, "tube", hw * 0.9, 0.4),
        Part(Ellipse(hl + 5, hw * 0.35, 3.5, 3.5), "steel", 7, "round", 3.5),
        Part(Capsule(-hl * 0.8, 0, hl + 2, 0, 1.0, 1.0), "steel", 2, "round", 1.0),
    ]


ITEM_BUILDERS: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "Baton": baton, "Pliers": pliers, "Hammer": hammer, "Powerbank": powerbank, "Scissors": scissors,
    "Wrench": wrench, "Gun": gun, "Bullet": bullet, "Sprayer": sprayer, "HandCuffs": handcuffs,
    "Knife": knife, "Lighter": lighter,
}  # fmt: skip


# ------------------------------------------------------------------------------------------------- clutter
def _waves(rng: np.random.Generator, n: int, amp: float, freq: tuple[float, float]) -> tuple:
    return tuple((_u(rng, 0.3, 1.0) * amp, _u(rng, *freq), _u(rng, 0, math.pi), _u(rng, 0, 2 * math.pi)) for _ in range(n))


def clothes(rng: np.random.Generator) -> list[Part]:
    """A folded garment: a soft blob of fabric with fold ridges; sometimes a zip or metal buttons."""
    rx, ry = _u(rng, 60, 150), _u(rng, 40, 110)
    blob = Wobbly(Ellipse(0, 0, rx, ry, _u(rng, 0, math.pi)), _waves(rng, 5, 12, (0.02, 0.07)))
    parts = [Part(blob, "fabric", _u(rng, 15, 70), "soft", min(rx, ry) * 0.5)]
    if rng.random() < 0.3:
        pts = bezier([(_u(rng, -rx, rx) * 0.6, _u(rng, -ry, ry) * 0.6) for _ in range(3)], 12)
        parts.append(Part(Polyline(pts, 2.5), "brass", 1.5))
    for _ in range(int(rng.integers(0, 4))):
        parts.append(Part(Ellipse(_u(rng, -rx, rx) * 0.5, _u(rng, -ry, ry) * 0.5, 4, 4), "steel", 1.5))
    return parts


def cable(rng: np.random.Generator) -> list[Part]:
    """A cable: plastic insulation around two copper cores along a random curve, with a plug."""
    span = _u(rng, 80, 260)
    ctrl = [(_u(rng, -span, span) / 2, _u(rng, -span, span) / 2) for _ in range(4)]
    pts = bezier(ctrl, 28)
    r = _u(rng, 1.8, 3.2)
    (x, y) = pts[-1]
    return [
        Part(Polyline(pts, r), "plastic", 2 * r, "round", r),
        Part(Polyline(pts, r * 0.35), "copper", 2 * r * 0.35, "round", r * 0.35),
        Part(Box(x, y, 12, 8, angle=_u(rng, 0, math.pi), radius=3), "plastic", 14, "round", 8),
        Part(Box(x, y, 6, 3, angle=_u(rng, 0, math.pi)), "brass", 2),
    ]


def electronics(rng: np.random.Generator) -> list[Part]:
    """A phone, tablet/laptop or charger: case, battery, circuit board with chips, screws, coils."""
    kind = str(rng.choice(["phone", "laptop", "charger"]))
    if kind == "phone":
        hw, hh = _u(rng, 68, 80), _u(rng, 33, 39)
        parts = [
            Part(Box(0, 0, hw, hh, radius=8), "aluminium", 1.5),
            Part(Box(0, 0, hw - 2, hh - 2, radius=7), "glass", 1.2),
            Part(Box(-hw * 0.2, 0, hw * 0.55, hh * 0.8, radius=2), "battery", 5),
            Part(Box(hw * 0.6, 0, hw * 0.3, hh * 0.85), "pcb", 1.4),
            Part(Ring(hw * 0.75, -hh * 0.55, 6, 3), "steel", 2),
        ]
        chip_area = (hw * 0.45, hw * 0.85, -hh * 0.7, hh * 0.7)
    elif kind == "laptop":
        hw, hh = _u(rng, 130, 170), _u(rng, 90, 115)
        parts = [
            Part(Box(0, 0, hw, hh, radius=6), "aluminium", 3.0),
            Part(Box(0, hh * 0.45, hw * 0.7, hh * 0.35), "pcb", 1.6),
            Part(Ring(hw * 0.55, hh * 0.45, 22, 8), "plastic", 8),
        ]
        for k in range(int(rng.integers(3, 7))):
            parts.append(Part(Box(-hw * 0.8 + 36 * k, -hh * 0.5, 16, 32, radius=8), "battery", 6))
        for sx in (-1, 1):
            parts.append(Part(Box(sx * hw * 0.7, -hh + 8, 14, 6), "steel", 6))
        chip_area = (-hw * 0.6, hw * 0.6, hh * 0.2, hh * 0.7)
    else:
        hw, hh = _u(rng, 25, 40), _u(rng, 22, 30)
        parts = [
            Part(Box(0, 0, hw, hh, radius=5), "plastic", 26, "round", hh),
            Part(Box(-hw * 0.3, 0, hw * 0.35, hh * 0.5), "steel", 14),
            Part(Ring(hw * 0.3, 0, hh * 0.45, hh * 0.2), "copper", 8, "round", hh * 0.12),
            Part(Box(hw + 8, -hh * 0.3, 8, 2), "brass", 2),
            Part(Box(hw + 8, hh * 0.3, 8, 2), "brass", 2),
        ]
        chip_area = (-hw * 0.8, hw * 0.8, -hh * 0.8, hh * 0.8)
    for _ in range(int(rng.integers(2, 8))):
        parts.append(Part(Box(_u(rng, *chip_area[:2]), _u(rng, *chip_area[2:]), _u(rng, 1.5, 6), _u(rng, 1.5, 6)),
                          str(rng.choice(["copper", "steel", "pcb"])), _u(rng, 0.8, 2.5)))  # fmt: skip
    return parts


def misc(rng: np.random.Generator) -> list[Part]:
    """Everyday items: bottle, shoe, book, umbrella, keys, coins, toiletries."""
    kind = str(rng.choice(["bottle", "shoe", "book", "umbrella", "keys", "toiletry"]))
    if kind == "bottle":
        hw, r = _u(rng, 70, 120), _u(rng, 25, 38)
        return [
            Part(Box(0, 0, hw, r, radius=r * 0.6), "plastic", 2 * r, "tube", r, 0.5),
            Part(Box(-hw * 0.2, 0, hw * 0.75, r - 1), "water", 2 * r - 2, "round", r - 1),
            Part(Box(hw + 8, 0, 9, r * 0.45, radius=2), "plastic", 2 * r * 0.45, "round", r * 0.45),
        ]
    if kind == "shoe":
        sole = Wobbly(Ellipse(0, 0, _u(rng, 120, 150), _u(rng, 40, 50)), _waves(rng, 3, 4, (0.02, 0.05)))
        return [
            Part(sole, "rubber", _u(rng, 25, 45), "soft", 20),
            Part(Polyline(tuple((float(x), 0.0) for x in np.linspace(-20, 50, 6)), 2.0), "steel", 1.0),
        ]
    if kind == "book":
        return [Part(Box(0, 0, _u(rng, 70, 110), _u(rng, 50, 75), radius=2), "wood", _u(rng, 10, 40))]
    if kind == "umbrella":
        length = _u(rng, 220, 300)
        parts = [Part(Box(0, 0, length / 2, 22, radius=18), "fabric", 30, "round", 22)]
        for k in range(6):
            v = -12 + 4.8 * k
            parts.append(Part(Capsule(-length / 2 + 20, v * 0.3, length / 2, v, 1.0, 1.0), "steel", 2, "round", 1))
        parts.append(Part(Capsule(-length / 2 - 40, 0, length / 2, 0, 3, 3), "steel", 6, "tube", 3, 0.6))
        parts.append(Part(Ellipse(-length / 2 - 45, 0, 16, 11), "plastic", 22, "round", 11))
        return parts
    if kind == "keys":
        parts = [Part(Ring(0, 0, 13, 11), "steel", 2, "round", 1)]
        for k in range(int(rng.integers(1, 5))):
            a = _u(rng, 0, 2 * math.pi)
            tip = (math.cos(a) * 60, math.sin(a) * 60)
            parts.append(Part(Capsule(math.cos(a) * 14, math.sin(a) * 14, *tip, 5, 3), "brass", 2.2))
            parts.append(Part(Ellipse(math.cos(a) * 20, math.sin(a) * 20, 12, 12), "plastic", 4))
        return parts
    hw, r = _u(rng, 40, 80), _u(rng, 15, 25)
    return [
        Part(Box(0, 0, hw, r, radius=r * 0.8), "plastic", 2 * r, "tube", r, 1.0),
        Part(Box(0, 0, hw - 2, r - 2, radius=r * 0.7), "water", 2 * r - 4, "round", r - 2),
    ]


def bag(rng: np.random.Generator, length_mm: float, width_mm: float) -> list[Part]:
    """A suitcase (shells, edge-on walls, zip, telescopic aluminium handle, wheels) or a soft backpack."""
    hw, hh = length_mm / 2, width_mm / 2
    if rng.random() < 0.6:
        outline = Box(0, 0, hw, hh, radius=28)
        parts = [
            Part(outline, "plastic", _u(rng, 4, 7)),
            Part(Band(outline, 3.0), "plastic", _u(rng, 150, 220)),
            Part(Band(Box(0, 0, hw - 6, hh - 6, radius=24), 3.0), "steel", 1.0),
        ]
        for sv in (-1, 1):
            parts.append(Part(Capsule(-hw + 20, sv * hh * 0.35, hw - 20, sv * hh * 0.35, 9, 9), "aluminium", 18, "tube", 9, 1.5))
            parts.append(Part(Ellipse(hw - 22, sv * (hh - 22), 20, 20), "rubber", 30, "round", 20))
            parts.append(Part(Ellipse(hw - 22, sv * (hh - 22), 4, 4), "steel", 30, "round", 4))
        return parts
    outline = Wobbly(Ellipse(0, 0, hw, hh), _waves(rng, 4, 10, (0.01, 0.03)))
    parts = [
        Part(outline, "fabric", _u(rng, 4, 8)),
        Part(Band(outline, 4.0), "fabric", _u(rng, 80, 140)),
        Part(Band(Wobbly(Ellipse(0, 0, hw - 8, hh - 8), outline.waves), 3.0), "plastic", 1.5),
    ]
    for sv in (-1, 1):
        strap = bezier([(-hw * 0.8, sv * hh * 0.3), (0, sv * hh * 0.5), (hw * 0.8, sv * hh * 0.3)], 16)
        parts.append(Part(Polyline(strap, 18), "fabric", 12))
        parts.append(Part(Box(hw * 0.3, sv * hh * 0.42, 12, 9, radius=2), "plastic", 6))
    return parts
