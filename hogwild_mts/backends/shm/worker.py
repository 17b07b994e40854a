"""What one worker process runs: attach to the shared block (or use the views a forked worker
inherited), loop over numba chunks of claimed rows, refit.

Imports stay light (numpy, numba, the kernels): a worker never imports torch, scipy.sparse or the
data loaders.  The same :func:`run_worker` body serves every worker; only its id differs.

How rows reach the workers (``split``):

* ``"dynamic"`` (default): every epoch is one order of all rows, split into batches
  (the last one shorter); workers claim runs of batches from one shared cursor
  (:func:`hogwild_mts.kernels.linear.claim_batches`, guided: claims shrink towards the end),
  so a worker slowed by the OS leaves no others idle: all end within about one small claim.
  The orders live in two shared slots: epoch 0's is drawn by the parent before the start; the
  worker whose claim holds the middle batch of epoch ``e`` draws epoch ``e + 1``'s into the other
  slot (once every batch of epoch ``e - 1`` is finished), continuing one generator whose state is
  kept in the block.  So the orders are those of ``default_rng(seeds[0]).permutation(n)``, epoch
  after epoch, whatever the number of workers: one worker visits exactly the rows and order of
  the static split with one worker (and of the simulator).
* ``"static"``: worker ``w`` owns rows ``w, w + m, ...`` and shuffles them every epoch with its own
  generator ``default_rng(seeds[w])`` (what the simulator emulates for ``m > 1``).

``shuffle=False`` (``spec.shuffle``) keeps every epoch's rows in their stored order: the dynamic
split's slots hold ``0 .. n - 1``, and a static worker visits ``w, w + m, ...`` in that order
(:func:`hogwild_mts.kernels.split.epoch_order` makes every order; the generator then draws nothing).

Checkpoints (dynamic split; :mod:`hogwild_mts.checkpoint`): each worker publishes in its
``positions`` row the first batch of its claim not yet finished (the cursor just before it
claims; NO_POSITION once nothing is left), so the run's resumable position is
``min(cursor, positions)``; worker 0 copies the run's
state into the ``snapshot_*`` fields between two pieces when a checkpoint is due and the parent
has written the previous one (:class:`Snapshotter`); :func:`restore_schedule` sets a resumed
run's schedule up from a position and the order generator's state.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np

from hogwild_mts.kernels import linear as kernels
from hogwild_mts.core.control import (CLOCK_LOOP_END, CLOCK_LOOP_START, FLAG_GO, FLAG_STOP, HIST_BINS,
                                      STAT_MAX_TAU, STAT_REFITS, STAT_SAMPLES, STAT_STATE, STAT_UPDATES,
                                      STATE_DONE, STATE_DIVERGED, STATE_FAILED, STATE_READY,
                                      STATE_RUNNING, STATUS_DIVERGED)
from hogwild_mts.backends.shm.block import Layout, SharedBlock
from hogwild_mts.core.files import process_alive
from hogwild_mts.backends.shm.fields import BlockViews
from hogwild_mts.job import CONSTANT_STEPS, StepSchedule
from hogwild_mts.kernels.split import GENERATOR_WORDS, epoch_order, sharded_pieces
from hogwild_mts.policies.refit import Refitter

GO_POLL_SECONDS = 0.001
ORDER_POLL_SECONDS = 0.0001  # waiting for an epoch order (rare: it is drawn half an epoch ahead)
PAGE_BYTES = 4096
SHARED_READ_FIELDS = ("values", "indices", "indptr", "labels", "sample_weight", "params", "orders")
MIN_CLAIM_UPDATES = 64  # smallest claim of a linear worker (updates), a few tens of microseconds

# Words of the "schedule" field of the dynamic split (int64).  The cursor has a cache line alone.
SCHED_CURSOR = 0  # next batch to claim, counted over the run: epoch e holds e*B .. e*B + B - 1
SCHED_READY = 8  # 2 words: slot s holds the order of epoch (value - 1); 0: none yet
SCHED_DONE = 10  # 2 words: batches finished from slot s, summed over the epochs it held
SCHED_RNG = 16  # 6 words: the order generator's PCG64 state after the last order drawn
SCHED_SLOT_RNG = 24  # 2 x 6 words: the generator's state before slot s's order was drawn
SCHEDULE_WORDS = 40
_WORD = (1 << 64) - 1
NO_POSITION = np.iinfo(np.int64).max  # the position of a worker with nothing left to claim

# Words of the "snapshot_words" field (int64): what worker 0 copied besides parameters and histogram.
SNAP_TAKEN = 0  # snapshots taken; the fields hold the last one
SNAP_COUNTER, SNAP_UPDATES, SNAP_SAMPLES, SNAP_MAX_TAU, SNAP_REFITS, SNAP_POSITION = range(1, 7)
SNAP_WRITTEN = 8  # snapshots the parent has written (its own cache line)
SNAP_GENERATOR = 16  # 6 words: the order generator before the epoch of SNAP_POSITION
SNAPSHOT_WORDS = 24

# Update-triggered evaluations: words of the "eval_words" field (int64), then per slot k a claim
# word, a done word, the update count and time of its copy, and the copy of the parameters.
# Slot k is due once the run has applied EVAL_FIRST + k * EVAL_EVERY updates, and stays the
# slot to take until EVAL_FIRST + (k + 1) * EVAL_EVERY.
EVAL_FIRST, EVAL_EVERY = 0, 1
EVAL_WORDS = 8
EVAL_MAX_BYTES = 1 << 30  # largest space for the parameter copies of one run


@dataclass
class WorkerSpec:
    """Everything a worker needs; picklable for the spawn and forkserver start methods."""

    block_name: str
    layout: Layout
    workers: int
    epochs: int
    batch_size: int
    chunk_updates: int  # updates per numba call at most (the largest claim)
    seeds: list
    n_features: int
    dense: bool
    fit_intercept: bool
    terms: kernels.Terms  # the model's loss and penalties
    stamp: bool
    policy: object
    parent_pid: int  # the process that started us, 0 when the worker is a thread of it
    split: str = "dynamic"  # one of SPLITS
    shuffle: bool = True  # False: every epoch visits the rows in stored order
    momentum: float = 0.0  # 0: plain SGD; else each worker keeps a private velocity (worker_buffers)
    views: BlockViews | None = None  # the parent's views, inherited by forked workers (never pickled)
    checkpoint_every_seconds: float | None = None  # worker 0's snapshot schedule (None: never)
    checkpoint_every_updates: int | None = None
    schedule: StepSchedule = CONSTANT_STEPS  # the step schedule (t0, power; optimal's base step)
    average_start: int | None = None  # averaged SGD: the first averaged update; None: off
    start_update: int = 0  # the global update number of the run's first update (the schedule's and average's t)


def worker_buffers(spec, stats: np.ndarray, hist: np.ndarray, views: BlockViews | None = None,
                   worker_id: int = -1) -> kernels.WorkerBuffers:
    """A worker's :class:`kernels.WorkerBuffers` on its ``stats`` and ``hist`` rows: scratch for
    one batch; when ``spec.momentum`` is not 0, zero velocity (worker 0 of a checkpointed run:
    the block's ``velocity0``, restored by a resume) and unmarked coordinates; with an L1
    penalty, the block's shared ``l1_applied`` and ``l1_totals`` (row ``worker_id``; scratch
    zeros without ``views``)."""
    derivatives = np.empty(spec.batch_size, dtype=np.float64)
    n_params = spec.n_features + int(spec.fit_intercept)
    velocity, touched = kernels.NO_VELOCITY, kernels.NO_MARKS
    if spec.momentum != 0.0:
        kept = views is not None and worker_id == 0 and views.velocity0 is not None
        velocity = views.velocity0 if kept else np.zeros(n_params)
        touched = np.full(n_params, -1, dtype=np.int64)
    applied, totals = kernels.NO_APPLIED, kernels.NO_TOTALS
    if spec.terms.l1 != 0.0:
        if views is not None and views.l1_applied is not None:
            applied, totals = views.l1_applied, views.l1_totals
        else:
            applied, totals = np.zeros(spec.n_features), np.zeros((1, kernels.TOTALS_COLUMNS))
    averaged, marks = kernels.NO_AVERAGE, kernels.NO_MARKS
    if spec.average_start is not None:
        if views is not None and views.averaged is not None:
            averaged, marks = views.averaged, views.averaged_marks
        else:
            averaged, marks = np.zeros(n_params), np.zeros(n_params, np.int64)
    return kernels.WorkerBuffers(stats, hist, derivatives, velocity, touched, applied, totals,
                                 max(worker_id, 0), averaged, marks, spec.average_start or 0,
                                 spec.start_update)


def averaged_iterates(spec) -> int:
    """The averaged iterates the run's averaged parameters cover when it starts: those of the
    ``spec.start_update`` updates before it (0 for a run from update 0)."""
    return max(0, spec.start_update - spec.average_start)


def add_average_fields(layout: Layout, n_params: int) -> None:
    """The shared state of averaged SGD (:mod:`hogwild_mts.kernels.linear`): the averaged
    parameters and how many iterates each coordinate's mean covers."""
    layout.add("averaged", np.float64, (n_params,))
    layout.add("averaged_marks", np.int64, (n_params,))


