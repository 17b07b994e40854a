"""The simulator front ends: a linear model (:class:`Simulator`) or a torch network
(:class:`NetworkSimulator`) trained by ``workers`` emulated workers on one core.  Each validates
its options and the data and describes the fit as a :class:`hogwild_mts.job.Job` with a
:class:`~hogwild_mts.job.Simulation`; :func:`hogwild_mts.backends.sim.run.fit` (linear) or
:func:`hogwild_mts.backends.sim.networks.fit` runs it through the same lifecycle and FitResult as
:class:`hogwild_mts.engines.linear.Engine` and :class:`hogwild_mts.engines.networks.TorchEngine`."""

from __future__ import annotations

import time

from hogwild_mts.backends.sim import networks as network_sim_backend
from hogwild_mts.backends.sim import run as sim_backend
from hogwild_mts.backends.sim.run import DEFAULT_EVALUATIONS
from hogwild_mts.backends.sim.simulator import (STALE_READS, STRAGGLERS_FORM, compute_sampler,
                                                staleness_source, worker_slowness)
from hogwild_mts.core.params import Checked, Choice, Flag, Integer, Option, Optional, Positive, Table, validate
from hogwild_mts.core.result import FitResult
from hogwild_mts.engines import options as shared
from hogwild_mts.engines import networks
from hogwild_mts.engines.linear import (DEFAULT_LR, ENGINE_OPTIONS, linear_settings,
                                        prepare_dataset, step_schedule)
from hogwild_mts.engines.networks import NETWORK_OPTIONS, TorchEngine
from hogwild_mts.job import Job, LinearProblem, Simulation, run_options
from hogwild_mts.models.linear import LinearModel


def _staleness_source(values) -> dict:
    """How the staleness is drawn (``draw_tau``: "event" or a sampler) and described; the
    ``compute`` distribution and the workers' ``slowness`` (None: alike) checked for the event
    schedule, which alone has workers of their own speeds."""
    draw_tau, description = staleness_source(values["staleness"], values["workers"])
    slowness = worker_slowness(values["workers"], values["stragglers"], values["worker_speeds"])
    if draw_tau == "event":
        compute_sampler(values["compute"])
    elif values["stragglers"] is not None or values["worker_speeds"] is not None:
        given = values["staleness"] if isinstance(values["staleness"], str) else description["source"]
        raise ValueError("stragglers and worker_speeds shape the event-driven schedule; with "
                         f"staleness {given!r} the workers take turns: use "
                         "staleness='event' (or a mixture histogram for staler updates)")
    return {"draw_tau": draw_tau, "staleness_description": description, "slowness": slowness}


def simulation_of(options, stale_reads: str, eval_every: int | None) -> Simulation:
    """How a simulator's validated ``options`` (its SCHEDULE_OPTIONS and what
    :func:`_staleness_source` derived) emulate the workers."""
    return Simulation(draw_tau=options.draw_tau, staleness=options.staleness_description,
                      compute=options.compute, slowness=options.slowness,
                      stragglers=options.stragglers, worker_speeds=options.worker_speeds,
                      update_seconds=options.update_seconds, stale_reads=stale_reads,
                      eval_every=eval_every)


# The options of the schedule of emulated workers, shared by both simulators (rule:
# _staleness_source; read by simulation_of).
SCHEDULE_OPTIONS = (
    Option("staleness", Checked("'event', 'poisson', 'geometric', a StalenessModel or a "
                                "histogram"), "event", "the schedule"),
    Option("compute", Checked("'constant', 'exponential', 'gamma:SHAPE' or 'lognormal:SIGMA'"),
           "exponential", "the schedule"),
    Option("stragglers", Optional(Checked(STRAGGLERS_FORM)), None, "the schedule (event staleness)"),
    Option("worker_speeds", Optional(Checked("a list of `workers` finite numbers > 0")), None,
           "the schedule (event staleness; rescaled to mean 1)"),
    Option("update_seconds", Positive(), 1e-6, "the schedule (mean seconds of one gradient)"))

