"""numba worker loops for linear models (the stamping contract of :mod:`hogwild_mts.core.control`):
no Python per sample.

Rows come in one format for sparse and dense data (see ``hogwild_mts.data.tabular.Dataset``): row ``i`` is
``values[indptr[i]:indptr[i+1]]`` with columns ``indices[k]`` (CSR) or ``k - indptr[i]`` (dense).
The L2 penalty ``l2/2 ||w||^2`` is split over samples the Hogwild! way: a sample moves only the
coordinates it stores, with weight ``feature_scale[j] = n / (rows storing j)``, so the per-sample
gradients still average to the full penalty gradient (dense data: every scale is 1).

No fastmath: update loops keep IEEE semantics so one worker is bit-reproducible.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hogwild_mts.core.control import STAT_MAX_TAU, STAT_SAMPLES, STAT_UPDATES, STATUS_DIVERGED, STATUS_OK
from hogwild_mts.kernels.atomics import atomic_fetch_add, atomic_load, atomic_store, prefetch
from hogwild_mts.models.linear import loss_derivative, loss_value


PREFETCH_ROWS_AHEAD = 4  # rows of the shuffled order fetched ahead of the one being read
VALUES_PER_LINE = 8  # float64 per 64-byte cache line
INDICES_PER_LINE = 16  # int32 per cache line
UNIT_WEIGHTS = np.empty(0, dtype=np.float64)  # the sample_weight argument meaning "every row weighs 1"
# sgd_chunk's (momentum, velocity, touched) for plain SGD: no velocity kept
NO_MOMENTUM = (0.0, np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64))


@njit(cache=True, nogil=True, inline="always")
def row_margin(values, indices, indptr, dense, params, n_features, fit_intercept, row):
    """w . x_row + b (b = params[n_features] with an intercept), in the row's stored order."""
    start, stop = indptr[row], indptr[row + 1]
    total = params[n_features] if fit_intercept else 0.0
    if dense:
        for k in range(start, stop):
            total += values[k] * params[k - start]
    else:
        for k in range(start, stop):
            total += values[k] * params[indices[k]]
    return total


@njit(cache=True, nogil=True, inline="always")
def _add_gradient(values, indices, indptr, dense, feature_scale, params, l2, penalised, row,
                  derivative, step):
    """params[j] -= step * (derivative * x_j + l2 * feature_scale[j] * params[j]) over the row;
    without ``penalised`` (l2 == 0) the penalty term is left out."""
    start, stop = indptr[row], indptr[row + 1]
    if not penalised:
        if dense:
            for k in range(start, stop):
                params[k - start] -= step * (derivative * values[k])
        else:
            for k in range(start, stop):
                params[indices[k]] -= step * (derivative * values[k])
    else:
        for k in range(start, stop):
            column = k - start if dense else indices[k]
            params[column] -= step * (derivative * values[k] + l2 * feature_scale[column] * params[column])


@njit(cache=True, nogil=True, inline="always")
def momentum_step(values, indices, indptr, dense, feature_scale, params, n_features,
                   fit_intercept, l2, penalised, order, position, batch_end, derivative_buffer,
                   alpha, momentum, velocity, touched, mark):
    """One mini-batch with the worker's private ``velocity`` (torch.optim.SGD's momentum
    buffer, dampening 0): ``v_j = momentum * v_j + g_j`` and ``w_j -= alpha * v_j`` for every
    coordinate j the batch stores (g the batch's mean gradient, penalty included).  Lazy on
    sparse data: a coordinate no row of the batch stores keeps its velocity and weight (as
    TensorFlow's LazyAdam); on dense data every coordinate is stored, so this is exactly
    torch's momentum.  ``touched[j] == mark`` (the worker's update number, >= 0) marks j as
    decayed for this batch; ``-1 - mark`` as applied."""
    scale = 1.0 / (batch_end - position)
    for b in range(position, batch_end):
        row = order[b]
        derivative = derivative_buffer[b - position] * scale
        start = indptr[row]
        for k in range(start, indptr[row + 1]):
            column = k - start if dense else indices[k]
            if touched[column] != mark:
                touched[column] = mark
                velocity[column] *= momentum
            gradient = derivative * values[k]
            if penalised:
                gradient += scale * l2 * feature_scale[column] * params[column]
            velocity[column] += gradient
    for b in range(position, batch_end):
        row = order[b]
        start = indptr[row]
        for k in range(start, indptr[row + 1]):
            column = k - start if dense else indices[k]
            if touched[column] == mark:
                touched[column] = -1 - mark
                params[column] -= alpha * velocity[column]
    if fit_intercept:
        total = 0.0
        for b in range(position, batch_end):
            total += derivative_buffer[b - position]
        velocity[n_features] = momentum * velocity[n_features] + total * scale
        params[n_features] -= alpha * velocity[n_features]


