"""Step-size policies: invariants for any valid input, the MindTheStep identities, validation."""

import json
import math
import pickle

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hogwild_mts.core.control import STAT_COLUMNS, STAT_REFITS, STAT_UPDATES
from hogwild_mts.policies.refit import Refitter, describe_fitted
from hogwild_mts.policies.step_sizes import (POLICIES, CheckedPolicy, ConstantPolicy, FunctionPolicy,
                                  MindTheStepPolicy, Policy, TailPolicy, as_policy, make_policy,
                                  policy_state, policy_table, refit_policy, step_size)
from hogwild_mts.staleness.models import CMP, Geometric, MomentumTarget, Poisson
from hogwild_mts.policies.testing import check_policy, check_table, histograms, policy_options

NONINCREASING = {"constant", "inverse", "exponential", "tail"}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_invariants_hold_for_any_options_and_histogram(name):
    check_policy(lambda **options: make_policy(name, **options), policy_options(name),
                 nonincreasing=name in NONINCREASING)


def test_property_suite_catches_a_broken_policy():
    class RisingPolicy(Policy):
        def table(self):
            return np.array([0.1, 0.2])

    with pytest.raises(AssertionError, match="increases"):
        check_policy(RisingPolicy, nonincreasing=True)

    class NegativeAfterData(Policy):
        def __init__(self):
            self.seen = False

        def observe(self, histogram):
            self.seen = True

        def table(self):
            return np.array([0.1, -0.1 if self.seen else 0.1])

    with pytest.raises(AssertionError, match="after observe"):
        check_policy(NegativeAfterData)


@given(name=st.sampled_from(sorted(POLICIES)), workers=st.integers(1, 64), tau=st.integers(0, 10 ** 12))
@example(name="mindthestep", workers=1, tau=0)
@example(name="mindthestep", workers=64, tau=10 ** 12)
@example(name="tail", workers=1, tau=10 ** 12)
@example(name="inverse", workers=8, tau=0)
def test_lookup_past_the_table_uses_the_last_entry(name, workers, tau):
    policy = make_policy(name, lr=0.1)
    policy.bind(workers)
    table = policy.table()
    lr = step_size(table, tau)
    assert lr == (table[tau] if tau < table.size else table[-1])
    assert policy.lr_min <= lr <= policy.lr_max


def test_inverse_and_exponential_formulas():
    inverse = make_policy("inverse", lr=0.3)
    np.testing.assert_allclose(inverse.table()[:5], [0.3, 0.3, 0.15, 0.1, 0.075])
    exponential = make_policy("exponential", lr=0.3, beta=0.5, lr_min=1e-9)
    np.testing.assert_allclose(exponential.table()[:4], 0.3 * np.exp(-0.5 * np.arange(4)))
    assert make_policy("exponential", lr=0.3, beta=100.0).table()[-1] == pytest.approx(0.3e-3)


def test_tail_uses_the_prior_cdf_then_the_observed_cdf():
    policy = TailPolicy(lr=1.0, A=1.0, min_samples=10, length=6)
    policy.bind(5)
    prior_cdf = np.cumsum(Poisson(2.0).pmf(6))
    np.testing.assert_allclose(policy.table(), np.maximum(1.0 + (1.0 - 2.0 * prior_cdf), 1e-3))
    policy.observe(np.array([0, 0, 4]))          # below min_samples: still the prior
    np.testing.assert_allclose(policy.table(), np.maximum(1.0 + (1.0 - 2.0 * prior_cdf), 1e-3))
    policy.observe(np.array([5, 0, 3, 2]))
    np.testing.assert_allclose(policy.table(), [1.0, 1.0, 0.4, 1e-3, 1e-3, 1e-3])
    assert policy.describe()["samples_seen"] == 10


def _binned(model, T):
    """Law of the table index from pmf() summed directly (independently of log_binned_pmf)."""
    pmf = model.pmf(4000)
    return np.append(pmf[: T - 1], pmf[T - 1:].sum())


