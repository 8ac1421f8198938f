"""The gallery file (no pickle) and its atomic write.

Layout: a 52-byte header ``<8s I Q 32s>`` = magic ``b"AMGALLRY"``, format version (uint32), payload
length in bytes (uint64), SHA-256 of the payload; then the payload, one msgpack map::

    {"dim": D, "next_global_id": int, "next_vector_id": int, "saved_time_ns": int,
     "identities": [{"global_id": int, "sightings": [{"stream_id", "track_id", "first_time_ns",
                     "last_time_ns", "box_xyxy", "frames", "vector_id", "weight"}, ...]}, ...],
     "vector_ids": int64 little-endian bytes [N], "vectors": float32 little-endian bytes [N, D]}

A truncated or altered file fails the length or checksum test and raises ``CheckpointError`` naming
the file.  There is no fallback file: the write is atomic (temporary file in the same directory,
flush + fsync, ``os.replace``, fsync of the directory), so the file on disk is always one complete save.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

from amodal.engine.gallery.identity import IdentityRecord, SightingRecord
from amodal.errors import CheckpointError

MAGIC = b"AMGALLRY"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")


@dataclass(frozen=True, slots=True)
class GallerySnapshot:
    """Everything a gallery restores from: identities (sightings and vector ids) and the stored vectors."""

    dim: int
    next_global_id: int
    next_vector_id: int
    saved_time_ns: int
    identities: tuple[IdentityRecord, ...]
    vector_ids: np.ndarray  # int64[N]
    vectors: np.ndarray  # float32[N, D]


def encode(snapshot: GallerySnapshot) -> bytes:
    payload = msgpack.packb(
        {
            "dim": snapshot.dim,
            "next_global_id": snapshot.next_global_id,
            "next_vector_id": snapshot.next_vector_id,
            "saved_time_ns": snapshot.saved_time_ns,
            "identities": [{"global_id": r.global_id, "sightings": [s.to_wire() for s in r.sightings]}
                           for r in snapshot.identities],
            "vector_ids": np.ascontiguousarray(snapshot.vector_ids, dtype="<i8").tobytes(),
            "vectors": np.ascontiguousarray(snapshot.vectors, dtype="<f4").tobytes(),
        },
        use_bin_type=True,
    )
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(data: bytes, where: str) -> GallerySnapshot:
    """Parse a gallery file's bytes; ``CheckpointError`` (starting with ``where``) for anything wrong."""
    if len(data) < _HEADER.size:
        raise CheckpointError(f"{where}: {len(data)} bytes, shorter than the {_HEADER.size}-byte header (truncated?)")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"{where}: not a gallery file (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{where}: gallery format version {version}, this code reads {FORMAT_VERSION}")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise CheckpointError(f"{where}: payload is {len(payload)} bytes, the header says {length} (truncated?)")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{where}: checksum mismatch (the file is corrupt)")
    try:
        d = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        dim = int(d["dim"])
        vector_ids = np.frombuffer(d["vector_ids"], dtype="<i8").astype(np.int64)
        vectors = np.frombuffer(d["vectors"], dtype="<f4").astype(np.float32)
        if vectors.size != len(vector_ids) * dim:
            raise ValueError(f"{vectors.size} floats for {len(vector_ids)} vectors of dimension {dim}")
        identities = tuple(
            IdentityRecord(int(r["global_id"]), [SightingRecord.from_wire(s) for s in r["sightings"]])
            for r in d["identities"]
        )
        return GallerySnapshot(dim, int(d["next_global_id"]), int(d["next_vector_id"]), int(d["saved_time_ns"]),
                               identities, vector_ids, vectors.reshape(len(vector_ids), dim))
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise CheckpointError(f"{where}: malformed gallery payload ({type(exc).__name__}: {exc})") from exc


def read(path: str | Path) -> GallerySnapshot | None:
    """The snapshot saved at ``path``, or None when there is no file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the gallery file ({exc})") from exc
    return decode(data, str(path))


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash at any moment leaves either the old or the new file."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
