"""Hogwild! for torch networks: ``TorchEngine(...).fit(data)`` and the CLI hook.

The engine validates the options, the data (arrays, a data set, a torch Dataset or DataLoader)
and the network (a bundled name, an nn.Module instance or class, a factory), settles the start weights and the
checkpoint side, and describes the fit as a :class:`hogwild_mts.job.Job` with a
:class:`~hogwild_mts.job.NetworkProblem`.  On shared memory (:mod:`hogwild_mts.backends.shm.run`)
one block holds the control fields, the flat vector of parameters and shared buffers and the
epoch orders; workers (processes, one torch/BLAS thread each) bind their network's parameters and
floating-point buffers to views of that vector and update it lock-free with exact staleness
stamps (:mod:`hogwild_mts.backends.shm.torch_worker`).  The parent evaluates copies of the vector
with its own network (in eval mode), whose parameters and buffers view that copy.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import os
import pickle
import pickletools
import sys
import time

import numpy as np

from hogwild_mts.backends.ray import run as ray_backend
from hogwild_mts.backends.shm import run as shm_backend
from hogwild_mts.checkpoint import (check_same_settings, check_unfinished, policy_spec,
                                    prepare_directory, read_checkpoint_files, run_state)
from hogwild_mts.core.files import strict_json
from hogwild_mts.core.options import check_finite_vector
from hogwild_mts.core.options import check_choice
from hogwild_mts.core.params import (Checked, Choice, Integer, NonNegative, Option, Optional, Positive,
                                     Table, validate)
from hogwild_mts.core.result import DivergenceError, FitResult, RunState, WorkerError, warn_if_bad
from hogwild_mts.data.images import ArrayDataset, array_dataset, load_images
from hogwild_mts.engines import options as shared
from hogwild_mts.job import EVAL_BATCH, LOSS_NAMES, Job, NetworkProblem, NetworkSettings, run_options
from hogwild_mts.kernels.flat import (LOSSES, LossFunction, ModuleClass, ModuleCopy, buffer_count,
                                      callable_name, flatten_buffers, flatten_parameters,
                                      loss_name, loss_value, make_network, parameter_count,
                                      serialized_factory, state_dict_from_flat)
from hogwild_mts.kernels.split import total_updates
from hogwild_mts.model_file import ModelFileError, read_network, save_network

__all__ = ["TorchEngine", "load_network", "network_outputs", "DEFAULT_LR",
           "DEFAULT_BATCH_SIZE", "DEFAULT_EPOCHS", "WorkerError", "DivergenceError"]

DEFAULT_LR = 0.05  # base step of a named policy (per mean mini-batch gradient)
DEFAULT_BATCH_SIZE = 16  # rows per update when neither batch_size nor a DataLoader gives it
DEFAULT_EVALUATIONS = 30  # history rows of a run that sets neither eval_every nor eval_every_updates
PARAM_DTYPES = ("float32", "float64")
MODELS_ACCEPTED = ("a name of a bundled network ('mlp', 'cnn', 'lenet'), an nn.Module instance, an nn.Module "
                   "class (with model_args / model_kwargs, or a functools.partial of it), or a "
                   "factory f(input_shape, outputs) -> nn.Module")
DATA_ACCEPTED = ("arrays or tensors X with y, an ArrayDataset or image spec, a map-style "
                 "torch.utils.data.Dataset of (input, target) pairs (e.g. a TensorDataset), or a "
                 "DataLoader of one")
LOSSES_ACCEPTED = ("'cross_entropy', 'mse', or a function loss(outputs, targets) -> scalar tensor "
                   "(e.g. torch.nn.functional.cross_entropy or an nn.Module loss such as nn.HuberLoss())")


def _ray_checkpoints_are_functions(values) -> dict:
    """Ray checkpoints a network through ``checkpoint=f(...)``, not ``checkpoint_dir``."""
    if values["backend"] == "ray" and values["checkpoint_dir"] is not None:
        raise ValueError("checkpoint_dir applies to backend='shm' for networks; with "
                         "backend='ray' pass checkpoint=f(engine, params, version, histogram)")
    return {}


def _ray_trains_plain_cross_entropy(values) -> dict:
    """Ray trains cross-entropy with plain SGD steps (no momentum, no weight decay)."""
    if values["ray_options"] is not None:
        unsupported = [f"{option.name}={values[option.name]!r}"
                       for option in (LOSS, shared.MOMENTUM, WEIGHT_DECAY)
                       if values[option.name] not in (option.default, 0.0)]
        if unsupported:
            raise ValueError(f"backend='ray' trains with loss='cross_entropy', no momentum and "
                             f"no weight decay; got {', '.join(unsupported)} (use backend='shm')")
    return {}


class _Loss:
    """A named loss (one of LOSSES) or a function ``loss(outputs, targets) -> scalar tensor``."""

    def __call__(self, name: str, value):
        if isinstance(value, str):
            try:
                return check_choice(name, value, LOSSES)
            except ValueError as error:
                raise ValueError(f"{error} (or pass a function loss(outputs, targets) -> scalar "
                                 "tensor)") from None
        if callable(value) and not inspect.isclass(value):
            return value
        hint = " (an nn.Module loss class: pass an instance, e.g. nn.CrossEntropyLoss())" \
            if inspect.isclass(value) else ""
        raise ValueError(f"{name} must be {LOSSES_ACCEPTED}, got {value!r}{hint}")

    def __str__(self) -> str:
        return "'cross_entropy', 'mse' or a function loss(outputs, targets) -> scalar tensor"


def _batch_size(values) -> dict:
    """``batch_size`` None: a DataLoader's batch size at fit, else DEFAULT_BATCH_SIZE;
    ``batch_size_given`` says whether it was given."""
    given = values["batch_size"] is not None
    return {"batch_size": values["batch_size"] if given else DEFAULT_BATCH_SIZE,
            "batch_size_given": given}


def _model_arguments(values) -> dict:
    """``model_args`` a tuple or list, ``model_kwargs`` None or a dict with string keys."""
    args, kwargs = values["model_args"], values["model_kwargs"]
    if not isinstance(args, (tuple, list)):
        raise ValueError(f"model_args must be a tuple of the module class's arguments, got {args!r}")
    if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise ValueError(f"model_kwargs must be None or a dict of the module class's keyword "
                         f"arguments, got {kwargs!r}")
    return {"model_args": tuple(args), "model_kwargs": dict(kwargs or {})}


LOSS = Option("loss", _Loss(), "cross_entropy", "the network")
WEIGHT_DECAY = Option("weight_decay", NonNegative(), 0.0, "the workers' update")
# TorchEngine's options in validation order: name, constraint, default, where it goes.  A
# network's step, epochs, batch size, evaluation period and dtype have their own defaults.
NETWORK_OPTIONS = Table(
    (shared.POLICY, shared.base_step(DEFAULT_LR), shared.WORKERS,
     Option("epochs", Integer(1), 10, "run"),
     Option("batch_size", Optional(Integer(1)), None,
            f"run (None: a DataLoader's batch size, else {DEFAULT_BATCH_SIZE})"),
     shared.SEED, Option("eval_every", Optional(Positive()), None, "run (seconds)"),
     Option("eval_every_updates", Optional(Integer(1)), None,
            f"run (neither: about {DEFAULT_EVALUATIONS} evaluations over the run's updates)"),
     shared.PROGRESS, shared.DEFER_EVALUATION, shared.MOMENTUM,
     LOSS, WEIGHT_DECAY, Option("dtype", Choice(PARAM_DTYPES), "float32", "the network"),
     Option("model_args", Checked("a tuple: a module class's arguments"), (), "the network"),
     Option("model_kwargs", Checked("None or a dict: a module class's keyword arguments"), None,
            "the network"),
     *shared.PROCESS_OPTIONS),
    rules=(shared.named_policy(DEFAULT_LR), _batch_size, shared.evaluation_schedule,
           _model_arguments, _ray_checkpoints_are_functions, shared.process_options,
           shared.worker_momentum, _ray_trains_plain_cross_entropy))
DEFAULTS = NETWORK_OPTIONS.defaults
DEFAULT_EPOCHS = DEFAULTS.epochs  # a public name

# What a resumed run must share with its checkpoint (each one that differs is named).
RESUME_SETTINGS = ("network", "input_shape", "outputs", "loss", "n_train", "targets_digest",
                   "epochs", "batch_size", "seed", "split", "dtype", "policy", "momentum",
                   "weight_decay")


class TorchEngine:
    """Asynchronous lock-free SGD of a torch network with ``workers`` processes.

    ``model``: ``mlp``, ``cnn`` (2-D on images, 1-D on signals such as MNIST-1D), ``lenet`` (see
    :mod:`hogwild_mts.models.nets`); an ``nn.Module`` instance (each worker gets a deep copy; the
    run starts from its own weights and buffers); an ``nn.Module`` class, built as
    ``cls(*model_args, **model_kwargs)`` (or a ``functools.partial`` of one), initialised from
    ``seed``; or a factory ``f(input_shape, outputs) -> nn.Module`` (``outputs``: the classes, or
    the values per target row for ``mse``).  Each may be defined anywhere (a notebook,
    ``python -c``: it is sent to the workers with cloudpickle); its forward takes one batch
    ``(N, *input_shape)``.  Anything else is refused here, naming what is accepted; a fit's
    ``result.module()`` is the trained module.  Floating-point
    buffers (batch-norm running statistics) are shared like the parameters and updated in place,
    lock-free, by every worker's forward pass; other buffers stay private to each worker.
    ``policy``: a name, policy object or function of tau; ``lr`` the base step of a named
    policy (default DEFAULT_LR).  ``loss``: ``cross_entropy`` (integer class labels),
    ``mse`` (float targets) or a function ``loss(outputs, targets) -> scalar tensor`` (the batch's
    mean, e.g. ``torch.nn.functional.cross_entropy`` or ``nn.HuberLoss()``; integer targets are
    class labels whose accuracy the evaluations report, float targets regression values).
    ``batch_size``: rows per update (None: a DataLoader's batch size, else DEFAULT_BATCH_SIZE).
    Evaluations: every ``eval_every`` seconds or ``eval_every_updates`` updates; neither: about
    DEFAULT_EVALUATIONS over the run's updates.  ``epochs`` passes over the training set in total, shuffled every
    epoch (generators seeded from ``seed``, which also initialises the network).
    Each update is ``theta -= alpha(tau) * g`` with ``g`` the mean loss gradient of ``batch_size``
    rows (the last batch of an epoch may be shorter); with ``momentum`` (in [0, 1)) or
    ``weight_decay`` (>= 0) each worker keeps a private velocity exactly as torch.optim.SGD
    (dampening 0): ``g += weight_decay * theta; v = momentum * v + g; theta -= alpha(tau) * v``.
    ``dtype``: of the shared parameters.
    ``split`` and ``start_method`` as for :class:`hogwild_mts.engines.linear.Engine` (dynamic
    claims of batches; ``fork`` where available).
    ``checkpoint_dir`` keeps the run's latest checkpoint there (a network model file with the
    run state, see :meth:`fit`'s ``resume``), every ``checkpoint_every`` seconds and/or every
    ``checkpoint_every_updates`` updates (neither: every 60 s), and when the run ends or is
    stopped; it needs ``split="dynamic"``.  :meth:`save` writes a fit's network as a model file,
    :func:`load_network` reads one.
    ``backend="ray"``, ``ray_address``, ``local_steps``, ``checkpoint``, ``checkpoint_every``
    ``max_worker_restarts``, ``placement_timeout`` and ``on_lost_worker`` as for the linear engine (docs/distributed.md); Ray trains cross-entropy without momentum,
    weight decay or buffers, and takes no ``checkpoint_dir``.
    Every option, its allowed values and default: NETWORK_OPTIONS (docs/api.md); the validated
    options are ``self.options``, and ``self.<option>`` reads them there.
    """

    def __init__(self, model="mlp", policy=DEFAULTS.policy, *, workers: int = DEFAULTS.workers,
                 epochs: int = DEFAULTS.epochs, batch_size: int | None = DEFAULTS.batch_size,
                 lr: float | None = DEFAULTS.lr, loss=DEFAULTS.loss,
                 momentum: float = DEFAULTS.momentum, weight_decay: float = DEFAULTS.weight_decay,
                 seed: int = DEFAULTS.seed, dtype: str = DEFAULTS.dtype,
                 eval_every: float | None = DEFAULTS.eval_every,
                 eval_every_updates: int | None = DEFAULTS.eval_every_updates,
                 progress: bool = DEFAULTS.progress,
                 defer_evaluation: bool = DEFAULTS.defer_evaluation,
                 model_args: tuple = DEFAULTS.model_args, model_kwargs: dict | None = DEFAULTS.model_kwargs,
                 start_method: str | None = DEFAULTS.start_method, split: str = DEFAULTS.split,
                 backend: str = DEFAULTS.backend, ray_address: str | None = DEFAULTS.ray_address,
                 local_steps: int = DEFAULTS.local_steps, checkpoint=DEFAULTS.checkpoint,
                 checkpoint_every: float | None = DEFAULTS.checkpoint_every,
                 checkpoint_dir=DEFAULTS.checkpoint_dir,
                 checkpoint_every_updates: int | None = DEFAULTS.checkpoint_every_updates,
                 max_worker_restarts: int = DEFAULTS.max_worker_restarts,
                 placement_timeout: float = DEFAULTS.placement_timeout,
                 on_lost_worker: str = DEFAULTS.on_lost_worker):
        self.options = validate(NETWORK_OPTIONS, NETWORK_OPTIONS.arguments(locals()))
        self._take_model(model)

    __getattr__ = shared.option_of

    def _take_model(self, model) -> None:
        """Keep ``model`` (checked against ``model_args`` / ``model_kwargs``) and what the
        workers build it from; ValueError or TypeError naming what is accepted otherwise."""
        from hogwild_mts.models.nets import NETWORKS

        self.model = model
        if isinstance(model, str):
            if model not in NETWORKS:
                raise ValueError(f"unknown model {model!r}; choose one of {sorted(NETWORKS)} "
                                 "or pass an nn.Module instance, an nn.Module class or a factory "
                                 "f(input_shape, outputs) -> nn.Module")
            if self.model_args or self.model_kwargs:
                raise ValueError("model_args and model_kwargs go with a module class, not with a "
                                 f"bundled network ({model!r})")
            self._factory, self._model_kind = model, "name"
        else:
            self._factory, self._model_kind = model_factory(model, self.model_args, self.model_kwargs)
        self._network_spec = model if isinstance(model, str) else serialized_factory(self._factory)
        self._loss_payload = None if isinstance(self.loss, str) else serialized_factory(self.loss, "loss")

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else callable_name(
            type(self.model) if self._model_kind == "instance" else self.model)

    # ------------------------------------------------------------------ set-up
    def _loss_for(self, dataset: ArrayDataset):
        """The loss the run trains: a name, or the caller's function as a LossFunction that
        treats the targets as class labels when the data set has classes."""
        if isinstance(self.loss, str):
            return self.loss
        return LossFunction(self.loss, dataset.classes is not None, payload=self._loss_payload)

    def _network(self, dataset: ArrayDataset, loss=None):
        """The network for this data, initialised from ``seed`` (the global torch RNG is
        untouched; a module instance keeps its own weights), checked to map two training rows
        to ``(2, outputs)`` and, with a loss function, to give it a scalar."""
        import torch

        loss = self._loss_for(dataset) if loss is None else loss
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                network = make_network(self._factory, dataset.input_shape, dataset.outputs)
            except TypeError as error:
                if self._model_kind != "factory":
                    raise
                raise TypeError(f"model factory {self.model_name!r} failed when called as "
                                f"f(input_shape={tuple(dataset.input_shape)}, outputs="
                                f"{dataset.outputs}) ({error}); model must be {MODELS_ACCEPTED}") from error
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
        try:
            with torch.no_grad():
                output = network(sample)
        except Exception as error:
            raise ValueError(f"model {self.model_name!r} cannot run on a batch of {dataset.name}: "
                             f"calling it on inputs of shape {tuple(sample.shape)} raised "
                             f"{type(error).__name__}: {error}; TorchEngine calls the module on one "
                             "batch tensor (N, *input_shape) and trains its output (N, outputs)") from error
        expected = (sample.shape[0], dataset.outputs)
        if isinstance(loss, str) and loss == "mse":  # any (N, ...) with the values of one target row per row
            fits = (isinstance(output, torch.Tensor) and output.dim() >= 1
                    and output.shape[0] == expected[0] and output[0].numel() == expected[1])
            per_row = f"or any shape (2, ...) of {expected[1]} values per row"
        elif isinstance(loss, str) or loss.classification:
            fits = isinstance(output, torch.Tensor) and tuple(output.shape) == expected
            per_row = "one logit per class"
        else:  # a loss function on float targets: one output row per row
            fits = isinstance(output, torch.Tensor) and output.dim() >= 1 and output.shape[0] == expected[0]
            expected, per_row = (expected[0], "..."), "one output row per input row"
        if not fits:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"model {self.model_name!r} maps inputs of shape {tuple(sample.shape)} "
                             f"to {got}; loss {loss_name(loss)!r} on {dataset.name} needs {expected} "
                             f"({per_row})")
        if not isinstance(loss, str):
            targets = torch.as_tensor(np.asarray(dataset.train_targets[:2]))
            try:
                with torch.no_grad():
                    loss_value(loss, output, targets)
            except Exception as error:
                raise ValueError(f"loss {loss.name!r} cannot score the outputs {tuple(output.shape)} "
                                 f"of model {self.model_name!r} against targets "
                                 f"{tuple(targets.shape)} ({targets.dtype}): {type(error).__name__}: "
                                 f"{error}") from error
        return network

    def _check(self, dataset: ArrayDataset) -> ArrayDataset:
        if isinstance(self.loss, str) and (dataset.classes is None) != (self.loss == "mse"):
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

    def _dataset(self, data, y, test) -> tuple[ArrayDataset, int | None]:
        """``data`` as an ArrayDataset, and the batch size of a DataLoader (else None): a data
        set, an image spec, a torch Dataset or DataLoader, or arrays with ``y`` (and ``test``)."""
        loader_batch = None
        torch_data = torch_dataset(data, "fit(data)")
        if torch_data is not None:
            if y is not None:
                raise ValueError(f"fit(data): y goes with arrays, not with a {type(data).__name__}, "
                                 "whose items are (input, target) pairs")
            (data, y), loader_batch = torch_data
        elif isinstance(data, (ArrayDataset, str)):
            if y is not None or test is not None:
                raise ValueError(f"fit(data): y and test go with arrays, not with a data set "
                                 f"({type(data).__name__})")
            return (load_images(data) if isinstance(data, str) else data), None
        elif y is None:
            raise TypeError(f"fit() needs a data set (an ArrayDataset or image spec, a map-style "
                            "torch Dataset of (input, target) pairs such as a TensorDataset, or a "
                            f"DataLoader of one) or arrays X and y, got {type(data).__name__} without y")
        if test is not None:
            torch_test = torch_dataset(test, "fit(test=...)")
            if torch_test is not None:
                test = torch_test[0]
        if isinstance(self.loss, str):
            classification = self.loss == "cross_entropy"
        else:  # a loss function: integer targets are class labels
            classification = _integer_targets(y)
        return array_dataset(data, y, test, classification=classification), loader_batch

    def _with_batch_size(self, batch_size: int) -> "TorchEngine":
        """This engine, or a copy of it training ``batch_size`` rows per update."""
        if batch_size == self.batch_size:
            return self
        engine = copy.copy(self)
        engine.options = self.options.replace(batch_size=int(batch_size))
        return engine

    # ------------------------------------------------------------------ run
    def fit(self, data, y=None, *, test=None, init=None, init_params=None, resume=None) -> FitResult:
        """Train on ``data``: an :class:`~hogwild_mts.data.images.ArrayDataset` (an ImageDataset
        included), an image spec for :func:`~hogwild_mts.data.images.load_images`, arrays /
        torch tensors ``data`` (N x ...) and ``y`` (integer class labels for cross_entropy, float
        values N x ... for mse), any map-style ``torch.utils.data.Dataset`` whose items are
        ``(input, target)`` pairs (a TensorDataset, a Subset, your own; its items are read once
        into arrays), or a ``DataLoader`` of one: its dataset is the data and its ``batch_size``
        the run's unless the engine was given ``batch_size`` (the engine shuffles every epoch
        itself, seeded from ``seed``; the loader's sampler, shuffling and collate_fn are not
        used).  ``test``: ``(X_test, y_test)``, a Dataset or a DataLoader, optional.

        Start (default: the network as ``seed`` initialises it; a module instance: its own
        weights) from ``init``, a network model file (a directory written by :meth:`save`, a
        checkpoint, ``hogwild-mts train --out``) or a ``state_dict``, or from ``init_params``, a
        previous result's ``params``.  ``resume``: a
        checkpoint directory (``checkpoint_dir``) whose run this fit continues with the same
        network, data and settings (the number of workers may differ): the remaining batches
        only, from its weights and buffers, counter, histogram and counts; each worker's
        momentum velocity starts again at zero, and an adaptive policy refits on the restored
        histogram.  A file of another kind, another network, shape or outputs, other settings or
        a finished run are refused before any worker starts.

        ``final_loss`` is the mean loss on the **test** set (on the training rows when arrays
        come without ``test``; ``settings["evaluated_on"]`` says which), ``final_accuracy`` the
        accuracy there (None for regression targets); ``history`` holds both per evaluation.
        ``result.module()`` is the trained ``nn.Module`` (parameters and buffers loaded, eval
        mode); ``params`` holds the parameters, then the shared buffers
        (``settings["parameters"]``, ``["buffers"]`` values).  Ctrl-C returns the partial result
        with ``interrupted=True``.  Raises WorkerError if a worker fails or dies, DivergenceError
        on a NaN/inf loss or parameter; the shared block is unlinked on every path.  A finished
        run whose final loss is above its starting loss or far above its best warns a
        ``TrainingWarning`` (a RuntimeWarning: :func:`hogwild_mts.core.result.training_trouble`).
        """
        started = time.time()
        given = [name for name, value in (("init", init), ("init_params", init_params),
                                          ("resume", resume)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"give one of init, init_params and resume, got {' and '.join(given)}")
        dataset, loader_batch = self._dataset(data, y, test)
        engine = self if loader_batch is None or self.batch_size_given else self._with_batch_size(loader_batch)
        return engine._fit(dataset, started, init, init_params, resume)

    def _prepare(self, dataset: ArrayDataset, init, init_params, resume):
        """Everything a fit settles before any worker starts, for every backend: the data set
        checked, the problem (the network initialised, or loaded from ``init`` /
        ``init_params`` / ``resume``), the start and checkpoint side (a ``_NetworkRun``), the
        result's common settings and evaluation period, and a copy of the network for
        ``result.module()``."""
        dataset = self._check(dataset)
        loss = self._loss_for(dataset)
        network = self._network(dataset, loss)
        run = _NetworkRun(self, dataset, network, init, init_params, resume)
        n_params, n_buffer_values = parameter_count(network), buffer_count(network)
        template = copy.deepcopy(network)  # result.module()'s, before the run binds the network
        problem = NetworkProblem(name=self.model_name, build=self._network_spec, network=network,
                                 dataset=dataset, loss=loss, dtype=self.dtype,
                                 weight_decay=self.weight_decay)
        return (problem, run, self._settings(dataset, n_params, n_buffer_values),
                self._evaluation_period(dataset, n_params + n_buffer_values), template)

    @staticmethod
    def _finished(result: FitResult, template) -> FitResult:
        """``result`` with ``module()`` building ``template`` with its parameters; warned about
        when it trained badly."""
        result.module_builder = functools.partial(trained_module, template)
        warn_if_bad(result, stacklevel=5)
        return result

    def _fit(self, dataset: ArrayDataset, started: float, init, init_params, resume) -> FitResult:
        problem, run, settings, eval_every_updates, template = self._prepare(
            dataset, init, init_params, resume)
        network = problem.network
        ray_checkpoint = None
        if self.ray_options is not None and self.ray_options.checkpoint is not None:
            ray_checkpoint = functools.partial(self.ray_options.checkpoint, self)
        if self.ray_options is None and self.start_method != "fork":
            check_main_module(self.start_method, self.policy)
        job = Job(options=run_options(self.options, eval_every_updates=eval_every_updates),
                  started=started, problem=problem, settings=settings,
                  split=self.split, start_method=self.start_method, checkpoints=self.checkpoints,
                  write_checkpoint=None if self.checkpoints is None
                  else lambda state: run.write(network, state),
                  resumed=run.resumed, ray=self.ray_options, ray_checkpoint=ray_checkpoint)
        try:
            result = (shm_backend if self.ray_options is None else ray_backend).fit(job)
        except WorkerError as error:
            if error.result is not None:  # the partial result of the other workers' updates
                error.result.module_builder = functools.partial(trained_module, template)
            if self.ray_options is None and self.start_method != "fork" and " exited with code " in str(error):
                raise WorkerError(f"{error}.  A {self.start_method} worker that exits before it "
                                  "can report has most often failed to start: it runs the caller's "
                                  "main module again (a script needs `if __name__ == \"__main__\":`; "
                                  "python - or stdin cannot be run again) and unpickles its "
                                  "arguments; its traceback is on stderr.  Use start_method='fork', "
                                  "or define the model factory, loss and policy in an importable "
                                  "module (docs/deep_learning.md)", result=error.result) from None
            raise
        return self._finished(result, template)

    def _evaluation_period(self, dataset: ArrayDataset, n_values: int) -> int | None:
        """``eval_every_updates``: as given; None when ``eval_every`` (seconds) is given; else
        about DEFAULT_EVALUATIONS evaluations over the run's updates (fewer where their
        parameter copies would exceed the shared-memory limit)."""
        if self.eval_every_updates is not None or self.eval_every is not None:
            return self.eval_every_updates
        from hogwild_mts.backends.shm.worker import EVAL_MAX_BYTES

        total = total_updates(dataset.n_train, self.workers, self.epochs, self.batch_size, self.split)
        copy_bytes = n_values * np.dtype(self.dtype).itemsize
        return max(1, -(-total // DEFAULT_EVALUATIONS), -(-total * copy_bytes // EVAL_MAX_BYTES))

    # ------------------------------------------------------------------ model files
    def save(self, result: FitResult, path) -> str:
        """Write the network of ``result`` (a fit of this engine's model) as a model file into
        directory ``path`` (:mod:`hogwild_mts.model_file`); return ``path``.  It loads with
        :func:`load_network`, starts a new fit with ``fit(..., init=path)`` and predicts with
        ``hogwild-mts predict``."""
        if not isinstance(result, FitResult) or "input_shape" not in result.settings:
            raise TypeError(f"save() takes the FitResult of a TorchEngine fit, got {type(result).__name__}")
        settings = result.settings
        if result.model != self.model_name:
            raise ValueError(f"the result is a fit of model {result.model!r}; this engine trains "
                             f"{self.model_name!r}")
        import torch

        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            network = make_network(self._factory, settings["input_shape"], settings["outputs"])
        network = network.to(getattr(torch, settings["dtype"]))
        n_values = parameter_count(network) + buffer_count(network)
        if result.params.shape != (n_values,):
            raise ValueError(f"the result holds {result.params.shape[0]} values; model "
                             f"{self.model_name!r} has {n_values} parameters and shared buffer values")
        metrics = {key: value for key, value in result.to_dict().items()
                   if key not in ("history", "staleness_histogram", "staleness_fit", "settings")}
        engine = self._with_batch_size(settings["batch_size"])  # a DataLoader's, if it gave it
        return save_network(
            os.fspath(path), state_dict=state_dict_from_flat(network, result.params),
            network=self._network_description(settings["input_shape"], settings["outputs"]),
            loss=file_loss(self.loss, settings.get("classes") is not None),
            classes=settings.get("class_names"), dtype=settings["dtype"],
            settings=engine._file_settings(), histogram=result.staleness_histogram,
            counter=result.counter, metrics=metrics)

    def _network_description(self, input_shape, outputs: int) -> dict:
        """How a model file names the network: a bundled name, or (a factory) only its name."""
        bundled = isinstance(self.model, str)
        return {"name": self.model if bundled else None, "factory": None if bundled else self.model_name,
                "input_shape": list(input_shape), "outputs": int(outputs)}

    def _file_settings(self) -> dict:
        """The engine's settings as a model file stores them (the policy as a spec)."""
        settings = {"workers": self.workers, "epochs": self.epochs, "batch_size": self.batch_size,
                    "seed": self.seed, "split": self.split, "momentum": self.momentum,
                    "weight_decay": self.weight_decay, "policy": policy_spec(self.policy, self.workers)}
        if not isinstance(self.loss, str):  # the file's loss says how predictions are read
            settings["loss_function"] = callable_name(self.loss)
        return settings

    def _settings(self, dataset: ArrayDataset, n_params: int, n_buffers: int) -> NetworkSettings:
        """The result's settings common to both backends."""
        classification = dataset.classes is not None
        return NetworkSettings(
            epochs=self.epochs, batch_size=self.batch_size, seed=self.seed, dtype=self.dtype,
            parameters=n_params, buffers=n_buffers, input_shape=list(dataset.input_shape),
            outputs=dataset.outputs, classes=len(dataset.classes) if classification else None,
            class_names=list(dataset.classes) if classification else None,
            momentum=self.momentum, weight_decay=self.weight_decay,
            evaluated_on=dataset.evaluated_on,
            loss=f"{dataset.evaluated_on} {LOSS_NAMES.get(self.loss, callable_name(self.loss))}"
            if isinstance(self.loss, str) else f"{dataset.evaluated_on} {callable_name(self.loss)}",
            accuracy=dataset.evaluated_on if classification else None)


class _NetworkRun:
    """A fit's start and checkpoint side, settled before any worker starts: the weights it starts
    from (loaded into the engine's ``network``), the state it resumes from (``resumed``, None for
    a new run, checked against this run), the run's settings as a checkpoint records them, and
    the checkpoint directory made ready."""

    def __init__(self, engine: TorchEngine, dataset: ArrayDataset, network, init, init_params, resume):
        self.engine, self.dataset, self.resumed = engine, dataset, None
        if init is not None:
            if isinstance(init, (str, os.PathLike)):
                document, state_dict = read_network(os.fspath(init))
                self._check_network(os.fspath(init), document)
                load_state(network, state_dict, f"init {os.fspath(init)}")
            elif isinstance(init, dict):
                load_state(network, init, "init")
            else:
                raise TypeError(f"init must be a model file path or a state_dict, got {type(init).__name__}")
        elif init_params is not None:
            load_state(network, state_dict_from_flat(network, _checked_init_params(init_params, network)),
                       "init_params")
        if resume is None and engine.checkpoints is None:
            return
        self.settings = json.loads(strict_json(self._run_settings()))  # as a checkpoint holds them
        if resume is not None:
            if engine.ray_options is not None:
                raise ValueError("resume applies to backend='shm'; with backend='ray' start from the "
                                 "checkpoint's weights with init=DIR")
            path = os.fspath(resume)
            document, state_dict, run = read_checkpoint_files(
                path, read_network, "start from its weights with init= or --init")
            check_same_settings(path, run["settings"], self.settings, RESUME_SETTINGS,
                                "network, data and settings")
            load_state(network, state_dict, path)
            self.resumed = run_state(path, document, run, lambda: (
                _network_values(network), document["staleness_histogram"], run["order_generator"], None))
            check_unfinished(path, self.resumed, total_updates(
                dataset.n_train, engine.workers, engine.epochs, engine.batch_size),
                "load it with hogwild_mts.load_network, or start a new run from it with init= / --init")
        if engine.checkpoints is not None:
            prepare_directory(engine.checkpoints.directory)

    def _run_settings(self) -> dict:
        engine, dataset = self.engine, self.dataset
        digest = hashlib.blake2b(np.ascontiguousarray(dataset.train_targets).tobytes(), digest_size=8)
        return {"backend": engine.backend, "workers": engine.workers, "network": engine.model_name,
                "input_shape": list(dataset.input_shape), "outputs": dataset.outputs,
                "loss": engine.loss if isinstance(engine.loss, str) else callable_name(engine.loss),
                "n_train": dataset.n_train, "targets_digest": digest.hexdigest(),
                **engine._file_settings(), "dtype": engine.dtype}

    def _check_network(self, path: str, document: dict) -> None:
        """Refuse (ValueError) a model file whose network is not the one this run builds."""
        saved = document["network"]
        mine = self.engine._network_description(self.dataset.input_shape, self.dataset.outputs)
        differ = [f"{key}={saved.get(key)!r} (this run: {mine[key]!r})"
                  for key in ("name", "input_shape", "outputs") if saved.get(key) != mine[key]]
        if differ:
            raise ValueError(f"init {path}: the file holds another network: " + ", ".join(differ))

    def write(self, network, state: RunState) -> None:
        """Write ``state`` as the checkpoint (``network``: any network of this run, a template);
        OSError naming the directory when it cannot be written (the previous one stays whole)."""
        engine, dataset = self.engine, self.dataset
        directory = engine.checkpoints.directory
        run = {"settings": self.settings, "updates": int(state.updates), "samples": int(state.samples),
               "max_staleness": int(state.max_staleness), "refits": int(state.refits),
               "position": int(state.position), "finished": bool(state.finished),
               "order_generator": [int(word) for word in state.order_generator]}
        try:
            save_network(directory, state_dict=state_dict_from_flat(network, state.params),
                         network=engine._network_description(dataset.input_shape, dataset.outputs),
                         loss=file_loss(engine.loss, dataset.classes is not None),
                         classes=dataset.classes, dtype=engine.dtype,
                         settings=engine._file_settings(), histogram=state.histogram,
                         counter=state.counter, run=run,
                         metrics={"updates": int(state.updates), "finished": bool(state.finished)})
        except OSError as error:
            raise OSError(error.errno, f"checkpoint {directory} could not be written: "
                                       f"{error.strerror or error}") from None


def _module_type():
    """``torch.nn.Module``, or None while torch is not imported (then no argument is a module)."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.nn.Module


def _one_input(forward, what: str) -> None:
    """TypeError unless ``forward`` (bound, or a class's function without ``self``) can be
    called with one positional argument, the input batch."""
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read: the check at fit calls it
        return
    positional = [p for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    keyword_only = [p.name for p in parameters if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > 1 or keyword_only or not (positional or variadic):
        raise TypeError(f"{what}: its forward{inspect.signature(forward)} does not take one input "
                        "batch; TorchEngine calls module(inputs) with one tensor (N, *input_shape) "
                        "and trains its output (N, outputs) (wrap a module with other inputs in "
                        "one whose forward(x) calls it)")


def model_factory(model, model_args=(), model_kwargs=None):
    """(the factory ``f(input_shape, outputs) -> nn.Module`` a run builds ``model`` with, its
    kind): an ``nn.Module`` instance ("instance": a deep copy of it each time), an ``nn.Module``
    class or a ``functools.partial`` of one ("class": built with ``model_args`` and
    ``model_kwargs``, which it must accept), or any other callable, taken as such a factory
    ("factory").  TypeError naming what is accepted otherwise."""
    module_type = _module_type()
    extra = bool(model_args) or bool(model_kwargs)
    if module_type is not None and isinstance(model, module_type):
        if extra:
            raise TypeError("model_args and model_kwargs go with a module class; this model is an "
                            f"instance of {type(model).__name__}, which is used as it is")
        _one_input(model.forward, f"model {type(model).__name__}()")
        return ModuleCopy(model), "instance"
    target = model.func if isinstance(model, functools.partial) else model
    if module_type is not None and inspect.isclass(target) and issubclass(target, module_type):
        name = target.__name__
        try:
            inspect.signature(model).bind(*model_args, **(model_kwargs or {}))
        except TypeError as error:
            raise TypeError(f"model class {name}{inspect.signature(model)} cannot be built from "
                            f"model_args={tuple(model_args)!r}, model_kwargs={dict(model_kwargs or {})!r} "
                            f"({error}); TorchEngine builds a module class as "
                            f"{name}(*model_args, **model_kwargs): pass them, e.g. "
                            f"TorchEngine({name}, model_args=(...), model_kwargs={{...}}), or pass "
                            f"an instance, TorchEngine({name}(...))") from None
        forward = getattr(target, "forward", None)
        if inspect.isfunction(forward):
            _one_input(functools.partial(forward, None), f"model class {name}")
        return ModuleClass(model, model_args, model_kwargs), "class"
    if callable(model) and not inspect.isclass(model):
        if extra:
            raise TypeError("model_args and model_kwargs go with a module class; a factory "
                            "f(input_shape, outputs) takes no other arguments (use functools.partial)")
        return model, "factory"
    raise TypeError(f"model must be {MODELS_ACCEPTED}; got {model!r}")


def torch_dataset(data, what: str):
    """``((inputs, targets), batch size or None)`` of a ``torch.utils.data.DataLoader`` (its
    dataset, its batch size) or a map-style ``Dataset`` (its items' inputs and targets, stacked);
    None for anything else.  TypeError for an iterable dataset, ValueError for items that are
    not ``(input, target)`` pairs."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

    batch_size = None
    if isinstance(data, DataLoader):
        batch_size = data.batch_size if data.batch_size is not None \
            else getattr(data.batch_sampler, "batch_size", None)
        data, what = data.dataset, f"{what}: the DataLoader's dataset"
    elif not isinstance(data, Dataset):
        return None
    if isinstance(data, IterableDataset):
        raise TypeError(f"{what} is an iterable dataset ({type(data).__name__}), which cannot be "
                        "read by index; TorchEngine takes a map-style Dataset of (input, target) "
                        f"pairs: {DATA_ACCEPTED} (collect an iterable one into tensors X, y first)")
    if isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise ValueError(f"{what} is a TensorDataset of {len(data.tensors)} tensors; its items "
                             "must be (input, target) pairs: TensorDataset(X, y)")
        return tuple(data.tensors), batch_size
    try:
        n = len(data)
    except TypeError:
        raise TypeError(f"{what} ({type(data).__name__}) has no len(); TorchEngine takes a "
                        f"map-style Dataset of (input, target) pairs: {DATA_ACCEPTED}") from None
    if n == 0:
        raise ValueError(f"{what} ({type(data).__name__}) is empty")
    inputs, targets = [], []
    for index in range(n):
        item = data[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            held = f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) \
                else f"a {type(item).__name__}"
            raise ValueError(f"{what}: item {index} is {held}; TorchEngine takes a Dataset whose "
                             "items are (input, target) pairs")
        inputs.append(torch.as_tensor(np.asarray(item[0]) if not isinstance(item[0], torch.Tensor)
                                      else item[0]))
        targets.append(torch.as_tensor(np.asarray(item[1]) if not isinstance(item[1], torch.Tensor)
                                       else item[1]))
    try:
        return (torch.stack(inputs), torch.stack(targets)), batch_size
    except RuntimeError as error:
        raise ValueError(f"{what}: its items' inputs or targets differ in shape ({error})") from None


def _integer_targets(targets) -> bool:
    """Whether ``targets`` (array or tensor) holds integers: class labels for a loss function."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(targets, torch.Tensor):
        return not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool
    return np.asarray(targets).dtype.kind in "iu"


def file_loss(loss, classification: bool) -> str:
    """The ``loss`` a model file records: the named loss, or for a loss function how its
    predictions are read ("cross_entropy": argmax over class logits; "mse": values); the
    function's name goes into the file's settings (``loss_function``)."""
    if isinstance(loss, str):
        return loss
    return "cross_entropy" if classification else "mse"


def check_main_module(start_method: str, policy) -> None:
    """Refuse (RuntimeError naming the cause and the fixes), before any worker starts, a run
    whose ``spawn`` or ``forkserver`` workers could not start: the caller's ``__main__`` was read
    from stdin (``python -``), which a worker cannot run again, or it cannot be imported (a
    notebook, an interactive session, ``python -c``) while ``policy``, which workers unpickle,
    refers to it.  (Model factories and loss functions travel by value, with cloudpickle.)"""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:  # python -m: imported by name
        return
    path = getattr(main, "__file__", None)
    fixes = ("use start_method='fork' (the default where the platform has it), or run a script "
             "file; see docs/deep_learning.md, 'Notebooks and stdin'")
    if path is not None and not os.path.isfile(path):
        raise RuntimeError(f"start_method={start_method!r} starts each worker by running the "
                           f"caller's main module again, but it was read from {path!r} (python - "
                           f"or a pipe), which a worker cannot read: {fixes}")
    if path is None and _refers_to_main(policy):
        raise RuntimeError(f"start_method={start_method!r}: the policy {policy!r} is defined in "
                           "__main__ (a notebook, an interactive session or python -c), which "
                           "spawned workers cannot import; define it in an importable module, or "
                           f"{fixes}")


def _refers_to_main(value) -> bool:
    """Whether pickling ``value`` refers to anything of ``__main__`` by name."""
    try:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False  # the worker start reports what cannot be pickled
    return any(arg == "__main__" or (isinstance(arg, str) and arg.startswith("__main__ "))
               for _, arg, _ in pickletools.genops(data))


def trained_module(template, params: np.ndarray):
    """A copy of ``template`` (a fit's network) with ``params`` (parameters, then shared
    buffers) loaded, in eval mode: what ``FitResult.module()`` returns."""
    network = copy.deepcopy(template)
    load_state(network, state_dict_from_flat(network, params), "the fit's params")
    return network.eval()


def _network_values(network) -> np.ndarray:
    """``network``'s parameters, then its shared buffers, as one float64 vector (a fit's ``params``)."""
    n_params = parameter_count(network)
    flat = np.empty(n_params + buffer_count(network), dtype=np.float64)
    flatten_parameters(network, flat[:n_params])
    flatten_buffers(network, flat[n_params:])
    return flat


def _checked_init_params(init_params, network) -> np.ndarray:
    """``init_params`` (a fit's ``params``) as float64, checked to hold ``network``'s values;
    ValueError naming the shape or the first bad entry."""
    n_params, n_buffer_values = parameter_count(network), buffer_count(network)
    return check_finite_vector("init_params", init_params, n_params + n_buffer_values,
                               f"the {n_params} parameters, then {n_buffer_values} shared buffer values")


def load_state(network, state_dict: dict, where: str) -> None:
    """Load ``state_dict`` into ``network`` (every name and shape must match; values are cast to
    the network's dtype); ModelFileError naming ``where`` and what differs, or a non-finite
    weight."""
    import torch

    for name, tensor in state_dict.items():
        floating = isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
        if floating and not torch.isfinite(tensor).all():
            raise ModelFileError(f"{where}: {name} holds NaN or infinite values")
    try:
        network.load_state_dict(state_dict)
    except (RuntimeError, TypeError) as error:
        reason = " ".join(line.strip() for line in str(error).splitlines()[1:4]) or str(error)
        raise ModelFileError(f"{where}: the weights do not fit network "
                             f"{type(network).__name__} ({reason})") from None


def load_network(path, factory=None):
    """The network stored in the model file at ``path`` (a directory written by
    :meth:`TorchEngine.save`, a checkpoint, or ``hogwild-mts train --out``), in eval mode, in
    the dtype it was trained in, ready to predict.  A bundled network is rebuilt from its name
    and constructor arguments; a network built by a caller's factory, module instance or class
    needs ``factory``: that function ``f(input_shape, outputs)``, an ``nn.Module`` instance
    (loaded in place), or the module class / a ``functools.partial`` of it (built without
    other arguments) (ModelFileError without it).  No code is read from the file."""
    path = os.fspath(path)
    document, state_dict = read_network(path)
    return saved_network(document, state_dict, factory, path)


def saved_network(document: dict, state_dict: dict, factory=None, where: str = "model file"):
    """The network a :func:`hogwild_mts.model_file.read_network` pair describes (see
    :func:`load_network`)."""
    import torch

    from hogwild_mts.models.nets import NETWORKS, build_network

    described = document["network"]
    input_shape, outputs, name = tuple(described["input_shape"]), described["outputs"], described.get("name")
    if document.get("dtype") not in PARAM_DTYPES:
        raise ModelFileError(f"{where}: dtype {document.get('dtype')!r}; expected one of "
                             f"{list(PARAM_DTYPES)}")
    if isinstance(factory, torch.nn.Module):
        network = factory
    elif factory is not None:
        if not callable(factory):
            raise TypeError(f"factory must be a function f(input_shape, outputs), an nn.Module or "
                            f"an nn.Module class, got {factory!r}")
        network = model_factory(factory)[0](input_shape, outputs)
    elif name is None:
        raise ModelFileError(f"{where}: the network was built by the factory "
                             f"{described.get('factory')!r}, whose code a model file does not hold; "
                             "pass it: load_network(path, factory=f) with f(input_shape, outputs) "
                             "or the nn.Module itself")
    elif name not in NETWORKS:
        raise ModelFileError(f"{where}: unknown bundled network {name!r}; this hogwild_mts has "
                             f"{sorted(NETWORKS)}")
    else:
        network = build_network(name, input_shape, outputs)
    network = network.to(getattr(torch, document["dtype"]))
    load_state(network, state_dict, where)
    return network.eval()


def network_outputs(network, inputs, dtype: str) -> np.ndarray:
    """``network``'s outputs (float64, one row per input row) on ``inputs`` (N x the input
    shape), EVAL_BATCH rows per forward pass, without gradients, in eval mode."""
    import torch

    network.eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(inputs), EVAL_BATCH):
            batch = torch.as_tensor(np.asarray(inputs[start:start + EVAL_BATCH])).to(getattr(torch, dtype))
            rows.append(network(batch).to(torch.float64).reshape(batch.shape[0], -1).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 0))