@njit(cache=True, nogil=True, inline="always")
def _prefetch_ahead(values, indices, indptr, dense, labels, order, position):
    """Prefetch the row PREFETCH_ROWS_AHEAD places ahead in ``order`` (and the indptr entry of the
    row twice as far): a shuffled pass is otherwise bound by memory latency."""
    ahead = position + PREFETCH_ROWS_AHEAD
    if ahead + PREFETCH_ROWS_AHEAD < order.shape[0]:
        prefetch(indptr, order[ahead + PREFETCH_ROWS_AHEAD])
    if ahead < order.shape[0]:
        row = order[ahead]
        start, stop = indptr[row], indptr[row + 1]
        prefetch(labels, row)
        for k in range(start, stop, VALUES_PER_LINE):
            prefetch(values, k)
        if not dense:
            for k in range(start, stop, INDICES_PER_LINE):
                prefetch(indices, k)


@njit(cache=True, nogil=True, inline="always")
def stamped_step(counter, t_read, alpha_table, hist_row):
    """Claim the next sequence number and return (tau, this update's step): ``tau = claimed -
    t_read``, ``alpha_table[min(tau, T - 1)]``; count tau in ``hist_row`` (the last bin collects
    ``tau >= len(hist_row) - 1``).  The caller keeps the largest tau (:func:`keep_largest_tau`)."""
    tau = atomic_fetch_add(counter, 0, 1) - t_read
    hist_row[min(tau, hist_row.shape[0] - 1)] += 1
    return tau, alpha_table[min(tau, alpha_table.shape[0] - 1)]


@njit(cache=True, nogil=True, inline="always")
def keep_largest_tau(stats_row, tau):
    """Raise the worker's largest measured tau in ``stats_row`` to ``tau`` if it is larger."""
    if tau > stats_row[STAT_MAX_TAU]:
        stats_row[STAT_MAX_TAU] = tau


@njit(cache=True, nogil=True, inline="always")
def _sgd_batches(values, indices, indptr, dense, labels, sample_weight, feature_scale, order,
                 start, stop, batch_size, params, n_features, fit_intercept, loss_id, l2, penalised,
                 alpha_table, stamp, counter, hist_row, stats_row, derivative_buffer, momentum,
                 velocity, touched):
    """The loop of :func:`sgd_chunk`; ``dense``, ``fit_intercept`` and ``penalised`` are
    compile-time constants in each copy.  The chunk's largest tau is kept in a local and written
    to ``stats_row`` once on the way out: comparing and storing it in ``stats_row`` on every
    update cost one worker about 10% of its updates/s."""
    weighted = sample_weight.shape[0] != 0
    position = start
    largest_tau = 0
    while position < stop:
        batch_end = min(position + batch_size, stop)
        t_read = atomic_load(counter, 0) if stamp else 0
        for b in range(position, batch_end):
            _prefetch_ahead(values, indices, indptr, dense, labels, order, b)
            row = order[b]
            margin = row_margin(values, indices, indptr, dense, params, n_features, fit_intercept, row)
            if not np.isfinite(margin):
                keep_largest_tau(stats_row, largest_tau)
                return STATUS_DIVERGED
            derivative = loss_derivative(loss_id, margin, labels[row])
            if weighted:
                derivative *= sample_weight[row]
            derivative_buffer[b - position] = derivative
        if stamp:
            tau, alpha = stamped_step(counter, t_read, alpha_table, hist_row)
            largest_tau = max(largest_tau, tau)
        else:
            alpha = alpha_table[0]
        if momentum != 0.0:
            momentum_step(values, indices, indptr, dense, feature_scale, params, n_features,
                           fit_intercept, l2, penalised, order, position, batch_end,
                           derivative_buffer, alpha, momentum, velocity, touched,
                           stats_row[STAT_UPDATES])
            stats_row[STAT_UPDATES] += 1
            stats_row[STAT_SAMPLES] += batch_end - position
            position = batch_end
            continue
        step = alpha / (batch_end - position)
        for b in range(position, batch_end):
            row = order[b]
            derivative = derivative_buffer[b - position]
            _add_gradient(values, indices, indptr, dense, feature_scale, params, l2, penalised, row,
                          derivative, step)
            if fit_intercept:
                params[n_features] -= step * derivative
        stats_row[STAT_UPDATES] += 1
        stats_row[STAT_SAMPLES] += batch_end - position
        position = batch_end
    keep_largest_tau(stats_row, largest_tau)
    return STATUS_OK


