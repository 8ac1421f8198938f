"""Market-1501 / DukeMTMC-reID / Occluded-Duke folders → (path, pid, camid) lists for train, query, gallery.

Layout: ``<root>/bounding_box_train``, ``<root>/query``, ``<root>/bounding_box_test`` (``<root>`` may also be a
folder holding exactly one such dataset folder, e.g. ``Market-1501-v15.09.15``).  File names carry the person
id and camera: regex ``([-\\d]+)_c(\\d)`` (Market ``0002_c1s1_000451_03.jpg``, Duke ``0001_c2_f0046182.jpg``).
Conventions (as Market's evaluation and TransReID's loaders): pid −1 is junk and skipped everywhere; pid 0
(distractors) is kept in the gallery (and skipped in the query); train pids are relabelled 0..N−1 in sorted
order; ``camid`` is 0-based (camera ``c1`` → 0).  Optional human-parsing masks are ``<root>/parsing/<stem>.png``
(uint8 labels 0 background, 1 head, 2 upper, 3 lower, 4 shoes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from amodal.errors import ConfigError

__all__ = ["PID_CAM_RE", "ReIDDataset", "ReIDImage", "load_parsing", "load_reid_dataset", "parse_name"]

PID_CAM_RE = re.compile(r"([-\d]+)_c(\d)")
FOLDERS: dict[str, str] = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PARSING_LABELS = 5


@dataclass(frozen=True, slots=True)
class ReIDImage:
    path: Path
    pid: int  # train: relabelled 0..N−1; query/gallery: as in the file name (0 = distractor)
    camid: int  # 0-based
    parsing_path: Path | None = None
    original_pid: int = 0  # as in the file name


@dataclass(frozen=True, slots=True)
class ReIDDataset:
    root: Path
    train: tuple[ReIDImage, ...]
    query: tuple[ReIDImage, ...]
    gallery: tuple[ReIDImage, ...]
    num_train_pids: int
    num_cameras: int  # highest camera number seen in any split
    train_pid_map: dict[int, int] = field(default_factory=dict)  # original pid → label

    def summary(self) -> dict:
        def ids(items):
            return len({i.pid for i in items})

        return {
            "train": {"images": len(self.train), "ids": ids(self.train)},
            "query": {"images": len(self.query), "ids": ids(self.query)},
            "gallery": {"images": len(self.gallery), "ids": ids(self.gallery)},
            "cameras": self.num_cameras,
        }


def parse_name(name: str, pattern: re.Pattern = PID_CAM_RE, max_cameras: int = 9) -> tuple[int, int]:
    """File name → (pid, camera number as written, 1-based).  ConfigError when it does not follow the format."""
    match = pattern.search(name)
    if match is None:
        raise ConfigError(f"{name}: file name does not match the pid/camera pattern {pattern.pattern!r}")
    try:
        pid, cam = int(match.group(1)), int(match.group(2))
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot read pid/camera from {match.group(0)!r}") from exc
    if pid < -1:
        raise ConfigError(f"{name}: pid {pid} is invalid (only -1 marks junk)")
    if not 1 <= cam <= max_cameras:
        raise ConfigError(f"{name}: camera c{cam} outside 1..{max_cameras}")
    return pid, cam


def _find_root(root: Path) -> Path:
    if not root.is_dir():
        raise ConfigError(f"ReID dataset folder {root} does not exist")
    if all((root / f).is_dir() for f in FOLDERS.values()):
        return root
    nested = [d for d in root.iterdir() if d.is_dir() and all((d / f).is_dir() for f in FOLDERS.values())]
    if len(nested) == 1:
        return nested[0]
    missing = [f for f in FOLDERS.values() if not (root / f).is_dir()]
    raise ConfigError(f"{root}: not a Market-1501-style dataset; missing folders {missing}")


def _read_folder(folder: Path, parsing_dir: Path, pattern: re.Pattern, max_cameras: int) -> list[tuple[Path, int, int, Path | None]]:
    items = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        pid, cam = parse_name(path.name, pattern, max_cameras)
        parsing = parsing_dir / f"{path.stem}.png"
        items.append((path, pid, cam, parsing if parsing.is_file() else None))
    return items


def load_reid_dataset(root: Path, *, pattern: re.Pattern = PID_CAM_RE, max_cameras: int = 9, relabel_train: bool = True) -> ReIDDataset:
    """Read the three folders; raises ConfigError naming the folder or file at fault."""
    root = _find_root(Path(root))
    parsing_dir = root / "parsing"
    raw = {split: _read_folder(root / folder, parsing_dir, pattern, max_cameras) for split, folder in FOLDERS.items()}
    for split in ("train", "query"):
        if not any(pid >= 0 for _, pid, _, _ in raw[split]):
            raise ConfigError(f"{root / FOLDERS[split]}: no usable images (pid ≥ 0) found")
    train_pids = sorted({pid for _, pid, _, _ in raw["train"] if pid != -1})
    pid_map = {pid: k for k, pid in enumerate(train_pids)}
    train = tuple(
        ReIDImage(path, pid_map[pid] if relabel_train else pid, cam - 1, parsing, pid)
        for path, pid, cam, parsing in raw["train"]
        if pid != -1
    )
    query = tuple(ReIDImage(p, pid, cam - 1, parsing, pid) for p, pid, cam, parsing in raw["query"] if pid > 0)
    gallery = tuple(ReIDImage(p, pid, cam - 1, parsing, pid) for p, pid, cam, parsing in raw["gallery"] if pid != -1)
    if not gallery:
        raise ConfigError(f"{root / FOLDERS['gallery']}: no usable images (pid ≥ 0) found")
    cams = {cam for split in raw.values() for _, _, cam, _ in split}
    return ReIDDataset(
        root=root,
        train=train,
        query=query,
        gallery=gallery,
        num_train_pids=len(train_pids),
        num_cameras=max(cams),
        train_pid_map=pid_map,
    )


def load_parsing(path: Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """uint8[H, W] parsing labels in 0..4; ConfigError for other values or a size mismatch."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parsing mask {path} does not exist")
    with Image.open(path) as img:
        labels = np.asarray(img)
    if labels.ndim != 2:
        raise ConfigError(f"{path}: parsing mask must be single-channel, got shape {labels.shape}")
    if labels.size and int(labels.max()) >= PARSING_LABELS:
        raise ConfigError(f"{path}: label {int(labels.max())} outside 0..{PARSING_LABELS - 1}")
    if expected_hw is not None and labels.shape != tuple(expected_hw):
        raise ConfigError(f"{path}: size {labels.shape} differs from the image's {tuple(expected_hw)}")
    return labels.astype(np.uint8)
