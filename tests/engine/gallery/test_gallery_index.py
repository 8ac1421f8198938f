"""The vector index: exact up to ``exact_max_vectors``, IVF beyond, with recall against exact search."""
from __future__ import annotations

import faiss
import numpy as np
import pytest
from conftest import Persons, unit

from amodal.engine.gallery import Gallery, GalleryConfig
from amodal.engine.gallery.index import VectorIndex

DIM = 32
RECALL_AT_10_MIN = 0.95  # IVF (nprobe 16 of ~200 lists) vs exact, clustered data


def _clustered(n: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, DIM)))
    return unit(centres[rng.integers(0, clusters, n)] + 0.4 * unit(rng.standard_normal((n, DIM))))


def _exact_top(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors)
    return ids[flat.search(queries, k)[1]]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def test_exact_then_ivf_keeps_search_results():
    config = GalleryConfig(dim=DIM, exact_max_vectors=2000, ivf_nprobe=16)
    index = VectorIndex(config)
    data = _clustered(3000, clusters=150, seed=1)
    ids = np.arange(3000, dtype=np.int64) * 3 + 11  # sparse, non-positional ids
    queries = _clustered(200, clusters=150, seed=2)

    index.upsert(ids[:2000], data[:2000])
    sims, found = index.search(queries, 10)
    assert index.kind == "exact"
    assert np.array_equal(found, _exact_top(data[:2000], ids[:2000], queries, 10))  # exact is exact
    assert np.allclose(sims[:, 0], (queries @ data[:2000].T).max(axis=1), atol=1e-5)

    index.upsert(ids[2000:], data[2000:])
    sims, found = index.search(queries, 10)  # starts training an IVF in the background...
    assert index.kind == "exact" and index.stats().building  # ...while the exact index answers
    assert np.array_equal(found, _exact_top(data, ids, queries, 10))
    index.flush(wait=True)
    sims, found = index.search(queries, 10)
    stats = index.stats()
    assert index.kind == "ivf" and stats.vectors == 3000 and stats.nlist > 16 and stats.nprobe == 16
    recall = _recall(found, _exact_top(data, ids, queries, 10))
    assert recall >= RECALL_AT_10_MIN, recall
    # IVF-Flat similarities are exact inner products of the vectors it returns
    rows = {int(i): r for r, i in enumerate(ids)}
    assert np.allclose(sims[:, 0], np.einsum("nd,nd->n", queries, data[[rows[int(i)] for i in found[:, 0]]]), atol=1e-5)


def test_ivf_updates_and_removals_and_switch_back():
    index = VectorIndex(GalleryConfig(dim=DIM, exact_max_vectors=400, ivf_nprobe=64))
    data = _clustered(1000, clusters=40, seed=3)
    ids = np.arange(1000, dtype=np.int64)
    index.upsert(ids, data)
    index.flush(wait=True)
    assert index.kind == "ivf"
    # overwrite vector 7 with vector 900's direction: a query for 900 now finds both
    index.upsert(np.array([7]), data[900:901])
    _, found = index.search(data[900:901], 2)
    assert set(found[0].tolist()) == {7, 900}
    index.remove(np.array([900]))
    _, found = index.search(data[900:901], 1)
    assert found[0, 0] == 7 and 900 not in index and len(index) == 999
    # shrinking below half the threshold returns to the exact index
    index.remove(ids[:800])
    _, found = index.search(data[950:951], 1)
    assert index.kind == "exact" and len(index) == 199 and found[0, 0] == 950
    assert np.array_equal(index.vectors([950]), data[950:951])


def test_index_grows_and_retrains():
    index = VectorIndex(GalleryConfig(dim=DIM, exact_max_vectors=300, ivf_rebuild_growth=2.0))
    data = _clustered(1400, clusters=30, seed=4)
    index.upsert(np.arange(400), data[:400])
    index.flush(wait=True)
    first = index.stats()
    index.upsert(np.arange(400, 1400), data[400:])
    index.flush(wait=True)
    second = index.stats()
    assert first.kind == second.kind == "ivf" and second.rebuilds == first.rebuilds + 1 and second.nlist > first.nlist


@pytest.mark.parametrize("background", [False, True])
def test_gallery_identities_survive_the_switch(background: bool):
    persons = Persons(count=120, dim=DIM, seed=5)
    gallery = Gallery(GalleryConfig(dim=DIM, match_threshold=0.6, min_observations=3, exact_max_vectors=60,
                                    ivf_background_build=background))
    ids_a = [persons.feed(gallery, p, "a", track_id=p, frames=4) for p in range(120)]
    ids_b = [persons.feed(gallery, p, "b", track_id=p, frames=4) for p in range(120)]
    stats = gallery.stats()
    assert stats["index_kind"] == "ivf" or (background and stats["index_rebuilds"] + stats["index_building"] >= 1)
    assert len(set(ids_a)) == 120
    assert np.mean(np.array(ids_a) == np.array(ids_b)) >= 0.97


def test_changes_during_a_background_build_are_replayed():
    index = VectorIndex(GalleryConfig(dim=DIM, exact_max_vectors=500, ivf_nprobe=1000))
    data = _clustered(1200, clusters=40, seed=6)
    index.upsert(np.arange(1000), data[:1000])
    index.flush()  # the build starts from these 1000 vectors
    assert index.stats().building
    index.remove(np.arange(0, 100))  # in the snapshot, removed since
    index.upsert(np.arange(100, 200), data[1000:1100])  # in the snapshot, changed since
    index.upsert(np.arange(1000, 1100), data[1100:1200])  # new since
    index.remove(np.arange(1050, 1060))  # new and removed again
    index.flush(wait=True)
    assert index.kind == "ivf" and not index.stats().building
    present = [i for i in range(1100) if i >= 100 and not 1050 <= i < 1060]
    assert len(index) == len(present) and index._index.ntotal == len(present)  # faiss holds each once
    expected = {i: (data[1000 + i - 100] if 100 <= i < 200 else data[1100 + i - 1000] if i >= 1000 else data[i])
                for i in present}
    assert all(np.array_equal(index.vectors([i])[0], v) for i, v in expected.items())
    _, found = index.search(np.stack(list(expected.values())), 1)  # every list probed
    assert found[:, 0].tolist() == list(expected)
