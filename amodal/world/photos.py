"""Real photographs for the street world's backgrounds and textures: the images scikit-image ships in
``skimage/data`` (no download), loaded once, lazily, so the world imports without scikit-image until a scene
asks for a photograph.

Photographs that show people, faces, vehicles or animals (astronaut, camera, lfw_subset, motorcycle_*, chelsea,
horse) are left out:
an unlabelled person or car in a background would teach a detector that people and cars are background.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from amodal.errors import ConfigError

#: surfaces (ground, walls): grey-level textures tinted per scene
TEXTURES: tuple[str, ...] = ("brick.png", "grass.png", "gravel.png")
#: scenes and objects for backdrops, posters and clutter
PICTURES: tuple[str, ...] = ("rocket.jpg", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                             "retina.jpg", "coins.png", "page.png", "text.png", "moon.png", "clock_motion.png",
                             "color.png")
_MAX_SIDE_PX = 256


def _data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - requirements.txt pins scikit-image
        raise ConfigError("the street world's photographs need scikit-image (pip install scikit-image==0.26.0)") from exc
    return Path(skimage.data.__file__).parent


@functools.lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """float32[h, w, 3] in [0, 1] of one shipped photograph, longer side at most 256 px (read-only)."""
    from PIL import Image

    path = _data_dir() / name
    if not path.is_file():
        raise ConfigError(f"scikit-image photograph {name!r} not found under {path.parent}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = _MAX_SIDE_PX / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.BILINEAR)
        out = np.asarray(im, dtype=np.float32) / 255.0
    out.setflags(write=False)
    return out


def random_patch(rng: np.random.Generator, h: int, w: int, names: tuple[str, ...] = PICTURES) -> np.ndarray:
    """float32[h, w, 3]: a random crop of a random photograph resampled to h × w, randomly mirrored and
    colour-jittered (domain randomisation where the photographs cannot be the real thing)."""
    src = photo(names[int(rng.integers(len(names)))])
    sh, sw = src.shape[:2]
    ch = int(rng.integers(max(8, sh // 4), sh + 1))
    cw = int(np.clip(round(ch * (w / max(h, 1)) * rng.uniform(0.7, 1.4)), 8, sw))
    y0 = int(rng.integers(0, sh - ch + 1))
    x0 = int(rng.integers(0, sw - cw + 1))
    ys = (y0 + (np.arange(h) + 0.5) * ch / h).astype(np.int64).clip(0, sh - 1)
    xs = (x0 + (np.arange(w) + 0.5) * cw / w).astype(np.int64).clip(0, sw - 1)
    patch = src[ys][:, xs]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    gain = rng.uniform(0.7, 1.2, 3).astype(np.float32)
    return np.clip(patch * gain, 0, 1).astype(np.float32)


def tiled(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float32[..., 3]: photograph ``name`` tiled (mirrored at its edges) and sampled at pixel coordinates u, v."""
    src = photo(name)
    sh, sw = src.shape[:2]

    def fold(x: np.ndarray, n: int) -> np.ndarray:
        k = np.floor(x).astype(np.int64) % (2 * n)
        return np.where(k < n, k, 2 * n - 1 - k)

    return src[fold(v, sh), fold(u, sw)]
