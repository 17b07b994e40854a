"""A deterministic, seeded emulation of ``m`` Hogwild! workers on one core.

Update ``t`` (t = 0, 1, ...) applies a gradient computed at ``theta_{t - tau_t}``, the parameters
after ``t - tau_t`` updates, exactly: either from a ring of full parameter snapshots (dense rows,
where a copy costs no more than logging) or from an undo log of the coordinates each recent
update changed and their old values (sparse rows).  Both reproduce the stale margins bit for bit.

Where tau comes from (``staleness=``):

* ``"event"`` (default): an event-driven model of ``m`` workers. Each draws a compute time per
  gradient from ``compute`` (mean 1 time unit), reads the parameters when it starts and lands its
  update when it finishes; ``tau`` = updates landed in between.  Staleness emerges from the schedule.
* a :class:`~hogwild_mts.staleness.StalenessModel` (e.g. ``Poisson(7)``), ``"poisson"`` /
  ``"geometric"`` (mean ``m - 1``), or a recorded histogram (1-D counts by tau): tau is drawn iid
  and workers take turns round-robin; ``tau_t <= t`` always.

Rows, shards and shuffles are the engine's (worker w owns rows w, w+m, ...; a fresh permutation
per epoch from its own seed), so ``workers=1`` reproduces a one-worker :class:`Engine` run bit for
bit.  Each worker owns a copy of the policy and refits it from the global histogram after every
``refit_every`` of its own updates, as real workers do.  Times are simulated: one gradient takes
``update_seconds`` on average, so ``train_seconds`` and ``history["time_s"]`` are simulated seconds.
"""

from __future__ import annotations

import copy
import heapq
import math
import time

import numpy as np
from numba import njit

from hogwild_mts import worker
from hogwild_mts.data import Dataset
from hogwild_mts.engine import DEFAULT_ALPHA, prepare_dataset
from hogwild_mts.runner import (HIST_BINS, DivergenceError, FitResult, check_int, describe,
                                describe_fitted, progress_bar, training_options)
from hogwild_mts.report import fit_staleness_models
from hogwild_mts.staleness import Geometric, Poisson, StalenessModel, check_histogram
from hogwild_mts import kernels
from hogwild_mts.kernels import row_margin
from models.linear import LinearModel, loss_derivative

STALENESS_SOURCES = ("event", "poisson", "geometric")
STALE_READS = ("auto", "snapshots", "log")
COMPUTE_FORMS = ("constant", "exponential", "gamma:SHAPE", "lognormal:SIGMA")
MAX_RING_ENTRIES = 1 << 26  # float64 + int64 entries kept for stale reads (about 1 GiB)
DEFAULT_EVALUATIONS = 50  # history rows when eval_every is not given
DEFAULT_UPDATE_SECONDS = 1e-6  # simulated compute time of one gradient (mean)
STATUS_OK = 0
STATUS_DIVERGED = 1


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


