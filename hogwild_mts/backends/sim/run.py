"""``fit(job)``: the one assembly of a simulated run: every worker's batches (the static split,
as the engine's workers draw them), the schedule of landings and staleness, the stale-read
buffers, one policy state per emulated worker, then :func:`hogwild_mts.core.lifecycle.run` over
a :class:`~hogwild_mts.backends.sim.simulator.SimBackend`."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from hogwild_mts.backends.sim.simulator import (SimBackend, event_schedule, round_robin,
                                                rows_in_landing_order)
from hogwild_mts.core import lifecycle
from hogwild_mts.core.result import FitResult
from hogwild_mts.job import Job, SimulationSettings
from hogwild_mts.kernels.split import epoch_order, shard_rows
from hogwild_mts.policies.step_sizes import policy_state

DEFAULT_EVALUATIONS = 50  # history rows when the simulation's eval_every is not given
EVENT_SCHEDULE_SEED = 0x5CED  # second word of the schedule's seed sequence


def fit(job: Job) -> FitResult:
    """Run ``job`` (a linear problem) with ``job.workers`` emulated workers in this thread.
    Raises DivergenceError when a margin becomes NaN/inf, ValueError when the stale-read ring
    would exceed its limit."""
    options, problem, simulation = job.options, job.problem, job.simulation
    dataset = problem.dataset
    orders, bounds = worker_batches(job, dataset.n_samples)
    updates_per_worker = np.array([b[0].size for b in bounds], dtype=np.int64)
    workers_of, taus, times = landing_schedule(job, updates_per_worker)
    total = workers_of.size
    batch_rows, batch_ptr = rows_in_landing_order(orders, bounds, workers_of)
    n_params = problem.n_params
    entries = options.batch_size * (int(np.diff(dataset.indptr).max()) + 1)
    if simulation.stale_reads == "auto":
        mean_tau = max(float(taus.mean()) if total else 0.0, 1.0)
        snapshots = max(n_params, dataset.n_features + 1) <= mean_tau * entries
    else:
        snapshots = simulation.stale_reads == "snapshots"
    rows = problem.rows()
    policies = [policy_state(options.policy, options.workers, options.momentum)
                for _ in range(options.workers)]
    eval_every = simulation.eval_every or max(1, total // DEFAULT_EVALUATIONS)
    shape = problem.shape
    backend = SimBackend(
        data={"values": rows.values, "indices": rows.indices, "indptr": rows.indptr,
              "labels": rows.labels, "feature_scale": rows.feature_scale},
        dense=shape.dense, n_features=shape.n_features, fit_intercept=shape.fit_intercept,
        terms=shape.terms, batch_size=options.batch_size, batch_rows=batch_rows,
        batch_ptr=batch_ptr, workers_of=workers_of, taus=taus, times=times, policies=policies,
        refit_every=int(getattr(options.policy, "refit_every", 0) or 0), snapshots=snapshots,
        n_params=n_params, segment=eval_every, schedule=job.schedule, momentum=options.momentum)
    def score(params):
        return problem.score(rows, shape, params)

    def details(params):
        return {**problem.result_fields(params, dataset.n_features, dataset.name),
                "settings": simulated_settings(job, "snapshots" if snapshots else "log")}

    run_options = dataclasses.replace(options, eval_every=None, eval_every_updates=eval_every,
                                      defer_evaluation=False)
    return lifecycle.run(backend, run_options, score=score, details=details,
                         describe_policy=job.describe_policy, total_updates=total,
                         started=job.started)


def simulated_settings(job: Job, stale_reads: str):
    """The job's settings with what its simulation emulated (``stale_reads``: how stale
    gradients were computed) and the real seconds it took so far."""
    simulation = job.simulation
    return dataclasses.replace(job.settings, simulation=SimulationSettings(
        staleness=simulation.staleness,
        compute=simulation.compute if simulation.draw_tau == "event" else None,
        update_seconds=simulation.update_seconds, stale_reads=stale_reads,
        real_seconds=time.time() - job.started, stragglers=simulation.stragglers,
        worker_speeds=None if simulation.worker_speeds is None
        else [float(speed) for speed in simulation.worker_speeds]))


def worker_batches(job: Job, n_samples: int):
    """Per worker: its rows in visiting order (all epochs) and its batch boundaries, exactly as
    the engine's workers draw them under the static split (``job.shuffle``: each epoch shuffled,
    or the shard in stored order)."""
    options = job.options
    orders, bounds = [], []
    for w, seed in enumerate(job.seeds()):
        shard = shard_rows(n_samples, options.workers, w)
        rng = np.random.default_rng(seed)
        orders.append(np.concatenate([epoch_order(shard, rng, job.shuffle)
                                      for _ in range(options.epochs)]))
        starts = np.concatenate([e * shard.size + np.arange(0, shard.size, options.batch_size)
                                 for e in range(options.epochs)])
        stops = np.minimum(starts + options.batch_size, (starts // shard.size + 1) * shard.size)
        bounds.append((starts, stops))
    return orders, bounds


def landing_schedule(job: Job, updates_per_worker: np.ndarray):
    """(worker, tau, simulated finish time in seconds) of every update, in landing order; the
    event schedule's compute times scaled by each worker's ``simulation.slowness``."""
    simulation = job.simulation
    rng = np.random.default_rng(np.random.SeedSequence([job.options.seed, EVENT_SCHEDULE_SEED]))
    if simulation.draw_tau == "event":
        workers_of, taus, times = event_schedule(updates_per_worker, simulation.compute, rng,
                                                slowness=simulation.slowness)
        return workers_of, taus, times * simulation.update_seconds
    workers_of = round_robin(updates_per_worker)
    draws = np.asarray(simulation.draw_tau(rng, workers_of.size), dtype=np.int64)
    taus = np.minimum(draws, np.arange(workers_of.size))
    times = np.arange(1, workers_of.size + 1) * (simulation.update_seconds / job.options.workers)
    return workers_of, taus, times
