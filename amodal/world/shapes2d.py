"""2-D signed-distance primitives and their rasterisation (X-ray items and articulated persons of the street
world and the ReID persons).

A shape lives in its own local frame (units of the caller: millimetres for X-ray items, body units for
persons); ``Pose`` places it in the image (pixels, pixel centres at (x + 0.5, y + 0.5), y down).
``sdf(u, v)`` is the signed distance in local units (negative inside).  Rasterising returns, over the
shape's pixel bounding box only, the distance in pixels; from it:
  coverage = clip(0.5 − d_px, 0, 1) (anti-aliased alpha), inside = d_px < 0 (pixel-centre mask),
  depth = −d (local units, how far inside the outline: drives thickness profiles).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


class Shape(Protocol):
    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray: ...

    def bounds(self) -> tuple[float, float, float, float]:
        """(u_min, v_min, u_max, v_max) in local units."""
        ...


@dataclass(frozen=True, slots=True)
class Pose:
    """Local → image: p_img = (cx, cy) + scale · R(angle) · (flip_u · u, v)."""

    cx: float
    cy: float
    angle_rad: float = 0.0
    scale: float = 1.0  # pixels per local unit
    flip: bool = False

    def to_local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.angle_rad), np.sin(self.angle_rad)
        dx, dy = (x - self.cx) / self.scale, (y - self.cy) / self.scale
        u = c * dx + s * dy
        v = -s * dx + c * dy
        return (-u if self.flip else u), v

    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = -np.asarray(u) if self.flip else np.asarray(u)
        c, s = np.cos(self.angle_rad), np.sin(self.angle_rad)
        x = self.cx + self.scale * (c * u - s * np.asarray(v))
        y = self.cy + self.scale * (s * u + c * np.asarray(v))
        return x, y


def _rot(u: np.ndarray, v: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to (cx, cy), rotated by −angle (into a primitive's own axes)."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cx, v - cy
    return c * du + s * dv, -s * du + c * dv


@dataclass(frozen=True, slots=True)
class Box:
    """Rounded rectangle: centre, half sizes, rotation (rad), corner radius (all local units)."""

    cx: float
    cy: float
    hw: float
    hh: float
    angle: float = 0.0
    radius: float = 0.0

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        a, b = _rot(u, v, self.cx, self.cy, self.angle)
        r = min(self.radius, self.hw, self.hh)
        qx = np.abs(a) - (self.hw - r)
        qy = np.abs(b) - (self.hh - r)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0) - r

    def bounds(self) -> tuple[float, float, float, float]:
        e = float(np.hypot(self.hw, self.hh))
        return (self.cx - e, self.cy - e, self.cx + e, self.cy + e)


@dataclass(frozen=True, slots=True)
class Ellipse:
    """Ellipse (approximate distance: exact on the axes, good enough for anti-aliasing)."""

    cx: float
    cy: float
    rx: float
    ry: float
    angle: float = 0.0

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        a, b = _rot(u, v, self.cx, self.cy, self.angle)
        k = np.hypot(a / self.rx, b / self.ry)
        return (k - 1.0) * min(self.rx, self.ry)

    def bounds(self) -> tuple[float, float, float, float]:
        e = max(self.rx, self.ry)
        return (self.cx - e, self.cy - e, self.cx + e, self.cy + e)


@dataclass(frozen=True, slots=True)
class Ring:
    """Annulus between ``r_inner`` and ``r_outer``; an optional gap (open jaw) of half-angle ``gap_rad``
    centred on direction ``gap_dir_rad``."""

    cx: float
    cy: float
    r_outer: float
    r_inner: float
    gap_rad: float = 0.0
    gap_dir_rad: float = 0.0

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du, dv = u - self.cx, v - self.cy
        r = np.hypot(du, dv)
        mid, half = 0.5 * (self.r_outer + self.r_inner), 0.5 * (self.r_outer - self.r_inner)
        d = np.abs(r - mid) - half
        if self.gap_rad > 0:
            ang = np.abs(np.angle(np.exp(1j * (np.arctan2(dv, du) - self.gap_dir_rad))))
            d = np.where(ang < self.gap_rad, np.maximum(d, (self.gap_rad - ang) * mid), d)
        return d

    def bounds(self) -> tuple[float, float, float, float]:
        return (self.cx - self.r_outer, self.cy - self.r_outer, self.cx + self.r_outer, self.cy + self.r_outer)


@dataclass(frozen=True, slots=True)
class Capsule:
    """Segment (x0, y0)–(x1, y1) swept by a radius varying linearly from r0 to r1 (tapered limb / rod)."""

    x0: float
    y0: float
    x1: float
    y1: float
    r0: float
    r1: float

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        ll = dx * dx + dy * dy
        t = np.clip(((u - self.x0) * dx + (v - self.y0) * dy) / max(ll, 1e-12), 0.0, 1.0)
        dist = np.hypot(u - (self.x0 + t * dx), v - (self.y0 + t * dy))
        return dist - (self.r0 + t * (self.r1 - self.r0))

    def bounds(self) -> tuple[float, float, float, float]:
        r = max(self.r0, self.r1)
        return (min(self.x0, self.x1) - r, min(self.y0, self.y1) - r, max(self.x0, self.x1) + r, max(self.y0, self.y1) + r)


@dataclass(frozen=True, slots=True)
class Polygon:
    """Simple polygon from vertices (float[N, 2] as a tuple of (u, v)); even-odd sign, exact edge distance."""

    points: tuple[tuple[float, float], ...]

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        pts = np.asarray(self.points, dtype=np.float64)
        d2 = np.full(np.shape(u), np.inf)
        inside = np.zeros(np.shape(u), dtype=bool)
        n = len(pts)
        for i in range(n):
            (ax, ay), (bx, by) = pts[i], pts[(i + 1) % n]
            ex, ey = bx - ax, by - ay
            t = np.clip(((u - ax) * ex + (v - ay) * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
            d2 = np.minimum(d2, (u - ax - t * ex) ** 2 + (v - ay - t * ey) ** 2)
            crosses = (ay > v) != (by > v)
            x_cross = ax + (v - ay) * ex / np.where(ey == 0, 1e-12, ey)
            inside ^= crosses & (u < x_cross)
        d = np.sqrt(d2)
        return np.where(inside, -d, d)

    def bounds(self) -> tuple[float, float, float, float]:
        pts = np.asarray(self.points)
        return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


@dataclass(frozen=True, slots=True)
class Polyline:
    """A thick curve: union of capsules of radius ``r`` along the points (cables, straps, zips)."""

    points: tuple[tuple[float, float], ...]
    r: float

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        d = np.full(np.shape(u), np.inf)
        for (ax, ay), (bx, by) in zip(self.points[:-1], self.points[1:]):
            d = np.minimum(d, Capsule(ax, ay, bx, by, self.r, self.r).sdf(u, v))
        return d

    def bounds(self) -> tuple[float, float, float, float]:
        pts = np.asarray(self.points)
        return (
            float(pts[:, 0].min()) - self.r,
            float(pts[:, 1].min()) - self.r,
            float(pts[:, 0].max()) + self.r,
            float(pts[:, 1].max()) + self.r,
        )


@dataclass(frozen=True, slots=True)
class Wobbly:
    """An ellipse whose outline is perturbed by a few random low-frequency waves (clothes, shoes, blobs).

    ``waves``: tuple of (amplitude, frequency, direction_rad, phase) in local units.
    """

    base: Ellipse
    waves: tuple[tuple[float, float, float, float], ...]

    def field(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Σ amp · sin(freq · (u cos d + v sin d) + phase).  On a 2-D pixel grid u, v are affine in (row, col),
        so each wave is evaluated separably: sin(r + c) = sin r cos c + cos r sin c (exact, O(H + W) sines)."""
        u, v = np.asarray(u), np.asarray(v)
        f = np.zeros(u.shape)
        grid = u.ndim == 2 and min(u.shape) >= 2
        for amp, freq, direction, phase in self.waves:
            cd, sd = np.cos(direction), np.sin(direction)
            if grid:
                col = freq * (u[0, :] * cd + v[0, :] * sd) + phase  # argument along the first row
                row = freq * ((u[:, 0] - u[0, 0]) * cd + (v[:, 0] - v[0, 0]) * sd)  # offset down the rows
                f += amp * (np.outer(np.sin(row), np.cos(col)) + np.outer(np.cos(row), np.sin(col)))
            else:
                f += amp * np.sin(freq * (u * cd + v * sd) + phase)
        return f

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.base.sdf(u, v) + self.field(u, v)

    def bounds(self) -> tuple[float, float, float, float]:
        pad = sum(abs(w[0]) for w in self.waves)
        b = self.base.bounds()
        return (b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad)


