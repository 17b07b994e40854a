"""Worker actors: each holds one shard of the data, pulls ``(version, params)`` from the server,
runs K local steps on a private copy and pushes ``(step_sum, version read)``.

The step sum of a push is ``(params pulled - params after the K local steps) / lr``: the sum
of the K mean mini-batch gradients along the worker's local path (for K = 1 exactly the gradient
at the pulled parameters), taken with the local step ``lr``.  The server applies
``params -= alpha(tau) * step_sum`` (docs/distributed.md has the reasoning).

A shard comes from the driver through the object store (worker ``w``'s rows ``w, w+m, w+2m,
...``) or, for a linear model, from a data file that the worker reads itself (its part of the
file: :func:`hogwild_mts.data.tabular.read_file_part`).  It is visited every epoch in a fresh
permutation from the worker's own seed (``shuffle=False``: in its stored order), K batches per
push (the last push of an epoch may be shorter), as the shared-memory engine's static split does
(:func:`hogwild_mts.kernels.split.sharded_pieces`).  A worker's first pull tells it how many
of its pushes the server has applied: a re-created worker (after its actor died) skips those
pieces and goes on where the dead one stopped.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from hogwild_mts.kernels import linear as kernels
from hogwild_mts.kernels.split import sharded_pieces
from hogwild_mts.core import control
from hogwild_mts.data.tabular import DataError, read_file_part


@dataclass
class ShardSpec:
    """What a worker needs to walk its shard: ``epochs`` passes in batches of ``batch_size``
    rows, ``local_steps`` batches per push, the shuffle seed, the local step ``lr``, and whether
    each epoch is shuffled (False: the shard's rows in stored order)."""

    epochs: int
    batch_size: int
    local_steps: int
    seed: object  # a numpy SeedSequence: this worker's own
    local_step: float  # lr: the step of the local SGD steps, > 0
    shuffle: bool = True

    def pieces(self, n_rows: int):
        """``(order, start, stop)``: the rows ``order[start:stop]`` of one push, epoch after
        epoch, over local row numbers 0 .. n_rows - 1 (the shard is the whole of this worker's
        data, so it is split as a one-worker static split)."""
        one_worker = SimpleNamespace(workers=1, seeds=[self.seed], epochs=self.epochs,
                                     batch_size=self.batch_size, shuffle=self.shuffle)
        return sharded_pieces(n_rows, one_worker, 0, self.local_steps)


def push_loop(server, worker_id: int, spec: ShardSpec, n_rows: int, local: np.ndarray,
              local_steps) -> int:
    """Pull into the worker's parameter copy ``local`` (and skip the pieces of this worker's
    pushes the server already applied), then per push: ``local_steps(order, start, stop)`` moves
    ``local`` (False: a NaN/inf was seen), push the step sum, take the answer as the next pull.
    Returns STATE_DONE or STATE_DIVERGED; leaves early when the server answers stop."""
    import ray

    version, pulled, applied = ray.get(server.pull.remote(worker_id))
    local[:] = pulled
    for order, start, stop in itertools.islice(spec.pieces(n_rows), applied, None):
        if not local_steps(order, start, stop):
            return control.STATE_DIVERGED
        step_sum = (pulled - local) / np.asarray(spec.local_step, dtype=local.dtype)
        stop_now, version, pulled = ray.get(server.push.remote(step_sum, version, stop - start,
                                                               worker_id))
        local[:] = pulled
        if stop_now:
            break
    return control.STATE_DONE


NO_INDICES = np.empty(0, np.int64)


def sparse_push_loop(server, worker_id: int, spec: ShardSpec, n_rows: int, local: np.ndarray,
                     local_steps, columns) -> int:
    """:func:`push_loop` for a model whose K local steps read and write only the coordinates
    ``columns(order, start, stop)`` (int64, distinct, sorted: the columns the rows store, and
    the intercept): each pull fetches only the next piece's coordinates into ``local`` (the rest
    of ``local`` is never read), each push sends only those coordinates' step sums
    (:meth:`~hogwild_mts.backends.ray.server.ParameterServer.push_sparse`) and asks for the next
    piece's coordinates in the answer.  The step sums are computed coordinate by coordinate as
    :func:`push_loop` computes them, so the server's parameters end bit for bit as there."""
    import ray

    _, _, applied = ray.get(server.pull.remote(worker_id, NO_INDICES))  # where this worker is
    pieces = itertools.islice(spec.pieces(n_rows), applied, None)
    piece = next(pieces, None)
    if piece is None:
        return control.STATE_DONE
    wanted = columns(*piece)
    version, pulled, _ = ray.get(server.pull.remote(worker_id, wanted))
    local[wanted] = pulled
    step = np.asarray(spec.local_step, dtype=local.dtype)
    while piece is not None:
        order, start, stop = piece
        if not local_steps(order, start, stop):
            return control.STATE_DIVERGED
        step_values = (pulled - local[wanted]) / step
        piece = next(pieces, None)  # its columns travel with the push: the answer is its pull
        next_wanted = NO_INDICES if piece is None else columns(*piece)
        stop_now, version, pulled = ray.get(server.push_sparse.remote(
            wanted, step_values, version, stop - start, worker_id, next_wanted))
        wanted = next_wanted
        local[wanted] = pulled
        if stop_now:
            break
    return control.STATE_DONE


def piece_columns(indices: np.ndarray, indptr: np.ndarray, rows: np.ndarray,
                  intercept: int | None) -> np.ndarray:
    """The distinct columns (sorted, int64) stored by CSR ``rows`` (``indices``/``indptr``), and
    ``intercept`` (the intercept's index, the last) unless None."""
    starts, stops = indptr[rows], indptr[rows + 1]
    lengths = stops - starts
    offsets = np.zeros(rows.shape[0], np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    positions = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))
    columns = np.unique(indices[positions]).astype(np.int64)
    if intercept is not None:
        columns = np.append(columns, np.int64(intercept))
    return columns