@given(lam=st.floats(0.05, 20.0), mu=st.floats(0.01, 0.95), length=st.integers(2, 24))
@example(lam=7.0, mu=0.5, length=2)
def test_mindthestep_momentum_without_clipping_matches_the_target(lam, mu, length):
    policy = MindTheStepPolicy(lr=0.2, target="momentum", mu=mu, staleness_model="poisson",
                               lr_min=1e-300, lr_max=1e300, length=length)
    policy.bind(int(lam) + 1)
    policy.observe(np.bincount(Poisson(lam).sample(5000, np.random.default_rng(0))))
    p = _binned(policy.model, length)
    q = _binned(Geometric(mu), length)
    table = policy.table()
    assert policy.clipped_low == policy.clipped_high == 0
    assert float(np.dot(p, table)) == pytest.approx(0.2, abs=1e-9)
    np.testing.assert_allclose(p * table / 0.2, q, rtol=0, atol=1e-9)


@given(model=st.sampled_from(["poisson", "cmp", "geometric", "empirical"]), r=st.floats(0.05, 1.0),
       length=st.integers(2, 24), seed=st.integers(0, 1000))
def test_mindthestep_shrink_without_clipping_matches_the_target(model, r, length, seed):
    policy = MindTheStepPolicy(lr=0.2, target="shrink", r=r, staleness_model=model, lr_min=1e-300,
                               lr_max=1e300, length=length, min_samples=100)
    policy.bind(4)
    policy.observe(np.bincount(CMP(3.0, 0.8).sample(2000, np.random.default_rng(seed))))
    p = _binned(policy.model, length)
    weights = r ** np.arange(length) * p      # the last bin (tau >= length - 1) tilted at length - 1
    q = weights / weights.sum()
    table = policy.table()
    assert policy.clipped_low == policy.clipped_high == 0
    assert float(np.dot(p, table)) == pytest.approx(0.2, abs=1e-9)
    np.testing.assert_allclose(p * table / 0.2, q, rtol=0, atol=1e-9)


def test_mindthestep_shrink_of_poisson_is_poisson_with_fewer_workers():
    policy = MindTheStepPolicy(lr=1.0, target="shrink", r=0.25, lr_min=1e-9, lr_max=1e9, length=40)
    policy.bind(17)
    profile = policy.p_binned * policy.table()
    np.testing.assert_allclose(profile[:-1], Poisson(2.0).pmf(39), atol=1e-9)


@given(beta=st.floats(0.0, 1.0), workers=st.integers(1, 32))
def test_mindthestep_tempering_keeps_the_mean_step(beta, workers):
    policy = MindTheStepPolicy(lr=0.5, target="momentum", mu=0.3, beta=beta, lr_min=1e-300, lr_max=1e300, length=12)
    policy.bind(workers)
    assert float(np.dot(policy.p_binned, policy.table())) == pytest.approx(0.5, rel=1e-9)


def test_mindthestep_beta_zero_is_the_constant_step():
    policy = MindTheStepPolicy(lr=0.5, target="momentum", mu=0.9, beta=0.0)
    policy.bind(16)
    np.testing.assert_allclose(policy.table(), 0.5)


def test_mindthestep_reports_the_clipping_it_needed():
    policy = MindTheStepPolicy(lr=0.1, target="momentum", mu=0.5, staleness_model="poisson")
    policy.bind(31)
    report = json.loads(json.dumps(policy.describe()))
    table = policy.table()
    achieved = float(np.dot(policy.p_binned, table))
    assert report["expected_alpha"] == pytest.approx(achieved)
    assert report["expected_alpha_relative_error"] == pytest.approx(achieved / 0.1 - 1)
    assert report["clipped_high"] > 0 and report["clipped_high"] == int(np.sum(table == policy.lr_max))
    assert 0 < report["target_tv"] <= 1.5
    assert report["fitted_model"]["model"] == "poisson" and report["fitted_model"]["params"]["lam"] == 15.0
    assert report["using_prior"] is True


def test_mindthestep_uses_the_prior_until_min_samples_then_refits():
    policy = MindTheStepPolicy(lr=0.1, target="shrink", r=0.5, min_samples=1000, staleness_model="cmp")
    policy.bind(7)
    assert policy.model.lam == 3.0
    histogram = np.bincount(CMP(20.0, 1.5).sample(999, np.random.default_rng(1)))
    policy.observe(histogram)
    assert policy.model.lam == 3.0 and policy.describe()["using_prior"] is True
    policy.observe(np.bincount(CMP(20.0, 1.5).sample(5000, np.random.default_rng(1))))
    assert policy.model.name == "cmp" and policy.model.nu == pytest.approx(1.5, rel=0.15)
    assert policy.describe()["fitted_model"]["fit"]["samples"] == 5000


