"""One fit, described for any backend: a :class:`Job`.

An engine validates its arguments and the data, then builds a Job: the run options, the problem
(a :class:`LinearProblem` or a :class:`NetworkProblem`, each able to score a parameter vector),
the row split and process options, the checkpoint side (where, when, how to write one, the state
a resumed run starts from) and the Ray options.  A backend's ``fit(job) -> FitResult``
(:mod:`hogwild_mts.backends.shm.run`, :mod:`hogwild_mts.backends.ray.run`) is the one place
where that backend's run is assembled; no backend reads an engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hogwild_mts.core.lifecycle import RunOptions
from hogwild_mts.core.result import OMIT_NONE, L1State, RunState, Settings
from hogwild_mts.kernels import linear as kernels
from hogwild_mts.kernels.flat import classifies, loss_value, loss_values_per_row
from hogwild_mts.kernels.split import total_updates
from hogwild_mts.policies.refit import describe_fitted

EVAL_BATCH = 1024  # test rows per forward pass of a network's evaluation
LOSS_NAMES = {"cross_entropy": "cross-entropy", "mse": "mean squared error"}


def run_options(options, **changes) -> RunOptions:
    """The run options every backend reads, taken by name from an engine's validated
    ``options`` (:func:`hogwild_mts.core.params.validate`), with ``changes`` for those the
    engine settles otherwise."""
    return RunOptions(**{field.name: changes[field.name] if field.name in changes else options[field.name]
                         for field in dataclasses.fields(RunOptions)})


@dataclass(frozen=True, eq=False)
class ShmSettings(Settings):
    """How a shared-memory run split its rows and started its workers ("thread": one worker)."""

    split: str
    start_method: str


@dataclass(frozen=True, eq=False)
class RaySettings(Settings):
    """A Ray run: ``local_steps`` mini-batches of ``local_step`` per push; the workers lost (and,
    linear runs, re-created) and each worker's pushes."""

    local_steps: int
    local_step: float
    lost_workers: list
    restarted_workers: list | None = field(default=None, metadata=OMIT_NONE)
    worker_pushes: list | None = field(default=None, metadata=OMIT_NONE)
    backend: str = "ray"
    update: str = "push"


@dataclass(frozen=True, eq=False)
class DataFileSettings(Settings):
    """A Ray run on a data file the workers read: its path, its rows, the labels found there (a
    classifier's, sorted; None for a regressor)."""

    data_path: str
    data_rows: int
    classes: list | None


@dataclass(frozen=True, eq=False)
class SimulationSettings(Settings):
    """A simulated run: the staleness law, the compute times (event-driven staleness), the
    simulated seconds per update, how stale reads were kept, and the real seconds it took."""

    staleness: dict
    compute: str | None
    update_seconds: float
    stale_reads: str
    real_seconds: float
    simulated: bool = True
    stragglers: str | None = field(default=None, metadata=OMIT_NONE)
    worker_speeds: list | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, eq=False)
class LinearSettings(Settings):
    """The result settings of a linear fit.  ``loss`` and ``accuracy`` say what the history's
    columns are (the training objective on the training rows, or on a sample of a data file)."""

    epochs: int
    batch_size: int
    seed: int
    dtype: str
    l2: float
    fit_intercept: bool
    stamp: bool | None = field(default=None, metadata=OMIT_NONE)  # shared memory
    l1: float | None = field(default=None, metadata=OMIT_NONE)  # None: no L1 penalty
    epsilon: float | None = field(default=None, metadata=OMIT_NONE)  # huber, epsilon-insensitive
    intercept_decay: float | None = field(default=None, metadata=OMIT_NONE)  # None: 1, plain steps
    schedule: dict | None = field(default=None, metadata=OMIT_NONE)  # None: constant steps
    shuffle: bool | None = field(default=None, metadata=OMIT_NONE)  # False: stored order; None: shuffled
    momentum: float | None = field(default=None, metadata=OMIT_NONE)  # shared memory, simulator
    shm: ShmSettings | None = field(default=None, metadata=OMIT_NONE)
    ray: RaySettings | None = field(default=None, metadata=OMIT_NONE)
    simulation: SimulationSettings | None = field(default=None, metadata=OMIT_NONE)
    loss: str | None = field(default=None, metadata=OMIT_NONE)
    accuracy: str | None = field(default=None, metadata=OMIT_NONE)
    data_file: DataFileSettings | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, eq=False)