@njit(cache=True, nogil=True)
def sgd_chunk(values, indices, indptr, dense, labels, sample_weight, feature_scale, order, start,
              stop, batch_size, params, n_features, fit_intercept, loss_id, l2, alpha_table,
              stamp, counter, hist_row, stats_row, derivative_buffer, momentum, velocity,
              touched):
    """Apply the mini-batches ``order[start:stop]`` (batch_size rows each, last one shorter).

    ``sample_weight``: float64 per row multiplying that row's loss gradient (not the penalty, as
    in scikit-learn's SGD), or an empty array for unit weights (the same results bit for bit).
    ``momentum`` > 0 keeps the worker's private ``velocity`` (float64, n_params) with the marks
    ``touched`` (int64, n_params, start at -1): see :func:`momentum_step`; with ``momentum``
    0 both may be empty (NO_MOMENTUM) and the loop is plain SGD.

    Per batch: read the counter, compute the margins from the live shared ``params``, claim the
    next sequence number, ``tau = claimed - read``, ``alpha = alpha_table[min(tau, T - 1)]``, and
    write ``params -= alpha * mean gradient`` without locks; count ``tau`` in ``hist_row`` (last bin
    collects ``tau >= len(hist_row) - 1``).  ``stamp=False`` drops the counter, the table lookup
    (alpha = alpha_table[0]) and the histogram: classic Hogwild!, the baseline for overhead.
    Returns STATUS_DIVERGED as soon as a margin is not finite, else STATUS_OK.

    The loop is compiled once per combination of the flags it would otherwise test on every row
    (dense, intercept, l2 != 0): about 20% faster, the same results bit for bit.
    """
    if dense:
        if fit_intercept:
            if l2 != 0.0:
                return _sgd_batches(values, indices, indptr, True, labels, sample_weight,
                                    feature_scale, order, start, stop, batch_size, params, n_features,
                                    True, loss_id, l2, True, alpha_table, stamp, counter, hist_row,
                                    stats_row, derivative_buffer, momentum, velocity, touched)
            return _sgd_batches(values, indices, indptr, True, labels, sample_weight,
                                feature_scale, order, start, stop, batch_size, params, n_features,
                                True, loss_id, l2, False, alpha_table, stamp, counter, hist_row,
                                stats_row, derivative_buffer, momentum, velocity, touched)
        if l2 != 0.0:
            return _sgd_batches(values, indices, indptr, True, labels, sample_weight,
                                feature_scale, order, start, stop, batch_size, params, n_features,
                                False, loss_id, l2, True, alpha_table, stamp, counter, hist_row,
                                stats_row, derivative_buffer, momentum, velocity, touched)
        return _sgd_batches(values, indices, indptr, True, labels, sample_weight,
                            feature_scale, order, start, stop, batch_size, params, n_features,
                            False, loss_id, l2, False, alpha_table, stamp, counter, hist_row,
                            stats_row, derivative_buffer, momentum, velocity, touched)
    if fit_intercept:
        if l2 != 0.0:
            return _sgd_batches(values, indices, indptr, False, labels, sample_weight,
                                feature_scale, order, start, stop, batch_size, params, n_features,
                                True, loss_id, l2, True, alpha_table, stamp, counter, hist_row,
                                stats_row, derivative_buffer, momentum, velocity, touched)
        return _sgd_batches(values, indices, indptr, False, labels, sample_weight,
                            feature_scale, order, start, stop, batch_size, params, n_features,
                            True, loss_id, l2, False, alpha_table, stamp, counter, hist_row,
                            stats_row, derivative_buffer, momentum, velocity, touched)
    if l2 != 0.0:
        return _sgd_batches(values, indices, indptr, False, labels, sample_weight,
                            feature_scale, order, start, stop, batch_size, params, n_features,
                            False, loss_id, l2, True, alpha_table, stamp, counter, hist_row,
                            stats_row, derivative_buffer, momentum, velocity, touched)
    return _sgd_batches(values, indices, indptr, False, labels, sample_weight,
                        feature_scale, order, start, stop, batch_size, params, n_features,
                        False, loss_id, l2, False, alpha_table, stamp, counter, hist_row,
                        stats_row, derivative_buffer, momentum, velocity, touched)


