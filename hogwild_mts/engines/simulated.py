"""The simulator front end: a linear model trained by ``workers`` emulated workers on one core
(:mod:`hogwild_mts.backends.sim.simulator`), through the same lifecycle and FitResult as
:class:`hogwild_mts.engines.linear.Engine`."""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from hogwild_mts.kernels.linear import UNIT_WEIGHTS, objective
from hogwild_mts.kernels.split import shard_rows
from hogwild_mts.backends.sim.simulator import (STALE_READS, SimBackend, rows_in_landing_order,
                                                compute_sampler, event_schedule, round_robin,
                                                staleness_source)
from hogwild_mts.core import lifecycle
from hogwild_mts.core.options import check_choice, check_int, check_positive
from hogwild_mts.core.result import FitResult
from hogwild_mts.job import LinearSettings, SimulationSettings, run_options
from hogwild_mts.policies.refit import describe_fitted
from hogwild_mts.policies.step_sizes import policy_state
from hogwild_mts.engines.linear import DEFAULT_ALPHA, prepare_dataset
from hogwild_mts.models.linear import LinearModel

DEFAULT_EVALUATIONS = 50  # history rows when eval_every is not given
DEFAULT_UPDATE_SECONDS = 1e-6  # simulated compute time of one gradient (mean)
EVENT_SCHEDULE_SEED = 0x5CED  # second word of the schedule's seed sequence


