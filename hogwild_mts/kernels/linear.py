"""numba worker loops for linear models (the stamping contract of :mod:`hogwild_mts.core.control`):
no Python per sample.

Rows come in one format for sparse and dense data (see ``hogwild_mts.data.tabular.Dataset``) and
travel as one :class:`Rows` structure: row ``i`` is ``values[indptr[i]:indptr[i+1]]`` with columns
``indices[k]`` (CSR) or ``k - indptr[i]`` (dense).  The L2 penalty ``l2/2 ||w||^2`` is split over
samples the Hogwild! way: a sample moves only the coordinates it stores, with weight
``feature_scale[j] = n / (rows storing j)``, so the per-sample gradients still average to the full
penalty gradient (dense data: every scale is 1).  The intercept is never penalised; each of its
steps is multiplied by ``Terms.intercept_decay`` (scikit-learn's ``intercept_decay``: 1, or 0.01
on sparse data).

The L1 penalty ``l1 ||w||_1`` is scikit-learn's cumulative penalty (truncated gradient, Tsuruoka
et al. 2009; ``u`` and ``q`` in ``sklearn.linear_model._sgd_fast``): ``u`` is the penalty every
weight could have received so far, ``l1`` times the sum of the steps of all updates, and
``applied[j]`` (``q``) the penalty weight j did receive.  After an update, each coordinate a
row of its batch stores is pulled towards 0 by ``u`` minus what it received, never across 0
(:func:`clip_l1`).  So the penalty is applied lazily and exactly on sparse rows: a coordinate is
clipped only when a row that stores it is processed, with all the penalty accumulated since its
last visit (on dense rows, every coordinate at every update: scikit-learn's loop).  With several
workers (Hogwild!, racy): ``applied`` is one shared array written without locks, and ``u`` is the
sum of the workers' own totals (``WorkerBuffers.l1_totals``, row w written by worker w only,
read by all), so an update sees every step another worker has added to its row by then; two
workers clipping the same coordinate at once may both apply the same owed penalty (a lost
update of ``applied``, as Hogwild! loses gradient writes).  ``u`` and ``applied`` are the state
of the whole fit: a run that continues an earlier one (scikit-learn's next epoch) starts from
that run's (its ``u`` in worker 0's total).

The step of an update is ``alpha(tau) * (t0 / (t0 + t))^power`` (:func:`scheduled_step`), t the
global update number: the counter's value the worker claimed (0-based) plus the run's
``start_update`` (0 unless the run continues an earlier one's schedule): ``power`` 0 is a constant
step (no pow is taken: the same bits as without a schedule), ``t0 = 1`` scikit-learn's
``invscaling`` and ``t0 = optimal_init, power = 1`` its ``optimal`` (see
:func:`hogwild_mts.engines.linear.step_schedule`).  An unstamped variant has no counter and
counts t as its own updates.

Averaged SGD (scikit-learn's ``average``): from update ``average_start`` on (0-based), the
averaged parameters are the mean of the iterates after each update, kept lazily: coordinate j
records in ``averaged_marks[j]`` how many averaged iterates its mean covers, and only a row that
stores j brings it up to date (:func:`catch_up_average` before the update: the iterates since
then all held the current value; :func:`record_average` after it); the intercept changes at every
update and is averaged at every one.  :func:`finish_average` brings every coordinate up to the
run's last update.  The averaged iterate is the one after the whole update, L1 clipping included
(scikit-learn averages before its L1 step).  With one worker this is the mean of the iterates exactly (up to rounding);
with several the marks and means are shared and written without locks (Hogwild!): a worker
whose update count was overtaken by another's skips its record, which the next visit or the
final catch-up replaces by the value then held.

The SGD loop is one Python function compiled once per flag set (:func:`sgd_kernel`): a run
compiles only the variant it uses.  No fastmath: update loops keep IEEE semantics so one worker is
bit-reproducible.
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple

import numpy as np
from numba import njit

from hogwild_mts.core.control import STAT_MAX_TAU, STAT_SAMPLES, STAT_UPDATES, STATUS_DIVERGED, STATUS_OK
from hogwild_mts.kernels.atomics import atomic_fetch_add, atomic_load, atomic_store, prefetch
from hogwild_mts.models.linear import loss_derivative, loss_value


PREFETCH_ROWS_AHEAD = 4  # rows of the shuffled order fetched ahead of the one being read
VALUES_PER_LINE = 8  # float64 per 64-byte cache line
INDICES_PER_LINE = 16  # int32 per cache line
UNIT_WEIGHTS = np.empty(0, dtype=np.float64)  # the sample_weight array meaning "every row weighs 1"
NO_VELOCITY = np.empty(0, dtype=np.float64)  # WorkerBuffers.velocity of plain SGD (no momentum)
NO_MARKS = np.empty(0, dtype=np.int64)  # WorkerBuffers.touched of plain SGD
NO_ROWS = np.empty(0, dtype=np.int64)  # an empty order: a kernel call that only loads the kernel
NO_APPLIED = np.empty(0, dtype=np.float64)  # WorkerBuffers.l1_applied without an L1 penalty
NO_TOTALS = np.zeros((1, 1), dtype=np.float64)  # WorkerBuffers.l1_totals without an L1 penalty
TOTALS_COLUMNS = 8  # float64 per worker row of l1_totals (one cache line; column 0 is read)
CONSTANT_SCHEDULE = (1.0, 0.0)  # (t0, power) of a constant step: scale 1 at every update
NO_AVERAGE = np.empty(0, dtype=np.float64)  # WorkerBuffers.averaged without averaging

Rows = namedtuple("Rows", ["values", "indices", "indptr", "labels", "sample_weight", "feature_scale"])
Rows.__doc__ = """The data set as one numba argument (read-only in the kernels).