@dataclass
class LinearModelSpec:
    """The linear model the kernels train (see :mod:`hogwild_mts.kernels.linear`)."""

    n_features: int
    dense: bool
    fit_intercept: bool
    loss_id: int
    l2: float
    epsilon: float = 0.1  # huber and the epsilon-insensitive losses
    intercept_decay: float = 1.0  # every step of the intercept is multiplied by it

    @property
    def terms(self) -> kernels.Terms:
        """The objective's terms as the kernels take them (Ray runs have no L1 penalty)."""
        return kernels.Terms(self.loss_id, self.epsilon, self.l2, 0.0,
                             intercept_decay=self.intercept_decay)


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


def local_steps_kernel(model: LinearModelSpec):
    """The unstamped plain-SGD kernel variant a worker's local steps run (no counter, no
    histogram: the server stamps the pushes)."""
    return kernels.sgd_kernel(model.dense, model.fit_intercept, model.l2, False)


def local_buffers(batch_size: int) -> kernels.WorkerBuffers:
    """A worker's counts and scratch for :func:`local_steps_kernel` (its histogram row unread)."""
    return kernels.WorkerBuffers(np.zeros(control.STAT_COLUMNS, np.int64), np.zeros(1, np.int64),
                                 np.zeros(batch_size), kernels.NO_VELOCITY, kernels.NO_MARKS)


def warm_up_linear(shard: dict, feature_scale: np.ndarray, model: LinearModelSpec, batch_size: int,
                   dtype) -> None:
    """Compile (driver) or load from numba's cache (workers) the local-steps kernel for the types
    a worker runs it with: read-only data, a private writable parameter copy of ``dtype``."""
    rows = kernels.Rows(**read_only({**shard, "feature_scale": feature_scale}))
    local_steps_kernel(model)(rows, kernels.NO_ROWS, 0, 0, batch_size,
                              np.zeros(model.n_features + int(model.fit_intercept), dtype=dtype),
                              model.n_features, model.terms, 0.0, np.ones(1, dtype=dtype),
                              *kernels.CONSTANT_SCHEDULE, np.zeros(1, np.int64),
                              local_buffers(batch_size))


@dataclass
class FileSource:
    """A shard a worker reads itself: part ``part`` of ``parts`` of the data file at ``path``
    (the path as the worker's node sees it)."""

    path: str
    part: int
    parts: int


LABELS_REPORTED = 7  # distinct labels a part reports: enough to show why labels are refused


