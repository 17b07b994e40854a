"""How a run's rows reach its workers, for every backend: an epoch's order, the static split's
shards, the number of updates a run applies, the static split's pieces, and the size of a saved
order generator.

``split="dynamic"`` (one order of all rows per epoch, batches claimed from a shared cursor) is the
shared-memory backend's (:mod:`hogwild_mts.backends.shm.worker`); ``"static"`` gives worker ``w``
rows ``w, w + m, ...``, ordered every epoch with its own generator ``default_rng(seeds[w])``.
Every backend orders an epoch with :func:`epoch_order`: shuffled (``shuffle=True``, the
default), or the rows in their stored order (``shuffle=False``, scikit-learn's meaning: the
generator is not used, so the seed does not change the order).
"""

from __future__ import annotations

import numpy as np

SPLITS = ("dynamic", "static")
GENERATOR_WORDS = 6  # a PCG64 generator's state as unsigned 64-bit words (checkpoints keep one)


def epoch_order(rows: np.ndarray, rng: np.random.Generator, shuffle: bool) -> np.ndarray:
    """One epoch's visiting order of ``rows`` (int64 row numbers), a new array: with ``shuffle``
    a permutation drawn from ``rng`` (the draws of ``rng.permutation(rows)``), else ``rows`` in
    the order given (``rng`` untouched)."""
    order = np.array(rows, dtype=np.int64)
    if shuffle:
        rng.shuffle(order)
    return order


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
    """Static split: yield ``(order, start, stop)`` over this worker's shard, epoch after epoch
    (each epoch's :func:`epoch_order` of the shard under ``spec.shuffle``), ``chunk_batches``
    batches per piece."""
    shard = shard_rows(n_rows, spec.workers, worker_id)
    rng = np.random.default_rng(spec.seeds[worker_id])
    rows = chunk_batches * spec.batch_size
    for _ in range(spec.epochs):
        order = epoch_order(shard, rng, spec.shuffle)
        for start in range(0, order.shape[0], rows):
            yield order, start, min(start + rows, order.shape[0])
