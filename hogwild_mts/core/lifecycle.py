"""The run lifecycle every backend shares: options, the start handshake, watching (progress bar,
evaluation schedule, failures, divergence), stopping on Ctrl-C, and the result.

A backend (shared memory, the simulator, Ray) runs the workers and implements :class:`Backend`;
an engine supplies how to score a parameter vector and the result fields only it knows, then
calls :func:`run`.  See docs/architecture.md for the data flow.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from hogwild_mts.core import signals
from hogwild_mts.core.result import (Diverged, DivergenceError, FitResult, RunTotals, WorkerError,
                                     divergence_message)
from hogwild_mts.staleness.summary import fit_staleness_models

POLL_SECONDS = 0.01  # the parent's polling period while workers run
STALL_SECONDS = 5.0  # a worker whose update count has not moved for this long is shown as stalled

log = logging.getLogger(__name__)


class Backend(Protocol):
    """Runs one fit's workers.  :func:`run` calls, in order: ``start``; ``ready`` until True;
    ``go``; ``poll``/``finished``/``elapsed``/``snapshot``/``wait`` while it runs;
    ``request_stop`` + ``join`` (always, also after errors); ``collect``; ``close`` (always).
    ``ready`` and ``poll`` raise WorkerError for a failed worker and Diverged for one that saw
    NaN/inf."""

    workers: int

    def start(self) -> None:
        """Launch the workers; they prepare (map data, load kernels) and then say ready."""

    def ready(self) -> bool:
        """True once every worker waits for the start signal."""

    def go(self) -> None:
        """Release every worker at once; the backend clock starts."""

    def poll(self, until_updates: int | None) -> int:
        """Check the workers and return the updates applied so far.  A backend that runs in
        this thread (the simulator) advances here, stopping at ``until_updates`` if given."""

    def finished(self) -> bool:
        """True once every worker has left its loop."""

    def elapsed(self) -> float:
        """Seconds since ``go`` on the backend's clock (simulated seconds for the simulator)."""

    def snapshot(self) -> np.ndarray:
        """A copy of the live parameter vector."""

    def wait(self) -> None:
        """Pause between polls (a backend that advances in ``poll`` returns at once)."""

    def request_stop(self) -> None:
        """Ask every worker to leave its loop after its current chunk; idempotent."""

    def join(self) -> None:
        """Wait for the workers to stop; end those that do not; idempotent."""

    def collect(self) -> RunTotals:
        """The run's counts, after ``join``."""

    def close(self) -> None:
        """Release everything the run holds (shared memory, actors); idempotent."""

    # Optional: ``stalled(seconds) -> {worker id: seconds}``, the workers that have not left their
    # loop and whose update count has not moved for ``seconds``; :func:`run` shows them.
    # Optional: ``evaluations``, None or a callable ``() -> [(elapsed, updates, params), ...]``:
    # the evaluations the workers took since the last call, when the run evaluates every
    # ``eval_every_updates`` updates (copies taken at the due update count, not at the parent's
    # next poll); without it the parent copies the parameters when a poll finds one due.
    # Optional: ``final_checkpoint(totals, params)``, called once with what ``collect`` and
    # ``snapshot`` returned, after the final evaluation, when the run ended normally or by a
    # stop signal (not after an error or on NaN/inf parameters): write the run's last checkpoint.
    # An OSError it raises (a full disk) is a RuntimeWarning: the run's result is still returned.


@dataclass
class RunOptions:
    """The options every trainer (engines, simulator) has, validated by
    :func:`hogwild_mts.job.run_options`."""

    policy: object
    workers: int
    epochs: int
    batch_size: int
    seed: int
    eval_every: float | None  # seconds between evaluations, or None
    eval_every_updates: int | None  # updates between evaluations (replaces eval_every), or None
    progress: bool
    defer_evaluation: bool
    momentum: float  # each worker's explicit heavy-ball momentum, in [0, 1); the policy is bound with it


def progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="upd", unit_scale=True, disable=not enabled, dynamic_ncols=True,
                mininterval=0.25)


Score = Callable[[np.ndarray], tuple]  # params -> (loss, accuracy or None)


def run(backend: Backend, options: RunOptions, *, score: Score, details: Callable[[np.ndarray], dict],
        describe_policy: Callable[[np.ndarray], dict], total_updates: int, started: float,
        resumed_updates: int = 0, score_in_threads: bool = False) -> FitResult:
    """Run ``backend`` to the end (or Ctrl-C) and return the FitResult.

    ``score(params) -> (loss, accuracy or None)`` evaluates a parameter vector;
    ``details(params) -> dict`` gives the FitResult fields ``params, intercept, model, data,
    settings``; ``describe_policy(histogram) -> dict`` describes the policy as the workers ended
    the run (:func:`hogwild_mts.policies.refit.describe_fitted`); ``total_updates`` sizes the
    progress bar; ``started`` is ``time.time()`` when the fit began; ``resumed_updates``: the updates a resumed run had already applied (the backend's
    counts start there); ``score_in_threads``: ``score`` may run in several threads at once (it
    releases the GIL), so copies kept by ``defer_evaluation`` are scored on every core.  Ctrl-C
    (or SIGTERM/SIGHUP under :func:`signals.stop_on_signals`) returns the partial result with
    ``interrupted=True``.  A worker that fails or dies once the run has started raises
    WorkerError carrying the partial result of the updates applied (``stopped_by`` its message);
    the others are stopped.  A stop signal while the result is being made (or, under
    :func:`signals.stop_on_signals`, at any later moment) is held, not raised, and a second
    signal joins the first stop.  The backend is stopped, joined and closed on every path.
    """
    watcher = _Watcher(backend, options, score, score_in_threads)
    try:
        interrupted = False
        try:
            try:
                with signals.interruptible():  # the one part a stop signal cuts short
                    backend.start()
                    watcher.watch(total_updates, resumed_updates)
            finally:
                signals.hold_rest()  # from here on a signal only decides the exit status
        except KeyboardInterrupt:
            interrupted = True
        except Diverged as diverged:
            raise DivergenceError(divergence_message(options.policy, diverged.where, options.workers)) from None
        except WorkerError as failure:
            if not watcher.started:
                raise
            cause = str(failure)
            with signals.held():
                raise _keeping_the_others(failure, lambda: _result(
                    backend, options, watcher, details, describe_policy, started, True,
                    stopped_by=cause)) from None
        with signals.held():
            return _result(backend, options, watcher, details, describe_policy, started, interrupted)
    finally:
        backend.request_stop()
        backend.join()
        backend.close()


def _keeping_the_others(failure: WorkerError, partial: Callable[[], FitResult]) -> WorkerError:
    """``failure`` carrying ``partial()``, the result of the updates the workers applied (a
    killed worker's peers kept training until the stop); ``failure`` alone if that result
    cannot be made (say, its parameters are not finite)."""
    try:
        result = partial()
    except Exception as error:  # the failure is what the caller must see; the reason is logged
        log.warning("no partial result after %s: %s", failure, error)
        return failure
    failure.result = result
    return failure


def _described(describe_policy, histogram: np.ndarray) -> dict:
    """``describe_policy(histogram)``, or, when the policy fails to refit (a user's policy that
    raises), ``{"error": ...}``: the result is kept without the description."""
    try:
        return describe_policy(histogram)
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}


