"""Readers of the occlusion-layers formats (sequential amodal segmentation, SAS).

Two layouts, both read into ``LayersItem``s (``open_layers_dataset`` picks one):

* JSON (``LayersDataset``): ``root/layers.json`` lists images; per image: ``file``, ``width``, ``height``, ``num_layers`` (L), ``objects``
(``layer`` in 1..L, ``category_id``, ``amodal``/``visible`` COCO RLE), and L+1 ``layer_masks`` /
``cumulative_masks`` PNG paths (255 inside): layer k's union of amodal masks (the (L+1)-th is the empty stop
target) and the union of all layers before k.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amodal.errors import ConfigError
from amodal.training.data.ovis import decode_segmentation


@dataclass(frozen=True, slots=True)
class LayerObject:
    id: int
    layer: int  # 1 = unoccluded layer
    category_id: int
    amodal: np.ndarray  # bool[H, W]
    visible: np.ndarray  # bool[H, W]


@dataclass(frozen=True, slots=True)
class LayersItem:
    name: str
    image: np.ndarray  # uint8[H, W, 3]
    objects: tuple[LayerObject, ...]
    num_layers: int
    layer_masks: np.ndarray  # bool[L+1, H, W]; index k−1 is layer k, the last is empty
    cumulative_masks: np.ndarray  # bool[L+1, H, W]; index k−1 is the union of layers < k


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    with Image.open(path) as im:
        return np.asarray(im)


class LayersDataset:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / "layers.json"
        if not path.is_file():
            raise ConfigError(f"{path}: not found (expected a layers dataset folder)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ConfigError(f"{path}: missing list 'images'")
        self.json_path = path
        self.records: list[dict] = data["images"]
        self.categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        for rec in self.records:
            self._validate(rec)

    def _validate(self, rec: dict) -> None:
        name = rec.get("file", "?")
        try:
            L = int(rec["num_layers"])
            int(rec["width"]), int(rec["height"])
            objects = rec["objects"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.json_path}: image {name} lacks num_layers/width/height/objects") from exc
        for key in ("layer_masks", "cumulative_masks"):
            got = len(rec.get(key) or [])
            if got != L + 1:
                raise ConfigError(f"{self.json_path}: image {name} has {got} {key}, expected num_layers + 1 = {L + 1}")
        for obj in objects:
            layer = obj.get("layer")
            if not isinstance(layer, int) or not 1 <= layer <= L:
                raise ConfigError(f"{self.json_path}: image {name} object {obj.get('id')} has layer {layer!r}, "
                                  f"expected 1..{L}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LayersItem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} out of range ({len(self)} images in {self.root})")
        rec = self.records[index]
        H, W, L = int(rec["height"]), int(rec["width"]), int(rec["num_layers"])
        image_path = self.root / rec["file"]
        image = _read_png(image_path)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = np.ascontiguousarray(image[..., :3])
        if image.shape[:2] != (H, W):
            raise ConfigError(f"{image_path}: image is {image.shape[1]}x{image.shape[0]}, layers.json says {W}x{H}")
        objects = []
        for obj in rec["objects"]:
            try:
                amodal = decode_segmentation(obj["amodal"], H, W)
                visible = decode_segmentation(obj["visible"], H, W)
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"{self.json_path}: image {rec['file']} object {obj.get('id')}: {exc}") from exc
            objects.append(LayerObject(int(obj.get("id", len(objects) + 1)), int(obj["layer"]),
                                       int(obj.get("category_id", 0)), amodal, visible))
        stacks = []
        for key in ("layer_masks", "cumulative_masks"):
            masks = []
            for rel in rec[key]:
                m = _read_png(self.root / rel)
                if m.shape[:2] != (H, W):
                    raise ConfigError(f"{self.root / rel}: mask is {m.shape[1]}x{m.shape[0]}, image is {W}x{H}")
                masks.append(m.reshape(H, W, -1)[..., 0] > 127)
            stacks.append(np.stack(masks))
        return LayersItem(Path(rec["file"]).stem, image, tuple(objects), L, stacks[0], stacks[1])


SAS_FILES = ("image.png", "mask.png", "newmask.png")
_SAS_FOLDER = re.compile(r"^(\d+)_(\d+)$")


class SasLayersDataset:
    """The seed's layout (module docstring): images sorted by integer id; ``items[i]`` = (id, folders k = 0..L).

    Construction checks the folder names, that each image's layers run 0..L without a gap and that every folder
    holds ``image.png``, ``mask.png`` and ``newmask.png``; reading an image checks that all its files have one
    size.  Every error names the folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: not a folder (expected SAS <image id>_<layer>/ folders)")
        by_id: dict[int, dict[int, Path]] = {}
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir():
                continue
            match = _SAS_FOLDER.match(entry.name)
            if match is None:
                raise ConfigError(f"{entry}: folder name is not <image id>_<layer> (digits, e.g. 1013_0)")
            missing = [f for f in SAS_FILES if not (entry / f).is_file()]
            if missing:
                raise ConfigError(f"{entry}: missing {', '.join(missing)} (a SAS layer folder holds "
                                  f"{', '.join(SAS_FILES)})")
            by_id.setdefault(int(match.group(1)), {})[int(match.group(2))] = entry
        if not by_id:
            raise ConfigError(f"{self.root}: no <image id>_<layer>/ folders")
        self.items: list[tuple[int, tuple[Path, ...]]] = []
        for image_id in sorted(by_id):
            layers = by_id[image_id]
            gaps = sorted(set(range(max(layers) + 1)) - set(layers))
            if gaps:
                raise ConfigError(f"{self.root / f'{image_id}_{gaps[0]}'}: missing (image {image_id} has layer "
                                  f"folders {sorted(layers)}, expected 0..{max(layers)})")
            if len(layers) < 2:
                raise ConfigError(f"{layers[0]}: image {image_id} has one layer folder; the last folder is the "
                                  f"empty stop target, so at least {image_id}_0 and {image_id}_1 are needed")
            self.items.append((image_id, tuple(layers[k] for k in range(len(layers)))))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LayersItem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} out of range ({len(self)} images in {self.root})")
        image_id, folders = self.items[index]
        image = None
        layer_masks, cumulative = [], []
        for folder in folders:
            arrays = {name: _read_png(folder / name) for name in SAS_FILES}
            sizes = {name: a.shape[:2] for name, a in arrays.items()}
            if len(set(sizes.values())) != 1:
                raise ConfigError(f"{folder}: files of different sizes "
                                  + ", ".join(f"{n} {s[1]}x{s[0]}" for n, s in sizes.items()))
            if image is None:
                rgb = arrays["image.png"]
                image = np.ascontiguousarray(np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3])
            elif sizes["image.png"] != image.shape[:2]:
                raise ConfigError(f"{folder}: image is {sizes['image.png'][1]}x{sizes['image.png'][0]}, "
                                  f"{folders[0].name} is {image.shape[1]}x{image.shape[0]}")
            for name, out in (("mask.png", layer_masks), ("newmask.png", cumulative)):
                m = arrays[name]
                out.append((m if m.ndim == 2 else m[..., 0]) > 0)
        return LayersItem(str(image_id), image, (), len(folders) - 1, np.stack(layer_masks), np.stack(cumulative))


def write_sas_item(root: Path, image_id: int, item: LayersItem) -> list[Path]:
    """Write ``item`` as the SAS folders ``<image_id>_0..L`` under ``root`` (the inverse of ``SasLayersDataset``);
    returns the folders."""
    from amodal.training.data.synth.layers import write_sas_image

    write_sas_image(Path(root), image_id, item.image, item.layer_masks, item.cumulative_masks)
    return [Path(root) / f"{image_id}_{k}" for k in range(len(item.layer_masks))]


def open_layers_dataset(root: Path, layout: str = "auto") -> LayersDataset | SasLayersDataset:
    """The dataset under ``root``: ``json`` (``layers.json``), ``sas`` (the seed's folders) or ``auto`` (JSON when
    ``layers.json`` exists, for its object annotations, else the folders)."""
    root = Path(root)
    if layout not in ("auto", "json", "sas"):
        raise ConfigError(f"layout must be auto, json or sas, got {layout!r}")
    if layout == "json" or (layout == "auto" and (root / "layers.json").is_file()):
        return LayersDataset(root)
    return SasLayersDataset(root)
