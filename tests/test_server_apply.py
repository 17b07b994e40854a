"""The parameter server's sparse apply (:func:`hogwild_mts.kernels.flat.apply_sparse_update`)
against the slow reference (:func:`hogwild_mts.kernels.reference.server_push`) and against the
dense apply of the same step sum, zero outside the pushed coordinates."""

import numpy as np
import pytest

from hogwild_mts.core import control
from hogwild_mts.kernels import reference
from hogwild_mts.kernels.flat import apply_sparse_update, apply_update


def pushes(seed: int, n_params: int = 60, count: int = 25):
    """Random pushes: (distinct sorted int64 indices, step values, version read lag)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        size = int(rng.integers(0, n_params + 1))
        indices = np.sort(rng.choice(n_params, size=size, replace=False)).astype(np.int64)
        yield indices, rng.normal(size=size), int(rng.integers(0, 6))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_apply_matches_the_reference_and_the_dense_apply(seed):
    n_params = 60
    rng = np.random.default_rng(100 + seed)
    table = np.array([0.5, 0.3, 0.2, 0.1])  # taus past the table take its last entry
    start = rng.normal(size=n_params)
    sparse, dense = start.copy(), start.copy()
    expected = start.tolist()
    counters = [np.zeros(8, np.int64) for _ in range(2)]
    hists = [np.zeros(control.HIST_BINS, np.int64) for _ in range(2)]
    stats = [np.zeros(control.STAT_COLUMNS, np.int64) for _ in range(2)]
    expected_hist = [0] * control.HIST_BINS
    version = 0
    for indices, values, lag in pushes(seed, n_params):
        read = max(0, version - lag)
        apply_sparse_update(sparse, indices, values, counters[0], read, table, hists[0], stats[0], 3)
        step_sum = np.zeros(n_params)
        step_sum[indices] = values
        apply_update(dense, step_sum, counters[1], read, table, hists[1], stats[1], 3)
        expected, version, _ = reference.server_push(expected, values, version, read, table,
                                                     expected_hist, indices)
    assert sparse.tolist() == expected  # the same float64 operations, one coordinate at a time
    np.testing.assert_array_equal(sparse, dense)  # bit for bit: the zeros leave the rest as is
    for counter, hist, row in zip(counters, hists, stats):
        assert counter[0] == version
        assert hist.tolist() == expected_hist
        assert row[control.STAT_UPDATES] == version and row[control.STAT_SAMPLES] == 3 * version


def test_float32_sparse_apply_is_the_dense_apply():
    n_params = 40
    table = np.array([0.5, 0.25], dtype=np.float32)
    sparse = np.random.default_rng(7).normal(size=n_params).astype(np.float32)
    dense = sparse.copy()
    for indices, values, _ in pushes(3, n_params, 10):
        values = values.astype(np.float32)
        values.setflags(write=False)  # as Ray hands arrays over
        indices.setflags(write=False)
        step_sum = np.zeros(n_params, np.float32)
        step_sum[indices] = values
        step_sum.setflags(write=False)
        for params, step, args in ((sparse, None, (indices, values)), (dense, step_sum, (step_sum,))):
            kernel = apply_sparse_update if step is None else apply_update
            kernel(params, *args, np.zeros(8, np.int64), 0, table, np.zeros(4, np.int64),
                   np.zeros(control.STAT_COLUMNS, np.int64), 1)
    np.testing.assert_array_equal(sparse, dense)
