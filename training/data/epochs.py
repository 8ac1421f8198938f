"""The epoch schedule the dataset-backed tasks share: which items each batch of each rank takes."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def epoch_batches(n: int, *, batch_size: int, seed: int, rank: int, world_size: int,
                  start_batch: int = 0) -> Iterator[tuple[int, list[int]]]:
    """Endless ``(epoch, positions)`` of batches ``start_batch, start_batch + 1, …``: each epoch a
    ``(seed, epoch)``-permutation of the ``n`` items, rank-sharded, repeated to fill a batch when a shard is
    smaller; batch b depends only on (seed, rank, b), so a resumed run skips batches without decoding them."""
    per_rank = max(1, n // world_size)
    batches_per_epoch = max(1, per_rank // batch_size)
    batch = start_batch
    while True:
        epoch, k = divmod(batch, batches_per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)[rank::world_size]
        if len(perm) < batch_size:
            perm = np.resize(perm, batch_size)
        yield epoch, [int(perm[k * batch_size + j]) for j in range(batch_size)]
        batch += 1
