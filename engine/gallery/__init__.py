"""The person gallery: cross-camera global identities for ReID embeddings, kept in a faiss index, saved
atomically, searchable over ZeroMQ (``QueryServer``).  Heavy parts are imported on first use."""
from __future__ import annotations

from amodal.engine.gallery.config import GalleryConfig, QueryLimits
from amodal.engine.gallery.types import IdentityMatch, Sighting

_LAZY = {
    "Gallery": ("amodal.engine.gallery.gallery", "Gallery"),
    "QueryServer": ("amodal.engine.gallery.query", "QueryServer"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'amodal.engine.gallery' has no attribute {name!r}")


__all__ = ["Gallery", "GalleryConfig", "IdentityMatch", "QueryLimits", "QueryServer", "Sighting"]
