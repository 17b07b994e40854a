"""The engine: validate, place data and parameters in shared memory once, start the workers,
watch them (progress, loss, divergence, failures), stop them and clean up on every exit path."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from hogwild_mts import kernels, worker
from hogwild_mts.data import Dataset, as_dataset
from hogwild_mts.policies import as_policy
from hogwild_mts.report import fit_staleness_models, staleness_summary
from hogwild_mts.shared import Layout, SharedBlock
from models.linear import LinearModel

HIST_BINS = 1024  # staleness histogram bins; the last one collects tau >= HIST_BINS - 1
CHUNK_UPDATES = 8192  # updates per numba call between Python checks in a worker
JOIN_SECONDS = 10.0  # how long stopping workers may take before they are killed
POLL_SECONDS = 0.01
PARAM_DTYPES = ("float64", "float32")
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class WorkerError(RuntimeError):
    """A worker raised or died; the message says which and how."""


class DivergenceError(FloatingPointError):
    """The parameters became NaN or infinite."""


@dataclass
class FitResult:
    """What ``Engine.fit`` returns.  Times are seconds; ``history`` rows are evaluations."""

    params: np.ndarray  # weights (n_features,), float64 copy of the shared parameters
    intercept: float
    history: dict  # {"time_s", "updates", "loss", "accuracy"}: lists, one entry per evaluation
    updates: int  # applied updates, summed over workers
    counter: int  # final value of the shared sequence counter (= updates when stamping)
    samples: int  # rows processed (updates x batch size, last batches shorter)
    staleness_histogram: np.ndarray  # int64 counts by tau, summed over workers
    max_staleness: int
    train_seconds: float  # from the start signal to the last worker's last update
    wall_seconds: float  # the whole fit, start-up and clean-up included
    final_loss: float
    final_accuracy: float | None
    workers: int
    model: str
    policy: dict
    data: str
    refits: int = 0  # policy refits done by the workers, summed
    staleness_fit: dict = field(default_factory=dict)  # best model by AIC + every model's fit
    interrupted: bool = False
    settings: dict = field(default_factory=dict)

    @property
    def updates_per_second(self) -> float:
        return self.updates / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0

    def staleness_summary(self) -> dict:
        return staleness_summary(self.staleness_histogram, self.max_staleness)

    def to_dict(self) -> dict:
        """JSON-able metrics (no parameter vector)."""
        return {
            "model": self.model, "data": self.data, "workers": self.workers, "policy": self.policy,
            "settings": self.settings, "final_loss": self.final_loss,
            "final_accuracy": self.final_accuracy, "updates": self.updates, "counter": self.counter,
            "samples": self.samples, "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds, "updates_per_second": self.updates_per_second,
            "samples_per_second": self.samples_per_second, "interrupted": self.interrupted,
            "staleness": self.staleness_summary(), "staleness_fit": self.staleness_fit,
            "refits": self.refits,
            "staleness_histogram": _trim_histogram(self.staleness_histogram).tolist(),
            "history": self.history,
        }


def _trim_histogram(histogram: np.ndarray) -> np.ndarray:
    nonzero = np.flatnonzero(histogram)
    return histogram[: nonzero[-1] + 1] if nonzero.size else histogram[:1]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@contextlib.contextmanager
def _one_thread_per_process():
    """Children started inside inherit one BLAS/OpenMP/numba thread each."""
    saved = {name: os.environ.get(name) for name in THREAD_ENV}
    os.environ.update({name: "1" for name in THREAD_ENV})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Engine:
    """Asynchronous lock-free SGD of a linear model with ``workers`` processes.

    ``model``: a name (``logreg``, ``svm``, ``lsq``) or a :class:`models.linear.LinearModel`.
    ``policy``: a name, a policy object or a function of tau; ``alpha`` is the base step for a
    named policy.  ``epochs`` full passes over the data in total, the rows split into ``workers``
    interleaved shards (worker w owns rows w, w+m, w+2m, ...), each shuffled per epoch with the
    worker's own seed drawn from ``seed``.  ``workers=1`` is deterministic: the same seed gives
    bit-identical parameters; it runs the same worker loop on a thread of the calling process
    (the numba loop releases the GIL), so it pays no process start-up.  ``stamp=False`` runs classic Hogwild! without the counter
    (constant step only), the baseline of the stamping-overhead benchmark.
    """

    def __init__(self, model="logreg", policy="constant", *, workers: int = 2, epochs: int = 5,
                 batch_size: int = 1, alpha: float | None = None, seed: int = 0,
                 dtype: str = "float64", eval_every: float = 0.5, progress: bool = True,
                 stamp: bool = True, start_method: str = "spawn"):
        self.model = model if isinstance(model, LinearModel) else LinearModel(model)
        if alpha is None and isinstance(policy, str):
            alpha = 0.1
        self.policy = as_policy(policy, alpha)
        self.workers = _check_int("workers", workers, 1)
        self.epochs = _check_int("epochs", epochs, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        if dtype not in PARAM_DTYPES:
            raise ValueError(f"dtype must be one of {PARAM_DTYPES}, got {dtype!r}")
        self.dtype = dtype
        if not (isinstance(eval_every, (int, float)) and math.isfinite(eval_every) and eval_every > 0):
            raise ValueError(f"eval_every must be a number of seconds > 0, got {eval_every!r}")
        self.eval_every = float(eval_every)
        self.progress = bool(progress)
        if not stamp and getattr(self.policy, "name", None) != "constant":
            raise ValueError("stamp=False measures no staleness, so it needs the constant policy, "
                             f"got {getattr(self.policy, 'name', self.policy)!r}")
        self.stamp = bool(stamp)
        if start_method not in ("spawn", "forkserver", "fork"):
            raise ValueError(f"start_method must be 'spawn', 'forkserver' or 'fork', got {start_method!r}")
        self.start_method = start_method

    # ------------------------------------------------------------------ set-up
    def _prepare(self, X, y) -> Dataset:
        dataset = X if isinstance(X, Dataset) and y is None else as_dataset(X, y)
        labels = self.model.check_labels(dataset.y)
        if labels is not dataset.y:
            dataset = Dataset(dataset.values, dataset.indices, dataset.indptr, dataset.n_features,
                              labels, dataset.name, dataset.dense)
        if self.workers > dataset.n_samples:
            raise ValueError(f"workers ({self.workers}) exceeds the number of samples "
                             f"({dataset.n_samples}); every worker needs at least one row")
        return dataset

    def _layout(self, dataset: Dataset) -> Layout:
        """The block's fields.  The data set goes in only for worker processes: the single
        worker of a ``workers=1`` run is a thread that reads the caller's arrays in place."""
        layout = Layout()
        layout.add("counter", np.int64, (8,))  # word 0; the rest pads the cache line
        layout.add("flags", np.int64, (8,))
        layout.add_rows("stats", np.int64, self.workers, 8)
        layout.add_rows("clock", np.float64, self.workers, 2)
        layout.add_rows("hist", np.int64, self.workers, HIST_BINS)
        layout.add("params", self.dtype, (self.model.n_params(dataset.n_features),))
        layout.add("feature_scale", np.float64, (dataset.n_features,))
        if self.workers > 1:
            for name, array in _data_arrays(dataset).items():
                layout.add(name, array.dtype, array.shape)
        return layout

    def _fill(self, views: dict, dataset: Dataset) -> None:
        """Put the data in the block (or, for one worker, beside it) and the L2 weights."""
        for name, array in _data_arrays(dataset).items():
            if name in views:
                views[name][:] = array
            else:
                views[name] = np.ascontiguousarray(array)
        if self.model.l2 > 0.0:  # the kernels read feature_scale only with a penalty
            counts = dataset.feature_counts()
            np.divide(dataset.n_samples, counts, out=views["feature_scale"], where=counts > 0)

    def _spec(self, block: SharedBlock, dataset: Dataset) -> worker.WorkerSpec:
        seeds = np.random.SeedSequence(self.seed).spawn(self.workers)
        return worker.WorkerSpec(
            block_name=block.name, layout=block.layout, workers=self.workers, epochs=self.epochs,
            batch_size=self.batch_size, chunk_updates=CHUNK_UPDATES, seeds=seeds,
            n_features=dataset.n_features, dense=dataset.dense,
            fit_intercept=self.model.fit_intercept, loss_id=self.model.loss_id,
            l2=float(self.model.l2), stamp=self.stamp, policy=self.policy, parent_pid=os.getpid())

    def _warm_up(self, views: dict, spec: worker.WorkerSpec) -> None:
        """Compile (or load from numba's cache) the kernels for these types in the parent."""
        params = np.zeros_like(views["params"])
        empty_order = np.zeros(0, dtype=np.int64)
        kernels.sgd_chunk(views["values"], views["indices"], views["indptr"], spec.dense,
                          views["labels"], views["feature_scale"], empty_order, 0, 0,
                          spec.batch_size, params, spec.n_features, spec.fit_intercept,
                          spec.loss_id, spec.l2, np.ones(1), spec.stamp, np.zeros(1, np.int64),
                          np.zeros(HIST_BINS, np.int64), np.zeros(8, np.int64),
                          np.zeros(spec.batch_size))
        first_row = dict(views, indptr=views["indptr"][:2])  # same types, one row of work
        self._evaluate(first_row, spec, params)

    @staticmethod
    def _evaluate(views: dict, spec: worker.WorkerSpec, params: np.ndarray):
        return kernels.objective(views["values"], views["indices"], views["indptr"], spec.dense,
                                 views["labels"], params, spec.n_features, spec.fit_intercept,
                                 spec.loss_id, spec.l2)

    # ------------------------------------------------------------------ run
    def fit(self, X, y=None) -> FitResult:
        """Train on ``X`` (dense array, scipy sparse matrix or Dataset) and labels ``y``.

        Returns a FitResult.  Ctrl-C stops the workers and returns the partial result with
        ``interrupted=True``.  Raises WorkerError if a worker fails or dies, DivergenceError on
        NaN/inf parameters; shared memory is unlinked on every path.
        """
        started = time.time()
        dataset = self._prepare(X, y)
        block = SharedBlock.create(self._layout(dataset))
        processes = []
        try:
            views = block.views
            self._fill(views, dataset)
            spec = self._spec(block, dataset)
            self._warm_up(views, spec)
            errors = self._start(views, spec, processes)
            history = {"time_s": [], "updates": [], "loss": [], "accuracy": []}
            interrupted = False
            try:
                self._watch(processes, views, spec, dataset, errors, history)
            except KeyboardInterrupt:
                interrupted = True
                views["flags"][worker.FLAG_STOP] = 1
                _join(processes)
            return self._result(views, spec, dataset, history, started, interrupted)
        finally:
            if "flags" in block.views:
                block.views["flags"][worker.FLAG_STOP] = 1
            _join(processes)
            block.release()

    def _start(self, views: dict, spec: worker.WorkerSpec, processes: list):
        """Start the workers, appending each to ``processes`` as it starts (so a failure midway
        still stops those already running); return the queue they report errors on.
        One thread of this process when workers == 1, else processes."""
        if self.workers == 1:
            errors = queue.SimpleQueue()
            spec.parent_pid = 0
            processes.append(worker.ThreadWorker(views, spec, errors))
            processes[0].start()
            return errors
        context = multiprocessing.get_context(self.start_method)
        errors = context.SimpleQueue()
        with _one_thread_per_process():
            for worker_id in range(self.workers):
                process = context.Process(target=worker.worker_main, name=f"hogwild-worker-{worker_id}",
                                          args=(spec, worker_id, errors), daemon=True)
                process.start()
                processes.append(process)
        return errors

    def _watch(self, processes, views, spec, dataset, errors, history: dict) -> None:
        """Start the workers together, then poll: failures, divergence, progress, evaluations."""
        stats = views["stats"]
        while not np.all(stats[:, worker.STAT_STATE] >= worker.STATE_READY):
            _check_processes(processes, stats, errors)
            time.sleep(POLL_SECONDS)
        go_time = time.time()
        views["flags"][worker.FLAG_GO] = 1
        total_updates = self.epochs * sum(
            -(-len(worker.shard_rows(dataset.n_samples, self.workers, w)) // self.batch_size)
            for w in range(self.workers))
        bar = _progress_bar(total_updates, self.progress)
        next_eval = go_time
        try:
            while True:
                finished = not any(p.is_alive() for p in processes)
                _check_processes(processes, stats, errors)
                now = time.time()
                if now >= next_eval and not finished:  # the final row comes from _result
                    loss, _ = self._record(views, spec, now - go_time, history)
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    next_eval = now + self.eval_every
                bar.update(int(stats[:, kernels.STAT_UPDATES].sum()) - bar.n)
                if finished:
                    return
                time.sleep(POLL_SECONDS)
        finally:
            bar.close()

    def _record(self, views, spec, elapsed: float, history: dict):
        """Evaluate the live parameters and append a history row; raise on NaN/inf."""
        params = np.array(views["params"], dtype=np.float64)
        if not np.all(np.isfinite(params)):
            raise DivergenceError(_divergence_message(self.policy))
        loss, accuracy = self._evaluate(views, spec, params)
        history["time_s"].append(round(elapsed, 4))
        history["updates"].append(int(views["stats"][:, kernels.STAT_UPDATES].sum()))
        history["loss"].append(float(loss))
        history["accuracy"].append(float(accuracy) if self.model.classifier else None)
        return loss, accuracy

    def _result(self, views, spec, dataset, history, started, interrupted) -> FitResult:
        """Evaluate the final parameters (the last history row) and collect the run's numbers."""
        stats, clock = views["stats"], views["clock"]
        ran = clock[:, worker.CLOCK_LOOP_START] > 0
        since_start = time.time() - clock[ran, worker.CLOCK_LOOP_START].min() if ran.any() else 0.0
        loss, accuracy = self._record(views, spec, since_start, history)
        params = np.array(views["params"], dtype=np.float64)
        train_seconds = float(clock[ran, worker.CLOCK_LOOP_END].max() - clock[ran, worker.CLOCK_LOOP_START].min()) if ran.any() else 0.0
        histogram = views["hist"][:, :HIST_BINS].sum(axis=0)
        weights = params[: dataset.n_features].copy()
        intercept = float(params[dataset.n_features]) if self.model.fit_intercept else 0.0
        return FitResult(
            params=weights, intercept=intercept, history=history,
            updates=int(stats[:, kernels.STAT_UPDATES].sum()),
            counter=int(views["counter"][0]),
            samples=int(stats[:, kernels.STAT_SAMPLES].sum()),
            staleness_histogram=histogram, refits=int(stats[:, worker.STAT_REFITS].sum()),
            staleness_fit=fit_staleness_models(histogram),
            max_staleness=int(stats[:, kernels.STAT_MAX_TAU].max()),
            train_seconds=max(train_seconds, 0.0), wall_seconds=time.time() - started,
            final_loss=float(loss), final_accuracy=float(accuracy) if self.model.classifier else None,
            workers=self.workers, model=self.model.name,
            policy=_describe_fitted(self.policy, self.workers, histogram),
            data=dataset.name, interrupted=interrupted,
            settings={"epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
                      "dtype": self.dtype, "l2": self.model.l2,
                      "fit_intercept": self.model.fit_intercept, "stamp": self.stamp})


def _data_arrays(dataset: Dataset) -> dict:
    """The data set's arrays by their names in the worker views."""
    return {"values": dataset.values, "indices": dataset.indices, "indptr": dataset.indptr,
            "labels": dataset.y}


def _describe(policy) -> dict:
    describe = getattr(policy, "describe", None)
    return describe() if callable(describe) else {"name": type(policy).__name__}


def _describe_fitted(policy, workers: int, histogram: np.ndarray) -> dict:
    """The policy as the workers ended it: the parent's copy refitted on the final histogram
    (each worker refits its own copy; the parent's never ran)."""
    policy.bind(workers)
    if getattr(policy, "refit_every", 0):
        policy.observe(histogram)
    return _describe(policy)


def _divergence_message(policy) -> str:
    return (f"training diverged: the parameters became NaN or infinite (policy {_describe(policy).get('name')}); "
            "lower the step size (alpha) or use a policy that damps stale updates")


def _check_processes(processes, stats, errors) -> None:
    """Raise WorkerError for a worker that reported an exception or exited abnormally."""
    if not errors.empty():
        worker_id, text = errors.get()
        raise WorkerError(f"worker {worker_id} failed:\n{text}")
    for worker_id, process in enumerate(processes):
        code = process.exitcode
        if code is None or code == 0:
            continue
        if code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        raise WorkerError(f"worker {worker_id} (pid {process.pid}) {how}; the run was stopped")
    if np.any(stats[:, worker.STAT_STATE] == worker.STATE_DIVERGED):
        raise DivergenceError("training diverged: a worker computed a NaN or infinite margin; "
                              "lower the step size (alpha)")


def _join(processes) -> None:
    """Wait for workers to stop; terminate, then kill, any that do not within JOIN_SECONDS."""
    deadline = time.time() + JOIN_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.time()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="upd", unit_scale=True, disable=not enabled, dynamic_ncols=True,
                mininterval=0.25)
