"""The run lifecycle both engines share: the control fields of the shared block, starting the
workers together, watching them (progress, evaluations, failures, divergence), stopping them and
unlinking the block on every exit path, and the result type.

An engine supplies three functions per run (see :meth:`RunnerBase.run`): how to start its
workers, how to evaluate the live shared parameters, and the result fields only it knows.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from hogwild_mts import kernels, worker
from hogwild_mts.policies import as_policy
from hogwild_mts.report import fit_staleness_models, staleness_summary
from hogwild_mts.shared import Layout, SharedBlock

HIST_BINS = 1024  # staleness histogram bins; the last one collects tau >= HIST_BINS - 1
JOIN_SECONDS = 10.0  # how long stopping workers may take before they are killed
POLL_SECONDS = 0.01  # the parent's polling period while workers run
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class WorkerError(RuntimeError):
    """A worker raised or died; the message says which and how."""


class DivergenceError(FloatingPointError):
    """The parameters (or a loss) became NaN or infinite."""


@dataclass
class FitResult:
    """What ``fit`` returns.  Times are seconds; ``history`` rows are evaluations."""

    params: np.ndarray  # float64 copy of the shared parameters (linear: the weights only)
    intercept: float
    history: dict  # {"time_s", "updates", "loss", "accuracy"}: lists, one entry per evaluation
    updates: int  # applied updates, summed over workers
    counter: int  # final value of the shared sequence counter (= updates when stamping)
    samples: int  # rows processed (updates x batch size, last batches shorter)
    staleness_histogram: np.ndarray  # int64 counts by tau, summed over workers
    max_staleness: int
    train_seconds: float  # from the first worker's start to the last worker's last update
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


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as int, or ValueError naming it unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def training_options(*, policy, alpha, default_alpha: float, workers, epochs, batch_size,
                     seed) -> dict:
    """The options every trainer (engines, simulator) has, validated: ``policy`` (a name gets
    ``alpha``, default ``default_alpha``), ``workers``, ``epochs``, ``batch_size``, ``seed``."""
    if alpha is None and isinstance(policy, str):
        alpha = default_alpha
    return {"policy": as_policy(policy, alpha), "workers": check_int("workers", workers, 1),
            "epochs": check_int("epochs", epochs, 1),
            "batch_size": check_int("batch_size", batch_size, 1),
            "seed": check_int("seed", seed, 0)}


def describe(policy) -> dict:
    """The policy's ``describe()``, or its class name for a user policy without one."""
    method = getattr(policy, "describe", None)
    return method() if callable(method) else {"name": type(policy).__name__}


def describe_fitted(policy, workers: int, histogram: np.ndarray) -> dict:
    """The policy as the workers ended it: the parent's copy refitted on the final histogram
    (each worker refits its own copy; the parent's never ran)."""
    policy.bind(workers)
    if getattr(policy, "refit_every", 0):
        policy.observe(histogram)
    return describe(policy)


def divergence_message(policy) -> str:
    return (f"training diverged: the parameters or the loss became NaN or infinite (policy "
            f"{describe(policy).get('name')}); lower the step size (alpha) or use a policy that "
            "damps stale updates")


def control_layout(workers: int, n_params: int, dtype) -> Layout:
    """The fields every run has: counter (own cache line), flags, per-worker stats, clock and
    histogram rows (each on whole cache lines), and the flat parameter vector."""
    layout = Layout()
    layout.add("counter", np.int64, (8,))  # word 0; the rest pads the cache line
    layout.add("flags", np.int64, (8,))
    layout.add_rows("stats", np.int64, workers, 8)
    layout.add_rows("clock", np.float64, workers, 2)
    layout.add_rows("hist", np.int64, workers, HIST_BINS)
    layout.add("params", dtype, (n_params,))
    return layout


@contextlib.contextmanager
def one_thread_per_process():
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


