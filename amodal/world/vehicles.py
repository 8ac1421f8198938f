"""Cars and vans of the street world: bodies, cabins, windows, wheels, lights and number plates as anti-aliased
2-D parts in metres (u right, v down, the ground contact point at (0, 0)), seen from the side, the back or the
front, drawn with ``amodal.world.persons_body.draw_parts`` (edge shading gives the bodies some roundness).
Every part belongs to the vehicle's mask (label 1)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amodal.world.persons_body import BodyPart, Paint
from amodal.world.shapes2d import Box, Ellipse, Polygon

VIEWS = ("side", "back", "front")
KINDS = ("car", "van")
# paint colours of real traffic, weighted: white, black, silver, grey, dark blue, red, blue, green, beige, yellow
_PAINTS = (((0.92, 0.92, 0.92), 4.0), ((0.06, 0.06, 0.07), 4.0), ((0.66, 0.67, 0.69), 3.5), ((0.38, 0.39, 0.41), 3.0),
           ((0.10, 0.14, 0.30), 1.5), ((0.60, 0.07, 0.07), 1.5), ((0.20, 0.35, 0.65), 1.0), ((0.15, 0.30, 0.18), 0.5),
           ((0.70, 0.62, 0.48), 0.5), ((0.85, 0.72, 0.10), 0.3))  # fmt: skip


@dataclass(frozen=True, slots=True)
class VehicleLook:
    """Fixed appearance of one vehicle: kind (car | van), paint, window tint, whether it has a roof sign."""

    kind: str
    body: tuple[float, float, float]
    glass: tuple[float, float, float]
    sign: bool


def sample_look(rng: np.random.Generator, kind: str) -> VehicleLook:
    colours, weights = zip(*_PAINTS)
    c = np.asarray(colours[int(rng.choice(len(colours), p=np.asarray(weights) / sum(weights)))])
    body = tuple(float(x) for x in np.clip(c * rng.uniform(0.85, 1.1) + rng.uniform(-0.03, 0.03, 3), 0, 1))
    glass = tuple(float(x) for x in np.clip(np.array([0.12, 0.15, 0.19]) * rng.uniform(0.6, 2.2), 0, 1))
    return VehicleLook(kind, body, glass, bool(kind == "car" and rng.random() < 0.08))  # type: ignore[arg-type]


def _solid(c, k: float = 1.0) -> Paint:
    c = tuple(float(x) for x in np.clip(np.asarray(c) * k, 0, 1))
    return Paint(c, c)


def _glass(look: VehicleLook) -> Paint:
    """Windows with a diagonal sky reflection."""
    light = tuple(float(x) for x in np.clip(np.asarray(look.glass) + 0.35, 0, 1))
    return Paint(look.glass, light, "stripes", 9.0)


def vehicle_parts(look: VehicleLook, view: str, length_m: float, height_m: float) -> list[BodyPart]:
    """Parts back to front; ``length_m`` is the extent across the image (the length seen from the side, the width
    seen from the back or the front)."""
    L, H = length_m, height_m
    body, dark, tyre = _solid(look.body), _solid((0.05, 0.05, 0.05)), _solid((0.03, 0.03, 0.03))
    glass = _glass(look)
    parts: list[BodyPart] = []
    if view == "side":
        r = 0.21 * H if look.kind == "car" else 0.16 * H
        for x in (-0.33 * L, 0.33 * L):
            parts.append(BodyPart(Ellipse(x, -r, r * 1.08, r * 1.05), tyre, 1, 0.02))
        if look.kind == "car":
            parts.append(BodyPart(Box(0.0, -0.38 * H, 0.5 * L, 0.2 * H, radius=0.09 * H), body, 1, 0.25))
            cabin = Polygon(((-0.44 * L, -0.56 * H), (0.26 * L, -0.56 * H), (0.08 * L, -H), (-0.3 * L, -H)))
            parts.append(BodyPart(cabin, body, 1, 0.12))
            parts.append(BodyPart(Polygon(((-0.39 * L, -0.6 * H), (-0.06 * L, -0.6 * H), (-0.06 * L, -0.94 * H),
                                           (-0.27 * L, -0.94 * H))), glass, 1, 0.05))  # fmt: skip
            parts.append(BodyPart(Polygon(((-0.02 * L, -0.6 * H), (0.2 * L, -0.6 * H), (0.06 * L, -0.94 * H),
                                           (-0.02 * L, -0.94 * H))), glass, 1, 0.05))  # fmt: skip
            if look.sign:
                parts.append(BodyPart(Box(-0.1 * L, -1.04 * H, 0.06 * L, 0.05 * H, radius=0.02), _solid((0.95, 0.9, 0.6)), 1))
        else:
            parts.append(BodyPart(Box(0.0, -0.57 * H, 0.5 * L, 0.43 * H, radius=0.05 * H), body, 1, 0.2))
            parts.append(BodyPart(Polygon(((0.3 * L, -0.55 * H), (0.47 * L, -0.55 * H), (0.4 * L, -0.92 * H),
                                           (0.3 * L, -0.92 * H))), glass, 1, 0.05))  # fmt: skip
            parts.append(BodyPart(Box(0.12 * L, -0.75 * H, 0.14 * L, 0.15 * H, radius=0.02), glass, 1, 0.05))
        parts.append(BodyPart(Box(0.0, -0.2 * H, 0.49 * L, 0.035 * H), _solid(look.body, 0.55), 1, 0.05))  # sill
        for x in (-0.33 * L, 0.33 * L):
            parts.append(BodyPart(Ellipse(x, -r, r * 0.5, r * 0.5), _solid((0.55, 0.56, 0.58)), 1, 0.05))
        parts.append(BodyPart(Ellipse(0.48 * L, -0.45 * H, 0.03 * L, 0.05 * H), _solid((0.95, 0.92, 0.8)), 1, 0.01))
        parts.append(BodyPart(Ellipse(-0.49 * L, -0.48 * H, 0.02 * L, 0.06 * H), _solid((0.75, 0.08, 0.06)), 1, 0.01))
        return parts
    # back or front view: the vehicle's width across the image
    W = L
    for x in (-0.36 * W, 0.36 * W):
        parts.append(BodyPart(Box(x, -0.1 * H, 0.09 * W, 0.1 * H, radius=0.03), tyre, 1, 0.02))
    if look.kind == "car":
        parts.append(BodyPart(Box(0.0, -0.4 * H, 0.5 * W, 0.24 * H, radius=0.07 * H), body, 1, 0.3))
        parts.append(BodyPart(Polygon(((-0.47 * W, -0.6 * H), (0.47 * W, -0.6 * H), (0.37 * W, -H), (-0.37 * W, -H))),
                              body, 1, 0.12))  # fmt: skip
        parts.append(BodyPart(Polygon(((-0.42 * W, -0.63 * H), (0.42 * W, -0.63 * H), (0.34 * W, -0.95 * H),
                                       (-0.34 * W, -0.95 * H))), glass, 1, 0.05))  # fmt: skip
    else:
        parts.append(BodyPart(Box(0.0, -0.56 * H, 0.5 * W, 0.44 * H, radius=0.05 * H), body, 1, 0.3))
        win_top = -0.93 * H if view == "front" else -0.9 * H
        parts.append(BodyPart(Box(0.0, (win_top - 0.62 * H) / 2, 0.42 * W, abs(win_top + 0.62 * H) / 2, radius=0.03),
                              glass, 1, 0.05))
    parts.append(BodyPart(Box(0.0, -0.2 * H, 0.5 * W, 0.05 * H, radius=0.02), dark, 1, 0.02))  # bumper
    parts.append(BodyPart(Box(0.0, -0.3 * H, 0.12 * W, 0.04 * H), _solid((0.92, 0.92, 0.88)), 1, 0.01))  # plate
    lamp = (0.8, 0.06, 0.05) if view == "back" else (0.95, 0.93, 0.82)
    for x in (-0.4 * W, 0.4 * W):
        parts.append(BodyPart(Box(x, -0.47 * H, 0.07 * W, 0.04 * H, radius=0.01), _solid(lamp), 1, 0.01))
    if view == "front":
        parts.append(BodyPart(Box(0.0, -0.42 * H, 0.22 * W, 0.05 * H, radius=0.01), dark, 1, 0.02))  # grille
    if look.sign:
        parts.append(BodyPart(Box(0.0, -1.04 * H, 0.15 * W, 0.05 * H, radius=0.02), _solid((0.95, 0.9, 0.6)), 1))
    return parts
