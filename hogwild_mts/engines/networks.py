"""Hogwild! for torch networks: ``TorchEngine(...).fit(ImageDataset)`` and the CLI hook.

One shared block per run holds the sequence counter, run flags, per-worker stats/clock/histogram
rows (:mod:`hogwild_mts.core.control`), the flat parameter vector and the epoch orders; the
training images and labels are read in this process's memory by forked workers, or placed in the
block once for spawned ones.  Workers (processes, one torch/BLAS thread each; forked by default,
so they start with torch already imported) bind their network's parameters to views of that
vector and update it lock-free with exact staleness stamps
(:mod:`hogwild_mts.backends.shm.torch_worker`).  The parent evaluates a copy of the shared parameters on the
test set every ``eval_every`` seconds with its own network, whose parameters view that copy.
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
from hogwild_mts.core.options import check_choice
from hogwild_mts.core.result import DivergenceError, FitResult, WorkerError
from hogwild_mts.data.images import ImageDataset, load_images
from hogwild_mts.backends.shm import torch_worker
from hogwild_mts.backends.shm.torch_worker import (TorchWorkerSpec, bind_parameters, flatten_parameters,
                                                   make_network, parameter_count, serialized_factory,
                                                   torch_worker_main, warm_up_kernels)

__all__ = ["TorchEngine", "train_images", "DEFAULT_ALPHA", "DEFAULT_BATCH_SIZE", "DEFAULT_EPOCHS",
           "WorkerError", "DivergenceError"]

DEFAULT_ALPHA = 0.05  # base step of the constant policy (per mean mini-batch gradient)
DEFAULT_BATCH_SIZE = 16
DEFAULT_EPOCHS = 10
PARAM_DTYPES = ("float32", "float64")
EVAL_BATCH = 1024  # test images per forward pass of an evaluation


class TorchEngine:
    """Asynchronous lock-free SGD of a torch network with ``workers`` processes.

    ``model``: ``mlp``, ``cnn``, ``lenet`` (see :mod:`hogwild_mts.models.nets`) or a factory
    ``f(input_shape, classes) -> nn.Module`` without buffers, defined anywhere (a lambda, a
    notebook, ``python -c``: it is sent to the workers with cloudpickle).  ``policy``: a name, policy object or
    function of tau; ``alpha`` the base step of a named policy (default DEFAULT_ALPHA).  ``epochs``
    passes over the training set in total, shuffled every epoch (generators seeded from ``seed``,
    which also initialises the network).
    Each update is ``theta -= alpha(tau) * mean cross-entropy gradient`` of ``batch_size`` rows
    (the last batch of an epoch may be shorter).  ``dtype``: of the shared parameters.
    ``split`` and ``start_method`` as for :class:`hogwild_mts.engines.linear.Engine` (dynamic
    claims of batches; ``fork`` where available).
    ``backend="ray"``, ``ray_address``, ``local_steps``, ``checkpoint`` and ``checkpoint_every``
    as for the linear engine (docs/distributed.md).
    """

    def __init__(self, model="mlp", policy="constant", *, workers: int = 2,
                 epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE,
                 alpha: float | None = None, seed: int = 0, dtype: str = "float32",
                 eval_every: float = 1.0, eval_every_updates: int | None = None,
                 progress: bool = True, defer_evaluation: bool = False,
                 start_method: str | None = None, split: str = "dynamic",
                 backend: str = "shm", ray_address: str | None = None, local_steps: int = 1,
                 checkpoint=None, checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS):
        from hogwild_mts.models.nets import NETWORKS

        if isinstance(model, str):
            if model not in NETWORKS:
                raise ValueError(f"unknown model {model!r}; choose one of {sorted(NETWORKS)} "
                                 "or pass a factory f(input_shape, classes) -> nn.Module")
        elif not callable(model):
            raise TypeError(f"model must be a name ({sorted(NETWORKS)}) or a factory "
                            f"f(input_shape, classes) -> nn.Module, got {model!r}")
        self.model = model
        self._network_spec = model if isinstance(model, str) else serialized_factory(model)
        self.options = lifecycle.run_options(
            policy=policy, alpha=alpha, default_alpha=DEFAULT_ALPHA, workers=workers, epochs=epochs,
            batch_size=batch_size, seed=seed, eval_every=eval_every,
            eval_every_updates=eval_every_updates, progress=progress,
            defer_evaluation=defer_evaluation)
        vars(self).update(vars(self.options))
        self.dtype = check_choice("dtype", dtype, PARAM_DTYPES)
        self.start_method = check_choice("start_method", start_method or default_start_method(),
                                         START_METHODS)
        self.split = check_choice("split", split, worker.SPLITS)
        # backend="ray" (issue 13): all Ray code lives in hogwild_mts.backends.ray
        self.backend = backend
        self.ray_options = ray_options(backend, address=ray_address, local_steps=local_steps,
                                       checkpoint=checkpoint, checkpoint_every=checkpoint_every)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else getattr(self.model, "__name__", repr(self.model))

    # ------------------------------------------------------------------ set-up
    def _network(self, dataset: ImageDataset):
        """The network for this data, initialised from ``seed`` (the global torch RNG is untouched)."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = make_network(self.model, dataset.input_shape, dataset.n_classes)
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"model factory {self.model_name!r} returned {type(network).__name__}, "
                            "expected a torch.nn.Module")
        buffers = [name for name, _ in network.named_buffers()]
        if buffers:
            raise ValueError(f"model {self.model_name!r} has buffers {buffers[:3]} (e.g. batch-norm "
                             "statistics); only parameters are shared, so networks with buffers "
                             "are not supported")
        if parameter_count(network) == 0:
            raise ValueError(f"model {self.model_name!r} has no parameters to train")
        return network.to(getattr(torch, self.dtype))

    def _check(self, dataset) -> ImageDataset:
        if not isinstance(dataset, ImageDataset):
            raise TypeError(f"fit() needs an ImageDataset (see hogwild_mts.data.images.load_images), "
                            f"got {type(dataset).__name__}")
        if self.batch_size > dataset.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) exceeds the {dataset.n_train} "
                             f"training images of {dataset.name}")
        if self.workers > dataset.n_train:
            raise ValueError(f"workers ({self.workers}) exceeds the {dataset.n_train} training "
                             f"images of {dataset.name}; every worker needs at least one")
        return dataset

    def _layout(self, dataset: ImageDataset, n_params: int):
        """The block's fields; the images and labels only for workers that attach it (not fork)."""
        layout = control_layout(self.workers, n_params, self.dtype)
        worker.add_schedule(layout, dataset.n_train, self.split)
        if self.start_method != "fork":
            layout.add("images", np.float32, dataset.train_images.shape)
            layout.add("labels", np.int64, dataset.train_labels.shape)
        return layout

    def _spec(self, block: SharedBlock, dataset: ImageDataset) -> TorchWorkerSpec:
        return TorchWorkerSpec(
            block_name=block.name, layout=block.layout, network=self._network_spec,
            input_shape=dataset.input_shape, classes=dataset.n_classes, workers=self.workers,
            epochs=self.epochs, batch_size=self.batch_size,
            seeds=np.random.SeedSequence(self.seed).spawn(self.workers), policy=self.policy,
            dtype=self.dtype, parent_pid=os.getpid(), split=self.split)

    # ------------------------------------------------------------------ run
    def fit(self, dataset) -> FitResult:
        """Train on ``dataset`` (an ImageDataset or a spec for :func:`load_images`).

        ``final_loss`` is the mean cross-entropy on the **test** set, ``final_accuracy`` the test
        accuracy; ``history`` holds both per evaluation.  Ctrl-C returns the partial result with
        ``interrupted=True``.  Raises WorkerError if a worker fails or dies, DivergenceError on a
        NaN/inf loss or parameter; the shared block is unlinked on every path.
        """
        started = time.time()
        dataset = self._check(load_images(dataset) if isinstance(dataset, str) else dataset)
        network = self._network(dataset)
        if self.ray_options is not None:  # backend="ray": hogwild_mts.backends.ray.networks
            from hogwild_mts.backends.ray.networks import fit_network

            return fit_network(self, dataset, network, started)
        block = SharedBlock.create(self._layout(dataset, parameter_count(network)))
        try:  # the lifecycle releases the block; until it holds it (or if it never does), here
            return self._run(block, dataset, network, started)
        except BaseException:
            block.release()  # a second release (after the lifecycle's) does nothing
            raise

    def _run(self, block: SharedBlock, dataset: ImageDataset, network, started: float) -> FitResult:
        """Fill ``block``, warm up, and run the workers on it through the lifecycle."""
        views = block.views
        flatten_parameters(network, views["params"])
        for name, array in (("images", dataset.train_images), ("labels", dataset.train_labels)):
            if name in views:
                views[name][:] = array
            else:
                views[name] = np.ascontiguousarray(array)
        evaluated_params = np.empty_like(views["params"])
        bind_parameters(network, evaluated_params)  # the parent scores copies of the block
        warm_up_kernels(views["params"].dtype)
        spec = self._spec(block, dataset)
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
                    "settings": {"epochs": self.epochs, "batch_size": self.batch_size,
                                 "seed": self.seed, "dtype": self.dtype,
                                 "parameters": int(params.shape[0]),
                                 "input_shape": list(dataset.input_shape),
                                 "classes": dataset.n_classes, "split": self.split,
                                 "start_method": self.start_method,
                                 "loss": "test cross-entropy", "accuracy": "test"},
                    **worker_times(block.views["clock"], started)}

        def score(params):
            evaluated_params[:] = params
            return self._evaluate(network, dataset)

        backend = ShmBackend(block, self.workers, launch, self.policy)
        return lifecycle.run(backend, self.options, score=score, details=details,
                             total_updates=worker.total_updates(dataset.n_train, self.workers,
                                                                self.epochs, self.batch_size,
                                                                self.split),
                             started=started)

    def _evaluate(self, network, dataset: ImageDataset) -> tuple[float, float]:
        """(mean test cross-entropy, test accuracy) of ``network`` on one thread."""
        import torch
        import torch.nn.functional as F

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        network.eval()  # evaluation mode while scoring (dropout off); workers train their own copies
        try:
            total_loss, correct = 0.0, 0
            dtype = getattr(torch, self.dtype)
            with torch.no_grad():
                for start in range(0, dataset.n_test, EVAL_BATCH):
                    images = torch.from_numpy(dataset.test_images[start:start + EVAL_BATCH]).to(dtype)
                    labels = torch.from_numpy(dataset.test_labels[start:start + EVAL_BATCH])
                    logits = network(images)
                    total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
                    correct += int((logits.argmax(dim=1) == labels).sum())
        finally:
            torch.set_num_threads(threads)
        return total_loss / dataset.n_test, correct / dataset.n_test


