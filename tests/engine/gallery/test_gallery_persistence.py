"""Saving and restoring the gallery: round trip, atomicity under SIGKILL, corrupt files."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Persons, unit

from amodal.engine.gallery import Gallery, GalleryConfig
from amodal.errors import CheckpointError

_CONFIG = dict(dim=64, match_threshold=0.6, min_observations=3)


def test_save_restart_restores_identities_and_sightings(persons: Persons, tmp_path: Path):
    path = tmp_path / "gallery.bin"
    gallery = Gallery(GalleryConfig(**_CONFIG, persist_path=str(path)))
    ids_a = [persons.feed(gallery, p, "camA", track_id=p, frames=6) for p in range(6)]
    before = gallery.search(persons.base[:6], k=2)
    assert gallery.save() == path and not list(tmp_path.glob(".*.tmp"))

    restored = Gallery.load(path, GalleryConfig(**_CONFIG))
    assert len(restored) == 6 and restored.path == path
    after = restored.search(persons.base[:6], k=2)
    assert [[(m.global_id, m.sightings) for m in row] for row in after] == \
        [[(m.global_id, m.sightings) for m in row] for row in before]
    assert all(abs(a.similarity - b.similarity) < 1e-6 for ra, rb in zip(after, before) for a, b in zip(ra, rb))
    # known persons seen by a new camera get their old ids; a stranger gets a fresh one
    assert [persons.feed(restored, p, "camB", track_id=40 + p, frames=6, t0_ns=10**9) for p in range(6)] == ids_a
    assert persons.feed(restored, 7, "camB", track_id=99, frames=6) == max(ids_a) + 1
    # the same track ids as before the restart are new tracks (restored sightings are ended)
    assert persons.feed(restored, 0, "camA", track_id=0, frames=6, t0_ns=2 * 10**9) == ids_a[0]
    restored.save()
    assert len(Gallery.load(path, GalleryConfig(**_CONFIG))) == 7


def test_missing_file_is_an_empty_gallery(tmp_path: Path):
    gallery = Gallery.load(tmp_path / "nothing.bin", GalleryConfig(**_CONFIG))
    assert len(gallery) == 0 and gallery.stats()["vectors"] == 0


def test_corrupt_files_raise_checkpoint_error_naming_the_file(persons: Persons, tmp_path: Path):
    path = tmp_path / "gallery.bin"
    gallery = Gallery(GalleryConfig(**_CONFIG))
    persons.feed(gallery, 0, "cam", track_id=1, frames=5)
    gallery.save(path)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) - 10],
        "header only": data[:30],
        "flipped": data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:],
        "foreign": b"\x89PNG\r\n\x1a\n" + data[8:],
    }
    for name, broken in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.bin"
        bad.write_bytes(broken)
        with pytest.raises(CheckpointError, match=str(bad).replace(".", r"\.")):
            Gallery.load(bad, GalleryConfig(**_CONFIG))
    with pytest.raises(CheckpointError, match="dimension 64, the config says 32"):
        Gallery.load(path, GalleryConfig(dim=32))


def test_autosave_writes_periodically_and_on_close(persons: Persons, tmp_path: Path):
    path = tmp_path / "auto" / "gallery.bin"
    gallery = Gallery(GalleryConfig(**_CONFIG, persist_path=str(path), save_interval_s=0.05))
    try:
        persons.feed(gallery, 0, "cam", track_id=1, frames=4)
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(Gallery.load(path, GalleryConfig(**_CONFIG))) == 1
        persons.feed(gallery, 1, "cam", track_id=2, frames=4)
    finally:
        gallery.close()
    assert gallery.stats()["unsaved_changes"] == 0
    assert len(Gallery.load(path, GalleryConfig(**_CONFIG))) == 2


_SAVER = """
import sys
import numpy as np
from amodal.engine.gallery import Gallery, GalleryConfig

path, dim = sys.argv[1], 32
config = GalleryConfig(dim=dim, match_threshold=0.99, min_observations=1)
gallery = Gallery.load(path, config)

def person(i):
    v = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)

def add(i):
    gallery.update_track("cam", i, person(i), 1.0, i, (0.0, 0.0, float(i), 1.0))
    gallery.end_track("cam", i)

n = len(gallery)
if n == 0:  # a sizeable first state, so that kills land inside writes
    for n in range(1, 3001):
        add(n)
    gallery.save()
print("ready", n, flush=True)
while True:
    n += 1
    add(n)
    gallery.save()
"""


def _check_complete_state(path: Path, previous: int) -> int:
    """The file loads and is exactly the state after some number ``m >= previous`` of additions."""
    gallery = Gallery.load(path, GalleryConfig(dim=32, match_threshold=0.99, min_observations=1))
    m = len(gallery)
    assert m >= previous
    rng_vectors = np.stack([unit(np.random.default_rng(i).standard_normal(32).astype(np.float32))
                            for i in range(1, m + 1)])
    rows = gallery.search(rng_vectors, k=1)
    assert [row[0].global_id for row in rows] == list(range(1, m + 1))
    assert all(row[0].similarity > 0.9999 and row[0].sightings[0].track_id == row[0].global_id for row in rows)
    assert gallery.stats()["vectors"] == m
    return m


def test_sigkill_during_saves_leaves_a_complete_file(tmp_path: Path):
    path = tmp_path / "gallery.bin"
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    rand = random.Random(0)
    count = 0
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith("ready"), line
            time.sleep(rand.uniform(0.0, 0.25))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        count = _check_complete_state(path, count)
    assert count > 3000  # saves kept happening between kills