def event_schedule(updates_per_worker: np.ndarray, compute: str, rng: np.random.Generator):
    """Event-driven schedule of ``len(updates_per_worker)`` workers.

    Worker w runs ``updates_per_worker[w]`` gradients back to back, each taking an independent
    compute time (mean 1).  It reads the parameter version at its start and lands at its finish;
    simultaneous finishes land in worker order.  Returns (worker of update t, tau_t, finish time
    of update t in compute-time units), t in landing order.
    """
    draw = compute_sampler(compute)
    counts = np.asarray(updates_per_worker, dtype=np.int64)
    durations = [draw(rng, int(c)) for c in counts]
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
def simulate_updates(values, indices, indptr, dense, labels, feature_scale, batch_rows, batch_ptr,
                     update_worker, update_tau, start, stop, params, n_features, fit_intercept,
                     loss_id, l2, tables, hist, snapshots, ring_params, log_cols, log_old,
                     log_count, marker, stale, derivative_buffer):
    """Apply updates ``start..stop-1``; update t uses rows ``batch_rows[batch_ptr[t]:batch_ptr[t+1]]``,
    margins at ``theta_{t - update_tau[t]}`` and ``alpha = tables[update_worker[t], min(tau, T-1)]``.

    Stale reads: ``snapshots`` -- ``ring_params[v % W]`` holds theta_v for the last W versions;
    else an undo log -- slot ``s % W`` holds (column, old value) of every write of update s
    (``log_count[s % W]`` entries), scanned newest to oldest so the oldest old value wins.
    ``marker``/``stale`` are (n_params,) scratch arrays.  Counts tau in ``hist`` (last bin: tau >=
    len - 1).  Returns (STATUS_*, the update index reached).
    """
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
            margin = row_margin(values, indices, indptr, dense, source, n_features, fit_intercept, row)
            if not np.isfinite(margin):
                return STATUS_DIVERGED, t
            derivative_buffer[b - first] = loss_derivative(loss_id, margin, labels[row])
        alpha = tables[update_worker[t], min(tau, last_alpha)]
        hist[min(tau, last_bin)] += 1
        step = alpha / (last - first)
        entry = 0
        slot = t % window
        for b in range(first, last):
            row = batch_rows[b]
            derivative = derivative_buffer[b - first]
            begin, end = indptr[row], indptr[row + 1]
            for k in range(begin, end):
                column = k - begin if dense else indices[k]
                if not snapshots:
                    log_cols[slot, entry] = column
                    log_old[slot, entry] = params[column]
                    entry += 1
                if l2 == 0.0:
                    params[column] -= step * (derivative * values[k])
                else:
                    params[column] -= step * (derivative * values[k] + l2 * feature_scale[column] * params[column])
            if fit_intercept:
                if not snapshots:
                    log_cols[slot, entry] = intercept_col
                    log_old[slot, entry] = params[intercept_col]
                    entry += 1
                params[intercept_col] -= step * derivative
        if snapshots:
            ring_params[(t + 1) % window, :] = params
        else:
            log_count[slot] = entry
    return STATUS_OK, stop


