"""The shared-memory backend: worker processes (or, for one worker, a thread) on one block.

The block holds the control fields of :mod:`hogwild_mts.core.control`, the parameters and the data
set; :class:`ShmBackend` implements :class:`hogwild_mts.core.lifecycle.Backend` over it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import warnings

import numpy as np

from hogwild_mts.kernels import linear as kernels
from hogwild_mts.backends.shm import worker
from hogwild_mts.backends.shm.block import Layout, SharedBlock, owner_named_semaphores
from hogwild_mts.backends.shm.fields import BlockViews
from hogwild_mts.core import control, signals
from hogwild_mts.core.lifecycle import POLL_SECONDS
from hogwild_mts.core.result import Diverged, RunState, RunTotals, WorkerError
from hogwild_mts.kernels.split import GENERATOR_WORDS, total_updates

JOIN_SECONDS = 10.0  # how long stopping workers may take before they are killed
FIRST_POLL_SECONDS = 0.0005  # a run's first wait; each next one doubles, up to POLL_SECONDS
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
START_METHODS = ("spawn", "forkserver", "fork")


def control_layout(workers: int, n_params: int, dtype) -> Layout:
    """The fields every run has: counter (own cache line), flags, per-worker stats, clock and
    histogram rows (each on whole cache lines), and the flat parameter vector."""
    layout = Layout()
    layout.add("counter", np.int64, (8,))  # word 0; the rest pads the cache line
    layout.add("flags", np.int64, (8,))
    layout.add_rows("stats", np.int64, workers, control.STAT_COLUMNS)
    layout.add_rows("clock", np.float64, workers, 2)
    layout.add_rows("hist", np.int64, workers, control.HIST_BINS)
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


def default_start_method() -> str:
    """``fork`` where the platform has it, else ``spawn``.  A forked worker starts in
    milliseconds with the parent's imports and compiled kernels, and reads the data set in the
    parent's own memory (huge pages where the OS gives them) instead of a shared-memory copy."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def start_processes(target, spec, workers: int, processes: list, start_method: str = "spawn",
                    name: str = "hogwild-worker", preload: tuple = ()):
    """Start ``workers`` processes running ``target(spec, worker_id, errors)``, appending each to
    ``processes`` once started (so a failure midway still stops those already running);
    return the queue they report errors on.

    ``fork``: the children inherit everything, ``spec.views`` included (the only method that may
    carry views: the others pickle the spec).  ``forkserver``: the server, if this call starts it,
    imports the ``preload`` modules once, and every later worker forks from it."""
    if start_method != "fork" and getattr(spec, "views", None) is not None:
        raise ValueError(f"start method {start_method!r} would pickle the parent's views into "
                         "every worker; only 'fork' may pass them")
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver" and preload:
        context.set_forkserver_preload(list(preload))
    errors = context.SimpleQueue()
    with one_thread_per_process():
        for worker_id in range(workers):
            process = context.Process(target=target, name=f"{name}-{worker_id}",
                                      args=(spec, worker_id, errors), daemon=True)
            process.start()
            processes.append(process)
    return errors


def worker_times(clock: np.ndarray, started: float) -> dict:
    """From the workers' clock rows (time.time() seconds) and the fit's start: ``startup_seconds``
    (``started`` to the first worker's loop start) and ``finish_spread_seconds`` (first worker's
    loop end to the last's), over the workers that ran; None for both when none ran."""
    ran = clock[:, control.CLOCK_LOOP_START] > 0
    ends = clock[ran, control.CLOCK_LOOP_END]
    ends = ends[ends > 0]
    if not ends.size:
        return {"startup_seconds": None, "finish_spread_seconds": None}
    return {"startup_seconds": float(clock[ran, control.CLOCK_LOOP_START].min() - started),
            "finish_spread_seconds": float(ends.max() - ends.min())}


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


def restore_state(views: BlockViews, spec, state: RunState) -> None:
    """Put a checkpoint's run state in a new block before the start: parameters, counter, the
    histogram and the counts (as worker 0's row), and the dynamic split's schedule."""
    views.params[:] = state.params
    views.counter[0] = state.counter
    views.hist[0, :state.histogram.size] = state.histogram
    stats = views.stats[0]
    stats[control.STAT_UPDATES], stats[control.STAT_SAMPLES] = state.updates, state.samples
    stats[control.STAT_MAX_TAU], stats[control.STAT_REFITS] = state.max_staleness, state.refits
    worker.restore_schedule(views, spec, state.position, state.order_generator)
    if state.velocity is not None and views.velocity0 is not None:
        views.velocity0[:] = state.velocity


