"""The moving-shapes world: discs, boxes and person-like blobs crossing and occluding each other on a static
textured background, deterministic per seed, with exact ground truth.

Scenes: ``shapes`` (discs, boxes and person-like blobs, cycling) and ``people`` (person-like blobs only).  Each
object has a fixed depth (distinct per object) and bounces inside the frame along a straight line through the
central band, so objects cross and occlude each other.  Object positions are a closed-form function of time, so
``SyntheticScene.truth(index)`` gives the exact ground truth of any frame (amodal masks, visible masks, depth
order) without simulating the frames before it, and ``render(index)`` its rgb24 ``uint8[H, W, 3]`` pixels.

Used by the ``synthetic://`` source (``amodal.streams.synthetic``), the demo and the ``maskrcnn`` training task.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amodal.errors import ConfigError

SCENES = ("shapes", "people")
SHAPE_KINDS = ("disc", "box", "person")


@dataclass(frozen=True)
class SyntheticSpec:
    """A scene: its kind, frame size, frame rate (positions are functions of ``index / fps``), object
    count, optional length and seed; what a ``synthetic://`` URI asks for."""

    scene: str = "shapes"
    width: int = 320
    height: int = 240
    fps: float = 25.0
    objects: int = 4
    seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scene not in SCENES:
            raise ConfigError(f"unknown synthetic scene {self.scene!r}; expected one of {SCENES}")
        if not (16 <= self.width <= 8192 and 16 <= self.height <= 8192):
            raise ConfigError(f"synthetic size must be within 16..8192, got {self.width}x{self.height}")
        if not 0 < self.fps <= 1000:
            raise ConfigError(f"synthetic fps must be in (0, 1000], got {self.fps}")
        if not 1 <= self.objects <= 64:
            raise ConfigError(f"synthetic objects must be in 1..64, got {self.objects}")
        if self.seconds is not None and self.seconds <= 0:
            raise ConfigError(f"synthetic seconds must be > 0, got {self.seconds}")

    @property
    def total_frames(self) -> int | None:
        return None if self.seconds is None else max(1, int(round(self.seconds * self.fps)))


@dataclass(frozen=True)
class SceneObject:
    """One moving object: shape, colour, half extents (px), depth (0 = front), start and velocity (px, px/s)."""

    object_id: int
    kind: str
    colour: tuple[int, int, int]
    half_w: float
    half_h: float
    depth: int
    x0: float
    y0: float
    vx: float
    vy: float


@dataclass(frozen=True)
class SyntheticTruth:
    """Exact ground truth of one frame; arrays are ordered like ``object_ids``.

    ``amodal_masks`` bool[N, H, W] (whole shapes, always inside the frame), ``visible_masks`` bool[N, H, W]
    (``amodal`` minus every object in front), ``boxes_xyxy`` float32[N, 4] (amodal boxes, pixels),
    ``occlusion`` float32[N] (hidden fraction of the amodal area), ``depth_order`` object ids front to back.
    """

    index: int
    object_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    depth_order: tuple[int, ...]
    amodal_masks: np.ndarray
    visible_masks: np.ndarray
    boxes_xyxy: np.ndarray
    occlusion: np.ndarray


def _bounce(p0: float, v: float, t_s: float, lo: float, hi: float) -> float:
    """Position at ``t_s`` of a point moving at ``v`` and reflecting between ``lo`` and ``hi``."""
    span = hi - lo
    if span <= 0:
        return lo
    u = (p0 - lo + v * t_s) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


