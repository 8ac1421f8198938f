"""``Gallery``: cross-camera global identities for person tracks.

One lock guards everything (the analyzer thread updates while a query thread searches).  A track gets
an identity once it has ``min_observations`` weighted frames: the identity whose closest stored vector
is most similar to the track's aggregate, if that similarity reaches ``match_threshold`` and no other
live track of the same stream holds it, else a new identity.  The identity is kept for the track's
life; its aggregate keeps refining the track's stored vector (one vector per sighting, at most
``max_sightings_per_identity`` per identity; the oldest ended ones are dropped beyond that).

Persistence: ``save()`` writes atomically (store.py); ``Gallery.load`` restores, treating a missing file
as an empty gallery and raising ``CheckpointError`` naming the file for a corrupt one (no fallback
file: atomic replacement means the file on disk is always a complete save).  Live tracks are saved as
sightings; after a restart they count as ended.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import numpy as np

from amodal.engine.gallery import store
from amodal.engine.gallery.config import GalleryConfig
from amodal.engine.gallery.identity import (IdentityRecord, SightingRecord, TrackState, check_box, check_embedding,
                                            check_queries)
from amodal.engine.gallery.index import VectorIndex
from amodal.engine.gallery.types import IdentityMatch
from amodal.errors import CheckpointError, ConfigError, SchemaError

log = logging.getLogger(__name__)

_K_MAX = 10000


class Gallery:
    """>>> gallery = Gallery(GalleryConfig(dim=256))
    >>> gid = gallery.update_track("cam1", 7, embedding, quality=0.9, time_ns=t, box_xyxy=(x1, y1, x2, y2))
    """

    def __init__(self, config: GalleryConfig) -> None:
        self.config = config
        self.path: Path | None = Path(config.persist_path) if config.persist_path is not None else None
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._index = VectorIndex(config)
        self._identities: dict[int, IdentityRecord] = {}
        self._owner: dict[int, int] = {}  # vector id → global id
        self._tracks: dict[str, dict[int, TrackState]] = {}  # stream → track id → live track
        self._swept_ns: dict[str, int] = {}  # stream → stream time of its last timeout sweep
        self._next_global_id = 1
        self._next_vector_id = 0
        self._changes = 0  # mutations so far
        self._saved_changes = 0  # mutations covered by the last save
        self.saves = 0
        self.autosave_errors = 0
        self._stop = threading.Event()
        self._autosaver: threading.Thread | None = None
        if config.save_interval_s > 0:
            self._autosaver = threading.Thread(target=self._autosave_loop, name="amodal-gallery-autosave", daemon=True)
            self._autosaver.start()

    # ------------------------------------------------------------------------------------- tracks
    def update_track(
        self,
        stream_id: str,
        track_id: int,
        embedding: np.ndarray,
        quality: float,
        time_ns: int,
        box_xyxy: tuple[float, float, float, float],
    ) -> int | None:
        """Add one frame of a track (``embedding`` float32[D], L2-normalised; ``quality`` in [0, 1]);
        returns the track's global identity, or None while it has fewer than ``min_observations`` frames."""
        where = f"track {track_id!r} of stream {stream_id!r}"
        if not isinstance(stream_id, str) or not stream_id:
            raise SchemaError(f"stream_id must be a non-empty str, got {stream_id!r}")
        if not isinstance(track_id, (int, np.integer)) or isinstance(track_id, bool):
            raise SchemaError(f"{where}: track_id must be an int, got {type(track_id).__name__}")
        if not isinstance(time_ns, (int, np.integer)) or isinstance(time_ns, bool):
            raise SchemaError(f"{where}: time_ns must be an int, got {type(time_ns).__name__}")
        if not isinstance(quality, (int, float, np.floating)) or not 0.0 <= float(quality) <= 1.0:
            raise SchemaError(f"{where}: quality must be in [0, 1], got {quality!r}")
        vector = check_embedding(embedding, self.config.dim, where)
        vector = vector / np.linalg.norm(vector)  # exactly unit (float16 inputs are not), so q alone weighs
        box = check_box(box_xyxy, where)
        track_id, time_ns, quality = int(track_id), int(time_ns), float(quality)
        with self._lock:
            self._sweep(stream_id, time_ns)
            tracks = self._tracks.setdefault(stream_id, {})
            track = tracks.get(track_id)
            if track is None:
                track = TrackState(stream_id, track_id, np.zeros(self.config.dim, dtype=np.float64), time_ns, time_ns, box)
                tracks[track_id] = track
            track.observe(vector, quality, time_ns, box)
            self._changes += 1
            if track.global_id is None:
                if track.observations >= self.config.min_observations:
                    self._assign(track)
            elif quality > 0:
                aggregate = track.aggregate()
                if aggregate is not None:
                    self._index.upsert(np.array([track.sighting.vector_id]), aggregate[None])
            return track.global_id

    def end_track(self, stream_id: str, track_id: int) -> None:
        """The track has ended (aged out): its identity becomes free for other tracks of its stream."""
        with self._lock:
            tracks = self._tracks.get(stream_id)
            track = tracks.pop(int(track_id), None) if tracks else None
            if track is not None:
                self._end(track)
                if not tracks:
                    del self._tracks[stream_id]

    def end_stream(self, stream_id: str) -> None:
        """End every live track of ``stream_id``."""
        with self._lock:
            for track in self._tracks.pop(stream_id, {}).values():
                self._end(track)
            self._swept_ns.pop(stream_id, None)

    # ------------------------------------------------------------------------------------- search
    def search(self, embeddings: np.ndarray, k: int) -> list[list[IdentityMatch]]:
        """The ``k`` most similar identities (not raw vectors) to each of ``embeddings`` float32[N, D]
        (re-normalised here), best first; fewer when the gallery holds fewer."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= _K_MAX:
            raise SchemaError(f"k must be an int in [1, {_K_MAX}], got {k!r}")
        queries = check_queries(embeddings, self.config.dim)
        with self._lock:
            hits = self._identity_hits(queries, int(k), exclude=frozenset())
            return [
                [IdentityMatch(gid, sim, tuple(s.frozen() for s in sorted(
                    self._identities[gid].sightings, key=lambda s: s.last_time_ns, reverse=True)))
                 for gid, sim in row]
                for row in hits
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._identities)

    def stats(self) -> dict:
        """Counts and the index in use (kind, device, size, IVF parameters) as JSON-able data."""
        with self._lock:
            index = self._index.stats()
            return {
                "identities": len(self._identities),
                "sightings": sum(len(r.sightings) for r in self._identities.values()),
                "live_tracks": sum(len(t) for t in self._tracks.values()),
                "streams": len(self._tracks),
                "vectors": index.vectors,
                "index_kind": index.kind,
                "device": index.device,
                "ivf_nlist": index.nlist,
                "ivf_nprobe": index.nprobe,
                "index_rebuilds": index.rebuilds,
                "index_building": index.building,
                "dim": self.config.dim,
                "path": None if self.path is None else str(self.path),
                "saves": self.saves,
                "unsaved_changes": self._changes - self._saved_changes,
            }

    # -------------------------------------------------------------------------------- persistence
    @classmethod
    def load(cls, path: str | Path, config: GalleryConfig) -> "Gallery":
        """Restore the gallery saved at ``path`` (an empty one when there is no file); later ``save()``s go
        there.  ``CheckpointError`` naming the file when it is corrupt or was saved with another dim."""
        snapshot = store.read(path)
        gallery = cls(config)
        gallery.path = Path(path)
        if snapshot is None:
            log.info("no gallery at %s: starting empty", path)
            return gallery
        if snapshot.dim != config.dim:
            gallery.close(save=False)
            raise CheckpointError(f"{path}: gallery of dimension {snapshot.dim}, the config says {config.dim}")
        with gallery._lock:
            gallery._restore(snapshot, str(path))
        log.info("gallery restored from %s: %d identities, %d vectors", path, len(gallery._identities), len(gallery._index))
        return gallery

    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write the gallery to ``path`` (default: the loaded or configured path); returns it."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigError("gallery save(): no path given and the gallery has no persist_path")
        with self._save_lock:
            with self._lock:
                snapshot, changes = self._snapshot(), self._changes
            store.write_atomic(target, store.encode(snapshot))
            with self._lock:
                if target == self.path:
                    self._saved_changes = max(self._saved_changes, changes)
                self.saves += 1
        return target

    def close(self, save: bool = True) -> None:
        """Stop autosaving; with ``save`` and a path, write unsaved changes once more."""
        self._stop.set()
        if self._autosaver is not None:
            self._autosaver.join()
            self._autosaver = None
        if save and self.path is not None and self._changes != self._saved_changes:
            self.save()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- internals
    def _assign(self, track: TrackState) -> None:
        aggregate = track.aggregate()
        if aggregate is None:
            return
        taken = frozenset(t.global_id for t in self._tracks.get(track.stream_id, {}).values()
                          if t.global_id is not None and t is not track)
        best = self._identity_hits(aggregate[None], 1, exclude=taken)[0]
        if best and best[0][1] >= self.config.match_threshold:
            record = self._identities[best[0][0]]
        else:
            record = IdentityRecord(self._next_global_id)
            self._identities[record.global_id] = record
            self._next_global_id += 1
        sighting = SightingRecord(track.stream_id, track.track_id, track.first_time_ns, track.last_time_ns,
                                  track.box_xyxy, track.frames, self._next_vector_id, track.weight, alive=True)
        self._next_vector_id += 1
        record.sightings.append(sighting)
        self._owner[sighting.vector_id] = record.global_id
        self._index.upsert(np.array([sighting.vector_id]), aggregate[None])
        track.global_id, track.sighting = record.global_id, sighting
        while len(record.sightings) > self.config.max_sightings_per_identity:
            oldest = record.evictable()
            if oldest is None:
                break
            record.sightings.remove(oldest)
            self._owner.pop(oldest.vector_id, None)
            self._index.remove([oldest.vector_id])

    def _end(self, track: TrackState) -> None:
        if track.sighting is not None:
            track.sighting.alive = False
        self._changes += 1

    def _sweep(self, stream_id: str, time_ns: int) -> None:
        """End this stream's tracks not updated for ``track_timeout_s`` of its time (checked every timeout/4)."""
        timeout_ns = int(self.config.track_timeout_s * 1e9)
        last = self._swept_ns.get(stream_id)
        if last is not None and time_ns - last < timeout_ns // 4:
            return
        self._swept_ns[stream_id] = time_ns
        tracks = self._tracks.get(stream_id, {})
        for track_id in [tid for tid, t in tracks.items() if time_ns - t.last_time_ns > timeout_ns]:
            self._end(tracks.pop(track_id))

    def _identity_hits(self, queries: np.ndarray, k: int, exclude: frozenset) -> list[list[tuple[int, float]]]:
        """Per query, up to ``k`` (global id, similarity) best first, one per identity, skipping ``exclude``:
        asks the index for more vectors until each row has ``k`` identities or nothing more can be found."""
        total = len(self._index)
        rows: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
        if total == 0:
            return rows
        pending = list(range(len(queries)))
        fetch = min(total, 4 * k + len(exclude))
        while pending:
            sims, ids = self._index.search(queries[pending], fetch)
            still = []
            for row_i, q in enumerate(pending):
                found: dict[int, float] = {}
                exhausted = fetch >= total
                for sim, vector_id in zip(sims[row_i].tolist(), ids[row_i].tolist()):
                    if vector_id < 0:
                        exhausted = True  # the IVF lists probed hold no more vectors
                        break
                    gid = self._owner[vector_id]
                    if gid in exclude or gid in found:
                        continue
                    found[gid] = sim
                    if len(found) == k:
                        break
                rows[q] = list(found.items())
                if len(found) < k and not exhausted:
                    still.append(q)
            pending, fetch = still, min(total, fetch * 4)
        return rows

    def _snapshot(self) -> store.GallerySnapshot:
        vector_ids, vectors = self._index.export()
        identities = tuple(
            IdentityRecord(r.global_id, [dataclasses.replace(s) for s in r.sightings])
            for r in self._identities.values()
        )
        return store.GallerySnapshot(self.config.dim, self._next_global_id, self._next_vector_id, time.time_ns(),
                                     identities, vector_ids, vectors)

    def _restore(self, snapshot: store.GallerySnapshot, where: str) -> None:
        known = set(snapshot.vector_ids.tolist())
        for record in snapshot.identities:
            for sighting in record.sightings:
                if sighting.vector_id not in known:
                    raise CheckpointError(f"{where}: identity {record.global_id} refers to vector "
                                          f"{sighting.vector_id}, which the file does not hold")
                sighting.alive = False
                self._owner[sighting.vector_id] = record.global_id
            self._identities[record.global_id] = record
        unowned = known - self._owner.keys()
        if unowned:
            raise CheckpointError(f"{where}: {len(unowned)} stored vectors belong to no identity")
        self._index.upsert(snapshot.vector_ids, snapshot.vectors)
        self._next_global_id = max(snapshot.next_global_id, max(self._identities, default=0) + 1)
        self._next_vector_id = max(snapshot.next_vector_id, max(known, default=-1) + 1)

    def _autosave_loop(self) -> None:
        while not self._stop.wait(self.config.save_interval_s):
            if self._changes == self._saved_changes or self.path is None:
                continue
            try:
                self.save()
            except (OSError, CheckpointError) as exc:  # a full disk must not stop the engine
                self.autosave_errors += 1
                log.error("gallery autosave to %s failed: %s", self.path, exc)