# Simulator's options in validation order: name, constraint, default, where it goes.  Its
# eval_every counts updates, and it shows no progress bar by default (runs take milliseconds).
SIMULATOR_OPTIONS = Table(
    (shared.POLICY, shared.base_step(DEFAULT_LR), shared.WORKERS,
     ENGINE_OPTIONS["epochs"], ENGINE_OPTIONS["batch_size"], shared.SEED, shared.SHUFFLE,
     Option("eval_every", Optional(Integer(1)), None,
            f"run (updates between history rows; None: about {DEFAULT_EVALUATIONS} rows)"),
     Option("progress", Flag(), False, "run"), shared.MOMENTUM,
     ENGINE_OPTIONS["learning_rate"], ENGINE_OPTIONS["power_t"], *SCHEDULE_OPTIONS,
     Option("stale_reads", Choice(STALE_READS), "auto", "the simulation")),
    rules=(shared.named_policy(DEFAULT_LR), shared.worker_momentum, _staleness_source))
DEFAULTS = SIMULATOR_OPTIONS.defaults


class Simulator:
    """Hogwild! with ``workers`` emulated workers on one core: same models, policies, data split
    and :class:`~hogwild_mts.core.result.FitResult` as :class:`~hogwild_mts.engines.linear.Engine`.

    ``staleness``: ``"event"`` (event-driven schedule with ``compute`` times: ``constant``,
    ``exponential``, ``gamma:SHAPE`` or ``lognormal:SIGMA``, mean 1), ``"poisson"`` /
    ``"geometric"`` (mean m - 1), a StalenessModel, or a histogram of counts by tau.
    ``stragglers`` (``'SHARE:FACTOR'``, e.g. ``'0.1:10'``: the last round(SHARE * m) workers, at
    least one when SHARE > 0, FACTOR times slower) or ``worker_speeds`` (m relative speeds):
    heterogeneous workers in the event schedule, each compute time drawn from ``compute`` times
    the worker's slowness.  Speeds are rescaled to mean 1, so ``update_seconds`` stays the mean
    time of one gradient at the workers' mean speed and m workers land about m updates per
    ``update_seconds`` together (:func:`~hogwild_mts.backends.sim.simulator.worker_slowness`).
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
    ``shuffle=False``: each emulated worker visits its rows w, w+m, ... in stored order every
    epoch, as the engine's static split with ``shuffle=False``.
    Deterministic: the same arguments and seed give bit-identical results.
    Every option, its allowed values and default: SIMULATOR_OPTIONS (docs/api.md); the validated
    options are ``self.options``, and ``self.<option>`` reads them there.
    """

    def __init__(self, model="logreg", policy=DEFAULTS.policy, *, workers: int = DEFAULTS.workers,
                 epochs: int = DEFAULTS.epochs, batch_size: int = DEFAULTS.batch_size,
                 lr: float | None = DEFAULTS.lr, seed: int = DEFAULTS.seed,
                 shuffle: bool = DEFAULTS.shuffle, staleness=DEFAULTS.staleness,
                 compute: str = DEFAULTS.compute,
                 stragglers: str | None = DEFAULTS.stragglers, worker_speeds=DEFAULTS.worker_speeds,
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
                                           dtype="float64", momentum=self.momentum,
                                           shuffle=self.shuffle),
                  shuffle=self.shuffle, schedule=self.schedule,
                  simulation=simulation_of(self.options, self.stale_reads, self.eval_every))
        return sim_backend.fit(job)


def _simulated_processes(values) -> dict:
    """What TorchEngine's preparation reads of the process options it lacks: the static split
    (with one worker the same rows in the same order as the dynamic split), no checkpoints, no
    Ray, no evaluations by (real) seconds."""
    return {"split": "static", "start_method": None, "checkpoints": None, "ray_options": None,
            "eval_every": None}


# NetworkSimulator's options in validation order: TorchEngine's entries for the network, data,
# policy, update and evaluations (eval_every_updates; no seconds), then the schedule's.
NETWORK_SIMULATOR_OPTIONS = Table(
    (shared.POLICY, shared.base_step(networks.DEFAULT_LR), shared.WORKERS,
     *(NETWORK_OPTIONS[name] for name in ("epochs", "batch_size")), shared.SEED,
     NETWORK_OPTIONS["eval_every_updates"], shared.PROGRESS, shared.MOMENTUM,
     *(NETWORK_OPTIONS[name] for name in ("loss", "weight_decay", "dtype", "model_args",
                                          "model_kwargs")),
     *SCHEDULE_OPTIONS),
    rules=(shared.named_policy(networks.DEFAULT_LR), networks._batch_size,
           networks._model_arguments, _staleness_source, _simulated_processes,
           shared.worker_momentum))
