"""A torch network's fit on Ray: :class:`hogwild_mts.engines.networks.TorchEngine` with
``backend="ray"`` calls :func:`fit_network` once its data set and network are validated.  The
driver puts each worker's training inputs and labels into the object store once and scores snapshots of
the server's parameters on the test set, as the shared-memory engine does."""

from __future__ import annotations

import functools

import numpy as np

from hogwild_mts.backends.ray.backend import RayBackend, WORKER_CPUS, check_cluster, connect, require_ray
from hogwild_mts.backends.ray.linear import base_step
from hogwild_mts.backends.ray.server import ParameterServer, warm_up_server_kernel
from hogwild_mts.backends.ray.workers import ShardSpec, TorchWorker
from hogwild_mts.kernels.flat import bind_parameters, flatten_parameters, parameter_count
from hogwild_mts.kernels.split import shard_rows, total_updates
from hogwild_mts.core import lifecycle
from hogwild_mts.core.result import FitResult


def fit_network(engine, dataset, network, started: float) -> FitResult:
    """Train ``network`` (built and checked by ``engine``) on ``dataset`` with the server and
    ``engine.workers`` worker actors; ``updates`` and ``counter`` count pushes."""
    ray = require_ray()
    options, ray_options, workers = engine.options, engine.ray_options, engine.workers
    params = np.zeros(parameter_count(network), dtype=engine.dtype)
    flatten_parameters(network, params)
    evaluated_params = np.empty_like(params)
    bind_parameters(network, evaluated_params)  # the driver scores copies of the server's vector
    local_step = base_step(options.policy, workers)
    warm_up_server_kernel(params.dtype)

    started_ray = connect(ray_options.address)
    try:
        check_cluster(workers)
        shard_refs = []
        for worker_id in range(workers):
            rows = shard_rows(dataset.n_train, workers, worker_id)
            shard_refs.append(ray.put({"images": dataset.train_inputs[rows],
                                       "labels": dataset.train_targets[rows]}))
        seeds = np.random.SeedSequence(options.seed).spawn(workers)
        server_actor = ray.remote(num_cpus=0)(ParameterServer)
        worker_actor = ray.remote(num_cpus=WORKER_CPUS)(TorchWorker)

        def make_server(name: str):
            return server_actor.options(name=name).remote(params, options.policy, workers)

        def make_worker(worker_id: int, name: str):
            spec = ShardSpec(epochs=options.epochs, batch_size=options.batch_size,
                             local_steps=ray_options.local_steps, seed=seeds[worker_id],
                             local_step=local_step)
            return worker_actor.options(name=name).remote(
                spec, engine._network_spec, dataset.input_shape, dataset.outputs,
                shard_refs[worker_id], engine.dtype)

        def score(snapshot):
            evaluated_params[:] = snapshot
            return engine._evaluate(network, dataset)

        backend = RayBackend(workers, make_server, make_worker, options.policy,
                             checkpoint=None if ray_options.checkpoint is None
                             else functools.partial(ray_options.checkpoint, engine),
                             checkpoint_every=ray_options.checkpoint_every,
                             max_worker_restarts=ray_options.max_worker_restarts)

        def details(final):
            return {"params": final.astype(np.float64), "intercept": 0.0,
                    "model": engine.model_name, "data": dataset.name,
                    "settings": {**engine._settings(dataset, int(final.shape[0]), 0),
                                 "backend": "ray", "local_steps": ray_options.local_steps,
                                 "local_step": local_step, "update": "push",
                                 "lost_workers": list(backend.lost)}}

        pushes = total_updates(dataset.n_train, workers, options.epochs,
                               options.batch_size * ray_options.local_steps, "static")
        return lifecycle.run(backend, options, score=score, details=details,
                             total_updates=pushes, started=started)
    finally:
        if started_ray:
            ray.shutdown()
