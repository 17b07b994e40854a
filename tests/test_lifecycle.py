"""The run lifecycle over the Backend protocol, with a scripted backend: the evaluation schedule,
Ctrl-C, failures, and clean-up on every path."""

import numpy as np
import pytest

from hogwild_mts.core import lifecycle
from hogwild_mts.core.control import HIST_BINS
from hogwild_mts.core.result import DivergenceError, RunTotals, WorkerError
from hogwild_mts.core.params import validate
from hogwild_mts.engines.linear import ENGINE_OPTIONS, Engine
from hogwild_mts.job import run_options
from hogwild_mts.data.tabular import synthetic_sparse
from hogwild_mts.policies import make_policy


class ScriptedBackend:
    """``step`` updates per poll up to ``total``; the parameter vector holds the update count.
    ``fail_at``: poll raises this exception once that many updates are reached."""

    workers = 2

    def __init__(self, total=100, step=10, fail_at=None, failure=None):
        self.total, self.step, self.fail_at, self.failure = total, step, fail_at, failure
        self.updates, self.calls = 0, []

    def start(self): self.calls.append("start")
    def ready(self): return True
    def go(self): self.calls.append("go")

    def poll(self, until_updates=None):
        if self.fail_at is not None and self.updates >= self.fail_at:
            raise self.failure
        self.updates = min(self.updates + self.step, self.total)
        return self.updates

    def finished(self): return self.updates >= self.total
    def elapsed(self): return self.updates / 1000.0
    def snapshot(self): return np.array([float(self.updates)])
    def wait(self): pass
    def request_stop(self): self.calls.append("stop")
    def join(self): self.calls.append("join")

    def collect(self):
        histogram = np.zeros(HIST_BINS, np.int64)
        histogram[1] = self.updates
        return RunTotals(updates=self.updates, counter=self.updates, samples=self.updates,
                         histogram=histogram, max_staleness=1, refits=0,
                         train_seconds=self.elapsed())

    def close(self): self.calls.append("close")


def _run(backend, **options):
    settings = dict(policy="constant", lr=0.1, workers=2, epochs=1, batch_size=1, seed=0,
                    eval_every=None, progress=False) | options
    details = lambda params: {"params": params, "intercept": 0.0, "model": "scripted",
                              "data": "none", "settings": {}}
    return lifecycle.run(backend, run_options(validate(ENGINE_OPTIONS, settings)),
                         score=lambda params: (1.0 / (1.0 + params[0]), None), details=details,
                         describe_policy=lambda histogram: {"name": "constant"},
                         total_updates=backend.total, started=0.0)


def test_evaluations_follow_the_update_count():
    result = _run(ScriptedBackend(total=100, step=10), eval_every_updates=30)
    assert result.history["updates"] == [0, 30, 60, 90, 100]  # start, schedule, final
    assert result.history["loss"] == [1.0 / (1.0 + u) for u in result.history["updates"]]
    assert result.counter == result.updates == 100 and not result.interrupted


def test_deferred_evaluations_are_scored_after_the_run_in_order():
    result = _run(ScriptedBackend(total=100, step=25), eval_every_updates=50, defer_evaluation=True)
    assert result.history["updates"] == [0, 50, 100]


def test_ctrl_c_returns_the_partial_result_and_releases_the_backend():
    backend = ScriptedBackend(total=100, step=10, fail_at=40, failure=KeyboardInterrupt())
    result = _run(backend, eval_every_updates=1000)
    assert result.interrupted and result.updates == 40
    assert backend.calls[-1] == "close" and "stop" in backend.calls


@pytest.mark.parametrize("failure", [WorkerError("worker 1 failed"), DivergenceError("diverged")])
def test_a_failure_propagates_and_releases_the_backend(failure):
    backend = ScriptedBackend(total=100, step=10, fail_at=20, failure=failure)
    with pytest.raises(type(failure)):
        _run(backend, eval_every_updates=1000)
    assert backend.calls[-3:] == ["stop", "join", "close"]


def test_non_finite_parameters_are_a_divergence():
    class NanBackend(ScriptedBackend):
        def snapshot(self):
            return np.array([np.nan if self.updates >= 50 else 0.0])

    with pytest.raises(DivergenceError, match="training diverged: the parameters"):
        _run(NanBackend(total=100, step=10), eval_every_updates=50)


@pytest.mark.parametrize("options,message", [
    (dict(eval_every=0.0), "eval_every must be a finite number > 0"),
    (dict(eval_every_updates=0), "eval_every_updates must be an integer >= 1"),
    (dict(workers=0), "workers must be an integer >= 1"),
])
def test_options_are_validated_with_one_message_shape(options, message):
    with pytest.raises(ValueError, match=message):
        _run(ScriptedBackend(), **options)


def test_fit_never_changes_the_callers_policy():
    policy = make_policy("mindthestep", lr=0.5, target="shrink", r=0.8, refit_every=100,
                         min_samples=100)
    policy.bind(1)
    before = policy.describe()
    result = Engine("logreg", policy, workers=1, epochs=2, progress=False).fit(
        synthetic_sparse(2000, 200, 10, seed=1))
    assert result.refits >= 1 and result.policy != before
    assert policy.describe() == before


@pytest.mark.parametrize("cores,defer", [(4, False), (2, False), (2, True)])
def test_the_starting_point_is_scored_after_the_start_signal(monkeypatch, cores, defer):
    """2 workers: with a spare core the starting point is scored just after ``go``; when the
    workers take every core, after the run beside the final parameters -- never between
    ``fit()`` and the first update -- and its row still comes first."""
    monkeypatch.setattr(lifecycle.os, "cpu_count", lambda: cores)
    backend = ScriptedBackend(total=100, step=25)
    settings = dict(policy="constant", lr=0.1, workers=2, epochs=1, batch_size=1, seed=0,
                    eval_every_updates=50, defer_evaluation=defer, progress=False)
    details = lambda params: {"params": params, "intercept": 0.0, "model": "scripted",
                              "data": "none", "settings": {}}

    def score(params):
        backend.calls.append(f"score {params[0]:.0f}")
        return 1.0 / (1.0 + params[0]), None

    result = lifecycle.run(backend, run_options(validate(ENGINE_OPTIONS, settings)), score=score,
                           details=details, describe_policy=lambda histogram: {"name": "constant"}, total_updates=100, started=0.0)
    assert result.history["updates"] == [0, 50, 100]
    assert result.history["loss"] == [1.0 / (1.0 + u) for u in (0, 50, 100)]
    first_score = backend.calls.index("score 0")
    assert backend.calls.index("go") < first_score
    if cores > 2:
        assert first_score == backend.calls.index("go") + 1
    else:
        assert backend.calls.index("join") < first_score