class SyntheticScene:
    """The deterministic scene of a ``SyntheticSpec``: ``render(index)`` and ``truth(index)``."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        w, h = spec.width, spec.height
        depths = rng.permutation(spec.objects)
        self.objects: tuple[SceneObject, ...] = tuple(
            self._make_object(i, int(depths[i]), rng) for i in range(spec.objects)
        )
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._yy, self._xx = yy, xx
        texture = rng.integers(0, 24, size=(h, w, 1), dtype=np.int16)
        base = np.stack([40 + 60 * yy / h, 50 + 40 * xx / w, 70 + 30 * (1 - yy / h)], axis=-1)
        self._background = np.clip(base + texture, 0, 255).astype(np.uint8)

    def _make_object(self, i: int, depth: int, rng: np.random.Generator) -> SceneObject:
        spec = self.spec
        w, h = spec.width, spec.height
        kind = "person" if spec.scene == "people" else SHAPE_KINDS[i % len(SHAPE_KINDS)]
        size = float(rng.uniform(0.09, 0.16)) * min(w, h)
        half_w, half_h = (size * 0.55, size * 1.3) if kind == "person" else (size, size * float(rng.uniform(0.7, 1.0)))
        half_w, half_h = min(half_w, w / 2 - 1), min(half_h, h / 2 - 1)
        hue = (i * 0.618 + float(rng.uniform(0, 0.1))) % 1.0
        colour = tuple(int(c) for c in 80 + 175 * np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1))
        speed = float(rng.uniform(0.15, 0.35)) * w  # px/s: crosses the frame in 3-7 s
        return SceneObject(
            object_id=i,
            kind=kind,
            colour=colour,  # type: ignore[arg-type]
            half_w=half_w,
            half_h=half_h,
            depth=depth,
            x0=float(rng.uniform(half_w, w - half_w)),
            y0=float(rng.uniform(max(half_h, 0.35 * h), min(h - half_h, 0.65 * h))),
            vx=speed * (1 if rng.random() < 0.5 else -1),
            vy=float(rng.uniform(-0.04, 0.04)) * h,
        )

    def centre(self, obj: SceneObject, index: int) -> tuple[float, float]:
        """Centre (x, y) in pixels of ``obj`` in frame ``index``."""
        t_s = index / self.spec.fps
        cx = _bounce(obj.x0, obj.vx, t_s, obj.half_w, self.spec.width - obj.half_w)
        cy = _bounce(obj.y0, obj.vy, t_s, obj.half_h, self.spec.height - obj.half_h)
        return cx, cy

    def _mask(self, obj: SceneObject, index: int) -> np.ndarray:
        cx, cy = self.centre(obj, index)
        dx, dy = self._xx - cx, self._yy - cy
        if obj.kind == "disc":
            return (dx / obj.half_w) ** 2 + (dy / obj.half_h) ** 2 <= 1.0
        if obj.kind == "box":
            return (np.abs(dx) <= obj.half_w) & (np.abs(dy) <= obj.half_h)
        head_r = 0.3 * obj.half_h
        head = dx**2 + (dy + obj.half_h - head_r) ** 2 <= head_r**2
        body = (dx / obj.half_w) ** 2 + ((dy - 0.3 * obj.half_h) / (0.7 * obj.half_h)) ** 2 <= 1.0
        return head | body

    def truth(self, index: int) -> SyntheticTruth:
        """Ground truth of frame ``index`` (any index ≥ 0)."""
        if index < 0:
            raise ConfigError(f"frame index must be >= 0, got {index}")
        h, w = self.spec.height, self.spec.width
        amodal = np.stack([self._mask(o, index) for o in self.objects])
        visible = amodal.copy()
        front_to_back = sorted(self.objects, key=lambda o: o.depth)
        covered = np.zeros((h, w), dtype=bool)
        for obj in front_to_back:
            visible[obj.object_id] &= ~covered
            covered |= amodal[obj.object_id]
        boxes = np.zeros((len(self.objects), 4), dtype=np.float32)
        for i, mask in enumerate(amodal):
            ys, xs = np.nonzero(mask)
            if len(xs):
                boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        area = amodal.reshape(len(self.objects), -1).sum(1)
        hidden = area - visible.reshape(len(self.objects), -1).sum(1)
        return SyntheticTruth(
            index=index,
            object_ids=tuple(o.object_id for o in self.objects),
            class_names=tuple(o.kind for o in self.objects),
            depth_order=tuple(o.object_id for o in front_to_back),
            amodal_masks=amodal,
            visible_masks=visible,
            boxes_xyxy=boxes,
            occlusion=(hidden / np.maximum(area, 1)).astype(np.float32),
        )

    def render(self, index: int) -> np.ndarray:
        """uint8[H, W, 3] RGB of frame ``index``: objects painted back to front."""
        image = self._background.copy()
        for obj in sorted(self.objects, key=lambda o: -o.depth):
            mask = self._mask(obj, index)
            image[mask] = obj.colour
            # a darker horizontal band gives each object some texture
            cx, cy = self.centre(obj, index)
            inner = mask & (np.abs(self._yy - cy) < 0.15 * obj.half_h)
            image[inner] = tuple(c // 2 for c in obj.colour)
        return image
