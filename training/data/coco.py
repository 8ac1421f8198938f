"""COCO instance sets (PIDray / Occ-PIDray style) → per-image records with masks decoded on demand.

Format read (``annotations/<split>.json``):
  ``images[{id, file_name, width, height}]``, ``categories[{id, name}]``,
  ``annotations[{id, image_id, category_id, bbox [x, y, w, h], area, iscrowd, segmentation,
  bg_object_segmentation?}]``.
``segmentation`` is a list of polygons (each a flat ``[x0, y0, x1, y1, ...]`` list, ≥ 3 points, pixel-edge
coordinates: pixel (c, r) covers [c, c+1) × [r, r+1)) or an RLE dict ``{"size": [H, W], "counts": str | list}``.
``bg_object_segmentation`` (Occ's occluder field) is a list of polygons, ``[]`` when the instance has no occluder.

Also the segmentation codec shared by the generators: :func:`segmentation_to_mask`, :func:`mask_to_polygons`,
:func:`mask_to_rle`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from amodal.errors import ConfigError

__all__ = [
    "CocoImageRecord",
    "CocoInstance",
    "CocoInstanceSet",
    "load_coco_instances",
    "mask_to_polygons",
    "mask_to_rle",
    "read_image",
    "drop_degenerate_polygons",
    "segmentation_to_mask",
    "validate_segmentation",
]


# ----------------------------------------------------------------------------------------------- codec
def validate_segmentation(segm: Any, height: int, width: int, *, where: str, allow_empty: bool = False) -> None:
    """Raise ConfigError (naming ``where``) unless ``segm`` is a valid polygon list or RLE dict for an H×W image."""
    if isinstance(segm, dict):
        size = segm.get("size")
        counts = segm.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise ConfigError(f"{where}: RLE segmentation needs 'size' [H, W], got {size!r}")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise ConfigError(f"{where}: RLE size {list(size)} differs from the image size [{height}, {width}]")
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise ConfigError(
                    f"{where}: uncompressed RLE counts sum to {sum(int(c) for c in counts)}, "
                    f"expected H*W = {height * width}"
                )
        elif not isinstance(counts, (str, bytes)):
            raise ConfigError(f"{where}: RLE 'counts' must be a string or a list, got {type(counts).__name__}")
        return
    if not isinstance(segm, list):
        raise ConfigError(f"{where}: segmentation must be a list of polygons or an RLE dict, got {type(segm).__name__}")
    if not segm and not allow_empty:
        raise ConfigError(f"{where}: empty segmentation")
    for k, poly in enumerate(segm):
        if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
            raise ConfigError(f"{where}: polygon {k} must be a flat list of numbers [x0, y0, x1, y1, ...]")
        if len(poly) % 2 or len(poly) < 6:
            raise ConfigError(f"{where}: polygon {k} has {len(poly)} coordinates; needs an even count ≥ 6 (3 points)")


def drop_degenerate_polygons(segm: Any) -> tuple[Any, int]:
    """Remove polygons with an odd count or fewer than 6 coordinates (< 3 points), as detectron2 and Occ do
    when reading real annotations; returns (cleaned segmentation, number dropped).  RLE passes through."""
    if not isinstance(segm, list):
        return segm, 0
    kept = [p for p in segm if not isinstance(p, list) or (len(p) >= 6 and len(p) % 2 == 0)]
    return kept, len(segm) - len(kept)


def segmentation_to_mask(segm: Any, height: int, width: int, *, where: str = "segmentation") -> np.ndarray:
    """COCO polygons or RLE → bool[H, W] (union of the polygons); ``[]`` gives an all-False mask."""
    from pycocotools import mask as mask_utils

    validate_segmentation(segm, height, width, where=where, allow_empty=True)
    if isinstance(segm, list):
        if not segm:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        counts = segm["counts"]
        rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove vertices lying on the straight line through their neighbours (closed polygon, float[N, 2])."""
    prev_pts = np.roll(points, 1, axis=0)
    next_pts = np.roll(points, -1, axis=0)
    cross = (points[:, 0] - prev_pts[:, 0]) * (next_pts[:, 1] - points[:, 1]) - (points[:, 1] - prev_pts[:, 1]) * (
        next_pts[:, 0] - points[:, 0]
    )
    return points[np.abs(cross) > 1e-9]


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """bool[H, W] → outer-boundary polygons (flat ``[x0, y0, ...]`` lists, pixel-edge coordinates).

    Traced at the 0.5 iso-level between pixel centres (contourpy), so re-rasterising with pycocotools gives
    the mask back exactly, except that holes are filled (COCO polygons are a union; hole contours are
    dropped).  Collinear vertices are removed, which loses nothing.
    """
    import contourpy

    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return []
    z = np.pad(m.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=z, line_type=contourpy.LineType.Separate).lines(0.5)
    polygons: list[list[float]] = []
    for line in lines:
        pts = np.asarray(line, dtype=np.float64)
        if len(pts) > 1 and np.allclose(pts[0], pts[-1]):
            pts = pts[:-1]
        x, y = pts[:, 0], pts[:, 1]
        signed_area = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
        if signed_area <= 0:  # hole (or degenerate): contourpy orients outer boundaries positively
            continue
        pts = _drop_collinear(pts)
        if len(pts) < 3:
            continue
        pts = pts - 0.5  # padded index space → pixel-edge coordinates (−1 for the pad, +0.5 to the centre)
        polygons.append([round(float(v), 2) for v in pts.ravel()])
    return polygons


