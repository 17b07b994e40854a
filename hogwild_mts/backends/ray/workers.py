"""Worker actors: each holds one shard of the data, pulls ``(version, params)`` from the server,
runs K local steps on a private copy and pushes ``(step_sum, version read)``.

The step sum of a push is ``(params pulled - params after the K local steps) / alpha_c``: the sum
of the K mean mini-batch gradients along the worker's local path (for K = 1 exactly the gradient
at the pulled parameters), taken with the local step ``alpha_c``.  The server applies
``params -= alpha(tau) * step_sum`` (docs/distributed.md has the reasoning).

A shard is worker ``w``'s rows ``w, w+m, w+2m, ...``, visited every epoch in a fresh permutation
from the worker's own seed, K batches per push (the last push of an epoch may be shorter), as
the shared-memory engine's static split does (:func:`hogwild_mts.backends.shm.worker.sharded_pieces`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from hogwild_mts.backends.shm import kernels
from hogwild_mts.backends.shm.worker import sharded_pieces
from hogwild_mts.core import control


@dataclass
class ShardSpec:
    """What a worker needs to walk its shard: ``epochs`` passes in batches of ``batch_size``
    rows, ``local_steps`` batches per push, the shuffle seed, and the local step ``alpha_c``."""

    epochs: int
    batch_size: int
    local_steps: int
    seed: object  # a numpy SeedSequence: this worker's own
    local_step: float  # alpha_c: the step of the local SGD steps, > 0

    def pieces(self, n_rows: int):
        """``(order, start, stop)``: the rows ``order[start:stop]`` of one push, epoch after
        epoch, over local row numbers 0 .. n_rows - 1 (the shard is the whole of this worker's
        data, so it is split as a one-worker static split)."""
        one_worker = SimpleNamespace(workers=1, seeds=[self.seed], epochs=self.epochs,
                                     batch_size=self.batch_size)
        return sharded_pieces(n_rows, one_worker, 0, self.local_steps)


def push_loop(server, spec: ShardSpec, n_rows: int, local: np.ndarray, local_steps) -> int:
    """Pull into the worker's parameter copy ``local``, then per push: ``local_steps(order,
    start, stop)`` moves ``local`` (False: a NaN/inf was seen), push the step sum, take the
    answer as the next pull.  Returns STATE_DONE or STATE_DIVERGED; leaves early when the
    server answers stop."""
    import ray

    version, pulled = ray.get(server.pull.remote())
    local[:] = pulled
    for order, start, stop in spec.pieces(n_rows):
        if not local_steps(order, start, stop):
            return control.STATE_DIVERGED
        step_sum = (pulled - local) / np.asarray(spec.local_step, dtype=local.dtype)
        stop_now, version, pulled = ray.get(server.push.remote(step_sum, version, stop - start))
        local[:] = pulled
        if stop_now:
            break
    return control.STATE_DONE


@dataclass
class LinearModelSpec:
    """The linear model the kernels train (see :mod:`hogwild_mts.backends.shm.kernels`)."""

    n_features: int
    dense: bool
    fit_intercept: bool
    loss_id: int
    l2: float


SHARD_FIELDS = ("values", "indices", "indptr", "labels", "sample_weight")


def read_only(arrays: dict) -> dict:
    """The arrays flagged read-only: how Ray hands out object-store arrays, so the kernels see
    one type signature (the one the driver compiled) however a shard arrived."""
    views = {}
    for name, array in arrays.items():
        view = array.view()
        view.setflags(write=False)
        views[name] = view
    return views


def warm_up_linear(shard: dict, feature_scale: np.ndarray, model: LinearModelSpec, batch_size: int,
                   dtype) -> None:
    """Compile (driver) or load from numba's cache (workers) ``sgd_chunk`` for the types a worker
    runs it with: read-only data, a private writable parameter copy of ``dtype``."""
    shard, feature_scale = read_only(shard), read_only({"s": feature_scale})["s"]
    kernels.sgd_chunk(shard["values"], shard["indices"], shard["indptr"], model.dense,
                      shard["labels"], shard["sample_weight"], feature_scale,
                      np.zeros(0, np.int64), 0, 0, batch_size,
                      np.zeros(model.n_features + int(model.fit_intercept), dtype=dtype),
                      model.n_features, model.fit_intercept, model.loss_id, model.l2,
                      np.ones(1, dtype=dtype), False, np.zeros(8, np.int64),
                      np.zeros(1, np.int64), np.zeros(control.STAT_COLUMNS, np.int64),
                      np.zeros(batch_size))


class LinearWorker:
    """A worker actor of a linear model (made a Ray actor by the backend).  ``shard``: the arrays
    SHARD_FIELDS of this worker's rows (CSR-like, local row numbers), ``feature_scale``: the
    L2 weights of the whole data set (see kernels); both stay read-only, never copied."""

    def __init__(self, spec: ShardSpec, model: LinearModelSpec, shard: dict,
                 feature_scale: np.ndarray, dtype: str):
        self.spec, self.model, self.dtype = spec, model, np.dtype(dtype)
        self.shard = read_only({name: shard[name] for name in SHARD_FIELDS})
        self.feature_scale = read_only({"s": feature_scale})["s"]
        self.n_rows = self.shard["indptr"].shape[0] - 1
        self.local = np.zeros(model.n_features + int(model.fit_intercept), dtype=self.dtype)
        self.local_table = np.full(1, spec.local_step, dtype=self.dtype)  # stamp=False reads entry 0
        # sgd_chunk's counts and (unused with stamp=False) counter and histogram: local scratch
        self.stats = np.zeros(control.STAT_COLUMNS, np.int64)
        self.unused_counter, self.unused_hist = np.zeros(8, np.int64), np.zeros(1, np.int64)
        self.derivatives = np.zeros(spec.batch_size)
        warm_up_linear(self.shard, self.feature_scale, model, spec.batch_size, self.dtype)

    def ready(self) -> int:
        """The actor's process id, once its kernel is loaded."""
        return os.getpid()

    def _local_steps(self, order, start: int, stop: int) -> bool:
        """Plain SGD with step alpha_c over the batches ``order[start:stop]`` on the local copy
        (``sgd_chunk`` with stamp=False: no counter, no histogram)."""
        shard, model = self.shard, self.model
        status = kernels.sgd_chunk(
            shard["values"], shard["indices"], shard["indptr"], model.dense, shard["labels"],
            shard["sample_weight"], self.feature_scale, order, start, stop, self.spec.batch_size,
            self.local, model.n_features, model.fit_intercept, model.loss_id, model.l2, self.local_table,
            False, self.unused_counter, self.unused_hist, self.stats, self.derivatives)
        return status == control.STATUS_OK

    def run(self, server) -> int:
        """Train this shard against ``server`` until the epochs are done or the server says
        stop; returns STATE_DONE or STATE_DIVERGED."""
        return push_loop(server, self.spec, self.n_rows, self.local, self._local_steps)


