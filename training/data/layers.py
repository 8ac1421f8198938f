"""Reader of the occlusion-layers format (sequential amodal segmentation, SAS).

``root/layers.json`` lists images; per image: ``file``, ``width``, ``height``, ``num_layers`` (L), ``objects``
(``layer`` in 1..L, ``category_id``, ``amodal``/``visible`` COCO RLE), and L+1 ``layer_masks`` /
``cumulative_masks`` PNG paths (255 inside): layer k's union of amodal masks (the (L+1)-th is the empty stop
target) and the union of all layers before k.
"""
from __future__ import annotations

import json
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
