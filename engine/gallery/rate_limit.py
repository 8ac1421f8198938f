"""Per-client token buckets for the gallery query endpoint (owned by the endpoint's socket thread).

A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a request costs one token.  An
empty bucket refuses and says how long until the next token (``retry_after_s``).  Buckets that have
refilled completely are forgotten (a full bucket is what a new client gets anyway), so memory follows
the number of clients active within the last ``burst / rate_per_s`` seconds, never every client seen.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token buckets keyed by client identity (bytes).  Not thread-safe: one thread owns it."""

    def __init__(self, rate_per_s: float, burst: int, clock_s: Callable[[], float] = time.monotonic) -> None:
        if not rate_per_s > 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s!r}, {burst!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self._clock_s = clock_s
        self._buckets: dict[bytes, _Bucket] = {}
        self._next_prune_s = 0.0

    def take(self, client: bytes) -> float:
        """Take one token of ``client``: 0.0 when granted, else the seconds until a token is available."""
        now_s = self._clock_s()
        self._prune(now_s)
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(self.burst), now_s)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now_s - bucket.updated_s) * self.rate_per_s)
            bucket.updated_s = now_s
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def refund(self, client: bytes) -> None:
        """Give back the token of a request that was refused for another reason (e.g. a full queue)."""
        bucket = self._buckets.get(client)
        if bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now_s: float) -> None:
        if now_s < self._next_prune_s:
            return
        refill_s = self.burst / self.rate_per_s
        self._buckets = {c: b for c, b in self._buckets.items() if b.tokens + (now_s - b.updated_s) * self.rate_per_s
                         < self.burst}
        self._next_prune_s = now_s + max(1.0, refill_s)
