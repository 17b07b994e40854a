"""What one torch Hogwild! worker process runs on the shared block: the network bound to the
shared parameters (:mod:`hogwild_mts.kernels.flat`), batches gathered from the shared inputs, one
stamped update per mini-batch; the evaluations and the result read the shared buffers with the
parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hogwild_mts.backends.shm import worker as base
from hogwild_mts.backends.shm.block import Layout
from hogwild_mts.backends.shm.fields import BlockViews
from hogwild_mts.core.control import STATE_DIVERGED, STATE_DONE
from hogwild_mts.kernels.flat import (apply_momentum_update, apply_update, bind_buffers, bind_gradients,
                                      bind_parameters, loss_value, make_network, warm_up_updates)
from hogwild_mts.kernels.linear import load_word
from hogwild_mts.policies.refit import Refitter


def warm_up_kernels(dtype) -> None:
    """Compile or load the update kernels for this dtype and the dynamic split's kernels."""
    warm_up_updates(dtype)
    base.load_schedule_kernels()


SHARED_READ_FIELDS = ("inputs", "targets", "params", "orders")

CLAIM_BATCHES = 16  # the largest claim of a torch worker (batches); the smallest is one batch


@dataclass
class TorchWorkerSpec:
    """Everything a torch worker needs; picklable for the spawn start method."""

    block_name: str
    layout: Layout
    network: object  # registry name, or a factory f(input_shape, outputs) by serialized_factory
    input_shape: tuple
    outputs: int  # classes (cross_entropy) or values per target row (mse)
    n_params: int  # params[:n_params] are the parameters, params[n_params:] the shared buffers
    workers: int
    epochs: int
    batch_size: int
    seeds: list
    policy: object
    dtype: str  # of the parameters: float32 or float64
    parent_pid: int
    split: str = "dynamic"  # one of kernels.split.SPLITS
    loss: str = "cross_entropy"  # one of LOSSES
    momentum: float = 0.0  # torch.optim.SGD's, per worker (private velocity)
    weight_decay: float = 0.0
    views: BlockViews | None = None  # the parent's views, inherited by forked workers (never pickled)
    checkpoint_every_seconds: float | None = None  # worker 0's snapshot schedule (None: never)
    checkpoint_every_updates: int | None = None
    stamp: bool = True  # torch workers always stamp (worker.Snapshotter reads it)
    shuffle: bool = True  # torch workers always shuffle (worker.row_pieces reads it)


