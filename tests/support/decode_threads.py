"""pytest plugin: ``-p tests.support.decode_threads`` runs every ``Engine`` of the session with ``decode: threads``
(sources on engine threads) instead of the default worker processes, so that the engine tests check both modes:

    .venv/bin/python -m pytest -p tests.support.decode_threads tests/engine/test_engine.py
"""
from __future__ import annotations

import dataclasses


def pytest_sessionstart(session) -> None:
    """Patch late (after the root conftest set up the environment torch needs at import)."""
    from amodal.engine.engine import Engine

    original = Engine.__init__

    def threads_init(self, config, *args, **kwargs) -> None:
        original(self, dataclasses.replace(config, decode="threads"), *args, **kwargs)

    Engine.__init__ = threads_init
