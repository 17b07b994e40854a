"""What one torch Hogwild! worker process runs, and the parameter/gradient binding it relies on.

A network's parameters are *views* into one flat vector: ``param.data`` is a slice of the shared
parameter block, so every forward pass reads the live shared values; ``param.grad`` is a slice of
a private flat gradient buffer that ``backward`` accumulates into in place.  The update itself
(stamp, table lookup, ``theta -= alpha * g``, histogram) is one numba call per mini-batch.

Buffers (batch-norm running statistics): the floating-point buffers are views of the shared
vector too, right after the parameters (``params[n_params:]``), so every worker's forward pass
updates them in place, lock-free, as Hogwild! updates the parameters (unstamped: they are not
gradient steps), and the evaluations and the result read them with the parameters.  Other
buffers (batch norm's integer ``num_batches_tracked``) stay private to each worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from hogwild_mts.backends.shm import worker as base
from hogwild_mts.backends.shm.kernels import keep_largest_tau, load_word, stamped_step
from hogwild_mts.core.control import STAT_SAMPLES, STAT_UPDATES, STATE_DIVERGED, STATE_DONE
from hogwild_mts.backends.shm.block import Layout


@njit(cache=True, nogil=True)
def apply_update(params, gradient, counter, t_read, alpha_table, hist_row, stats_row, batch_rows):
    """Stamp and apply one mini-batch gradient lock-free (``kernels.stamped_step``, then
    ``params -= alpha * gradient``; alpha_table has the dtype of params, so float32 stays
    float32) and update the worker's stats row."""
    tau, alpha = stamped_step(counter, t_read, alpha_table, hist_row)
    keep_largest_tau(stats_row, tau)
    for i in range(params.shape[0]):
        params[i] -= alpha * gradient[i]
    stats_row[STAT_UPDATES] += 1
    stats_row[STAT_SAMPLES] += batch_rows


@njit(cache=True, nogil=True)
def apply_momentum_update(params, gradient, velocity, momentum, weight_decay, counter, t_read,
                          alpha_table, hist_row, stats_row, batch_rows):
    """:func:`apply_update` with torch.optim.SGD's weight decay and momentum (dampening 0, no
    Nesterov) on the worker's private ``velocity``: ``g = gradient + weight_decay * params``,
    ``velocity = momentum * velocity + g``, ``params -= alpha(tau) * velocity``.  ``momentum``
    and ``weight_decay`` are scalars of the params dtype."""
    tau, alpha = stamped_step(counter, t_read, alpha_table, hist_row)
    keep_largest_tau(stats_row, tau)
    for i in range(params.shape[0]):
        velocity[i] = momentum * velocity[i] + (gradient[i] + weight_decay * params[i])
        params[i] -= alpha * velocity[i]
    stats_row[STAT_UPDATES] += 1
    stats_row[STAT_SAMPLES] += batch_rows


def warm_up_kernels(dtype) -> None:
    """Compile (parent) or load from numba's cache (workers) the kernels for this parameter dtype,
    on scratch arrays, so that no compilation or cache load happens while training is timed."""
    scratch = np.zeros(1, dtype=dtype)
    counter = np.zeros(8, np.int64)
    scalar = scratch.dtype.type(0)
    apply_update(scratch, scratch.copy(), counter, load_word(counter, 0), np.ones(1, dtype=dtype),
                 np.zeros(2, np.int64), np.zeros(8, np.int64), 1)
    apply_momentum_update(scratch, scratch.copy(), scratch.copy(), scalar, scalar, counter,
                          load_word(counter, 0), np.ones(1, dtype=dtype), np.zeros(2, np.int64),
                          np.zeros(8, np.int64), 1)
    base.load_schedule_kernels()


SHARED_READ_FIELDS = ("inputs", "targets", "params", "orders")
LOSSES = ("cross_entropy", "mse")  # TorchEngine(loss=...)