def averaged_params(views: BlockViews, spec) -> np.ndarray | None:
    """The averaged parameters at the end of a run with averaging (None without): every mean
    brought up to the run's last update (:func:`kernels.finish_average`)."""
    if spec.average_start is None:
        return None
    count = spec.start_update + run_updates(views, spec.stamp) - spec.average_start
    return kernels.finish_average(views.averaged, views.averaged_marks, views.params, count)


def add_l1_fields(layout: Layout, workers: int, n_features: int) -> None:
    """The shared state of the cumulative L1 penalty (:mod:`hogwild_mts.kernels.linear`): the
    penalty each weight received, and one row per worker of its own total."""
    layout.add("l1_applied", np.float64, (n_features,))
    layout.add_rows("l1_totals", np.float64, workers, 1)


def step_table(refitter: Refitter, schedule: StepSchedule):
    """``table()``: the refitter's current alpha(tau) table shaped by the step schedule
    (:meth:`hogwild_mts.job.StepSchedule.shaped`), shaped again only after a refit."""
    shaped = {"source": None, "table": None}

    def table():
        current = refitter.table
        if shaped["source"] is not current:
            shaped["source"], shaped["table"] = current, schedule.shaped(current)
        return shaped["table"]

    return table


def chunk_runner(views: BlockViews, spec, buffers: kernels.WorkerBuffers, table):
    """``run_chunk(order, start, stop) -> STATUS_*``: the spec's SGD kernel variant on the rows
    and parameters of ``views``, stepping with ``table()`` (the current alpha(tau) table) and
    the spec's schedule.  ``run_chunk(kernels.NO_ROWS, 0, 0)`` only compiles or loads the kernel
    for these types."""
    terms = spec.terms
    kernel = kernels.sgd_kernel(spec.dense, spec.fit_intercept, terms.l2, spec.stamp)
    rows = views.rows()
    params, counter = views.params, views.counter
    t0, power = spec.schedule.t0, spec.schedule.power

    def run_chunk(order, start: int, stop: int) -> int:
        return kernel(rows, order, start, stop, spec.batch_size, params, spec.n_features,
                      terms, spec.momentum, table(), t0, power, counter, buffers)

    return run_chunk


