"""A torch network on one flat vector, and its stamped updates.

A network's parameters are *views* into one flat vector: ``param.data`` is a slice of the shared
(or pulled) parameter vector, so every forward pass reads the live values; ``param.grad`` is a
slice of a private flat gradient buffer that ``backward`` accumulates into in place.  The update
itself (stamp, table lookup, ``theta -= lr * g``, histogram) is one numba call per mini-batch.

Buffers (batch-norm running statistics): the floating-point buffers are views of the flat vector
too, right after the parameters (``params[n_params:]``), so every worker's forward pass updates
them in place, lock-free, as Hogwild! updates the parameters (unstamped: they are not gradient
steps).  Other buffers (batch norm's integer ``num_batches_tracked``) stay private to each worker.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from hogwild_mts.core.control import STAT_SAMPLES, STAT_UPDATES
from hogwild_mts.kernels.linear import keep_largest_tau, load_word, stamped_step


@njit(cache=True, nogil=True)
def apply_update(params, gradient, counter, t_read, alpha_table, hist_row, stats_row, batch_rows):
    """Stamp and apply one mini-batch gradient lock-free (``kernels.stamped_step``, then
    ``params -= lr * gradient``; alpha_table has the dtype of params, so float32 stays
    float32) and update the worker's stats row."""
    tau, lr = stamped_step(counter, t_read, alpha_table, hist_row)
    keep_largest_tau(stats_row, tau)
    for i in range(params.shape[0]):
        params[i] -= lr * gradient[i]
    stats_row[STAT_UPDATES] += 1
    stats_row[STAT_SAMPLES] += batch_rows


@njit(cache=True, nogil=True)
def apply_sparse_update(params, indices, step_values, counter, t_read, alpha_table, hist_row,
                        stats_row, batch_rows):
    """:func:`apply_update` of a step sum that is zero outside ``indices``: stamp, then
    ``params[indices[k]] -= lr * step_values[k]`` (``indices`` distinct, int64), the same
    arithmetic per coordinate, so the parameters end bit for bit as :func:`apply_update` of the
    dense step sum leaves them (there ``params[i] - lr * 0`` keeps every other coordinate)."""
    tau, lr = stamped_step(counter, t_read, alpha_table, hist_row)
    keep_largest_tau(stats_row, tau)
    for k in range(indices.shape[0]):
        params[indices[k]] -= lr * step_values[k]
    stats_row[STAT_UPDATES] += 1
    stats_row[STAT_SAMPLES] += batch_rows


@njit(cache=True, nogil=True)
def apply_momentum_update(params, gradient, velocity, momentum, weight_decay, counter, t_read,
                          alpha_table, hist_row, stats_row, batch_rows):
    """:func:`apply_update` with torch.optim.SGD's weight decay and momentum (dampening 0, no
    Nesterov) on the worker's private ``velocity``: ``g = gradient + weight_decay * params``,
    ``velocity = momentum * velocity + g``, ``params -= alpha(tau) * velocity``.  ``momentum``
    and ``weight_decay`` are scalars of the params dtype."""
    tau, lr = stamped_step(counter, t_read, alpha_table, hist_row)
    keep_largest_tau(stats_row, tau)
    for i in range(params.shape[0]):
        velocity[i] = momentum * velocity[i] + (gradient[i] + weight_decay * params[i])
        params[i] -= lr * velocity[i]
    stats_row[STAT_UPDATES] += 1
    stats_row[STAT_SAMPLES] += batch_rows


def warm_up_updates(dtype) -> None:
    """Compile (parent) or load from numba's cache (workers) the update kernels for this
    parameter dtype, on scratch arrays, so that no compilation happens while training is timed."""
    scratch = np.zeros(1, dtype=dtype)
    counter = np.zeros(8, np.int64)
    scalar = scratch.dtype.type(0)
    apply_update(scratch, scratch.copy(), counter, load_word(counter, 0), np.ones(1, dtype=dtype),
                 np.zeros(2, np.int64), np.zeros(8, np.int64), 1)
    apply_momentum_update(scratch, scratch.copy(), scratch.copy(), scalar, scalar, counter,
                          load_word(counter, 0), np.ones(1, dtype=dtype), np.zeros(2, np.int64),
                          np.zeros(8, np.int64), 1)


LOSSES = ("cross_entropy", "mse")  # TorchEngine(loss=...): the named losses


