"""amodal: an occlusion-aware streaming video analytics engine.

Public API (imported lazily so that ``import amodal`` stays cheap):
  * ``amodal.Engine``, ``amodal.EngineConfig`` — run sources through an analyzer and publish results;
  * ``amodal.Subscriber`` — iterate over published results (``amodal.NatsSubscriber``: from a cluster's JetStream);
  * ``amodal.types`` — the frozen data that crosses components.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Engine": ("amodal.engine.engine", "Engine"),
    "EngineConfig": ("amodal.engine.config", "EngineConfig"),
    "Subscriber": ("amodal.subscriber", "Subscriber"),
    "NatsSubscriber": ("amodal.subscriber_nats", "NatsSubscriber"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'amodal' has no attribute {name!r}")


__all__ = ["Engine", "EngineConfig", "NatsSubscriber", "Subscriber", "__version__"]
