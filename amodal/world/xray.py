"""X-ray baggage scenes (PIDray-like): a bag with clutter and the 12 prohibited classes, rendered by dual-energy
Beer–Lambert physics (``amodal.world.xray_physics``) from parametric contents (``amodal.world.xray_items``).

The renderer behind ``amodal data synth xray`` (which adds the COCO annotations, in ``training/``) and the X-ray demo
(``python -m amodal.demo --feed xray``).  ``sample_scene`` places the components (bag, clutter, items; a share of
items over earlier ones), ``render_scene`` measures the two energies; a ``RenderedScene`` gives the 8-bit
pseudo-colour image or the 16-bit high-energy transmission, and every component's exact mask.  X-ray items are
see-through: an item's full silhouette is its mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amodal.errors import ConfigError
from amodal.world.shapes2d import Pose
from amodal.world.xray_items import (
    ITEM_BUILDERS,
    PIDRAY_CLASSES,
    Component,
    bag,
    cable,
    clothes,
    component_rasters,
    electronics,
    misc,
    render_components,
)
from amodal.world.xray_physics import Detector, measure, pseudo_colour, transmission_to_uint16

_CLUTTER = ((clothes, 0.4), (electronics, 0.2), (cable, 0.2), (misc, 0.2))


@dataclass(frozen=True, slots=True)
class BagConfig:
    """One scene's size and contents: ``items_min..items_max`` prohibited items, ``clutter_min..clutter_max``
    clutter objects, each item placed over an earlier one with probability ``overlap_prob``."""

    width: int = 256
    height: int = 256
    items_min: int = 1
    items_max: int = 4
    clutter_min: int = 4
    clutter_max: int = 10
    overlap_prob: float = 0.5

    def __post_init__(self) -> None:
        if not (32 <= self.width <= 4096 and 32 <= self.height <= 4096):
            raise ConfigError(f"image size must be within 32..4096, got {self.width}x{self.height}")
        if not 1 <= self.items_min <= self.items_max:
            raise ConfigError(f"need 1 <= items-min <= items-max, got {self.items_min}, {self.items_max}")
        if not 0 <= self.clutter_min <= self.clutter_max:
            raise ConfigError(f"need 0 <= clutter-min <= clutter-max, got {self.clutter_min}, {self.clutter_max}")
        if not 0.0 <= self.overlap_prob <= 1.0:
            raise ConfigError(f"overlap_prob must be in [0, 1], got {self.overlap_prob}")


# --------------------------------------------------------------------------------------------- scene
def _inside_image(comp: Component, width: int, height: int, margin_px: float = 1.0) -> bool:
    for part in comp.parts:
        b = part.shape.bounds()
        xs, ys = comp.pose.to_image(np.array([b[0], b[2], b[0], b[2]]), np.array([b[1], b[1], b[3], b[3]]))
        if xs.min() < -margin_px or ys.min() < -margin_px or xs.max() > width + margin_px or ys.max() > height + margin_px:
            return False
    return True


def _silhouette(comp: Component, width: int, height: int, cache: dict | None = None) -> np.ndarray:
    """bool[H, W]: pixel centres inside any part of ``comp``."""
    mask = np.zeros((height, width), dtype=bool)
    for raster in component_rasters(comp, height, width, cache):
        if raster is not None:
            mask[raster.window] |= raster.inside()
    return mask


def _fraction_outside(mask: np.ndarray, region: np.ndarray) -> float:
    area = int(mask.sum())
    return 1.0 if area == 0 else float((mask & ~region).sum()) / area


def _item_extent_mm(comp_parts) -> float:
    b = np.array([p.shape.bounds() for p in comp_parts])
    return float(max(b[:, 2].max() - b[:, 0].min(), b[:, 3].max() - b[:, 1].min()))


def sample_scene(rng: np.random.Generator, cfg: BagConfig, cache: dict | None = None) -> list[Component]:
    """A bag with clutter and prohibited items; components in image pixels via their poses.

    ``cache`` (optional) keeps the rasters computed for placement checks, for ``render_scene`` to reuse.
    """
    w, h = cfg.width, cfg.height
    bag_len, bag_wid = rng.uniform(450, 650), rng.uniform(300, 420)
    portrait = h > w
    angle = rng.uniform(-0.12, 0.12) + (math.pi / 2 if portrait else 0.0)
    long_px, short_px = (h, w) if portrait else (w, h)
    ppm = 0.92 * min(long_px / bag_len, short_px / bag_wid)
    bag_pose = Pose(w / 2 + rng.uniform(-0.03, 0.03) * w, h / 2 + rng.uniform(-0.03, 0.03) * h, angle, ppm)
    bag_parts = tuple(bag(rng, bag_len, bag_wid))
    comps = [Component("bag", "bag", 0, bag_parts, bag_pose)]
    inside = _silhouette(Component("bag", "bag", 0, bag_parts[:1], bag_pose), w, h)

    def spot(frac: float) -> tuple[float, float]:
        u = rng.uniform(-frac, frac) * bag_len / 2
        v = rng.uniform(-frac, frac) * bag_wid / 2
        x, y = bag_pose.to_image(np.array(u), np.array(v))
        return float(x), float(y)

    builders, weights = zip(*_CLUTTER)
    for _ in range(int(rng.integers(cfg.clutter_min, cfg.clutter_max + 1))):
        builder = builders[int(rng.choice(len(builders), p=np.asarray(weights) / sum(weights)))]
        parts = tuple(builder(rng))
        for _attempt in range(8):
            x, y = spot(0.7)
            pose = Pose(x, y, rng.uniform(0, 2 * math.pi), ppm * rng.uniform(0.9, 1.1), bool(rng.random() < 0.5))
            comp = Component("clutter", builder.__name__, 0, parts, pose)
            if _fraction_outside(_silhouette(comp, w, h, cache), inside) < 0.02:
                comps.append(comp)
                break

    placed: list[Component] = []
    for _ in range(int(rng.integers(cfg.items_min, cfg.items_max + 1))):
        cid = int(rng.integers(1, len(PIDRAY_CLASSES) + 1))
        name = PIDRAY_CLASSES[cid - 1]
        parts = tuple(ITEM_BUILDERS[name](rng))
        extent_mm = _item_extent_mm(parts)
        for attempt in range(25):
            scale = ppm * rng.uniform(0.85, 1.15)
            if extent_mm * scale > 0.8 * min(w, h):  # keep long items (extended batons) inside the image
                scale = 0.8 * min(w, h) / extent_mm
            if placed and rng.random() < cfg.overlap_prob:
                anchor = placed[int(rng.integers(len(placed)))].pose
                reach = 0.3 * extent_mm * scale
                x, y = anchor.cx + rng.uniform(-reach, reach), anchor.cy + rng.uniform(-reach, reach)
            else:
                x, y = spot(0.7 if attempt < 20 else 0.2)
            comp = Component("item", name, cid, parts, Pose(x, y, rng.uniform(0, 2 * math.pi), scale, bool(rng.random() < 0.5)))
            if _inside_image(comp, w, h) and (attempt >= 15 or _fraction_outside(_silhouette(comp, w, h, cache), inside) < 0.05):
                break
        else:
            continue
        placed.append(comp)
    return comps + placed


# ----------------------------------------------------------------------------------------------- render
@dataclass(frozen=True, slots=True, eq=False)
class RenderedScene:
    t_low: np.ndarray  # float32[H, W] measured low-energy transmission
    t_high: np.ndarray  # float32[H, W] measured high-energy transmission
    components: list[Component]
    masks: list[np.ndarray]  # bool[H, W] per component

    def image(self, gray16: bool) -> np.ndarray:
        """uint16[H, W] raw high-energy transmission, or uint8[H, W, 3] pseudo-colour."""
        return transmission_to_uint16(self.t_high) if gray16 else pseudo_colour(self.t_low, self.t_high)


def render_scene(
    components: list[Component], width: int, height: int, rng: np.random.Generator, detector: Detector,
    cache: dict | None = None,
) -> RenderedScene:
    a_low, a_high, masks = render_components(components, height, width, cache)
    t_low, t_high = measure(a_low, a_high, detector, rng)
    return RenderedScene(t_low, t_high, components, masks)


def render_bag(seed: int, index: int, cfg: BagConfig, *, noise: bool = True) -> RenderedScene:
    """Bag ``index`` of the sequence ``seed``: a function of (seed, index) only (``amodal data synth xray``'s image k
    with the same settings)."""
    rng = np.random.default_rng([seed, index])
    cache: dict = {}
    return render_scene(sample_scene(rng, cfg, cache), cfg.width, cfg.height, rng, Detector(noise=noise), cache)