@dataclass
class PartReport:
    """What a worker found in its part of a data file, for the driver's checks (see
    :class:`hogwild_mts.data.tabular.FilePart`; column indices as written in the file).
    ``labels``: its first LABELS_REPORTED distinct labels, sorted; ``feature_counts``: rows
    storing each column; ``sample``: SHARD_FIELDS of up to ``sample_rows`` evenly spaced rows."""

    rows: int
    file_rows: int | None
    file_bytes: int
    dense: bool
    n_features: int
    has_index_zero: bool
    labels: np.ndarray
    feature_counts: np.ndarray
    sample: dict
    node: str


@dataclass
class LinearSetup:
    """What every worker of one run gets once the data is known: the model, the L2 weights of
    the whole data set, and how to bring a file part's rows to the driver's checked form:
    ``index_shift`` subtracted from every column index (1 for a one-based svmlight file), and
    labels ``label_values`` (sorted) replaced by ``label_targets`` (None: kept)."""

    model: LinearModelSpec
    feature_scale: np.ndarray
    index_shift: int = 0
    label_values: np.ndarray | None = None
    label_targets: np.ndarray | None = None

    def checked(self, shard: dict) -> dict:
        """``shard`` (arrays SHARD_FIELDS of rows of the file) with its column indices shifted
        and its labels replaced as this setup says (new arrays; ``shard`` is not changed)."""
        shard = dict(shard)
        if self.index_shift:
            shard["indices"] = shard["indices"] - np.int32(self.index_shift)
        if self.label_targets is not None:
            shard["labels"] = self.label_targets[np.searchsorted(self.label_values, shard["labels"])]
        return shard


def shard_arrays(data: dict, rows: np.ndarray, n_features: int, dense: bool) -> dict:
    """The arrays SHARD_FIELDS of ``rows`` of the data set ``data`` (same layout, rows renumbered
    0 .. len(rows) - 1; an empty ``sample_weight`` stays empty: unit weights)."""
    labels = data["labels"][rows]
    weights = data["sample_weight"][rows] if data["sample_weight"].size else data["sample_weight"]
    if dense:
        values = data["values"].reshape(-1, n_features)[rows].ravel()
        return {"values": values, "indices": data["indices"][:0], "labels": labels,
                "sample_weight": weights,
                "indptr": np.arange(rows.size + 1, dtype=np.int64) * n_features}
    starts, stops = data["indptr"][rows], data["indptr"][rows + 1]
    indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(stops - starts, out=indptr[1:])
    positions = np.repeat(starts - indptr[:-1], stops - starts) + np.arange(indptr[-1])
    return {"values": data["values"][positions], "indices": data["indices"][positions],
            "indptr": indptr, "labels": labels, "sample_weight": weights}