class TorchWorker:
    """A worker actor of a torch network (made a Ray actor by the backend): the network's
    parameters are views of the worker's flat copy (:mod:`hogwild_mts.backends.shm.torch_worker`
    binds them), ``shard`` holds this worker's ``images`` (float32) and ``labels`` (int64)."""

    def __init__(self, spec: ShardSpec, network, input_shape, classes: int, shard: dict,
                 dtype: str):
        import warnings

        import torch

        from hogwild_mts.backends.shm.torch_worker import (bind_gradients, bind_parameters,
                                                           make_network, parameter_count)

        torch.set_num_threads(1)
        self.spec, self.torch_dtype = spec, getattr(torch, dtype)
        model = make_network(network, input_shape, classes).to(self.torch_dtype)
        self.local = np.zeros(parameter_count(model), dtype=dtype)
        self.gradient = np.zeros_like(self.local)
        bind_parameters(model, self.local)
        bind_gradients(model, self.gradient)
        self.model = model
        with warnings.catch_warnings():  # object-store arrays are read-only; they are only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.images = torch.from_numpy(shard["images"])
            self.labels = torch.from_numpy(shard["labels"])
        self.n_rows = self.images.shape[0]
        self._batch_loss(torch.arange(min(spec.batch_size, self.n_rows))).backward()  # warm-up

    def ready(self) -> int:
        """The actor's process id, once its network ran one batch."""
        return os.getpid()

    def _batch_loss(self, rows):
        import torch.nn.functional as F

        images = self.images[rows]
        return F.cross_entropy(self.model(images.to(self.torch_dtype)), self.labels[rows])

    def _local_steps(self, order, start: int, stop: int) -> bool:
        """Plain SGD with step alpha_c on the local copy, one mean mini-batch cross-entropy
        gradient per batch of ``order[start:stop]``."""
        import math

        import torch

        step = self.local.dtype.type(self.spec.local_step)
        for first in range(start, stop, self.spec.batch_size):
            rows = torch.from_numpy(order[first:min(first + self.spec.batch_size, stop)])
            self.gradient.fill(0)
            loss = self._batch_loss(rows)
            loss.backward()
            if not math.isfinite(loss.item()):
                return False
            self.local -= step * self.gradient
        return True

    def run(self, server) -> int:
        """Train this shard against ``server``; returns STATE_DONE or STATE_DIVERGED."""
        return push_loop(server, self.spec, self.n_rows, self.local, self._local_steps)
