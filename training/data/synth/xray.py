"""X-ray baggage (PIDray-like): dual-energy Beer–Lambert renders of bags with clutter and the 12 prohibited
classes, written as a COCO instance set with exact masks and occluder annotations.

Layout written (PIDray / Occ-PIDray format, usable unchanged by a loader of the real data):
  ``<out>/images/<split>/<split>_NNNNNN.png`` — 8-bit RGB pseudo-colour, or 16-bit grayscale with ``--gray16``
  (the high-energy transmission, 65535 = open beam);
  ``<out>/annotations/<split>.json`` — COCO: images, categories (12 PIDray names, ids 1..12), annotations
  ``{id, image_id, category_id, segmentation, area, bbox (xywh), iscrowd, bg_object_segmentation,
  clutter_occluder_segmentation}``; ``<out>/amodal_dataset.json`` — the marker with the generator settings.
X-ray items are see-through: an item's full silhouette is its mask (amodal = visible, as in PIDray).
The scenes themselves (sampling and dual-energy rendering) come from ``amodal.world.xray``, shared with the demo.
``bg_object_segmentation`` follows SYSTEMS §4 (other prohibited items); ``clutter_occluder_segmentation`` is
the same rule applied to the clutter (union of clutter silhouettes inside the item's box, > 20 px, touching it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from amodal.errors import ConfigError
from amodal.training.data.coco import load_coco_instances, mask_to_polygons, mask_to_rle, segmentation_to_mask
from amodal.training.data.occlusion_annotation import OcclusionRule, occluder_masks
from amodal.training.data.synth.contact import PALETTE, outline, save_grid, tint, to_display_rgb
from amodal.world.xray import BagConfig, RenderedScene, render_scene, sample_scene
from amodal.world.xray_items import PIDRAY_CLASSES
from amodal.world.xray_physics import Detector

GENERATOR_VERSION = 1
MARKER = "amodal_dataset.json"


@dataclass(frozen=True, slots=True)
class XrayConfig:
    width: int = 256
    height: int = 256
    items_min: int = 1
    items_max: int = 4
    clutter_min: int = 4
    clutter_max: int = 10
    gray16: bool = False
    split: str = "train"
    segm: str = "polygon"  # polygon | rle
    overlap_prob: float = 0.5  # chance an item is placed over an earlier one
    min_item_area_px: int = 40
    noise: bool = True

    def __post_init__(self) -> None:
        self.bag()  # the scene settings are validated by the renderer's own config
        if self.segm not in ("polygon", "rle"):
            raise ConfigError(f"--segm must be polygon or rle, got {self.segm!r}")
        if not self.split or any(c in self.split for c in "/\\ "):
            raise ConfigError(f"--split must be a plain name, got {self.split!r}")

    def bag(self) -> BagConfig:
        """The scene part of the settings (``amodal.world.xray``'s renderer)."""
        return BagConfig(self.width, self.height, self.items_min, self.items_max, self.clutter_min, self.clutter_max,
                         self.overlap_prob)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = XrayConfig()
    parser.add_argument("--width", type=int, default=d.width, help="image width in pixels")
    parser.add_argument("--height", type=int, default=d.height, help="image height in pixels")
    parser.add_argument("--items-min", type=int, default=d.items_min, help="fewest prohibited items per image")
    parser.add_argument("--items-max", type=int, default=d.items_max, help="most prohibited items per image")
    parser.add_argument("--clutter-min", type=int, default=d.clutter_min, help="fewest clutter objects per bag")
    parser.add_argument("--clutter-max", type=int, default=d.clutter_max, help="most clutter objects per bag")
    parser.add_argument("--gray16", action="store_true", help="write 16-bit grayscale high-energy transmission")
    parser.add_argument("--split", default=d.split, help="split name: annotations/<split>.json, images/<split>/")
    parser.add_argument("--segm", choices=("polygon", "rle"), default=d.segm, help="segmentation encoding")


def config_from_args(args: argparse.Namespace) -> XrayConfig:
    return XrayConfig(
        width=args.width,
        height=args.height,
        items_min=args.items_min,
        items_max=args.items_max,
        clutter_min=args.clutter_min,
        clutter_max=args.clutter_max,
        gray16=bool(args.gray16),
        split=args.split,
        segm=args.segm,
    )


def coco_categories() -> list[dict]:
    return [{"id": k + 1, "name": name, "supercategory": "prohibited"} for k, name in enumerate(PIDRAY_CLASSES)]


# ----------------------------------------------------------------------------------------------- annotate
def _encode(mask: np.ndarray, segm: str):
    return mask_to_rle(mask) if segm == "rle" else mask_to_polygons(mask)


def _box_xywh(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def annotate_scene(scene: RenderedScene, image_id: int, first_ann_id: int, segm: str) -> list[dict]:
    """COCO annotations of the scene's items with occluders by the §4 rule (items) and for clutter."""
    h, w = scene.t_high.shape
    items = [(c, m) for c, m in zip(scene.components, scene.masks) if c.kind == "item"]
    clutter = np.zeros((h, w), dtype=bool)
    for c, m in zip(scene.components, scene.masks):
        if c.kind == "clutter":
            clutter |= m
    entries = []
    for comp, mask in items:
        if int(mask.sum()) == 0:
            continue
        segmentation = _encode(mask, segm)
        stored = segmentation_to_mask(segmentation, h, w)  # what a loader will decode (polygons fill holes)
        if not stored.any():
            continue
        entries.append((comp, segmentation, stored))
    rule = OcclusionRule()
    occ = occluder_masks([e[2] for e in entries], [_box_xywh(e[2]) for e in entries], rule)
    anns = []
    for k, ((comp, segmentation, stored), occ_mask) in enumerate(zip(entries, occ)):
        bbox = _box_xywh(stored)
        x0, y0, x1, y1 = int(bbox[0]), int(bbox[1]), int(bbox[0] + bbox[2]), int(bbox[1] + bbox[3])
        clutter_in_box = np.zeros_like(clutter)
        clutter_in_box[y0:y1, x0:x1] = clutter[y0:y1, x0:x1]
        keep_clutter = int(clutter_in_box.sum()) > rule.min_pixels and (clutter_in_box & stored).any()
        anns.append(
            {
                "id": first_ann_id + k,
                "image_id": image_id,
                "category_id": comp.category_id,
                "segmentation": segmentation,
                "area": float(stored.sum()),
                "bbox": bbox,
                "iscrowd": 0,
                "bg_object_segmentation": mask_to_polygons(occ_mask) if occ_mask is not None else [],
                "clutter_occluder_segmentation": mask_to_polygons(clutter_in_box) if keep_clutter else [],
            }
        )
    return anns


def _write_image(path: Path, img: np.ndarray) -> None:
    """uint8 RGB → 8-bit PNG; uint16[H, W] → 16-bit grayscale PNG (PIL mode I;16)."""
    Image.fromarray(np.ascontiguousarray(img)).save(path, compress_level=3)


def _write_marker(out_dir: Path, seed: int, n: int, cfg: XrayConfig) -> None:
    marker = out_dir / MARKER
    splits = {}
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous.get("kind") == "xray":
            splits = previous.get("splits", {})
    settings = {"seed": seed, "n": n, "width": cfg.width, "height": cfg.height, "gray16": cfg.gray16,
                "items_min": cfg.items_min, "items_max": cfg.items_max, "segm": cfg.segm}  # fmt: skip
    splits[cfg.split] = settings
    marker.write_text(
        json.dumps(
            {"kind": "xray", "seed": seed, "n": n, "generator_version": GENERATOR_VERSION, "split": cfg.split,
             "format": "coco", "classes": list(PIDRAY_CLASSES), "splits": splits},  # fmt: skip
            indent=1,
        )
    )


def generate(out_dir: Path, n: int, seed: int, args: argparse.Namespace) -> dict:
    """Write ``n`` images of split ``args.split``; image k is a function of (seed, k) only."""
    cfg = config_from_args(args)
    if n <= 0:
        raise ConfigError(f"n must be > 0, got {n}")
    out_dir = Path(out_dir)
    img_dir = out_dir / "images" / cfg.split
    ann_dir = out_dir / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    detector = Detector(noise=cfg.noise)
    images, annotations = [], []
    start = time.perf_counter()
    for k in tqdm(range(n), desc=f"synth xray {cfg.split}", unit="img", file=sys.stderr):
        rng = np.random.default_rng([seed, k])
        cache: dict = {}
        scene = render_scene(sample_scene(rng, cfg.bag(), cache), cfg.width, cfg.height, rng, detector, cache)
        name = f"{cfg.split}_{k:06d}.png"
        _write_image(img_dir / name, scene.image(cfg.gray16))
        images.append({"id": k + 1, "file_name": name, "width": cfg.width, "height": cfg.height})
        annotations += annotate_scene(scene, k + 1, len(annotations) + 1, cfg.segm)
    elapsed = time.perf_counter() - start
    coco = {
        "info": {"description": "amodal synthetic X-ray baggage (PIDray-like)", "version": GENERATOR_VERSION,
                 "seed": seed},  # fmt: skip
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    ann_path = ann_dir / f"{cfg.split}.json"
    ann_path.write_text(json.dumps(coco))
    _write_marker(out_dir, seed, n, cfg)
    return {
        "split": cfg.split,
        "images": n,
        "instances": len(annotations),
        "instances_with_occluder": sum(1 for a in annotations if a["bg_object_segmentation"]),
        "instances_with_clutter_occluder": sum(1 for a in annotations if a["clutter_occluder_segmentation"]),
        "annotations": str(ann_path),
        "images_per_s": round(n / max(elapsed, 1e-9), 2),
    }


def contact_sheet(dataset_dir: Path, out_png: Path, max_items: int) -> Path:
    """Images with item outlines (class colour) and occluder masks (magenta: items, cyan: clutter)."""
    dataset_dir = Path(dataset_dir)
    jsons = sorted((dataset_dir / "annotations").glob("*.json"))
    if not jsons:
        raise ConfigError(f"{dataset_dir}: no annotations/*.json")
    tiles, labels = [], []
    for json_path in jsons:
        data = load_coco_instances(json_path)
        raw = json.loads(json_path.read_text())
        clutter_segm = {a["id"]: a.get("clutter_occluder_segmentation") for a in raw["annotations"]}
        for rec in data.records:
            if len(tiles) >= max_items:
                break
            rgb = to_display_rgb(rec.load_image()).copy()
            for inst in rec.instances:
                mask = inst.mask()
                occ = inst.occluder_mask()
                occ = occ if occ is not None else np.zeros_like(mask)
                tint(rgb, occ & mask, (255, 0, 255), 0.35)
                csegm = clutter_segm.get(inst.annotation_id)
                if csegm:
                    cmask = segmentation_to_mask(csegm, rec.height, rec.width)
                    tint(rgb, cmask & mask & ~occ, (0, 220, 255), 0.25)
            for inst in rec.instances:
                outline(rgb, inst.mask(), PALETTE[(inst.category_id - 1) % len(PALETTE)])
            tiles.append(rgb)
            labels.append(",".join(sorted({i.category_name for i in rec.instances})))
    return save_grid(tiles, labels, out_png)