def _result(backend: Backend, options: RunOptions, watcher: "_Watcher", details, describe_policy,
            started: float, interrupted: bool, stopped_by: str | None = None) -> FitResult:
    """Stop and join the workers, score what was deferred and the final parameters, and build
    the FitResult (``stopped_by``: the failure that stopped an interrupted run)."""
    backend.request_stop()
    backend.join()
    totals = backend.collect()
    final = backend.snapshot()
    loss, accuracy = watcher.score_after_run(final, totals.train_seconds, totals.updates)
    final_checkpoint = getattr(backend, "final_checkpoint", None)
    if final_checkpoint is not None:  # after the divergence checks: never a NaN checkpoint
        try:
            final_checkpoint(totals, final)
        except OSError as error:  # a full disk: the run's result is not lost with its checkpoint
            warnings.warn(f"{error}; the run's result is kept, the previous checkpoint stays",
                          RuntimeWarning, stacklevel=2)
    return FitResult(
        history=watcher.history, updates=totals.updates, counter=totals.counter,
        samples=totals.samples, staleness_histogram=totals.histogram, refits=totals.refits,
        staleness_fit=fit_staleness_models(totals.histogram), max_staleness=totals.max_staleness,
        train_seconds=totals.train_seconds, wall_seconds=time.time() - started,
        final_loss=float(loss), final_accuracy=None if accuracy is None else float(accuracy),
        workers=options.workers,
        policy=_described(describe_policy, totals.histogram),
        interrupted=interrupted, stopped_by=stopped_by, **details(final))