def test_one_worker_prior_gives_the_constant_step_where_tau_can_occur():
    policy = MindTheStepPolicy(lr=0.1, target="momentum", mu=0.5)
    policy.bind(1)
    table = policy.table()
    assert table[0] == pytest.approx(0.1) and np.all(table[1:] == policy.lr_max)


def test_adaptive_policy_needs_bind_before_table():
    with pytest.raises(RuntimeError, match="bind"):
        make_policy("mindthestep").table()


@pytest.mark.parametrize("name, options, named", [
    ("nope", {}, "'nope'"),
    ("constant", {"lr": -1.0}, "-1.0"),
    ("constant", {"lr": 0.0}, "lr must"),
    ("constant", {"lr": float("nan")}, "nan"),
    ("constant", {"lr": "fast"}, "'fast'"),
    ("inverse", {"lr": 0.1, "lr_min": 0.2, "lr_max": 0.1}, "lr_min (0.2) must be <= lr_max (0.1)"),
    ("inverse", {"lr": 1.0, "lr_max": 0.5}, "lr (1.0) must lie in"),
    ("inverse", {"lr_min": float("nan")}, "nan"),
    ("inverse", {"length": 0}, "length must be an integer >= 1, got 0"),
    ("exponential", {"beta": -0.5}, "-0.5"),
    ("exponential", {"beta": float("inf")}, "inf"),
    ("tail", {"A": 1.5}, "A must be a finite number in [0, 1], got 1.5"),
    ("tail", {"A": float("nan")}, "nan"),
    ("tail", {"refit_every": -1}, "refit_every must be an integer >= 0, got -1"),
    ("tail", {"min_samples": 2.5}, "2.5"),
    ("mindthestep", {"mu": 1.0}, "mu must be a finite number in [0, 1), got 1.0"),
    ("mindthestep", {"mu": -0.1}, "-0.1"),
    ("mindthestep", {"mu": float("nan")}, "nan"),
    ("mindthestep", {"target": "shrink", "r": 0.0}, "r must be a finite number in (0, 1], got 0.0"),
    ("mindthestep", {"target": "shrink", "r": 1.5}, "1.5"),
    ("mindthestep", {"beta": 2.0}, "beta must be a finite number in [0, 1], got 2.0"),
    ("mindthestep", {"target": "bogus"}, "'bogus'"),
    ("mindthestep", {"staleness_model": "gamma"}, "'gamma'"),
    ("mindthestep", {"target": "momentum", "r": 0.5}, "r=0.5"),
    ("mindthestep", {"target": "shrink", "mu": 0.5}, "mu=0.5"),
    ("constant", {"speed": 3}, "'speed'"),
])
def test_bad_options_are_refused_with_the_value_named(name, options, named):
    with pytest.raises(ValueError) as error:
        make_policy(name, **options)
    assert named in str(error.value)


@pytest.mark.parametrize("name", ["tail", "mindthestep", "constant"])
@pytest.mark.parametrize("workers", [0, -3, 2.5, True])
def test_bind_refuses_bad_worker_counts(name, workers):
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        make_policy(name).bind(workers)


@pytest.mark.parametrize("histogram, named", [([1, -2], "-2"), ([1.5], "1.5"), ([float("nan")], "nan")])
def test_observe_refuses_bad_histograms(histogram, named):
    policy = make_policy("mindthestep")
    policy.bind(4)
    with pytest.raises(ValueError, match="histogram") as error:
        policy.observe(histogram)
    assert named in str(error.value)


def test_as_policy_accepts_names_policies_functions_and_duck_types():
    assert isinstance(as_policy("inverse", lr=0.2), POLICIES["inverse"])
    assert as_policy("constant", lr=0.2).table()[0] == 0.2
    own = ConstantPolicy(0.3)
    copied = as_policy(own)
    assert copied is not own and copied.describe() == own.describe()  # fits never touch the caller's
    function_policy = as_policy(lambda tau: 0.1 / (1 + tau))
    assert isinstance(function_policy, FunctionPolicy) and function_policy.table()[3] == pytest.approx(0.025)

    class Duck:
        def bind(self, workers): ...
        def table(self): return np.ones(1)
        def observe(self, histogram): ...

    duck = Duck()
    checked = as_policy(duck)  # a policy object of the user's own class runs with its tables checked
    assert isinstance(checked, CheckedPolicy) and isinstance(checked.policy, Duck)
    assert checked.policy is not duck and checked.table()[0] == 1.0
    with pytest.raises(ValueError, match="twice"):
        as_policy(own, lr=0.1)
    with pytest.raises(TypeError):
        as_policy(3)
    with pytest.raises(ValueError, match=r"alpha\(0\)"):
        FunctionPolicy(lambda tau: math.nan)