class NetworkSettings(Settings):
    """The result settings of a network fit: ``parameters`` and ``buffers`` count the values of
    the result's ``params`` (parameters first); ``evaluated_on`` says which rows the loss and
    accuracy are measured on ("test", or "train" when arrays came without a test set)."""

    epochs: int
    batch_size: int
    seed: int
    dtype: str
    parameters: int
    buffers: int
    input_shape: list
    outputs: int
    classes: int | None = field(metadata=OMIT_NONE)  # classification only
    class_names: list | None = field(metadata=OMIT_NONE)
    momentum: float
    weight_decay: float
    evaluated_on: str
    loss: str
    accuracy: str | None
    shm: ShmSettings | None = field(default=None, metadata=OMIT_NONE)
    ray: RaySettings | None = field(default=None, metadata=OMIT_NONE)
    simulation: SimulationSettings | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class Simulation:
    """How the simulator emulates the workers (see :class:`hogwild_mts.engines.simulated.Simulator`).

    Parameters
    ----------
    draw_tau : "event" (an event-driven schedule) or a sampler ``(rng, size) -> taus``.
    staleness : what the staleness law is, as results describe it.
    compute : the compute-time law of the event-driven schedule.
    update_seconds : simulated mean seconds of one gradient.
    stale_reads : "snapshots", "log" or "auto" (linear models); "held gradients" (networks).
    eval_every : updates between history rows, or None for about 50 rows (the sim backend's
        ``DEFAULT_EVALUATIONS``).
    slowness : the event schedule's per-worker compute-time multipliers, or None (alike workers;
        :func:`hogwild_mts.backends.sim.simulator.worker_slowness`).
    stragglers, worker_speeds : the options that gave ``slowness``, as results describe them.
    """

    draw_tau: object
    staleness: dict
    compute: str
    update_seconds: float
    stale_reads: str
    eval_every: int | None
    slowness: np.ndarray | None = None
    stragglers: str | None = None
    worker_speeds: list | None = None


@dataclass(frozen=True)
class StepSchedule:
    """How the step of update t (the global update number, 0-based) follows t: the policy's
    ``alpha(tau)`` times ``(t0 / (t0 + t))^power`` (:func:`hogwild_mts.kernels.linear.scheduled_step`).

    ``learning_rate``: scikit-learn's name (``constant``: power 0; ``invscaling``: t0 1, power
    ``power_t``; ``optimal``: t0 ``optimal_init``, power 1); ``base_step``: for ``optimal``, the
    step at t = 0 (``1 / (penalty * optimal_init)``), which replaces the policy's own base: the
    policy then gives only the staleness shape ``alpha(tau) / alpha(0)`` (:meth:`shaped`); None
    keeps the policy's steps as they are.
    """

    learning_rate: str = "constant"
    power_t: float = 0.5
    t0: float = 1.0
    power: float = 0.0
    base_step: float | None = None

    def shaped(self, table: np.ndarray) -> np.ndarray:
        """The alpha(tau) table the kernels step with: ``table`` itself, or (``base_step``
        given) ``base_step * table / table[0]``; ValueError when table[0] is not > 0 then."""
        if self.base_step is None:
            return table
        if not table[0] > 0.0:
            raise ValueError(f"learning_rate='optimal' scales the policy's steps by its alpha(0), "
                             f"which is {float(table[0])!r}; it must be > 0")
        return np.ascontiguousarray(table * (self.base_step / table[0]), dtype=table.dtype)

    def describe(self) -> dict | None:
        """The schedule as results record it (None for constant steps)."""
        if self.learning_rate == "constant":
            return None
        return {"learning_rate": self.learning_rate, "power_t": self.power_t, "t0": self.t0,
                "power": self.power, "base_step": self.base_step}


CONSTANT_STEPS = StepSchedule()


@dataclass(frozen=True)
class KernelShape:
    """What the linear kernels need to know of a problem besides its arrays (``terms``: the
    model's :class:`hogwild_mts.kernels.linear.Terms`)."""

    n_features: int
    dense: bool
    fit_intercept: bool
    terms: kernels.Terms


