"""Identities and their 2-D articulated rendering for the persons (ReID) world.

An ``Identity`` is a fixed appearance (clothing colours and patterns, skin, hair, shoes, body proportions,
bag); ``draw_person`` renders it into an RGB canvas in body units (height 1.0 from the top of the head
to the soles, u to the right, v down) placed by a ``Pose``, for a viewpoint (front / back / side) and a
walking phase.  It paints back to front and returns the body's amodal mask and its parsing labels
(0 background, 1 head, 2 upper body incl. arms and hands, 3 lower body incl. legs, 4 shoes; carried bags
are not body parts and get 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amodal.world.shapes2d import Box, Capsule, Ellipse, Polygon, Pose, Shape, rasterise

HEAD, UPPER, LOWER, SHOES = 1, 2, 3, 4
VIEWS: tuple[str, ...] = ("front", "back", "side")

_CLOTHES = (
    ((0.08, 0.08, 0.09), 3.0), ((0.92, 0.92, 0.90), 2.0), ((0.50, 0.50, 0.52), 2.0), ((0.10, 0.14, 0.35), 2.0),
    ((0.20, 0.40, 0.75), 1.5), ((0.25, 0.35, 0.55), 2.0), ((0.75, 0.12, 0.12), 1.0), ((0.45, 0.08, 0.12), 0.7),
    ((0.20, 0.50, 0.25), 0.8), ((0.40, 0.42, 0.20), 0.6), ((0.72, 0.65, 0.45), 1.0), ((0.40, 0.26, 0.15), 1.0),
    ((0.90, 0.80, 0.20), 0.5), ((0.90, 0.50, 0.15), 0.4), ((0.90, 0.60, 0.70), 0.6), ((0.45, 0.25, 0.60), 0.5),
    ((0.85, 0.78, 0.65), 0.8), ((0.10, 0.50, 0.55), 0.5),
)  # fmt: skip
_HAIR = ((0.05, 0.04, 0.04), (0.18, 0.11, 0.07), (0.35, 0.22, 0.12), (0.75, 0.62, 0.38), (0.62, 0.62, 0.62))
_SKIN_LIGHT, _SKIN_DARK = np.array([0.96, 0.80, 0.70]), np.array([0.33, 0.21, 0.14])


@dataclass(frozen=True, slots=True)
class Paint:
    """A colour with an optional pattern in the part's body coordinates: solid | stripes | checks | logo | denim |
    suit (``base`` jacket, ``second`` shirt showing in a V below the collar, a tie down its middle)."""

    base: tuple[float, float, float]
    second: tuple[float, float, float]
    pattern: str = "solid"
    freq: float = 60.0  # cycles per body height · 2π

    def colour(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        base, second = np.asarray(self.base), np.asarray(self.second)
        if self.pattern == "stripes":
            w = (np.sin(v * self.freq) > 0.3)[..., None]
        elif self.pattern == "checks":
            w = ((np.sin(u * self.freq) > 0) ^ (np.sin(v * self.freq) > 0))[..., None]
        elif self.pattern == "logo":
            w = (np.hypot(u - 0.0, v - 0.26) < 0.04)[..., None]
        elif self.pattern == "denim":
            w = (0.5 + 0.5 * np.sin(u * 400 + v * 380) * np.sin(v * 170))[..., None] * 0.25
        elif self.pattern == "suit":
            shirt = (np.abs(u) < 0.05 * (0.37 - v) / 0.2) & (v < 0.37)
            tie = shirt & (np.abs(u) < 0.006 + 0.008 * (v - 0.17) / 0.2)
            tie_colour = np.array([0.45, 0.07, 0.1] if self.freq > 60 else [0.12, 0.14, 0.32])
            out = np.where(shirt[..., None], second, base)
            return np.where(tie[..., None], tie_colour, out)
        else:
            return np.broadcast_to(base, np.shape(u) + (3,))
        return (1 - w) * base + w * second


@dataclass(frozen=True, slots=True)
class Identity:
    """Fixed appearance of one person (all colours RGB in [0, 1])."""

    upper: Paint
    lower: Paint
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    shoes: tuple[float, float, float]
    long_sleeves: bool
    lower_kind: str  # trousers | shorts | skirt
    hair_style: str  # short | long | cap
    cap: tuple[float, float, float]
    bag: str  # none | backpack | shoulder | handbag
    bag_colour: tuple[float, float, float]
    height_scale: float  # fraction of the image height filled at scale 1
    width_scale: float
    leg_ratio: float  # fraction of the height from hip to sole
    face: bool = False  # eyes, brows, nose and mouth on the head (front and side views): close-up street people


def _pick(rng: np.random.Generator, table=_CLOTHES) -> tuple[float, float, float]:
    colours, weights = zip(*table)
    c = np.asarray(colours[int(rng.choice(len(colours), p=np.asarray(weights) / sum(weights)))])
    return tuple(float(x) for x in np.clip(c + rng.uniform(-0.06, 0.06, 3), 0, 1))  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator) -> Identity:
    upper, lower = _pick(rng), _pick(rng)
    skin = tuple(float(x) for x in _SKIN_LIGHT + rng.beta(1.3, 2.2) * (_SKIN_DARK - _SKIN_LIGHT))
    pattern = str(rng.choice(["solid", "stripes", "checks", "logo", "solid"], p=[0.45, 0.15, 0.1, 0.15, 0.15]))
    lower_kind = str(rng.choice(["trousers", "shorts", "skirt"], p=[0.7, 0.18, 0.12]))
    lower_pattern = "denim" if lower_kind == "trousers" and rng.random() < 0.4 else "solid"
    return Identity(
        upper=Paint(upper, _pick(rng), pattern, float(rng.uniform(40, 90))),
        lower=Paint(lower, tuple(float(x) for x in np.clip(np.asarray(lower) * 1.3, 0, 1)), lower_pattern),
        skin=skin,  # type: ignore[arg-type]
        hair=_HAIR[int(rng.integers(len(_HAIR)))],
        shoes=_pick(rng, _CLOTHES[:6] + _CLOTHES[10:12]),
        long_sleeves=bool(rng.random() < 0.55),
        lower_kind=lower_kind,
        hair_style=str(rng.choice(["short", "long", "cap"], p=[0.55, 0.3, 0.15])),
        cap=_pick(rng),
        bag=str(rng.choice(["none", "backpack", "shoulder", "handbag"], p=[0.45, 0.25, 0.2, 0.1])),
        bag_colour=_pick(rng),
        height_scale=float(rng.uniform(0.86, 0.97)),
        width_scale=float(rng.uniform(0.85, 1.2)),
        leg_ratio=float(rng.uniform(0.46, 0.52)),
    )


@dataclass(frozen=True, slots=True)
class BodyPart:
    shape: Shape
    paint: Paint
    label: int
    shade_mm: float = 0.03  # half-width (body units) over which edge shading falls off


def _solid(c) -> Paint:
    return Paint(tuple(c), tuple(c))


def body_parts(ident: Identity, view: str, phase: float) -> list[BodyPart]:
    """Parts in painting order (back to front) for a viewpoint and walking phase (rad)."""
    ws = ident.width_scale
    side = view == "side"
    tw = 0.62 if side else 1.0  # torso width factor seen from the side
    hip_v = 1.0 - ident.leg_ratio
    knee_v = hip_v + 0.5 * (0.96 - hip_v)
    swing = 0.10 * math.sin(phase) if side else 0.025 * math.sin(phase)
    skin, lower_paint = _solid(ident.skin), ident.lower
    parts_back: list[BodyPart] = []

    # bag behind the body (front view backpack hidden except rims; side view backpack behind torso)
    if ident.bag == "backpack" and view in ("front", "side"):
        u0 = -0.09 if side else 0.0
        parts_back.append(BodyPart(Box(u0, 0.3, 0.08 * ws if side else 0.1 * ws, 0.12, radius=0.03),
                                   _solid(ident.bag_colour), 0))  # fmt: skip

    # legs (far leg first), shoes
    legs = []
    for k, sgn in enumerate((-1.0, 1.0)):
        hip_u = 0.0 if side else sgn * 0.045 * ws
        knee_u = hip_u + (sgn * swing if side else sgn * 0.004)
        ankle_u = hip_u + (2.0 * sgn * swing if side else sgn * 0.008 + swing * sgn)
        thigh_paint = lower_paint
        shin_paint = skin if ident.lower_kind in ("shorts", "skirt") else lower_paint
        legs.append(
            [
                BodyPart(Capsule(hip_u, hip_v, knee_u, knee_v, 0.048 * ws, 0.038 * ws), thigh_paint, 3),
                BodyPart(Capsule(knee_u, knee_v, ankle_u, 0.94, 0.038 * ws, 0.028 * ws), shin_paint, 3),
                BodyPart(Ellipse(ankle_u + (0.02 if side else 0.0), 0.965, 0.05 if side else 0.035, 0.025),
                         _solid(ident.shoes), 4),  # fmt: skip
            ]
        )
    # torso
    sh_v, waist_v = 0.17, hip_v + 0.02
    torso = Polygon(((-0.11 * ws * tw, sh_v), (0.11 * ws * tw, sh_v), (0.085 * ws * tw, waist_v), (-0.085 * ws * tw, waist_v)))
    torso_paint = ident.upper
    if view == "back" and ident.upper.pattern == "logo":
        torso_paint = _solid(ident.upper.base)
    torso_part = BodyPart(torso, torso_paint, 2, 0.06)
    hips = BodyPart(Box(0.0, hip_v + 0.02, 0.085 * ws * tw, 0.04, radius=0.02), lower_paint, 3, 0.05)
    skirt = None
    if ident.lower_kind == "skirt":
        skirt = BodyPart(Polygon(((-0.085 * ws * tw, hip_v - 0.01), (0.085 * ws * tw, hip_v - 0.01),
                                  (0.13 * ws * tw, knee_v + 0.02), (-0.13 * ws * tw, knee_v + 0.02))), lower_paint, 3)  # fmt: skip
    # arms
    arms = []
    for sgn in (-1.0, 1.0):
        sh_u = 0.0 if side else sgn * 0.1 * ws * tw
        a = (-sgn if side else -1.0) * math.sin(phase) * (0.35 if side else 0.08)
        elbow = (sh_u + (math.sin(a) * 0.15 if side else sgn * 0.025), sh_v + 0.02 + 0.15 * math.cos(a))
        wrist = (elbow[0] + (math.sin(a * 1.5) * 0.14 if side else sgn * 0.01), elbow[1] + 0.14 * math.cos(a * 1.5))
        sleeve = ident.upper if ident.long_sleeves else _solid(ident.upper.base)
        arms.append(
            [
                BodyPart(Capsule(sh_u, sh_v + 0.02, *elbow, 0.034 * ws, 0.03 * ws), _solid(ident.upper.base), 2),
                BodyPart(Capsule(*elbow, *wrist, 0.03 * ws, 0.025 * ws), sleeve if ident.long_sleeves else skin, 2),
                BodyPart(Ellipse(wrist[0], wrist[1] + 0.02, 0.022, 0.03), skin, 2),
            ]
        )
    # head, face and hair
    head = BodyPart(Ellipse(0.01 if side else 0.0, 0.075, 0.055 if side else 0.052, 0.07), skin, 1, 0.04)
    neck = BodyPart(Box(0.0, 0.15, 0.022, 0.03), skin, 1)
    hair: list[BodyPart] = []
    hair_paint = _solid(ident.hair)
    face = _face_parts(ident, side) if ident.face and view != "back" else []
    if view == "back":
        hair.append(BodyPart(Ellipse(0.0, 0.07, 0.056, 0.072), hair_paint, 1))
    elif face:  # a hairline above the eyes, so the face shows
        hair.append(BodyPart(Ellipse(-0.02 if side else 0.0, 0.036, 0.056, 0.034), hair_paint, 1))
    else:
        hair.append(BodyPart(Ellipse(-0.012 if side else 0.0, 0.045, 0.057, 0.045), hair_paint, 1))
    if ident.hair_style == "long":
        hair_back = BodyPart(Box(-0.01 if side else 0.0, 0.15, 0.05 if side else 0.058, 0.07, radius=0.03), hair_paint, 1)
        if view == "back":
            hair.append(hair_back)
        else:
            parts_back.append(hair_back)
    if ident.hair_style == "cap":
        hair.append(BodyPart(Ellipse(0.0, 0.03, 0.06, 0.035), _solid(ident.cap), 1))
        if side:
            hair.append(BodyPart(Box(0.06, 0.045, 0.035, 0.008), _solid(ident.cap), 1))
    # bags in front
    front_bag: list[BodyPart] = []
    if ident.bag == "backpack" and view == "back":
        front_bag.append(BodyPart(Box(0.0, 0.31, 0.1 * ws, 0.13, radius=0.03), _solid(ident.bag_colour), 0, 0.06))
    if ident.bag in ("backpack", "shoulder") and view == "front":
        front_bag.append(BodyPart(Capsule(-0.08 * ws, 0.17, 0.06 * ws, hip_v - 0.02, 0.012, 0.012), _solid(ident.bag_colour), 2))
    if ident.bag == "shoulder":
        u_bag = 0.09 * ws if view != "back" else -0.09 * ws
        front_bag.append(BodyPart(Box(u_bag + (0.02 if side else 0.05), hip_v, 0.06, 0.055, radius=0.015),
                                  _solid(ident.bag_colour), 0, 0.04))  # fmt: skip
    if ident.bag == "handbag":
        wrist = arms[1][1].shape
        front_bag.append(BodyPart(Box(wrist.x1, wrist.y1 + 0.07, 0.045, 0.05, radius=0.015), _solid(ident.bag_colour), 0, 0.04))

    if side:  # far side first: far arm, far leg, torso, near leg, near arm
        order = arms[0] + legs[0] + ([skirt] if skirt else []) + [hips, torso_part] + legs[1] + arms[1]
    else:
        order = legs[0] + legs[1] + [hips] + ([skirt] if skirt else []) + [torso_part] + arms[0] + arms[1]
    return parts_back + order + [neck, head] + face + hair + front_bag


def _face_parts(ident: Identity, side: bool) -> list[BodyPart]:
    """Eyes, brows, nose shadow and mouth in body units (both eyes from the front, the near one from the side)."""
    skin = np.asarray(ident.skin)
    dark = _solid(np.asarray(ident.hair) * 0.6 + 0.04)
    eye = _solid((0.1, 0.08, 0.07))
    shadow = _solid(skin * 0.78)
    lips = _solid(np.clip(skin * np.array([0.85, 0.55, 0.55]), 0, 1))
    eyes_u = (0.035,) if side else (-0.02, 0.02)
    parts = []
    for u in eyes_u:
        parts.append(BodyPart(Ellipse(u, 0.079, 0.009, 0.0045), _solid((0.92, 0.9, 0.88)), 1, 0.01))
        parts.append(BodyPart(Ellipse(u + (0.002 if side else 0.0), 0.079, 0.004, 0.004), eye, 1, 0.01))
        parts.append(BodyPart(Box(u, 0.069, 0.011, 0.0025, radius=0.002), dark, 1, 0.01))
    nose_u = 0.052 if side else 0.0
    parts.append(BodyPart(Ellipse(nose_u, 0.1, 0.008 if side else 0.007, 0.012), shadow, 1, 0.01))
    parts.append(BodyPart(Ellipse(0.03 if side else 0.0, 0.121, 0.008 if side else 0.014, 0.0045), lips, 1, 0.01))
    return parts


@dataclass(frozen=True, slots=True, eq=False)
class DrawnBody:
    amodal: np.ndarray  # bool[H, W], the full body silhouette (hidden parts included)
    labels: np.ndarray  # uint8[H, W], parsing labels of the body as drawn (0 where not body)
    painted: np.ndarray | None = None  # bool[H, W], every part's pixels (carried bags included)


def draw_person(
    canvas: np.ndarray, ident: Identity, pose: Pose, view: str, phase: float, *, shade: bool = True
) -> DrawnBody:
    """Paint ``ident`` onto float32 canvas[H, W, 3] (in place); ``pose.scale`` = pixels per body height."""
    return draw_parts(canvas, body_parts(ident, view, phase), pose, shade=shade)


def draw_parts(canvas: np.ndarray, parts: list[BodyPart], pose: Pose, *, shade: bool = True) -> DrawnBody:
    """Paint ``parts`` back to front onto float32 canvas[H, W, 3] (in place, anti-aliased); the amodal mask is the
    union of the parts with a label ≠ 0 (pixel centres inside), ``labels`` the label on top at each of its pixels."""
    h, w = canvas.shape[:2]
    amodal = np.zeros((h, w), dtype=bool)
    painted = np.zeros((h, w), dtype=bool)
    labels = np.zeros((h, w), dtype=np.uint8)
    for part in parts:
        r = rasterise(part.shape, pose, h, w)
        if r is None:
            continue
        cov = r.coverage()[..., None]
        colour = part.paint.colour(r.u, r.v)
        if shade:
            depth = np.clip(-r.dist_px / (pose.scale * part.shade_mm), 0.0, 1.0)
            colour = colour * (0.72 + 0.28 * np.sqrt(depth))[..., None]
        win = r.window
        canvas[win] = (1 - cov) * canvas[win] + cov * colour
        inside = r.inside()
        labels[win] = np.where(inside, part.label, labels[win])
        painted[win] |= inside
        if part.label:
            amodal[win] |= inside
    labels[~amodal] = 0
    return DrawnBody(amodal, labels, painted)
