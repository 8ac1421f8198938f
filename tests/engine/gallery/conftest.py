"""Gallery test data: "persons" as base unit vectors, seen by cameras as noisy, partly occluded views."""
from __future__ import annotations

import numpy as np
import pytest


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


class Persons:
    """``count`` persons in ``dim`` dimensions.  A camera sees person p as its base vector plus a fixed
    per-camera appearance shift; each frame adds noise, and an occluded frame is half someone else."""

    def __init__(self, count: int, dim: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self.base = unit(self.rng.standard_normal((count, dim)))
        self._views: dict[tuple[int, str], np.ndarray] = {}

    def view(self, person: int, camera: str) -> np.ndarray:
        key = (person, camera)
        if key not in self._views:
            self._views[key] = unit(self.base[person] + 0.35 * unit(self.rng.standard_normal(self.dim)))
        return self._views[key]

    def frame(self, person: int, camera: str, occluded: bool = False) -> np.ndarray:
        e = unit(self.view(person, camera) + 0.3 * unit(self.rng.standard_normal(self.dim)))
        if occluded:
            other = unit(self.rng.standard_normal(self.dim))
            e = unit(0.5 * e + 0.5 * other)
        return e

    def feed(self, gallery, person: int, camera: str, track_id: int, frames: int, t0_ns: int = 0) -> int | None:
        """``frames`` frames of one track (every third occluded, quality 0.3); the last returned identity."""
        gid = None
        for i in range(frames):
            occluded = i % 3 == 2
            gid = gallery.update_track(camera, track_id, self.frame(person, camera, occluded),
                                       0.3 if occluded else 0.9, t0_ns + i * 40_000_000,
                                       (10.0 * i, 20.0, 10.0 * i + 50, 140.0))
        return gid


@pytest.fixture
def persons() -> Persons:
    return Persons(count=8, dim=64)