def add_schedule(layout: Layout, n_rows: int, split: str) -> None:
    """Add the shared fields of the dynamic split: the schedule words and two order slots."""
    if split == "dynamic":
        layout.add("schedule", np.int64, (SCHEDULE_WORDS,))
        layout.add("orders", np.int64, (2, n_rows))


def add_checkpoint_fields(layout: Layout, workers: int, n_params: int, dtype,
                          momentum: float = 0.0) -> None:
    """Add what checkpoints of a dynamic-split run need: the workers' positions and the
    snapshot fields; with momentum also the copy of worker 0's velocity (see
    :func:`add_velocity_field`)."""
    layout.add_rows("positions", np.int64, workers, 1)
    layout.add("snapshot_words", np.int64, (SNAPSHOT_WORDS,))
    layout.add("snapshot_params", dtype, (n_params,))
    layout.add("snapshot_hist", np.int64, (HIST_BINS,))
    if momentum:
        layout.add("snapshot_velocity", np.float64, (n_params,))


def add_velocity_field(layout: Layout, n_params: int) -> None:
    """``velocity0``: worker 0 keeps its momentum velocity in the block (written by worker 0
    only), so that checkpoints can save it and a resume restore it; the other workers' stay
    private."""
    layout.add("velocity0", np.float64, (n_params,))