class _Watcher:
    """The parent's side of a running fit: start handshake, polls, evaluation schedule, history."""

    def __init__(self, backend: Backend, options: RunOptions, score: Score, score_in_threads: bool):
        self.backend, self.options, self._score = backend, options, score
        self._score_in_threads = score_in_threads
        self.history = {"time_s": [], "updates": [], "loss": [], "accuracy": []}
        self.deferred = []  # (elapsed, updates, parameter copy) scored after the run
        self.unscored_start = None  # (updates, parameters): the starting point, scored after the run
        self.postfix = {}  # what the progress line shows after the counts
        self.stalled = set()  # workers shown as stalled
        self.started = False  # the workers were told to go

    def _check_finite(self, params: np.ndarray) -> None:
        """DivergenceError if ``params`` hold NaN or inf."""
        if not np.all(np.isfinite(params)):
            raise DivergenceError(divergence_message(self.options.policy, "the parameters", self.options.workers))

    def _checked_score(self, params: np.ndarray) -> tuple:
        """``score(params)``; DivergenceError on NaN/inf parameters or loss."""
        self._check_finite(params)
        loss, accuracy = self._score(params)
        if not math.isfinite(loss):
            raise DivergenceError(divergence_message(self.options.policy, "the loss", self.options.workers))
        return loss, accuracy

    def record(self, params: np.ndarray, elapsed: float, updates: int, scored: tuple | None = None,
               row: int | None = None):
        """Score ``params`` (unless ``scored`` gives its (loss, accuracy)) and add a history row:
        appended, or inserted at index ``row``."""
        loss, accuracy = self._checked_score(params) if scored is None else scored
        values = {"time_s": round(float(elapsed), 4), "updates": int(updates), "loss": float(loss),
                  "accuracy": None if accuracy is None else float(accuracy)}
        for key, value in values.items():
            self.history[key].insert(len(self.history[key]) if row is None else row, value)
        return loss, accuracy

    def score_after_run(self, final: np.ndarray, elapsed: float, updates: int) -> tuple:
        """Score what waited for the end of the run -- the starting point (first row), the copies
        kept during the run, then ``final`` (last row) -- on every core when ``score`` may run in
        threads; return the final (loss, accuracy)."""
        deferred, self.deferred = self.deferred, []
        copies = [params for _, _, params in deferred] + [final]
        start, self.unscored_start = self.unscored_start, None
        if start is not None:
            copies.insert(0, start[1])
        if self._score_in_threads and len(copies) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(len(copies), os.cpu_count() or 1)) as pool:
                scores = list(pool.map(self._checked_score, copies))
        else:
            scores = [self._checked_score(params) for params in copies]
        if start is not None:
            self.record(start[1], 0.0, start[0], scores.pop(0), row=0)
        for (row_elapsed, row_updates, params), scored in zip(deferred, scores):
            self.record(params, row_elapsed, row_updates, scored)
        return self.record(final, elapsed, updates, scores[-1])

    def watch(self, total_updates: int, resumed_updates: int = 0) -> None:
        """Start the workers together once all are ready, then poll until they finish,
        evaluating on the schedule (the final row comes from :func:`run`).  The starting point
        (``resumed_updates`` updates into the run), checked finite before the start, is scored
        on a spare core after the start signal, or, when the workers take every core, after the
        run beside the final parameters (:meth:`score_after_run`): never between ``fit()`` and
        the first update."""
        backend, options = self.backend, self.options
        starting_point = backend.snapshot()  # nobody writes yet
        self._check_finite(starting_point)
        self.unscored_start = (resumed_updates, starting_point)
        while not backend.ready():
            signals.check()
            backend.wait()
        backend.go()
        self.started = True
        if options.workers < (os.cpu_count() or 1):
            self.unscored_start = None
            self.record(starting_point, 0.0, resumed_updates)
        every_updates, every_seconds = options.eval_every_updates, options.eval_every
        taken = getattr(backend, "evaluations", None) if every_updates is not None else None
        next_updates = None if every_updates is None or taken is not None \
            else (resumed_updates // every_updates + 1) * every_updates
        next_seconds = every_seconds
        bar = progress_bar(total_updates, options.progress)
        bar.update(resumed_updates)
        try:
            while True:
                finished = backend.finished()  # read before the counts: a later row is the final one
                updates = backend.poll(next_updates)
                elapsed = backend.elapsed()
                if taken is not None:
                    for row_elapsed, row_updates, params in taken():
                        self._evaluate(params, row_updates, row_elapsed, bar)
                due = ((next_updates is not None and updates >= next_updates)
                       or (next_seconds is not None and elapsed >= next_seconds))
                if due and not backend.finished():  # a run that just ended gets its final row
                    self._evaluate(backend.snapshot(), updates, elapsed, bar)
                    if next_updates is not None:
                        next_updates = (updates // every_updates + 1) * every_updates
                    else:
                        next_seconds = backend.elapsed() + every_seconds
                self._show_stalls(bar)
                bar.update(updates - bar.n)
                if finished:
                    return
                signals.check()  # a stop signal received since the last poll stops the run here
                backend.wait()
        finally:
            bar.close()

    def _evaluate(self, params: np.ndarray, updates: int, elapsed: float, bar) -> None:
        """Score ``params`` now (or, deferring, keep them to score after the run) as the history
        row at ``updates`` and ``elapsed`` seconds."""
        if self.options.defer_evaluation:
            self._check_finite(params)
            self.deferred.append((elapsed, updates, params))
            return
        loss, accuracy = self.record(params, elapsed, updates)
        self.postfix.update(loss=f"{loss:.4g}", **({} if accuracy is None else {"acc": f"{accuracy:.4f}"}))
        bar.set_postfix(self.postfix, refresh=False)

    def _show_stalls(self, bar) -> None:
        """Show on the progress line (and log once each) the workers the backend reports as
        stalled for STALL_SECONDS: stopped, or starved of CPU."""
        stalled = getattr(self.backend, "stalled", None)
        if stalled is None:
            return
        idle = stalled(STALL_SECONDS)
        for worker in sorted(idle.keys() - self.stalled):
            log.warning("worker %d has made no progress for %.0f s (stopped, or starved of CPU)",
                        worker, idle[worker])
        if idle or self.stalled:
            self.stalled = set(idle)
            self.postfix.pop("stalled", None)
            if idle:
                self.postfix["stalled"] = " ".join(f"w{w}:{s:.0f}s" for w, s in sorted(idle.items()))
            bar.set_postfix(self.postfix, refresh=False)