def mask_to_rle(mask: np.ndarray) -> dict:
    """bool[H, W] → JSON-able compressed RLE ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def read_image(path: Path) -> np.ndarray:
    """An image file → uint8[H, W, 3] RGB, or uint16[H, W] for 16-bit grayscale (raw scanner transmission)."""
    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(img, dtype=np.uint16) if img.mode != "I" else np.asarray(img).astype(np.uint16)
        return np.asarray(img.convert("RGB"))


# ----------------------------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True, eq=False)
class CocoInstance:
    """One annotated instance; masks are decoded from the stored segmentation when asked for."""

    annotation_id: int
    image_id: int
    category_id: int
    category_name: str
    bbox_xywh: tuple[float, float, float, float]
    area: float
    iscrowd: bool
    height: int
    width: int
    segmentation: Any  # COCO polygons (list[list[float]]) or RLE dict
    occluder_segmentation: list | None  # bg_object_segmentation; None when the set has no such field

    @property
    def bbox_xyxy(self) -> tuple[float, float, float, float]:
        x, y, w, h = self.bbox_xywh
        return (x, y, x + w, y + h)

    def mask(self) -> np.ndarray:
        """bool[H, W]: the instance's (amodal, for X-ray) mask."""
        return segmentation_to_mask(self.segmentation, self.height, self.width, where=self._where("segmentation"))

    def occluder_mask(self) -> np.ndarray | None:
        """bool[H, W] union of the occluder polygons (all False when ``[]``); None when the field is absent."""
        if self.occluder_segmentation is None:
            return None
        return segmentation_to_mask(
            self.occluder_segmentation, self.height, self.width, where=self._where("bg_object_segmentation")
        )

    def _where(self, field: str) -> str:
        return f"annotation {self.annotation_id} (image {self.image_id}) {field}"


@dataclass(frozen=True, slots=True, eq=False)
class CocoImageRecord:
    """One image and its instances."""

    image_id: int
    file_name: str
    file_path: Path
    width: int
    height: int
    instances: tuple[CocoInstance, ...]

    def load_image(self) -> np.ndarray:
        """uint8[H, W, 3] RGB or uint16[H, W] (16-bit grayscale files)."""
        if not self.file_path.is_file():
            raise ConfigError(f"image {self.image_id}: file {self.file_path} does not exist")
        img = read_image(self.file_path)
        if img.shape[:2] != (self.height, self.width):
            raise ConfigError(
                f"image {self.image_id}: {self.file_path} is {img.shape[1]}x{img.shape[0]} (WxH) "
                f"but the annotation says {self.width}x{self.height}"
            )
        return img


@dataclass(frozen=True, slots=True, eq=False)
class CocoInstanceSet:
    """A loaded COCO instance set: ``categories`` maps id → name; records sorted by image id."""

    json_path: Path
    image_root: Path
    categories: dict[int, str]
    records: tuple[CocoImageRecord, ...]
    has_occluders: bool  # True when annotations carry bg_object_segmentation
    dropped_polygons: int = 0  # degenerate polygons (< 3 points) removed while reading
    skipped_annotations: tuple[int, ...] = ()  # ids of annotations left with no polygon (not in records)

    def __len__(self) -> int:
        return len(self.records)


def default_image_root(json_path: Path) -> Path:
    """``<root>/annotations/<split>.json`` → ``<root>/images/<split>`` (our layout); else the JSON's folder."""
    json_path = Path(json_path)
    candidate = json_path.parent.parent / "images" / json_path.stem
    return candidate if candidate.is_dir() else json_path.parent


