"""Hogwild! for torch networks: ``TorchEngine(...).fit(data)`` and the CLI hook.

The engine validates the options, the data and the network, settles the start weights and the
checkpoint side, and describes the fit as a :class:`hogwild_mts.job.Job` with a
:class:`~hogwild_mts.job.NetworkProblem`.  On shared memory (:mod:`hogwild_mts.backends.shm.run`)
one block holds the control fields, the flat vector of parameters and shared buffers and the
epoch orders; workers (processes, one torch/BLAS thread each) bind their network's parameters and
floating-point buffers to views of that vector and update it lock-free with exact staleness
stamps (:mod:`hogwild_mts.backends.shm.torch_worker`).  The parent evaluates copies of the vector
with its own network (in eval mode), whose parameters and buffers view that copy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time

import numpy as np

from hogwild_mts.backends.ray import run as ray_backend
from hogwild_mts.backends.shm import run as shm_backend
from hogwild_mts.checkpoint import (check_same_settings, check_unfinished, policy_spec,
                                    prepare_directory, read_checkpoint_files, run_state)
from hogwild_mts.core.files import strict_json
from hogwild_mts.core.options import check_finite_vector
from hogwild_mts.core.params import Choice, Integer, NonNegative, Option, Optional, Positive, Table, validate
from hogwild_mts.core.result import DivergenceError, FitResult, RunState, WorkerError
from hogwild_mts.data.images import ArrayDataset, array_dataset, load_images
from hogwild_mts.engines import options as shared
from hogwild_mts.job import EVAL_BATCH, LOSS_NAMES, Job, NetworkProblem, NetworkSettings, run_options
from hogwild_mts.kernels.flat import (LOSSES, buffer_count, flatten_buffers, flatten_parameters,
                                      make_network, parameter_count, serialized_factory,
                                      state_dict_from_flat)
from hogwild_mts.kernels.split import total_updates
from hogwild_mts.model_file import ModelFileError, read_network, save_network

__all__ = ["TorchEngine", "train_images", "load_network", "network_outputs", "DEFAULT_ALPHA",
           "DEFAULT_BATCH_SIZE", "DEFAULT_EPOCHS", "WorkerError", "DivergenceError"]

DEFAULT_ALPHA = 0.05  # base step of a named policy (per mean mini-batch gradient)
PARAM_DTYPES = ("float32", "float64")


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
                       if values[option.name] != option.default]
        if unsupported:
            raise ValueError(f"backend='ray' trains with loss='cross_entropy', no momentum and "
                             f"no weight decay; got {', '.join(unsupported)} (use backend='shm')")
    return {}


LOSS = Option("loss", Choice(LOSSES), "cross_entropy", "the network")
WEIGHT_DECAY = Option("weight_decay", NonNegative(), 0.0, "the workers' update")
# TorchEngine's options in validation order: name, constraint, default, where it goes.  A
# network's step, epochs, batch size, evaluation period and dtype have their own defaults.
NETWORK_OPTIONS = Table(
    (shared.POLICY, shared.base_step(DEFAULT_ALPHA), shared.WORKERS,
     Option("epochs", Integer(1), 10, "run"), Option("batch_size", Integer(1), 16, "run"),
     shared.SEED, Option("eval_every", Optional(Positive()), 1.0, "run"),
     shared.EVAL_EVERY_UPDATES, shared.PROGRESS, shared.DEFER_EVALUATION, shared.MOMENTUM,
     LOSS, WEIGHT_DECAY, Option("dtype", Choice(PARAM_DTYPES), "float32", "the network"),
     *shared.PROCESS_OPTIONS),
    rules=(shared.named_policy(DEFAULT_ALPHA), shared.evaluation_schedule,
           _ray_checkpoints_are_functions, shared.process_options, _ray_trains_plain_cross_entropy))
DEFAULTS = NETWORK_OPTIONS.defaults
DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS = DEFAULTS.batch_size, DEFAULTS.epochs  # public names of two

# What a resumed run must share with its checkpoint (each one that differs is named).
RESUME_SETTINGS = ("network", "input_shape", "outputs", "loss", "n_train", "targets_digest",
                   "epochs", "batch_size", "seed", "split", "dtype", "policy", "momentum",
                   "weight_decay")


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
    ``checkpoint_dir`` keeps the run's latest checkpoint there (a network model file with the
    run state, see :meth:`fit`'s ``resume``), every ``checkpoint_every`` seconds and/or every
    ``checkpoint_every_updates`` updates (neither: every 60 s), and when the run ends or is
    stopped; it needs ``split="dynamic"``.  :meth:`save` writes a fit's network as a model file,
    :func:`load_network` reads one.
    ``backend="ray"``, ``ray_address``, ``local_steps``, ``checkpoint``, ``checkpoint_every``
    and ``max_worker_restarts`` as for the linear engine (docs/distributed.md); Ray trains cross-entropy without momentum,
    weight decay or buffers, and takes no ``checkpoint_dir``.
    Every option, its allowed values and default: NETWORK_OPTIONS (docs/api.md); the validated
    options are ``self.options``, and ``self.<option>`` reads them there.
    """

    def __init__(self, model="mlp", policy=DEFAULTS.policy, *, workers: int = DEFAULTS.workers,
                 epochs: int = DEFAULTS.epochs, batch_size: int = DEFAULTS.batch_size,
                 alpha: float | None = DEFAULTS.alpha, loss: str = DEFAULTS.loss,
                 momentum: float = DEFAULTS.momentum, weight_decay: float = DEFAULTS.weight_decay,
                 seed: int = DEFAULTS.seed, dtype: str = DEFAULTS.dtype,
                 eval_every: float = DEFAULTS.eval_every,
                 eval_every_updates: int | None = DEFAULTS.eval_every_updates,
                 progress: bool = DEFAULTS.progress,
                 defer_evaluation: bool = DEFAULTS.defer_evaluation,
                 start_method: str | None = DEFAULTS.start_method, split: str = DEFAULTS.split,
                 backend: str = DEFAULTS.backend, ray_address: str | None = DEFAULTS.ray_address,
                 local_steps: int = DEFAULTS.local_steps, checkpoint=DEFAULTS.checkpoint,
                 checkpoint_every: float | None = DEFAULTS.checkpoint_every,
                 checkpoint_dir=DEFAULTS.checkpoint_dir,
                 checkpoint_every_updates: int | None = DEFAULTS.checkpoint_every_updates,
                 max_worker_restarts: int = DEFAULTS.max_worker_restarts):
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
        self.options = validate(NETWORK_OPTIONS, NETWORK_OPTIONS.arguments(locals()))

    __getattr__ = shared.option_of

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

    # ------------------------------------------------------------------ run
    def fit(self, data, y=None, *, test=None, init=None, init_params=None, resume=None) -> FitResult:
        """Train on ``data``: an :class:`~hogwild_mts.data.images.ArrayDataset` (an ImageDataset
        included), an image spec for :func:`~hogwild_mts.data.images.load_images`, or arrays /
        torch tensors ``data`` (N x ...) and ``y`` (integer class labels for cross_entropy, float
        values N x ... for mse) with ``test=(X_test, y_test)`` optional.

        Start (default: the network as ``seed`` initialises it) from ``init``, a network model
        file (a directory written by :meth:`save`, a checkpoint, ``hogwild-mts train --out``) or
        a ``state_dict``, or from ``init_params``, a previous result's ``params``.  ``resume``: a
        checkpoint directory (``checkpoint_dir``) whose run this fit continues with the same
        network, data and settings (the number of workers may differ): the remaining batches
        only, from its weights and buffers, counter, histogram and counts; each worker's
        momentum velocity starts again at zero, and an adaptive policy refits on the restored
        histogram.  A file of another kind, another network, shape or outputs, other settings or
        a finished run are refused before any worker starts.

        ``final_loss`` is the mean loss on the **test** set (on the training rows when arrays
        come without ``test``; ``settings["evaluated_on"]`` says which), ``final_accuracy`` the
        accuracy there (None for mse); ``history`` holds both per evaluation.  ``params`` holds
        the parameters, then the shared buffers (``settings["parameters"]``, ``["buffers"]``
        values).  Ctrl-C returns the partial result with ``interrupted=True``.  Raises
        WorkerError if a worker fails or dies, DivergenceError on a NaN/inf loss or parameter;
        the shared block is unlinked on every path.
        """
        started = time.time()
        given = [name for name, value in (("init", init), ("init_params", init_params),
                                          ("resume", resume)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"give one of init, init_params and resume, got {' and '.join(given)}")
        dataset = self._check(self._dataset(data, y, test))
        network = self._network(dataset)
        run = _NetworkRun(self, dataset, network, init, init_params, resume)
        n_params = parameter_count(network)
        ray_checkpoint = None
        if self.ray_options is not None and self.ray_options.checkpoint is not None:
            ray_checkpoint = functools.partial(self.ray_options.checkpoint, self)
        job = Job(options=run_options(self.options), started=started,
                  problem=NetworkProblem(name=self.model_name, build=self._network_spec,
                                         network=network, dataset=dataset, loss=self.loss,
                                         dtype=self.dtype, weight_decay=self.weight_decay),
                  settings=self._settings(dataset, n_params, buffer_count(network)),
                  split=self.split, start_method=self.start_method, checkpoints=self.checkpoints,
                  write_checkpoint=None if self.checkpoints is None
                  else lambda state: run.write(network, state),
                  resumed=run.resumed, ray=self.ray_options, ray_checkpoint=ray_checkpoint)
        return (shm_backend if self.ray_options is None else ray_backend).fit(job)

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
            network = make_network(self.model, settings["input_shape"], settings["outputs"])
        network = network.to(getattr(torch, settings["dtype"]))
        n_values = parameter_count(network) + buffer_count(network)
        if result.params.shape != (n_values,):
            raise ValueError(f"the result holds {result.params.shape[0]} values; model "
                             f"{self.model_name!r} has {n_values} parameters and shared buffer values")
        metrics = {key: value for key, value in result.to_dict().items()
                   if key not in ("history", "staleness_histogram", "staleness_fit", "settings")}
        return save_network(
            os.fspath(path), state_dict=state_dict_from_flat(network, result.params),
            network=self._network_description(settings["input_shape"], settings["outputs"]),
            loss=self.loss, classes=settings.get("class_names"), dtype=settings["dtype"],
            settings=self._file_settings(), histogram=result.staleness_histogram,
            counter=result.counter, metrics=metrics)

    def _network_description(self, input_shape, outputs: int) -> dict:
        """How a model file names the network: a bundled name, or (a factory) only its name."""
        bundled = isinstance(self.model, str)
        return {"name": self.model if bundled else None, "factory": None if bundled else self.model_name,
                "input_shape": list(input_shape), "outputs": int(outputs)}

    def _file_settings(self) -> dict:
        """The engine's settings as a model file stores them (the policy as a spec)."""
        return {"workers": self.workers, "epochs": self.epochs, "batch_size": self.batch_size,
                "seed": self.seed, "split": self.split, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "policy": policy_spec(self.policy, self.workers)}

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
            loss=f"{dataset.evaluated_on} {LOSS_NAMES[self.loss]}",
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
                "loss": engine.loss, "n_train": dataset.n_train, "targets_digest": digest.hexdigest(),
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
                         loss=engine.loss, classes=dataset.classes, dtype=engine.dtype,
                         settings=engine._file_settings(), histogram=state.histogram,
                         counter=state.counter, run=run,
                         metrics={"updates": int(state.updates), "finished": bool(state.finished)})
        except OSError as error:
            raise OSError(error.errno, f"checkpoint {directory} could not be written: "
                                       f"{error.strerror or error}") from None


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
    and constructor arguments; a network built by a caller's factory needs ``factory``: that
    function ``f(input_shape, outputs)`` or the ``nn.Module`` itself (ModelFileError without
    it).  No code is read from the file."""
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
            raise TypeError(f"factory must be a function f(input_shape, outputs) or an nn.Module, "
                            f"got {factory!r}")
        network = factory(input_shape, outputs)
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


def engine_from_args(args, **options) -> TorchEngine:
    """The TorchEngine of ``hogwild-mts train --model {mlp,cnn,lenet} ...``: ``args`` has
    ``model, workers, policy, alpha, epochs, batch_size, seed, quiet, dtype`` and optionally
    ``momentum, weight_decay, backend, address, local_steps``; any of them None (or missing)
    takes NETWORK_OPTIONS' default.  ``options``: more engine keywords (checkpoints)."""
    def option(name, flag=None):
        value = getattr(args, flag or name, None)
        return DEFAULTS[name] if value is None else value

    return TorchEngine(args.model, option("policy"), alpha=option("alpha"), workers=option("workers"),
                       epochs=option("epochs"), batch_size=option("batch_size"), seed=option("seed"),
                       momentum=option("momentum"), weight_decay=option("weight_decay"),
                       dtype=option("dtype"), progress=not getattr(args, "quiet", False),
                       backend=option("backend"), ray_address=option("ray_address", "address"),
                       local_steps=option("local_steps"), **options)


def train_images(args, engine: TorchEngine | None = None) -> FitResult:
    """The CLI hook for ``hogwild-mts train --model {mlp,cnn,lenet} --data {digits,mnist1d,mnist:DIR,...}``.

    Loads ``args.data`` (a line on stderr) and trains ``engine`` (default:
    :func:`engine_from_args` of ``args``) on it, from the model file ``args.init`` or
    continuing the checkpoint ``args.resume`` when given (missing: neither); returns the
    FitResult; prints no summary.
    """
    engine = engine_from_args(args) if engine is None else engine
    loading = time.time()
    print(f"loading images {args.data} ...", file=sys.stderr, flush=True)
    dataset = load_images(args.data)
    print(f"  {dataset!r} ({time.time() - loading:.1f} s)", file=sys.stderr, flush=True)
    return engine.fit(dataset, init=getattr(args, "init", None), resume=getattr(args, "resume", None))
