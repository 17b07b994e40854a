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

from hogwild_mts.backends.shm import kernels
from hogwild_mts.core.control import (CLOCK_LOOP_END, CLOCK_LOOP_START, FLAG_GO, FLAG_STOP, STAT_REFITS,
                                      STAT_STATE, STAT_UPDATES, STATE_DONE, STATE_DIVERGED, STATE_FAILED,
                                      STATE_READY, STATE_RUNNING, STATUS_DIVERGED)
from hogwild_mts.backends.shm.block import Layout, SharedBlock

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


def total_updates(n_rows: int, workers: int, epochs: int, batch_size: int) -> int:
    """Updates a full run applies: per worker and epoch, its shard in batches (last one shorter)."""
    return epochs * sum(-(-len(shard_rows(n_rows, workers, w)) // batch_size)
                        for w in range(workers))


def map_pages(views: dict, names) -> None:
    """Read one byte of every page of the named shared fields, so the page-table work of a
    freshly attached block happens before the start signal, not inside the timed loop."""
    for name in names:
        flat_bytes = views[name].reshape(-1).view(np.uint8)
        if flat_bytes.size:
            int(flat_bytes[::PAGE_BYTES].sum())


def wait_for_go(views: dict, worker_id: int, parent_pid: int) -> bool:
    """Say READY, wait for the parent's start signal; False if told to stop first.  On True the
    worker is RUNNING and its loop-start time is stamped."""
    stats, flags = views["stats"][worker_id], views["flags"]
    stats[STAT_STATE] = STATE_READY
    while not flags[FLAG_GO]:
        if _stop_requested(flags, parent_pid):
            return False
        time.sleep(GO_POLL_SECONDS)
    stats[STAT_STATE] = STATE_RUNNING
    views["clock"][worker_id][CLOCK_LOOP_START] = time.time()
    return True


class Refitter:
    """A worker's copy of the policy and its refit schedule.

    Refits every ``policy.refit_every`` own updates from all histogram rows -- but never sooner
    than keeps refitting within REFIT_TIME_SHARE of the worker's time (a slow fit, e.g. CMP on a
    long-tailed histogram, then runs less often instead of stalling training).
    """

    def __init__(self, policy, workers: int, dtype):
        self.policy = policy
        self.dtype = dtype
        policy.bind(workers)
        self.table = np.ascontiguousarray(policy.table(), dtype=dtype)
        self.refit_every = int(getattr(policy, "refit_every", 0) or 0)
        self._next_refit = self.refit_every
        self._allowed_at = 0.0

    def maybe_refit(self, stats: np.ndarray, hist_rows: np.ndarray) -> None:
        """Refit (and count it in ``stats``) if this worker's update count and time budget allow."""
        if not self.refit_every or stats[STAT_UPDATES] < self._next_refit \
                or time.perf_counter() < self._allowed_at:
            return
        started = time.perf_counter()
        self.policy.observe(hist_rows.sum(axis=0))
        self.table = np.ascontiguousarray(self.policy.table(), dtype=self.dtype)
        stats[STAT_REFITS] += 1
        self._next_refit = stats[STAT_UPDATES] + self.refit_every
        spent = time.perf_counter() - started
        self._allowed_at = time.perf_counter() + spent * (1 / REFIT_TIME_SHARE - 1)


def _stop_requested(flags, parent_pid) -> bool:
    """The stop flag is set, or (``parent_pid`` > 0) the parent process is gone."""
    return bool(flags[FLAG_STOP]) or (parent_pid > 0 and os.getppid() != parent_pid)


def run_worker(views: dict, spec: WorkerSpec, worker_id: int) -> int:
    """Train this worker's shard for ``spec.epochs`` epochs; return its final STATE_* value.

    Each epoch visits the shard in a fresh permutation from the worker's own seeded generator.
    Between chunks of ``chunk_updates`` updates the worker checks the stop flag and the parent,
    and lets its :class:`Refitter` refit the policy: refits fall on chunk boundaries, so they
    come every ``max(refit_every, chunk_updates)`` updates at the most (a chunk is a few ms).
    """
    stats = views["stats"][worker_id]
    flags = views["flags"]
    hist_rows = views["hist"]
    refitter = Refitter(spec.policy, spec.workers, np.float64)
    chunk_rows = spec.chunk_updates * spec.batch_size
    shard = shard_rows(views["indptr"].shape[0] - 1, spec.workers, worker_id)
    rng = np.random.default_rng(spec.seeds[worker_id])
    derivative_buffer = np.empty(spec.batch_size, dtype=np.float64)

    def run_chunk(order, start: int, stop: int) -> int:
        return kernels.sgd_chunk(
            views["values"], views["indices"], views["indptr"], spec.dense, views["labels"],
            views["feature_scale"], order, start, stop, spec.batch_size, views["params"],
            spec.n_features, spec.fit_intercept, spec.loss_id, spec.l2, refitter.table, spec.stamp,
            views["counter"], hist_rows[worker_id], stats, derivative_buffer)

    run_chunk(shard, 0, 0)  # loads the compiled kernel from numba's cache before the clock starts
    map_pages(views, SHARED_READ_FIELDS)
    if not wait_for_go(views, worker_id, spec.parent_pid):
        return STATE_DONE
    state = STATE_DONE
    for _ in range(spec.epochs):
        order = rng.permutation(shard)
        for chunk_start in range(0, order.shape[0], chunk_rows):
            if _stop_requested(flags, spec.parent_pid):
                break
            status = run_chunk(order, chunk_start, min(chunk_start + chunk_rows, order.shape[0]))
            if status == STATUS_DIVERGED:
                state = STATE_DIVERGED
                break
            refitter.maybe_refit(stats, hist_rows)
        else:
            continue
        break
    return finish(views, worker_id, state)


def finish(views: dict, worker_id: int, state: int) -> int:
    """Stamp the loop-end time and the final state; return the state."""
    views["clock"][worker_id][CLOCK_LOOP_END] = time.time()
    views["stats"][worker_id][STAT_STATE] = state
    return state


def run_reporting_errors(run, views: dict, spec, worker_id: int, error_queue) -> bool:
    """``run(views, spec, worker_id)``; on an exception mark the worker failed, queue its
    traceback, return False."""
    try:
        run(views, spec, worker_id)
        return True
    except BaseException:
        error_queue.put((worker_id, traceback.format_exc()))  # before the state the parent polls
        views["stats"][worker_id][STAT_STATE] = STATE_FAILED
        return False


def process_main(run, spec, worker_id: int, error_queue, setup=None) -> None:
    """Body of a worker process: ignore Ctrl-C (the parent stops us), ``setup()`` if given,
    attach, run, report errors, exit with status 1 after a failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if setup is not None:
        setup()
    block = SharedBlock.attach(spec.block_name, spec.layout)
    try:
        succeeded = run_reporting_errors(run, block.views, spec, worker_id, error_queue)
    finally:
        block.close()
    if not succeeded:
        raise SystemExit(1)


def worker_main(spec: WorkerSpec, worker_id: int, error_queue) -> None:
    """Process entry point of a linear-model worker."""
    process_main(run_worker, spec, worker_id, error_queue)


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
        succeeded = run_reporting_errors(run_worker, self._views, self._spec, 0, self._errors)
        self.exitcode = 0 if succeeded else 1

    def terminate(self) -> None:
        """Threads cannot be killed; the stop flag ends the loop within one chunk."""

    kill = terminate
