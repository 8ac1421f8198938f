"""MBF's mask-guided background augmentation for person ReID training images (plus random erasing).

With probability ``apply_prob`` an occlusion is put on one half of the image (top, bottom, left or right, chosen
at random): with probability ``foreground_prob`` the foreground pixels of another identity in that half (its
parsing mask > 0, shifted at random: a person standing in front), otherwise a rectangular region occluder (a crop
of the other image, whatever it shows). Random erasing then blanks a random rectangle with noise (probability
``erase_prob``). Every covered pixel becomes background (0) in the parsing target, so the part classifier learns
that occluders are not body.

Images are uint8[H, W, 3], parsing maps uint8[H, W] (0 background, 1 head, 2 upper, 3 lower, 4 shoes); every
random draw comes from the numpy Generator passed in, so the result is deterministic per generator state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from amodal.errors import ConfigError

HALVES: tuple[str, ...] = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class ReIDAugmentConfig:
    """Probabilities and ranges of the augmentation (see the module docstring)."""

    apply_prob: float = 0.5
    foreground_prob: float = 0.8
    foreground_shift: float = 0.25
    region_extent: tuple[float, float] = (0.5, 1.0)
    erase_prob: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.2)
    erase_aspect: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        for name in ("apply_prob", "foreground_prob", "erase_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"ReIDAugmentConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.foreground_shift <= 0.5:
            raise ConfigError(f"ReIDAugmentConfig.foreground_shift must be in [0, 0.5], got {self.foreground_shift!r}")
        for name in ("region_extent", "erase_area", "erase_aspect"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high or (name != "erase_aspect" and high > 1.0):
                raise ConfigError(f"ReIDAugmentConfig.{name} must be an increasing positive range"
                                  f"{'' if name == 'erase_aspect' else ' within (0, 1]'}, got {(low, high)!r}")
            object.__setattr__(self, name, (float(low), float(high)))


def _half_box(shape: tuple[int, int], half: str) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of one half of an H×W image."""
    h, w = shape
    return {"top": (0, 0, h // 2, w), "bottom": (h // 2, 0, h, w), "left": (0, 0, h, w // 2),
            "right": (0, w // 2, h, w)}[half]


def _resize(array: np.ndarray, height: int, width: int, nearest: bool) -> np.ndarray:
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((width, height), method))


def paste_foreground(image: np.ndarray, donor_image: np.ndarray, donor_parsing: np.ndarray, half: str,
                     rng: np.random.Generator, max_shift: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with the donor's foreground pixels (parsing > 0) of ``half`` pasted over it, shifted by a random
    offset of up to ``max_shift`` × the image size per axis and clipped to that half (another person standing in
    front). Returns (image uint8[H, W, 3], covered bool[H, W])."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = _half_box((h, w), half)
    dy = int(rng.integers(-int(max_shift * h), int(max_shift * h) + 1))
    dx = int(rng.integers(-int(max_shift * w), int(max_shift * w) + 1))
    shifted_mask = np.zeros((h, w), dtype=bool)
    shifted_image = np.zeros_like(image)
    src_y, dst_y = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    src_x, dst_x = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    shifted_mask[dst_y, dst_x] = donor_parsing[src_y, src_x] > 0
    shifted_image[dst_y, dst_x] = donor_image[src_y, src_x]
    covered = np.zeros((h, w), dtype=bool)
    covered[y0:y1, x0:x1] = shifted_mask[y0:y1, x0:x1]
    out = image.copy()
    out[covered] = shifted_image[covered]
    return out, covered


def paste_region(image: np.ndarray, donor_image: np.ndarray, half: str, rng: np.random.Generator,
                 extent: tuple[float, float] = (0.5, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with a rectangle of the donor image (resized) covering part of ``half``, flush with the image's
    outer edge of that half. Returns (image uint8[H, W, 3], covered bool[H, W])."""
    out = image.copy()
    h, w = image.shape[:2]
    y0, x0, y1, x1 = _half_box((h, w), half)
    depth = float(rng.uniform(*extent))
    span = float(rng.uniform(*extent))
    if half in ("top", "bottom"):
        occ_h, occ_w = max(1, round((y1 - y0) * depth)), max(1, round(w * span))
        top = 0 if half == "top" else h - occ_h
        left = int(rng.integers(0, w - occ_w + 1))
    else:
        occ_h, occ_w = max(1, round(h * span)), max(1, round((x1 - x0) * depth))
        left = 0 if half == "left" else w - occ_w
        top = int(rng.integers(0, h - occ_h + 1))
    dh, dw = donor_image.shape[:2]
    src_h, src_w = min(dh, max(1, occ_h)), min(dw, max(1, occ_w))
    sy, sx = int(rng.integers(0, dh - src_h + 1)), int(rng.integers(0, dw - src_w + 1))
    out[top:top + occ_h, left:left + occ_w] = _resize(donor_image[sy:sy + src_h, sx:sx + src_w], occ_h, occ_w,
                                                      nearest=False)
    covered = np.zeros((h, w), dtype=bool)
    covered[top:top + occ_h, left:left + occ_w] = True
    return out, covered


def random_erase(image: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = (0.02, 0.2),
                 aspect: tuple[float, float] = (0.3, 3.3), attempts: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A random rectangle (area fraction and log-uniform aspect in the ranges) filled with uniform noise.
    Returns (image, covered bool[H, W]); nothing is erased when no rectangle fits in ``attempts`` draws."""
    h, w = image.shape[:2]
    out = image.copy()
    covered = np.zeros((h, w), dtype=bool)
    for _ in range(attempts):
        target = float(rng.uniform(*area)) * h * w
        ratio = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]))))
        eh, ew = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
        if 0 < eh < h and 0 < ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            out[top:top + eh, left:left + ew] = rng.integers(0, 256, size=(eh, ew, 3), dtype=np.uint8)
            covered[top:top + eh, left:left + ew] = True
            break
    return out, covered


def background_augment(image: np.ndarray, parsing: np.ndarray, donor_image: np.ndarray, donor_parsing: np.ndarray,
                       rng: np.random.Generator, config: ReIDAugmentConfig = ReIDAugmentConfig(),
                       occlusion: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occlusion (when ``occlusion``; see the module docstring) then random erasing.

    image uint8[H, W, 3], parsing uint8[H, W]; the donor (another identity) has the same H×W. Returns
    (image uint8[H, W, 3], parsing uint8[H, W] with covered pixels 0, covered bool[H, W])."""
    if image.shape[:2] != parsing.shape or donor_image.shape[:2] != donor_parsing.shape:
        raise ConfigError(f"background_augment: image/parsing sizes differ: {image.shape[:2]} vs {parsing.shape}, "
                          f"donor {donor_image.shape[:2]} vs {donor_parsing.shape}")
    if donor_image.shape[:2] != image.shape[:2]:
        raise ConfigError(f"background_augment: donor size {donor_image.shape[:2]} != image size {image.shape[:2]}")
    covered = np.zeros(parsing.shape, dtype=bool)
    if occlusion and rng.random() < config.apply_prob:
        half = HALVES[int(rng.integers(len(HALVES)))]
        if rng.random() < config.foreground_prob:
            image, pasted = paste_foreground(image, donor_image, donor_parsing, half, rng, config.foreground_shift)
        else:
            image, pasted = paste_region(image, donor_image, half, rng, config.region_extent)
        covered |= pasted
    if rng.random() < config.erase_prob:
        image, erased = random_erase(image, rng, config.erase_area, config.erase_aspect)
        covered |= erased
    parsing = np.where(covered, 0, parsing).astype(np.uint8)
    return image, parsing, covered
