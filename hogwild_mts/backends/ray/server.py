"""The parameter server: one Ray actor that holds the parameters, the version counter, the
staleness histogram and the policy.

A Ray actor runs its calls one at a time, so the version counter orders the pushes exactly: it is
the shared-memory sequence counter one level up (:mod:`hogwild_mts.core.control`).  A worker
pulls ``(version, params)``, runs K local steps and pushes ``(step_sum, version read)``; the
server stamps ``tau = version at apply - version read`` (in pushes) and applies
``params -= alpha(tau) * step_sum`` with the shared-memory workers' own kernel
(:func:`hogwild_mts.kernels.flat.apply_update`: stamp, table lookup, histogram,
maximum tau, counts).  Every ``policy.refit_every`` pushes the server's own policy state refits
from its histogram (a :class:`hogwild_mts.policies.refit.Refitter`, with its time budget).

Sparse models travel sparse: a worker of a sparse linear model pulls only the coordinates its
next K batches read (:meth:`ParameterServer.pull` with indices) and pushes only those its local
steps changed, as indices and their step-sum values (:meth:`ParameterServer.push_sparse`,
applied by :func:`hogwild_mts.kernels.flat.apply_sparse_update`); the step sum is zero
everywhere else, so the push means exactly what the dense push of the same step sum means (same
tau, alpha(tau), histogram, one version per push).  Dense models and networks push and pull the
whole vector (:meth:`ParameterServer.push`).

Evaluations by update count: given ``eval_every`` (pushes), the server copies its parameters
each time its version reaches a multiple of it (before the run's last push ``last``), with the
time since :meth:`go` on its clock; :meth:`take_evaluations` hands the copies out.
"""

from __future__ import annotations

import time

import numpy as np

from hogwild_mts.kernels.flat import apply_sparse_update, apply_update, warm_up_updates
from hogwild_mts.policies.refit import Refitter
from hogwild_mts.core import control


def warm_up_server_kernel(dtype) -> None:
    """Compile (or load from numba's cache) the apply kernel for the types a server meets:
    parameters of ``dtype`` and a read-only step sum (arrays arrive read-only from Ray)."""
    warm_up_updates(dtype)
    params = np.zeros(1, dtype=dtype)
    step_sum = np.zeros(1, dtype=dtype)
    step_sum.setflags(write=False)
    apply_update(params, step_sum, np.zeros(8, np.int64), 0, np.ones(1, dtype=dtype),
                 np.zeros(2, np.int64), np.zeros(control.STAT_COLUMNS, np.int64), 1)
    indices = np.zeros(1, np.int64)
    indices.setflags(write=False)
    apply_sparse_update(params, indices, step_sum, np.zeros(8, np.int64), 0,
                        np.ones(1, dtype=dtype), np.zeros(2, np.int64),
                        np.zeros(control.STAT_COLUMNS, np.int64), 1)


ALL = None  # pull/push indices meaning "the whole vector"