def run_torch_worker(views: BlockViews, spec: TorchWorkerSpec, worker_id: int) -> int:
    """Train on the rows :func:`hogwild_mts.backends.shm.worker.row_pieces` hands this worker
    (CLAIM_BATCHES batches per claim at most); return its STATE_*.

    Per mini-batch: gather the rows from the shared inputs and targets, t_read, forward and
    backward of ``spec.loss`` on the live shared parameters (gradient into a private flat
    buffer), then :func:`apply_update` (or :func:`apply_momentum_update` with momentum or
    weight decay, on a private velocity).  Every ``policy.refit_every`` own updates the policy
    refits from all histogram rows, as :func:`hogwild_mts.backends.shm.worker.run_worker` does
    (a :class:`hogwild_mts.policies.refit.Refitter`).  Worker 0 of a checkpointed run lets
    a :class:`hogwild_mts.backends.shm.worker.Snapshotter` snapshot the run before each piece,
    and with update-triggered evaluations every worker lets its
    :class:`hogwild_mts.backends.shm.worker.EvaluationTaker` copy the parameters after each batch;
    the worker's position moves past each batch it has applied, so a run stopped between two
    batches of a piece resumes from the next batch.
    """
    import torch

    stats = views.stats[worker_id]
    flags, counter = views.flags, views.counter
    params = views.params[:spec.n_params]  # the shared buffers follow
    hist_rows = views.hist
    model = make_network(spec.network, spec.input_shape, spec.outputs).to(getattr(torch, spec.dtype))
    bind_parameters(model, params)
    gradient = np.zeros_like(params)
    bind_gradients(model, gradient)
    gradient_tensor = torch.from_numpy(gradient)
    inputs, targets = torch.from_numpy(views.inputs), torch.from_numpy(views.targets)
    input_dtype = None if spec.dtype == "float32" else getattr(torch, spec.dtype)  # inputs are float32
    with_momentum = spec.momentum != 0 or spec.weight_decay != 0
    velocity = np.zeros_like(params) if with_momentum else None  # private to this worker
    momentum, weight_decay = params.dtype.type(spec.momentum), params.dtype.type(spec.weight_decay)

    refitter = Refitter(spec.policy, spec.workers, spec.momentum, params.dtype)
    batch_inputs = torch.empty((spec.batch_size,) + tuple(inputs.shape[1:]), dtype=inputs.dtype)
    batch_targets = torch.empty((spec.batch_size,) + tuple(targets.shape[1:]), dtype=targets.dtype)
    hist_row = hist_rows[worker_id]
    # A checkpointed run: the first batch of this worker's claim not yet done (worker.claimed_pieces
    # sets it per piece; a stop can come between two batches of a piece, so it moves per batch).
    position = views.positions[worker_id] if views.positions is not None else None

    def gather(rows):
        """The inputs and targets of ``rows`` (int64 tensor), copied into the reused batch buffers."""
        n = rows.shape[0]
        return (torch.index_select(inputs, 0, rows, out=batch_inputs[:n]),
                torch.index_select(targets, 0, rows, out=batch_targets[:n]))

    def batch_loss(x, y):
        """The mean loss of the batch under the live shared parameters."""
        return loss_value(spec.loss, model(x if input_dtype is None else x.to(input_dtype)), y)

    first_rows = torch.arange(min(spec.batch_size, inputs.shape[0]))
    batch_loss(*gather(first_rows)).backward()  # warm-up: first calls are slow
    bind_buffers(model, views.params[spec.n_params:])  # after the warm-up, which updated its own
    warm_up_kernels(params.dtype)
    base.map_pages(views, SHARED_READ_FIELDS)
    if not base.wait_for_go(views, worker_id, spec.parent_pid):
        return STATE_DONE
    taking_snapshots = worker_id == 0 and views.snapshot_words is not None
    snapshotter = base.Snapshotter(views, spec) if taking_snapshots else None
    evaluations = (base.EvaluationTaker(views, spec.stamp, spec.workers)
                   if views.eval_words is not None else None)
    state = STATE_DONE
    pieces = base.row_pieces(views, spec, worker_id, inputs.shape[0], CLAIM_BATCHES, 1)
    for order, piece_start, piece_stop in pieces:
        if snapshotter is not None:
            snapshotter.maybe_take()
        order = torch.from_numpy(order)
        for start in range(piece_start, piece_stop, spec.batch_size):
            if base._stop_requested(flags, spec.parent_pid):
                break
            rows = order[start:min(start + spec.batch_size, piece_stop)]
            x, y = gather(rows)
            t_read = load_word(counter, 0)
            gradient_tensor.zero_()
            loss = batch_loss(x, y)
            loss.backward()
            if not math.isfinite(loss.item()):
                state = STATE_DIVERGED
                break
            if with_momentum:
                apply_momentum_update(params, gradient, velocity, momentum, weight_decay, counter,
                                      t_read, refitter.table, hist_row, stats, rows.shape[0])
            else:
                apply_update(params, gradient, counter, t_read, refitter.table, hist_row, stats,
                             rows.shape[0])
            if position is not None:
                position[0] += 1
            if evaluations is not None:
                evaluations.maybe_take()
            refitter.maybe_refit(stats, hist_rows)
        else:
            continue
        break
    return base.finish(views, worker_id, state)


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def torch_worker_main(spec: TorchWorkerSpec, worker_id: int, error_queue) -> None:
    """Process entry point of a torch worker: the common worker body with one torch thread."""
    base.process_main(run_torch_worker, spec, worker_id, error_queue, setup=_one_torch_thread)
