"""``GalleryConfig``: the person gallery's one frozen configuration.

Why IVF (``faiss.IndexIVFFlat``) and not HNSW for the approximate index: identities' stored vectors
change while the engine runs (a live track's aggregate refines its vector every frame, and vectors are
evicted when an identity holds too many), and IVF removes and re-adds single ids cheaply through its
direct map, where faiss's HNSW cannot remove at all (it would need a full rebuild per change).  IVF
also has a GPU counterpart (``GpuIndexIVFFlat``) with the same results, trains in seconds on the exact
vectors the gallery keeps anyway, and stores full float32 vectors, so its similarities are exact inner
products: only *which* vectors are visited (``ivf_nprobe`` of ``nlist`` lists) is approximate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from amodal.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class GalleryConfig:
    dim: int  # embedding size D; every embedding is float32[D], L2-normalised
    match_threshold: float = 0.6  # cosine similarity a new track needs to join an existing identity
    min_observations: int = 3  # frames with quality > 0 before a track gets an identity
    exact_max_vectors: int = 50_000  # exact IndexFlatIP up to this many stored vectors, IVF beyond
    ivf_nlist: int = 0  # IVF lists; 0 = 4·sqrt(N) at each (re)build (at most N/39, faiss's minimum training points per list)
    ivf_nprobe: int = 32  # lists visited per query (more = better recall, slower)
    ivf_rebuild_growth: float = 2.0  # retrain the IVF once the vector count has grown by this factor
    ivf_train_per_list: int = 64  # training vectors per list (a random subset of the exact vectors)
    ivf_train_iterations: int = 10  # k-means iterations of the IVF training (faiss's default is 25)
    ivf_background_build: bool = True  # train IVFs in a thread while the current index keeps answering
    max_sightings_per_identity: int = 32  # oldest ended sightings (and their vectors) dropped beyond this
    track_timeout_s: float = 120.0  # a track not updated for this long (its stream's time) counts as ended
    persist_path: str | None = None  # where ``save()`` writes; None = only explicit ``save(path)``
    save_interval_s: float = 0.0  # autosave period when ``persist_path`` is set; 0 = no autosave
    device: str = "auto"  # "auto" | "cpu" | "cuda": where faiss searches (GPU only with faiss GPU support)

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or not 1 <= self.dim <= 65536:
            raise ConfigError(f"gallery dim must be an int in [1, 65536], got {self.dim!r}")
        if not isinstance(self.match_threshold, (int, float)) or not -1.0 <= self.match_threshold <= 1.0:
            raise ConfigError(f"gallery match_threshold is a cosine similarity in [-1, 1], got {self.match_threshold!r}")
        _positive_int("min_observations", self.min_observations)
        _positive_int("exact_max_vectors", self.exact_max_vectors)
        if not isinstance(self.ivf_nlist, int) or self.ivf_nlist < 0:
            raise ConfigError(f"gallery ivf_nlist must be an int >= 0 (0 = automatic), got {self.ivf_nlist!r}")
        _positive_int("ivf_nprobe", self.ivf_nprobe)
        _positive_int("ivf_train_per_list", self.ivf_train_per_list)
        _positive_int("ivf_train_iterations", self.ivf_train_iterations)
        _positive_int("max_sightings_per_identity", self.max_sightings_per_identity)
        if not isinstance(self.ivf_rebuild_growth, (int, float)) or not self.ivf_rebuild_growth > 1.0:
            raise ConfigError(f"gallery ivf_rebuild_growth must be > 1, got {self.ivf_rebuild_growth!r}")
        if not isinstance(self.track_timeout_s, (int, float)) or not self.track_timeout_s > 0:
            raise ConfigError(f"gallery track_timeout_s must be > 0, got {self.track_timeout_s!r}")
        interval = self.save_interval_s
        if not isinstance(interval, (int, float)) or not (interval >= 0 and math.isfinite(interval)):
            raise ConfigError(f"gallery save_interval_s must be a finite number >= 0, got {self.save_interval_s!r}")
        path = self.persist_path
        if path is not None and (not isinstance(path, (str, Path)) or not str(path)):
            raise ConfigError(f"gallery persist_path must be a non-empty path or None, got {self.persist_path!r}")
        if self.save_interval_s > 0 and self.persist_path is None:
            raise ConfigError(f"gallery save_interval_s={self.save_interval_s} needs a persist_path to autosave to")
        if not isinstance(self.ivf_background_build, bool):
            raise ConfigError(f"gallery ivf_background_build must be a bool, got {self.ivf_background_build!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"gallery device must be one of {DEVICES}, got {self.device!r}")

    def nlist_for(self, num_vectors: int) -> int:
        """IVF lists for an index of ``num_vectors`` vectors (never more than vectors / 39)."""
        nlist = self.ivf_nlist or int(4 * math.sqrt(max(num_vectors, 1)))
        return max(1, min(nlist, 65536, num_vectors // 39))


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"gallery {name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """The query endpoint's per-request limits, worker pool and per-client rate limits (docs/gallery.md).

    Cheap requests (``stats``, search by embedding) are answered by the socket's own thread; image
    searches are checked there (size, header dimensions, rate) and then decoded and embedded by a pool of
    ``image_workers`` threads fed through a queue of at most ``image_queue_size`` waiting requests.  A
    request that finds the queue full, or a client over its rate, gets an immediate error reply with
    ``retry_after_s`` — never silence.  A client is one ZeroMQ routing id (one REQ socket = one client).
    """

    k_max: int = 100  # largest k a search may ask for
    max_request_bytes: int = 8 << 20  # larger requests get an error reply naming the limit
    max_message_bytes: int = 16 << 20  # ZeroMQ MAXMSGSIZE: larger messages drop the connection, no reply
    max_image_pixels: int = 2048 * 2048  # width x height from the image header, checked before decoding
    max_embedding_norm: float = 1e3  # L2 norm bound of query embeddings and of the embedder's output
    image_workers: int = 2  # threads decoding and embedding image queries
    image_queue_size: int = 8  # image queries waiting for a worker; beyond: a "busy" error reply
    client_requests_per_s: float = 100.0  # token-bucket refill rate per client, every request costs one token
    client_request_burst: int = 200  # bucket size: requests a quiet client may send at once
    client_images_per_s: float = 4.0  # a second bucket per client for image searches
    client_image_burst: int = 8
    socket_hwm_messages: int = 32  # ZeroMQ send/receive high-water mark, per connection

    def __post_init__(self) -> None:
        for name in ("k_max", "max_request_bytes", "max_message_bytes", "max_image_pixels", "image_workers",
                     "image_queue_size", "client_request_burst", "client_image_burst", "socket_hwm_messages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"query limits {name} must be an int >= 1, got {value!r}")
        if self.max_message_bytes < self.max_request_bytes:
            raise ConfigError(f"query limits max_message_bytes ({self.max_message_bytes}) must be >= "
                              f"max_request_bytes ({self.max_request_bytes})")
        for name in ("max_embedding_norm", "client_requests_per_s", "client_images_per_s"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                    or not value > 0):
                raise ConfigError(f"query limits {name} must be a finite number > 0, got {value!r}")
