"""``fit(job)``: the one assembly of a shared-memory run.

For either problem: the block's layout (control fields, parameters, the schedule of the row
split, checkpoint and evaluation fields, the data for workers that attach the block), filling
it, the numba warm-up in the parent, the worker spec, the launch (processes, or one thread for a
one-worker linear run), the checkpoint writer and the evaluation reader; then
:func:`hogwild_mts.core.lifecycle.run` over a :class:`ShmBackend`.
"""

from __future__ import annotations

import dataclasses
import os
import queue

import numpy as np

from hogwild_mts.backends.shm import torch_worker, worker
from hogwild_mts.backends.shm.backend import (CheckpointWriter, EvaluationReader, ShmBackend, control_layout,
                                             restore_state, start_processes, worker_times)
from hogwild_mts.backends.shm.block import Layout, SharedBlock
from hogwild_mts.backends.shm.fields import BlockViews
from hogwild_mts.core import lifecycle, signals
from hogwild_mts.core.control import HIST_BINS, STAT_COLUMNS
from hogwild_mts.core.result import FitResult, L1State
from hogwild_mts.job import Job, NetworkProblem, ShmSettings
from hogwild_mts.kernels import linear as kernels
from hogwild_mts.kernels.flat import (bind_buffers, bind_parameters, buffer_count, flatten_buffers,
                                      flatten_parameters, parameter_count)

CHUNK_UPDATES = 8192  # updates per numba call between Python checks in a linear worker


def fit(job: Job) -> FitResult:
    """Run ``job`` on worker processes (or a thread) sharing one block; the block is unlinked on
    every path.  Raises WorkerError, DivergenceError; Ctrl-C returns the partial result."""
    run = _assembly(job)
    block = SharedBlock.create(run.layout())
    try:  # the lifecycle releases the block; until it holds it (or if it never does), here
        return run.run(block)
    except BaseException:
        block.release()  # a second release (after the lifecycle's) does nothing
        raise


def layout(job: Job) -> Layout:
    """The fields of ``job``'s shared block (nothing is allocated)."""
    return _assembly(job).layout()


def _assembly(job: Job) -> "_Run":
    return (_NetworkRun if isinstance(job.problem, NetworkProblem) else _LinearRun)(job)


class _Run:
    """What both problems' runs share: the totals, the evaluation slots and the lifecycle call."""

    def __init__(self, job: Job, n_rows: int, n_values: int):
        self.job, self.n_rows, self.n_values = job, n_rows, n_values
        self.dtype = job.problem.dtype
        self.total = job.total_updates(n_rows)
        self.evaluations = worker.evaluation_slots(job.options.eval_every_updates, self.total,
                                                   job.resumed_updates)

    def _common_layout(self):
        """The control fields, the parameters and the evaluation slots."""
        job = self.job
        layout = control_layout(job.workers, self.n_values, self.dtype)
        if self.evaluations is not None:
            worker.add_evaluation_fields(layout, self.evaluations[1], self.n_values, self.dtype)
        return layout

    def _prepare_evaluations(self, views: BlockViews) -> None:
        """The due counts of the update-triggered evaluations, if the run has them."""
        if self.evaluations is not None:
            worker.prepare_evaluations(views, self.evaluations[0], self.job.options.eval_every_updates)

    def _schedule(self, views: BlockViews, spec) -> None:
        """The row split's schedule: new, or restored with the rest of a resumed run's state."""
        if self.job.resumed is not None:
            restore_state(views, spec, self.job.resumed)
        else:
            worker.prepare_schedule(views, spec)

    def _checkpoint_fields(self) -> dict:
        """Worker 0's snapshot schedule, as the worker specs take it."""
        checkpoints = self.job.checkpoints
        return {"checkpoint_every_seconds": checkpoints and checkpoints.every_seconds,
                "checkpoint_every_updates": checkpoints and checkpoints.every_updates}

    def _lifecycle(self, block: SharedBlock, spec, launch, score, details, stamp: bool,
                   score_in_threads: bool) -> FitResult:
        """The ShmBackend over ``block`` (its checkpoint writer and evaluation reader), run
        through the lifecycle."""
        job = self.job
        checkpoints = None
        if job.checkpoints is not None:
            checkpoints = CheckpointWriter(block.views, spec, job.write_checkpoint)
        backend = ShmBackend(block, job.workers, launch, checkpoints,
                             None if self.evaluations is None else EvaluationReader(block.views, stamp))
        return lifecycle.run(backend, job.options, score=score, details=details,
                             describe_policy=job.describe_policy,
                             total_updates=self.total, started=job.started,
                             resumed_updates=job.resumed_updates, score_in_threads=score_in_threads)


