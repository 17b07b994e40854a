"""A torch network's fit on Ray (:func:`fit_network`, for a Job whose problem is a
:class:`hogwild_mts.job.NetworkProblem`, its data set and network validated).  The driver puts each worker's training inputs and labels into the object store once and scores snapshots of
the server's parameters on the test set, as the shared-memory engine does."""

from __future__ import annotations

import dataclasses

import numpy as np

from hogwild_mts.backends.ray.backend import (RayBackend, WORKER_CPUS, check_cluster, connect, disconnect,
                                              fault_options, require_ray, server_placement)
from hogwild_mts.backends.ray.linear import base_step
from hogwild_mts.backends.ray.server import ParameterServer, warm_up_server_kernel
from hogwild_mts.backends.ray.workers import ShardSpec, TorchWorker
from hogwild_mts.kernels.flat import bind_parameters, flatten_parameters, parameter_count
from hogwild_mts.kernels.split import shard_rows, total_updates
from hogwild_mts.core import lifecycle
from hogwild_mts.core.result import FitResult
from hogwild_mts.job import Job, RaySettings


def fit_network(job: Job) -> FitResult:
    """Train the job's network (its start weights) on its data set with the server and
    ``job.workers`` worker actors; ``updates`` and ``counter`` count pushes."""
    ray = require_ray()
    options, ray_options, workers, problem = job.options, job.ray, job.workers, job.problem
    network, dataset = problem.network, problem.dataset
    params = np.zeros(parameter_count(network), dtype=problem.dtype)
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
        seeds = job.seeds()
        server_actor = ray.remote(num_cpus=0)(ParameterServer)
        worker_actor = ray.remote(num_cpus=WORKER_CPUS)(TorchWorker)

        def make_server(name: str):
            return server_actor.options(name=name, **server_placement()).remote(
                params, options.policy, workers)

        def make_worker(worker_id: int, name: str):
            spec = ShardSpec(epochs=options.epochs, batch_size=options.batch_size,
                             local_steps=ray_options.local_steps, seed=seeds[worker_id],
                             local_step=local_step)
            return worker_actor.options(name=name).remote(
                spec, problem.build, dataset.input_shape, dataset.outputs,
                shard_refs[worker_id], problem.dtype)

        def score(snapshot):
            evaluated_params[:] = snapshot
            return problem.evaluate(network)

        backend = RayBackend(workers, make_server, make_worker,
                             checkpoint=job.ray_checkpoint, checkpoint_every=ray_options.checkpoint_every,
                             **fault_options(ray_options))

        def details(final):
            return {"params": final.astype(np.float64), "intercept": 0.0,
                    "model": problem.name, "data": dataset.name,
                    "settings": dataclasses.replace(job.settings, ray=RaySettings(
                        ray_options.local_steps, local_step, list(backend.lost)))}

        pushes = total_updates(dataset.n_train, workers, options.epochs,
                               options.batch_size * ray_options.local_steps, "static")
        return lifecycle.run(backend, options, score=score, details=details,
                             describe_policy=job.describe_policy,
                             total_updates=pushes, started=job.started)
    finally:
        if started_ray:
            disconnect()