def loss_value(loss: str, outputs, targets, reduction: str = "mean"):
    """The ``loss`` of a batch: ``cross_entropy`` of logits ``(N, classes)`` against int64 labels,
    or ``mse`` of outputs against float targets, both flattened to ``(N, values per row)`` (the
    mean, or the sum with ``reduction="sum"``, over every value)."""
    import torch.nn.functional as F

    if loss == "cross_entropy":
        return F.cross_entropy(outputs, targets, reduction=reduction)
    rows = targets.shape[0]
    return F.mse_loss(outputs.reshape(rows, -1), targets.reshape(rows, -1).to(outputs.dtype),
                      reduction=reduction)


CLAIM_BATCHES = 16  # the largest claim of a torch worker (batches); the smallest is one batch


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def shared_buffers(model) -> list:
    """The buffers shared like parameters: the floating-point ones, in ``model.buffers()`` order."""
    return [b for b in model.buffers() if b.is_floating_point()]


def buffer_count(model) -> int:
    """Values in :func:`shared_buffers`."""
    return sum(b.numel() for b in shared_buffers(model))


def flatten_parameters(model, out: np.ndarray) -> None:
    """Copy the parameters, in ``model.parameters()`` order, into the flat array ``out``."""
    _flatten(list(model.parameters()), out)


def flatten_buffers(model, out: np.ndarray) -> None:
    """Copy the :func:`shared_buffers` into the flat array ``out``."""
    _flatten(shared_buffers(model), out)


def _flatten(tensors, out: np.ndarray) -> None:
    offset = 0
    for tensor in tensors:
        n = tensor.numel()
        out[offset:offset + n] = tensor.detach().reshape(-1).numpy()
        offset += n


def bind_parameters(model, flat: np.ndarray) -> None:
    """Make every parameter a view of its slice of ``flat`` (no copy; writes to ``flat`` show up
    in the next forward pass).  ``flat`` must hold exactly parameter_count(model) values."""
    _bind(list(model.parameters()), flat, "data", "parameters")


def bind_gradients(model, flat: np.ndarray) -> None:
    """Make every ``param.grad`` a view of its slice of ``flat``; backward accumulates into it in place."""
    _bind(list(model.parameters()), flat, "grad", "parameters")


def bind_buffers(model, flat: np.ndarray) -> None:
    """Make every shared buffer a view of its slice of ``flat`` (buffer_count(model) values): the
    forward pass's in-place updates (batch-norm running statistics) land in ``flat``."""
    _bind(shared_buffers(model), flat, "data", "buffer values")


def _bind(tensors, flat: np.ndarray, attribute: str, what: str) -> None:
    import torch

    total = sum(t.numel() for t in tensors)
    if flat.ndim != 1 or flat.shape[0] != total:
        raise ValueError(f"flat buffer has shape {flat.shape}, the model has {total} {what}")
    flat_tensor = torch.from_numpy(flat)
    offset = 0
    for tensor in tensors:
        n = tensor.numel()
        setattr(tensor, attribute, flat_tensor[offset:offset + n].view(tensor.shape))
        offset += n