def test_user_function_policy_passes_the_property_suite():
    check_policy(lambda: FunctionPolicy(lambda tau: 0.1 / (1.0 + tau)), nonincreasing=True)


@given(histogram=histograms())
def test_every_registered_policy_describes_itself_as_json(histogram):
    for name in POLICIES:
        policy = make_policy(name, min_samples=0) if name in ("tail", "mindthestep") else make_policy(name)
        policy.bind(4)
        policy.observe(histogram)
        check_table(policy)
        out = json.loads(json.dumps(policy.describe()))
        assert out["name"] == name and out["table_head"] == [float(a) for a in policy.table()[:8]]


def _shrink_identities(policy, lr):
    """The identities to 1e-9 (entries below lr_min = 1e-300 only where r^k underflows)."""
    table = policy.table()
    assert policy.clipped_high == 0 and np.all(policy.unclipped_head[:1] > 1e-300)
    assert float(np.dot(policy.p_binned, table)) == pytest.approx(lr, abs=1e-9)
    np.testing.assert_allclose(policy.p_binned * table / lr, policy.q_binned, rtol=0, atol=1e-9)


@given(histogram=histograms(), chi2=st.floats(0.0, 2.0), workers=st.integers(1, 64),
       length=st.integers(2, 300))
@example(histogram=np.array([0, 0, 0, 7]), chi2=0.1, workers=4, length=256)
def test_default_mindthestep_spends_its_chi2_budget_and_never_rises(histogram, chi2, workers, length):
    policy = MindTheStepPolicy(lr=0.2, chi2=chi2, lr_min=1e-300, lr_max=1e300, length=length,
                               min_samples=0)
    policy.bind(workers)
    policy.observe(histogram)
    _shrink_identities(policy, 0.2)
    spent = policy.describe()["step_chi2"]
    little_spread = policy.r_used == pytest.approx(math.exp(-50.0))
    assert spent == pytest.approx(chi2, abs=1e-7) or (little_spread and spent <= chi2 + 1e-9)
    assert np.all(np.diff(policy.table()) <= 1e-12 * 0.2)   # no weight of order 1/P(tau)


def test_defaults_are_the_chi2_shrink_on_the_empirical_histogram():
    policy = make_policy("mindthestep", lr=0.1)
    parameters = policy.parameters()
    assert parameters == {"target": "shrink", "chi2": 0.03, "beta": 1.0, "staleness_model": "empirical"}
    with pytest.raises(ValueError, match="not both"):
        make_policy("mindthestep", r=0.9, chi2=0.1)
    with pytest.raises(ValueError, match="chi2=0.1 applies only to target='shrink'"):
        make_policy("mindthestep", target="momentum", chi2=0.1)
    with pytest.raises(ValueError, match="chi2 must"):
        make_policy("mindthestep", chi2=-1.0)
    constant = make_policy("mindthestep", lr=0.1, chi2=0.0)
    constant.bind(16)
    np.testing.assert_allclose(constant.table(), 0.1)


@pytest.mark.parametrize("lam", [4.0, 32.0, 256.0])
def test_chi2_shrink_shifts_poisson_staleness_by_a_fixed_number_of_standard_deviations(lam):
    policy = MindTheStepPolicy(lr=1.0, chi2=0.1, staleness_model="poisson", lr_max=1e9,
                               length=4096, min_samples=0)
    policy.bind(2)
    policy.observe(np.bincount(Poisson(lam).sample(200_000, np.random.default_rng(0))))
    shift = (policy.model.mean - policy.target_model(policy.model).mean) / math.sqrt(policy.model.mean)
    assert shift == pytest.approx(math.sqrt(math.log(1.1)), rel=0.02)


def test_rare_huge_staleness_does_not_move_the_default_table():
    rng = np.random.default_rng(3)
    bulk = np.bincount(Poisson(8.0).sample(100_000, rng), minlength=40)
    tailed = np.append(bulk, np.zeros(29_757 - bulk.size, np.int64))
    tailed[[1_701, 9_000, 29_756]] = 1
    policies = []
    for histogram in (bulk, tailed):
        policy = make_policy("mindthestep", lr=0.5)
        policy.bind(16)
        policy.observe(histogram)
        policies.append(policy.table())
    np.testing.assert_allclose(policies[1][:30], policies[0][:30], rtol=1e-3)
    assert policies[1][-1] == pytest.approx(0.5e-3)    # the stalest get lr_min