class CheckpointWriter:
    """The parent's side of a linear run's checkpoints on the shared block (the worker's side:
    :class:`hogwild_mts.backends.shm.worker.Snapshotter`): ``write(RunState)`` each snapshot
    worker 0 takes, then tell it the fields are free again; after the run, the final state."""

    def __init__(self, views: BlockViews, spec, write):
        self.views, self.spec, self._write = views, spec, write
        self._write_failed = False
        self.total_batches = total_updates(views.orders.shape[1], spec.workers,
                                                  spec.epochs, spec.batch_size)

    def poll(self) -> None:
        """Write the snapshot worker 0 took, if it has not been written yet -- unless its
        parameters are not finite (a diverging run: the last good checkpoint stays).  A write
        that fails (a full disk) is a RuntimeWarning, once: training goes on, and the previous
        checkpoint is still whole."""
        words = self.views.snapshot_words
        taken = int(kernels.load_word(words, worker.SNAP_TAKEN))
        if taken <= words[worker.SNAP_WRITTEN]:
            return
        params = self.views.snapshot_params.astype(np.float64)
        if np.isfinite(params).all():
            try:
                self._write(self._snapshot_state(words, params))
            except OSError as error:
                if not self._write_failed:
                    warnings.warn(f"{error}; training goes on, the previous checkpoint stays",
                                  RuntimeWarning, stacklevel=2)
                self._write_failed = True
        kernels.store_word(words, worker.SNAP_WRITTEN, taken)

    def _snapshot_state(self, words, params: np.ndarray) -> RunState:
        """The RunState of the snapshot fields worker 0 filled."""
        position = int(words[worker.SNAP_POSITION])
        return RunState(
            params=params,
            counter=int(words[worker.SNAP_COUNTER]), histogram=self.views.snapshot_hist.copy(),
            updates=int(words[worker.SNAP_UPDATES]), samples=int(words[worker.SNAP_SAMPLES]),
            max_staleness=int(words[worker.SNAP_MAX_TAU]), refits=int(words[worker.SNAP_REFITS]),
            position=position, finished=position >= self.total_batches,
            order_generator=words.view(np.uint64)[worker.SNAP_GENERATOR:
                                                  worker.SNAP_GENERATOR + GENERATOR_WORDS].copy(),
            velocity=None if self.views.snapshot_velocity is None else self.views.snapshot_velocity.copy())

    def final(self, totals: RunTotals, params: np.ndarray) -> None:
        """Write the state the workers left (call after they have all stopped): ``totals`` and
        ``params`` as :meth:`ShmBackend.collect` and :meth:`ShmBackend.snapshot` gave them."""
        schedule = worker.schedule_state(self.views, self.spec)
        if schedule is None:  # cannot happen once every worker has stopped; keep the last one
            return
        position, generator = schedule
        self._write(RunState(
            params=params.astype(np.float64), counter=totals.counter, histogram=totals.histogram,
            updates=totals.updates, samples=totals.samples, max_staleness=totals.max_staleness,
            refits=totals.refits, position=position,
            order_generator=generator, finished=position >= self.total_batches,
            velocity=None if self.views.velocity0 is None else self.views.velocity0.copy()))


class EvaluationReader:
    """The parent's side of update-triggered evaluations (the workers':
    :class:`hogwild_mts.backends.shm.worker.EvaluationTaker`): hands out each published slot
    once, in slot order.  A slot nobody claimed while the run's count was in its window is
    skipped (one copy's count passed its window; a late claim of it is never handed out)."""

    def __init__(self, views: BlockViews, stamp: bool):
        self.views, self.stamp = views, stamp
        self._next = 0  # the first slot not handed out or skipped yet

    def taken(self, origin: float) -> list:
        """``[(seconds since origin, updates, parameter copy), ...]`` of the slots published since
        the last call (``origin``: time.time() seconds)."""
        views = self.views
        first, every = (int(word) for word in views.eval_words[[worker.EVAL_FIRST, worker.EVAL_EVERY]])
        updates = worker.run_updates(views, self.stamp)
        rows = []
        while self._next < views.eval_done.shape[0]:
            slot = self._next
            if kernels.load_word(views.eval_done, slot):  # an acquire: the copy is whole
                rows.append((float(views.eval_times[slot]) - origin, int(views.eval_updates[slot]),
                             views.eval_params[slot].copy()))
            elif views.eval_claims[slot] or updates < first + (slot + 1) * every:
                break  # being copied, or its window is still open
            self._next += 1
        return rows


