"""The numba atomics are exact across processes sharing one block."""

import multiprocessing

import numpy as np
from numba import njit

from hogwild_mts.kernels.atomics import atomic_fetch_add, atomic_load, atomic_store
from hogwild_mts.backends.shm.block import Layout, SharedBlock

INCREMENTS_PER_PROCESS = 1_000_000
PROCESSES = 3


@njit(cache=True)
def _hammer(counter, times):
    previous_max = -1
    for _ in range(times):
        previous = atomic_fetch_add(counter, 0, 1)
        if previous <= previous_max:  # fetch_add must hand out strictly increasing values
            return -1
        previous_max = previous
    return previous_max


@njit(cache=True)
def _load_store(words):
    atomic_store(words, 1, 41)
    before = atomic_fetch_add(words, 1, 1)
    return before, atomic_load(words, 1)


def _hammer_in_child(name, layout, results, index):
    block = SharedBlock.attach(name, layout)
    results[index] = _hammer(block.views.counter, INCREMENTS_PER_PROCESS)
    block.close()


def test_load_store_and_fetch_add_return_values():
    words = np.zeros(8, dtype=np.int64)
    assert _load_store(words) == (41, 42)
    assert words[1] == 42


def test_counter_is_exact_across_processes():
    layout = Layout()
    layout.add("counter", np.int64, (8,))
    block = SharedBlock.create(layout)
    try:
        _hammer(np.zeros(1, dtype=np.int64), 1)  # compile in the parent, children load the cache
        context = multiprocessing.get_context("spawn")
        results = context.Array("q", PROCESSES)
        children = [context.Process(target=_hammer_in_child, args=(block.name, layout, results, i))
                    for i in range(PROCESSES)]
        for child in children:
            child.start()
        for child in children:
            child.join(120)
            assert child.exitcode == 0
        assert block.views.counter[0] == PROCESSES * INCREMENTS_PER_PROCESS
        assert all(r >= INCREMENTS_PER_PROCESS - 1 for r in results[:])  # none saw a repeat (-1)
        assert max(results[:]) == PROCESSES * INCREMENTS_PER_PROCESS - 1
    finally:
        block.release()


def test_word_operations_callable_from_python():
    from hogwild_mts.kernels.linear import add_word, load_word, store_word

    words = np.zeros(8, dtype=np.int64)
    store_word(words, 3, 40)
    assert add_word(words, 3, 2) == 40
    assert load_word(words, 3) == 42 and words[3] == 42