def evaluation_slots(every: int | None, total: int, resumed: int) -> tuple[int, int] | None:
    """(the update count of the first update-triggered evaluation, the number of slots) for a
    run that ends at ``total`` updates, starts at ``resumed`` and evaluates every ``every``
    updates; None when ``every`` is None (evaluations on a time schedule)."""
    if every is None:
        return None
    first = (resumed // every + 1) * every
    return first, max(0, (total - first) // every + 1)


def add_evaluation_fields(layout: Layout, slots: int, n_params: int, dtype) -> None:
    """Add the fields of update-triggered evaluations (:class:`EvaluationTaker`): ``slots``
    copies of the parameters.  ValueError when they would take more than EVAL_MAX_BYTES."""
    size = slots * n_params * np.dtype(dtype).itemsize
    if size > EVAL_MAX_BYTES:
        raise ValueError(
            f"eval_every_updates asks for {slots} copies of {n_params} parameters "
            f"({size / 2**20:.0f} MiB); at most {EVAL_MAX_BYTES / 2**20:.0f} MiB are allowed: "
            f"evaluate about {-(-size // EVAL_MAX_BYTES)} times less often")
    layout.add("eval_words", np.int64, (EVAL_WORDS,))
    for name in ("eval_claims", "eval_done", "eval_updates"):
        layout.add(name, np.int64, (slots,))
    layout.add("eval_times", np.float64, (slots,))
    layout.add("eval_params", dtype, (slots, n_params))


def prepare_evaluations(views: BlockViews, first: int, every: int) -> None:
    """Parent, before the start: slot k is due at ``first + k * every`` updates."""
    views.eval_words[[EVAL_FIRST, EVAL_EVERY]] = first, every


def run_updates(views: BlockViews, stamp: bool) -> int:
    """The updates the run has applied so far: the counter of a stamped run (each update
    claims one count before it writes), else the sum of the workers' counts."""
    if stamp:
        return int(kernels.load_word(views.counter, 0))
    return int(views.stats[:, STAT_UPDATES].sum())


def load_schedule_kernels() -> None:
    """Compile or load the claim kernels on scratch words (parent and spawned workers), so that
    no compilation happens while a run is timed."""
    words = np.zeros(SCHEDULE_WORDS, np.int64)
    kernels.claim_batches(words, SCHED_CURSOR, 1, 1, 1, 1, 1)
    kernels.add_word(words, SCHED_DONE, 1)
    kernels.store_word(words, SCHED_READY, kernels.load_word(words, SCHED_DONE))


def prepare_schedule(views: BlockViews, spec) -> None:
    """Parent, before the start: draw epoch 0's order (dynamic split; nothing for static)."""
    if spec.split == "dynamic":
        _draw_order(views, np.random.default_rng(spec.seeds[0]), 0, spec.shuffle)
        if views.positions is not None:
            views.positions[:, 0] = NO_POSITION


def restore_schedule(views: BlockViews, spec, position: int, generator_words: np.ndarray) -> None:
    """Parent, before the start of a resumed run: the dynamic split's words and orders as they
    were when batches ``0 .. position - 1`` were done and no later one was claimed.
    ``generator_words``: the order generator's state before the order of epoch
    ``position // per_epoch`` was drawn (:func:`schedule_state`)."""
    words = views.schedule
    per_epoch = -(-views.orders.shape[1] // spec.batch_size)
    epoch = position // per_epoch
    words[:] = 0
    _draw_order(views, _generator(np.asarray(generator_words, dtype=np.uint64)), epoch, spec.shuffle)
    words[SCHED_READY + (epoch + 1) % 2] = epoch  # the other slot held epoch - 1 (done), or none
    for done_epoch in range(epoch):
        words[SCHED_DONE + done_epoch % 2] += per_epoch
    words[SCHED_DONE + epoch % 2] += position - epoch * per_epoch
    if epoch * per_epoch + per_epoch // 2 < position and epoch + 1 < spec.epochs:
        # drawn at the middle batch
        _draw_order(views, _saved_generator(words), epoch + 1, spec.shuffle)
    words[SCHED_CURSOR] = position
    if views.positions is not None:
        views.positions[:, 0] = NO_POSITION


def schedule_state(views: BlockViews, spec) -> tuple[int, np.ndarray] | None:
    """(the first batch not surely done: ``min(cursor, positions)``, the order generator's state
    before that batch's epoch was drawn) of a dynamic-split run with checkpoint fields; a
    finished run gives (its batches, zeros).  None when that epoch's slot does not hold it (a
    snapshot racing another worker's draw)."""
    words, orders = views.schedule, views.orders
    per_epoch = -(-orders.shape[1] // spec.batch_size)
    total = spec.epochs * per_epoch
    position = min(int(kernels.load_word(words, SCHED_CURSOR)), int(views.positions[:, 0].min()), total)
    if position == total:
        return position, np.zeros(GENERATOR_WORDS, np.uint64)
    epoch = position // per_epoch
    slot = epoch % 2
    if kernels.load_word(words, SCHED_READY + slot) != epoch + 1:
        return None
    first = SCHED_SLOT_RNG + GENERATOR_WORDS * slot
    return position, words.view(np.uint64)[first:first + GENERATOR_WORDS].copy()


def _draw_order(views: BlockViews, rng: np.random.Generator, epoch: int, shuffle: bool) -> None:
    """Put epoch ``epoch``'s order of all rows (:func:`epoch_order`) into its slot, save the
    generator (before and after), then publish the slot."""
    slot, words = views.orders[epoch % 2], views.schedule
    before = SCHED_SLOT_RNG + GENERATOR_WORDS * (epoch % 2)
    words.view(np.uint64)[before:before + GENERATOR_WORDS] = _generator_words(rng)
    slot[:] = epoch_order(np.arange(slot.shape[0]), rng, shuffle)
    words.view(np.uint64)[SCHED_RNG:SCHED_RNG + GENERATOR_WORDS] = _generator_words(rng)
    kernels.store_word(words, SCHED_READY + epoch % 2, epoch + 1)


def _generator_words(rng: np.random.Generator) -> list:
    """``rng``'s PCG64 state as GENERATOR_WORDS unsigned 64-bit words."""
    state = rng.bit_generator.state
    inner = state["state"]
    return [inner["state"] & _WORD, inner["state"] >> 64, inner["inc"] & _WORD, inner["inc"] >> 64,
            state["has_uint32"], state["uinteger"]]


def _saved_generator(words: np.ndarray) -> np.random.Generator:
    """The generator whose state the schedule words keep after the last order drawn."""
    return _generator(words.view(np.uint64)[SCHED_RNG:SCHED_RNG + GENERATOR_WORDS])


def _generator(state_words: np.ndarray) -> np.random.Generator:
    """A generator in the state of :func:`_generator_words`."""
    low_state, high_state, low_inc, high_inc, has_uint32, uinteger = (int(w) for w in state_words)
    bit_generator = np.random.PCG64()
    bit_generator.state = {"bit_generator": "PCG64",
                           "state": {"state": low_state | high_state << 64, "inc": low_inc | high_inc << 64},
                           "has_uint32": has_uint32, "uinteger": uinteger}
    return np.random.Generator(bit_generator)


def _wait_for_word(views: BlockViews, index: int, value: int, parent_pid: int) -> bool:
    """Wait until schedule word ``index`` reaches ``value``; False if told to stop first."""
    words, flags = views.schedule, views.flags
    while kernels.load_word(words, index) < value:
        if _stop_requested(flags, parent_pid):
            return False
        time.sleep(ORDER_POLL_SECONDS)
    return True


def claimed_pieces(views: BlockViews, spec, max_claim: int, min_claim: int, worker_id: int = 0):
    """Dynamic split: yield ``(order, start, stop)``, rows ``order[start:stop]`` to train on in
    batches of ``spec.batch_size``, claim after claim until the run's batches are gone (or a wait
    is cut short by a stop request).  A piece counts as finished when the next one is asked for.
    With checkpoint fields, the worker's position is the first batch of its claim not finished
    (never above a batch it may still run: the cursor is published before each claim)."""
    words, orders = views.schedule, views.orders
    n_rows, batch = orders.shape[1], spec.batch_size
    per_epoch = -(-n_rows // batch)
    total = spec.epochs * per_epoch
    position = views.positions[worker_id] if views.positions is not None else np.zeros(1, np.int64)
    while True:
        position[0] = kernels.load_word(words, SCHED_CURSOR)
        first, end = kernels.claim_batches(words, SCHED_CURSOR, total, spec.workers, per_epoch,
                                           max_claim, min_claim)
        position[0] = first
        while first < end:
            epoch = first // per_epoch
            stop = min(end, (epoch + 1) * per_epoch)
            if not _wait_for_word(views, SCHED_READY + epoch % 2, epoch + 1, spec.parent_pid):
                return
            middle = epoch * per_epoch + per_epoch // 2
            if first <= middle < stop and epoch + 1 < spec.epochs:
                # the slot of epoch + 1 held epoch - 1: wait until its batches are finished
                if not _wait_for_word(views, SCHED_DONE + (epoch + 1) % 2,
                                      per_epoch * ((epoch + 1) // 2), spec.parent_pid):
                    return
                _draw_order(views, _saved_generator(words), epoch + 1, spec.shuffle)
            offset = epoch * per_epoch
            yield orders[epoch % 2], (first - offset) * batch, min((stop - offset) * batch, n_rows)
            kernels.add_word(words, SCHED_DONE + epoch % 2, stop - first)
            first = position[0] = stop
        if end >= total:
            position[0] = NO_POSITION
            return


def row_pieces(views: BlockViews, spec, worker_id: int, n_rows: int, max_claim: int, min_claim: int):
    """The pieces of rows this worker trains on under ``spec.split`` (see the module docstring);
    ``max_claim``/``min_claim`` in batches."""
    if spec.split == "dynamic":
        return claimed_pieces(views, spec, max_claim, min_claim, worker_id)
    return sharded_pieces(n_rows, spec, worker_id, max_claim)


def map_pages(views: BlockViews, names) -> None:
    """Read one byte of every page of the named fields present, so the page-table work of a
    freshly attached block happens before the start signal, not inside the timed loop."""
    for name in names:
        field = getattr(views, name)
        if field is None:
            continue
        flat_bytes = field.reshape(-1).view(np.uint8)
        if flat_bytes.size:
            int(flat_bytes[::PAGE_BYTES].sum())


def wait_for_go(views: BlockViews, worker_id: int, parent_pid: int) -> bool:
    """Say READY, wait for the parent's start signal; False if told to stop first.  On True the
    worker is RUNNING and its loop-start time is stamped."""
    stats, flags = views.stats[worker_id], views.flags
    stats[STAT_STATE] = STATE_READY
    while not flags[FLAG_GO]:
        if _stop_requested(flags, parent_pid):
            return False
        time.sleep(GO_POLL_SECONDS)
    stats[STAT_STATE] = STATE_RUNNING
    views.clock[worker_id][CLOCK_LOOP_START] = time.time()
    return True


class Snapshotter:
    """Worker 0's checkpoint schedule: between two pieces, once the run's update count has
    crossed the next multiple of ``spec.checkpoint_every_updates`` or
    ``spec.checkpoint_every_seconds`` have passed since the last snapshot (or the start), copy
    the run's state into the snapshot fields -- unless the parent has not written the previous
    snapshot yet: then the next piece boundary tries again (a worker never waits for the disk)."""

    def __init__(self, views: BlockViews, spec: WorkerSpec):
        self.views, self.spec = views, spec
        self._next_updates = self._next_time = math.inf
        self._schedule(run_updates(views, spec.stamp))

    def _schedule(self, updates: int) -> None:
        every_updates, every_seconds = self.spec.checkpoint_every_updates, self.spec.checkpoint_every_seconds
        if every_updates:
            self._next_updates = (updates // every_updates + 1) * every_updates
        if every_seconds:
            self._next_time = time.monotonic() + every_seconds

    def maybe_take(self) -> None:
        """Take a snapshot if one is due and the parent has written the last one."""
        updates = run_updates(self.views, self.spec.stamp)
        if updates < self._next_updates and time.monotonic() < self._next_time:
            return
        views = self.views
        words = views.snapshot_words
        taken = kernels.load_word(words, SNAP_TAKEN)
        if kernels.load_word(words, SNAP_WRITTEN) < taken:
            return
        schedule = schedule_state(views, self.spec)
        if schedule is None:
            return
        words[SNAP_POSITION], generator = schedule
        words.view(np.uint64)[SNAP_GENERATOR:SNAP_GENERATOR + GENERATOR_WORDS] = generator
        np.copyto(views.snapshot_params, views.params)
        if views.snapshot_velocity is not None:
            np.copyto(views.snapshot_velocity, views.velocity0)
        views.hist[:, :HIST_BINS].sum(axis=0, out=views.snapshot_hist)
        stats = views.stats
        # Others write meanwhile: a stamped run's counter and update count are taken as the
        # histogram's total, so that the three agree as they do at the end of a run.
        stamped = int(views.snapshot_hist.sum())
        words[SNAP_COUNTER] = stamped if self.spec.stamp else kernels.load_word(views.counter, 0)
        words[SNAP_UPDATES] = stamped if self.spec.stamp else stats[:, STAT_UPDATES].sum()
        words[SNAP_SAMPLES] = stats[:, STAT_SAMPLES].sum()
        words[SNAP_MAX_TAU] = stats[:, STAT_MAX_TAU].max()
        words[SNAP_REFITS] = stats[:, STAT_REFITS].sum()
        kernels.store_word(words, SNAP_TAKEN, taken + 1)  # a release: the fields above come first
        self._schedule(updates)


class EvaluationTaker:
    """Every worker's side of update-triggered evaluations (the parent's:
    :class:`hogwild_mts.backends.shm.backend.EvaluationReader`).  Between two pieces of work,
    when the run's update count (:func:`run_updates`) lies in the window of a slot nobody has
    claimed, the worker that wins the slot's claim word copies the live parameters into it with
    the count and time.time() of the copy, then publishes the slot.  A worker never waits: the
    loser of a claim goes on training, and a worker descheduled while it copies holds back only
    its own slot."""

    def __init__(self, views: BlockViews, stamp: bool, workers: int):
        self.views, self.stamp, self._workers = views, stamp, workers
        words = views.eval_words
        self._first, self._every = int(words[EVAL_FIRST]), int(words[EVAL_EVERY])
        self._slots = views.eval_done.shape[0]

    def maybe_take(self) -> int:
        """Take the slot whose window holds the run's update count if nobody has claimed it;
        return the updates until the next slot is due."""
        views = self.views
        updates = run_updates(views, self.stamp)
        if updates < self._first:
            return self._first - updates
        slot = (updates - self._first) // self._every
        if slot < self._slots and not views.eval_claims[slot] \
                and kernels.add_word(views.eval_claims, slot, 1) == 0:
            updates = run_updates(views, self.stamp)
            np.copyto(views.eval_params[slot], views.params)
            views.eval_updates[slot], views.eval_times[slot] = updates, time.time()
            kernels.store_word(views.eval_done, slot, 1)  # a release: the copy comes first
        if slot + 1 >= self._slots:
            return 0
        return self._first + (slot + 1) * self._every - updates

    def cut(self, pieces, batch_size: int):
        """Yield ``pieces`` (``(order, start, stop)`` in rows), each cut where the run would reach
        the next due count if every worker applied as many updates as this one, taking the due
        copies before each part: exact due counts with one worker; with more, the parts shrink
        as the due count nears, so a copy lands within a few small parts of it."""
        for order, start, stop in pieces:
            while True:
                to_due = self.maybe_take()
                rows = -(-to_due // self._workers) * batch_size  # this worker's share, in rows
                if to_due <= 0 or start + rows >= stop:
                    yield order, start, stop
                    break
                yield order, start, start + rows
                start += rows


def _parent_alive(parent_pid: int) -> bool:
    """Our parent process lives: it is still our parent, or (a fork server's child, whose
    server lives as long as we do) a running process with its pid exists."""
    return os.getppid() == parent_pid or process_alive(parent_pid)


def _stop_requested(flags, parent_pid) -> bool:
    """The stop flag is set, or (``parent_pid`` > 0) the parent process is gone."""
    return bool(flags[FLAG_STOP]) or (parent_pid > 0 and not _parent_alive(parent_pid))


def run_worker(views: BlockViews, spec: WorkerSpec, worker_id: int) -> int:
    """Train on the rows :func:`row_pieces` hands this worker; return its final STATE_* value.

    Between pieces (``chunk_updates`` updates at most) the worker checks the stop flag and the
    parent, and lets its :class:`Refitter` refit the policy: refits fall on piece boundaries, so
    they come every ``max(refit_every, piece)`` updates at the most (a piece is a few ms).
    Worker 0 of a checkpointed run lets its :class:`Snapshotter` snapshot the run before it
    starts a piece; with update-triggered evaluations every worker's :class:`EvaluationTaker`
    cuts the pieces at the due counts and copies the parameters there.
    """
    stats = views.stats[worker_id]
    flags = views.flags
    hist_rows = views.hist
    refitter = Refitter(spec.policy, spec.workers, spec.momentum, np.float64)
    buffers = worker_buffers(spec, stats, hist_rows[worker_id], views, worker_id)
    run_chunk = chunk_runner(views, spec, buffers, step_table(refitter, spec.schedule))

    run_chunk(kernels.NO_ROWS, 0, 0)  # loads the compiled kernels before the clock starts
    load_schedule_kernels()
    map_pages(views, SHARED_READ_FIELDS)
    if not wait_for_go(views, worker_id, spec.parent_pid):
        return STATE_DONE
    taking_snapshots = worker_id == 0 and views.snapshot_words is not None
    snapshotter = Snapshotter(views, spec) if taking_snapshots else None
    pieces = row_pieces(views, spec, worker_id, views.indptr.shape[0] - 1, spec.chunk_updates,
                        MIN_CLAIM_UPDATES)
    if views.eval_words is not None:
        pieces = EvaluationTaker(views, spec.stamp, spec.workers).cut(pieces, spec.batch_size)
    state = STATE_DONE
    for order, start, stop in pieces:
        if _stop_requested(flags, spec.parent_pid):
            break
        if snapshotter is not None:
            snapshotter.maybe_take()
        if run_chunk(order, start, stop) == STATUS_DIVERGED:
            state = STATE_DIVERGED
            break
        refitter.maybe_refit(stats, hist_rows)
    return finish(views, worker_id, state)


def finish(views: BlockViews, worker_id: int, state: int) -> int:
    """Stamp the loop-end time and the final state; return the state."""
    views.clock[worker_id][CLOCK_LOOP_END] = time.time()
    views.stats[worker_id][STAT_STATE] = state
    return state


def run_reporting_errors(run, views: BlockViews, spec, worker_id: int, error_queue) -> bool:
    """``run(views, spec, worker_id)``; on an exception mark the worker failed, queue the
    exception's line followed by its traceback, return False."""
    try:
        run(views, spec, worker_id)
        return True
    except BaseException as error:
        text = "".join(traceback.format_exception_only(error)).strip() + "\n" + traceback.format_exc()
        error_queue.put((worker_id, text))  # before the state the parent polls
        views.stats[worker_id][STAT_STATE] = STATE_FAILED
        return False


def process_main(run, spec, worker_id: int, error_queue, setup=None) -> None:
    """Body of a worker process: ignore Ctrl-C (the parent stops us) and take the default
    SIGTERM (a forked worker inherits the parent's handlers), ``setup()`` if given, use the
    inherited views (fork) or attach the block by name, run, report errors, exit with status 1
    after a failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if setup is not None:
        setup()
    if spec.views is not None:
        succeeded = run_reporting_errors(run, spec.views, spec, worker_id, error_queue)
    else:
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

    def __init__(self, views: BlockViews, spec: WorkerSpec, error_queue):
        super().__init__(name="hogwild-worker-0", daemon=True)
        self._views, self._spec, self._errors = views, spec, error_queue
        self.exitcode = None

    def run(self) -> None:
        succeeded = run_reporting_errors(run_worker, self._views, self._spec, 0, self._errors)
        self.exitcode = 0 if succeeded else 1

    def terminate(self) -> None:
        """Threads cannot be killed; the stop flag ends the loop within one chunk."""

    kill = terminate