# ---------------------------------------------------------------------------- simulator
class Simulator:
    """Hogwild! with ``workers`` emulated workers on one core: same models, policies, data split
    and :class:`~hogwild_mts.engine.FitResult` as :class:`~hogwild_mts.engine.Engine`.

    ``staleness``: ``"event"`` (event-driven schedule with ``compute`` times: ``constant``,
    ``exponential``, ``gamma:SHAPE`` or ``lognormal:SIGMA``, mean 1), ``"poisson"`` /
    ``"geometric"`` (mean m - 1), a StalenessModel, or a histogram of counts by tau.
    ``eval_every``: updates between history rows (default: about DEFAULT_EVALUATIONS rows).
    ``update_seconds``: simulated mean compute time of one gradient (seconds).
    ``stale_reads``: ``snapshots``, ``log`` (undo log) or ``auto`` (whichever touches fewer
    numbers per update: a snapshot copies all parameters, a read rolls back tau logged updates).
    Deterministic: the same arguments and seed give bit-identical results.
    """

    def __init__(self, model="logreg", policy="constant", *, workers: int = 2, epochs: int = 5,
                 batch_size: int = 1, alpha: float | None = None, seed: int = 0,
                 staleness="event", compute: str = "exponential", eval_every: int | None = None,
                 update_seconds: float = DEFAULT_UPDATE_SECONDS, stale_reads: str = "auto",
                 progress: bool = False):
        self.model = model if isinstance(model, LinearModel) else LinearModel(model)
        vars(self).update(training_options(policy=policy, alpha=alpha, default_alpha=DEFAULT_ALPHA,
                                           workers=workers, epochs=epochs, batch_size=batch_size,
                                           seed=seed))
        self.staleness = staleness
        self._draw_tau, self._staleness_description = staleness_source(staleness, self.workers)
        self.compute = compute
        if self._draw_tau == "event":
            compute_sampler(compute)
        self.eval_every = None if eval_every is None else check_int("eval_every", eval_every, 1)
        if not (isinstance(update_seconds, (int, float)) and math.isfinite(update_seconds)
                and update_seconds > 0):
            raise ValueError(f"update_seconds must be a finite number > 0, got {update_seconds!r}")
        self.update_seconds = float(update_seconds)
        if stale_reads not in STALE_READS:
            raise ValueError(f"stale_reads must be one of {list(STALE_READS)}, got {stale_reads!r}")
        self.stale_reads = stale_reads
        self.progress = bool(progress)

    def _batches(self, n_samples: int):
        """Per worker: its rows in visiting order (all epochs) and its batch boundaries, exactly
        as the engine's workers draw them."""
        seeds = np.random.SeedSequence(self.seed).spawn(self.workers)
        orders, bounds = [], []
        for w in range(self.workers):
            shard = worker.shard_rows(n_samples, self.workers, w)
            rng = np.random.default_rng(seeds[w])
            orders.append(np.concatenate([rng.permutation(shard) for _ in range(self.epochs)]))
            starts = np.concatenate([e * shard.size + np.arange(0, shard.size, self.batch_size)
                                     for e in range(self.epochs)])
            stops = np.minimum(starts + self.batch_size, (starts // shard.size + 1) * shard.size)
            bounds.append((starts, stops))
        return orders, bounds

    def _schedule(self, updates_per_worker: np.ndarray):
        """(worker, tau, simulated finish time in seconds) of every update, in landing order."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5CED]))
        if self._draw_tau == "event":
            workers_of, taus, times = event_schedule(updates_per_worker, self.compute, rng)
            return workers_of, taus, times * self.update_seconds
        workers_of = round_robin(updates_per_worker)
        draws = np.asarray(self._draw_tau(rng, workers_of.size), dtype=np.int64)
        taus = np.minimum(draws, np.arange(workers_of.size))
        times = np.arange(1, workers_of.size + 1) * (self.update_seconds / self.workers)
        return workers_of, taus, times

    def fit(self, X, y=None) -> FitResult:
        """Train on ``X`` (dense array, scipy sparse matrix or Dataset) and labels ``y``.

        Raises DivergenceError when a margin becomes NaN/inf, ValueError when the stale-read ring
        would exceed MAX_RING_ENTRIES (lower the staleness or the batch size).
        """
        started = time.time()
        dataset = prepare_dataset(self.model, X, y, self.workers)
        m, n_features = self.workers, dataset.n_features
        orders, bounds = self._batches(dataset.n_samples)
        updates_per_worker = np.array([b[0].size for b in bounds], dtype=np.int64)
        workers_of, taus, times = self._schedule(updates_per_worker)
        total = workers_of.size
        batch_rows, batch_ptr = _rows_in_landing_order(orders, bounds, workers_of)
        n_params = self.model.n_params(n_features)
        params = np.zeros(max(n_params, n_features + 1), np.float64)  # slot n_features always exists
        window = max(int(taus.max()) if total else 0, 1)
        row_lengths = np.diff(dataset.indptr)
        entries = self.batch_size * (int(row_lengths.max()) + 1)
        if self.stale_reads == "auto":
            snapshots = params.size <= max(float(taus.mean()) if total else 0.0, 1.0) * entries
        else:
            snapshots = self.stale_reads == "snapshots"
        ring_size = (window + 1) * params.size if snapshots else window * entries
        if ring_size > MAX_RING_ENTRIES:
            raise ValueError(f"the stale-read ring would hold {ring_size:,} entries (max staleness "
                             f"{window}, {entries} writes per update); the limit is {MAX_RING_ENTRIES:,}: "
                             "lower the staleness or the batch size")
        if snapshots:
            ring_params = np.zeros((window + 1, params.size))
            log_cols, log_old, log_count = np.zeros((1, 1), np.int64), np.zeros((1, 1)), np.zeros(1, np.int64)
        else:
            ring_params = np.zeros((1, 1))
            log_cols, log_old = np.zeros((window, entries), np.int64), np.zeros((window, entries))
            log_count = np.zeros(window, np.int64)
        marker = np.zeros(params.size, np.int64)
        stale = np.zeros(params.size)
        derivative_buffer = np.empty(self.batch_size)
        feature_scale = np.zeros(n_features)
        counts = dataset.feature_counts()
        np.divide(dataset.n_samples, counts, out=feature_scale, where=counts > 0)

        policies = [copy.deepcopy(self.policy) for _ in range(m)]
        for policy in policies:
            policy.bind(m)
        table_length = max(len(p.table()) for p in policies)
        tables = np.empty((m, table_length))
        for w, policy in enumerate(policies):
            tables[w] = _padded(policy.table(), table_length)
        refit_every = int(getattr(self.policy, "refit_every", 0) or 0)
        refit_points = {}  # global update index after which worker w refits
        if refit_every:
            for w in range(m):
                mine = np.flatnonzero(workers_of == w)
                for t in mine[refit_every - 1::refit_every]:
                    refit_points.setdefault(int(t) + 1, []).append(w)
        eval_every = self.eval_every or max(1, total // DEFAULT_EVALUATIONS)
        stops = sorted(set(refit_points) | set(range(eval_every, total, eval_every)) | {total})

        hist = np.zeros(HIST_BINS, np.int64)
        history = {"time_s": [], "updates": [], "loss": [], "accuracy": []}
        refits = 0
        self._record(dataset, params, 0, 0.0, history)
        bar = progress_bar(total, self.progress)
        position = 0
        try:
            for stop in stops:
                status, reached = simulate_updates(
                    dataset.values, dataset.indices, dataset.indptr, dataset.dense, dataset.y,
                    feature_scale, batch_rows, batch_ptr, workers_of, taus, position, stop, params,
                    n_features, self.model.fit_intercept, self.model.loss_id, float(self.model.l2),
                    tables, hist, snapshots, ring_params, log_cols, log_old, log_count, marker, stale,
                    derivative_buffer)
                if status == STATUS_DIVERGED:
                    raise DivergenceError(f"simulated training diverged at update {reached}: a margin "
                                          f"became NaN or infinite (policy {describe(self.policy).get('name')}); "
                                          "lower the step size (alpha)")
                bar.update(stop - position)
                position = stop
                for w in refit_points.get(stop, ()):
                    policies[w].observe(hist)
                    tables[w] = _padded(policies[w].table(), table_length)
                    refits += 1
                if stop % eval_every == 0 or stop == total:
                    self._record(dataset, params, stop, float(times[stop - 1]), history)
        finally:
            bar.close()
        if not np.all(np.isfinite(params)):
            raise DivergenceError("simulated training diverged: the parameters became NaN or infinite; "
                                  "lower the step size (alpha)")
        loss, accuracy = history["loss"][-1], history["accuracy"][-1]
        return FitResult(
            params=params[:n_features].copy(),
            intercept=float(params[n_features]) if self.model.fit_intercept else 0.0,
            history=history, updates=total, counter=total, samples=int(batch_ptr[-1]),
            staleness_histogram=hist, max_staleness=int(taus.max()) if total else 0,
            train_seconds=float(times[-1]) if total else 0.0, wall_seconds=time.time() - started,
            final_loss=loss, final_accuracy=accuracy, workers=m, model=self.model.name,
            policy=describe_fitted(self.policy, m, hist), data=dataset.name, refits=refits,
            staleness_fit=fit_staleness_models(hist),
            settings={"epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
                      "dtype": "float64", "l2": self.model.l2, "fit_intercept": self.model.fit_intercept,
                      "simulated": True, "staleness": self._staleness_description,
                      "compute": self.compute if self._draw_tau == "event" else None,
                      "update_seconds": self.update_seconds, "stale_reads": "snapshots" if snapshots else "log",
                      "real_seconds": time.time() - started})

    def _record(self, dataset: Dataset, params: np.ndarray, updates: int, seconds: float, history: dict):
        loss, accuracy = kernels.objective(dataset.values, dataset.indices, dataset.indptr, dataset.dense,
                                           dataset.y, params, dataset.n_features,
                                           self.model.fit_intercept, self.model.loss_id, float(self.model.l2))
        history["time_s"].append(seconds)
        history["updates"].append(int(updates))
        history["loss"].append(float(loss))
        history["accuracy"].append(float(accuracy) if self.model.classifier else None)


def _rows_in_landing_order(orders: list, bounds: list, workers_of: np.ndarray):
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