class _LinearRun(_Run):
    """A linear model's run.  The data set goes into the block only for workers that attach it
    (spawn, forkserver): the single worker of a ``workers=1`` run is a thread, and forked workers
    inherit this process's memory, so both read the caller's arrays in place."""

    def __init__(self, job: Job):
        problem = job.problem
        super().__init__(job, problem.dataset.n_samples, problem.n_params)

    def layout(self):
        job, problem = self.job, self.job.problem
        layout = self._common_layout()
        layout.add("feature_scale", np.float64, (problem.dataset.n_features,))
        worker.add_schedule(layout, self.n_rows, job.split)
        if job.options.momentum:
            worker.add_velocity_field(layout, self.n_values)
        if problem.model.l1:
            worker.add_l1_fields(layout, job.workers, problem.dataset.n_features)
        if job.average_start is not None:
            worker.add_average_fields(layout, self.n_values)
        if job.checkpoints is not None:
            worker.add_checkpoint_fields(layout, job.workers, self.n_values, self.dtype,
                                         job.options.momentum)
        if job.workers > 1 and job.start_method != "fork":
            for name, array in problem.arrays().items():
                layout.add(name, array.dtype, array.shape)
        return layout

    def _spec(self, block: SharedBlock) -> worker.WorkerSpec:
        job, problem = self.job, self.job.problem
        options, dataset = job.options, problem.dataset
        return worker.WorkerSpec(
            block_name=block.name, layout=block.layout, workers=job.workers, epochs=options.epochs,
            batch_size=options.batch_size, chunk_updates=CHUNK_UPDATES, seeds=job.seeds(),
            n_features=dataset.n_features, dense=dataset.dense,
            fit_intercept=problem.model.fit_intercept, terms=kernels.model_terms(problem.model),
            stamp=job.stamp, policy=options.policy, momentum=options.momentum,
            parent_pid=os.getpid(), split=job.split, shuffle=job.shuffle, schedule=job.schedule,
            average_start=job.average_start, start_update=job.start_update,
            **self._checkpoint_fields())

    @staticmethod
    def _warm_up(views: BlockViews, spec: worker.WorkerSpec, problem, rows: kernels.Rows) -> None:
        """Compile (or load from numba's cache) the run's kernels for these types in the parent:
        its SGD variant on no rows of ``views`` (scratch parameters and counts), the objective on
        one row of ``rows`` (those the run scores on), the claims."""
        scratch = worker.worker_buffers(spec, np.zeros(STAT_COLUMNS, np.int64),
                                        np.zeros(HIST_BINS, np.int64))
        params = np.zeros_like(views.params)
        worker.chunk_runner(dataclasses.replace(views, params=params), spec, scratch,
                            lambda: np.ones(1))(kernels.NO_ROWS, 0, 0)
        first_row = rows._replace(indptr=rows.indptr[:2],  # same types, one row of work
                                  sample_weight=rows.sample_weight[:1])
        problem.score(first_row, spec, params)
        worker.load_schedule_kernels()

    def run(self, block: SharedBlock) -> FitResult:
        job, problem = self.job, self.job.problem
        views = block.views
        rows = problem.rows()
        views.place(**rows._asdict())
        self._prepare_evaluations(views)
        if problem.start_params is not None:
            views.params[:] = problem.start_params
        spec = self._spec(block)
        if problem.start_average is not None:  # the average of the updates before start_update
            views.averaged[:] = problem.start_average
            views.averaged_marks[:] = worker.averaged_iterates(spec)
        if problem.start_l1 is not None:  # the penalty of the run this one continues
            views.l1_totals[0, 0] = problem.start_l1.total  # u is the column's sum
            views.l1_applied[:] = problem.start_l1.applied
        # numba compiles or loads kernels here; a stop signal waits until it is done (one that
        # lands inside numba's cache callback is printed as an ignored exception, not raised)
        with signals.blocked():
            self._schedule(views, spec)
            self._warm_up(views, spec, problem, rows)

        def launch(views, processes):
            """One thread of this process when workers == 1, else processes."""
            if job.workers > 1:
                if job.start_method == "fork":
                    spec.views = views
                return start_processes(worker.worker_main, spec, job.workers, processes,
                                       job.start_method, preload=(worker.__name__,))
            errors = queue.SimpleQueue()
            spec.parent_pid = 0
            processes.append(worker.ThreadWorker(views, spec, errors))
            processes[0].start()
            return errors

        n_features = problem.dataset.n_features

        def score(params):
            return problem.score(rows, spec, params)

        def details(params):
            averaged = worker.averaged_params(block.views, spec)
            return {**problem.result_fields(params, n_features, problem.dataset.name, averaged),
                    "l1_state": l1_state(block.views),
                    "settings": dataclasses.replace(
                        job.settings, stamp=job.stamp, momentum=job.options.momentum,
                        shm=ShmSettings(job.split, job.start_method if job.workers > 1 else "thread"),
                        loss="training objective", accuracy="train"),
                    **worker_times(block.views.clock, job.started)}

        # kernels.objective releases the GIL: deferred copies are scored in threads
        return self._lifecycle(block, spec, launch, score, details, job.stamp, score_in_threads=True)


