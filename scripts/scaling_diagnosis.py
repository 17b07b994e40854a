#!/usr/bin/env python3
"""Why m workers scale as they do: the worker loop on m threads of one process, with the shared
parts switched on and off one at a time.

Same numba loop as the engine (``kernels.sgd_kernel``), RCV1-shaped data (76 nonzeros per row,
logistic loss, constant step), ``--updates`` updates per thread, median of ``--repeats``
interleaved runs.  Rows:

* shared parameters + shared counter: what the engine does;
* shared parameters, no counter: classic Hogwild! (coherence traffic on the parameters only);
* private parameters + private counters: no cache line is shared, the hardware ceiling;
* the engine pattern with the data in a shared-memory block (4 KB pages: transparent huge pages
  are usually off for /dev/shm), and the same after ``madvise(MADV_HUGEPAGE)`` on the block
  (honoured only where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows it): against the
  first row, the data-location penalty of workers that read the data from /dev/shm;
* the one-way hand-off time of one cache line between two threads (:func:`line_handoff_ns`),
  before each round and, at the end, pinned from the first CPU to each other one (the machine's
  topology: cores sharing a last-level cache hand lines over faster): what every write to a line
  another core holds costs.  On a virtual machine it changes with where the host puts the
  virtual CPUs (tens of ns on cores sharing a last-level cache, about 200 ns across dies), and
  with it every row that shares the parameters.

    .venv/bin/python scripts/scaling_diagnosis.py [--features 47236] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import threading
import time

import numpy as np
from numba import njit

from hogwild_mts.kernels import linear as kernels
from hogwild_mts.kernels.atomics import atomic_fetch_add, atomic_load
from hogwild_mts.backends.shm.block import Layout, SharedBlock
from hogwild_mts.data.tabular import synthetic_sparse

UPDATES_PER_THREAD = 400_000
ROWS = 200_000
CHUNK = 8192
ALPHA_TABLE = np.array([0.5])
MADV_HUGEPAGE = 14  # linux/mman.h
PAGE_BYTES = 4096
HANDOFF_ROUNDS = 100_000  # round trips per hand-off measurement (about 0.04 s at 200 ns)
CACHE_LINE_WORDS = 8  # int64 per 64-byte line


def train_rows(data: dict, params, counter, order, stamp: bool, seconds: list, slot: int) -> None:
    """One thread's share: the engine's kernel over ``order`` in chunks; its time into ``seconds``."""
    buffers = kernels.WorkerBuffers(np.zeros(8, np.int64), np.zeros(1024, np.int64), np.zeros(1),
                                    kernels.NO_VELOCITY, kernels.NO_MARKS)
    rows = kernels.Rows(data["values"], data["indices"], data["indptr"], data["labels"],
                        kernels.UNIT_WEIGHTS, kernels.UNIT_WEIGHTS)  # no penalty: no feature_scale
    kernel = kernels.sgd_kernel(False, False, 0.0, stamp)
    started = time.perf_counter()
    for start in range(0, order.shape[0], CHUNK):
        kernel(rows, order, start, min(start + CHUNK, order.shape[0]), 1, params, params.shape[0],
               kernels.Terms(0, 0.1, 0.0, 0.0), 0.0, ALPHA_TABLE, *kernels.CONSTANT_SCHEDULE,
               counter, buffers)
    seconds[slot] = time.perf_counter() - started


def updates_per_second(data: dict, n_features: int, threads: int, shared_params: bool,
                       stamp: bool, updates: int = UPDATES_PER_THREAD) -> float:
    """Updates/s of ``threads`` threads running the kernel on random rows of ``data``, each
    ``updates`` updates, from the first start to the last end."""
    rng = np.random.default_rng(threads)
    n_rows = data["indptr"].shape[0] - 1
    shared, counter = np.zeros(n_features), np.zeros(8, np.int64)
    workers, seconds = [], [0.0] * threads
    for slot in range(threads):
        params = shared if shared_params else np.zeros(n_features)
        own_counter = counter if shared_params else np.zeros(8, np.int64)
        order = rng.integers(0, n_rows, updates)
        workers.append(threading.Thread(target=train_rows, args=(data, params, own_counter, order,
                                                                 stamp, seconds, slot)))
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return threads * updates / (time.perf_counter() - started)


@njit(nogil=True)
def _pass_line(words, parity, rounds):
    """One side of a ping-pong on ``words[0]``: wait until it holds ``2 i + parity``, add 1."""
    for i in range(rounds):
        while atomic_load(words, 0) != 2 * i + parity:
            pass
        atomic_fetch_add(words, 0, 1)


def line_handoff_ns(rounds: int = HANDOFF_ROUNDS, cpus: tuple | None = None) -> float:
    """Nanoseconds per one-way hand-off of one cache line between two threads, from ``rounds``
    round trips: the threads pinned to ``cpus`` (two CPU numbers), or wherever the OS runs them.
    Needs 2 cores."""
    _pass_line(np.zeros(1, np.int64), 0, 1)  # compile
    words = np.zeros(CACHE_LINE_WORDS, np.int64)

    def side(parity: int) -> None:
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[parity]})  # 0: the calling thread
        _pass_line(words, parity, rounds)

    threads = [threading.Thread(target=side, args=(parity,)) for parity in (0, 1)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - started) / (2 * rounds) * 1e9


def add_round_handoff(handoffs: list) -> None:
    """Append this moment's :func:`line_handoff_ns` to ``handoffs`` (a benchmark calls it before
    each round), where this process may run on 2 CPUs."""
    if len(os.sched_getaffinity(0)) >= 2:
        handoffs.append(line_handoff_ns())


def handoffs_text(handoffs: list) -> str:
    """``"52 ns / 48 ns / ..."``: the hand-offs of the rounds, in order."""
    return " / ".join(f"{ns:.0f} ns" for ns in handoffs)


def advise_huge_pages(arrays) -> bool:
    """``madvise(MADV_HUGEPAGE)`` on the whole pages spanned by ``arrays`` (one mapping); True if
    the kernel accepted it (accepted is not honoured: /dev/shm honours it only with
    shmem_enabled = advise or always)."""
    starts = [a.__array_interface__["data"][0] for a in arrays]
    first = -(-min(starts) // PAGE_BYTES) * PAGE_BYTES
    end = max(s + a.nbytes for s, a in zip(starts, arrays)) // PAGE_BYTES * PAGE_BYTES
    if end <= first:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), MADV_HUGEPAGE) == 0


def data_in_block(private: dict, huge_pages: bool):
    """(block, its arrays by name, advised): a copy of the data arrays in a new shared-memory
    block, advised to use huge pages before it is filled when ``huge_pages``; release the block
    when done."""
    layout = Layout()
    for name, array in private.items():
        layout.add(name, array.dtype, array.shape)
    block = SharedBlock.create(layout)
    in_block = {name: getattr(block.views, name) for name in private}
    advised = huge_pages and advise_huge_pages(list(in_block.values()))
    block.views.place(**private)
    return block, in_block, advised


def thp_settings() -> str:
    """The machine's transparent-huge-page modes (anonymous memory; /dev/shm)."""
    modes = []
    for name in ("enabled", "shmem_enabled"):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{name}") as handle:
                text = handle.read().split()
            modes.append(f"{name} {next((w[1:-1] for w in text if w.startswith('[')), '?')}")
        except OSError:
            modes.append(f"{name} unknown")
    return ", ".join(modes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=47_236)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--updates", type=int, default=UPDATES_PER_THREAD, help="per thread")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset = synthetic_sparse(ROWS, args.features, 76, seed=0)
    private = {"values": dataset.values, "indices": dataset.indices, "indptr": dataset.indptr,
               "labels": dataset.y}
    m = args.threads
    plain_block, in_block, _ = data_in_block(private, huge_pages=False)
    huge_block, in_advised_block, advised = data_in_block(private, huge_pages=True)
    try:
        cases = [
            ("1 thread (baseline)", private, 1, True, True),
            (f"{m} threads, shared parameters + shared counter (the engine)", private, m, True, True),
            (f"{m} threads, shared parameters, no counter (classic Hogwild!)", private, m, True, False),
            (f"{m} threads, private parameters + private counters (nothing shared)", private, m, False, True),
            (f"{m} threads, the engine, data in a shared-memory block", in_block, m, True, True),
            (f"{m} threads, the engine, data in a block advised MADV_HUGEPAGE "
             f"({'accepted' if advised else 'refused'})", in_advised_block, m, True, True),
            ("1 thread, data in a shared-memory block", in_block, 1, True, True),
        ]
        updates_per_second(private, args.features, 1, True, True, 10_000)  # compile / warm caches
        measured = {name: [] for name, *_ in cases}
        handoffs = []
        for _ in range(args.repeats):  # interleaved, so a disturbance hits every case alike
            add_round_handoff(handoffs)
            for name, data, threads, shared_params, stamp in cases:
                measured[name].append(updates_per_second(data, args.features, threads,
                                                         shared_params, stamp, args.updates))
        baseline = float(np.median(measured[cases[0][0]]))
        print(f"d = {args.features:,}, {args.updates:,} updates per thread, median of "
              f"{args.repeats}; transparent huge pages: {thp_settings()}\n")
        print("| case | M updates/s | vs 1 thread |")
        print("|---|---|---|")
        for name, values in measured.items():
            median = float(np.median(values))
            print(f"| {name} | {median / 1e6:.2f} | {median / baseline:.2f}x |")
        if handoffs:
            print("\nOne cache line handed between two threads, one way, before each round: "
                  + handoffs_text(handoffs))
            cpus = sorted(os.sched_getaffinity(0))
            print(f"The same with the threads pinned, CPU {cpus[0]} to each other CPU: "
                  + ", ".join(f"{cpu}: {line_handoff_ns(cpus=(cpus[0], cpu)):.0f} ns"
                              for cpu in cpus[1:]))
        del in_block, in_advised_block
    finally:
        plain_block.release()
        huge_block.release()


if __name__ == "__main__":
    main()
