"""The simulator front end: a linear model trained by ``workers`` emulated workers on one core
(:mod:`hogwild_mts.backends.sim.simulator`), through the same lifecycle and FitResult as
:class:`hogwild_mts.engines.linear.Engine`."""

from __future__ import annotations

import functools
import time

import numpy as np

from hogwild_mts.kernels.linear import UNIT_WEIGHTS, objective
from hogwild_mts.kernels.split import shard_rows
from hogwild_mts.backends.sim.simulator import (STALE_READS, SimBackend, rows_in_landing_order,
                                                compute_sampler, event_schedule, round_robin,
                                                staleness_source)
from hogwild_mts.core import lifecycle
from hogwild_mts.core.params import Checked, Choice, Flag, Integer, Option, Optional, Positive, Table, validate
from hogwild_mts.core.result import FitResult
from hogwild_mts.job import LinearSettings, SimulationSettings, run_options
from hogwild_mts.policies.refit import describe_fitted
from hogwild_mts.policies.step_sizes import policy_state
from hogwild_mts.engines import options as shared
from hogwild_mts.engines.linear import DEFAULT_ALPHA, ENGINE_OPTIONS, prepare_dataset
from hogwild_mts.models.linear import LinearModel

DEFAULT_EVALUATIONS = 50  # history rows when eval_every is not given
EVENT_SCHEDULE_SEED = 0x5CED  # second word of the schedule's seed sequence


def _staleness_source(values) -> dict:
    """How the staleness is drawn (``draw_tau``: "event" or a sampler) and described; the
    ``compute`` distribution checked for the event schedule."""
    draw_tau, description = staleness_source(values["staleness"], values["workers"])
    if draw_tau == "event":
        compute_sampler(values["compute"])
    return {"draw_tau": draw_tau, "staleness_description": description}


# Simulator's options in validation order: name, constraint, default, where it goes.  Its
# eval_every counts updates, and it shows no progress bar by default (runs take milliseconds).
SIMULATOR_OPTIONS = Table(
    (shared.POLICY, shared.base_step(DEFAULT_ALPHA), shared.WORKERS,
     ENGINE_OPTIONS["epochs"], ENGINE_OPTIONS["batch_size"], shared.SEED,
     Option("eval_every", Optional(Integer(1)), None,
            f"run (updates between history rows; None: about {DEFAULT_EVALUATIONS} rows)"),
     Option("progress", Flag(), False, "run"), shared.MOMENTUM,
     Option("staleness", Checked("'event', 'poisson', 'geometric', a StalenessModel or a "
                                 "histogram"), "event", "the schedule"),
     Option("compute", Checked("'constant', 'exponential', 'gamma:SHAPE' or 'lognormal:SIGMA'"),
            "exponential", "the schedule"),
     Option("update_seconds", Positive(), 1e-6, "the schedule (mean seconds of one gradient)"),
     Option("stale_reads", Choice(STALE_READS), "auto", "the simulation")),
    rules=(shared.named_policy(DEFAULT_ALPHA), _staleness_source))
DEFAULTS = SIMULATOR_OPTIONS.defaults


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
    Every option, its allowed values and default: SIMULATOR_OPTIONS (docs/api.md); the validated
    options are ``self.options``, and ``self.<option>`` reads them there.
    """

    def __init__(self, model="logreg", policy=DEFAULTS.policy, *, workers: int = DEFAULTS.workers,
                 epochs: int = DEFAULTS.epochs, batch_size: int = DEFAULTS.batch_size,
                 alpha: float | None = DEFAULTS.alpha, seed: int = DEFAULTS.seed,
                 staleness=DEFAULTS.staleness, compute: str = DEFAULTS.compute,
                 eval_every: int | None = DEFAULTS.eval_every,
                 update_seconds: float = DEFAULTS.update_seconds,
                 stale_reads: str = DEFAULTS.stale_reads, momentum: float = DEFAULTS.momentum,
                 progress: bool = DEFAULTS.progress):
        self.model = model if isinstance(model, LinearModel) else LinearModel(model)
        self.options = validate(SIMULATOR_OPTIONS, SIMULATOR_OPTIONS.arguments(locals()))

    __getattr__ = shared.option_of

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
        if self.draw_tau == "event":
            workers_of, taus, times = event_schedule(updates_per_worker, self.compute, rng)
            return workers_of, taus, times * self.update_seconds
        workers_of = round_robin(updates_per_worker)
        draws = np.asarray(self.draw_tau(rng, workers_of.size), dtype=np.int64)
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
                            staleness=self.staleness_description,
                            compute=self.compute if self.draw_tau == "event" else None,
                            update_seconds=self.update_seconds,
                            stale_reads="snapshots" if snapshots else "log",
                            real_seconds=time.time() - started))}

        options = run_options(self.options, eval_every=None, eval_every_updates=eval_every,
                              defer_evaluation=False)
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
