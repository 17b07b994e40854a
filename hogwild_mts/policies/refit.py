"""A worker's policy state and the schedule of its online refits (every backend: shared-memory
workers, torch workers, the Ray parameter server)."""

from __future__ import annotations

import time

import numpy as np

from hogwild_mts.core.control import STAT_REFITS, STAT_UPDATES
from hogwild_mts.core.result import describe
from hogwild_mts.policies.step_sizes import policy_state, policy_table, refit_policy

REFIT_TIME_SHARE = 0.05  # refits may take at most this share of a worker's time


def describe_fitted(policy, workers: int, momentum: float, histogram: np.ndarray) -> dict:
    """The policy as the workers ended it: a :func:`policy_state` bound as theirs and, if the
    policy refits, refitted on the final ``histogram``."""
    state = policy_state(policy, workers, momentum)
    if state.refit_every:
        refit_policy(state, histogram)
    return describe(state)


class Refitter:
    """A worker's policy state (:func:`policy_state` of the run's ``policy``), its ``table`` as
    ``dtype`` and its refit schedule.

    Refits every ``policy.refit_every`` own updates from all histogram rows -- but never sooner
    than keeps refitting within REFIT_TIME_SHARE of the worker's time (a slow fit, e.g. CMP on a
    long-tailed histogram, then runs less often instead of stalling training).
    """

    def __init__(self, policy, workers: int, momentum: float, dtype):
        self.state = policy_state(policy, workers, momentum)
        self.dtype = dtype
        self.table = policy_table(self.state, dtype)
        self.refit_every = self.state.refit_every
        self._next_refit = self.refit_every
        self._allowed_at = 0.0

    def maybe_refit(self, stats: np.ndarray, hist_rows: np.ndarray) -> None:
        """Refit (and count it in ``stats``) if this worker's update count and time budget allow."""
        if not self.refit_every or stats[STAT_UPDATES] < self._next_refit \
                or time.perf_counter() < self._allowed_at:
            return
        started = time.perf_counter()
        self.table = refit_policy(self.state, hist_rows.sum(axis=0), self.dtype)
        stats[STAT_REFITS] += 1
        self._next_refit = stats[STAT_UPDATES] + self.refit_every
        spent = time.perf_counter() - started
        self._allowed_at = time.perf_counter() + spent * (1 / REFIT_TIME_SHARE - 1)
