"""The simulator backend of torch networks: ``m`` emulated Hogwild! workers training one network
in this thread, deterministically, with exact delayed gradients.

The schedule is the linear simulator's (:func:`hogwild_mts.backends.sim.run._schedule`: the
event-driven model or iid staleness, the same seeds), and so are the batches
(:func:`hogwild_mts.backends.sim.run._batches`: the static split; with one worker that is also
the dynamic split, so ``workers=1`` reproduces a one-worker
:class:`~hogwild_mts.engines.networks.TorchEngine` run bit for bit).  Update ``t`` lands a
gradient read at version ``t - tau_t`` (the parameters after that many updates).  Rather than
keeping old parameter versions, each gradient is computed when its version is current -- the
moment its emulated worker reads the parameters -- and held until it lands: then it is applied
with the worker's ``alpha(tau)``, private velocity and weight decay by the real torch worker's
own update kernels (:func:`hogwild_mts.kernels.flat.apply_update`,
:func:`~hogwild_mts.kernels.flat.apply_momentum_update`), which also stamp tau and count it.

Memory: the gradients in flight at once (at most ``m`` with the event schedule; with iid
staleness at most the largest tau, about the mean tau on average) x the values x the dtype's
bytes, plus one velocity per worker with momentum or weight decay; a run needing more than
MAX_HELD_BYTES is refused before it starts.

As on the real workers: the network trains in train mode on one torch thread; its
floating-point buffers (batch-norm running statistics) are part of the shared vector and the
forward pass at a gradient's read updates them in place; other buffers are private to each
emulated worker (each starts as after the real worker's warm-up batch).  Random layers
(dropout) draw from the torch generator seeded from ``seed`` (the caller's generator is left as
it was), so a simulation is reproducible, but not the draws of a real run.  Each worker's policy
refits from the global histogram after every ``refit_every`` of its own updates (no time budget:
simulated time is free).  Times are simulated seconds (``update_seconds`` per gradient on average).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from hogwild_mts.backends.sim.run import landing_schedule, simulated_settings, worker_batches
from hogwild_mts.backends.sim.simulator import EmulatedWorkers, rows_in_landing_order
from hogwild_mts.core import lifecycle
from hogwild_mts.core.control import HIST_BINS, STAT_COLUMNS, STAT_MAX_TAU, STAT_REFITS, STAT_SAMPLES, STAT_UPDATES
from hogwild_mts.core.result import Diverged, FitResult, RunTotals
from hogwild_mts.job import Job
from hogwild_mts.kernels.flat import (apply_momentum_update, apply_update, bind_buffers, bind_gradients,
                                      bind_parameters, buffer_count, flatten_buffers,
                                      flatten_parameters, loss_value, make_network, parameter_count,
                                      warm_up_updates)
from hogwild_mts.policies.step_sizes import policy_state, policy_table, refit_policy

MAX_HELD_BYTES = 1 << 30  # held gradients and velocities of one simulation (1 GiB)
POLL_SECONDS = 0.05  # real seconds one poll may run (a stop signal is seen between polls)
STALE_READS = "held gradients"  # how the results' settings name the exact stale reads


def in_flight(taus: np.ndarray) -> int:
    """The most gradients held at once: update t is held from its read (version t - tau_t,
    before update t - tau_t lands) until it lands (update t), so it is in flight over versions
    ``t - tau_t .. t``."""
    total = taus.size
    if total == 0:
        return 0
    change = np.zeros(total + 1, np.int64)
    np.add.at(change, np.arange(total) - taus, 1)
    np.add.at(change, np.arange(total) + 1, -1)
    return int(np.cumsum(change).max())


def fit(job: Job) -> FitResult:
    """Run ``job`` (a network problem) with ``job.workers`` emulated workers in this thread.
    Raises DivergenceError on a NaN/inf loss or parameter, ValueError when the held gradients
    would exceed MAX_HELD_BYTES."""
    import torch

    options, problem = job.options, job.problem
    dataset = problem.dataset
    orders, bounds = worker_batches(job, dataset.n_train)
    workers_of, taus, times = landing_schedule(job, np.array([b[0].size for b in bounds], np.int64))
    batch_rows, batch_ptr = rows_in_landing_order(orders, bounds, workers_of)
    network = problem.network
    n_params, n_values = parameter_count(network), parameter_count(network) + buffer_count(network)
    dtype = np.dtype(problem.dtype)
    held = in_flight(taus)
    with_momentum = options.momentum != 0 or problem.weight_decay != 0
    velocities = options.workers if with_momentum else 0
    needed = (held + velocities) * n_params * dtype.itemsize
    if needed > MAX_HELD_BYTES:
        raise ValueError(
            f"the simulation would hold {held} gradients in flight"
            f"{f' and {velocities} velocities' if velocities else ''} of {n_params:,} "
            f"{dtype.name} parameters ({needed / 2**30:.2f} GiB); the limit is "
            f"{MAX_HELD_BYTES / 2**30:.0f} GiB: lower the workers or the staleness")
    params = np.empty(n_values, dtype)
    flatten_parameters(network, params[:n_params])
    flatten_buffers(network, params[n_params:])
    evaluated = np.empty_like(params)
    bind_parameters(network, evaluated[:n_params])  # the parent's network scores copies
    bind_buffers(network, evaluated[n_params:])
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        torch.set_num_threads(1)  # as a real worker; also the same reductions bit for bit
        try:
            backend = NetworkSimBackend(job, params, n_params, workers_of, taus, times, batch_rows,
                                        batch_ptr, held)

            def score(values):
                evaluated[:] = values
                return problem.evaluate(network)

            def details(values):
                return {"params": values.astype(np.float64), "intercept": 0.0,
                        "model": problem.name, "data": dataset.name,
                        "settings": simulated_settings(job, STALE_READS)}

            run_options = dataclasses.replace(options, eval_every=None, defer_evaluation=False)
            return lifecycle.run(backend, run_options, score=score, details=details,
                                 describe_policy=job.describe_policy, total_updates=backend.total,
                                 started=job.started)
        finally:
            torch.set_num_threads(threads)


class NetworkSimBackend(EmulatedWorkers):
    """:class:`hogwild_mts.core.lifecycle.Backend` of the network simulator: every update of
    the schedule is applied in :meth:`poll`, in landing order.

    ``params``: the shared vector (parameters, then the floating-point buffers), trained in
    place; ``workers_of``/``taus``/``times``: the schedule in landing order; update t trains on
    rows ``batch_rows[batch_ptr[t]:batch_ptr[t + 1]]``; ``held``: gradient slots (the most in
    flight at once)."""

    def __init__(self, job: Job, params: np.ndarray, n_params: int, workers_of: np.ndarray,
                 taus: np.ndarray, times: np.ndarray, batch_rows: np.ndarray, batch_ptr: np.ndarray,
                 held: int):
        import torch

        options, problem = job.options, job.problem
        dataset = problem.dataset
        self.workers = options.workers
        self.params, self._n_params = params, n_params
        self._workers_of, self._taus, self._times = workers_of, taus, times
        self._batch_rows, self._batch_ptr = torch.from_numpy(batch_rows), batch_ptr
        self.total = int(workers_of.size)
        self._loss = problem.loss
        self._inputs = torch.from_numpy(dataset.train_inputs)
        self._targets = torch.from_numpy(dataset.train_targets)
        self._input_dtype = None if problem.dtype == "float32" else getattr(torch, problem.dtype)
        weights = params[:n_params]
        self._network = make_network(problem.build, dataset.input_shape, dataset.outputs).to(
            getattr(torch, problem.dtype))
        bind_parameters(self._network, weights)
        self._gradient = np.zeros_like(weights)
        bind_gradients(self._network, self._gradient)
        self._gradient_tensor = torch.from_numpy(self._gradient)
        # The real worker's warm-up batch (its private buffers count it), then the shared buffers.
        self._batch_loss(torch.arange(min(options.batch_size, dataset.n_train))).backward()
        bind_buffers(self._network, params[n_params:])
        private = [b for b in self._network.buffers() if not b.is_floating_point()]
        self._private = private
        self._private_of = [[b.clone() for b in private] for _ in range(self.workers)]
        self._slots = np.zeros((held, n_params), params.dtype)
        self._free = list(range(held - 1, -1, -1))
        self._slot_of = {}  # update t -> the slot holding its gradient
        reads = np.arange(self.total) - taus
        order = np.argsort(reads, kind="stable")
        self._reads, self._read_updates = reads[order], order  # gradients to compute, by version
        self._next_read = 0
        self._with_momentum = options.momentum != 0 or problem.weight_decay != 0
        self._momentum = params.dtype.type(options.momentum)
        self._weight_decay = params.dtype.type(problem.weight_decay)
        self._velocity = np.zeros((self.workers if self._with_momentum else 0, n_params), params.dtype)
        self._states = [policy_state(options.policy, self.workers, options.momentum)
                        for _ in range(self.workers)]
        self._tables = [policy_table(state, params.dtype) for state in self._states]
        self._refit_every = self._states[0].refit_every
        self.hist = np.zeros(HIST_BINS, np.int64)
        self._stats = np.zeros((self.workers, STAT_COLUMNS), np.int64)
        self._counter = np.zeros(8, np.int64)  # updates landed: the version the next one makes
        self.position = 0
        self._stop_requested = False
        warm_up_updates(params.dtype)

    def _batch_loss(self, rows):
        """The mean loss of ``rows`` (int64 tensor) under the live parameters, as a real worker
        computes it (inputs cast to the parameters' dtype)."""
        inputs = self._inputs.index_select(0, rows)
        if self._input_dtype is not None:
            inputs = inputs.to(self._input_dtype)
        return loss_value(self._loss, self._network(inputs), self._targets.index_select(0, rows))

    def _read(self, t: int) -> None:
        """Compute update t's gradient on the current parameters (version ``t - tau_t``) with
        its worker's private buffers, and hold it."""
        worker = int(self._workers_of[t])
        for buffer, own in zip(self._private, self._private_of[worker]):
            buffer.copy_(own)
        self._gradient_tensor.zero_()
        loss = self._batch_loss(self._batch_rows[self._batch_ptr[t]:self._batch_ptr[t + 1]])
        loss.backward()
        if not math.isfinite(loss.item()):
            raise Diverged(f"the loss at simulated update {t}")
        for buffer, own in zip(self._private, self._private_of[worker]):
            own.copy_(buffer)
        slot = self._free.pop()
        self._slots[slot] = self._gradient
        self._slot_of[t] = slot

    def _land(self, t: int) -> None:
        """Apply update t's held gradient with its worker's alpha(tau), velocity and weight
        decay (the real worker's kernels: they stamp tau against the counter and count it), then
        refit that worker's policy when its own updates reach a multiple of refit_every."""
        worker = int(self._workers_of[t])
        slot = self._slot_of.pop(t)
        gradient, stats = self._slots[slot], self._stats[worker]
        weights, t_read = self.params[:self._n_params], t - int(self._taus[t])
        rows = int(self._batch_ptr[t + 1] - self._batch_ptr[t])
        if self._with_momentum:
            apply_momentum_update(weights, gradient, self._velocity[worker], self._momentum,
                                  self._weight_decay, self._counter, t_read, self._tables[worker],
                                  self.hist, stats, rows)
        else:
            apply_update(weights, gradient, self._counter, t_read, self._tables[worker], self.hist,
                         stats, rows)
        self._free.append(slot)
        if self._refit_every and stats[STAT_UPDATES] % self._refit_every == 0:
            self._tables[worker] = refit_policy(self._states[worker], self.hist, self.params.dtype)
            stats[STAT_REFITS] += 1

    def poll(self, until_updates=None) -> int:
        """Land the next updates, up to ``until_updates`` (else to the end), for at most
        POLL_SECONDS of real time; each lands after the gradients read at its version."""
        target = self.total if until_updates is None else min(until_updates, self.total)
        deadline = time.perf_counter() + POLL_SECONDS
        while self.position < target and not self._stop_requested:
            t = self.position
            while self._next_read < self.total and self._reads[self._next_read] == t:
                self._read(int(self._read_updates[self._next_read]))
                self._next_read += 1
            self._land(t)
            self.position = t + 1
            if time.perf_counter() > deadline:
                break
        return self.position

    def collect(self) -> RunTotals:
        stats = self._stats
        return RunTotals(updates=int(stats[:, STAT_UPDATES].sum()), counter=int(self._counter[0]),
                         samples=int(stats[:, STAT_SAMPLES].sum()), histogram=self.hist.copy(),
                         max_staleness=int(stats[:, STAT_MAX_TAU].max()),
                         refits=int(stats[:, STAT_REFITS].sum()), train_seconds=self.elapsed())

    def close(self) -> None:
        """Buffers are freed with the object."""