# ---------------------------------------------------------------- explicit momentum (bind(m, momentum))
def _explicit_kernel(momentum, length):
    """torch-style momentum as a normalised kernel over lags: (1 - mu_e) mu_e^j."""
    return (1.0 - momentum) * momentum ** np.arange(length)


@given(mu=st.floats(0.0, 0.999), explicit=st.floats(0.0, 0.999), length=st.integers(1, 300))
@example(mu=0.5, explicit=0.5, length=10)
@example(mu=0.0, explicit=0.0, length=1)
def test_momentum_target_is_a_distribution(mu, explicit, length):
    target = MomentumTarget(mu, explicit)
    binned = np.exp(target.log_binned_pmf(length))
    assert np.all(binned >= 0.0)
    assert binned.sum() == pytest.approx(1.0, abs=1e-12)
    assert target.pmf(length).sum() + math.exp(target.log_tail(length)) == pytest.approx(1.0, abs=1e-12)
    assert target.implicit_momentum == pytest.approx(max(0.0, (mu - explicit) / (1.0 - explicit)), abs=1e-15)
    assert target.capped == (explicit > mu)


@given(mu=st.floats(0.0, 0.99), explicit=st.floats(0.0, 0.99), length=st.integers(2, 200))
@example(mu=0.9, explicit=0.5, length=256)
@example(mu=0.5, explicit=0.5, length=8)
def test_momentum_target_with_explicit_momentum_is_the_heavy_ball_kernel(mu, explicit, length):
    """Binned Q convolved with the explicit momentum's kernel is Geometric(mu) on the bins
    before the tail bin; when capped, explicit momentum alone: Geometric(mu_e)."""
    q = np.exp(MomentumTarget(mu, explicit).log_binned_pmf(length))[: length - 1]
    total = np.convolve(q, _explicit_kernel(explicit, length - 1))[: length - 1]
    expected = Geometric(max(mu, explicit)).pmf(length - 1)
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-12)


@given(mu=st.floats(0.0, 0.999), length=st.integers(1, 400), workers=st.integers(1, 64))
@example(mu=0.5, length=256, workers=16)
def test_no_explicit_momentum_gives_the_geometric_target_bit_for_bit(mu, length, workers):
    assert np.array_equal(MomentumTarget(mu, 0.0).log_binned_pmf(length), Geometric(mu).log_binned_pmf(length))

    class GeometricTarget(MindTheStepPolicy):
        """The momentum target as it was before explicit momentum: Geometric(mu)."""

        def target_model(self, model):
            return Geometric(self.mu)

    tables = []
    for cls, momentum in ((GeometricTarget, None), (MindTheStepPolicy, None), (MindTheStepPolicy, 0.0)):
        policy = cls(lr=0.1, target="momentum", mu=mu, length=length, min_samples=0)
        policy.bind(workers) if momentum is None else policy.bind(workers, momentum)
        policy.observe(np.bincount(Poisson(workers / 2).sample(500, np.random.default_rng(workers))))
        tables.append(policy.table())
    assert np.array_equal(tables[0], tables[1]) and np.array_equal(tables[0], tables[2])


@given(lam=st.floats(0.05, 20.0), mu=st.floats(0.01, 0.95), explicit=st.floats(0.0, 0.95),
       length=st.integers(2, 24))
