"""What a gallery search returns: identities with their sightings (plain frozen data, no faiss)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sighting:
    """One track of one stream that was given an identity."""

    stream_id: str
    track_id: int
    first_time_ns: int  # wall clock of the track's first frame
    last_time_ns: int  # wall clock of its latest frame
    box_xyxy: tuple[float, float, float, float]  # source pixels, latest frame
    frames: int  # frames seen (every update, whatever its quality)


@dataclass(frozen=True, slots=True)
class IdentityMatch:
    """One global identity found by a search; ``similarity`` is the cosine similarity of the query to the
    identity's closest stored vector; ``sightings`` most recent first."""

    global_id: int
    similarity: float
    sightings: tuple[Sighting, ...]


# -------------------------------------------------------------------------- wire form (docs/gallery.md)
def match_to_wire(match: IdentityMatch) -> dict:
    return {
        "global_id": match.global_id,
        "similarity": float(match.similarity),
        "sightings": [
            {"stream_id": s.stream_id, "track_id": s.track_id, "first_time_ns": s.first_time_ns,
             "last_time_ns": s.last_time_ns, "box_xyxy": [float(v) for v in s.box_xyxy], "frames": s.frames}
            for s in match.sightings
        ],
    }


def match_from_wire(d: dict) -> IdentityMatch:
    """Inverse of ``match_to_wire``; raises ``KeyError``/``TypeError``/``ValueError`` on malformed data."""
    sightings = tuple(
        Sighting(str(s["stream_id"]), int(s["track_id"]), int(s["first_time_ns"]), int(s["last_time_ns"]),
                 tuple(float(v) for v in s["box_xyxy"]), int(s["frames"]))  # type: ignore[arg-type]
        for s in d["sightings"]
    )
    return IdentityMatch(int(d["global_id"]), float(d["similarity"]), sightings)