def start_processes(target, spec, workers: int, processes: list, start_method: str = "spawn",
                    name: str = "hogwild-worker"):
    """Start ``workers`` processes running ``target(spec, worker_id, errors)``, appending each to
    ``processes`` once started (so a failure midway still stops those already running);
    return the queue they report errors on."""
    context = multiprocessing.get_context(start_method)
    errors = context.SimpleQueue()
    with one_thread_per_process():
        for worker_id in range(workers):
            process = context.Process(target=target, name=f"{name}-{worker_id}",
                                      args=(spec, worker_id, errors), daemon=True)
            process.start()
            processes.append(process)
    return errors


def check_processes(processes, stats, errors) -> None:
    """Raise WorkerError for a worker that reported an exception or exited abnormally, and
    DivergenceError for one that stopped on a NaN/inf."""
    if not errors.empty():
        worker_id, text = errors.get()
        raise WorkerError(f"worker {worker_id} failed:\n{text}")
    for worker_id, process in enumerate(processes):
        code = process.exitcode
        if code is None or code == 0:
            continue
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        raise WorkerError(f"worker {worker_id} (pid {process.pid}) {how}; the run was stopped")
    if np.any(stats[:, worker.STAT_STATE] == worker.STATE_DIVERGED):
        raise DivergenceError("training diverged: a worker computed a NaN or infinite loss; "
                              "lower the step size (alpha)")


def join(processes) -> None:
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


def progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="upd", unit_scale=True, disable=not enabled, dynamic_ncols=True,
                mininterval=0.25)


