"""What one worker process runs: attach to the shared block, loop over numba chunks, refit.

Imports stay light (numpy, numba, the kernels): a worker never imports torch, scipy.sparse or the
data loaders.  The same :func:`run_worker` body serves every worker; only its id, shard and seed differ.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np

from hogwild_mts import kernels
from hogwild_mts.shared import Layout, SharedBlock

# Flags (int64 words of the "flags" field).
FLAG_GO = 0
FLAG_STOP = 1
# Worker states (column STAT_STATE of the stats row).
STAT_STATE = 3
STAT_REFITS = 4  # how many times this worker refitted its policy from the histogram
STATE_STARTING, STATE_READY, STATE_RUNNING, STATE_DONE, STATE_DIVERGED, STATE_FAILED = range(6)
# Columns of a worker's clock row (float64 seconds, time.perf_counter is not shared across
# processes, so wall-clock time.time() is used).
CLOCK_LOOP_START = 0
CLOCK_LOOP_END = 1

GO_POLL_SECONDS = 0.001
PAGE_BYTES = 4096
SHARED_READ_FIELDS = ("values", "indices", "indptr", "labels", "params")
REFIT_TIME_SHARE = 0.05  # refits may take at most this share of a worker's time


@dataclass
class WorkerSpec:
    """Everything a worker needs, picklable for the spawn start method."""

    block_name: str
    layout: Layout
    workers: int
    epochs: int
    batch_size: int
    chunk_updates: int
    seeds: list
    n_features: int
    dense: bool
    fit_intercept: bool
    loss_id: int
    l2: float
    stamp: bool
    policy: object
    parent_pid: int  # the process that started us, 0 when the worker is a thread of it


def shard_rows(n_samples: int, workers: int, worker_id: int) -> np.ndarray:
    """Rows owned by a worker: every ``workers``-th row starting at ``worker_id`` (int64)."""
    return np.arange(worker_id, n_samples, workers, dtype=np.int64)


def map_pages(views: dict) -> None:
    """Read one byte of every page of the shared data and parameters, so the page-table work of
    a freshly attached block happens before the start signal, not inside the timed loop."""
    for name in SHARED_READ_FIELDS:
        array = views[name]
        if array.size:
            int(array.view(np.uint8)[::PAGE_BYTES].sum())


def _stop_requested(flags, parent_pid) -> bool:
    """The stop flag is set, or (``parent_pid`` > 0) the parent process is gone."""
    return bool(flags[FLAG_STOP]) or (parent_pid > 0 and os.getppid() != parent_pid)


def run_worker(views: dict, spec: WorkerSpec, worker_id: int) -> int:
    """Train this worker's shard for ``spec.epochs`` epochs; return its final STATE_* value.

    Each epoch visits the shard in a fresh permutation from the worker's own seeded generator.
    Between chunks of ``chunk_updates`` updates the worker checks the stop flag and the parent,
    and every ``policy.refit_every`` of its updates refits the policy from all histogram rows --
    but never sooner than keeps refitting within REFIT_TIME_SHARE of its time (a slow fit, e.g.
    CMP on a long-tailed histogram, then runs less often instead of stalling training).
    """
    stats = views["stats"][worker_id]
    clock = views["clock"][worker_id]
    flags = views["flags"]
    hist_rows = views["hist"]
    policy = spec.policy
    policy.bind(spec.workers)
    alpha_table = np.ascontiguousarray(policy.table(), dtype=np.float64)
    refit_every = int(getattr(policy, "refit_every", 0) or 0)
    chunk_updates = min(spec.chunk_updates, refit_every) if refit_every > 0 else spec.chunk_updates
    chunk_rows = chunk_updates * spec.batch_size
    shard = shard_rows(views["indptr"].shape[0] - 1, spec.workers, worker_id)
    rng = np.random.default_rng(spec.seeds[worker_id])
    derivative_buffer = np.empty(spec.batch_size, dtype=np.float64)
    next_refit = refit_every
    refit_allowed_at = 0.0

    map_pages(views)
    stats[STAT_STATE] = STATE_READY
    while not flags[FLAG_GO]:
        if _stop_requested(flags, spec.parent_pid):
            return STATE_DONE
        time.sleep(GO_POLL_SECONDS)
    stats[STAT_STATE] = STATE_RUNNING
    clock[CLOCK_LOOP_START] = time.time()
    state = STATE_DONE
    for _ in range(spec.epochs):
        order = rng.permutation(shard)
        for chunk_start in range(0, order.shape[0], chunk_rows):
            if _stop_requested(flags, spec.parent_pid):
                break
            status = kernels.sgd_chunk(
                views["values"], views["indices"], views["indptr"], spec.dense, views["labels"],
                views["feature_scale"], order, chunk_start, min(chunk_start + chunk_rows, order.shape[0]),
                spec.batch_size, views["params"], spec.n_features, spec.fit_intercept, spec.loss_id,
                spec.l2, alpha_table, spec.stamp, views["counter"], hist_rows[worker_id], stats,
                derivative_buffer)
            if status == kernels.STATUS_DIVERGED:
                state = STATE_DIVERGED
                break
            if refit_every and stats[kernels.STAT_UPDATES] >= next_refit \
                    and time.perf_counter() >= refit_allowed_at:
                refit_started = time.perf_counter()
                policy.observe(hist_rows.sum(axis=0))
                alpha_table = np.ascontiguousarray(policy.table(), dtype=np.float64)
                stats[STAT_REFITS] += 1
                next_refit = stats[kernels.STAT_UPDATES] + refit_every
                refit_seconds = time.perf_counter() - refit_started
                refit_allowed_at = time.perf_counter() + refit_seconds * (1 / REFIT_TIME_SHARE - 1)
        else:
            continue
        break
    clock[CLOCK_LOOP_END] = time.time()
    stats[STAT_STATE] = state
    return state


def run_reporting_errors(views: dict, spec: WorkerSpec, worker_id: int, error_queue) -> bool:
    """run_worker; on an exception mark the worker failed, queue its traceback, return False."""
    try:
        run_worker(views, spec, worker_id)
        return True
    except BaseException:
        views["stats"][worker_id][STAT_STATE] = STATE_FAILED
        error_queue.put((worker_id, traceback.format_exc()))
        return False


def worker_main(spec: WorkerSpec, worker_id: int, error_queue) -> None:
    """Process entry point: ignore Ctrl-C (the parent stops us), attach, run, report errors."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    block = SharedBlock.attach(spec.block_name, spec.layout)
    try:
        succeeded = run_reporting_errors(block.views, spec, worker_id, error_queue)
    finally:
        block.close()
    if not succeeded:
        raise SystemExit(1)


class ThreadWorker(threading.Thread):
    """The single worker of a ``workers=1`` run, as a thread of the calling process.

    The numba loop releases the GIL, so the parent's watch loop runs beside it; there is no
    process start-up.  Offers the parts of the ``multiprocessing.Process`` API the engine uses.
    """

    pid = None

    def __init__(self, views: dict, spec: WorkerSpec, error_queue):
        super().__init__(name="hogwild-worker-0", daemon=True)
        self._views, self._spec, self._errors = views, spec, error_queue
        self.exitcode = None

    def run(self) -> None:
        succeeded = run_reporting_errors(self._views, self._spec, 0, self._errors)
        self.exitcode = 0 if succeeded else 1

    def terminate(self) -> None:
        """Threads cannot be killed; the stop flag ends the loop within one chunk."""

    kill = terminate