def state_dict_from_flat(model, flat: np.ndarray) -> dict:
    """The ``state_dict`` of ``model`` (copies) with its parameters and shared buffers taken
    from ``flat`` (parameters in ``model.parameters()`` order, then :func:`shared_buffers`, as
    a fit's ``params``); other buffers as ``model`` holds them; ``model`` is not changed."""
    import copy

    model = copy.deepcopy(model)
    values = np.array(flat, dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
    n_params = parameter_count(model)
    bind_parameters(model, values[:n_params])
    bind_buffers(model, values[n_params:])
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def serialized_factory(factory) -> bytes:
    """``factory`` (any callable: a lambda, a closure, a function defined in a notebook or in
    ``python -c``) serialized with cloudpickle, by value, so that any worker can rebuild it;
    ValueError naming it when it cannot be serialized."""
    import cloudpickle

    try:
        return cloudpickle.dumps(factory)
    except Exception as error:
        raise ValueError(f"model factory {factory!r} cannot be serialized for the workers "
                         f"({type(error).__name__}: {error})") from None


def make_network(network, input_shape, outputs: int):
    """A registered network name, a factory ``f(input_shape, outputs) -> nn.Module``, or such a
    factory serialized by :func:`serialized_factory` (rebuilt here, in the worker, so a failure
    is reported with the worker's own traceback)."""
    import cloudpickle

    from hogwild_mts.models.nets import build_network

    if isinstance(network, str):
        return build_network(network, input_shape, outputs)
    factory = cloudpickle.loads(network) if isinstance(network, bytes) else network
    return factory(tuple(input_shape), outputs)


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
    split: str = "dynamic"  # one of worker.SPLITS
    loss: str = "cross_entropy"  # one of LOSSES
    momentum: float = 0.0  # torch.optim.SGD's, per worker (private velocity)
    weight_decay: float = 0.0
    views: dict | None = None  # the parent's views, inherited by forked workers (never pickled)
    checkpoint_every_seconds: float | None = None  # worker 0's snapshot schedule (None: never)
    checkpoint_every_updates: int | None = None
    stamp: bool = True  # torch workers always stamp (worker.Snapshotter reads it)


def run_torch_worker(views: dict, spec: TorchWorkerSpec, worker_id: int) -> int:
    """Train on the rows :func:`hogwild_mts.backends.shm.worker.row_pieces` hands this worker
    (CLAIM_BATCHES batches per claim at most); return its STATE_*.

    Per mini-batch: gather the rows from the shared inputs and targets, t_read, forward and
    backward of ``spec.loss`` on the live shared parameters (gradient into a private flat
    buffer), then :func:`apply_update` (or :func:`apply_momentum_update` with momentum or
    weight decay, on a private velocity).  Every ``policy.refit_every`` own updates the policy
    refits from all histogram rows, as :func:`hogwild_mts.backends.shm.worker.run_worker` does
    (a :class:`hogwild_mts.backends.shm.worker.Refitter`).  Worker 0 of a checkpointed run lets
    a :class:`hogwild_mts.backends.shm.worker.Snapshotter` snapshot the run before each piece,
    and with update-triggered evaluations every worker lets its
    :class:`hogwild_mts.backends.shm.worker.EvaluationTaker` copy the parameters after each batch;
    the worker's position moves past each batch it has applied, so a run stopped between two
    batches of a piece resumes from the next batch.
    """
    import torch

    stats = views["stats"][worker_id]
    flags, counter = views["flags"], views["counter"]
    params = views["params"][:spec.n_params]  # the shared buffers follow
    hist_rows = views["hist"]
    model = make_network(spec.network, spec.input_shape, spec.outputs).to(getattr(torch, spec.dtype))
    bind_parameters(model, params)
    gradient = np.zeros_like(params)
    bind_gradients(model, gradient)
    gradient_tensor = torch.from_numpy(gradient)
    inputs, targets = torch.from_numpy(views["inputs"]), torch.from_numpy(views["targets"])
    input_dtype = None if spec.dtype == "float32" else getattr(torch, spec.dtype)  # inputs are float32
    with_momentum = spec.momentum != 0 or spec.weight_decay != 0
    velocity = np.zeros_like(params) if with_momentum else None  # private to this worker
    momentum, weight_decay = params.dtype.type(spec.momentum), params.dtype.type(spec.weight_decay)

    refitter = base.Refitter(spec.policy, spec.workers, spec.momentum, params.dtype)
    batch_inputs = torch.empty((spec.batch_size,) + tuple(inputs.shape[1:]), dtype=inputs.dtype)
    batch_targets = torch.empty((spec.batch_size,) + tuple(targets.shape[1:]), dtype=targets.dtype)
    hist_row = hist_rows[worker_id]
    # A checkpointed run: the first batch of this worker's claim not yet done (worker.claimed_pieces
    # sets it per piece; a stop can come between two batches of a piece, so it moves per batch).
    position = views["positions"][worker_id] if "positions" in views else None

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
    bind_buffers(model, views["params"][spec.n_params:])  # after the warm-up, which updated its own
    warm_up_kernels(params.dtype)
    base.map_pages(views, SHARED_READ_FIELDS)
    if not base.wait_for_go(views, worker_id, spec.parent_pid):
        return STATE_DONE
    snapshotter = base.Snapshotter(views, spec) if worker_id == 0 and "snapshot_words" in views else None
    evaluations = base.EvaluationTaker(views, spec.stamp, spec.workers) if "eval_words" in views else None
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