def train_images(args) -> FitResult:
    """The CLI hook for ``hogwild-mts train --model {mlp,cnn,lenet} --data {digits,mnist:DIR,...}``.

    ``args`` has ``model, data, workers, policy, alpha, epochs, batch_size, seed, quiet, dtype``
    and optionally ``backend, address, local_steps``; ``alpha``, ``epochs``, ``batch_size`` and
    ``dtype`` may be None (or missing) for this module's defaults.  Loads the data (a line on stderr), trains, returns the FitResult; prints no summary.
    """
    def option(name, default):
        value = getattr(args, name, None)
        return default if value is None else value

    engine = TorchEngine(args.model, option("policy", "constant"), alpha=option("alpha", None),
                         workers=option("workers", 2), epochs=option("epochs", DEFAULT_EPOCHS),
                         batch_size=option("batch_size", DEFAULT_BATCH_SIZE), seed=option("seed", 0),
                         dtype=option("dtype", "float32"), progress=not option("quiet", False),
                         backend=option("backend", "shm"), ray_address=option("address", None),
                         local_steps=option("local_steps", 1))
    loading = time.time()
    print(f"loading images {args.data} ...", file=sys.stderr, flush=True)
    dataset = load_images(args.data)
    print(f"  {dataset!r} ({time.time() - loading:.1f} s)", file=sys.stderr, flush=True)
    return engine.fit(dataset)