def l1_state(views: BlockViews) -> L1State | None:
    """The cumulative L1 penalty in a linear run's block (None without one): ``u`` summed over
    the workers' totals in the kernels' order, and a copy of ``l1_applied``."""
    if views.l1_applied is None:
        return None
    return L1State(float(sum(views.l1_totals[:, 0].tolist())), views.l1_applied.copy())


class _NetworkRun(_Run):
    """A torch network's run: every worker builds the network and binds it to the block."""

    def __init__(self, job: Job):
        problem = job.problem
        self.n_params = parameter_count(problem.network)
        super().__init__(job, problem.dataset.n_train, self.n_params + buffer_count(problem.network))

    def layout(self):
        job, dataset = self.job, self.job.problem.dataset
        layout = self._common_layout()
        worker.add_schedule(layout, self.n_rows, job.split)
        if job.checkpoints is not None:
            worker.add_checkpoint_fields(layout, job.workers, self.n_values, self.dtype)
        if job.start_method != "fork":
            layout.add("inputs", dataset.train_inputs.dtype, dataset.train_inputs.shape)
            layout.add("targets", dataset.train_targets.dtype, dataset.train_targets.shape)
        return layout

    def _spec(self, block: SharedBlock) -> torch_worker.TorchWorkerSpec:
        job, problem = self.job, self.job.problem
        options, dataset = job.options, problem.dataset
        return torch_worker.TorchWorkerSpec(
            block_name=block.name, layout=block.layout, network=problem.build,
            input_shape=dataset.input_shape, outputs=dataset.outputs, n_params=self.n_params,
            workers=job.workers, epochs=options.epochs, batch_size=options.batch_size,
            seeds=job.seeds(), policy=options.policy, dtype=problem.dtype, parent_pid=os.getpid(),
            split=job.split, loss=problem.loss, momentum=options.momentum,
            weight_decay=problem.weight_decay, **self._checkpoint_fields())

    def run(self, block: SharedBlock) -> FitResult:
        job, problem = self.job, self.job.problem
        network, dataset, n_params = problem.network, problem.dataset, self.n_params
        views = block.views
        self._prepare_evaluations(views)
        flatten_parameters(network, views.params[:n_params])
        flatten_buffers(network, views.params[n_params:])
        views.place(inputs=dataset.train_inputs, targets=dataset.train_targets)
        evaluated = np.empty_like(views.params)
        bind_parameters(network, evaluated[:n_params])  # the parent scores copies of the block
        bind_buffers(network, evaluated[n_params:])
        spec = self._spec(block)
        with signals.blocked():  # numba compiles or loads kernels: see the linear run
            torch_worker.warm_up_kernels(views.params.dtype)
            self._schedule(views, spec)

        def launch(views, processes):
            if job.start_method == "fork":
                spec.views = views
            return start_processes(torch_worker.torch_worker_main, spec, job.workers, processes,
                                   job.start_method, name="hogwild-torch-worker",
                                   preload=(torch_worker.__name__, "torch"))

        def details(params):
            return {"params": params.astype(np.float64), "intercept": 0.0,
                    "model": problem.name, "data": dataset.name,
                    "settings": dataclasses.replace(job.settings,
                                                    shm=ShmSettings(job.split, job.start_method)),
                    **worker_times(block.views.clock, job.started)}

        def score(params):
            evaluated[:] = params
            return problem.evaluate(network)

        return self._lifecycle(block, spec, launch, score, details, True, score_in_threads=False)