class ParameterServer:
    """The server actor's state and calls (made a Ray actor by the backend).

    Invariants: ``version`` = pushes applied = ``stats[STAT_UPDATES]`` = the histogram's total
    = the sum of ``worker_pushes``; ``params`` only changes inside :meth:`push`, one push at a
    time.
    """

    def __init__(self, params: np.ndarray, policy, workers: int, eval_every: int | None = None,
                 last: int | None = None):
        self.params = np.array(params)  # own, writable copy; its dtype is the run's
        warm_up_server_kernel(self.params.dtype)
        self.counter = np.zeros(8, np.int64)  # word 0: the version
        self.hist = np.zeros((1, control.HIST_BINS), np.int64)
        self.stats = np.zeros(control.STAT_COLUMNS, np.int64)
        self.worker_pushes = np.zeros(workers, np.int64)  # pushes applied, by worker id
        self.refitter = Refitter(policy, workers, 0.0, self.params.dtype)  # Ray workers take plain SGD steps
        self.stop = False
        self.started = 0.0  # time.time() of go(), on the server's clock
        self.last_push = 0.0
        self.eval_every, self.eval_last = eval_every, last  # evaluations by update count, or None
        self.evaluations: list = []  # (seconds since go, version, parameter copy), not taken yet
        self.values_received = self.values_sent = 0  # parameter values pushed in / pulled out

    def go(self) -> None:
        """Start the training clock (the workers start right after)."""
        self.started = self.last_push = time.time()

    def pull(self, worker_id: int, indices: np.ndarray | None = ALL) -> tuple[int, np.ndarray, int]:
        """(version, parameters, pushes of worker ``worker_id`` applied so far): a worker's
        first read (a re-created worker goes on after those pushes).  ``indices`` (int64): only
        those coordinates, in that order (empty: none, to learn the count first)."""
        values = self._read(indices)
        return int(self.counter[0]), values, int(self.worker_pushes[worker_id])

    def push(self, step_sum: np.ndarray, version_read: int, rows: int,
             worker_id: int) -> tuple[bool, int, np.ndarray]:
        """Apply ``params -= alpha(tau) * step_sum`` with ``tau = version - version_read``;
        ``rows``: the samples the push used.  Returns (stop requested, new version, parameters):
        the push answers with the next pull."""
        step_sum.setflags(write=False)  # one kernel signature, whatever the transport gave
        apply_update(self.params, step_sum, self.counter, version_read, self.refitter.table,
                     self.hist[0], self.stats, rows)
        self.values_received += step_sum.shape[0]
        self._pushed(worker_id)
        return self.stop, int(self.counter[0]), self._read(ALL)

    def push_sparse(self, indices: np.ndarray, step_values: np.ndarray, version_read: int,
                    rows: int, worker_id: int,
                    next_indices: np.ndarray) -> tuple[bool, int, np.ndarray]:
        """:meth:`push` of a step sum that is ``step_values`` at ``indices`` (distinct, int64)
        and zero elsewhere; answers with the parameters at ``next_indices`` (the coordinates the
        worker's next push reads) as its next pull."""
        indices.setflags(write=False)
        step_values.setflags(write=False)
        apply_sparse_update(self.params, indices, step_values, self.counter, version_read,
                            self.refitter.table, self.hist[0], self.stats, rows)
        self.values_received += step_values.shape[0]
        self._pushed(worker_id)
        return self.stop, int(self.counter[0]), self._read(next_indices)

    def _read(self, indices: np.ndarray | None) -> np.ndarray:
        """The parameters (the live vector: Ray serialises it before the next call runs) or
        those at ``indices`` (a new array); counted in ``values_sent``."""
        values = self.params if indices is None else self.params[indices]
        self.values_sent += values.shape[0]
        return values

    def _pushed(self, worker_id: int) -> None:
        """After one push is applied: count it, refit the policy when due, and copy the
        parameters when the version reaches a due multiple of ``eval_every``."""
        self.worker_pushes[worker_id] += 1
        self.refitter.maybe_refit(self.stats, self.hist)
        self.last_push = time.time()
        version = int(self.counter[0])
        if self.eval_every and version % self.eval_every == 0 \
                and (self.eval_last is None or version < self.eval_last):
            self.evaluations.append((self.last_push - self.started, version, self.params.copy()))

    def take_evaluations(self) -> list:
        """``[(seconds since go, version, parameter copy), ...]`` taken since the last call."""
        taken, self.evaluations = self.evaluations, []
        return taken

    def traffic(self) -> dict:
        """Parameter values this server received in pushes and sent in pulls so far."""
        return {"received": self.values_received, "sent": self.values_sent}

    def request_stop(self) -> None:
        """Answer every later push with stop."""
        self.stop = True

    def version(self) -> int:
        return int(self.counter[0])

    def snapshot(self) -> np.ndarray:
        return self.params

    def state(self) -> tuple[np.ndarray, int, np.ndarray]:
        """(parameters, version, histogram): what a checkpoint stores."""
        return self.params, int(self.counter[0]), self.hist[0]

    def pushes_by_worker(self) -> list[int]:
        """Pushes applied so far from each worker id (a re-created worker's count goes on)."""
        return self.worker_pushes.tolist()

    def totals(self) -> dict:
        """The run's counts (the fields of :class:`hogwild_mts.core.result.RunTotals`);
        ``train_seconds`` runs from go() to the last push, on the server's clock."""
        return {"updates": int(self.stats[control.STAT_UPDATES]), "counter": int(self.counter[0]),
                "samples": int(self.stats[control.STAT_SAMPLES]), "histogram": self.hist[0].copy(),
                "max_staleness": int(self.stats[control.STAT_MAX_TAU]),
                "refits": int(self.stats[control.STAT_REFITS]),
                "train_seconds": max(0.0, self.last_push - self.started)}
