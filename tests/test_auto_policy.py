"""The auto policy: step and worker momentum from the delay-stability limit (docs/policies.md)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hogwild_mts.engines.linear import Engine
from hogwild_mts.engines.simulated import Simulator
from hogwild_mts.model_file import policy_from_spec, policy_spec
from hogwild_mts.policies.stability import delay_stability_limit
from hogwild_mts.policies.step_sizes import AutoPolicy, make_policy, policy_state, policy_table, refit_policy
from hogwild_mts.policies.testing import histograms

lrs = st.floats(1e-3, 10.0)
workers = st.integers(1, 256)
momentums = st.floats(0.0, 0.95)


def test_one_worker_without_delay_has_heavy_balls_limit():
    for mu in (0.0, 0.3, 0.9):
        assert delay_stability_limit(np.array([1.0]), 1, mu) == pytest.approx(2 * (1 + mu), rel=1e-6)


def test_a_constant_delay_has_the_classical_limit():
    """x_{t+1} = x_t - a x_{t-tau} is stable for a < 2 sin(pi / (2 (2 tau + 1)))."""
    for tau in (1, 5, 30):
        pmf = np.zeros(tau + 1)
        pmf[tau] = 1.0
        expected = 2 * np.sin(np.pi / (2 * (2 * tau + 1)))
        assert delay_stability_limit(pmf, 1, 0.0) == pytest.approx(expected, rel=1e-3)


@settings(deadline=None, max_examples=40)
@given(lr=lrs, m=workers, mu=momentums, histogram=histograms(2000))
def test_step_is_finite_positive_bounded_and_refits_keep_it(lr, m, mu, histogram):
    state = policy_state(make_policy("auto", lr=lr, min_samples=0), m, mu)
    for table in (policy_table(state), refit_policy(state, histogram)):
        assert table.shape == (1,)
        assert np.all(np.isfinite(table)) and np.all(table > 0)
        assert table[0] <= lr * (1 - mu) * (1 + 1e-12) or table[0] == state.lr_min
        json.dumps(state.describe())


@settings(deadline=None, max_examples=40)
@given(lr=lrs, m=workers)
def test_momentum_is_in_range_and_zero_for_one_worker(lr, m):
    policy = make_policy("auto", lr=lr)
    mu = policy.worker_momentum(m)
    assert 0.0 <= mu <= policy.max_momentum < 1.0
    if m == 1:
        assert mu == 0.0


@given(lr=lrs)
def test_one_worker_keeps_the_tuned_step_and_no_momentum(lr):
    state = policy_state(make_policy("auto", lr=lr), 1, 0.0)
    assert policy_table(state)[0] == lr
    assert refit_policy(state, np.array([5000], dtype=np.int64))[0] == lr
    assert Simulator("logreg", "auto", lr=lr, workers=1).momentum == 0.0


@settings(deadline=None, max_examples=25)
@given(lr=lrs, m=st.integers(1, 128))
def test_more_workers_mean_more_momentum_and_a_smaller_step(lr, m):
    policy = make_policy("auto", lr=lr)
    mu_m, mu_more = policy.worker_momentum(m), policy.worker_momentum(2 * m)
    assert mu_more >= mu_m
    step = policy_table(policy_state(policy, m, mu_m))[0]
    more = policy_table(policy_state(policy, 2 * m, mu_more))[0]
    assert more <= step * (1 + 1e-9)


@settings(deadline=None, max_examples=25)
@given(mean=st.floats(0.0, 200.0), extra=st.floats(1.0, 100.0))
def test_staler_measured_delays_never_raise_the_step_of_plain_workers(mean, extra):
    """Refit on Poisson-shaped histograms, workers without momentum: a larger mean staleness
    gives a step no larger."""
    rng = np.random.default_rng(0)

    def histogram(lam):
        return np.bincount(rng.poisson(lam, 20000)).astype(np.int64)

    state = policy_state(make_policy("auto", lr=1.0, min_samples=0), 16, 0.0)
    fresher = refit_policy(state, histogram(mean))[0]
    staler = refit_policy(state, histogram(mean + extra))[0]
    assert staler <= fresher * (1 + 1e-6)


def _largest_root(pmf: np.ndarray, workers: int, momentum: float, a: float) -> float:
    """The largest |z| solving (z - 1)(1 - mu z^-m) + a sum_tau P(tau) z^-tau = 0 (the
    characteristic equation times z^K, K the longest lag), by numpy's polynomial roots."""
    lags = max(pmf.size - 1, workers)
    coefficients = np.zeros(lags + 2)  # index: the power of z
    coefficients[lags + 1] += 1.0
    coefficients[lags] -= 1.0
    coefficients[lags - workers + 1] -= momentum
    coefficients[lags - workers] += momentum
    coefficients[lags - np.arange(pmf.size)] += a * pmf
    return float(np.abs(np.roots(coefficients[::-1])).max())


