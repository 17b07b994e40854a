"""The simulator backend: a deterministic, seeded emulation of ``m`` Hogwild! workers on one core.

Update ``t`` (t = 0, 1, ...) applies a gradient computed at ``theta_{t - tau_t}``, the parameters
after ``t - tau_t`` updates, exactly: either from a ring of full parameter snapshots (dense rows,
where a copy costs no more than logging) or from an undo log of the coordinates each recent
update changed and their old values (sparse rows).  Both reproduce the stale margins bit for bit.

Where tau comes from (``staleness=``):

* ``"event"`` (default): an event-driven model of ``m`` workers. Each draws a compute time per
  gradient from ``compute`` (mean 1 time unit), times its own slowness (:func:`worker_slowness`:
  all 1 unless ``stragglers`` or ``worker_speeds`` make the workers heterogeneous), reads the
  parameters when it starts and lands its update when it finishes; ``tau`` = updates landed in
  between.  Staleness emerges from the schedule.
* a :class:`~hogwild_mts.staleness.models.StalenessModel` (e.g. ``Poisson(7)``), ``"poisson"`` /
  ``"geometric"`` (mean ``m - 1``), or a recorded histogram (1-D counts by tau): tau is drawn iid
  and workers take turns round-robin; ``tau_t <= t`` always.

Rows, shards and shuffles are those of the engine's ``split="static"`` (worker w owns rows w,
w+m, ...; a fresh permutation per epoch from its own seed, or with ``shuffle=False`` its rows in
stored order); with one worker that is also the default dynamic split, so ``workers=1``
reproduces a one-worker :class:`Engine` run bit for bit (with ``momentum`` too).  Each worker
owns a copy of the policy and refits it from the global histogram after every ``refit_every``
of its own updates, as real workers do; with ``momentum`` each keeps a private velocity,
updated by the real engine's own momentum step.  Times are
simulated: one gradient takes ``update_seconds`` on average, so ``train_seconds`` and
``history["time_s"]`` are simulated seconds.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from numba import njit

from hogwild_mts.kernels.linear import (UNIT_WEIGHTS, Rows, apply_update, clip_l1, row_derivative,
                                        row_margin, scheduled_step)
from hogwild_mts.core.control import HIST_BINS, STATUS_DIVERGED, STATUS_OK
from hogwild_mts.core.result import Diverged, RunTotals
from hogwild_mts.policies.step_sizes import policy_table, refit_policy
from hogwild_mts.staleness.models import Geometric, Poisson, StalenessModel, check_histogram

STALENESS_SOURCES = ("event", "poisson", "geometric")
STALE_READS = ("auto", "snapshots", "log")
COMPUTE_FORMS = ("constant", "exponential", "gamma:SHAPE", "lognormal:SIGMA")
STRAGGLERS_FORM = "'SHARE:FACTOR' (a share in [0, 1] of the workers FACTOR >= 1 times slower, e.g. '0.1:10')"
MAX_RING_ENTRIES = 1 << 26  # float64 + int64 entries kept for stale reads (about 1 GiB)


# ---------------------------------------------------------------------------- schedules
def compute_sampler(compute: str):
    """Parse ``compute`` into ``f(rng, size) -> compute times`` with mean 1 (float64 > 0)."""
    if not isinstance(compute, str):
        raise ValueError(f"compute must be one of {list(COMPUTE_FORMS)}, got {compute!r}")
    kind, _, argument = compute.partition(":")
    if kind in ("constant", "exponential") and argument:
        raise ValueError(f"compute {kind!r} takes no parameter, got {compute!r}")
    if kind == "constant":
        return lambda rng, size: np.ones(size)
    if kind == "exponential":
        return lambda rng, size: rng.exponential(1.0, size)
    if kind in ("gamma", "lognormal"):
        try:
            value = float(argument)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"compute {compute!r}: {kind} needs a finite parameter > 0, "
                             f"e.g. '{kind}:2'")
        if kind == "gamma":
            return lambda rng, size: rng.gamma(value, 1.0 / value, size)
        return lambda rng, size: rng.lognormal(-0.5 * value * value, value, size)
    raise ValueError(f"unknown compute {compute!r}; choose one of {list(COMPUTE_FORMS)}")


def straggler_count(workers: int, share: float) -> int:
    """How many of ``workers`` the share ``share`` in [0, 1] of stragglers makes slow: the nearest
    integer to ``share * workers`` (halves round up), at least one when ``share > 0``."""
    return 0 if share == 0 else min(workers, max(1, math.floor(share * workers + 0.5)))


def parse_stragglers(stragglers: str) -> tuple[float, float]:
    """``'SHARE:FACTOR'`` -> (share in [0, 1], factor finite >= 1), else ValueError."""
    share_text, colon, factor_text = stragglers.partition(":") if isinstance(stragglers, str) else ("", "", "")
    try:
        share, factor = float(share_text), float(factor_text)
    except ValueError:
        share = factor = math.nan
    if not colon or not (0 <= share <= 1) or not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"stragglers must be {STRAGGLERS_FORM}, got {stragglers!r}")
    return share, factor


def worker_slowness(workers: int, stragglers: str | None = None, worker_speeds=None):
    """Per-worker multipliers of the compute times (float64, shape (workers,)), or None when the
    workers are alike (neither option given, or every speed equal), so the default schedule is
    unchanged bit for bit.

    ``stragglers`` ``'SHARE:FACTOR'``: the last :func:`straggler_count` workers (highest ids) run
    at speed 1 / FACTOR, the others at 1.  ``worker_speeds``: ``workers`` relative speeds (finite
    > 0).  The speeds are rescaled to mean 1, so the workers together still land ``workers``
    gradients per time unit on average, as alike workers do: the time unit stays the mean compute
    time of one gradient at the workers' mean speed.  A worker's slowness is 1 / its speed.  Not
    both options at once."""
    if stragglers is not None and worker_speeds is not None:
        raise ValueError("give stragglers or worker_speeds, not both (worker_speeds can express "
                         "any straggler set)")
    if stragglers is not None:
        share, factor = parse_stragglers(stragglers)
        speeds = np.ones(workers)
        speeds[workers - straggler_count(workers, share):] = 1.0 / factor
    elif worker_speeds is not None:
        if isinstance(worker_speeds, (str, bytes)) or not hasattr(worker_speeds, "__len__"):
            raise ValueError(f"worker_speeds must be a list of {workers} finite numbers > 0 (one per "
                             f"worker), got {worker_speeds!r}")
        if len(worker_speeds) != workers:
            raise ValueError(f"worker_speeds must hold one speed per worker ({workers}), got "
                             f"{len(worker_speeds)}: {list(worker_speeds)!r}")
        for speed in worker_speeds:
            if isinstance(speed, bool) or not isinstance(speed, (int, float, np.integer, np.floating)) \
                    or not (math.isfinite(speed) and speed > 0):
                raise ValueError(f"worker_speeds must hold finite numbers > 0, got {speed!r}")
        speeds = np.asarray(worker_speeds, dtype=np.float64)
    else:
        return None
    if np.all(speeds == speeds[0]):
        return None
    return speeds.mean() / speeds


def event_schedule(updates_per_worker: np.ndarray, compute: str, rng: np.random.Generator,
                   slowness=None):
    """Event-driven schedule of ``len(updates_per_worker)`` workers.

    Worker w runs ``updates_per_worker[w]`` gradients back to back, each taking an independent
    compute time (mean 1) times ``slowness[w]`` (None: 1 for all, as :func:`worker_slowness`
    gives for alike workers).  It reads the parameter version at its start and lands at its
    finish; simultaneous finishes land in worker order.  Returns (worker of update t, tau_t,
    finish time of update t in compute-time units), t in landing order.
    """
    draw = compute_sampler(compute)
    counts = np.asarray(updates_per_worker, dtype=np.int64)
    durations = [draw(rng, int(c)) for c in counts]
    if slowness is not None:
        durations = [d * float(factor) for d, factor in zip(durations, slowness)]
    total = int(counts.sum())
    workers_of = np.empty(total, np.int64)
    taus = np.empty(total, np.int64)
    times = np.empty(total, np.float64)
    heap = [(float(durations[w][0]), w, 0) for w in range(counts.size) if counts[w] > 0]
    heapq.heapify(heap)
    read_version = np.zeros(counts.size, np.int64)
    done = np.zeros(counts.size, np.int64)
    for t in range(total):
        finish, w, _ = heapq.heappop(heap)
        workers_of[t], taus[t], times[t] = w, t - read_version[w], finish
        done[w] += 1
        read_version[w] = t + 1
        if done[w] < counts[w]:
            heapq.heappush(heap, (finish + float(durations[w][done[w]]), w, t + 1))
    return workers_of, taus, times


def round_robin(updates_per_worker: np.ndarray) -> np.ndarray:
    """Worker of each update when workers take turns (those with updates left, in id order)."""
    counts = np.asarray(updates_per_worker, dtype=np.int64)
    rounds = np.arange(int(counts.max()))[:, None]
    mask = rounds < counts[None, :]
    return np.nonzero(mask)[1].astype(np.int64)


def staleness_source(staleness, workers: int):
    """Validate ``staleness``: ``"event"``, a model, a model name or a histogram.

    Returns ``"event"`` or a function ``(rng, size) -> int64 taus`` and a JSON-able description.
    """
    if isinstance(staleness, str):
        if staleness == "event":
            return "event", {"source": "event"}
        if staleness == "poisson":
            staleness = Poisson(float(workers - 1))
        elif staleness == "geometric":
            mean = float(workers - 1)
            staleness = Geometric(mean / (1.0 + mean))
        else:
            raise ValueError(f"unknown staleness {staleness!r}; choose one of {list(STALENESS_SOURCES)}, "
                             "a staleness model or a histogram of counts by tau")
    if isinstance(staleness, StalenessModel):
        model = staleness
        return (lambda rng, size: model.sample(size, rng)), {"source": "model", **model.to_dict()}
    if isinstance(staleness, (list, tuple, np.ndarray)):
        counts = check_histogram(staleness)
        if counts.sum() == 0:
            raise ValueError("the staleness histogram is empty (all counts are 0)")
        p = counts / counts.sum()
        taus = np.arange(counts.size)
        return ((lambda rng, size: rng.choice(taus, size=size, p=p)),
                {"source": "histogram", "histogram": counts.tolist()})
    raise ValueError(f"staleness must be 'event', 'poisson', 'geometric', a StalenessModel or a "
                     f"histogram of counts by tau, got {staleness!r}")


# ---------------------------------------------------------------------------- numba kernel
@njit(cache=True, nogil=True)
def simulate_updates(rows, dense, batch_rows, batch_ptr,
                     update_worker, update_tau, start, stop, params, n_features, fit_intercept,
                     terms, tables, t0, power, hist, snapshots, ring_params, log_cols, log_old,
                     log_count, marker, stale, derivative_buffer, momentum, velocity, touched,
                     l1_applied, l1_total):
    """Apply updates ``start..stop-1``; update t uses rows ``batch_rows[batch_ptr[t]:batch_ptr[t+1]]``,
    margins at ``theta_{t - update_tau[t]}`` and the step ``tables[update_worker[t], min(tau,
    T-1)]`` times the schedule's scale at t (``kernels.scheduled_step(lr, t, t0, power)``);
    ``rows``: the data set (a :class:`hogwild_mts.kernels.linear.Rows` of unit weights);
    ``terms``: the model's :class:`hogwild_mts.kernels.linear.Terms`.

    The batch is applied by the shared-memory workers' own ``kernels.apply_update``:
    ``momentum`` 0: ``params -= step / B * gradient`` row by row (the L2 term on the current
    value); ``momentum`` > 0: worker w = ``update_worker[t]`` keeps ``velocity[w]`` (marks
    ``touched[w]``, start at -1; both (workers, n_params)), ``v = momentum * v + g``,
    ``params -= step * v`` on the coordinates the batch stores (mark t); either way the
    intercept's step is multiplied by ``terms.intercept_decay``.  With ``terms.l1`` > 0,
    ``l1_total[0]`` (u) gains ``l1 * step`` and ``kernels.clip_l1`` clips the batch's
    coordinates against ``l1_applied`` (n_features), as one worker of the engine does.

    Stale reads: ``snapshots`` -- ``ring_params[v % W]`` holds theta_v for the last W versions;
    else an undo log -- slot ``s % W`` holds (column, old value) of every write of update s
    (``log_count[s % W]`` entries), scanned newest to oldest so the oldest old value wins.
    ``marker``/``stale`` are (n_params,) scratch arrays.  Counts tau in ``hist`` (last bin: tau >=
    len - 1).  Returns (STATUS_*, the update index reached).
    """
    indices, indptr, labels = rows.indices, rows.indptr, rows.labels
    last_alpha = tables.shape[1] - 1
    last_bin = hist.shape[0] - 1
    window = ring_params.shape[0] if snapshots else log_count.shape[0]
    intercept_col = n_features
    for t in range(start, stop):
        tau = update_tau[t]
        first, last = batch_ptr[t], batch_ptr[t + 1]
        if snapshots:
            source = ring_params[(t - tau) % window]
        else:
            # Mark the batch's columns, copy their current values, then roll back tau updates.
            stamp = t + 1
            for b in range(first, last):
                row = batch_rows[b]
                for k in range(indptr[row], indptr[row + 1]):
                    column = k - indptr[row] if dense else indices[k]
                    marker[column] = stamp
                    stale[column] = params[column]
            marker[intercept_col] = stamp
            stale[intercept_col] = params[intercept_col] if fit_intercept else 0.0
            for s in range(t - 1, t - tau - 1, -1):
                slot = s % window
                for e in range(log_count[slot] - 1, -1, -1):
                    column = log_cols[slot, e]
                    if marker[column] == stamp:
                        stale[column] = log_old[slot, e]
            source = stale
        for b in range(first, last):
            row = batch_rows[b]
            margin = row_margin(rows, dense, source, n_features, fit_intercept, row)
            if not np.isfinite(margin):
                return STATUS_DIVERGED, t
            derivative_buffer[b - first] = row_derivative(terms, margin, labels[row])
        lr = scheduled_step(tables[update_worker[t], min(tau, last_alpha)], t, t0, power)
        hist[min(tau, last_bin)] += 1
        if not snapshots:
            # every coordinate the update may write, before it writes (repeats log the same value)
            entry = 0
            slot = t % window
            for b in range(first, last):
                row = batch_rows[b]
                for k in range(indptr[row], indptr[row + 1]):
                    column = k - indptr[row] if dense else indices[k]
                    log_cols[slot, entry] = column
                    log_old[slot, entry] = params[column]
                    entry += 1
            if fit_intercept:
                log_cols[slot, entry] = intercept_col
                log_old[slot, entry] = params[intercept_col]
                entry += 1
            log_count[slot] = entry
        worker = update_worker[t]
        apply_update(rows, dense, params, n_features, fit_intercept, terms.intercept_decay,
                     terms.l2, terms.l2 != 0.0, momentum != 0.0, batch_rows, first, last,
                     derivative_buffer, lr, momentum, velocity[worker], touched[worker], t)
        if terms.l1 != 0.0:
            l1_total[0] += terms.l1 * lr
            clip_l1(rows, dense, params, l1_applied, l1_total[0], batch_rows, first, last)
        if snapshots:
            ring_params[(t + 1) % window, :] = params
    return STATUS_OK, stop


def rows_in_landing_order(orders: list, bounds: list, workers_of: np.ndarray):
    """Flatten the workers' batches in landing order: update t (by worker ``workers_of[t]``, its
    j-th) uses ``batch_rows[batch_ptr[t]:batch_ptr[t+1]]`` = that worker's j-th batch."""
    m = len(orders)
    starts = np.empty(workers_of.size, np.int64)
    lengths = np.empty(workers_of.size, np.int64)
    offsets = np.concatenate([[0], np.cumsum([order.size for order in orders])])
    for w in range(m):
        mine = np.flatnonzero(workers_of == w)
        starts[mine] = offsets[w] + bounds[w][0]
        lengths[mine] = bounds[w][1] - bounds[w][0]
    batch_ptr = np.zeros(workers_of.size + 1, np.int64)
    np.cumsum(lengths, out=batch_ptr[1:])
    within = np.arange(batch_ptr[-1]) - np.repeat(batch_ptr[:-1], lengths)
    batch_rows = np.concatenate(orders)[np.repeat(starts, lengths) + within]
    return batch_rows.astype(np.int64), batch_ptr