NETWORK_DEFAULTS = NETWORK_SIMULATOR_OPTIONS.defaults


class NetworkSimulator(TorchEngine):
    """Hogwild! on a torch network with ``workers`` emulated workers in this thread: the
    network, data, policy, loss, momentum, weight decay, batches, evaluations and
    :class:`~hogwild_mts.core.result.FitResult` of :class:`~hogwild_mts.engines.networks.TorchEngine`
    (its checks and preparation), the schedule of :class:`Simulator` (``staleness``,
    ``compute``, ``update_seconds``).

    Exact delayed gradients: update t applies a gradient computed on the parameters after
    ``t - tau_t`` updates, by the real worker's update kernels (alpha(tau), the worker's private
    velocity, weight decay on the current parameters).  Batches: the static split (worker w
    owns rows w, w + m, ..., shuffled per epoch from its own seed); with ``workers=1`` this is
    TorchEngine's run with one worker, bit for bit (history losses and params).
    ``eval_every_updates``: updates between history rows (None: about
    :data:`hogwild_mts.engines.networks.DEFAULT_EVALUATIONS` rows); times are simulated seconds.
    Deterministic: the same arguments and seed give bit-identical results.  ``fit`` takes what
    TorchEngine's takes except ``resume`` (no checkpoints).  Costs and memory:
    :mod:`hogwild_mts.backends.sim.networks`, docs/deep_learning.md.  Every option:
    NETWORK_SIMULATOR_OPTIONS.
    """

    def __init__(self, model="mlp", policy=NETWORK_DEFAULTS.policy, *,
                 workers: int = NETWORK_DEFAULTS.workers, epochs: int = NETWORK_DEFAULTS.epochs,
                 batch_size: int | None = NETWORK_DEFAULTS.batch_size,
                 lr: float | None = NETWORK_DEFAULTS.lr, loss=NETWORK_DEFAULTS.loss,
                 momentum: float = NETWORK_DEFAULTS.momentum,
                 weight_decay: float = NETWORK_DEFAULTS.weight_decay,
                 seed: int = NETWORK_DEFAULTS.seed, dtype: str = NETWORK_DEFAULTS.dtype,
                 eval_every_updates: int | None = NETWORK_DEFAULTS.eval_every_updates,
                 progress: bool = NETWORK_DEFAULTS.progress,
                 model_args: tuple = NETWORK_DEFAULTS.model_args,
                 model_kwargs: dict | None = NETWORK_DEFAULTS.model_kwargs,
                 staleness=NETWORK_DEFAULTS.staleness, compute: str = NETWORK_DEFAULTS.compute,
                 stragglers: str | None = NETWORK_DEFAULTS.stragglers,
                 worker_speeds=NETWORK_DEFAULTS.worker_speeds,
                 update_seconds: float = NETWORK_DEFAULTS.update_seconds):
        self.options = validate(NETWORK_SIMULATOR_OPTIONS, NETWORK_SIMULATOR_OPTIONS.arguments(locals()))
        self._take_model(model)

    def _fit(self, dataset, started: float, init, init_params, resume) -> FitResult:
        if resume is not None:
            raise ValueError("the network simulator keeps no checkpoints to resume; start from a "
                             "model file or a result with init= or init_params=")
        problem, _, settings, eval_every_updates, template = self._prepare(
            dataset, init, init_params, None)
        job = Job(options=run_options(self.options, eval_every=None, defer_evaluation=False,
                                      eval_every_updates=eval_every_updates),
                  started=started, problem=problem, settings=settings, split=self.split,
                  simulation=simulation_of(self.options, network_sim_backend.STALE_READS,
                                           eval_every_updates))
        return self._finished(network_sim_backend.fit(job), template)
