"""What the detector stages share: their settings, weights resolution and detections → published objects."""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from amodal.engine.postprocess import encode_masks
from amodal.errors import ConfigError
from amodal.types import ObjectResult


@dataclass(frozen=True)
class DetectionSettings:
    """``weights``: a local weights file, or ``shipped:FILE`` for another shipped file (None = the stage's shipped
    weights; nothing is downloaded);
    detections below ``score_threshold`` are dropped, masks are cut at ``mask_threshold``, at most
    ``max_detections`` per frame."""

    weights: str | None = None
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    max_detections: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ConfigError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if not isinstance(self.max_detections, int) or self.max_detections <= 0:
            raise ConfigError(f"max_detections must be an integer > 0, got {self.max_detections!r}")


def resolve_weights(weights: str | None, shipped: str) -> Path:
    """``weights`` as a path; ``shipped:FILE`` the shipped file FILE (e.g. ``shipped:maskrcnn_street_synthetic
    .safetensors``); the stage's shipped file ``shipped`` when None."""
    from amodal.pretrained import shipped_weights

    if weights and weights.startswith("shipped:"):
        name = weights.removeprefix("shipped:")
        if not name or "/" in name or "\\" in name:
            raise ConfigError(f"weights {weights!r}: expected shipped:FILE with a shipped file's name")
        return shipped_weights(name)
    if weights:
        return Path(weights)
    return shipped_weights(shipped)


L = TypeVar("L")
_LOADED: "weakref.WeakValueDictionary[tuple, object]" = weakref.WeakValueDictionary()
_LOADED_LOCK = threading.Lock()


def load_once(loader: Callable[[Path], L], path: Path) -> L:
    """``loader(path)``, shared by every stage that loads the same file (same path, size and mtime) while one of
    them holds it: a model two pipelines use with different stage settings is loaded once.  Errors are not
    cached."""
    try:
        stat = path.stat()
        key = (loader.__module__, loader.__qualname__, str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        return loader(path)  # the loader raises its own clear error for a missing file
    with _LOADED_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = loader(path)
            _LOADED[key] = loaded
        return loaded  # type: ignore[return-value]


def class_name(class_names: Sequence[str], label: int) -> str:
    """The name of 1-based ``label`` (0 is background)."""
    return class_names[label - 1] if 0 < label <= len(class_names) else f"class_{label}"


def detections_to_objects(class_names: Sequence[str], boxes_xyxy: torch.Tensor, scores: torch.Tensor,
                          labels: torch.Tensor, masks: torch.Tensor, mask_threshold: float = 0.5,
                          track_ids: torch.Tensor | None = None,
                          occlusion_levels: torch.Tensor | None = None) -> tuple[ObjectResult, ...]:
    """N detections (boxes float[N, 4] px, scores float[N], labels int[N], masks [N, H, W] probabilities or bool,
    optional track ids int[N] and occlusion levels float[N]) → published objects, masks RLE-encoded at once."""
    n = int(scores.shape[0])
    rles = encode_masks(masks, mask_threshold)
    tids = track_ids.cpu().tolist() if track_ids is not None else [None] * n
    levels = occlusion_levels.cpu().tolist() if occlusion_levels is not None else [None] * n
    return tuple(
        ObjectResult(class_id=int(label), class_name=class_name(class_names, int(label)), score=float(score),
                     box_xyxy=tuple(float(v) for v in box),  # type: ignore[arg-type]
                     mask=mask, track_id=None if tid is None else int(tid),
                     occlusion_level=None if level is None else float(level))
        for box, score, label, mask, tid, level in zip(
            boxes_xyxy.cpu().tolist(), scores.cpu().tolist(), labels.cpu().tolist(), rles, tids, levels)
    )