@example(lam=7.0, mu=0.9, explicit=0.5, length=16)
def test_mindthestep_momentum_without_clipping_matches_the_deconvolved_target(lam, mu, explicit, length):
    policy = MindTheStepPolicy(lr=0.2, target="momentum", mu=mu, staleness_model="poisson",
                               lr_min=1e-300, lr_max=1e300, length=length, min_samples=0)
    policy.bind(int(lam) + 1, momentum=explicit)
    policy.observe(np.bincount(Poisson(lam).sample(5000, np.random.default_rng(0))))
    p = _binned(policy.model, length)
    profile = p * policy.table() / 0.2
    assert float(np.dot(p, policy.table())) == pytest.approx(0.2, abs=1e-9)
    total = np.convolve(profile, _explicit_kernel(explicit, length))[: length - 1]
    np.testing.assert_allclose(total, Geometric(max(mu, explicit)).pmf(length - 1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("mu, explicit, implicit, capped", [
    (0.5, 0.0, 0.5, False), (0.9, 0.5, 0.8, False), (0.5, 0.5, 0.0, False), (0.3, 0.9, 0.0, True)])
def test_describe_reports_the_explicit_and_implicit_momentum(mu, explicit, implicit, capped):
    policy = make_policy("mindthestep", target="momentum", mu=mu)
    policy.bind(8, momentum=explicit)
    report = json.loads(json.dumps(policy.describe()))
    assert report["explicit_momentum"] == explicit
    assert report["implicit_momentum"] == pytest.approx(implicit, abs=1e-15)
    assert report["momentum_capped"] is capped
    assert report["target_model"]["model"] == "momentum_target"
    assert report["target_model"]["params"]["explicit_momentum"] == explicit
    shrink = make_policy("mindthestep")
    shrink.bind(8, momentum=explicit)
    assert shrink.describe()["explicit_momentum"] == explicit   # reported; the shrink target ignores it


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("momentum, named", [(-0.1, "-0.1"), (1.0, "1.0"), (float("nan"), "nan"),
                                             ("fast", "'fast'"), (True, "True")])
def test_bind_refuses_bad_momentum_with_the_value_named(name, momentum, named):
    with pytest.raises(ValueError, match=r"momentum must be a finite number in \[0, 1\)") as error:
        make_policy(name).bind(4, momentum)
    assert named in str(error.value)


def test_checked_policies_get_the_momentum_if_their_bind_takes_it():
    class OldDuck:
        def bind(self, workers): self.workers = workers
        def table(self): return np.ones(1)
        def observe(self, histogram): ...

    class NewDuck(OldDuck):
        def bind(self, workers, momentum=0.0): self.workers, self.momentum = workers, momentum

    old, new = as_policy(OldDuck()), as_policy(NewDuck())
    old.bind(3, 0.9)
    new.bind(3, 0.9)
    assert old.policy.workers == 3 and new.policy.momentum == 0.9
    with pytest.raises(ValueError, match="momentum must be .* got 1.5"):
        old.bind(3, 1.5)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_policy_state_is_a_bound_copy_refitted_like_the_policy_itself(name):
    """policy_state / policy_table / refit_policy give the tables bind / table / observe give,
    bit for bit, and never bind, observe or change the run's policy object."""
    options = dict(lr=0.2, **(dict(refit_every=10, min_samples=0) if name in ("tail", "mindthestep", "auto") else {}))
    run_policy, direct = make_policy(name, **options), make_policy(name, **options)
    before = pickle.dumps(run_policy)
    histogram = np.bincount(Poisson(3.0).sample(500, np.random.default_rng(0)))
    direct.bind(7, 0.3)
    state = policy_state(run_policy, 7, 0.3)
    assert state is not run_policy and np.array_equal(policy_table(state), direct.table())
    low = policy_table(state, np.float32)
    assert low.dtype == np.float32 and low.flags.c_contiguous
    direct.observe(histogram)
    assert np.array_equal(refit_policy(state, histogram), direct.table())
    assert describe_fitted(run_policy, 7, 0.3, histogram) == direct.describe()
    refitter = Refitter(run_policy, 7, 0.3, np.float32)
    stats = np.zeros(STAT_COLUMNS, np.int64)
    stats[STAT_UPDATES] = 10
    refitter.maybe_refit(stats, histogram[None, :])
    assert stats[STAT_REFITS] == (1 if run_policy.refit_every else 0)
    assert np.array_equal(refitter.table, direct.table().astype(np.float32))
    assert pickle.dumps(run_policy) == before   # the run's policy was never bound or refitted


def test_a_policy_state_binds_old_user_policies_without_momentum_and_checks_their_tables():
    class OldDuck:
        refit_every = 1
        def bind(self, workers): self.workers = workers
        def table(self): return np.full(self.workers, -1.0 if getattr(self, "seen", False) else 0.1)
        def observe(self, histogram): self.seen = True

    run_policy = as_policy(OldDuck())
    state = policy_state(run_policy, 3, 0.9)
    assert state.policy.workers == 3 and not hasattr(run_policy.policy, "workers")
    assert np.array_equal(policy_table(state), np.full(3, 0.1))
    with pytest.raises(ValueError, match=r"alpha\(0\) = -1.0"):
        refit_policy(state, np.ones(2, np.int64))
    assert not hasattr(run_policy.policy, "seen")
