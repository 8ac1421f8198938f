"""Contact-sheet drawing shared by the X-ray and persons generators (PIL only, uint8 RGB tiles)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)  # fmt: skip


def to_display_rgb(img: np.ndarray) -> np.ndarray:
    """uint8 RGB passes through; uint16 grayscale is scaled to uint8 and repeated to RGB."""
    if img.ndim == 2:
        g = (img.astype(np.float32) / 257.0).round().astype(np.uint8) if img.dtype == np.uint16 else img
        return np.repeat(g[:, :, None], 3, axis=2)
    return img


def outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Draw the 1-px inner boundary of ``mask`` onto ``rgb`` (in place)."""
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = colour


def tint(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.45) -> None:
    """Blend ``colour`` over ``mask`` pixels (in place)."""
    rgb[mask] = ((1 - alpha) * rgb[mask] + alpha * np.asarray(colour)).astype(np.uint8)


def save_grid(tiles: list[np.ndarray], labels: list[str], out_png: Path, pad: int = 4) -> Path:
    """Tile uint8[H, W, 3] images (same size) in a near-square grid with a caption under each."""
    if not tiles:
        raise ValueError("no tiles to draw")
    h, w = tiles[0].shape[:2]
    cols = max(1, math.ceil(math.sqrt(len(tiles) * h / max(w, 1))))
    rows = math.ceil(len(tiles) / cols)
    cap = 12
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + cap + pad) + pad), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for k, (tile, label) in enumerate(zip(tiles, labels)):
        r, c = divmod(k, cols)
        x, y = pad + c * (w + pad), pad + r * (h + cap + pad)
        sheet.paste(Image.fromarray(tile), (x, y))
        draw.text((x, y + h), label[: max(4, w // 6)], fill=(230, 230, 230))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
