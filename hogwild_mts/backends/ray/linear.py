"""A linear model's fit on Ray: :class:`hogwild_mts.engines.linear.Engine` with
``backend="ray"`` calls :func:`fit_linear` once its data set and start point are validated.

Data flow: the driver (which was handed the data) puts each worker's shard into the object store
once; a worker actor receives only its own shard's object and reads it in place (read-only,
no copy); the full data set stays with the driver, which scores snapshots of the server's
parameters on it (the same objective as the shared-memory engine).
"""

from __future__ import annotations

import copy
import functools

import numpy as np

from hogwild_mts.backends.ray.backend import RayBackend, WORKER_CPUS, check_cluster, connect, require_ray
from hogwild_mts.backends.ray.server import ParameterServer, warm_up_server_kernel
from hogwild_mts.backends.ray.workers import (LinearModelSpec, LinearWorker, ShardSpec,
                                              warm_up_linear)
from hogwild_mts.backends.shm.worker import shard_rows, total_updates
from hogwild_mts.core import lifecycle
from hogwild_mts.core.result import FitResult


def base_step(policy, workers: int) -> float:
    """alpha_c, the step of the workers' local steps: the policy's ``alpha``, or (a policy
    without one, e.g. a function of tau) its step for a fresh update, ``table()[0]``."""
    alpha = getattr(policy, "alpha", None)
    if alpha is not None:
        return float(alpha)
    bound = copy.deepcopy(policy)
    bound.bind(workers)
    return float(bound.table()[0])


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


def fit_linear(engine, dataset, sample_weight: np.ndarray, start_params: np.ndarray | None,
               started: float) -> FitResult:
    """Train ``engine``'s model on ``dataset`` (rows weighted by ``sample_weight``, empty for
    unit weights) with the server and ``engine.workers`` worker actors (see
    :class:`hogwild_mts.engines.linear.Engine` for the options).  ``updates`` and
    ``counter`` of the result count pushes, each of up to ``local_steps`` mini-batches."""
    ray = require_ray()
    options, ray_options, workers = engine.options, engine.ray_options, engine.workers
    local_steps = ray_options.local_steps
    model = LinearModelSpec(n_features=dataset.n_features, dense=dataset.dense,
                            fit_intercept=engine.model.fit_intercept, loss_id=engine.model.loss_id,
                            l2=float(engine.model.l2))
    data = {"feature_scale": np.zeros(dataset.n_features)}
    engine._fill(data, dataset, sample_weight)  # the data arrays by their kernel names, L2 weights
    params = np.zeros(engine.model.n_params(dataset.n_features), dtype=engine.dtype)
    if start_params is not None:
        params[:] = start_params
    local_step = base_step(options.policy, workers)
    shards = [shard_arrays(data, shard_rows(dataset.n_samples, workers, w), dataset.n_features,
                           dataset.dense) for w in range(workers)]
    warm_up_linear(shards[0], data["feature_scale"], model, options.batch_size, engine.dtype)
    warm_up_server_kernel(params.dtype)
    engine._objective(dict(data, indptr=data["indptr"][:2],
                           sample_weight=data["sample_weight"][:1]), model, params)

    started_ray = connect(ray_options.address)
    try:
        check_cluster(workers)
        shard_refs = [ray.put(shard) for shard in shards]
        del shards
        scale_ref = ray.put(data["feature_scale"])
        seeds = np.random.SeedSequence(options.seed).spawn(workers)
        server_actor = ray.remote(num_cpus=0)(ParameterServer)
        worker_actor = ray.remote(num_cpus=WORKER_CPUS)(LinearWorker)

        def make_server(name: str):
            return server_actor.options(name=name).remote(params, options.policy, workers)

        def make_worker(worker_id: int, name: str):
            spec = ShardSpec(epochs=options.epochs, batch_size=options.batch_size,
                             local_steps=local_steps, seed=seeds[worker_id], local_step=local_step)
            return worker_actor.options(name=name).remote(spec, model, shard_refs[worker_id],
                                                          scale_ref, engine.dtype)

        def score(snapshot):
            loss, accuracy = engine._objective(data, model, snapshot.astype(np.float64, copy=False))
            return loss, accuracy if engine.model.classifier else None

        backend = RayBackend(workers, make_server, make_worker, options.policy,
                             checkpoint=None if ray_options.checkpoint is None
                             else functools.partial(ray_options.checkpoint, engine),
                             checkpoint_every=ray_options.checkpoint_every)

        def details(final):
            final = final.astype(np.float64)
            return {"params": final[: dataset.n_features],
                    "intercept": float(final[dataset.n_features]) if model.fit_intercept else 0.0,
                    "model": engine.model.name, "data": dataset.name,
                    "settings": {"epochs": options.epochs, "batch_size": options.batch_size,
                                 "seed": options.seed, "dtype": engine.dtype, "l2": model.l2,
                                 "fit_intercept": model.fit_intercept, "backend": "ray",
                                 "local_steps": local_steps, "local_step": local_step,
                                 "update": "push", "lost_workers": list(backend.lost),
                                 "loss": "training objective", "accuracy": "train"}}

        pushes = total_updates(dataset.n_samples, workers, options.epochs,
                               options.batch_size * local_steps, "static")
        return lifecycle.run(backend, options, score=score, details=details,
                             total_updates=pushes, started=started)
    finally:
        if started_ray:
            ray.shutdown()