class LinearWorker:
    """A worker actor of a linear model (made a Ray actor by the backend).  ``source``: the
    arrays SHARD_FIELDS of this worker's rows (CSR-like, local row numbers; checked by the
    driver, through the object store, read in place) or a :class:`FileSource` it reads itself.
    ``setup``: a :class:`LinearSetup`, or None when the driver first needs :meth:`describe`
    (then :meth:`configure`).  Data and L2 weights stay read-only during the run.

    A sparse model pulls and pushes only the coordinates each push's K batches touch
    (:func:`sparse_push_loop`); a dense one the whole vector (:func:`push_loop`).
    ``sparse_transfer`` False sends a sparse model's whole vector too: the earlier transport,
    kept for the benchmark (scripts/bench_ray.py sets it on a subclass); runs never change it."""

    sparse_transfer = True

    def __init__(self, spec: ShardSpec, source, dtype: str, setup: LinearSetup | None = None):
        self.spec, self.source, self.dtype = spec, source, np.dtype(dtype)
        self.shard: dict | None = None
        self.local = self.model = self.feature_scale = self.rows = self.kernel = None
        self.local_table = np.full(1, spec.local_step, dtype=self.dtype)  # unstamped: entry 0
        self.buffers = local_buffers(spec.batch_size)
        self.unused_counter = np.zeros(1, np.int64)
        if setup is not None:
            self.configure(setup)

    def _load(self) -> None:
        """Take the shard from the object store, or read this worker's part of the file."""
        if self.shard is not None:
            return
        if isinstance(self.source, FileSource):
            import ray

            try:
                part = read_file_part(self.source.path, self.source.part, self.source.parts)
            except ValueError as error:  # bad data: said with the node, where a file may differ
                raise DataError(f"on node {ray.util.get_node_ip_address()}: {error}") from None
            self.file_part, dataset = part, part.dataset
            self.shard = {"values": dataset.values, "indices": dataset.indices,
                          "indptr": dataset.indptr, "labels": dataset.y,
                          "sample_weight": kernels.UNIT_WEIGHTS}
        else:
            self.shard = read_only({name: self.source[name] for name in SHARD_FIELDS})
        self.n_rows = self.shard["indptr"].shape[0] - 1

    def describe(self, sample_rows: int) -> PartReport:
        """Read this worker's part of the data file and report it (see :class:`PartReport`)."""
        import ray

        self._load()
        part, shard = self.file_part, self.shard
        columns = shard["indices"]
        if part.dataset.dense:
            counts = np.full(part.dataset.n_features, self.n_rows, dtype=np.int64)
        else:
            counts = np.bincount(columns, minlength=part.dataset.n_features).astype(np.int64)
        rows = np.unique(np.linspace(0, self.n_rows - 1, min(self.n_rows, sample_rows))
                         .round().astype(np.int64))
        return PartReport(
            rows=self.n_rows, file_rows=part.file_rows, file_bytes=part.file_bytes,
            dense=part.dataset.dense, n_features=part.dataset.n_features,
            has_index_zero=bool(columns.size and columns.min() == 0),
            labels=np.unique(shard["labels"])[:LABELS_REPORTED], feature_counts=counts,
            sample=shard_arrays(shard, rows, part.dataset.n_features, part.dataset.dense),
            node=ray.util.get_node_ip_address())

    def configure(self, setup: LinearSetup) -> None:
        """Bring the shard to the checked form ``setup`` describes and load the kernel."""
        self._load()
        self.shard = read_only(setup.checked(self.shard))
        self.model = model = setup.model
        self.feature_scale = read_only({"s": setup.feature_scale})["s"]
        self.rows = kernels.Rows(**self.shard, feature_scale=self.feature_scale)
        self.kernel = local_steps_kernel(model)
        self.local = np.zeros(model.n_features + int(model.fit_intercept), dtype=self.dtype)
        warm_up_linear(self.shard, self.feature_scale, model, self.spec.batch_size, self.dtype)

    def ready(self) -> int:
        """The actor's process id, once its kernel is loaded."""
        return os.getpid()

    def _local_steps(self, order, start: int, stop: int) -> bool:
        """Plain SGD with step lr over the batches ``order[start:stop]`` on the local copy
        (:func:`local_steps_kernel`: no counter, no histogram)."""
        model = self.model
        status = self.kernel(self.rows, order, start, stop, self.spec.batch_size, self.local,
                             model.n_features, model.terms, 0.0, self.local_table,
                             *kernels.CONSTANT_SCHEDULE, self.unused_counter, self.buffers)
        return status == control.STATUS_OK

    def run(self, server, worker_id: int) -> int:
        """Train this shard as worker ``worker_id`` against ``server`` until the epochs are done
        or the server says stop; returns STATE_DONE or STATE_DIVERGED."""
        if self.model.dense or not self.sparse_transfer:
            return push_loop(server, worker_id, self.spec, self.n_rows, self.local,
                             self._local_steps)
        return sparse_push_loop(server, worker_id, self.spec, self.n_rows, self.local,
                                self._local_steps, self._columns)

    def _columns(self, order, start: int, stop: int) -> np.ndarray:
        """The coordinates the local steps over ``order[start:stop]`` read and write."""
        model = self.model
        return piece_columns(self.shard["indices"], self.shard["indptr"], order[start:stop],
                             model.n_features if model.fit_intercept else None)


class TorchWorker:
    """A worker actor of a torch network (made a Ray actor by the backend): the network's
    parameters are views of the worker's flat copy (:mod:`hogwild_mts.backends.shm.torch_worker`
    binds them), ``shard`` holds this worker's ``images`` (float32) and ``labels`` (int64)."""

    def __init__(self, spec: ShardSpec, network, input_shape, classes: int, shard: dict,
                 dtype: str):
        import warnings

        import torch

        from hogwild_mts.kernels.flat import bind_gradients, bind_parameters, make_network, parameter_count

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
        """Plain SGD with step lr on the local copy, one mean mini-batch cross-entropy
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

    def run(self, server, worker_id: int) -> int:
        """Train this shard as worker ``worker_id`` against ``server``; returns STATE_DONE or
        STATE_DIVERGED."""
        return push_loop(server, worker_id, self.spec, self.n_rows, self.local, self._local_steps)