@pytest.mark.parametrize("mean", [4.0, 6.0])
def test_the_limit_with_momentum_is_where_a_root_leaves_the_unit_circle(mean):
    """With momentum the limit is not monotone in the staleness: at m = 16 and mu = 0.5,
    Poisson(6) delays allow a larger step than Poisson(4) (they fall out of phase with the
    worker cycle).  The polynomial's roots confirm both limits."""
    from scipy.stats import poisson

    pmf = poisson.pmf(np.arange(41), mean)
    pmf /= pmf.sum()
    limit = delay_stability_limit(pmf, 16, 0.5)
    assert _largest_root(pmf, 16, 0.5, 0.98 * limit) < 1.0 < _largest_root(pmf, 16, 0.5, 1.02 * limit)
    if mean == 6.0:
        assert limit > 1.3 * delay_stability_limit(poisson.pmf(np.arange(41), 4.0) / poisson.cdf(40, 4.0), 16, 0.5)


def test_explicit_momentum_wins_and_the_step_keeps_the_effective_step():
    engine = Simulator("logreg", "auto", lr=2.0, workers=1, momentum=0.5)
    assert engine.momentum == 0.5
    state = policy_state(engine.policy, 1, engine.momentum)
    assert policy_table(state)[0] == pytest.approx(1.0)


def test_engines_resolve_the_policys_momentum_only_when_none_is_given():
    assert Simulator("logreg", "auto", workers=64).momentum > 0.5
    assert Engine("logreg", "auto", workers=16).momentum > 0.0
    assert Engine("logreg", "constant", workers=16).momentum == 0.0
    assert Engine("logreg", "auto", workers=16, momentum=0.0).momentum == 0.0
    assert Engine("logreg", "auto", workers=16, backend="ray").momentum == 0.0


def test_torch_engine_resolves_it_too():
    pytest.importorskip("torch")
    from hogwild_mts.engines.networks import TorchEngine

    assert TorchEngine("mlp", "auto", workers=16).momentum == Engine("logreg", "auto", workers=16).momentum


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="curvature"):
        AutoPolicy(curvature=0.0)
    with pytest.raises(ValueError, match="gain"):
        AutoPolicy(gain=1.5)
    with pytest.raises(ValueError, match="momentum"):
        AutoPolicy(max_momentum=1.0)


def test_model_files_store_and_restore_it():
    policy = make_policy("auto", lr=0.7, gain=0.4, curvature=2.0, max_momentum=0.6)
    spec = json.loads(json.dumps(policy_spec(policy)))
    assert spec["name"] == "auto"
    restored = policy_from_spec(spec, "model.json")
    assert isinstance(restored, AutoPolicy)
    assert (restored.lr, restored.gain, restored.curvature, restored.max_momentum) == (0.7, 0.4, 2.0, 0.6)
    assert restored.worker_momentum(64) == policy.worker_momentum(64)


def test_a_simulated_run_with_auto_trains():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5))
    y = np.where(X @ np.ones(5) > 0, 1.0, -1.0)
    result = Simulator("logreg", "auto", lr=0.5, workers=16, epochs=2, seed=0).fit(X, y)
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.policy["name"] == "auto" and result.policy["momentum"] > 0


def test_the_command_line_trains_with_policy_auto(tmp_path, capsys):
    from hogwild_mts.app.cli import main

    out = tmp_path / "run"
    status = main(["train", "--data", "synthetic-sparse:n=2000,d=300,nnz=10,seed=1", "--workers", "2",
                   "--epochs", "1", "--quiet", "--policy", "auto", "--lr", "0.5", "--out", str(out)])
    capsys.readouterr()
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["policy"]["name"] == "auto"
    assert 0.0 <= metrics["policy"]["momentum"] < 1.0