@dataclass
class LinearProblem:
    """A linear model on rows this process holds (``dataset``: a
    :class:`hogwild_mts.data.tabular.Dataset` whose labels are in the model's domain) or, with
    Ray only, on a data file each worker reads its part of (``path``; ``dataset`` None).

    Parameters
    ----------
    model : LinearModel
    dtype : "float64" or "float32", of the trained parameters.
    sample_weight : one weight per row, or empty for unit weights.
    start_params : the flat vector to start from (weights, then the intercept), or None (zeros).
    start_average : averaged SGD continued from an earlier run (``Job.start_update`` > 0): the
        averaged parameters of the iterates before, or None.
    start_l1 : the cumulative L1 penalty (a :class:`hogwild_mts.core.result.L1State`) of the
        earlier run this one continues (shared memory, ``model.l1`` > 0), or None (zeros).
    check_start : ``path`` only: ``n_params -> start_params or None``, once the file's columns are known.
    """

    model: object
    dtype: str
    dataset: object = None
    sample_weight: np.ndarray = field(default_factory=lambda: kernels.UNIT_WEIGHTS)
    start_params: np.ndarray | None = None
    start_average: np.ndarray | None = None
    start_l1: L1State | None = None
    path: str | None = None
    check_start: Callable | None = None

    @property
    def n_params(self) -> int:
        return self.model.n_params(self.dataset.n_features)

    @property
    def shape(self) -> KernelShape:
        """The kernels' view of the model on this data set."""
        model = self.model
        return KernelShape(self.dataset.n_features, self.dataset.dense, model.fit_intercept,
                           kernels.model_terms(model))

    def arrays(self) -> dict:
        """The data set's arrays by their names in the kernels (``sample_weight`` empty for unit
        weights), as the caller gave them."""
        dataset = self.dataset
        return {"values": dataset.values, "indices": dataset.indices, "indptr": dataset.indptr,
                "labels": dataset.y, "sample_weight": self.sample_weight}

    def rows(self) -> kernels.Rows:
        """The data set as the kernels take it: :meth:`arrays` made contiguous (the caller's own
        arrays where they are already) and new L2 weights ``feature_scale`` (``n / (rows storing
        j)``; zeros without a penalty, when the kernels do not read them)."""
        feature_scale = np.zeros(self.dataset.n_features)
        if self.model.l2 > 0.0:
            counts = self.dataset.feature_counts()
            np.divide(self.dataset.n_samples, counts, out=feature_scale, where=counts > 0)
        arrays = {name: np.ascontiguousarray(array) for name, array in self.arrays().items()}
        return kernels.Rows(**arrays, feature_scale=feature_scale)

    def score(self, rows: kernels.Rows, shape, params: np.ndarray):
        """(training objective, accuracy or None for a regressor) of ``params``.

        Parameters
        ----------
        rows : the rows to score on (weighted by ``rows.sample_weight`` when it is not empty).
        shape : anything with ``n_features, dense, fit_intercept, terms``.
        params : the flat parameter vector (weights, then the intercept), any float dtype.
        """
        loss, accuracy = objective(rows, shape, params.astype(np.float64, copy=False))
        return loss, accuracy if self.model.classifier else None

    def result_fields(self, params: np.ndarray, n_features: int, data_name: str,
                      averaged: np.ndarray | None = None) -> dict:
        """The FitResult fields of a final parameter vector: weights, intercept, model and data;
        with ``averaged`` (averaged SGD) those are the averaged parameters and ``params`` the
        last iterate (``last_params``, ``last_intercept``)."""
        params = params.astype(np.float64)
        intercept = float(params[n_features]) if self.model.fit_intercept else 0.0
        fields = {"params": params[:n_features], "intercept": intercept,
                  "model": self.model.name, "data": data_name}
        if averaged is not None:
            fields.update(params=averaged[:n_features],
                          intercept=float(averaged[n_features]) if self.model.fit_intercept else 0.0,
                          last_params=params[:n_features], last_intercept=intercept)
        return fields


def objective(rows: kernels.Rows, shape, params: np.ndarray):
    """:func:`hogwild_mts.kernels.linear.objective` of ``params`` on ``rows``; ``shape`` has
    ``n_features, dense, fit_intercept, terms``."""
    return kernels.objective(rows, shape.dense, params, shape.n_features, shape.fit_intercept,
                             shape.terms)


