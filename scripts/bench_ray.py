#!/usr/bin/env python
"""Side by side on one machine: the Ray backend, Ray's plain parameter-server pattern and the
shared-memory engine, across K (local steps per push).

* ``ray``: ``Engine(backend="ray", local_steps=K)``: workers call the server directly, the
  server stamps tau in pushes and applies alpha(tau) (constant policy here).
* ``plain``: the asynchronous parameter server of Ray's documentation ("Parameter Server"
  example): the driver waits for any worker's result (``ray.wait``), has the server apply it
  (``params -= lr * step_sum``, no version, no staleness) and hands the worker the new
  weights' object ref.  Its workers run the same K local steps with the same numba kernel.
* ``shm``: ``Engine(backend="shm")`` on the same data (K does not apply: every update is one
  mini-batch written lock-free into shared memory).
* ``ray-file`` (with ``--from-file``): the Ray backend fitting the same rows written to a CSR
  .npz, each worker reading its own part (contiguous rows, not ``w, w+m, ...``; the loss is
  scored on the rows the workers sample: all of them up to 10,000 rows).

With ``--dims D1,D2,...`` it measures the transport instead: for each number of features D
(``--nnz`` nonzeros per row, fixed) and each K of ``--ks``, the Ray backend with its sparse
pulls and pushes (``sparse``: the coordinates a push's K batches touch) beside the whole-vector
transport (``dense``: a worker subclass with ``sparse_transfer = False``, reachable only here);
no evaluation during the runs (start and end only), so pushes/s measure the transport:

    python scripts/bench_ray.py --dims 2000,47236,2000000 --n 2000 --nnz 20 --epochs 1 --ks 4

Same data, model, lr, batch size, epochs, shards and seeds; ``--workers`` worker actors on a
local Ray instance of ``--workers`` CPUs.  pushes/s = applied pushes / training seconds (shm:
updates/s); time to target = the first evaluation at or below ``--target`` (evaluations every
``--eval-every`` s are parameter copies scored after the run).  Prints one markdown table and the
machine.

    python scripts/bench_ray.py --n 10000 --d 2000 --nnz 20 --epochs 2 --ks 1,4,16,64 [--from-file]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from hogwild_mts import Engine  # noqa: E402
from hogwild_mts.backends.ray.backend import LOCAL_SYSTEM_CONFIG  # noqa: E402
from hogwild_mts.backends.ray.workers import (LinearModelSpec, LinearSetup, LinearWorker,  # noqa: E402
                                              ShardSpec, shard_arrays)
from hogwild_mts.kernels import linear as kernels  # noqa: E402
from hogwild_mts.kernels.split import shard_rows  # noqa: E402
from hogwild_mts.data.tabular import synthetic_sparse  # noqa: E402
from hogwild_mts.models.linear import LinearModel  # noqa: E402


class DenseTransferWorker(LinearWorker):
    """A worker that pulls and pushes the whole vector of a sparse model: the transport before
    sparse pulls and pushes, for the ``--dims`` comparison."""

    sparse_transfer = False


def run_transport(args, dataset, k: int, sparse: bool) -> dict:
    """One Ray backend fit with the sparse transport or (``sparse`` False) the whole vector."""
    from hogwild_mts.backends.ray import linear as ray_linear

    saved = ray_linear.LinearWorker
    ray_linear.LinearWorker = LinearWorker if sparse else DenseTransferWorker
    try:
        result = Engine(model="logreg", policy="constant", lr=args.lr, workers=args.workers,
                        epochs=args.epochs, batch_size=args.batch_size, eval_every=1e9,
                        progress=False, backend="ray", local_steps=k).fit(dataset)
    finally:
        ray_linear.LinearWorker = saved
    return {"pushes": result.updates, "samples": result.samples,
            "train_seconds": result.train_seconds, "final_loss": result.final_loss}


def transport_table(args) -> None:
    """The ``--dims`` table: pushes/s and samples/s by features, transport and K."""
    ks = [int(text) for text in args.ks.split(",")]
    rows = []
    for d in (int(text) for text in args.dims.split(",")):
        dataset = synthetic_sparse(args.n, d, args.nnz, seed=0)
        for k in ks:
            for sparse in (True, False):
                rows.append((d, "sparse" if sparse else "dense", k, run_transport(args, dataset, k, sparse)))
    print(f"machine: {machine()}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
          "at the end")
    print(f"data: synthetic-sparse n={args.n} nnz={args.nnz}; logreg, constant lr {args.lr}, "
          f"batch {args.batch_size}, {args.epochs} epochs, {args.workers} workers\n")
    print("| d | transport | K | pushes | pushes/s | samples/s | train s | final loss |")
    print("|---|---|---|---|---|---|---|---|")
    for d, transport, k, run in rows:
        seconds = run["train_seconds"]
        print(f"| {d:,} | {transport} | {k} | {run['pushes']} | {run['pushes'] / seconds:,.0f} | "
              f"{run['samples'] / seconds:,.0f} | {seconds:.2f} | {run['final_loss']:.4f} |")


class PlainWorker(LinearWorker):
    """The plain pattern's worker: ``compute(weights)`` runs the next K local steps of its shard
    from ``weights`` and returns the step sum, or None once its epochs are done."""

    def start(self) -> int:
        self.remaining = iter(self.spec.pieces(self.n_rows))
        return 0

    def compute(self, weights):
        piece = next(self.remaining, None)
        if piece is None:
            return None
        self.local[:] = weights
        self._local_steps(*piece)
        return (weights - self.local) / self.spec.local_step, piece[2] - piece[1]


class PlainServer:
    """The plain pattern's server: ``params -= lr * step_sum``, nothing else."""

    def __init__(self, params, lr):
        self.params, self.lr = np.array(params), lr

    def apply(self, pushed):
        self.params -= self.lr * pushed[0]
        return self.params

    def weights(self):
        return self.params


