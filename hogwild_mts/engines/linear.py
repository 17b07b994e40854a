"""The linear-model engine: validate the options and the data, describe the fit as a
:class:`hogwild_mts.job.Job`, and hand it to the backend's ``fit(job)``."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import time

import numpy as np

from hogwild_mts.backends.ray import run as ray_backend
from hogwild_mts.backends.shm import run as shm_backend
from hogwild_mts.checkpoint import (check_resume, check_unfinished, prepare_directory,
                                    read_checkpoint, rows_digest, run_settings, write_checkpoint)
from hogwild_mts.core.options import check_finite_vector
from hogwild_mts.core.params import (Checked, Choice, Integer, NonNegative, Option, Optional, Positive,
                                     Table, validate)
from hogwild_mts.core.result import (DivergenceError, FitResult, L1State, RunState, WorkerError,
                                     warn_if_bad)
from hogwild_mts.data.tabular import Dataset, as_dataset
from hogwild_mts.engines import options as shared
from hogwild_mts.job import Job, LinearProblem, LinearSettings, StepSchedule, run_options
from hogwild_mts.kernels.split import total_updates
from hogwild_mts.models.linear import LinearModel, loss_derivative

__all__ = ["Engine", "FitResult", "WorkerError", "DivergenceError", "prepare_dataset"]

PARAM_DTYPES = ("float64", "float32")
DEFAULT_LR = 0.5  # base step of a named policy (the Simulator's and the command line's too)
LEARNING_RATES = ("constant", "optimal", "invscaling")  # scikit-learn's names


def step_schedule(model: LinearModel, learning_rate: str, power_t: float,
                  penalty: float | None = None) -> StepSchedule:
    """The :class:`~hogwild_mts.job.StepSchedule` of scikit-learn's ``learning_rate`` for
    ``model``: the step of update t (0-based, the global update number) is the policy's
    ``alpha(tau)`` times ``(t0 / (t0 + t))^power``.

    * ``constant``: power 0, the policy's steps as they are.
    * ``invscaling``: t0 1, power ``power_t``: ``alpha(tau) / (t + 1)^power_t`` (scikit-learn's
      ``eta0 / t^power_t`` with t counted from 1; the policy's base step is ``eta0``).
    * ``optimal``: scikit-learn's ``eta = 1 / (penalty (optimal_init + t))`` (t from 0 here, its
      ``t - 1``), ``penalty`` the given one or else the model's ``l1 + l2`` (> 0; scikit-learn's
      ``alpha``, which sets the steps even with ``penalty=None``) and its heuristic ``typw = sqrt(1 / sqrt(penalty))``,
      ``eta0 = typw / max(1, dloss(-typw, 1))``, ``optimal_init = 1 / (eta0 penalty)``.  That is
      the base step ``1 / (penalty optimal_init)`` times ``optimal_init / (optimal_init + t)``.
      The base step replaces the policy's own (its ``lr`` is ignored): the policy supplies
      only the staleness shape ``alpha(tau) / alpha(0)``.

    With one worker tau is always 0, so the steps are exactly scikit-learn's.  ValueError for
    ``optimal`` without a penalty."""
    if learning_rate == "constant":
        return StepSchedule("constant", power_t)
    if learning_rate == "invscaling":
        return StepSchedule("invscaling", power_t, t0=1.0, power=power_t)
    if penalty is None:
        penalty = model.penalty
    if not penalty > 0.0:
        raise ValueError(f"learning_rate='optimal' needs a penalty: its steps are 1 / (penalty "
                         f"(optimal_init + t)), but the model's l1 + l2 is {penalty!r}; give l2 or "
                         "l1 > 0 (or optimal_alpha > 0), or choose learning_rate='constant' or "
                         "'invscaling'")
    typical_weight = math.sqrt(1.0 / math.sqrt(penalty))
    initial_step = typical_weight / max(1.0, loss_derivative(model.loss_id, -typical_weight, 1.0,
                                                             model.epsilon))
    optimal_init = 1.0 / (initial_step * penalty)
    return StepSchedule("optimal", power_t, t0=optimal_init, power=1.0,
                        base_step=1.0 / (penalty * optimal_init))


def average_start(average) -> int | None:
    """The first averaged update (0-based) of scikit-learn's ``average``: False or 0: None (no
    averaging); True: 0; an int n >= 1: n - 1 (averaging starts once n updates are applied,
    counting the one being averaged).  ValueError naming anything else."""
    if isinstance(average, (bool, np.bool_)):
        return 0 if average else None
    if isinstance(average, (int, np.integer)) and average >= 0:
        return int(average) - 1 if average else None
    raise ValueError(f"average must be False, True or an int >= 0 (start averaging after that "
                     f"many updates), got {average!r}")


def _shm_only(values) -> dict:
    """The step schedule and averaging run on the shared-memory backend (the schedule also on
    the simulator); averaging is not checkpointed."""
    if values["ray_options"] is not None and values["learning_rate"] != "constant":
        raise ValueError(f"learning_rate={values['learning_rate']!r} applies to backend='shm'; "
                         "backend='ray' takes constant steps (learning_rate='constant')")
    start = average_start(values["average"])
    if start is not None and values["ray_options"] is not None:
        raise ValueError(f"average={values['average']!r} applies to backend='shm'; backend='ray' "
                         "keeps no averaged parameters (average=False)")
    if start is not None and values["checkpoints"] is not None:
        raise ValueError(f"average={values['average']!r} cannot be checkpointed (checkpoints do "
                         "not store the averaged parameters); train without checkpoint_dir")
    for name, unset in (("start_update", 0), ("optimal_alpha", None)):
        if values[name] != unset and values["checkpoints"] is not None:
            raise ValueError(f"{name}={values[name]!r} cannot be checkpointed (checkpoints do not "
                             f"record it); train without checkpoint_dir, or with {name}={unset!r}")
    return {"average_start": start}


def _ray_takes_plain_steps(values) -> dict:
    """Ray workers take plain SGD steps between pushes: no momentum."""
    if values["ray_options"] is not None and values["momentum"]:
        raise ValueError(f"momentum={values['momentum']} applies to backend='shm'; backend='ray' "
                         f"workers take plain SGD steps between pushes")
    return {}


# Engine's options in validation order: name, constraint, default, where it goes.
ENGINE_OPTIONS = Table(
    (shared.POLICY, shared.base_step(DEFAULT_LR), shared.WORKERS,
     Option("epochs", Integer(1), 10, "run"), Option("batch_size", Integer(1), 1, "run"),
     shared.SEED, shared.SHUFFLE, Option("eval_every", Optional(Positive()), 0.5, "run"),
     shared.EVAL_EVERY_UPDATES, shared.PROGRESS, shared.DEFER_EVALUATION, shared.MOMENTUM,
     Option("dtype", Choice(PARAM_DTYPES), "float64", "the model"),
     Option("learning_rate", Choice(LEARNING_RATES), "constant", "the step schedule"),
     Option("power_t", NonNegative(), 0.5, "the step schedule (invscaling's exponent)"),
     Option("average", Checked("False, True or an int >= 0"), False,
            "averaged SGD (True: from the first update; n: from update n)"),
     Option("optimal_alpha", Optional(Positive()), None,
            "the step schedule ('optimal': the regularisation strength its steps follow; None: "
            "the model's l1 + l2)"),
     Option("start_update", Integer(0), 0,
            "the step schedule and the average (the global update number of the run's first "
            "update: they continue a run of that many updates)"),
     *shared.PROCESS_OPTIONS),
    rules=(shared.named_policy(DEFAULT_LR), shared.evaluation_schedule,
           shared.process_options, shared.worker_momentum, _ray_takes_plain_steps, _shm_only))
DEFAULTS = ENGINE_OPTIONS.defaults


class Engine:
    """Asynchronous lock-free SGD of a linear model with ``workers`` processes.

    ``model``: a loss name (scikit-learn's, or ``logreg``, ``svm``, ``lsq``) or a
    :class:`hogwild_mts.models.linear.LinearModel`.
    ``policy``: a name, a policy object or a function of tau; ``lr`` is the base step for a
    named policy.  ``epochs`` full passes over the data in total.  ``split="dynamic"`` shuffles
    all rows every epoch (generator seeded from ``seed``) and workers claim runs of batches from
    one shared cursor, so they all end together; ``"static"`` gives worker w the rows w, w+m,
    w+2m, ..., shuffled per epoch with its own seed (see :mod:`hogwild_mts.backends.shm.worker`).
    ``shuffle=False`` (scikit-learn's) visits the rows in their stored order every epoch instead:
    the dynamic split's cursor walks rows 0 .. n-1, a static worker w its rows w, w+m, ... in
    that order; ``seed`` then does not change the order (both backends).
    ``workers=1`` is deterministic and the same under both splits: the same seed gives
    bit-identical parameters; it runs the same worker loop on a thread of the calling process
    (the numba loop releases the GIL), so it pays no process start-up.  ``start_method``:
    ``fork`` (default where available: workers start in milliseconds and read the data set in
    this process's memory), ``forkserver`` or ``spawn`` (the data set is copied into the shared
    block once).  The loss is evaluated
    every ``eval_every`` seconds, or every ``eval_every_updates`` updates when that is given;
    ``defer_evaluation`` only copies the parameters during the run and scores the copies after
    it, so frequent evaluations take no core from the workers.
    ``backend="ray"`` trains with a parameter-server actor and ``workers`` worker actors on
    the Ray instance this process is connected to, the cluster at ``ray_address``, or a new
    local one; workers push every ``local_steps`` mini-batches, and ``checkpoint(engine, params,
    version, histogram)`` is called with the server's state every ``checkpoint_every`` seconds
    and after the run (docs/distributed.md; ``hogwild_mts.backends.ray.checkpoint``); a dead
    worker actor is re-created up to ``max_worker_restarts`` times, then the run goes on
    without it (``on_lost_worker="stop"``: stops); one that Ray cannot place on a node within
    ``placement_timeout`` seconds is lost the same way.  ``fit(PATH)`` with Ray: each worker actor reads its own part of the data file.
    ``checkpoint_dir`` keeps the run's latest checkpoint there (both backends), every
    ``checkpoint_every`` seconds and/or (shared memory) every ``checkpoint_every_updates``
    updates, and after the run; ``fit(..., resume=DIR)`` continues a run from one
    (:mod:`hogwild_mts.checkpoint`: what is stored, and when a resume is exact).
    :meth:`job` describes a fit without running it (the benchmarks run its unstamped variant,
    classic Hogwild! without the counter, on the shared-memory backend).  ``momentum`` in [0, 1): each worker keeps a
    private velocity, as torch.optim.SGD (dampening 0) on the coordinates a batch stores (lazy
    on sparse data; exactly torch's on dense data; see kernels.linear.sgd_kernel); the L2 penalty
    ``model.l2`` is the weight decay and enters the velocity like torch's ``weight_decay``.
    ``learning_rate`` (scikit-learn's ``constant``, ``invscaling`` with ``power_t``, or
    ``optimal``) multiplies the policy's steps by a function of the global update number, and
    for ``optimal`` replaces the policy's base step (:func:`step_schedule`); the schedule needs
    the shared-memory backend.  ``average`` (False, True or n: from update n, as scikit-learn's):
    averaged SGD; the result's ``params`` and ``intercept`` are the averaged ones and
    ``last_params``/``last_intercept`` the last iterate (the history and ``final_loss`` score
    the last iterate); shared memory only, not checkpointed.  ``start_update=t``: the run
    continues an earlier run of t updates (as scikit-learn's epochs continue each other): its
    schedule's update numbers start at t, and its average goes on from ``fit(...,
    init_average=...)`` (the earlier run's averaged parameters).  ``optimal_alpha``: the
    regularisation strength of ``optimal``'s steps when it is not the model's penalty
    (scikit-learn's ``alpha`` with ``penalty=None``).  The model's L1 penalty
    (``LinearModel(l1=...)``) is scikit-learn's cumulative penalty (kernels.linear); shared
    memory only, not checkpointed; the result's ``l1_state`` is its state at the end, which
    ``fit(..., init_l1=...)`` continues.  ``LinearModel(intercept_decay=...)`` multiplies every
    step of the intercept (scikit-learn's 0.01 on sparse data); not checkpointed either.
    Every option, its allowed values and default: ENGINE_OPTIONS (docs/api.md); the validated
    options are ``self.options``, and ``self.<option>`` reads them there.
    """

    def __init__(self, model="logreg", policy=DEFAULTS.policy, *, workers: int = DEFAULTS.workers,
                 epochs: int = DEFAULTS.epochs, batch_size: int = DEFAULTS.batch_size,
                 lr: float | None = DEFAULTS.lr, seed: int = DEFAULTS.seed,
                 shuffle: bool = DEFAULTS.shuffle,
                 dtype: str = DEFAULTS.dtype, eval_every: float = DEFAULTS.eval_every,
                 eval_every_updates: int | None = DEFAULTS.eval_every_updates,
                 progress: bool = DEFAULTS.progress,
                 defer_evaluation: bool = DEFAULTS.defer_evaluation,
                 start_method: str | None = DEFAULTS.start_method, split: str = DEFAULTS.split,
                 backend: str = DEFAULTS.backend, ray_address: str | None = DEFAULTS.ray_address,
                 local_steps: int = DEFAULTS.local_steps, checkpoint=DEFAULTS.checkpoint,
                 checkpoint_every: float | None = DEFAULTS.checkpoint_every,
                 checkpoint_dir=DEFAULTS.checkpoint_dir,
                 checkpoint_every_updates: int | None = DEFAULTS.checkpoint_every_updates,
                 momentum: float = DEFAULTS.momentum,
                 max_worker_restarts: int = DEFAULTS.max_worker_restarts,
                 placement_timeout: float = DEFAULTS.placement_timeout,
                 on_lost_worker: str = DEFAULTS.on_lost_worker,
                 learning_rate: str = DEFAULTS.learning_rate, power_t: float = DEFAULTS.power_t,
                 average=DEFAULTS.average, optimal_alpha: float | None = DEFAULTS.optimal_alpha,
                 start_update: int = DEFAULTS.start_update):
        self.model = model if isinstance(model, LinearModel) else LinearModel(model)
        self.options = validate(ENGINE_OPTIONS, ENGINE_OPTIONS.arguments(locals()))
        self.schedule = step_schedule(self.model, self.learning_rate, self.power_t,
                                      self.optimal_alpha)
        check_model_on_backend(self.model, self.ray_options is not None, self.checkpoints is not None)

    __getattr__ = shared.option_of

    def _job(self, problem: LinearProblem, started: float, run: "_CheckpointedRun | None") -> Job:
        """The Job of a fit of ``problem`` (``run``: its checkpoint side, None for a data file)."""
        model = self.model
        ray_checkpoint = None
        if self.ray_options is not None and self.ray_options.checkpoint is not None:
            ray_checkpoint = functools.partial(self.ray_options.checkpoint, self)
        return Job(options=run_options(self.options), problem=problem, started=started,
                   settings=linear_settings(model, self.schedule, epochs=self.epochs,
                                            batch_size=self.batch_size, seed=self.seed,
                                            dtype=self.dtype, shuffle=self.shuffle),
                   split=self.split, shuffle=self.shuffle, start_method=self.start_method,
                   schedule=self.schedule, average_start=self.average_start,
                   start_update=self.start_update, checkpoints=self.checkpoints,
                   write_checkpoint=None if self.checkpoints is None else run.write,
                   resumed=None if run is None else run.resumed,
                   ray=self.ray_options, ray_checkpoint=ray_checkpoint)

    # ------------------------------------------------------------------ run
    def fit(self, X, y=None, *, sample_weight=None, init_params=None, init_average=None,
            init_l1=None, resume=None) -> FitResult:
        """Train on ``X`` (dense array, scipy sparse matrix or Dataset) and labels ``y``; with
        ``backend="ray"``, ``X`` may be the path of a data file (.npz or svmlight, labels
        inside) that each worker actor reads its own part of (docs/distributed.md).

        ``sample_weight``: one finite weight >= 0 per row (not all zero) multiplying that row's
        loss gradient, so the fit minimises ``sum_i w_i loss_i / n + l2/2 ||w||^2`` (the loss in
        the history is that objective, the accuracy weighted); default unit weights.

        ``init_params``: the flat parameter vector to start from (the weights, then the
        intercept if the model has one; default zeros), e.g. a previous result's
        ``np.append(params, intercept)``.  ``init_average``: with ``average`` and a
        ``start_update`` past the average's start, the averaged parameters of the earlier run
        this one continues (same layout; required then, refused otherwise).  ``init_l1``: with
        an L1 penalty, the cumulative penalty of the run this one continues (its result's
        ``l1_state``, or a pair ``(total, applied)``: ``l1`` times the sum of its steps, and the
        penalty each weight received), so that the penalty is scikit-learn's over both runs
        (default: zeros, a penalty of this run's own).  ``resume``: a checkpoint directory (see
        ``checkpoint_dir``) whose run this fit continues with the same data and settings: the
        remaining batches only, from its parameters, counter, histogram and counts (Ray: its
        parameters, for the epochs its pushes have not covered); refused before any worker
        starts for a finished run or other data or settings.  Returns a FitResult.  Ctrl-C
        stops the workers and returns the partial result with ``interrupted=True``.  Raises
        WorkerError if a worker fails or dies (its ``result``: the partial result of the
        updates applied, once the run had started), DivergenceError on NaN/inf parameters;
        shared memory is unlinked on every path.  A finished run whose final loss is above its
        starting loss or far above its best warns a ``TrainingWarning`` (a RuntimeWarning:
        :func:`hogwild_mts.core.result.training_trouble`) with advice that fits the run.
        """
        job = self.job(X, y, sample_weight=sample_weight, init_params=init_params,
                       init_average=init_average, init_l1=init_l1, resume=resume)
        result = (shm_backend if job.ray is None else ray_backend).fit(job)
        dataset = job.problem.dataset
        warn_if_bad(result, None if dataset is None or not dataset.values.size
                    else float(np.abs(dataset.values).max()))
        return result

    def job(self, X, y=None, *, sample_weight=None, init_params=None, init_average=None,
            init_l1=None, resume=None) -> Job:
        """The Job :meth:`fit` runs with these arguments (validated, with the resumed state and
        the checkpoint directory settled), without running it: ``backends.shm.run.fit(job)``
        (or ``backends.ray.run.fit`` with ``backend="ray"``) runs it."""
        started = time.time()
        if resume is not None and init_params is not None:
            raise ValueError("give init_params or resume, not both")
        if self.ray_options is not None and isinstance(X, (str, os.PathLike)):
            # backend="ray" and a data file: each worker actor reads its own part of it
            path = os.fspath(X)
            check_data_file_arguments(path, y, sample_weight, resume)
            check_init_average(init_average, 0, self.average_start, self.start_update)
            check_init_l1(init_l1, self.model, 0)
            problem = LinearProblem(self.model, self.dtype, path=path,
                                    check_start=lambda n_params: check_init_params(init_params, n_params))
            return self._job(problem, started, None)
        dataset = prepare_dataset(self.model, X, y, self.workers, self.batch_size)
        weights = check_sample_weight(sample_weight, dataset.n_samples)
        n_params = self.model.n_params(dataset.n_features)
        start_params = check_init_params(init_params, n_params)
        start_average = check_init_average(init_average, n_params, self.average_start, self.start_update)
        start_l1 = check_init_l1(init_l1, self.model, dataset.n_features)
        run = _CheckpointedRun(self, dataset, weights, X if y is None else y, resume)
        if self.ray_options is not None and run.resumed is not None:
            # Ray resumes from the checkpoint's parameters, for the epochs its pushes have not covered
            problem = LinearProblem(self.model, self.dtype, dataset, weights, run.resumed.params)
            return run.remaining_on_ray()._job(problem, started, None)
        return self._job(LinearProblem(self.model, self.dtype, dataset, weights, start_params,
                                       start_average, start_l1), started, run)


class _CheckpointedRun:
    """A fit's checkpoint side, settled before any worker starts: the run's settings as a
    checkpoint records them, the state it resumes from (``resumed``, None for a new run, checked
    against this run), the checkpoint directory made ready, and the two class labels."""

    def __init__(self, engine: Engine, dataset: Dataset, sample_weight: np.ndarray, labels, resume):
        self.engine, self.resumed = engine, None
        if resume is None and engine.checkpoints is None:
            return
        self.settings = run_settings(
            engine, backend=engine.backend, n_features=dataset.n_features,
            n_samples=dataset.n_samples,
            digest=rows_digest(dataset.y, dataset.indptr, sample_weight))
        self.n_samples = dataset.n_samples
        self.classes = _binary_classes(labels) if engine.model.classifier else None
        if resume is not None:
            path = os.fspath(resume)
            saved, self.resumed = read_checkpoint(path)
            check_resume(path, saved, self.settings)
            if engine.ray_options is None:
                check_unfinished(path, self.resumed, total_updates(
                    dataset.n_samples, engine.workers, engine.epochs, engine.batch_size))
            elif self.remaining_epochs() < 1:
                raise ValueError(f"cannot resume {path}: its pushes covered all {engine.epochs} "
                                 "epochs; start a new run from it with init_params instead")
        if engine.checkpoints is not None:
            prepare_directory(engine.checkpoints.directory)

    def write(self, state: RunState) -> None:
        write_checkpoint(self.engine.checkpoints.directory, self.settings, state,
                                    self.classes)

    def remaining_epochs(self) -> int:
        """Ray: the epochs the resumed run's pushes have not covered (whole epochs, rounded up)."""
        return self.engine.epochs - self.resumed.samples // self.n_samples

    def remaining_on_ray(self) -> Engine:
        """A copy of the engine that runs the remaining epochs (Ray); its model-file checkpoints
        count the rows done before and keep the whole run's epochs."""
        from hogwild_mts.backends.ray.checkpoint import ModelFileCheckpoint

        engine = copy.copy(self.engine)
        ray_options, written = engine.ray_options, engine.ray_options.checkpoint
        if isinstance(written, ModelFileCheckpoint):
            ray_options = dataclasses.replace(ray_options, checkpoint=ModelFileCheckpoint(
                written.path, samples_before=self.resumed.samples, epochs=self.engine.epochs))
        engine.options = engine.options.replace(epochs=self.remaining_epochs(), ray_options=ray_options)
        return engine


def check_model_on_backend(model: LinearModel, ray: bool, checkpoints: bool) -> None:
    """ValueError naming the value when the model's L1 penalty meets a backend or option that
    does not carry its state (Ray workers; checkpoints, which do not store it), or its
    intercept decay meets checkpoints (which do not record it)."""
    if model.l1 and ray:
        raise ValueError(f"l1={model.l1!r} applies to backend='shm'; backend='ray' trains "
                         "without an L1 penalty (l1=0)")
    if model.l1 and checkpoints:
        raise ValueError(f"l1={model.l1!r} cannot be checkpointed (checkpoints do not store the "
                         "cumulative L1 penalty); train without checkpoint_dir, or with l1=0")
    if model.intercept_decay != 1.0 and checkpoints:
        raise ValueError(f"intercept_decay={model.intercept_decay!r} cannot be checkpointed "
                         "(checkpoints do not record it); train without checkpoint_dir, or with "
                         "intercept_decay=1")


def linear_settings(model: LinearModel, schedule: StepSchedule, shuffle: bool = True,
                    **run) -> LinearSettings:
    """The result settings of a linear fit of ``model`` with ``schedule`` and ``shuffle`` (a
    shuffled run records none; ``run``: epochs, batch_size, seed, dtype and the other
    LinearSettings fields)."""
    uses_epsilon = model.loss in ("huber", "epsilon_insensitive", "squared_epsilon_insensitive")
    decay = model.intercept_decay
    return LinearSettings(l2=model.l2, fit_intercept=model.fit_intercept,
                          l1=model.l1 or None, epsilon=model.epsilon if uses_epsilon else None,
                          intercept_decay=None if decay == 1.0 else decay,
                          schedule=schedule.describe(), shuffle=None if shuffle else False, **run)


def _binary_classes(labels) -> np.ndarray:
    """The labels a classifier's checkpoint stores: 0 and 1 when the data's labels are 0/1, else
    -1 and +1 (the engine's)."""
    values = np.unique(np.asarray(labels.y if isinstance(labels, Dataset) else labels, dtype=np.float64))
    return np.array([0.0, 1.0]) if np.all(np.isin(values, (0.0, 1.0))) else np.array([-1.0, 1.0])


def prepare_dataset(model: LinearModel, X, y, workers: int, batch_size: int) -> Dataset:
    """``X, y`` (arrays, scipy matrix, or a Dataset with y None) as a Dataset whose labels are in
    the model's domain, with at least one row per worker and per batch; ValueError/DataError
    otherwise."""
    dataset = X if isinstance(X, Dataset) and y is None else as_dataset(X, y)
    labels = model.check_labels(dataset.y)
    if labels is not dataset.y:
        dataset = dataset.with_labels(labels)
    if workers > dataset.n_samples:
        raise ValueError(f"workers ({workers}) exceeds the number of samples "
                         f"({dataset.n_samples}); every worker needs at least one row")
    if batch_size > dataset.n_samples:
        raise ValueError(f"batch_size ({batch_size}) exceeds the number of samples "
                         f"({dataset.n_samples})")
    return dataset


def check_init_params(init_params, n_params: int) -> np.ndarray | None:
    """``init_params`` as a float64 vector of ``n_params`` finite numbers (None stays None);
    ValueError naming the shape or the first bad entry otherwise."""
    if init_params is None:
        return None
    return check_finite_vector("init_params", init_params, n_params,
                               "the weights, then the intercept if fitted")


def check_init_average(init_average, n_params: int, average_start: int | None,
                       start_update: int) -> np.ndarray | None:
    """``init_average`` as a float64 vector of ``n_params`` finite numbers: required when the
    run continues averaged updates (``average_start`` not None and below ``start_update``), else
    None; ValueError naming the value otherwise."""
    continues = average_start is not None and start_update > average_start
    if init_average is None:
        if continues:
            raise ValueError(f"start_update={start_update} continues {start_update - average_start} "
                             "averaged updates: give their averaged parameters as init_average")
        return None
    if not continues:
        raise ValueError("init_average applies to a run that continues averaged updates (average "
                         "set and start_update past its start); leave it out here")
    return check_finite_vector("init_average", init_average, n_params,
                               "the weights, then the intercept if fitted")


def check_init_l1(init_l1, model: LinearModel, n_features: int) -> L1State | None:
    """``init_l1`` (an L1State, or a pair ``(total, applied)``) as an L1State: only for a model
    with an L1 penalty (the engine refuses one on Ray), ``total`` a finite number >= 0 and
    ``applied`` ``n_features`` finite numbers; None stays None.  ValueError naming the value
    otherwise."""
    if init_l1 is None:
        return None
    if not model.l1:
        raise ValueError("init_l1 continues the cumulative L1 penalty of an earlier run, but this "
                         "model has no L1 penalty (l1=0); leave init_l1 out")
    try:
        total, applied = init_l1
    except (TypeError, ValueError):
        raise ValueError(f"init_l1 must be an L1State or a pair (total, applied), e.g. an earlier "
                         f"result's l1_state; got {init_l1!r}") from None
    if not (isinstance(total, (int, float, np.integer, np.floating)) and not isinstance(total, bool)
            and math.isfinite(total) and total >= 0):
        raise ValueError(f"init_l1.total must be a finite number >= 0 (l1 times the sum of the "
                         f"earlier run's steps), got {total!r}")
    return L1State(float(total), check_finite_vector(
        "init_l1.applied", applied, n_features, "the L1 penalty each weight received"))


def check_sample_weight(sample_weight, n_samples: int) -> np.ndarray:
    """``sample_weight`` as float64 of shape (n_samples,), or an empty array (unit weights) for
    None; ValueError naming the shape or the first bad entry otherwise."""
    if sample_weight is None:
        return np.empty(0, dtype=np.float64)
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape != (n_samples,):
        raise ValueError(f"sample_weight must have one entry per row, shape ({n_samples},), "
                         f"got {weights.shape}")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise ValueError(f"sample_weight[{bad[0]}] = {float(weights[bad[0]])!r}; every weight must be "
                         f"finite and >= 0")
    if not weights.any():
        raise ValueError("sample_weight is all zero; at least one row must carry weight")
    return np.ascontiguousarray(weights)


def check_data_file_arguments(path: str, y, sample_weight, resume) -> None:
    """A fit on a data file (Ray) takes no ``y``, ``sample_weight`` or ``resume``: ValueError
    saying why otherwise."""
    if y is not None:
        raise ValueError(f"y must be None when X is a data file ({path}): the labels are read "
                         "from the file")
    if sample_weight is not None:
        raise ValueError(f"sample_weight cannot be given with a data file ({path}); fit arrays "
                         "(X, y, sample_weight=...) instead")
    if resume is not None:
        raise ValueError(f"resume cannot be given with a data file ({path}) on backend='ray'; "
                         "fit the loaded data (load_data(path)) to resume")
