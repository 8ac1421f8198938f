"""Synthetic sequential amodal segmentation (occlusion layers) in the SAS layout.

Still RGB images of overlapping textured objects (the video world's categories seen side-on) over a textured
background. Occlusion layers follow from the rendered amodal masks and the depth order: an object that no
nearer object overlaps is layer 1; otherwise its layer is 1 + the deepest layer among the nearer objects whose
amodal masks overlap it (so layer k is occluded only by objects of layers < k, at least one of them k − 1).

Output under ``out``::

    amodal_dataset.json
    layers.json                      {"images": [{file, width, height, num_layers, objects[{id, layer,
                                      category_id, category, depth_rank (0 = nearest), amodal (RLE),
                                      visible (RLE), occlusion_level}], layer_masks[L+1], cumulative_masks[L+1]}],
                                      "categories": [...]}
    images/<name>.png
    masks/<name>_layer<k>.png        k = 1..L+1: union of the amodal masks of layer k (L+1: the empty stop target)
    masks/<name>_cum<k>.png          k = 1..L+1: union of the amodal masks of layers < k (cum1 is empty)

Masks are 8-bit PNGs, 255 inside.

``--format sas`` writes the seed's own layout instead (saraao/SAS ``ACOMDataset``): one folder per image and layer
``<image id>_<k>`` (k = 0..L, 0 = the unoccluded layer, L = the empty stop target), each with ``image.png`` (the RGB
image), ``mask.png`` (layer k's union of amodal masks) and ``newmask.png`` (the cumulative mask of layers < k);
``layers.json`` then points its ``file``/``layer_masks``/``cumulative_masks`` into those folders, so the object
annotations (and ``amodal eval layers``) read the same files.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amodal.errors import ConfigError
from amodal.world import render as R

GENERATOR_VERSION = 1
FORMATS = ("json", "sas")


@dataclass(frozen=True, slots=True)
class LayersConfig:
    size: int = 64
    objects_min: int = 2
    objects_max: int = 6
    max_layers: int = 4
    min_visible_fraction: float = 0.15
    min_area_px: int = 12

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ConfigError(f"--size must be ≥ 16, got {self.size}")
        if not 1 <= self.objects_min <= self.objects_max:
            raise ConfigError(f"need 1 ≤ --objects-min ≤ --objects-max, got {self.objects_min}, {self.objects_max}")
        if self.max_layers < 1:
            raise ConfigError(f"--max-layers must be ≥ 1, got {self.max_layers}")
        if not 0.0 <= self.min_visible_fraction < 1.0:
            raise ConfigError(f"--min-visible-fraction must be in [0, 1), got {self.min_visible_fraction}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LayersConfig()
    parser.add_argument("--size", type=int, default=d.size, help="image side in pixels (SAS uses 64)")
    parser.add_argument("--objects-min", type=int, default=d.objects_min)
    parser.add_argument("--objects-max", type=int, default=d.objects_max)
    parser.add_argument("--max-layers", type=int, default=d.max_layers, help="objects deeper than this are left out")
    parser.add_argument("--min-visible-fraction", type=float, default=d.min_visible_fraction,
                        help="objects more hidden than this are left out (their shape would be unknowable)")
    parser.add_argument("--format", choices=FORMATS, default="json",
                        help="json: images/ + masks/ + layers.json; sas: the seed's <id>_<layer>/{image,mask,"
                             "newmask}.png folders (+ layers.json pointing into them)")


def config_from_args(args: argparse.Namespace) -> LayersConfig:
    return LayersConfig(size=args.size, objects_min=args.objects_min, objects_max=args.objects_max,
                        max_layers=args.max_layers, min_visible_fraction=args.min_visible_fraction)


def assign_layers(amodal: np.ndarray, order_near_to_far: list[int]) -> dict[int, int]:
    """Occlusion layer of each object from amodal masks bool[N, H, W] and a depth order (nearest first):
    1 when no nearer object overlaps it, else 1 + the deepest layer among the nearer overlapping objects."""
    layers: dict[int, int] = {}
    for pos, i in enumerate(order_near_to_far):
        deepest = 0
        for j in order_near_to_far[:pos]:
            if np.logical_and(amodal[i], amodal[j]).any():
                deepest = max(deepest, layers[j])
        layers[i] = deepest + 1
    return layers


def layer_targets(amodal: np.ndarray, layers: list[int], num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """(layer_masks bool[L+1, H, W], cumulative bool[L+1, H, W]): layer k's union (index k−1; the last is the
    empty stop target) and the union of all layers before k."""
    h, w = amodal.shape[1:]
    layer_masks = np.zeros((num_layers + 1, h, w), bool)
    for mask, layer in zip(amodal, layers):
        layer_masks[layer - 1] |= mask
    cumulative = np.zeros_like(layer_masks)
    for k in range(1, num_layers + 1):
        cumulative[k] = cumulative[k - 1] | layer_masks[k - 1]
    return layer_masks, cumulative


@dataclass(frozen=True, slots=True)
class LayeredImage:
    rgb: np.ndarray  # uint8[H, W, 3]
    amodal: np.ndarray  # bool[N, H, W], kept objects
    visible: np.ndarray  # bool[N, H, W]
    layers: list[int]
    depth_rank: list[int]  # 0 = nearest
    categories: list[str]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    tex = R.random_texture(rng)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = float(rng.uniform(6, 20))
    colour = tex.colour(xs / scale, ys / scale) * 0.8
    grad = 0.8 + 0.4 * (ys / size)[..., None]
    return (colour * grad).astype(np.float32)


def render_layered(rng: np.random.Generator, cfg: LayersConfig) -> LayeredImage:
    """One image with its kept objects (nearest first), each within ``max_layers`` and visible enough."""
    S = cfg.size
    n = int(rng.integers(cfg.objects_min, cfg.objects_max + 1))
    centre = rng.uniform(0.35, 0.65, size=2) * S
    cands = []
    for _ in range(n):
        cat = str(rng.choice([name for _, name in R.CATEGORIES]))
        h_m, w_m = R.sample_size_m(cat, rng)
        target_px = float(rng.uniform(0.3, 0.7)) * S
        scale = target_px / max(h_m, w_m)
        foot = centre + rng.normal(0, 0.18 * S, size=2) + np.array([0.0, 0.5 * h_m * scale])
        facing = 1 if rng.random() < 0.5 else -1
        prims = R.shape_primitives(cat, h_m, w_m, float(rng.uniform(0, 2 * np.pi)), facing)
        ys, xs = np.mgrid[0:S, 0:S].astype(np.float64)
        x_m = (xs + 0.5 - foot[0]) / scale
        z_m = (foot[1] - (ys + 0.5)) / scale
        parts = R.rasterise(prims, x_m, z_m)
        cands.append((cat, h_m, parts, x_m, z_m, R.instance_textures(cat, rng)))
    order = list(rng.permutation(n))  # nearest first
    kept: list[int] = []
    layers: dict[int, int] = {}
    covered = np.zeros((S, S), bool)
    visible: dict[int, np.ndarray] = {}
    for i in order:
        amo = cands[i][2] >= 0
        area = int(amo.sum())
        if area < cfg.min_area_px:
            continue
        vis = amo & ~covered
        if vis.sum() < cfg.min_visible_fraction * area:
            continue
        deepest = max((layers[j] for j in kept if np.logical_and(amo, cands[j][2] >= 0).any()), default=0)
        if deepest + 1 > cfg.max_layers:
            continue
        layers[i] = deepest + 1
        visible[i] = vis
        kept.append(i)
        covered |= amo
    rgb = _background(rng, S)
    for i in reversed(kept):
        cat, h_m, parts, x_m, z_m, tex = cands[i]
        inside = parts >= 0
        rgb[inside] = R.paint_parts(parts, x_m, z_m, tex, h_m)[inside]
    rgb8 = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    amodal = np.stack([cands[i][2] >= 0 for i in kept]) if kept else np.zeros((0, S, S), bool)
    vis_arr = np.stack([visible[i] for i in kept]) if kept else np.zeros((0, S, S), bool)
    return LayeredImage(rgb8, amodal, vis_arr, [layers[i] for i in kept], list(range(len(kept))),
                        [cands[i][0] for i in kept])


def _save_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path, compress_level=1)


def write_sas_image(out_dir: Path, image_id: int, rgb: np.ndarray, layer_masks: np.ndarray,
                    cumulative: np.ndarray) -> tuple[str, list[str], list[str]]:
    """Write one image in the SAS layout: for k = 0..L (``layer_masks``/``cumulative`` bool[L+1, H, W], the last
    layer the empty stop target) the folder ``<image_id>_<k>/`` with ``image.png`` (uint8[H, W, 3] ``rgb``),
    ``mask.png`` (layer k) and ``newmask.png`` (the layers before k).  Returns the relative paths (image of folder
    0, masks, cumulative masks) for ``layers.json``."""
    from PIL import Image

    if layer_masks.shape != cumulative.shape or layer_masks.shape[1:] != rgb.shape[:2]:
        raise ConfigError(f"image {image_id}: layer masks {layer_masks.shape}, cumulative {cumulative.shape} and "
                          f"image {rgb.shape} disagree")
    layer_files, cum_files = [], []
    for k in range(len(layer_masks)):
        folder = out_dir / f"{image_id}_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / "image.png", compress_level=1)
        _save_mask(folder / "mask.png", layer_masks[k])
        _save_mask(folder / "newmask.png", cumulative[k])
        layer_files.append(f"{image_id}_{k}/mask.png")
        cum_files.append(f"{image_id}_{k}/newmask.png")
    return f"{image_id}_0/image.png", layer_files, cum_files


def generate(out_dir: Path, n: int, seed: int, args: argparse.Namespace) -> dict:
    """Write ``n`` layered images under ``out_dir``; returns counts and the layer-count histogram."""
    from PIL import Image
    from tqdm import tqdm

    cfg = config_from_args(args)
    if n <= 0:
        raise ConfigError(f"n must be > 0, got {n}")
    layout = getattr(args, "format", "json")
    if layout not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got {layout!r}")
    out_dir = Path(out_dir)
    if layout == "json":
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    cat_ids = {name: cid for cid, name in R.CATEGORIES}
    records = []
    hist: dict[int, int] = {}
    for k in tqdm(range(n), desc="synth layers", unit="image", leave=False):
        rng = np.random.default_rng([seed, k])
        img = render_layered(rng, cfg)
        while not img.layers:
            img = render_layered(rng, cfg)
        L = max(img.layers)
        hist[L] = hist.get(L, 0) + 1
        layer_masks, cumulative = layer_targets(img.amodal, img.layers, L)
        if layout == "sas":
            image_file, layer_files, cum_files = write_sas_image(out_dir, k, img.rgb, layer_masks, cumulative)
        else:
            name = f"img{k:06d}"
            image_file = f"images/{name}.png"
            Image.fromarray(img.rgb).save(out_dir / image_file, compress_level=1)
            layer_files, cum_files = [], []
            for idx in range(L + 1):
                layer_files.append(f"masks/{name}_layer{idx + 1}.png")
                cum_files.append(f"masks/{name}_cum{idx + 1}.png")
                _save_mask(out_dir / layer_files[-1], layer_masks[idx])
                _save_mask(out_dir / cum_files[-1], cumulative[idx])
        objects = []
        for j in range(len(img.layers)):
            a_area = int(img.amodal[j].sum())
            objects.append({
                "id": j + 1, "layer": img.layers[j], "category_id": cat_ids[img.categories[j]],
                "category": img.categories[j], "depth_rank": img.depth_rank[j],
                "amodal": R.rle_encode(img.amodal[j]), "visible": R.rle_encode(img.visible[j]),
                "occlusion_level": 1.0 - int(img.visible[j].sum()) / a_area})
        records.append({"file": image_file, "width": cfg.size, "height": cfg.size, "num_layers": L,
                        "objects": objects, "layer_masks": layer_files, "cumulative_masks": cum_files})
    (out_dir / "layers.json").write_text(json.dumps({"images": records, "categories": R.coco_categories()}))
    histogram = {str(k): hist[k] for k in sorted(hist)}
    marker = {"kind": "layers", "format": layout, "seed": seed, "n": n, "generator_version": GENERATOR_VERSION, "size": cfg.size,
              "max_layers": cfg.max_layers, "categories": R.coco_categories(), "layer_histogram": histogram}
    (out_dir / "amodal_dataset.json").write_text(json.dumps(marker, indent=1))
    return {"images": n, "objects": sum(len(r["objects"]) for r in records), "layer_histogram": histogram}


def contact_sheet(dataset_dir: Path, out_png: Path, max_items: int) -> Path:
    """PNG: one row per image: the image with amodal outlines coloured by layer (occluded parts hatched), then
    for k = 1..L+1 the layer-k target (colour) over the cumulative mask of earlier layers (grey)."""
    from PIL import Image, ImageDraw

    from amodal.training.data.layers import LayersDataset

    ds = LayersDataset(Path(dataset_dir))
    if len(ds) == 0:
        raise ConfigError(f"{dataset_dir}: no images to draw")
    items = [ds[i] for i in range(min(max_items, len(ds)))]
    zoom = max(1, 160 // max(it.image.shape[0] for it in items))
    cols = max(it.num_layers for it in items) + 2
    th, tw = (max(it.image.shape[0] for it in items) * zoom, max(it.image.shape[1] for it in items) * zoom)
    label_h = 12
    sheet = Image.new("RGB", (cols * (tw + 2), len(items) * (th + label_h + 2)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for r, it in enumerate(items):
        y = r * (th + label_h + 2)
        draw.text((2, y), f"{it.name}: {it.num_layers} layers", fill=(255, 255, 255))
        vis = [o.visible for o in it.objects]
        amo = [o.amodal for o in it.objects]
        tiles = [R.overlay(it.image, vis, amo, [o.layer for o in it.objects])]
        for k in range(it.num_layers + 1):
            tile = np.zeros(it.image.shape, np.uint8)
            tile[it.cumulative_masks[k]] = 90
            tile[it.layer_masks[k]] = R.palette(k + 1)
            tiles.append(tile)
        for c, tile in enumerate(tiles):
            big = np.kron(tile, np.ones((zoom, zoom, 1), np.uint8))
            sheet.paste(Image.fromarray(big), (c * (tw + 2), y + label_h))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
