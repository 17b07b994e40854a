"""The simulator front end: a linear model trained by ``workers`` emulated workers on one core.
It validates its options and the data and describes the fit as a :class:`hogwild_mts.job.Job`
with a :class:`~hogwild_mts.job.Simulation`; :func:`hogwild_mts.backends.sim.run.fit` runs it
through the same lifecycle and FitResult as :class:`hogwild_mts.engines.linear.Engine`."""

from __future__ import annotations

import time

from hogwild_mts.backends.sim import run as sim_backend
from hogwild_mts.backends.sim.run import DEFAULT_EVALUATIONS
from hogwild_mts.backends.sim.simulator import STALE_READS, compute_sampler, staleness_source
from hogwild_mts.core.params import Checked, Choice, Flag, Integer, Option, Optional, Positive, Table, validate
from hogwild_mts.core.result import FitResult
from hogwild_mts.engines import options as shared
from hogwild_mts.engines.linear import (DEFAULT_ALPHA, ENGINE_OPTIONS, linear_settings,
                                        prepare_dataset, step_schedule)
from hogwild_mts.job import Job, LinearProblem, Simulation, run_options
from hogwild_mts.models.linear import LinearModel



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
     ENGINE_OPTIONS["learning_rate"], ENGINE_OPTIONS["power_t"],
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
    ``eval_every``: updates between history rows (default: about DEFAULT_EVALUATIONS rows of
    :mod:`hogwild_mts.backends.sim.run`).
    ``update_seconds``: simulated mean compute time of one gradient (seconds).
    ``stale_reads``: ``snapshots``, ``log`` (undo log) or ``auto`` (whichever touches fewer
    numbers per update: a snapshot copies all parameters, a read rolls back tau logged updates).
    ``momentum`` in [0, 1): each emulated worker keeps a private velocity exactly as the
    engine's workers (``v = momentum * v + g``, ``theta -= alpha(tau) * v`` on the coordinates a
    batch stores, the L2 penalty in g); the policy is bound with it.  ``learning_rate`` and
    ``power_t``: the engine's step schedule, with t the simulated update's landing number; the
    model's L1 penalty is applied as by one engine worker.
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
                 progress: bool = DEFAULTS.progress, learning_rate: str = DEFAULTS.learning_rate,
                 power_t: float = DEFAULTS.power_t):
        self.model = model if isinstance(model, LinearModel) else LinearModel(model)
        self.options = validate(SIMULATOR_OPTIONS, SIMULATOR_OPTIONS.arguments(locals()))
        self.schedule = step_schedule(self.model, self.learning_rate, self.power_t)

    __getattr__ = shared.option_of

    def fit(self, X, y=None) -> FitResult:
        """Train on ``X`` (dense array, scipy sparse matrix or Dataset) and labels ``y``.

        Raises DivergenceError when a margin becomes NaN/inf, ValueError when the stale-read ring
        would exceed its limit (lower the staleness or the batch size).
        """
        started = time.time()
        dataset = prepare_dataset(self.model, X, y, self.workers, self.batch_size)
        model = self.model
        job = Job(options=run_options(self.options, eval_every=None, eval_every_updates=None,
                                      defer_evaluation=False),
                  problem=LinearProblem(model, "float64", dataset), started=started,
                  settings=linear_settings(model, self.schedule, epochs=self.epochs,
                                           batch_size=self.batch_size, seed=self.seed,
                                           dtype="float64", momentum=self.momentum),
                  schedule=self.schedule,
                  simulation=Simulation(draw_tau=self.draw_tau,
                                        staleness=self.staleness_description,
                                        compute=self.compute, update_seconds=self.update_seconds,
                                        stale_reads=self.stale_reads, eval_every=self.eval_every))
        return sim_backend.fit(job)