def bezier(points: Sequence[tuple[float, float]], n: int = 24) -> tuple[tuple[float, float], ...]:
    """Sample a Bézier curve of any degree at ``n`` points (de Casteljau)."""
    ctrl = np.asarray(points, dtype=np.float64)
    out = []
    for t in np.linspace(0.0, 1.0, n):
        p = ctrl.copy()
        while len(p) > 1:
            p = (1 - t) * p[:-1] + t * p[1:]
        out.append((float(p[0, 0]), float(p[0, 1])))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Raster:
    """A shape rasterised over its pixel bounding box ``[y0:y1, x0:x1]`` of an H×W image."""

    y0: int
    y1: int
    x0: int
    x1: int
    dist_px: np.ndarray  # float32[y1 − y0, x1 − x0], signed distance in pixels
    u: np.ndarray  # local coordinates of the pixel centres, same shape
    v: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def coverage(self) -> np.ndarray:
        return np.clip(0.5 - self.dist_px, 0.0, 1.0)

    def inside(self) -> np.ndarray:
        return self.dist_px < 0


def rasterise(shape: Shape, pose: Pose, height: int, width: int) -> Raster | None:
    """Evaluate ``shape`` placed by ``pose`` on the pixels it can touch; None when fully off-image."""
    b = shape.bounds()
    xs, ys = pose.to_image(np.array([b[0], b[2], b[0], b[2]]), np.array([b[1], b[1], b[3], b[3]]))
    x0, x1 = max(int(np.floor(xs.min())) - 1, 0), min(int(np.ceil(xs.max())) + 2, width)
    y0, y1 = max(int(np.floor(ys.min())) - 1, 0), min(int(np.ceil(ys.max())) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return None
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    u, v = pose.to_local(gx + 0.5, gy + 0.5)
    dist = shape.sdf(u, v) * pose.scale
    return Raster(y0, y1, x0, x1, dist.astype(np.float32), u, v)


@dataclass(frozen=True, slots=True)
class Band:
    """The strip of width ``width`` just inside the outline of ``inner`` (walls of a bag seen edge-on)."""

    inner: Shape
    width: float

    def sdf(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.abs(self.inner.sdf(u, v) + 0.5 * self.width) - 0.5 * self.width

    def bounds(self) -> tuple[float, float, float, float]:
        return self.inner.bounds()


def rotate_points(
    points: Sequence[tuple[float, float]], angle: float, origin: tuple[float, float] = (0.0, 0.0)
) -> tuple[tuple[float, float], ...]:
    """Rotate local points by ``angle`` (rad) about ``origin``."""
    c, s = np.cos(angle), np.sin(angle)
    ox, oy = origin
    return tuple(
        (float(ox + c * (x - ox) - s * (y - oy)), float(oy + s * (x - ox) + c * (y - oy))) for x, y in points
    )