def run_plain(args, dataset, k: int) -> dict:
    """One run of the plain pattern; the same numbers as a FitResult gives."""
    model = LinearModel("logreg")
    spec = LinearModelSpec(n_features=dataset.n_features, dense=dataset.dense,
                           fit_intercept=True, loss_id=model.loss_id, l2=0.0)
    data = {"values": dataset.values, "indices": dataset.indices, "indptr": dataset.indptr,
            "labels": dataset.y, "sample_weight": kernels.UNIT_WEIGHTS}
    seeds = np.random.SeedSequence(0).spawn(args.workers)
    setup_ref = ray.put(LinearSetup(model=spec, feature_scale=np.zeros(dataset.n_features)))
    workers = [ray.remote(num_cpus=1)(PlainWorker).remote(
        ShardSpec(epochs=args.epochs, batch_size=args.batch_size, local_steps=k, seed=seeds[w],
                  local_step=args.lr),
        ray.put(shard_arrays(data, shard_rows(dataset.n_samples, args.workers, w),
                             dataset.n_features, dataset.dense)), "float64", setup_ref)
        for w in range(args.workers)]
    server = ray.remote(num_cpus=0)(PlainServer).remote(np.zeros(dataset.n_features + 1), args.lr)
    ray.get([w.start.remote() for w in workers])
    current = server.weights.remote()
    started = time.time()
    pending = {w.compute.remote(current): w for w in workers}
    snapshots, pushes, next_eval = [(0.0, current)], 0, args.eval_every
    finished = started
    while pending:
        ready, _ = ray.wait(list(pending))
        worker = pending.pop(ready[0])
        if ray.get(ready[0]) is None:
            continue
        current = server.apply.remote(ready[0])
        pushes += 1
        finished = time.time()
        if finished - started >= next_eval:
            snapshots.append((finished - started, current))
            next_eval += args.eval_every
        pending[worker.compute.remote(current)] = worker
    snapshots.append((finished - started, current))
    history = []
    rows = kernels.Rows(dataset.values, dataset.indices, dataset.indptr, dataset.y,
                        kernels.UNIT_WEIGHTS, kernels.UNIT_WEIGHTS)  # no penalty: feature_scale unread
    for elapsed, ref in snapshots:
        loss, _ = kernels.objective(rows, dataset.dense, np.array(ray.get(ref)), dataset.n_features,
                                    True, kernels.model_terms(model))
        history.append((elapsed, loss))
    for actor in workers + [server]:
        ray.kill(actor)
    return {"pushes": pushes, "train_seconds": finished - started, "history": history}


