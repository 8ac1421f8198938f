"""Global identities: across cameras, distinct persons, the same-stream constraint, quality weighting."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import Persons, unit

from amodal.engine.gallery import Gallery, GalleryConfig, IdentityMatch
from amodal.errors import ConfigError, SchemaError


def _gallery(dim: int = 64, **kw) -> Gallery:
    return Gallery(GalleryConfig(**{"dim": dim, "match_threshold": 0.6, "min_observations": 3, **kw}))


def test_each_person_one_identity_across_two_cameras(persons: Persons):
    gallery = _gallery()
    # camera A sees everyone at once (all tracks alive together)
    ids_a = [persons.feed(gallery, p, "camA", track_id=100 + p, frames=9) for p in range(8)]
    assert None not in ids_a and len(set(ids_a)) == 8
    # camera B sees them in another order under other track ids, while A's tracks are still alive
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    ids_b = {p: persons.feed(gallery, p, "camB", track_id=7 + i, frames=9, t0_ns=10**9) for i, p in enumerate(order)}
    assert [ids_b[p] for p in range(8)] == ids_a
    assert len(gallery) == 8
    # every identity lists both sightings, most recent first
    match = gallery.search(persons.base[[3]], k=1)[0][0]
    assert match.global_id == ids_a[3]
    assert {(s.stream_id, s.track_id) for s in match.sightings} == {("camA", 103), ("camB", 11)}
    assert match.sightings[0].stream_id == "camB" and match.sightings[0].frames == 9


def test_identity_needs_min_observations_and_is_kept(persons: Persons):
    gallery = _gallery()
    results = [gallery.update_track("cam", 1, persons.frame(0, "cam"), 0.9, i, (0, 0, 1, 1)) for i in range(3)]
    assert results[:2] == [None, None] and results[2] == 1
    # zero-quality frames are sightings but not observations
    assert gallery.update_track("cam", 2, persons.frame(1, "cam"), 0.0, 0, (0, 0, 1, 1)) is None
    assert gallery.update_track("cam", 2, persons.frame(1, "cam"), 0.0, 1, (0, 0, 1, 1)) is None
    assert gallery.update_track("cam", 2, persons.frame(1, "cam"), 0.0, 2, (0, 0, 1, 1)) is None
    # once assigned, a track keeps its identity even when it later looks like someone else
    for i in range(10):
        assert gallery.update_track("cam", 1, persons.frame(1, "cam"), 1.0, 10 + i, (0, 0, 1, 1)) == 1


def test_two_live_tracks_in_one_stream_never_share_an_identity(persons: Persons):
    gallery = _gallery()
    first = persons.feed(gallery, 0, "cam", track_id=1, frames=6)
    # a second track of the same person in the same stream, while track 1 lives (a fragmented track)
    second = persons.feed(gallery, 0, "cam", track_id=2, frames=6)
    assert second != first
    # the same person alive in another stream at the same time shares the identity
    assert persons.feed(gallery, 0, "other", track_id=1, frames=6) in (first, second)
    # once both same-stream tracks have ended, the person re-entering gets an existing identity back
    gallery.end_track("cam", 1)
    gallery.end_track("cam", 2)
    assert persons.feed(gallery, 0, "cam", track_id=3, frames=6) in (first, second)
    # end_stream frees every identity the stream held
    fourth = persons.feed(gallery, 0, "cam", track_id=4, frames=6)
    gallery.end_stream("cam")
    assert gallery.stats()["live_tracks"] == 1  # only "other"/1
    assert persons.feed(gallery, 0, "cam", track_id=5, frames=6) in (first, second, fourth)


def test_timed_out_tracks_free_their_identity(persons: Persons):
    gallery = _gallery(track_timeout_s=1.0)
    first = persons.feed(gallery, 0, "cam", track_id=1, frames=4, t0_ns=0)
    # track 1 is never ended explicitly; 5 s of stream time later it counts as ended
    assert persons.feed(gallery, 0, "cam", track_id=2, frames=4, t0_ns=5_000_000_000) == first


def test_low_quality_outlier_frames_do_not_flip_the_aggregate(persons: Persons):
    frames = [persons.frame(0, "cam"), persons.frame(0, "cam")] + [persons.frame(1, "cam") for _ in range(3)]

    def identity(qualities: list[float]) -> int:
        gallery = _gallery(min_observations=5)
        persons.feed(gallery, 0, "ref", track_id=1, frames=6)  # identity 1 = person 0
        persons.feed(gallery, 1, "ref", track_id=2, frames=6)  # identity 2 = person 1
        gid = None
        for i, (e, q) in enumerate(zip(frames, qualities)):
            gid = gallery.update_track("cam", 9, e, q, i, (0, 0, 1, 1))
        return gid

    # three occluded frames showing mostly person 1 at low quality: still person 0
    assert identity([1.0, 1.0, 0.05, 0.05, 0.05]) == 1
    # the same frames weighed equally would flip it to person 1 (so the weighting is what decides)
    assert identity([1.0] * 5) == 2


def test_unknown_person_gets_new_identity_and_search_ranks_identities(persons: Persons):
    gallery = _gallery()
    for p in range(4):
        persons.feed(gallery, p, "a", track_id=p, frames=6)
        persons.feed(gallery, p, "b", track_id=p, frames=6)  # two stored vectors per identity
    stranger = persons.feed(gallery, 7, "a", track_id=50, frames=6)
    assert stranger == 5
    rows = gallery.search(np.stack([persons.base[2], persons.base[0]]), k=3)
    assert [len(r) for r in rows] == [3, 3]
    assert rows[0][0].global_id == 3 and rows[1][0].global_id == 1
    for row in rows:  # identities, not raw vectors: no id twice; best first
        assert len({m.global_id for m in row}) == 3
        assert all(a.similarity >= b.similarity for a, b in zip(row, row[1:]))
        assert all(isinstance(m, IdentityMatch) and -1.0 <= m.similarity <= 1.0 + 1e-5 for m in row)
    assert gallery.search(persons.base[:1], k=50)[0].__len__() == 5
    assert _gallery().search(persons.base[:2], k=5) == [[], []]


def test_refined_vectors_follow_the_track(persons: Persons):
    gallery = _gallery()
    gid = persons.feed(gallery, 0, "cam", track_id=1, frames=3)
    before = gallery.search(persons.view(0, "cam")[None], k=1)[0][0].similarity
    persons.feed(gallery, 0, "cam", track_id=1, frames=60, t0_ns=10**9)
    after = gallery.search(persons.view(0, "cam")[None], k=1)[0][0]
    assert after.global_id == gid and after.similarity > before and after.similarity > 0.95


def test_sightings_per_identity_are_capped(persons: Persons):
    gallery = _gallery(max_sightings_per_identity=3)
    for t in range(6):
        persons.feed(gallery, 0, "cam", track_id=t, frames=4, t0_ns=t * 10**9)
        gallery.end_track("cam", t)
    match = gallery.search(persons.base[:1], k=1)[0][0]
    assert len(gallery) == 1 and [s.track_id for s in match.sightings] == [5, 4, 3]
    assert gallery.stats()["vectors"] == 3


def test_bad_input_raises_clear_errors(persons: Persons):
    gallery = _gallery()
    e = persons.frame(0, "cam")
    with pytest.raises(SchemaError, match=r"shape \(32,\), expected \(64,\)"):
        gallery.update_track("cam", 1, e[:32], 0.5, 0, (0, 0, 1, 1))
    with pytest.raises(SchemaError, match="quality must be in"):
        gallery.update_track("cam", 1, e, 1.5, 0, (0, 0, 1, 1))
    with pytest.raises(SchemaError, match="non-finite"):
        gallery.update_track("cam", 1, np.full(64, np.nan, np.float32), 0.5, 0, (0, 0, 1, 1))
    with pytest.raises(SchemaError, match="box_xyxy"):
        gallery.update_track("cam", 1, e, 0.5, 0, (0, 0, 1))
    with pytest.raises(SchemaError, match=r"expected \[N, 64\]"):
        gallery.search(e, k=1)
    with pytest.raises(SchemaError, match="k must be"):
        gallery.search(e[None], k=0)
    assert gallery.stats()["live_tracks"] == 0


@pytest.mark.parametrize("field, value", [("dim", 0), ("match_threshold", 1.5), ("min_observations", 0),
                                          ("exact_max_vectors", -3), ("ivf_rebuild_growth", 1.0),
                                          ("device", "tpu"), ("save_interval_s", 5.0)])
def test_config_rejects_bad_values(field, value):
    kw = {"dim": 64, field: value}
    with pytest.raises(ConfigError, match=repr(value).replace(".", r"\.")):
        GalleryConfig(**kw)


def test_device_auto_falls_back_to_cpu_without_faiss_gpu():
    import faiss

    stats = _gallery(device="auto").stats()
    assert stats["device"] == ("cuda" if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() else "cpu")
    if stats["device"] == "cpu":
        with pytest.raises(ConfigError, match="'cuda' requested"):
            _gallery(device="cuda")


def test_concurrent_updates_and_searches(persons: Persons):
    import threading

    gallery = _gallery()
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher():
        try:
            while not stop.is_set():
                for row in gallery.search(persons.base[:4], k=3):
                    assert len({m.global_id for m in row}) == len(row)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        for p in range(8):
            persons.feed(gallery, p, "a", track_id=p, frames=8)
            persons.feed(gallery, p, "b", track_id=p, frames=8)
    finally:
        stop.set()
        thread.join()
    assert not errors and len(gallery) == 8


def test_unit_helper_sanity():
    v = unit(np.array([3.0, 4.0]))
    assert np.allclose(v, [0.6, 0.8])


def test_float16_and_unnormalised_embeddings_are_accepted(persons: Persons):
    gallery = _gallery()
    e = persons.view(0, "cam")
    gids = [gallery.update_track("cam", 1, (3.0 * e).astype(np.float16), 1.0, i, (0, 0, 1, 1)) for i in range(3)]
    assert gids[-1] == 1
    match = gallery.search(e[None].astype(np.float16), k=1)[0][0]
    assert match.global_id == 1 and abs(match.similarity - 1.0) < 1e-3
