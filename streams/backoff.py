"""Capped exponential backoff with jitter for reconnecting live sources."""
from __future__ import annotations

import random

from amodal.errors import ConfigError


class Backoff:
    """Delays for reconnect attempts 1, 2, 3, ...: ``d_k = min(max_s, initial_s * 2**(k-1))``, then jittered
    uniformly in ``[max(initial_s, d_k / 2), d_k]`` so that many cameras dropped at once do not reconnect in
    lock-step.  Every delay lies in ``[initial_s, max_s]``.  ``reset()`` after a successful connection."""

    def __init__(self, initial_s: float, max_s: float, *, seed: int | None = None) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ConfigError(f"backoff needs 0 < initial_s <= max_s, got initial_s={initial_s}, max_s={max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self._attempt = 0
        self._rng = random.Random(seed)

    @property
    def attempt(self) -> int:
        """Number of delays handed out since the last reset."""
        return self._attempt

    def reset(self) -> None:
        self._attempt = 0

    def next_delay_s(self) -> float:
        self._attempt += 1
        # cap the exponent: 2**60 seconds is already far beyond any max_s
        ceiling_s = min(self.max_s, self.initial_s * 2.0 ** min(self._attempt - 1, 60))
        return self._rng.uniform(max(self.initial_s, ceiling_s / 2.0), ceiling_s)