class LossFunction:
    """A caller's ``loss(outputs, targets) -> scalar tensor`` (the batch's mean loss, e.g.
    ``torch.nn.functional.cross_entropy`` or an ``nn.Module`` loss such as ``nn.HuberLoss()``),
    carried to the workers serialized with cloudpickle (by value, like a model factory).
    ``classification``: the targets are integer class labels (evaluations then report the
    accuracy of the outputs' argmax); ``name`` says what the loss is in results and files."""

    def __init__(self, function, classification: bool, payload: bytes | None = None):
        self.payload = serialized_factory(function, "loss") if payload is None else payload
        self.classification = bool(classification)
        self.name = callable_name(function)
        self._function = function

    def __getstate__(self) -> dict:
        return {"payload": self.payload, "classification": self.classification, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _function=None)

    def __call__(self, outputs, targets):
        import torch

        if self._function is None:  # in a worker: rebuilt once from the payload
            import cloudpickle

            self._function = cloudpickle.loads(self.payload)
        value = self._function(outputs, targets)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) \
                else type(value).__name__
            raise TypeError(f"loss {self.name!r} returned {got}; a loss function must return the "
                            "batch's mean loss as a scalar tensor")
        return value.reshape(())

    def __repr__(self) -> str:
        return f"LossFunction({self.name})"


def callable_name(function) -> str:
    """How results name a caller's function, module class or module instance."""
    name = getattr(function, "__name__", None)
    if name is None and hasattr(function, "func"):  # functools.partial
        name = getattr(function.func, "__name__", None)
    return name or type(function).__name__


def classifies(loss) -> bool:
    """Whether ``loss`` (a name or a :class:`LossFunction`) trains on integer class labels."""
    return loss == "cross_entropy" if isinstance(loss, str) else loss.classification


def loss_name(loss) -> str:
    """``loss`` as results and files name it: the name, or the loss function's name."""
    return loss if isinstance(loss, str) else loss.name


def loss_value(loss, outputs, targets, reduction: str = "mean"):
    """The ``loss`` of a batch: ``cross_entropy`` of logits ``(N, classes)`` against int64 labels,
    or ``mse`` of outputs against float targets, both flattened to ``(N, values per row)`` (the
    mean, or the sum with ``reduction="sum"``, over every value); a :class:`LossFunction` gives
    its mean (times the batch's rows with ``reduction="sum"``)."""
    import torch.nn.functional as F

    if isinstance(loss, LossFunction):
        value = loss(outputs, targets)
        return value * targets.shape[0] if reduction == "sum" else value
    if loss == "cross_entropy":
        return F.cross_entropy(outputs, targets, reduction=reduction)
    rows = targets.shape[0]
    return F.mse_loss(outputs.reshape(rows, -1), targets.reshape(rows, -1).to(outputs.dtype),
                      reduction=reduction)


def loss_values_per_row(loss, outputs: int) -> int:
    """How many values one row's ``reduction="sum"`` loss adds up (``mse``: every output)."""
    return outputs if loss == "mse" else 1


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


def serialized_factory(factory, what: str = "model factory") -> bytes:
    """``factory`` (any callable: a lambda, a closure, a function defined in a notebook or in
    ``python -c``) serialized with cloudpickle, by value, so that any worker can rebuild it;
    ValueError naming it when it cannot be serialized."""
    import cloudpickle

    try:
        return cloudpickle.dumps(factory)
    except Exception as error:
        raise ValueError(f"{what} {factory!r} cannot be serialized for the workers "
                         f"({type(error).__name__}: {error})") from None


class ModuleCopy:
    """The factory of a caller's ``nn.Module`` instance: each call returns a deep copy of it,
    on the CPU, in train mode (its weights are overwritten by the run's start anyway)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, input_shape, outputs):
        import copy

        return copy.deepcopy(self.module).cpu().train()


class ModuleClass:
    """The factory of a caller's ``nn.Module`` class (or a ``functools.partial`` of one): each
    call returns ``module_class(*args, **kwargs)``; the input shape and outputs are not passed."""

    def __init__(self, module_class, args=(), kwargs=None):
        self.module_class, self.args, self.kwargs = module_class, tuple(args), dict(kwargs or {})

    def __call__(self, input_shape, outputs):
        return self.module_class(*self.args, **self.kwargs)


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
