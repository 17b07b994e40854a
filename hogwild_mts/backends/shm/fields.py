"""The fields a shared-memory run's block can hold, as one typed view: :class:`BlockViews`.

:meth:`hogwild_mts.backends.shm.block.Layout.views` returns one over a block's bytes; a field
the layout lacks is None there, so an optional feature is told by ``views.positions is not None``
and the like.  :meth:`hogwild_mts.backends.shm.block.Layout.add` refuses a name that is not a
field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from hogwild_mts.kernels import linear as kernels


@dataclass(eq=False, repr=False)
class BlockViews:
    """Numpy views of one block's fields (None: not in the layout).  "padded" rows fill whole
    cache lines (:meth:`~hogwild_mts.backends.shm.block.Layout.add_rows`); ``m`` is the number
    of workers, ``p`` of parameters (``params``' dtype: the run's), ``n`` of training rows."""

    # control (backend.control_layout): every run has these
    #: int64 (8,): word 0 the run's sequence number (workers' atomic adds); the rest pads
    counter: np.ndarray | None = None
    #: int64 (8,): FLAG_GO, FLAG_STOP, written by the parent
    flags: np.ndarray | None = None
    #: int64 (m, padded STAT_COLUMNS): row w written by worker w (row 0 by a resume)
    stats: np.ndarray | None = None
    #: float64 (m, padded 2): row w's loop start and end time.time(), written by worker w
    clock: np.ndarray | None = None
    #: int64 (m, padded HIST_BINS): row w worker w's tau histogram (row 0 by a resume)
    hist: np.ndarray | None = None
    #: float32/64 (p,): the shared parameters, written lock-free by every worker
    params: np.ndarray | None = None
    # linear runs
    #: float64 (features,): the L2 weights (kernels.Rows), written by the parent
    feature_scale: np.ndarray | None = None
    # the L1 penalty of a linear run (worker.add_l1_fields)
    #: float64 (features,): the penalty each weight received, every worker (lock-free)
    l1_applied: np.ndarray | None = None
    #: float64 (m, padded 1): word 0 of row w the L1 total of worker w's steps, by worker w
    l1_totals: np.ndarray | None = None
    # averaged SGD of a linear run (worker.add_average_fields)
    #: float64 (p,): the averaged parameters, every worker (lock-free)
    averaged: np.ndarray | None = None
    #: int64 (p,): the averaged iterates each mean covers, every worker (lock-free)
    averaged_marks: np.ndarray | None = None
    # the dynamic split (worker.add_schedule)
    #: int64 (SCHEDULE_WORDS,): cursor and slot words, every worker
    schedule: np.ndarray | None = None
    #: int64 (2, n): the two epoch order slots, by the parent and the middle batch's worker
    orders: np.ndarray | None = None
    # momentum of a linear run (worker.add_velocity_field)
    #: float64 (p,): worker 0's velocity, written by worker 0 (and a resume)
    velocity0: np.ndarray | None = None
    # checkpoints (worker.add_checkpoint_fields)
    #: int64 (m, padded 1): word 0 of row w worker w's first unfinished batch
    positions: np.ndarray | None = None
    #: int64 (SNAPSHOT_WORDS,): counts of worker 0's snapshot; SNAP_WRITTEN by the parent
    snapshot_words: np.ndarray | None = None
    #: like params (p,): worker 0's copy of the parameters
    snapshot_params: np.ndarray | None = None
    #: int64 (HIST_BINS,): worker 0's sum of the histogram rows
    snapshot_hist: np.ndarray | None = None
    #: float64 (p,): worker 0's copy of velocity0 (momentum only)
    snapshot_velocity: np.ndarray | None = None
    # update-triggered evaluations (worker.add_evaluation_fields), k slots
    #: int64 (EVAL_WORDS,): first due count and spacing, written by the parent
    eval_words: np.ndarray | None = None
    #: int64 (k,): claim words, workers' atomic adds
    eval_claims: np.ndarray | None = None
    #: int64 (k,): 1 once slot k's copy is whole, by the worker that claimed it
    eval_done: np.ndarray | None = None
    #: int64 (k,): the update count of slot k's copy, by that worker
    eval_updates: np.ndarray | None = None
    #: float64 (k,): the time.time() of slot k's copy, by that worker
    eval_times: np.ndarray | None = None
    #: like params (k, p): the copies, by the claiming workers
    eval_params: np.ndarray | None = None
    # a linear run's data (kernels.Rows), written by the parent; in the block only for workers that
    # attach it (else the caller's arrays, see place)
    #: float64 (nnz,): the stored values, row after row
    values: np.ndarray | None = None
    #: int32 (nnz,): their columns (sparse rows)
    indices: np.ndarray | None = None
    #: int64 (n + 1,): row i is values[indptr[i]:indptr[i + 1]]
    indptr: np.ndarray | None = None
    #: float64 (n,): in the model's domain
    labels: np.ndarray | None = None
    #: float64 (n,) or (0,) for unit weights
    sample_weight: np.ndarray | None = None
    # a network's training rows, written by the parent (the same rule)
    #: float32 (n, *input_shape)
    inputs: np.ndarray | None = None
    #: int64 class numbers (n,) or float32 (n, outputs)
    targets: np.ndarray | None = None

    def __repr__(self) -> str:
        """The fields present with their dtypes and shapes; no value is read (the block may be
        unmapped by then)."""
        present = ", ".join(f"{name}={array.dtype}{list(array.shape)}"
                            for name, array in vars(self).items() if array is not None)
        return f"BlockViews({present})"

    def place(self, **arrays: np.ndarray) -> None:
        """Copy each array into its field of the block; a field the layout lacks holds the array
        itself instead (made contiguous): a forked or thread worker reads it in place."""
        for name, array in arrays.items():
            field = getattr(self, name)
            if field is None:
                setattr(self, name, np.ascontiguousarray(array))
            else:
                field[:] = array

    def rows(self) -> kernels.Rows:
        """The data fields and ``feature_scale`` as one
        :class:`~hogwild_mts.kernels.linear.Rows` (what the SGD kernels take)."""
        return kernels.Rows(*(getattr(self, name) for name in kernels.Rows._fields))


FIELD_NAMES = frozenset(field.name for field in dataclasses.fields(BlockViews))
