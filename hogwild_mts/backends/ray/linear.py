"""A linear model's fit on Ray, from data in the driver or from a data file the workers read.

* :func:`fit_linear` (``Engine(backend="ray").fit(X, y)``): the driver was handed the data; it
  puts each worker's shard (rows ``w, w+m, ...``) into the object store once; a worker actor
  receives only its own shard's object and reads it in place (read-only, no copy).  The driver
  scores snapshots of the server's parameters on the whole data set (the shared-memory
  engine's objective).
* :func:`fit_linear_from_path` (``Engine(backend="ray").fit("data.npz")``): the driver never
  reads the data.  Each worker actor reads its own part of the file
  (:func:`hogwild_mts.data.tabular.read_file_part`) and reports what it found
  (:class:`~hogwild_mts.backends.ray.workers.PartReport`: rows, columns, labels, column counts
  and up to ``EVAL_SAMPLE_ROWS / workers`` evenly spaced rows); the driver checks the reports
  together before the server starts, sends every worker the same
  :class:`~hogwild_mts.backends.ray.workers.LinearSetup`, and scores snapshots on the rows the
  workers sent (the loss of the history is the training objective on that sample).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from hogwild_mts.backends.ray.backend import (RayBackend, WORKER_CPUS, check_cluster, connect, disconnect,
                                              fault_options, require_ray, server_placement)
from hogwild_mts.backends.ray.server import ParameterServer, warm_up_server_kernel
from hogwild_mts.backends.ray.workers import (FileSource, LinearModelSpec, LinearSetup,
                                              LinearWorker, ShardSpec, shard_arrays,
                                              warm_up_linear)
from hogwild_mts.kernels import linear as kernels
from hogwild_mts.kernels.split import shard_rows, total_updates
from hogwild_mts.core import lifecycle
from hogwild_mts.core.result import FitResult, WorkerError
from hogwild_mts.data.tabular import DataError, data_file_format
from hogwild_mts.job import DataFileSettings, Job, LinearSettings, RaySettings
from hogwild_mts.policies.step_sizes import policy_state, policy_table

EVAL_SAMPLE_ROWS = 10_000  # rows of a data file the workers send the driver to score on


def base_step(policy, workers: int) -> float:
    """lr, the step of the workers' local steps: the policy's ``lr``, or (a policy
    without one, e.g. a function of tau) its step for a fresh update, ``table()[0]``."""
    lr = getattr(policy, "lr", None)
    if lr is not None:
        return float(lr)
    return float(policy_table(policy_state(policy, workers))[0])


def fit_linear(job: Job) -> FitResult:
    """Train the job's linear problem on its data set (rows weighted by ``sample_weight``, empty
    for unit weights) with the server and ``job.workers`` worker actors.  ``updates`` and
    ``counter`` of the result count pushes, each of up to ``local_steps`` mini-batches; a worker
    actor that dies is re-created up to ``job.ray.max_worker_restarts`` times."""
    ray = require_ray()
    options, workers, problem = job.options, job.workers, job.problem
    dataset = problem.dataset
    model = _model_spec(problem, dataset.n_features, dataset.dense)
    rows = problem.rows()
    params = _start_params(problem, dataset.n_features, problem.start_params)
    shards = [shard_arrays(rows._asdict(), shard_rows(dataset.n_samples, workers, w),
                           dataset.n_features, dataset.dense) for w in range(workers)]
    warm_up_linear(shards[0], rows.feature_scale, model, options.batch_size, problem.dtype)
    warm_up_server_kernel(params.dtype)
    problem.score(rows._replace(indptr=rows.indptr[:2], sample_weight=rows.sample_weight[:1]),
                  model, params)

    started_ray = connect(job.ray.address)
    try:
        check_cluster(workers)
        shard_refs = [ray.put(shard) for shard in shards]
        del shards
        setup_ref = ray.put(LinearSetup(model=model, feature_scale=rows.feature_scale))
        shard_spec = _shard_specs(job)
        worker_actor = ray.remote(num_cpus=WORKER_CPUS)(LinearWorker)

        def make_worker(worker_id: int, name: str):
            return worker_actor.options(name=name).remote(
                shard_spec(worker_id), shard_refs[worker_id], problem.dtype, setup_ref)

        pushes = total_updates(dataset.n_samples, workers, options.epochs,
                               options.batch_size * job.ray.local_steps, "static")
        backend = _backend(job, params, make_worker, pushes)
        return _run(job, backend, model, rows, dataset.name, pushes,
                    dataclasses.replace(job.settings, loss="training objective", accuracy="train"))
    finally:
        if started_ray:
            disconnect()


def fit_linear_from_path(job: Job) -> FitResult:
    """Train the job's linear problem on the data file at ``problem.path`` (.npz or
    svmlight/libsvm, as :func:`hogwild_mts.data.tabular.load_data` reads it), each worker actor
    reading only its own part (the module docstring has the data flow; the path must name the
    same file on every node that runs a worker); ``problem.check_start(n_params)`` gives the
    start parameters (or None) once the number of columns is known.  ``settings["classes"]`` of the result: the labels found in the file
    (a classifier's, sorted; None for a regressor).  Bad data (unknown format,
    missing or malformed file, labels outside the model's domain, fewer rows than workers)
    raises DataError/ValueError before the server starts; every actor is then already gone."""
    ray = require_ray()
    options, workers, problem = job.options, job.workers, job.problem
    # the workers open the path in their own working directory, on their own node
    path = os.path.abspath(os.path.expanduser(problem.path))
    data_format = data_file_format(path)  # an unknown format stops here, before Ray starts
    warm_up_server_kernel(np.dtype(problem.dtype))

    started_ray = connect(job.ray.address)
    waiting: dict = {}  # worker id -> actor created here and not yet handed to the backend
    try:
        check_cluster(workers)
        shard_spec = _shard_specs(job)
        worker_actor = ray.remote(num_cpus=WORKER_CPUS)(LinearWorker)
        run: dict = {}  # the checked data (set below, before the backend starts any actor)

        def make_worker(worker_id: int, name: str):
            if worker_id in waiting:  # the first actor: created, described and configured below
                return waiting.pop(worker_id)
            return worker_actor.options(name=name).remote(
                shard_spec(worker_id), FileSource(path, worker_id, workers), problem.dtype,
                run["setup_ref"])

        backend = _backend(job, lambda: run["params"], make_worker, lambda: run["pushes"])
        for worker_id in range(workers):
            waiting[worker_id] = worker_actor.options(
                name=f"{backend.run_name}-worker-{worker_id}").remote(
                shard_spec(worker_id), FileSource(path, worker_id, workers), problem.dtype)
        reports = _wait_all(ray, {w: actor.describe.remote(-(-EVAL_SAMPLE_ROWS // workers))
                                  for w, actor in waiting.items()}, path)
        setup, sample, rows, labels = _check_parts(job, path, data_format, reports)
        run["params"] = _start_params(problem, setup.model.n_features, problem.check_start(
            problem.model.n_params(setup.model.n_features)))
        run["setup_ref"] = ray.put(setup)
        _wait_all(ray, {w: actor.configure.remote(run["setup_ref"])
                        for w, actor in waiting.items()}, path)
        problem.score(sample, setup.model, run["params"])  # compiled before the clock starts
        rows_per_push = options.batch_size * job.ray.local_steps
        pushes = run["pushes"] = options.epochs * sum(-(-count // rows_per_push) for count in rows)
        n_sampled = sample.indptr.shape[0] - 1
        return _run(job, backend, setup.model, sample, os.path.basename(path), pushes,
                    dataclasses.replace(job.settings, loss=f"training objective on {n_sampled} sampled rows",
                                        accuracy=f"train, on {n_sampled} sampled rows",
                                        data_file=DataFileSettings(path, sum(rows), labels.tolist()
                                                                   if problem.model.classifier else None)))
    finally:
        for actor in waiting.values():
            ray.kill(actor)
        if started_ray:
            disconnect()


def _model_spec(problem, n_features: int, dense: bool) -> LinearModelSpec:
    """The linear model the worker kernels train, for data of this shape."""
    model = problem.model
    return LinearModelSpec(n_features=n_features, dense=dense, fit_intercept=model.fit_intercept,
                           loss_id=model.loss_id, l2=float(model.l2), epsilon=float(model.epsilon),
                           intercept_decay=float(model.intercept_decay))


def _start_params(problem, n_features: int, start_params: np.ndarray | None) -> np.ndarray:
    """The server's first parameter vector: zeros, or ``start_params``, in the run's dtype."""
    params = np.zeros(problem.model.n_params(n_features), dtype=problem.dtype)
    if start_params is not None:
        params[:] = start_params
    return params


def _shard_specs(job: Job):
    """``worker id -> ShardSpec`` of the job's options (seeds spawned once per run)."""
    options, seeds = job.options, job.seeds()
    local_step = base_step(options.policy, job.workers)
    return lambda worker_id: ShardSpec(epochs=options.epochs, batch_size=options.batch_size,
                                       local_steps=job.ray.local_steps,
                                       seed=seeds[worker_id], local_step=local_step,
                                       shuffle=job.shuffle)


def _backend(job: Job, params, make_worker, pushes) -> RayBackend:
    """The RayBackend of a run; ``params``: the start vector, ``pushes``: the run's pushes, each
    given or a function giving it when the server starts.  With ``eval_every_updates`` the
    server copies its parameters at the due versions and the backend's ``evaluations`` (the
    lifecycle's optional seam) hands those copies to the lifecycle: history rows at exact
    multiples of it, in pushes."""
    import ray

    server_actor = ray.remote(num_cpus=0)(ParameterServer)
    every = job.options.eval_every_updates

    def make_server(name: str):
        start = params() if callable(params) else params
        last = pushes() if callable(pushes) else pushes
        return server_actor.options(name=name, **server_placement()).remote(
            start, job.options.policy, job.workers, every, last)

    backend = RayBackend(job.workers, make_server, make_worker,
                         checkpoint=job.ray_checkpoint, checkpoint_every=job.ray.checkpoint_every,
                         **fault_options(job.ray))
    if every is not None:
        backend.evaluations = lambda: [(elapsed, version, np.array(copy)) for elapsed, version, copy
                                       in backend.server_call("take_evaluations")]
    return backend


def _run(job: Job, backend: RayBackend, model: LinearModelSpec, rows: kernels.Rows, name: str,
         pushes: int, settings: LinearSettings) -> FitResult:
    """Run ``backend`` through the lifecycle, scoring snapshots on ``rows``; ``settings``: the
    result's, less its Ray part."""
    options, problem = job.options, job.problem

    def score(snapshot):
        return problem.score(rows, model, snapshot)

    def details(final):
        return {**problem.result_fields(final, model.n_features, name),
                "settings": dataclasses.replace(settings, ray=RaySettings(
                    job.ray.local_steps, base_step(options.policy, job.workers), list(backend.lost),
                    list(backend.restarts), list(backend.worker_pushes)))}

    return lifecycle.run(backend, options, score=score, details=details,
                         describe_policy=job.describe_policy, total_updates=pushes,
                         started=job.started)


def _wait_all(ray, refs: dict, path: str) -> list:
    """The results of ``refs`` (worker id -> ObjectRef), in worker order; a worker's
    ValueError (bad data; a file part's error names the node) as DataError naming the worker,
    any other failure as WorkerError."""
    results = []
    for worker_id, ref in sorted(refs.items()):
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, ValueError):
                raise DataError(f"worker {worker_id} {error.cause}") from None
            raise WorkerError(f"worker {worker_id} failed reading its part of {path}:\n"
                              f"{error}") from None
        except ray.exceptions.RayError as error:
            raise WorkerError(f"worker {worker_id} died reading its part of {path}:\n"
                              f"{error}") from None
    return results