values : float64 (nnz), the stored values, row after row.
indices : int32 (nnz), their columns (sparse rows; empty or ignored for dense rows).
indptr : int64 (n + 1), row ``i`` is ``values[indptr[i]:indptr[i+1]]``.
labels : float64 (n), in the model's domain.
sample_weight : float64 (n) multiplying each row's loss gradient, or empty for unit weights
    (the same results bit for bit).
feature_scale : float64 (d), ``n / (rows storing j)``, read only with a penalty (may be empty
    without one).
"""

Terms = namedtuple("Terms", ["loss_id", "epsilon", "l2", "l1", "max_derivative",
                             "intercept_decay"], defaults=(math.inf, 1.0))
Terms.__doc__ = """The objective's terms as the kernels take them: the loss (``loss_id`` of
:mod:`hogwild_mts.models.linear`, ``epsilon`` of huber and the epsilon-insensitive losses), the
L2 and L1 strengths (>= 0; the variant's flags say which are not 0), the bound the SGD
kernels clip each row's loss derivative to (inf: none), and the factor in (0, 1] every step of
the intercept is multiplied by (1: plain steps; scikit-learn's ``intercept_decay``)."""


def model_terms(model) -> Terms:
    """The :class:`Terms` of a :class:`hogwild_mts.models.linear.LinearModel` (or anything with
    ``loss_id, epsilon, l2, l1, max_derivative, intercept_decay``)."""
    return Terms(int(model.loss_id), float(model.epsilon), float(model.l2), float(model.l1),
                 float(model.max_derivative), float(model.intercept_decay))


WorkerBuffers = namedtuple("WorkerBuffers", ["stats", "hist", "derivatives", "velocity", "touched",
                                             "l1_applied", "l1_totals", "slot", "averaged",
                                             "averaged_marks", "average_start", "start_update"],
                           defaults=(NO_APPLIED, NO_TOTALS, 0, NO_AVERAGE, NO_MARKS, 0, 0))
WorkerBuffers.__doc__ = """One worker's arrays, as one numba argument (the kernels write them).

stats : int64 (STAT_COLUMNS), its row of counts (STAT_UPDATES, STAT_SAMPLES, STAT_MAX_TAU).
hist : int64 (bins), its tau histogram row (last bin collects ``tau >= bins - 1``); unread by
    an unstamped kernel.
derivatives : float64 (batch_size), scratch for one batch's loss derivatives.
velocity : float64 (n_params), the private momentum velocity, or NO_VELOCITY without momentum.
touched : int64 (n_params), the momentum marks (start at -1), or NO_MARKS without momentum.
l1_applied : float64 (n_features), the L1 penalty each weight received (scikit-learn's ``q``,
    shared by the workers), or NO_APPLIED without an L1 penalty.
l1_totals : float64 (workers, TOTALS_COLUMNS), column 0 of row w the L1 penalty of worker w's
    updates (``l1`` times its steps; ``u`` is the column's sum), or NO_TOTALS without one.
slot : this worker's row of ``l1_totals``.
averaged : float64 (n_params), the averaged parameters (shared), or NO_AVERAGE.
averaged_marks : int64 (n_params), the averaged iterates each mean covers (start at 0; shared),
    or NO_MARKS without averaging.
average_start : the first averaged update (0-based global update number).
start_update : the global update number of the run's first update (the counter's 0): a run that
    continues an earlier one's step schedule and average starts at its count; 0 otherwise.
"""


@njit(cache=True, nogil=True, inline="always")
def row_derivative(terms, margin, label):
    """The loss derivative of a row with ``margin`` and ``label``, clipped to
    ``[-terms.max_derivative, terms.max_derivative]`` (scikit-learn's bound; inf: none)."""
    derivative = loss_derivative(terms.loss_id, margin, label, terms.epsilon)
    return min(max(derivative, -terms.max_derivative), terms.max_derivative)


@njit(cache=True, nogil=True, inline="always")
def row_margin(rows, dense, params, n_features, fit_intercept, row):
    """w . x_row + b (b = params[n_features] with an intercept), in the row's stored order."""
    values, indices = rows.values, rows.indices
    start, stop = rows.indptr[row], rows.indptr[row + 1]
    total = params[n_features] if fit_intercept else 0.0
    if dense:
        for k in range(start, stop):
            total += values[k] * params[k - start]
    else:
        for k in range(start, stop):
            total += values[k] * params[indices[k]]
    return total


@njit(cache=True, nogil=True, inline="always")
def _add_gradient(rows, dense, params, l2, penalised, row, derivative, step):
    """params[j] -= step * (derivative * x_j + l2 * feature_scale[j] * params[j]) over the row;
    without ``penalised`` (l2 == 0) the penalty term is left out."""
    values, indices, feature_scale = rows.values, rows.indices, rows.feature_scale
    start, stop = rows.indptr[row], rows.indptr[row + 1]
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
def scheduled_step(lr, t, t0, power):
    """The step of update ``t`` (0-based): ``lr * (t0 / (t0 + t))^power``; ``power`` 0
    returns ``lr`` itself (a constant step, no pow taken)."""
    if power == 0.0:
        return lr
    return lr * (t0 / (t0 + t)) ** power


@njit(cache=True, nogil=True, inline="always")
def clip_l1(rows, dense, params, applied, u, order, position, batch_end):
    """The cumulative L1 penalty on every coordinate j a row of ``order[position:batch_end]``
    stores (scikit-learn's ``l1penalty``): a positive weight becomes ``max(0, w - (u +
    applied[j]))``, a negative one ``min(0, w + (u - applied[j]))``, and ``applied[j]`` gains
    the change; a coordinate stored twice is clipped again (owing nothing, up to rounding)."""
    indices, indptr = rows.indices, rows.indptr
    for b in range(position, batch_end):
        row = order[b]
        start = indptr[row]
        for k in range(start, indptr[row + 1]):
            column = k - start if dense else indices[k]
            weight = params[column]
            if weight > 0.0:
                params[column] = max(0.0, weight - (u + applied[column]))
            elif weight < 0.0:
                params[column] = min(0.0, weight + (u - applied[column]))
            applied[column] += params[column] - weight


@njit(cache=True, nogil=True, inline="always")
def momentum_step(rows, dense, params, n_features, fit_intercept, intercept_decay, l2, penalised,
                  order, position, batch_end, derivatives, lr, momentum, velocity, touched, mark):
    """One mini-batch ``order[position:batch_end]`` with the worker's private ``velocity``
    (torch.optim.SGD's momentum buffer, dampening 0): ``v_j = momentum * v_j + g_j`` and
    ``w_j -= lr * v_j`` for every coordinate j the batch stores (g the batch's mean gradient,
    penalty included; ``derivatives[b - position]`` the loss derivative of row ``order[b]``);
    the intercept's velocity likewise, its step times ``intercept_decay``.
    Lazy on sparse data: a coordinate no row of the batch stores keeps its velocity and weight
    (as TensorFlow's LazyAdam); on dense data every coordinate is stored, so this is exactly
    torch's momentum.  ``touched[j] == mark`` (the worker's update number, >= 0) marks j as
    decayed for this batch; ``-1 - mark`` as applied."""
    values, indices, indptr, feature_scale = rows.values, rows.indices, rows.indptr, rows.feature_scale
    scale = 1.0 / (batch_end - position)
    for b in range(position, batch_end):
        row = order[b]
        derivative = derivatives[b - position] * scale
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
                params[column] -= lr * velocity[column]
    if fit_intercept:
        total = 0.0
        for b in range(position, batch_end):
            total += derivatives[b - position]
        velocity[n_features] = momentum * velocity[n_features] + total * scale
        params[n_features] -= intercept_decay * lr * velocity[n_features]


@njit(cache=True, nogil=True, inline="always")
def catch_up_average(rows, dense, params, n_features, fit_intercept, order, position, batch_end,
                     averaged, marks, done):
    """Before an update whose averaged iterate is number ``done + 1``: every coordinate j the
    batch stores (and the intercept) whose mean covers ``marks[j] < done`` iterates gets the
    iterates since, which all held ``params[j]``: ``averaged[j] = (marks[j] averaged[j] + (done
    - marks[j]) params[j]) / done``, ``marks[j] = done``."""
    indices, indptr = rows.indices, rows.indptr
    for b in range(position, batch_end + int(fit_intercept)):
        if b < batch_end:
            row = order[b]
            start, stop = indptr[row], indptr[row + 1]
        else:
            start, stop = 0, 1  # one pass over the intercept
        for k in range(start, stop):
            column = n_features if b == batch_end else (k - start if dense else indices[k])
            covered = marks[column]
            if covered < done:
                averaged[column] = (covered * averaged[column] + (done - covered) * params[column]) / done
                marks[column] = done


@njit(cache=True, nogil=True, inline="always")
def record_average(rows, dense, params, n_features, fit_intercept, order, position, batch_end,
                   averaged, marks, count):
    """After the update whose averaged iterate is number ``count``: every coordinate j the batch
    stores (and the intercept) whose mean covers ``count - 1`` iterates adds the new value:
    ``averaged[j] += (params[j] - averaged[j]) / count``, ``marks[j] = count``."""
    indices, indptr = rows.indices, rows.indptr
    for b in range(position, batch_end + int(fit_intercept)):
        if b < batch_end:
            row = order[b]
            start, stop = indptr[row], indptr[row + 1]
        else:
            start, stop = 0, 1
        for k in range(start, stop):
            column = n_features if b == batch_end else (k - start if dense else indices[k])
            if marks[column] == count - 1:
                averaged[column] += (params[column] - averaged[column]) / count
                marks[column] = count


def finish_average(averaged: np.ndarray, marks: np.ndarray, params: np.ndarray, count: int) -> np.ndarray:
    """The averaged parameters after ``count`` averaged iterates (a new float64 array): each
    coordinate's mean brought up to ``count`` with its current value; ``params`` itself (as
    float64) when nothing was averaged (``count`` < 1: scikit-learn keeps the last iterate)."""
    params = np.asarray(params, dtype=np.float64)
    if count < 1:
        return params.copy()
    covered = marks.astype(np.float64)
    result = averaged.astype(np.float64, copy=True)
    behind = marks < count
    result[behind] = ((covered * averaged + (count - covered) * params) / count)[behind]
    return result


@njit(cache=True, nogil=True, inline="always")
def apply_update(rows, dense, params, n_features, fit_intercept, intercept_decay, l2, penalised,
                 with_momentum, order, position, batch_end, derivatives, step, momentum, velocity,
                 touched, mark):
    """Apply one mini-batch ``order[position:batch_end]`` with ``step`` (``derivatives[b -
    position]`` the loss derivative of row ``order[b]``): with momentum :func:`momentum_step`
    (mark ``mark``), else each row in turn moves the weights by ``step / B`` times its gradient
    (the L2 term on the weights as they are then) and the intercept by ``step / B`` times its
    derivative times ``intercept_decay`` (scikit-learn's).  The one update rule of the
    shared-memory workers and the simulator."""
    if with_momentum:
        momentum_step(rows, dense, params, n_features, fit_intercept, intercept_decay, l2,
                      penalised, order, position, batch_end, derivatives, step, momentum,
                      velocity, touched, mark)
        return
    scaled = step / (batch_end - position)
    for b in range(position, batch_end):
        derivative = derivatives[b - position]
        _add_gradient(rows, dense, params, l2, penalised, order[b], derivative, scaled)
        if fit_intercept:
            params[n_features] -= scaled * derivative * intercept_decay


@njit(cache=True, nogil=True, inline="always")
def _prefetch_ahead(rows, dense, order, position):
    """Prefetch the row PREFETCH_ROWS_AHEAD places ahead in ``order`` (and the indptr entry of the
    row twice as far): a shuffled pass is otherwise bound by memory latency."""
    indptr = rows.indptr
    ahead = position + PREFETCH_ROWS_AHEAD
    if ahead + PREFETCH_ROWS_AHEAD < order.shape[0]:
        prefetch(indptr, order[ahead + PREFETCH_ROWS_AHEAD])
    if ahead < order.shape[0]:
        row = order[ahead]
        start, stop = indptr[row], indptr[row + 1]
        prefetch(rows.labels, row)
        for k in range(start, stop, VALUES_PER_LINE):
            prefetch(rows.values, k)
        if not dense:
            for k in range(start, stop, INDICES_PER_LINE):
                prefetch(rows.indices, k)


@njit(cache=True, nogil=True, inline="always")
def claim_stamp(counter, t_read, hist_row):
    """Claim the next sequence number and return (it, ``tau = claimed - t_read``); count tau in
    ``hist_row`` (the last bin collects ``tau >= len(hist_row) - 1``)."""
    claimed = atomic_fetch_add(counter, 0, 1)
    tau = claimed - t_read
    hist_row[min(tau, hist_row.shape[0] - 1)] += 1
    return claimed, tau


@njit(cache=True, nogil=True, inline="always")
def stamped_step(counter, t_read, alpha_table, hist_row):
    """:func:`claim_stamp`, returning (tau, this update's step ``alpha_table[min(tau, T -
    1)]``).  The caller keeps the largest tau (:func:`keep_largest_tau`)."""
    claimed, tau = claim_stamp(counter, t_read, hist_row)
    return tau, alpha_table[min(tau, alpha_table.shape[0] - 1)]


@njit(cache=True, nogil=True, inline="always")
def keep_largest_tau(stats_row, tau):
    """Raise the worker's largest measured tau in ``stats_row`` to ``tau`` if it is larger."""
    if tau > stats_row[STAT_MAX_TAU]:
        stats_row[STAT_MAX_TAU] = tau


def _sgd_chunk_source(dense: bool, fit_intercept: bool, penalised: bool, stamped: bool):
    """The Python function of one kernel variant: the four flags, which the loop over a row's
    coordinates reads, are constants of its closure, so numba compiles (and caches) one loop per
    flag set with none of them tested per coordinate.  Momentum (``momentum != 0``), the L1
    penalty (``terms.l1 != 0``) and averaging (``buffers.averaged`` not empty) are tested once
    per batch, so one compiled loop serves them all."""

    def sgd_chunk(rows, order, start, stop, batch_size, params, n_features, terms, momentum,
                  alpha_table, t0, power, counter, buffers):
        """Apply the mini-batches ``order[start:stop]`` (batch_size rows each, last one shorter).

        Parameters
        ----------
        rows : Rows, the data set (read-only).
        order : int64, row numbers; ``start``, ``stop`` the slice of it to train on.
        batch_size : rows per update (>= 1, at most ``len(buffers.derivatives)``).
        params : float64 or float32 (n_features + intercept), the live (shared) parameters,
            written without locks.
        n_features : the model's features; ``terms`` its :class:`Terms` (``l2 != 0`` exactly
            when the variant is penalised, ``l1 != 0`` when it clips).
        momentum : 0 (plain steps) or in (0, 1): the private ``buffers.velocity`` (see
            :func:`momentum_step`).
        alpha_table : alpha(tau) per tau (its last entry for every larger tau); an unstamped
            variant reads entry 0 only.
        t0, power : the step schedule (:func:`scheduled_step`; ``power`` 0: constant).
        counter : int64, ``counter[0]`` is the run's shared sequence number (unread unstamped).
        buffers : WorkerBuffers, this worker's counts, histogram row and scratch.

        Per batch, stamped: read the counter, compute the margins from the live ``params``, claim
        the next sequence number t, ``tau = t - read``, ``lr = alpha_table[min(tau, T - 1)]``
        times the schedule's scale at t, write ``params -= lr * mean gradient`` (then, with
        L1, add ``l1 * lr`` to the worker's total and :func:`clip_l1` the batch's
        coordinates) and count ``tau`` in ``buffers.hist``; with averaging it brings the
        batch's coordinates' means up to date before the write and adds the new iterate after
        it (from update ``buffers.average_start`` on).  Unstamped (classic Hogwild!): no
        counter, no histogram, lr = alpha_table[0], t = the worker's own update count.  The
        chunk's largest tau is kept in a local and written to ``buffers.stats`` once on the way
        out (comparing and storing it on every update cost one worker about 10% of its
        updates/s).  Returns STATUS_DIVERGED as soon as a margin is not finite, else STATUS_OK.
        """
        stats, derivatives = buffers.stats, buffers.derivatives
        l2, l1 = terms.l2, terms.l1
        with_momentum, clipped = momentum != 0.0, l1 != 0.0
        averaging = buffers.averaged.shape[0] != 0
        weighted = rows.sample_weight.shape[0] != 0
        position = start
        largest_tau = 0
        while position < stop:
            batch_end = min(position + batch_size, stop)
            t_read = atomic_load(counter, 0) if stamped else 0
            for b in range(position, batch_end):
                _prefetch_ahead(rows, dense, order, b)
                row = order[b]
                margin = row_margin(rows, dense, params, n_features, fit_intercept, row)
                if not np.isfinite(margin):
                    keep_largest_tau(stats, largest_tau)
                    return STATUS_DIVERGED
                derivative = row_derivative(terms, margin, rows.labels[row])
                if weighted:
                    derivative *= rows.sample_weight[row]
                derivatives[b - position] = derivative
            if stamped:
                t, tau = claim_stamp(counter, t_read, buffers.hist)
                lr = alpha_table[min(tau, alpha_table.shape[0] - 1)]
                largest_tau = max(largest_tau, tau)
            else:
                t, lr = stats[STAT_UPDATES], alpha_table[0]
            t += buffers.start_update  # the global update number
            step = scheduled_step(lr, t, t0, power)
            count = t - buffers.average_start + 1  # this update's averaged iterate (< 1: none)
            if averaging and count >= 1:
                catch_up_average(rows, dense, params, n_features, fit_intercept, order, position,
                                 batch_end, buffers.averaged, buffers.averaged_marks, count - 1)
            apply_update(rows, dense, params, n_features, fit_intercept, terms.intercept_decay, l2,
                         penalised, with_momentum, order, position, batch_end, derivatives, step,
                         momentum, buffers.velocity, buffers.touched, stats[STAT_UPDATES])
            if clipped:
                totals = buffers.l1_totals
                totals[buffers.slot, 0] += l1 * step
                u = 0.0
                for w in range(totals.shape[0]):
                    u += totals[w, 0]
                clip_l1(rows, dense, params, buffers.l1_applied, u, order, position, batch_end)
            if averaging and count >= 1:
                record_average(rows, dense, params, n_features, fit_intercept, order, position,
                               batch_end, buffers.averaged, buffers.averaged_marks, count)
            stats[STAT_UPDATES] += 1
            stats[STAT_SAMPLES] += batch_end - position
            position = batch_end
        keep_largest_tau(stats, largest_tau)
        return STATUS_OK

    return sgd_chunk


@functools.cache
def _compiled_sgd_chunk(dense: bool, fit_intercept: bool, penalised: bool, stamped: bool):
    return njit(cache=True, nogil=True)(_sgd_chunk_source(dense, fit_intercept, penalised, stamped))


def sgd_kernel(dense: bool, fit_intercept: bool, l2: float, stamped: bool):
    """The SGD loop for this flag set (see ``sgd_chunk`` in :func:`_sgd_chunk_source`): one numba
    dispatcher per (dense, fit_intercept, l2 != 0, stamped), made on first use and compiled (or
    loaded from numba's cache) on its first call, so a run compiles only its own."""
    return _compiled_sgd_chunk(bool(dense), bool(fit_intercept), l2 != 0.0, bool(stamped))


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
def objective(rows, dense, params, n_features, fit_intercept, terms):
    """Return (sum of weight * loss / n + l2/2 ||w||^2 + l1 ||w||_1, weighted fraction of rows
    with sign(margin) == label): the objective SGD minimises, on ``rows`` (a :class:`Rows`; its
    ``feature_scale`` is unread), for the :class:`Terms` ``terms``.  ``rows.sample_weight``
    empty: unit weights (mean loss, plain accuracy)."""
    labels, sample_weight = rows.labels, rows.sample_weight
    n_rows = rows.indptr.shape[0] - 1
    weighted = sample_weight.shape[0] != 0
    total_loss = 0.0
    correct = 0.0
    total_weight = 0.0
    for row in range(n_rows):
        weight = sample_weight[row] if weighted else 1.0
        margin = row_margin(rows, dense, params, n_features, fit_intercept, row)
        total_loss += weight * loss_value(terms.loss_id, margin, labels[row], terms.epsilon)
        total_weight += weight
        if (margin >= 0.0) == (labels[row] > 0.0):
            correct += weight
    squares = 0.0
    absolutes = 0.0
    for j in range(n_features):
        squares += params[j] * params[j]
        absolutes += abs(params[j])
    accuracy = correct / total_weight if total_weight > 0.0 else 0.0
    return total_loss / n_rows + 0.5 * terms.l2 * squares + terms.l1 * absolutes, accuracy