class ShmBackend:
    """Workers on one shared block.  ``launch(views, processes) -> error queue`` starts them
    (appending each to ``processes``: processes, or a ThreadWorker for one worker).  The block
    is released by :meth:`close`.  ``checkpoints``: None or a :class:`CheckpointWriter`, polled
    with the workers and asked for the final state by :meth:`final_checkpoint`.
    ``evaluations``: None (the parent copies the parameters when an evaluation is due) or an
    :class:`EvaluationReader` over the copies the workers take (update-triggered evaluations)."""

    def __init__(self, block: SharedBlock, workers: int, launch, checkpoints=None,
                 evaluations: EvaluationReader | None = None):
        self.block, self.workers, self._launch = block, workers, launch
        self._checkpoints = checkpoints
        # the lifecycle's optional ``evaluations`` (None: the parent copies the parameters)
        self.evaluations = None if evaluations is None else lambda: evaluations.taken(self._origin())
        self.views = block.views
        self.processes: list = []
        self._errors = None
        self._go_time = 0.0
        self._poll_seconds = FIRST_POLL_SECONDS / 2
        self._last_updates = self._moved_at = None  # per worker, for stalled()

    def start(self) -> None:
        # Workers inherit blocked stop signals (the parent stops them through the stop flag) and
        # semaphores named after this process (so that leftovers can be told apart).
        with signals.blocked_for_children(), owner_named_semaphores():
            self._errors = self._launch(self.views, self.processes)

    def _check(self) -> None:
        """Raise WorkerError for a worker that reported an exception or exited abnormally, and
        Diverged for one that stopped on a NaN/inf."""
        if self._errors is not None and not self._errors.empty():
            worker_id, text = self._errors.get()
            raise WorkerError(f"worker {worker_id} failed: {text}")
        for worker_id, process in enumerate(self.processes):
            code = process.exitcode
            if code is None or code == 0:
                continue
            how = (f"was killed by signal {signal.Signals(-code).name}" if code < 0
                   else f"exited with code {code}")
            raise WorkerError(f"worker {worker_id} (pid {process.pid}) {how}; the run was stopped")
        if np.any(self.views.stats[:, control.STAT_STATE] == control.STATE_DIVERGED):
            raise Diverged("a worker's loss")

    def ready(self) -> bool:
        self._check()
        return bool(np.all(self.views.stats[:, control.STAT_STATE] >= control.STATE_READY))

    def go(self) -> None:
        self._go_time = time.time()
        self.views.flags[control.FLAG_GO] = 1

    def stalled(self, seconds: float) -> dict:
        """{worker id: seconds} of the workers not yet done whose update count has not moved for
        at least ``seconds`` (measured between calls; call it every poll)."""
        now = time.monotonic()
        stats = self.views.stats
        updates = stats[:, control.STAT_UPDATES].copy()
        working = stats[:, control.STAT_STATE] < control.STATE_DONE
        if self._moved_at is None:
            self._last_updates, self._moved_at = updates, np.full(updates.shape, now)
        self._moved_at[(updates != self._last_updates) | ~working] = now
        self._last_updates = updates
        idle = now - self._moved_at
        return {int(w): float(idle[w]) for w in np.flatnonzero(working & (idle >= seconds))}

    def poll(self, until_updates=None) -> int:
        self._check()
        if self._checkpoints is not None:
            self._checkpoints.poll()
        return int(self.views.stats[:, control.STAT_UPDATES].sum())

    def final_checkpoint(self, totals: RunTotals, params: np.ndarray) -> None:
        """Write the run's last checkpoint (after ``join``; ``totals`` from :meth:`collect`,
        ``params`` from :meth:`snapshot`), if the run keeps checkpoints."""
        if self._checkpoints is not None:
            self._checkpoints.final(totals, params)

    def finished(self) -> bool:
        return bool(np.all(self.views.stats[:, control.STAT_STATE] >= control.STATE_DONE)
                    or not any(p.is_alive() for p in self.processes))

    def _origin(self) -> float:
        """time.time() when the first worker entered its loop (the origin of ``train_seconds`` in
        :meth:`collect`, so history rows and the final row share one clock); go's before."""
        starts = self.views.clock[:, control.CLOCK_LOOP_START]
        started = starts[starts > 0]
        return float(started.min()) if started.size else self._go_time

    def elapsed(self) -> float:
        return time.time() - self._origin()

    def snapshot(self) -> np.ndarray:
        return np.array(self.views.params)

    def wait(self) -> None:
        """Wait one poll period, or until a worker ends.  The first periods of a run are short
        (FIRST_POLL_SECONDS, doubling up to POLL_SECONDS), so a short run (an epoch of a small
        data set, as the estimators run them) is not held up by the polling."""
        self._poll_seconds = min(POLL_SECONDS, 2 * self._poll_seconds)
        alive = [process for process in self.processes if process.is_alive()]
        if alive and isinstance(alive[0], threading.Thread):
            alive[0].join(self._poll_seconds)
        elif alive:
            multiprocessing.connection.wait([process.sentinel for process in alive], self._poll_seconds)
        else:
            time.sleep(self._poll_seconds)

    def request_stop(self) -> None:
        if self.views.flags is not None:
            self.views.flags[control.FLAG_STOP] = 1

    def join(self) -> None:
        for process in self.processes:  # a stopped (SIGSTOP) worker resumes, sees the flag, leaves
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
        join(self.processes)

    def collect(self) -> RunTotals:
        stats, clock = self.views.stats, self.views.clock
        ran = clock[:, control.CLOCK_LOOP_START] > 0
        train_seconds = max(0.0, float(clock[ran, control.CLOCK_LOOP_END].max()
                                       - clock[ran, control.CLOCK_LOOP_START].min())) if ran.any() else 0.0
        return RunTotals(updates=int(stats[:, control.STAT_UPDATES].sum()),
                         counter=int(self.views.counter[0]),
                         samples=int(stats[:, control.STAT_SAMPLES].sum()),
                         histogram=self.views.hist[:, :control.HIST_BINS].sum(axis=0),
                         max_staleness=int(stats[:, control.STAT_MAX_TAU].max()),
                         refits=int(stats[:, control.STAT_REFITS].sum()),
                         train_seconds=train_seconds)

    def close(self) -> None:
        self.block.release()
        self.views = BlockViews()
