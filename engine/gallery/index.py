"""``VectorIndex``: int64-keyed unit vectors with inner-product (cosine) search through faiss.

Exact (``IndexIDMap(IndexFlatIP)``) up to ``exact_max_vectors`` vectors, ``IndexIVFFlat`` beyond
(config.py says why IVF).  The index keeps its own copy of every vector (float32[N, D] rows), so it can
retrain the IVF as the gallery grows, switch kinds, and hand the vectors to persistence.  Changes are
recorded and applied to faiss lazily, on the next ``search`` — per-frame refinements of a live track's
vector then cost one row write each, not one faiss removal each.  Training an IVF (seconds at 100k
vectors, minutes at 1M on a small CPU) runs in a background thread on a snapshot while the current
index keeps answering; changes made meanwhile are replayed onto the new IVF when it is swapped in.

On a GPU (faiss built with GPU support and a CUDA device present) searches run on a GPU copy of the
index, re-copied from the CPU index after changes; the CPU index stays the one that is modified.

Small operations (adds of a few vectors, searches of fewer than ``_SMALL_QUERIES`` queries) run faiss
on one OpenMP thread: on a busy CPU, waking faiss's thread team costs more than the work itself (a
one-vector IVF add measured 12 ms with 2 threads and 0.3 ms with 1 on the shared 2-core machine).  The
thread count is an OpenMP per-thread setting, so this does not affect other threads' faiss calls.

Not thread-safe: ``Gallery`` holds its lock around every call.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import faiss
import numpy as np

from amodal.engine.gallery.config import GalleryConfig
from amodal.errors import ConfigError, SchemaError

log = logging.getLogger(__name__)

_ADD_CHUNK = 65536
_SMALL_QUERIES = 20  # faiss's own threshold for switching exact search to BLAS
_SMALL_ADD = 1024
_GPU_K_MAX = 2048  # faiss GPU indexes return at most this many neighbours


@contextlib.contextmanager
def faiss_threads(count: int | None) -> Iterator[None]:
    """Run the enclosed faiss calls of this thread on ``count`` OpenMP threads (None = leave as is)."""
    if count is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def faiss_gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def resolve_device(preference: str) -> str:
    """``auto`` → ``cuda`` when faiss can use a GPU, else ``cpu``; ``cuda`` without one → ``ConfigError``."""
    if preference == "cpu":
        return "cpu"
    if faiss_gpu_available():
        return "cuda"
    if preference == "cuda":
        raise ConfigError(
            f"gallery device 'cuda' requested but faiss {faiss.__version__} has no GPU support or sees no CUDA device"
        )
    return "cpu"


@dataclass(frozen=True, slots=True)
class IndexStats:
    kind: str  # "exact" | "ivf"
    device: str  # "cpu" | "cuda"
    vectors: int
    nlist: int  # 0 for the exact index
    nprobe: int  # 0 for the exact index
    rebuilds: int  # IVF (re)trainings and kind switches so far
    building: bool  # an IVF is being trained in the background


@dataclass(slots=True)
class BuiltIvf:
    index: faiss.IndexIVFFlat  # holds every vector given to ``build_ivf``
    quantizer: faiss.IndexFlatIP  # kept referenced for the index's lifetime
    nlist: int
    trained_on: int


def build_ivf(ids: np.ndarray, vectors: np.ndarray, config: GalleryConfig) -> BuiltIvf:
    """Train an ``IndexIVFFlat`` (inner product, hashtable direct map for cheap removals) on a random
    subset of ``vectors`` float32[N, D] and add them all under ``ids`` int64[N]."""
    n = len(ids)
    nlist = config.nlist_for(n)
    train_n = min(n, nlist * config.ivf_train_per_list)
    sample = vectors
    if train_n < n:
        rows = np.random.default_rng(n).choice(n, size=train_n, replace=False)
        rows.sort()
        sample = vectors[rows]
    quantizer = faiss.IndexFlatIP(config.dim)
    index = faiss.IndexIVFFlat(quantizer, config.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = config.ivf_train_iterations
    index.train(np.ascontiguousarray(sample))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    index.nprobe = min(config.ivf_nprobe, nlist)
    for start in range(0, n, _ADD_CHUNK):
        index.add_with_ids(np.ascontiguousarray(vectors[start : start + _ADD_CHUNK]),
                           np.ascontiguousarray(ids[start : start + _ADD_CHUNK], dtype=np.int64))
    return BuiltIvf(index, quantizer, nlist, train_n)


@dataclass(slots=True)
class _BackgroundBuild:
    snapshot_ids: np.ndarray  # int64[N], the ids the build holds
    changed: set[int] = field(default_factory=set)  # ids upserted or removed since the snapshot
    thread: threading.Thread | None = None
    result: BuiltIvf | None = None
    error: Exception | None = None


class VectorIndex:
    def __init__(self, config: GalleryConfig) -> None:
        self.config = config
        self.dim = config.dim
        self.device = resolve_device(config.device)
        self._ids = np.empty(0, dtype=np.int64)
        self._vectors = np.empty((0, self.dim), dtype=np.float32)
        self._in_faiss = np.empty(0, dtype=bool)  # row is present in the faiss index as stored
        self._count = 0
        self._row_of: dict[int, int] = {}
        self._to_add: set[int] = set()  # ids whose current row must be added to faiss
        self._to_remove: set[int] = set()  # ids present in faiss with an outdated or deleted vector
        self.kind = "exact"
        self._index = self._new_exact()
        self._quantizer = None
        self._trained_at = 0  # vector count the IVF was trained at
        self._nlist = 0
        self.rebuilds = 0
        self._gpu_resources = faiss.StandardGpuResources() if self.device == "cuda" else None
        self._gpu_index = None
        self._gpu_ids: np.ndarray | None = None  # GPU exact index position → id
        self._gpu_stale = True
        self._build: _BackgroundBuild | None = None

    # ------------------------------------------------------------------------------------- contents
    def __len__(self) -> int:
        return self._count

    def __contains__(self, vector_id: int) -> bool:
        return int(vector_id) in self._row_of

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or overwrite ``vectors`` float32[M, D] under ``ids`` int64[M]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        if vectors.shape[1] != self.dim:
            raise SchemaError(f"vectors have dimension {vectors.shape[1]}, the index holds {self.dim}")
        self._reserve(self._count + len(ids))
        if self._build is not None:
            self._build.changed.update(ids.tolist())
        for vector_id, vector in zip(ids.tolist(), vectors):
            row = self._row_of.get(vector_id)
            if row is None:
                row = self._count
                self._count += 1
                self._row_of[vector_id] = row
                self._ids[row] = vector_id
                self._in_faiss[row] = False
            elif self._in_faiss[row]:
                self._to_remove.add(vector_id)
                self._in_faiss[row] = False
            self._vectors[row] = vector
            self._to_add.add(vector_id)

    def remove(self, ids) -> None:
        """Forget ``ids`` (unknown ids are ignored)."""
        for vector_id in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            row = self._row_of.pop(vector_id, None)
            if row is None:
                continue
            if self._build is not None:
                self._build.changed.add(vector_id)
            if self._in_faiss[row]:
                self._to_remove.add(vector_id)
            self._to_add.discard(vector_id)
            last = self._count - 1
            if row != last:  # move the last row into the hole
                moved = int(self._ids[last])
                self._ids[row] = moved
                self._vectors[row] = self._vectors[last]
                self._in_faiss[row] = self._in_faiss[last]
                self._row_of[moved] = row
            self._count = last

    def vectors(self, ids) -> np.ndarray:
        """float32[M, D] stored under ``ids`` (each must be present)."""
        rows = [self._row_of[int(i)] for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        return self._vectors[rows].copy()

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64[N], vectors float32[N, D]) copies of everything stored."""
        return self._ids[: self._count].copy(), self._vectors[: self._count].copy()

    def set_nprobe(self, nprobe: int) -> None:
        """IVF lists visited per query from now on (the next rebuild goes back to ``config.ivf_nprobe``)."""
        if not isinstance(nprobe, int) or nprobe < 1:
            raise ConfigError(f"nprobe must be an int >= 1, got {nprobe!r}")
        if self.kind == "ivf":
            self._index.nprobe = min(nprobe, self._nlist)
            self._gpu_stale = True

    def stats(self) -> IndexStats:
        ivf = self.kind == "ivf"
        return IndexStats(self.kind, self.device, self._count, self._nlist if ivf else 0,
                          int(self._index.nprobe) if ivf else 0, self.rebuilds, self._build is not None)

    # --------------------------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products of ``queries`` float32[N, D]: (similarities float32[N, k'], ids int64[N, k'])
        best first, ``k' = min(k, len(self))``; id -1 marks a slot the IVF found no vector for."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise SchemaError(f"queries have shape {queries.shape}, expected [N, {self.dim}]")
        k = min(int(k), self._count)
        if k <= 0 or len(queries) == 0:
            return np.empty((len(queries), 0), dtype=np.float32), np.empty((len(queries), 0), dtype=np.int64)
        self.flush()
        if self.device == "cuda":
            return self._search_gpu(queries, k)
        with faiss_threads(1 if len(queries) < _SMALL_QUERIES else None):
            sims, ids = self._index.search(queries, k)
        return sims, ids

    def flush(self, wait: bool = False) -> None:
        """Apply recorded changes to faiss, switching kind or retraining the IVF when the size calls for it.

        With ``config.ivf_background_build`` an IVF is trained in a background thread while the current
        index keeps answering (exactly, for the exact one); it is swapped in by the first ``flush`` after
        it is ready, or by this one with ``wait``.
        """
        if self._build is not None and (wait or not self._build.thread.is_alive()):
            self._build.thread.join()
            self._finish_background_build()
        if self._build is None and self._needs_rebuild():
            if self._count > self.config.exact_max_vectors and self.config.ivf_background_build:
                self._start_background_build()
                if wait:
                    self._build.thread.join()
                    self._finish_background_build()
            else:
                self._rebuild()
        if not self._to_add and not self._to_remove:
            return
        with faiss_threads(1 if len(self._to_add) < _SMALL_ADD else None):
            self._apply_changes()
        self._gpu_stale = True

    # ------------------------------------------------------------------------------------ internals
    def _apply_changes(self) -> None:
        if self._to_remove:
            removing = np.fromiter(self._to_remove, dtype=np.int64, count=len(self._to_remove))
            selector = faiss.IDSelectorArray(removing) if self.kind == "ivf" else faiss.IDSelectorBatch(removing)
            self._index.remove_ids(selector)
            self._to_remove.clear()
        if self._to_add:
            rows = np.fromiter((self._row_of[i] for i in self._to_add), dtype=np.int64, count=len(self._to_add))
            rows.sort()
            self._add_rows(rows)
            self._to_add.clear()

    def _reserve(self, needed: int) -> None:
        capacity = len(self._ids)
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity, 64)
        ids = np.empty(capacity, dtype=np.int64)
        vectors = np.empty((capacity, self.dim), dtype=np.float32)
        in_faiss = np.zeros(capacity, dtype=bool)
        ids[: self._count] = self._ids[: self._count]
        vectors[: self._count] = self._vectors[: self._count]
        in_faiss[: self._count] = self._in_faiss[: self._count]
        self._ids, self._vectors, self._in_faiss = ids, vectors, in_faiss

    def _needs_rebuild(self) -> bool:
        n, cfg = self._count, self.config
        if self.kind == "exact":
            return n > cfg.exact_max_vectors
        return n <= cfg.exact_max_vectors // 2 or n >= self._trained_at * cfg.ivf_rebuild_growth

    def _new_exact(self):
        return faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))

    def _rebuild(self) -> None:
        """Switch kind or retrain, blocking (always for the exact index; for the IVF when not in background)."""
        n = self._count
        if n > self.config.exact_max_vectors:
            built = build_ivf(self._ids[:n], self._vectors[:n], self.config)
            self._index, self._quantizer, self._nlist, self._trained_at = built.index, built.quantizer, built.nlist, n
            self.kind = "ivf"
            log.info("gallery index: IVF with %d lists trained on %d of %d vectors", built.nlist, built.trained_on, n)
        else:
            self._quantizer, self._index, self.kind, self._trained_at = None, self._new_exact(), "exact", 0
            self._in_faiss[:n] = False
            self._add_rows(np.arange(n, dtype=np.int64))
        self._in_faiss[:n] = True
        self._to_add.clear()
        self._to_remove.clear()
        self.rebuilds += 1
        self._gpu_stale = True

    def _start_background_build(self) -> None:
        n = self._count
        ids, vectors = self._ids[:n].copy(), self._vectors[:n].copy()
        build = _BackgroundBuild(snapshot_ids=ids)

        def work() -> None:
            try:
                build.result = build_ivf(ids, vectors, self.config)
            except Exception as exc:  # reported and retried in the foreground by _finish_background_build
                build.error = exc

        build.thread = threading.Thread(target=work, name="amodal-gallery-index-build", daemon=True)
        self._build = build
        build.thread.start()
        log.info("gallery index: training an IVF on %d vectors in the background", n)

    def _finish_background_build(self) -> None:
        """Swap in the finished IVF, replaying what changed since its snapshot."""
        build, self._build = self._build, None
        if build.error is not None:
            log.error("gallery index: background IVF build failed (%s); rebuilding in the foreground", build.error)
            self._rebuild()
            return
        n = self._count
        if n <= self.config.exact_max_vectors:  # the gallery shrank meanwhile: the build is not wanted
            return
        built = build.result
        changed = np.fromiter(build.changed, dtype=np.int64, count=len(build.changed))
        stale = changed[np.isin(changed, build.snapshot_ids)]
        if len(stale):
            built.index.remove_ids(faiss.IDSelectorArray(stale))
        self._index, self._quantizer, self._nlist = built.index, built.quantizer, built.nlist
        self._trained_at, self.kind = len(build.snapshot_ids), "ivf"
        self._in_faiss[:n] = True
        current = [self._row_of[i] for i in changed.tolist() if i in self._row_of]
        if current:
            self._in_faiss[current] = False
            self._add_rows(np.sort(np.array(current, dtype=np.int64)))
        self._to_add.clear()
        self._to_remove.clear()
        self.rebuilds += 1
        self._gpu_stale = True
        log.info("gallery index: IVF with %d lists in use (%d changes replayed)", built.nlist, len(changed))

    def _add_rows(self, rows: np.ndarray) -> None:
        for start in range(0, len(rows), _ADD_CHUNK):
            chunk = rows[start : start + _ADD_CHUNK]
            self._index.add_with_ids(np.ascontiguousarray(self._vectors[chunk]), np.ascontiguousarray(self._ids[chunk]))
            self._in_faiss[chunk] = True

    def _search_gpu(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu_stale or self._gpu_index is None:
            if self.kind == "ivf":  # GPU IVF lists keep the ids
                self._gpu_index, self._gpu_ids = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index), None
            else:  # GPU flat index addressed by position
                flat = faiss.IndexFlatIP(self.dim)
                flat.add(np.ascontiguousarray(self._vectors[: self._count]))
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, flat)
                self._gpu_ids = self._ids[: self._count].copy()
            self._gpu_stale = False
        sims, found = self._gpu_index.search(queries, min(k, _GPU_K_MAX))
        if self._gpu_ids is not None:
            found = np.where(found >= 0, self._gpu_ids[np.clip(found, 0, None)], -1)
        return sims, found
