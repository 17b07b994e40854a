"""How a run's rows reach its workers, for every backend: the static split's shards, the number
of updates a run applies, the static split's pieces, and the size of a saved order generator.

``split="dynamic"`` (one shuffled order per epoch, batches claimed from a shared cursor) is the
shared-memory backend's (:mod:`hogwild_mts.backends.shm.worker`); ``"static"`` gives worker ``w``
rows ``w, w + m, ...``, shuffled every epoch with its own generator ``default_rng(seeds[w])``.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("dynamic", "static")
GENERATOR_WORDS = 6  # a PCG64 generator's state as unsigned 64-bit words (checkpoints keep one)


def shard_rows(n_samples: int, workers: int, worker_id: int) -> np.ndarray:
    """Rows a worker owns under the static split: every ``workers``-th row from ``worker_id``."""
    return np.arange(worker_id, n_samples, workers, dtype=np.int64)


def total_updates(n_rows: int, workers: int, epochs: int, batch_size: int,
                  split: str = "dynamic") -> int:
    """Updates a full run applies: per epoch, all rows in batches (last one shorter) -- for the
    static split, each worker's shard in batches."""
    if split == "dynamic":
        return epochs * -(-n_rows // batch_size)
    return epochs * sum(-(-len(shard_rows(n_rows, workers, w)) // batch_size)
                        for w in range(workers))


def sharded_pieces(n_rows: int, spec, worker_id: int, chunk_batches: int):
    """Static split: yield ``(order, start, stop)`` over this worker's shard, epoch after epoch,
    ``chunk_batches`` batches per piece."""
    shard = shard_rows(n_rows, spec.workers, worker_id)
    rng = np.random.default_rng(spec.seeds[worker_id])
    rows = chunk_batches * spec.batch_size
    for _ in range(spec.epochs):
        order = rng.permutation(shard)
        for start in range(0, order.shape[0], rows):
            yield order, start, min(start + rows, order.shape[0])
