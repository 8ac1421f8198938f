"""Per-track aggregation and per-identity records (mutable, owned by ``Gallery`` under its lock).

A track's embedding is the quality-weighted mean of its frames' embeddings, re-normalised:
``aggregate = normalise(Σ q_i · e_i)`` with ``q_i`` in [0, 1] from the caller (low for occluded or
blurred crops), so one poor frame moves the aggregate by at most ``q_i / Σ q`` of its length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from amodal.engine.gallery.types import Sighting
from amodal.errors import SchemaError

_MIN_NORM = 1e-6


@dataclass(slots=True)
class SightingRecord:
    """The stored sighting of one track; ``vector_id`` keys the track's aggregate in the index."""

    stream_id: str
    track_id: int
    first_time_ns: int
    last_time_ns: int
    box_xyxy: tuple[float, float, float, float]
    frames: int
    vector_id: int
    weight: float  # Σ quality of the frames behind the stored vector
    alive: bool = False  # its track is still being updated

    def frozen(self) -> Sighting:
        return Sighting(self.stream_id, self.track_id, self.first_time_ns, self.last_time_ns, self.box_xyxy, self.frames)

    def to_wire(self) -> dict:
        return {"stream_id": self.stream_id, "track_id": self.track_id, "first_time_ns": self.first_time_ns,
                "last_time_ns": self.last_time_ns, "box_xyxy": list(self.box_xyxy), "frames": self.frames,
                "vector_id": self.vector_id, "weight": self.weight}

    @classmethod
    def from_wire(cls, d: dict) -> "SightingRecord":
        box = tuple(float(v) for v in d["box_xyxy"])
        if len(box) != 4:
            raise ValueError(f"box_xyxy has {len(box)} values")
        return cls(str(d["stream_id"]), int(d["track_id"]), int(d["first_time_ns"]), int(d["last_time_ns"]),
                   box, int(d["frames"]), int(d["vector_id"]), float(d["weight"]))  # type: ignore[arg-type]


@dataclass(slots=True)
class IdentityRecord:
    global_id: int
    sightings: list[SightingRecord] = field(default_factory=list)

    def evictable(self) -> SightingRecord | None:
        """The ended sighting seen longest ago (None when every sighting's track is alive)."""
        ended = [s for s in self.sightings if not s.alive]
        return min(ended, key=lambda s: s.last_time_ns) if ended else None


@dataclass(slots=True)
class TrackState:
    """A live track: its running weighted sum and, once it qualified, its identity and sighting."""

    stream_id: str
    track_id: int
    weighted_sum: np.ndarray  # float64[D], Σ q_i · e_i
    first_time_ns: int
    last_time_ns: int
    box_xyxy: tuple[float, float, float, float]
    weight: float = 0.0  # Σ q_i
    observations: int = 0  # frames with q > 0
    frames: int = 0
    global_id: int | None = None
    sighting: SightingRecord | None = None

    def observe(self, embedding: np.ndarray, quality: float, time_ns: int, box_xyxy) -> None:
        self.frames += 1
        self.first_time_ns = min(self.first_time_ns, time_ns)
        self.last_time_ns = max(self.last_time_ns, time_ns)
        self.box_xyxy = box_xyxy
        if quality > 0:
            self.weighted_sum += quality * embedding.astype(np.float64)
            self.weight += quality
            self.observations += 1
        if self.sighting is not None:
            s = self.sighting
            s.first_time_ns, s.last_time_ns, s.box_xyxy, s.frames = self.first_time_ns, self.last_time_ns, box_xyxy, self.frames
            s.weight = self.weight

    def aggregate(self) -> np.ndarray | None:
        """float32[D] unit vector, or None while no weighted frame has been seen (or they cancel out)."""
        norm = float(np.linalg.norm(self.weighted_sum))
        if self.weight <= 0 or norm < _MIN_NORM * self.weight:
            return None
        return (self.weighted_sum / norm).astype(np.float32)


# ---------------------------------------------------------------------------------------- validation
def check_embedding(embedding, dim: int, where: str) -> np.ndarray:
    """float32[D] from anything array-like of D finite numbers with a non-zero norm; ``SchemaError`` otherwise."""
    array = np.asarray(embedding)
    if array.shape != (dim,):
        raise SchemaError(f"{where}: embedding has shape {array.shape}, expected ({dim},)")
    if not np.issubdtype(array.dtype, np.floating):
        raise SchemaError(f"{where}: embedding has dtype {array.dtype}, expected a float dtype")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise SchemaError(f"{where}: embedding has non-finite values")
    if float(np.linalg.norm(array)) < _MIN_NORM:
        raise SchemaError(f"{where}: embedding has zero norm")
    return array


def check_queries(embeddings, dim: int) -> np.ndarray:
    """Row-normalised float32[N, D] from float[N, D] queries; ``SchemaError`` for other shapes, NaN, zero rows."""
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[1] != dim:
        raise SchemaError(f"search embeddings have shape {array.shape}, expected [N, {dim}]")
    if not np.issubdtype(array.dtype, np.floating):
        raise SchemaError(f"search embeddings have dtype {array.dtype}, expected a float dtype")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise SchemaError("search embeddings have non-finite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if len(array) and float(norms.min()) < _MIN_NORM:
        raise SchemaError(f"search embedding {int(norms.argmin())} has zero norm")
    return np.ascontiguousarray(array / np.maximum(norms, _MIN_NORM))


def check_box(box_xyxy, where: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in box_xyxy)
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"{where}: box_xyxy {box_xyxy!r} is not four numbers") from exc
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise SchemaError(f"{where}: box_xyxy {box_xyxy!r} is not four finite numbers")
    return box  # type: ignore[return-value]