def total_updates(n_rows: int, workers: int, epochs: int, batch_size: int) -> int:
    """Updates a full run applies: per worker and epoch, its shard in batches (last one shorter)."""
    return epochs * sum(-(-len(worker.shard_rows(n_rows, workers, w)) // batch_size)
                        for w in range(workers))


class RunnerBase:
    """Watches one run.  Subclasses call :meth:`set_run_options` in their constructor and
    :meth:`run` in ``fit``."""

    def set_run_options(self, *, policy, alpha, default_alpha: float, workers, epochs, batch_size,
                        seed, dtype, dtypes: tuple, eval_every, progress,
                        defer_evaluation: bool = False) -> None:
        """Validate and keep the options every engine has (plain messages naming the value).

        ``defer_evaluation``: during the run only copy the parameters every ``eval_every``
        seconds and evaluate the copies after it, so frequent evaluations take no core from the
        workers (one parameter copy is held per evaluation until the end)."""
        vars(self).update(training_options(policy=policy, alpha=alpha, default_alpha=default_alpha,
                                           workers=workers, epochs=epochs, batch_size=batch_size,
                                           seed=seed))
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {dtypes}, got {dtype!r}")
        self.dtype = dtype
        self.eval_every = check_seconds("eval_every", eval_every)
        self.progress = bool(progress)
        self.defer_evaluation = bool(defer_evaluation)

    def run(self, block: SharedBlock, n_rows: int, start, evaluate, details, started: float) -> FitResult:
        """Start, watch and stop the workers of ``block``; always release the block.

        ``start(views, processes) -> error queue`` starts the workers (appending them);
        ``evaluate(views) -> (loss, accuracy or None)`` scores the live parameters and raises
        DivergenceError on NaN/inf; ``details(views) -> dict`` gives the FitResult fields
        ``params, intercept, model, data, settings``.  Ctrl-C returns the partial result with
        ``interrupted=True``.
        """
        processes = []
        try:
            views = block.views
            errors = start(views, processes)
            history = {"time_s": [], "updates": [], "loss": [], "accuracy": []}
            deferred = []  # (seconds since start, updates, parameter copy) to evaluate later
            interrupted = False
            try:
                self._watch(processes, views, n_rows, errors, evaluate, history, deferred)
            except KeyboardInterrupt:
                interrupted = True
                views["flags"][worker.FLAG_STOP] = 1
                join(processes)
            for elapsed, updates, params in deferred:
                _record(dict(views, params=params), evaluate, elapsed, history, updates)
            return self._result(views, history, evaluate, details, started, interrupted)
        finally:
            if "flags" in block.views:
                block.views["flags"][worker.FLAG_STOP] = 1
            join(processes)
            block.release()

    def _watch(self, processes, views, n_rows, errors, evaluate, history: dict, deferred: list) -> None:
        """Start the workers together once all are ready, then poll failures, divergence and
        progress, evaluating every ``eval_every`` seconds (or, deferring, copying the parameters
        into ``deferred``; the final row comes from _result).  The starting point is evaluated
        on a spare core after the start signal, or, when the workers take every core, while
        they start up."""
        stats = views["stats"]
        starting_point = dict(views, params=np.array(views["params"]))  # nobody writes yet
        spare_core = self.workers < (os.cpu_count() or 1)
        if not spare_core:  # evaluate while the workers start up, not on a core they need
            _record(starting_point, evaluate, 0.0, history)
        while not np.all(stats[:, worker.STAT_STATE] >= worker.STATE_READY):
            check_processes(processes, stats, errors)
            time.sleep(POLL_SECONDS)
        go_time = time.time()
        views["flags"][worker.FLAG_GO] = 1
        if spare_core:
            _record(starting_point, evaluate, 0.0, history)
        bar = progress_bar(total_updates(n_rows, self.workers, self.epochs, self.batch_size),
                           self.progress)
        next_eval = go_time + self.eval_every
        try:
            while True:  # finished: every worker has left its loop (processes may still exit)
                finished = (np.all(stats[:, worker.STAT_STATE] >= worker.STATE_DONE)
                            or not any(p.is_alive() for p in processes))
                check_processes(processes, stats, errors)
                now = time.time()
                if now >= next_eval and not finished:
                    if self.defer_evaluation:
                        params = np.array(views["params"])
                        if not np.all(np.isfinite(params)):
                            raise DivergenceError(divergence_message(self.policy))
                        deferred.append((now - go_time, int(stats[:, kernels.STAT_UPDATES].sum()), params))
                    else:
                        loss, accuracy = _record(views, evaluate, now - go_time, history)
                        bar.set_postfix(loss=f"{loss:.4g}", refresh=False,
                                        **({} if accuracy is None else {"acc": f"{accuracy:.4f}"}))
                    next_eval = time.time() + self.eval_every
                bar.update(int(stats[:, kernels.STAT_UPDATES].sum()) - bar.n)
                if finished:
                    return
                time.sleep(POLL_SECONDS)
        finally:
            bar.close()

    def _result(self, views, history, evaluate, details, started, interrupted) -> FitResult:
        """Evaluate the final parameters (the last history row) and collect the run's numbers."""
        stats, clock = views["stats"], views["clock"]
        ran = clock[:, worker.CLOCK_LOOP_START] > 0
        train_seconds = max(0.0, float(clock[ran, worker.CLOCK_LOOP_END].max()
                                       - clock[ran, worker.CLOCK_LOOP_START].min())) if ran.any() else 0.0
        loss, accuracy = _record(views, evaluate, train_seconds, history)  # as of the last update
        histogram = views["hist"][:, :HIST_BINS].sum(axis=0)
        return FitResult(
            history=history, updates=int(stats[:, kernels.STAT_UPDATES].sum()),
            counter=int(views["counter"][0]), samples=int(stats[:, kernels.STAT_SAMPLES].sum()),
            staleness_histogram=histogram, refits=int(stats[:, worker.STAT_REFITS].sum()),
            staleness_fit=fit_staleness_models(histogram),
            max_staleness=int(stats[:, kernels.STAT_MAX_TAU].max()),
            train_seconds=train_seconds, wall_seconds=time.time() - started,
            final_loss=float(loss), final_accuracy=None if accuracy is None else float(accuracy),
            workers=self.workers, policy=describe_fitted(self.policy, self.workers, histogram),
            interrupted=interrupted, **details(views))


def _record(views, evaluate, elapsed: float, history: dict, updates: int | None = None):
    """Evaluate ``views["params"]`` and append a history row (``updates``: default, the live count)."""
    loss, accuracy = evaluate(views)
    history["time_s"].append(round(float(elapsed), 4))
    history["updates"].append(int(views["stats"][:, kernels.STAT_UPDATES].sum()) if updates is None else updates)
    history["loss"].append(float(loss))
    history["accuracy"].append(None if accuracy is None else float(accuracy))
    return loss, accuracy
