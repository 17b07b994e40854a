#!/usr/bin/env python3
"""Why two workers scale as they do: the worker loop on threads of one process, with the shared
parts switched on and off one at a time.

Same numba loop as the engine (``kernels.sgd_chunk``), RCV1-shaped data (d = 47,236, 76 nonzeros
per row, logistic loss), 400,000 updates per thread, median of ``--repeats`` runs.  Rows:

* shared parameters + shared counter: what the engine does;
* shared parameters, no counter: classic Hogwild! (coherence traffic on the parameters only);
* private parameters + private counters: no cache line is shared, the hardware ceiling;
* data in a shared-memory block vs in ordinary numpy memory, one thread: what 4 KB shared-memory
  pages (no transparent huge pages for /dev/shm here) cost against numpy's huge-page arrays.

    .venv/bin/python scripts/scaling_diagnosis.py [--features 47236] [--repeats 3]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from hogwild_mts.backends.shm import kernels
from hogwild_mts.data.tabular import synthetic_sparse
from hogwild_mts.backends.shm.block import Layout, SharedBlock

UPDATES_PER_THREAD = 400_000
CHUNK = 8192
ALPHA_TABLE = np.array([0.5])


def train_rows(data: dict, params, counter, order, stamp: bool, seconds: list, slot: int) -> None:
    """One thread's share: the engine's kernel over ``order`` in chunks; its time into ``seconds``."""
    hist, stats = np.zeros(1024, np.int64), np.zeros(8, np.int64)
    feature_scale = np.zeros(params.shape[0])
    started = time.perf_counter()
    for start in range(0, order.shape[0], CHUNK):
        kernels.sgd_chunk(data["values"], data["indices"], data["indptr"], False, data["labels"],
                          feature_scale, order, start, min(start + CHUNK, order.shape[0]), 1,
                          params, params.shape[0], False, 0, 0.0, ALPHA_TABLE, stamp, counter,
                          hist, stats, np.zeros(1))
    seconds[slot] = time.perf_counter() - started


def updates_per_second(data: dict, n_features: int, threads: int, shared_params: bool,
                       stamp: bool) -> float:
    rng = np.random.default_rng(threads)
    n_rows = data["indptr"].shape[0] - 1
    shared, counter = np.zeros(n_features), np.zeros(8, np.int64)
    workers, seconds = [], [0.0] * threads
    for slot in range(threads):
        params = shared if shared_params else np.zeros(n_features)
        own_counter = counter if shared_params else np.zeros(8, np.int64)
        order = rng.integers(0, n_rows, UPDATES_PER_THREAD)
        workers.append(threading.Thread(target=train_rows, args=(data, params, own_counter, order,
                                                                 stamp, seconds, slot)))
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return threads * UPDATES_PER_THREAD / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=47_236)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset = synthetic_sparse(200_000, args.features, 76, seed=0)
    private = {"values": dataset.values, "indices": dataset.indices, "indptr": dataset.indptr,
               "labels": dataset.y}
    layout = Layout()
    for name, array in private.items():
        layout.add(name, array.dtype, array.shape)
    block = SharedBlock.create(layout)
    try:
        for name, array in private.items():
            block.views[name][:] = array
        in_block = dict(block.views)
        cases = [
            ("1 thread (baseline)", private, 1, True, True),
            ("2 threads, shared parameters + shared counter (the engine)", private, 2, True, True),
            ("2 threads, shared parameters, no counter (classic Hogwild!)", private, 2, True, False),
            ("2 threads, private parameters + private counters (nothing shared)", private, 2, False, True),
            ("1 thread, data in a shared-memory block", in_block, 1, True, True),
        ]
        updates_per_second(private, args.features, 1, True, True)  # compile / warm caches
        measured = {name: [] for name, *_ in cases}
        for _ in range(args.repeats):  # interleaved, so a disturbance hits every case alike
            for name, data, threads, shared_params, stamp in cases:
                measured[name].append(updates_per_second(data, args.features, threads,
                                                         shared_params, stamp))
        baseline = float(np.median(measured[cases[0][0]]))
        print(f"d = {args.features:,}, {UPDATES_PER_THREAD:,} updates per thread, median of {args.repeats}\n")
        print("| case | M updates/s | vs 1 thread |")
        print("|---|---|---|")
        for name, values in measured.items():
            median = float(np.median(values))
            print(f"| {name} | {median / 1e6:.2f} | {median / baseline:.2f}x |")
        del in_block
    finally:
        block.release()


if __name__ == "__main__":
    main()
