"""Hogwild! for torch networks: ``TorchEngine(...).fit(data)`` and the CLI hook.

One shared block per run holds the sequence counter, run flags, per-worker stats/clock/histogram
rows (:mod:`hogwild_mts.core.control`), the flat vector of parameters and shared buffers, and the
epoch orders; the training inputs and targets are read in this process's memory by forked
workers, or placed in the block once for spawned ones.  Workers (processes, one torch/BLAS
thread each; forked by default, so they start with torch already imported) bind their network's
parameters and floating-point buffers to views of that vector and update the parameters
lock-free with exact staleness stamps (:mod:`hogwild_mts.backends.shm.torch_worker`).  The parent
evaluates a copy of the shared vector on the test set every ``eval_every`` seconds with its own
network (in eval mode), whose parameters and buffers view that copy.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from hogwild_mts.backends.ray.options import DEFAULT_CHECKPOINT_SECONDS, ray_options
from hogwild_mts.backends.shm import worker
from hogwild_mts.backends.shm.backend import (START_METHODS, ShmBackend, control_layout,
                                             default_start_method, start_processes, worker_times)
from hogwild_mts.backends.shm.block import SharedBlock
from hogwild_mts.core import lifecycle
from hogwild_mts.core.options import check_choice, check_nonnegative, check_probability
from hogwild_mts.core.result import DivergenceError, FitResult, WorkerError
from hogwild_mts.data.images import ArrayDataset, array_dataset, load_images
from hogwild_mts.backends.shm import torch_worker
from hogwild_mts.backends.shm.torch_worker import (LOSSES, TorchWorkerSpec, bind_buffers,
                                                   bind_parameters, buffer_count, flatten_buffers,
                                                   flatten_parameters, loss_value, make_network,
                                                   parameter_count, serialized_factory,
                                                   torch_worker_main, warm_up_kernels)

__all__ = ["TorchEngine", "train_images", "DEFAULT_ALPHA", "DEFAULT_BATCH_SIZE", "DEFAULT_EPOCHS",
           "WorkerError", "DivergenceError"]

DEFAULT_ALPHA = 0.05  # base step of the constant policy (per mean mini-batch gradient)
DEFAULT_BATCH_SIZE = 16
DEFAULT_EPOCHS = 10
PARAM_DTYPES = ("float32", "float64")
EVAL_BATCH = 1024  # test rows per forward pass of an evaluation
LOSS_NAMES = {"cross_entropy": "cross-entropy", "mse": "mean squared error"}


class TorchEngine:
    """Asynchronous lock-free SGD of a torch network with ``workers`` processes.

    ``model``: ``mlp``, ``cnn`` (2-D on images, 1-D on signals such as MNIST-1D), ``lenet`` (see
    :mod:`hogwild_mts.models.nets`) or a factory ``f(input_shape, outputs) -> nn.Module``
    (``outputs``: the classes, or the values per target row for ``mse``), defined anywhere (a
    lambda, a notebook, ``python -c``: it is sent to the workers with cloudpickle).  Floating-point
    buffers (batch-norm running statistics) are shared like the parameters and updated in place,
    lock-free, by every worker's forward pass; other buffers stay private to each worker.
    ``policy``: a name, policy object or function of tau; ``alpha`` the base step of a named
    policy (default DEFAULT_ALPHA).  ``loss``: ``cross_entropy`` (integer class labels) or
    ``mse`` (float targets).  ``epochs`` passes over the training set in total, shuffled every
    epoch (generators seeded from ``seed``, which also initialises the network).
    Each update is ``theta -= alpha(tau) * g`` with ``g`` the mean loss gradient of ``batch_size``
    rows (the last batch of an epoch may be shorter); with ``momentum`` (in [0, 1)) or
    ``weight_decay`` (>= 0) each worker keeps a private velocity exactly as torch.optim.SGD
    (dampening 0): ``g += weight_decay * theta; v = momentum * v + g; theta -= alpha(tau) * v``.
    ``dtype``: of the shared parameters.
    ``split`` and ``start_method`` as for :class:`hogwild_mts.engines.linear.Engine` (dynamic
    claims of batches; ``fork`` where available).
    ``backend="ray"``, ``ray_address``, ``local_steps``, ``checkpoint`` and ``checkpoint_every``
    as for the linear engine (docs/distributed.md); Ray trains cross-entropy without momentum,
    weight decay or buffers.
    """

    def __init__(self, model="mlp", policy="constant", *, workers: int = 2,
                 epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE,
                 alpha: float | None = None, loss: str = "cross_entropy", momentum: float = 0.0,
                 weight_decay: float = 0.0, seed: int = 0, dtype: str = "float32",
                 eval_every: float = 1.0, eval_every_updates: int | None = None,
                 progress: bool = True, defer_evaluation: bool = False,
                 start_method: str | None = None, split: str = "dynamic",
                 backend: str = "shm", ray_address: str | None = None, local_steps: int = 1,
                 checkpoint=None, checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS):
        from hogwild_mts.models.nets import NETWORKS

        if isinstance(model, str):
            if model not in NETWORKS:
                raise ValueError(f"unknown model {model!r}; choose one of {sorted(NETWORKS)} "
                                 "or pass a factory f(input_shape, outputs) -> nn.Module")
        elif not callable(model):
            raise TypeError(f"model must be a name ({sorted(NETWORKS)}) or a factory "
                            f"f(input_shape, outputs) -> nn.Module, got {model!r}")
        self.model = model
        self._network_spec = model if isinstance(model, str) else serialized_factory(model)
        self.options = lifecycle.run_options(
            policy=policy, alpha=alpha, default_alpha=DEFAULT_ALPHA, workers=workers, epochs=epochs,
            batch_size=batch_size, seed=seed, eval_every=eval_every,
            eval_every_updates=eval_every_updates, progress=progress,
            defer_evaluation=defer_evaluation)
        vars(self).update(vars(self.options))
        self.loss = check_choice("loss", loss, LOSSES)
        self.momentum = check_probability("momentum", momentum, allow_zero=True, allow_one=False)
        self.weight_decay = check_nonnegative("weight_decay", weight_decay)
        self.dtype = check_choice("dtype", dtype, PARAM_DTYPES)
        self.start_method = check_choice("start_method", start_method or default_start_method(),
                                         START_METHODS)
        self.split = check_choice("split", split, worker.SPLITS)
        # backend="ray" (issue 13): all Ray code lives in hogwild_mts.backends.ray
        self.backend = backend
        self.ray_options = ray_options(backend, address=ray_address, local_steps=local_steps,
                                       checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        if self.ray_options is not None:
            unsupported = [f"{name}={value!r}" for name, value, default in (
                ("loss", self.loss, "cross_entropy"), ("momentum", self.momentum, 0.0),
                ("weight_decay", self.weight_decay, 0.0)) if value != default]
            if unsupported:
                raise ValueError(f"backend='ray' trains with loss='cross_entropy', no momentum and "
                                 f"no weight decay; got {', '.join(unsupported)} (use backend='shm')")

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else getattr(self.model, "__name__", repr(self.model))

    # ------------------------------------------------------------------ set-up
    def _network(self, dataset: ArrayDataset):
        """The network for this data, initialised from ``seed`` (the global torch RNG is
        untouched), checked to map two training rows to ``(2, outputs)``."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = make_network(self.model, dataset.input_shape, dataset.outputs)
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"model factory {self.model_name!r} returned {type(network).__name__}, "
                            "expected a torch.nn.Module")
        if parameter_count(network) == 0:
            raise ValueError(f"model {self.model_name!r} has no parameters to train")
        if self.ray_options is not None and buffer_count(network):
            raise ValueError(f"model {self.model_name!r} has buffers "
                             f"{[name for name, _ in network.named_buffers()][:3]}; backend='ray' "
                             "shares only parameters (use backend='shm')")
        network = network.to(getattr(torch, self.dtype))
        network.eval()  # the check below must not move batch-norm statistics; the parent only evaluates
        sample = torch.from_numpy(dataset.train_inputs[:2]).to(getattr(torch, self.dtype))
        with torch.no_grad():
            output = network(sample)
        expected = (sample.shape[0], dataset.outputs)
        if self.loss == "cross_entropy":
            fits = isinstance(output, torch.Tensor) and tuple(output.shape) == expected
            per_row = "one logit per class"
        else:  # any (N, ...) with the values of one target row per row
            fits = (isinstance(output, torch.Tensor) and output.dim() >= 1
                    and output.shape[0] == expected[0] and output[0].numel() == expected[1])
            per_row = f"or any shape (2, ...) of {expected[1]} values per row"
        if not fits:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"model {self.model_name!r} maps inputs of shape {tuple(sample.shape)} "
                             f"to {got}; loss {self.loss!r} on {dataset.name} needs {expected} "
                             f"({per_row})")
        return network

    def _check(self, dataset: ArrayDataset) -> ArrayDataset:
        if (dataset.classes is None) != (self.loss == "mse"):
            held = "class labels" if dataset.classes is not None else "float regression targets"
            fitting = "cross_entropy" if dataset.classes is not None else "mse"
            raise ValueError(f"loss {self.loss!r} cannot train on {dataset.name}, which holds "
                             f"{held}; use loss={fitting!r}")
        if self.batch_size > dataset.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) exceeds the {dataset.n_train} "
                             f"training {dataset.INPUTS} of {dataset.name}")
        if self.workers > dataset.n_train:
            raise ValueError(f"workers ({self.workers}) exceeds the {dataset.n_train} training "
                             f"{dataset.INPUTS} of {dataset.name}; every worker needs at least one")
        return dataset

    def _dataset(self, data, y, test) -> ArrayDataset:
        """``data`` as an ArrayDataset: a data set, an image spec, or arrays with ``y`` (and ``test``)."""
        if isinstance(data, (ArrayDataset, str)):
            if y is not None or test is not None:
                raise ValueError(f"fit(data): y and test go with arrays, not with a data set "
                                 f"({type(data).__name__})")
            return load_images(data) if isinstance(data, str) else data
        if y is None:
            raise TypeError(f"fit() needs a data set (ArrayDataset, ImageDataset, an image spec) "
                            f"or arrays X and y, got {type(data).__name__} without y")
        return array_dataset(data, y, test, classification=self.loss == "cross_entropy")

    def _layout(self, dataset: ArrayDataset, n_values: int):
        """The block's fields; the inputs and targets only for workers that attach it (not fork)."""
        layout = control_layout(self.workers, n_values, self.dtype)
        worker.add_schedule(layout, dataset.n_train, self.split)
        if self.start_method != "fork":
            layout.add("inputs", dataset.train_inputs.dtype, dataset.train_inputs.shape)
            layout.add("targets", dataset.train_targets.dtype, dataset.train_targets.shape)
        return layout

    def _spec(self, block: SharedBlock, dataset: ArrayDataset, n_params: int) -> TorchWorkerSpec:
        return TorchWorkerSpec(
            block_name=block.name, layout=block.layout, network=self._network_spec,
            input_shape=dataset.input_shape, outputs=dataset.outputs, n_params=n_params,
            workers=self.workers, epochs=self.epochs, batch_size=self.batch_size,
            seeds=np.random.SeedSequence(self.seed).spawn(self.workers), policy=self.policy,
            dtype=self.dtype, parent_pid=os.getpid(), split=self.split, loss=self.loss,
            momentum=self.momentum, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ run
    def fit(self, data, y=None, *, test=None) -> FitResult:
        """Train on ``data``: an :class:`~hogwild_mts.data.images.ArrayDataset` (an ImageDataset
        included), an image spec for :func:`~hogwild_mts.data.images.load_images`, or arrays /
        torch tensors ``data`` (N x ...) and ``y`` (integer class labels for cross_entropy, float
        values N x ... for mse) with ``test=(X_test, y_test)`` optional.

        ``final_loss`` is the mean loss on the **test** set (on the training rows when arrays
        come without ``test``; ``settings["evaluated_on"]`` says which), ``final_accuracy`` the
        accuracy there (None for mse); ``history`` holds both per evaluation.  ``params`` holds
        the parameters, then the shared buffers (``settings["parameters"]``, ``["buffers"]``
        values).  Ctrl-C returns the partial result with ``interrupted=True``.  Raises
        WorkerError if a worker fails or dies, DivergenceError on a NaN/inf loss or parameter;
        the shared block is unlinked on every path.
        """
        started = time.time()
        dataset = self._check(self._dataset(data, y, test))
        network = self._network(dataset)
        if self.ray_options is not None:  # backend="ray": hogwild_mts.backends.ray.networks
            from hogwild_mts.backends.ray.networks import fit_network

            return fit_network(self, dataset, network, started)
        n_values = parameter_count(network) + buffer_count(network)
        block = SharedBlock.create(self._layout(dataset, n_values))
        try:  # the lifecycle releases the block; until it holds it (or if it never does), here
            return self._run(block, dataset, network, started)
        except BaseException:
            block.release()  # a second release (after the lifecycle's) does nothing
            raise

    def _run(self, block: SharedBlock, dataset: ArrayDataset, network, started: float) -> FitResult:
        """Fill ``block``, warm up, and run the workers on it through the lifecycle."""
        views = block.views
        n_params = parameter_count(network)
        flatten_parameters(network, views["params"][:n_params])
        flatten_buffers(network, views["params"][n_params:])
        for name, array in (("inputs", dataset.train_inputs), ("targets", dataset.train_targets)):
            if name in views:
                views[name][:] = array
            else:
                views[name] = np.ascontiguousarray(array)
        evaluated = np.empty_like(views["params"])
        bind_parameters(network, evaluated[:n_params])  # the parent scores copies of the block
        bind_buffers(network, evaluated[n_params:])
        warm_up_kernels(views["params"].dtype)
        spec = self._spec(block, dataset, n_params)
        worker.prepare_schedule(views, spec)

        def launch(views, processes):
            if self.start_method == "fork":
                spec.views = views
            return start_processes(torch_worker_main, spec, self.workers, processes,
                                   self.start_method, name="hogwild-torch-worker",
                                   preload=(torch_worker.__name__, "torch"))

        def details(params):
            return {"params": params.astype(np.float64), "intercept": 0.0,
                    "model": self.model_name, "data": dataset.name,
                    "settings": {**self._settings(dataset, n_params, int(params.shape[0]) - n_params),
                                 "split": self.split, "start_method": self.start_method},
                    **worker_times(block.views["clock"], started)}

        def score(params):
            evaluated[:] = params
            return self._evaluate(network, dataset)

        backend = ShmBackend(block, self.workers, launch, self.policy)
        return lifecycle.run(backend, self.options, score=score, details=details,
                             total_updates=worker.total_updates(dataset.n_train, self.workers,
                                                                self.epochs, self.batch_size,
                                                                self.split),
                             started=started)

    def _settings(self, dataset: ArrayDataset, n_params: int, n_buffers: int) -> dict:
        """The result's settings common to both backends."""
        classification = dataset.classes is not None
        return {"epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed,
                "dtype": self.dtype, "parameters": n_params, "buffers": n_buffers,
                "input_shape": list(dataset.input_shape), "outputs": dataset.outputs,
                **({"classes": len(dataset.classes)} if classification else {}),
                "momentum": self.momentum, "weight_decay": self.weight_decay,
                "evaluated_on": dataset.evaluated_on,
                "loss": f"{dataset.evaluated_on} {LOSS_NAMES[self.loss]}",
                "accuracy": dataset.evaluated_on if classification else None}

    def _evaluate(self, network, dataset: ArrayDataset) -> tuple[float, float | None]:
        """(mean loss, accuracy or None for mse) of ``network`` on the evaluated rows, on one
        thread, in eval mode (dropout off, batch norm on its running statistics)."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        network.eval()
        try:
            total_loss, correct = 0.0, 0
            dtype = getattr(torch, self.dtype)
            with torch.no_grad():
                for start in range(0, dataset.n_test, EVAL_BATCH):
                    inputs = torch.from_numpy(dataset.test_inputs[start:start + EVAL_BATCH]).to(dtype)
                    targets = torch.from_numpy(dataset.test_targets[start:start + EVAL_BATCH])
                    outputs = network(inputs)
                    total_loss += float(loss_value(self.loss, outputs, targets, reduction="sum"))
                    if self.loss == "cross_entropy":
                        correct += int((outputs.argmax(dim=1) == targets).sum())
        finally:
            torch.set_num_threads(threads)
        if self.loss == "cross_entropy":
            return total_loss / dataset.n_test, correct / dataset.n_test
        return total_loss / (dataset.n_test * dataset.outputs), None


def train_images(args) -> FitResult:
    """The CLI hook for ``hogwild-mts train --model {mlp,cnn,lenet} --data {digits,mnist1d,mnist:DIR,...}``.

    ``args`` has ``model, data, workers, policy, alpha, epochs, batch_size, seed, quiet, dtype``
    and optionally ``momentum, weight_decay, backend, address, local_steps``; ``alpha``,
    ``epochs``, ``batch_size`` and ``dtype`` may be None (or missing) for this module's defaults,
    ``momentum`` and ``weight_decay`` for 0.  Loads the data (a line on stderr), trains, returns
    the FitResult; prints no summary.
    """
    def option(name, default):
        value = getattr(args, name, None)
        return default if value is None else value

    engine = TorchEngine(args.model, option("policy", "constant"), alpha=option("alpha", None),
                         workers=option("workers", 2), epochs=option("epochs", DEFAULT_EPOCHS),
                         batch_size=option("batch_size", DEFAULT_BATCH_SIZE), seed=option("seed", 0),
                         momentum=option("momentum", 0.0), weight_decay=option("weight_decay", 0.0),
                         dtype=option("dtype", "float32"), progress=not option("quiet", False),
                         backend=option("backend", "shm"), ray_address=option("address", None),
                         local_steps=option("local_steps", 1))
    loading = time.time()
    print(f"loading images {args.data} ...", file=sys.stderr, flush=True)
    dataset = load_images(args.data)
    print(f"  {dataset!r} ({time.time() - loading:.1f} s)", file=sys.stderr, flush=True)
    return engine.fit(dataset)