@njit(cache=True, nogil=True)
def load_word(words, index):
    """``words[index]`` (1-d int64) read with one atomic load: Python's view of a shared word."""
    return atomic_load(words, index)


@njit(cache=True, nogil=True)
def add_word(words, index, value):
    """Add ``value`` to ``words[index]`` atomically; return the value it held before."""
    return atomic_fetch_add(words, index, value)


@njit(cache=True, nogil=True)
def store_word(words, index, value):
    """Write ``value`` to ``words[index]`` with one atomic store (visible after every earlier write
    of this thread: a release)."""
    atomic_store(words, index, value)


@njit(cache=True, nogil=True)
def claim_batches(words, index, total, workers, per_epoch, max_claim, min_claim):
    """Claim the next batches of a run from the shared cursor ``words[index]`` (guided
    self-scheduling): ``remaining / (2 workers)`` batches, at least ``min_claim``, at most
    ``max_claim`` and ``per_epoch / (2 workers)`` (so an epoch splits into >= 2 claims per
    worker), never fewer than 1.  Returns (first claimed batch, end): the claim is
    ``[first, min(end, total))`` and is empty once ``first >= total``.  Claims never overlap and
    together cover ``0 .. total - 1`` exactly once."""
    remaining = total - atomic_load(words, index)
    size = max(remaining // (2 * workers), min_claim)
    size = max(min(size, max_claim, per_epoch // (2 * workers)), 1)
    first = atomic_fetch_add(words, index, size)
    return first, min(first + size, total)


@njit(cache=True, nogil=True)
def objective(values, indices, indptr, dense, labels, sample_weight, params, n_features,
              fit_intercept, loss_id, l2):
    """Return (sum of weight * loss / n + l2/2 ||w||^2, weighted fraction of rows with
    sign(margin) == label): the objective SGD minimises.  ``sample_weight`` empty: unit weights
    (mean loss, plain accuracy)."""
    n_rows = indptr.shape[0] - 1
    weighted = sample_weight.shape[0] != 0
    total_loss = 0.0
    correct = 0.0
    total_weight = 0.0
    for row in range(n_rows):
        weight = sample_weight[row] if weighted else 1.0
        margin = row_margin(values, indices, indptr, dense, params, n_features, fit_intercept, row)
        total_loss += weight * loss_value(loss_id, margin, labels[row])
        total_weight += weight
        if (margin >= 0.0) == (labels[row] > 0.0):
            correct += weight
    penalty = 0.0
    for j in range(n_features):
        penalty += params[j] * params[j]
    accuracy = correct / total_weight if total_weight > 0.0 else 0.0
    return total_loss / n_rows + 0.5 * l2 * penalty, accuracy