def _check_parts(job: Job, path: str, data_format: str, reports: list) -> tuple:
    """(setup, evaluation sample, rows per worker, the distinct labels found) from the workers'
    reports on their parts of ``path``; DataError/ValueError for a file the fit cannot use."""
    sizes = {report.file_bytes for report in reports}
    if len(sizes) > 1:
        seen = ", ".join(f"{report.file_bytes} bytes on {report.node}" for report in reports)
        raise DataError(f"{path}: the workers read different files ({seen}); every node that "
                        "runs a worker must see the same file")
    rows = [report.rows for report in reports]
    n_samples = sum(rows)
    if 0 in rows:
        raise DataError(f"{path}: {n_samples} rows for {len(rows)} workers, and the part of "
                        f"worker {rows.index(0)} holds no row (an svmlight file is split by "
                        "bytes); use fewer workers")
    model = job.problem.model
    if job.options.batch_size > n_samples:
        raise ValueError(f"batch_size ({job.options.batch_size}) exceeds the number of "
                         f"samples ({n_samples})")
    width = max(report.n_features for report in reports)
    counts = np.zeros(width, np.int64)
    for report in reports:
        counts[: report.feature_counts.shape[0]] += report.feature_counts
    # svmlight indices are one-based unless some index is 0 (load_svmlight's rule, file-wide)
    index_shift = int(data_format == "svmlight" and counts.any()
                      and not any(report.has_index_zero for report in reports))
    n_features, counts = width - index_shift, counts[index_shift:]
    if n_features < 1:
        raise DataError(f"{path}: no feature columns")
    labels = np.unique(np.concatenate([report.labels for report in reports]))
    if model.classifier and labels.size > 2:
        raise DataError(f"{path}: {labels.size} classes, and the Ray workers train a data file "
                        "they read as one binary problem; train it one-vs-rest with --backend shm "
                        "(the command then loads the file), or load it and fit "
                        "HogwildClassifier(backend='ray') on the arrays")
    try:
        targets = model.check_labels(labels)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from None
    # classifiers' labels map to -1/+1 in the workers; a regressor's targets stay as they are
    label_map = (labels, targets) if model.classifier else (None, None)
    dense = reports[0].dense  # the parts of one file share its layout
    feature_scale = np.zeros(n_features)
    if model.l2 > 0.0:  # the kernels read feature_scale only with a penalty
        np.divide(n_samples, counts, out=feature_scale, where=counts > 0)
    setup = LinearSetup(model=_model_spec(job.problem, n_features, dense), feature_scale=feature_scale, index_shift=index_shift,
                        label_values=label_map[0], label_targets=label_map[1])
    return setup, _joined_sample(reports, setup), rows, labels


def _joined_sample(reports: list, setup: LinearSetup) -> kernels.Rows:
    """The rows the workers sampled, as one data set in the checked form of ``setup`` (unit
    weights, the setup's L2 weights)."""
    samples = [report.sample for report in reports]
    labels = np.concatenate([sample["labels"] for sample in samples])
    lengths = np.concatenate([np.diff(sample["indptr"]) for sample in samples])
    indptr = np.zeros(labels.size + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    joined = {"values": np.concatenate([sample["values"] for sample in samples]),
              "indices": np.concatenate([sample["indices"] for sample in samples]),
              "indptr": indptr, "labels": labels, "sample_weight": kernels.UNIT_WEIGHTS}
    return kernels.Rows(**setup.checked(joined), feature_scale=setup.feature_scale)