class Simulator:
    """Hogwild! with ``workers`` emulated workers on one core: same models, policies, data split
    and :class:`~hogwild_mts.core.result.FitResult` as :class:`~hogwild_mts.engines.linear.Engine`.

    ``staleness``: ``"event"`` (event-driven schedule with ``compute`` times: ``constant``,
    ``exponential``, ``gamma:SHAPE`` or ``lognormal:SIGMA``, mean 1), ``"poisson"`` /
    ``"geometric"`` (mean m - 1), a StalenessModel, or a histogram of counts by tau.
    ``eval_every``: updates between history rows (default: about DEFAULT_EVALUATIONS rows).
    ``update_seconds``: simulated mean compute time of one gradient (seconds).
    ``stale_reads``: ``snapshots``, ``log`` (undo log) or ``auto`` (whichever touches fewer
    numbers per update: a snapshot copies all parameters, a read rolls back tau logged updates).
    ``momentum`` in [0, 1): each emulated worker keeps a private velocity exactly as the
    engine's workers (``v = momentum * v + g``, ``theta -= alpha(tau) * v`` on the coordinates a
    batch stores, the L2 penalty in g); the policy is bound with it.
    Deterministic: the same arguments and seed give bit-identical results.
    """

    def __init__(self, model="logreg", policy="constant", *, workers: int = 2, epochs: int = 5,
                 batch_size: int = 1, alpha: float | None = None, seed: int = 0,
                 staleness="event", compute: str = "exponential", eval_every: int | None = None,
                 update_seconds: float = DEFAULT_UPDATE_SECONDS, stale_reads: str = "auto",
                 momentum: float = 0.0, progress: bool = False):
        self.model = model if isinstance(model, LinearModel) else LinearModel(model)
        self.options = run_options(
            policy=policy, alpha=alpha, default_alpha=DEFAULT_ALPHA, workers=workers, epochs=epochs,
            batch_size=batch_size, seed=seed,
            eval_every_updates=None if eval_every is None else check_int("eval_every", eval_every, 1),
            progress=progress, momentum=momentum)
        vars(self).update(vars(self.options))
        self.eval_every = self.options.eval_every_updates
        self.staleness = staleness
        self._draw_tau, self._staleness_description = staleness_source(staleness, self.workers)
        self.compute = compute
        if self._draw_tau == "event":
            compute_sampler(compute)
        self.update_seconds = check_positive("update_seconds", update_seconds)
        self.stale_reads = check_choice("stale_reads", stale_reads, STALE_READS)

    def _batches(self, n_samples: int):
        """Per worker: its rows in visiting order (all epochs) and its batch boundaries, exactly
        as the engine's workers draw them."""
        seeds = np.random.SeedSequence(self.seed).spawn(self.workers)
        orders, bounds = [], []
        for w in range(self.workers):
            shard = shard_rows(n_samples, self.workers, w)
            rng = np.random.default_rng(seeds[w])
            orders.append(np.concatenate([rng.permutation(shard) for _ in range(self.epochs)]))
            starts = np.concatenate([e * shard.size + np.arange(0, shard.size, self.batch_size)
                                     for e in range(self.epochs)])
            stops = np.minimum(starts + self.batch_size, (starts // shard.size + 1) * shard.size)
            bounds.append((starts, stops))
        return orders, bounds

    def _schedule(self, updates_per_worker: np.ndarray):
        """(worker, tau, simulated finish time in seconds) of every update, in landing order."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, EVENT_SCHEDULE_SEED]))
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
        would exceed its limit (lower the staleness or the batch size).
        """
        started = time.time()
        dataset = prepare_dataset(self.model, X, y, self.workers, self.batch_size)
        orders, bounds = self._batches(dataset.n_samples)
        updates_per_worker = np.array([b[0].size for b in bounds], dtype=np.int64)
        workers_of, taus, times = self._schedule(updates_per_worker)
        total = workers_of.size
        batch_rows, batch_ptr = rows_in_landing_order(orders, bounds, workers_of)
        n_params = self.model.n_params(dataset.n_features)
        entries = self.batch_size * (int(np.diff(dataset.indptr).max()) + 1)
        if self.stale_reads == "auto":
            mean_tau = max(float(taus.mean()) if total else 0.0, 1.0)
            snapshots = max(n_params, dataset.n_features + 1) <= mean_tau * entries
        else:
            snapshots = self.stale_reads == "snapshots"
        feature_scale = np.zeros(dataset.n_features)
        counts = dataset.feature_counts()
        np.divide(dataset.n_samples, counts, out=feature_scale, where=counts > 0)
        policies = [policy_state(self.policy, self.workers, self.momentum) for _ in range(self.workers)]
        eval_every = self.eval_every or max(1, total // DEFAULT_EVALUATIONS)
        backend = SimBackend(
            data={"values": dataset.values, "indices": dataset.indices, "indptr": dataset.indptr,
                  "labels": dataset.y, "feature_scale": feature_scale},
            dense=dataset.dense, n_features=dataset.n_features,
            fit_intercept=self.model.fit_intercept, loss_id=self.model.loss_id,
            l2=float(self.model.l2), batch_size=self.batch_size, batch_rows=batch_rows,
            batch_ptr=batch_ptr, workers_of=workers_of, taus=taus, times=times, policies=policies,
            refit_every=int(getattr(self.policy, "refit_every", 0) or 0), snapshots=snapshots,
            n_params=n_params, segment=eval_every, policy=self.policy, momentum=self.momentum)

        def score(params):
            loss, accuracy = _objective(dataset, self.model, params)
            return loss, accuracy if self.model.classifier else None

        def details(params):
            return {"params": params[:dataset.n_features].copy(),
                    "intercept": float(params[dataset.n_features]) if self.model.fit_intercept else 0.0,
                    "model": self.model.name, "data": dataset.name,
                    "settings": LinearSettings(
                        epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
                        dtype="float64", l2=self.model.l2, fit_intercept=self.model.fit_intercept,
                        momentum=self.momentum, simulation=SimulationSettings(
                            staleness=self._staleness_description,
                            compute=self.compute if self._draw_tau == "event" else None,
                            update_seconds=self.update_seconds,
                            stale_reads="snapshots" if snapshots else "log",
                            real_seconds=time.time() - started))}

        options = dataclasses.replace(self.options, eval_every_updates=eval_every)
        return lifecycle.run(backend, options, score=score, details=details,
                             describe_policy=functools.partial(describe_fitted, self.policy, self.workers,
                                                               self.momentum),
                             total_updates=total,
                             started=started)


def _objective(dataset, model: LinearModel, params: np.ndarray):
    """(training objective, accuracy) of ``params`` on ``dataset``."""
    return objective(dataset.values, dataset.indices, dataset.indptr, dataset.dense, dataset.y,
                     UNIT_WEIGHTS, params, dataset.n_features, model.fit_intercept, model.loss_id,
                     float(model.l2))