def _require(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ConfigError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def load_coco_instances(json_path: Path, image_root: Path | None = None, *, check_files: bool = True) -> CocoInstanceSet:
    """Read and validate a COCO instance JSON.  Raises ConfigError naming the image or annotation at fault.

    ``image_root`` defaults to :func:`default_image_root`; with ``check_files`` every image file must exist.
    Segmentation structure is validated here; pixels are decoded only by ``CocoInstance.mask()``.
    Degenerate polygons (< 3 points, which real sets such as PIDray contain) are dropped and counted; an
    annotation left without any polygon is skipped and its id listed in ``skipped_annotations``.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise ConfigError(f"COCO annotation file {json_path} does not exist")
    try:
        data = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{json_path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{json_path}: top level must be an object with images/annotations/categories")
    root = Path(image_root) if image_root is not None else default_image_root(json_path)

    categories: dict[int, str] = {}
    for k, cat in enumerate(_require(data, "categories", list, str(json_path))):
        cid = _require(cat, "id", int, f"{json_path} category #{k}")
        if cid in categories:
            raise ConfigError(f"{json_path}: duplicate category id {cid}")
        categories[cid] = str(_require(cat, "name", str, f"{json_path} category {cid}"))

    images: dict[int, dict] = {}
    for k, img in enumerate(_require(data, "images", list, str(json_path))):
        iid = _require(img, "id", int, f"{json_path} image #{k}")
        where = f"{json_path} image {iid}"
        if iid in images:
            raise ConfigError(f"{json_path}: duplicate image id {iid}")
        _require(img, "file_name", str, where)
        w, h = _require(img, "width", int, where), _require(img, "height", int, where)
        if w <= 0 or h <= 0:
            raise ConfigError(f"{where}: size must be positive, got {w}x{h}")
        if check_files and not (root / img["file_name"]).is_file():
            raise ConfigError(f"{where}: image file {root / img['file_name']} does not exist")
        images[iid] = img

    per_image: dict[int, list[CocoInstance]] = {iid: [] for iid in images}
    seen_ann: set[int] = set()
    has_occluders = False
    dropped, skipped = 0, []
    for k, ann in enumerate(_require(data, "annotations", list, str(json_path))):
        aid = _require(ann, "id", int, f"{json_path} annotation #{k}")
        iid = _require(ann, "image_id", int, f"{json_path} annotation {aid}")
        where = f"{json_path} annotation {aid} (image {iid})"
        if aid in seen_ann:
            raise ConfigError(f"{json_path}: duplicate annotation id {aid}")
        seen_ann.add(aid)
        if iid not in images:
            raise ConfigError(f"{where}: refers to an image id that is not in 'images'")
        cid = _require(ann, "category_id", int, where)
        if cid not in categories:
            raise ConfigError(f"{where}: unknown category_id {cid}; known: {sorted(categories)}")
        bbox = _require(ann, "bbox", list, where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
            raise ConfigError(f"{where}: bbox must be [x, y, w, h] with w, h ≥ 0, got {bbox!r}")
        h, w = images[iid]["height"], images[iid]["width"]
        segm = ann.get("segmentation")
        if segm is None:
            raise ConfigError(f"{where}: missing field 'segmentation'")
        segm, n_bad = drop_degenerate_polygons(segm)
        if n_bad and segm == []:
            dropped += n_bad
            skipped.append(aid)
            continue
        validate_segmentation(segm, h, w, where=f"{where} segmentation")
        occ = ann.get("bg_object_segmentation")
        if occ is not None:
            has_occluders = True
            occ, n_bad_occ = drop_degenerate_polygons(occ)
            n_bad += n_bad_occ
            validate_segmentation(occ, h, w, where=f"{where} bg_object_segmentation", allow_empty=True)
        dropped += n_bad
        per_image[iid].append(
            CocoInstance(
                annotation_id=aid,
                image_id=iid,
                category_id=cid,
                category_name=categories[cid],
                bbox_xywh=tuple(float(v) for v in bbox),  # type: ignore[arg-type]
                area=float(ann.get("area", 0.0)),
                iscrowd=bool(ann.get("iscrowd", 0)),
                height=h,
                width=w,
                segmentation=segm,
                occluder_segmentation=occ,
            )
        )

    records = tuple(
        CocoImageRecord(
            image_id=iid,
            file_name=images[iid]["file_name"],
            file_path=root / images[iid]["file_name"],
            width=images[iid]["width"],
            height=images[iid]["height"],
            instances=tuple(sorted(per_image[iid], key=lambda inst: inst.annotation_id)),
        )
        for iid in sorted(images)
    )
    return CocoInstanceSet(
        json_path=json_path,
        image_root=root,
        categories=categories,
        records=records,
        has_occluders=has_occluders,
        dropped_polygons=dropped,
        skipped_annotations=tuple(skipped),
    )