@dataclass
class NetworkProblem:
    """A torch network on an :class:`hogwild_mts.data.images.ArrayDataset`.

    Parameters
    ----------
    name : how results name the network (a bundled name or the factory's name).
    build : what a worker builds the network from: a bundled name or a serialized factory.
    network : the parent's network, initialised (its weights and buffers are the start).
    dataset : the training rows, and the rows evaluations score.
    loss : "cross_entropy", "mse" or a :class:`hogwild_mts.kernels.flat.LossFunction`.
    dtype : "float32" or "float64", of the parameters.
    weight_decay : torch.optim.SGD's, >= 0.
    """

    name: str
    build: object
    network: object
    dataset: object
    loss: str
    dtype: str
    weight_decay: float = 0.0

    def evaluate(self, network) -> tuple[float, float | None]:
        """(mean loss, accuracy or None for mse) of ``network`` on the evaluated rows, on one
        thread, in eval mode (dropout off, batch norm on its running statistics)."""
        import torch

        dataset, classification = self.dataset, classifies(self.loss)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        network.eval()
        try:
            total_loss, correct = 0.0, 0
            dtype = getattr(torch, self.dtype)
            with torch.no_grad():
                for start in range(0, dataset.n_test, EVAL_BATCH):
                    inputs = torch.from_numpy(dataset.test_inputs[start:start + EVAL_BATCH]).to(dtype)
                    targets = torch.from_numpy(dataset.test_targets[start:start + EVAL_BATCH])
                    outputs = network(inputs)
                    total_loss += float(loss_value(self.loss, outputs, targets, reduction="sum"))
                    if classification:
                        correct += int((outputs.argmax(dim=1) == targets).sum())
        finally:
            torch.set_num_threads(threads)
        if classification:
            return total_loss / dataset.n_test, correct / dataset.n_test
        return total_loss / (dataset.n_test * loss_values_per_row(self.loss, dataset.outputs)), None


@dataclass
class Job:
    """One fit for a backend to run.

    Parameters
    ----------
    options : the validated run options (policy, workers, epochs, batch size, seed, evaluation
        schedule, progress, momentum).
    problem : a LinearProblem or a NetworkProblem.
    started : ``time.time()`` when the fit began (the result's wall time counts from it).
    settings : the result settings every backend reports for this problem; a backend fills in
        its own part (``dataclasses.replace``).
    split : "dynamic" or "static" (:mod:`hogwild_mts.kernels.split`).
    shuffle : each epoch visits the rows in a shuffled order (True), or in their stored order
        (False: :func:`hogwild_mts.kernels.split.epoch_order`); linear problems (the torch
        engines always shuffle).
    start_method : how worker processes start (shared memory): fork, forkserver or spawn.
    stamp : False only for the unstamped baseline of the stamping benchmark (shared memory, linear).
    checkpoints : where and when shared-memory checkpoints are written, or None.
    write_checkpoint : ``RunState -> None``, writes one (with ``checkpoints``).
    resumed : the state a resumed run starts from, or None.
    ray : the Ray options, or None for the shared-memory backend.
    ray_checkpoint : ``(params, version, histogram) -> None``, called with the server's state
        every ``ray.checkpoint_every`` seconds and after the run, or None.
    simulation : how the simulator emulates the workers (its backend only), or None.
    schedule : the step schedule of a linear problem (shared memory and the simulator).
    average_start : averaged SGD of a linear problem (shared memory): the first averaged update
        (0-based global update number), or None without averaging.
    start_update : the global update number of the run's first update (shared memory): the step
        schedule and the average continue an earlier run that applied that many updates; 0 for a
        run of its own.
    """

    options: RunOptions
    problem: LinearProblem | NetworkProblem
    started: float
    settings: LinearSettings | NetworkSettings
    split: str = "dynamic"
    shuffle: bool = True
    start_method: str = "fork"
    stamp: bool = True
    checkpoints: object = None
    write_checkpoint: Callable[[RunState], None] | None = None
    resumed: RunState | None = None
    ray: object = None
    ray_checkpoint: Callable | None = None
    simulation: Simulation | None = None
    schedule: StepSchedule = CONSTANT_STEPS
    average_start: int | None = None
    start_update: int = 0

    @property
    def workers(self) -> int:
        return self.options.workers

    @property
    def resumed_updates(self) -> int:
        """Updates the resumed run had applied before this fit (0 for a new run)."""
        return 0 if self.resumed is None else self.resumed.updates

    def total_updates(self, n_rows: int) -> int:
        """Updates the whole run applies on ``n_rows`` training rows (resumed updates included)."""
        options = self.options
        return total_updates(n_rows, options.workers, options.epochs, options.batch_size, self.split)

    def describe_policy(self, histogram: np.ndarray) -> dict:
        """The policy as the workers ended the run, refitted on its final ``histogram``."""
        options = self.options
        return describe_fitted(options.policy, options.workers, options.momentum, histogram)

    def seeds(self) -> list:
        """One SeedSequence per worker, spawned from the run's seed."""
        return np.random.SeedSequence(self.options.seed).spawn(self.options.workers)