def from_result(result) -> dict:
    return {"pushes": result.updates, "train_seconds": result.train_seconds,
            "history": list(zip(result.history["time_s"], result.history["loss"])),
            "tau": result.staleness_summary()["mean"]}


def time_to(history, target: float):
    return next((elapsed for elapsed, loss in history if loss <= target), None)


def machine() -> str:
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            name = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{name}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"ray {ray.__version__}, numpy {np.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="rows (default 10000)")
    parser.add_argument("--d", type=int, default=2000, help="features (default 2000)")
    parser.add_argument("--nnz", type=int, default=20, help="nonzeros per row (default 20)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--ks", default="1,4,16,64", help="local steps per push, comma-separated")
    parser.add_argument("--target", type=float, default=0.4, help="target training loss")
    parser.add_argument("--eval-every", type=float, default=0.05, help="seconds between evaluations")
    parser.add_argument("--from-file", action="store_true",
                        help="also fit from an .npz that each Ray worker reads its part of")
    parser.add_argument("--dims", default=None,
                        help="features, comma-separated: compare the sparse and the whole-vector "
                             "transport of the Ray backend at each (instead of the engines)")
    args = parser.parse_args()
    if args.dims:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 _system_config=LOCAL_SYSTEM_CONFIG)
        try:
            transport_table(args)
        finally:
            ray.shutdown()
        return
    dataset = synthetic_sparse(args.n, args.d, args.nnz, seed=0)
    folder = tempfile.mkdtemp(prefix="bench_ray_")
    path = os.path.join(folder, "data.npz")
    if args.from_file:
        matrix = dataset.to_scipy()
        np.savez(path, data=matrix.data, indices=matrix.indices, indptr=matrix.indptr,
                 shape=matrix.shape, y=dataset.y)
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             _system_config=LOCAL_SYSTEM_CONFIG)
    common = dict(model="logreg", policy="constant", lr=args.lr, workers=args.workers,
                  epochs=args.epochs, batch_size=args.batch_size, eval_every=args.eval_every,
                  defer_evaluation=True, progress=False)
    try:
        rows = [("shm", "-", from_result(Engine(**common, split="static").fit(dataset)))]
        for k in (int(text) for text in args.ks.split(",")):
            ray_engine = Engine(**common, backend="ray", local_steps=k)
            rows.append(("ray", k, from_result(ray_engine.fit(dataset))))
            if args.from_file:
                rows.append(("ray-file", k, from_result(ray_engine.fit(path))))
            rows.append(("plain", k, run_plain(args, dataset, k)))
    finally:
        ray.shutdown()
        shutil.rmtree(folder)
    print(f"machine: {machine()}")
    print(f"data: synthetic-sparse n={args.n} d={args.d} nnz={args.nnz}; logreg, constant lr "
          f"{args.lr}, batch {args.batch_size}, {args.epochs} epochs, {args.workers} workers; "
          f"target loss {args.target}\n")
    print("| engine | K | pushes | pushes/s | samples/s | train s | mean tau | final loss | s to target |")
    print("|---|---|---|---|---|---|---|---|---|")
    samples = args.epochs * args.n
    for name, k, run in rows:
        seconds = run["train_seconds"]
        reached = time_to(run["history"], args.target)
        print(f"| {name} | {k} | {run['pushes']} | {run['pushes'] / seconds:,.0f} | "
              f"{samples / seconds:,.0f} | {seconds:.2f} | {run.get('tau', float('nan')):.2f} | "
              f"{run['history'][-1][1]:.4f} | {'-' if reached is None else f'{reached:.2f}'} |")


if __name__ == "__main__":
    main()