def _padded(table: np.ndarray, length: int) -> np.ndarray:
    """The table extended to ``length`` entries with its last entry (same lookups)."""
    table = np.asarray(table, dtype=np.float64)
    return np.concatenate([table, np.full(length - table.size, table[-1])])


class EmulatedWorkers:
    """What both simulator backends share of :class:`hogwild_mts.core.lifecycle.Backend`: the
    emulated workers run inside ``poll`` (nothing to launch, wait for or join), ``position``
    updates of ``total`` are applied, ``_times`` holds each update's simulated landing time, and
    ``params`` is the live vector."""

    def start(self) -> None:
        """Nothing to launch: the emulated workers run inside :meth:`poll`."""

    def ready(self) -> bool:
        return True

    def go(self) -> None:
        """The simulated clock starts at 0."""

    def finished(self) -> bool:
        return self.position >= self.total or self._stop_requested

    def elapsed(self) -> float:
        return float(self._times[self.position - 1]) if self.position else 0.0

    def snapshot(self) -> np.ndarray:
        return self.params.copy()

    def wait(self) -> None:
        """The simulation advances in poll; there is nothing to wait for."""

    def request_stop(self) -> None:
        self._stop_requested = True

    def join(self) -> None:
        """Nothing runs outside poll."""


class SimBackend(EmulatedWorkers):
    """:class:`hogwild_mts.core.lifecycle.Backend` of the simulator: every update of the
    schedule is applied in this thread, ``segment`` updates (at most) per :meth:`poll`.

    ``arrays``: the data (values, indices, indptr, labels, feature_scale) and the stale-read
    buffers; ``terms``: the model's :class:`hogwild_mts.kernels.linear.Terms`;
    ``workers_of``/``taus``/``times``: the schedule in landing order; ``policies``: one copy per
    emulated worker, each refitted from the global histogram after every ``refit_every`` of its
    worker's own updates; ``schedule``: the step schedule (a
    :class:`hogwild_mts.job.StepSchedule`: its scale multiplies the policies' steps, and it
    shapes their tables); ``momentum`` in [0, 1): > 0 gives each emulated worker a private
    velocity (zero at the start)."""

    def __init__(self, *, data: dict, dense: bool, n_features: int, fit_intercept: bool,
                 terms, batch_size: int, batch_rows, batch_ptr, workers_of, taus,
                 times, policies: list, refit_every: int, snapshots: bool, n_params: int,
                 segment: int, schedule, momentum: float = 0.0):
        self.workers = len(policies)
        self._data, self._dense, self._n_features = data, dense, n_features
        self._fit_intercept, self._terms, self._schedule = fit_intercept, terms, schedule
        self._l1_applied = np.zeros(n_features if terms.l1 else 0)
        self._l1_total = np.zeros(1)
        self._batch_rows, self._batch_ptr = batch_rows, batch_ptr
        self._workers_of, self._taus, self._times = workers_of, taus, times
        self._policies, self._snapshots, self._segment = policies, snapshots, segment
        self.total = int(workers_of.size)
        self.params = np.zeros(max(n_params, n_features + 1), np.float64)  # slot n_features exists
        self._momentum = momentum
        columns = self.params.size if momentum else 0
        self._velocity = np.zeros((self.workers, columns))
        self._touched = np.full((self.workers, columns), -1, np.int64)
        self.hist = np.zeros(HIST_BINS, np.int64)
        self.position = 0
        self.refits = 0
        self._stop_requested = False
        tables = [schedule.shaped(policy_table(policy)) for policy in policies]
        self._table_length = max(table.size for table in tables)
        self._tables = np.empty((self.workers, self._table_length))
        for w, table in enumerate(tables):
            self._tables[w] = _padded(table, self._table_length)
        self._refit_points = {}  # global update index after which worker w refits
        if refit_every:
            for w in range(self.workers):
                mine = np.flatnonzero(workers_of == w)
                for t in mine[refit_every - 1::refit_every]:
                    self._refit_points.setdefault(int(t) + 1, []).append(w)
        self._stops = sorted(set(self._refit_points) | {self.total})
        self._allocate_stale_reads(batch_size)

    def _allocate_stale_reads(self, batch_size: int) -> None:
        size = self.params.size
        window = max(int(self._taus.max()) if self.total else 0, 1)
        row_lengths = np.diff(self._data["indptr"])
        entries = batch_size * (int(row_lengths.max()) + 1)
        ring_size = (window + 1) * size if self._snapshots else window * entries
        if ring_size > MAX_RING_ENTRIES:
            raise ValueError(f"the stale-read ring would hold {ring_size:,} entries (max staleness "
                             f"{window}, {entries} writes per update); the limit is {MAX_RING_ENTRIES:,}: "
                             "lower the staleness or the batch size")
        if self._snapshots:
            self._ring = np.zeros((window + 1, size))
            self._log = (np.zeros((1, 1), np.int64), np.zeros((1, 1)), np.zeros(1, np.int64))
        else:
            self._ring = np.zeros((1, 1))
            self._log = (np.zeros((window, entries), np.int64), np.zeros((window, entries)),
                         np.zeros(window, np.int64))
        self._marker = np.zeros(size, np.int64)
        self._stale = np.zeros(size)
        self._derivatives = np.empty(batch_size)

    def poll(self, until_updates=None) -> int:
        """Apply the next updates: up to ``until_updates``, at most ``segment`` of them, stopping
        at each refit point to refit that worker's policy."""
        target = self.position + self._segment if until_updates is None else until_updates
        target = min(target, self.position + self._segment, self.total)
        while self.position < target and not self._stop_requested:
            stop = min(next(s for s in self._stops if s > self.position), target)
            self._apply(stop)
            for w in self._refit_points.get(stop, ()):
                table = self._schedule.shaped(refit_policy(self._policies[w], self.hist))
                self._tables[w] = _padded(table, self._table_length)
                self.refits += 1
        return self.position

    def _apply(self, stop: int) -> None:
        data = self._data
        log_cols, log_old, log_count = self._log
        rows = Rows(data["values"], data["indices"], data["indptr"], data["labels"], UNIT_WEIGHTS,
                    data["feature_scale"])
        status, reached = simulate_updates(
            rows, self._dense, self._batch_rows, self._batch_ptr, self._workers_of, self._taus,
            self.position, stop, self.params, self._n_features, self._fit_intercept, self._terms,
            self._tables, self._schedule.t0, self._schedule.power, self.hist, self._snapshots,
            self._ring, log_cols, log_old, log_count, self._marker, self._stale, self._derivatives,
            self._momentum, self._velocity, self._touched, self._l1_applied, self._l1_total)
        if status == STATUS_DIVERGED:
            raise Diverged(f"a margin at simulated update {reached}")
        self.position = stop

    def collect(self) -> RunTotals:
        done = self.position
        return RunTotals(updates=done, counter=done, samples=int(self._batch_ptr[done]),
                         histogram=self.hist.copy(),
                         max_staleness=int(self._taus[:done].max()) if done else 0,
                         refits=self.refits, train_seconds=self.elapsed())

    def close(self) -> None:
        """Buffers are freed with the object."""
