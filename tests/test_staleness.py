"""Staleness models: pmf normalisation, moments, stability, maximum-likelihood recovery, validation."""

import json
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import stats

from hogwild_mts.staleness.models import (CMP, MODELS, Empirical, Geometric, Poisson, check_histogram, fit_best,
                                   fit_model, prior)
from hogwild_mts.policies.testing import histograms, staleness_models


@given(model=staleness_models(), T=st.integers(1, 2000))
@example(model=Poisson(0.0), T=1)
@example(model=Poisson(1000.0), T=10_000)
def test_pmf_sums_to_one_minus_tail(model, T):
    pmf = model.pmf(T)
    assert pmf.shape == (T,) and np.all(np.isfinite(pmf)) and np.all(pmf >= 0)
    assert pmf.sum() + math.exp(model.log_tail(T)) == pytest.approx(1.0, abs=1e-9)
    binned = np.exp(model.log_binned_pmf(T))
    assert binned.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(binned[:-1], pmf[:-1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("model, reference", [
    (Poisson(3.5), stats.poisson(3.5)),
    (Poisson(1000.0), stats.poisson(1000.0)),
    (Geometric(0.8), stats.geom(0.2, loc=-1)),
    (CMP(3.5, 1.0), stats.poisson(3.5)),
    (CMP(0.8, 0.0), stats.geom(0.2, loc=-1)),
])
def test_pmf_matches_scipy(model, reference):
    taus = np.arange(3000)
    np.testing.assert_allclose(model.pmf(3000), reference.pmf(taus), rtol=1e-9, atol=1e-300)
    assert model.mean == pytest.approx(reference.mean(), rel=1e-9)
    assert model.variance == pytest.approx(reference.var(), rel=1e-9)


def test_poisson_far_tail_is_finite_in_log_space():
    log_p = Poisson(1000.0).logpmf_at(np.arange(10_000))
    assert np.all(np.isfinite(log_p))
    np.testing.assert_allclose(log_p, stats.poisson(1000.0).logpmf(np.arange(10_000)), rtol=1e-10)
    # scipy's logsf underflows to -inf here; the tail is dominated by its first term
    first = float(stats.poisson(2.0).logpmf(10_000))
    assert first < Poisson(2.0).log_tail(10_000) < first + 2.0 / 10_000 * 1.001
    assert Poisson(2.0).log_tail(30) == pytest.approx(stats.poisson(2.0).logsf(29), rel=1e-9)


@pytest.mark.parametrize("model", [Poisson(0.0), Geometric(0.0), CMP(0.0, 1.0), Empirical([])])
def test_degenerate_models_put_all_mass_at_zero(model):
    np.testing.assert_array_equal(model.pmf(4), [1.0, 0.0, 0.0, 0.0])
    assert model.log_tail(1) == -math.inf and model.mean == 0.0 and model.variance == 0.0


def test_cmp_interpolates_geometric_poisson_and_tighter():
    poisson, tight = CMP(4.0, 1.0), CMP(4.0 ** 2, 2.0)
    assert tight.variance < poisson.variance and poisson.variance == pytest.approx(4.0, rel=1e-9)


@given(model=staleness_models(max_mean=50.0), seed=st.integers(0, 2 ** 32 - 1))
def test_sample_moments_match_the_model(model, seed):
    draws = model.sample(20_000, np.random.default_rng(seed))
    assert draws.dtype == np.int64 and draws.min() >= 0
    spread = math.sqrt(model.variance / 20_000)
    assert abs(draws.mean() - model.mean) <= 6 * spread + 1e-9


@given(model=staleness_models(), r=st.floats(0.01, 1.0))
def test_tilted_is_r_to_the_k_times_pmf_renormalised(model, r):
    T = 400
    log_weights = np.arange(T) * math.log(r) + model.logpmf_at(np.arange(T))
    tilted = model.tilted(r)
    assert type(tilted) is type(model)
    head = np.exp(log_weights - log_weights.max())
    # the ratio of consecutive tilted pmf entries is r times that of the model
    expected = head / head.sum() * tilted.pmf(T).sum()
    np.testing.assert_allclose(tilted.pmf(T), expected, rtol=1e-7, atol=1e-12)


def _histogram(model, size, seed):
    return np.bincount(model.sample(size, np.random.default_rng(seed)))


@pytest.mark.parametrize("lam", [0.3, 7.0, 31.0, 400.0])
def test_poisson_fit_recovers_lambda(lam):
    fitted = Poisson.fit(_histogram(Poisson(lam), 50_000, seed=1))
    assert fitted.lam == pytest.approx(lam, rel=0.03)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.95])
def test_geometric_fit_recovers_q(q):
    fitted = Geometric.fit(_histogram(Geometric(q), 50_000, seed=2))
    assert fitted.q == pytest.approx(q, rel=0.02)


@pytest.mark.parametrize("lam, nu", [(20.0, 1.5), (3.0, 0.5), (7.0, 1.0), (0.6, 0.2), (200.0, 3.0)])
def test_cmp_fit_recovers_nu(lam, nu):
    fitted = CMP.fit(_histogram(CMP(lam, nu), 50_000, seed=3))
    assert fitted.nu == pytest.approx(nu, rel=0.10)
    assert fitted.mean == pytest.approx(CMP(lam, nu).mean, rel=0.03)


def test_cmp_warm_start_reaches_the_same_optimum():
    histogram = _histogram(CMP(20.0, 1.5), 20_000, seed=4)
    cold = CMP.fit(histogram)
    warm = CMP.fit(histogram, start=(5.0, 0.7))
    assert warm.nu == pytest.approx(cold.nu, rel=1e-6) and warm.lam == pytest.approx(cold.lam, rel=1e-5)


def test_cmp_fit_is_the_maximum_likelihood():
    histogram = _histogram(CMP(3.0, 0.5), 5_000, seed=5)
    best = CMP.fit(histogram)
    for lam_factor, nu_shift in [(1.05, 0.0), (0.95, 0.0), (1.0, 0.02), (1.0, -0.02)]:
        other = CMP(best.lam * lam_factor, best.nu + nu_shift)
        assert other.fit_report is None
        assert CMP.fit(histogram).fit_report.loglik > float(np.dot(histogram, other.logpmf_at(np.arange(histogram.size))))


def test_fit_report_loglik_and_tv_match_direct_computation():
    histogram = np.array([5, 0, 3, 2])
    model = Poisson.fit(histogram)
    p = stats.poisson(model.lam).pmf(np.arange(4))
    assert model.lam == pytest.approx((2 * 3 + 3 * 2) / 10)
    assert model.fit_report.loglik == pytest.approx(float(np.dot(histogram, np.log(p))))
    full = stats.poisson(model.lam).pmf(np.arange(200))
    padded = np.zeros(200)
    padded[:4] = histogram / 10
    assert model.fit_report.tv == pytest.approx(0.5 * np.abs(padded - full).sum(), abs=1e-12)
    assert model.fit_report.aic == pytest.approx(2 - 2 * model.fit_report.loglik)
    assert model.fit_report.samples == 10


@given(histogram=histograms(), name=st.sampled_from(sorted(MODELS) + ["auto"]))
@example(histogram=np.zeros(0, dtype=np.int64), name="cmp")
@example(histogram=np.array([0, 0, 0, 9]), name="cmp")
@example(histogram=np.array([821229]), name="empirical")
def test_every_fit_of_any_histogram_is_finite_and_bounded(histogram, name):
    model = fit_model(name, histogram)
    report = model.fit_report
    assert 0.0 <= report.tv <= 1.0 and math.isfinite(report.aic)
    assert report.loglik <= 1e-14 * max(1, report.samples)    # log P <= 0 up to rounding per sample
    assert report.samples == histogram.sum()
    binned = np.exp(model.log_binned_pmf(256))
    assert np.all(np.isfinite(binned)) and binned.sum() == pytest.approx(1.0, abs=1e-9)
    assert math.isfinite(model.mean) and math.isfinite(model.variance)
    json.dumps(model.to_dict())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_of_empty_histogram_is_the_point_mass_at_zero(name):
    model = fit_model(name, np.zeros(10, dtype=np.int64))
    np.testing.assert_array_equal(model.pmf(3), [1.0, 0.0, 0.0])
    assert model.fit_report.samples == 0 and model.fit_report.tv == 0.0


def test_one_bin_histogram_fits_concentrate_near_that_bin():
    histogram = np.zeros(8, dtype=np.int64)
    histogram[5] = 1000
    assert CMP.fit(histogram).pmf(8)[5] > 0.95
    assert Empirical.fit(histogram).pmf(8)[5] > 0.99
    assert Poisson.fit(histogram).lam == 5.0


@pytest.mark.parametrize("model, expected", [
    (Geometric(0.7), {"geometric", "cmp"}),
    (Poisson(6.0), {"poisson", "cmp"}),
    (CMP(30.0, 2.0), {"cmp"}),
])
def test_fit_best_picks_the_generating_family(model, expected):
    assert fit_best(_histogram(model, 20_000, seed=6)).name in expected


def test_fit_best_prefers_the_smaller_model_when_cmp_gains_nothing():
    assert fit_best(_histogram(Geometric(0.7), 20_000, seed=7)).name == "geometric"


def test_empirical_fit_follows_the_histogram_with_a_geometric_tail():
    histogram = np.array([10, 30, 60])
    model = Empirical.fit(histogram, smoothing=1.0)
    tail = Geometric(1.5 / 2.5)
    np.testing.assert_allclose(model.pmf(3), (histogram + tail.pmf(3)) / 101)
    assert model.pmf(10)[9] == pytest.approx(tail.pmf(10)[9] / 101)
    assert model.mean == pytest.approx(np.dot(model.pmf(2000), np.arange(2000)), rel=1e-9)


def test_prior_is_poisson_of_half_the_other_workers():
    assert prior(17).lam == 8.0 and prior(2).lam == 0.5 and prior(1).lam == 0.0
    np.testing.assert_array_equal(prior(1).pmf(3), [1.0, 0.0, 0.0])


def test_to_dict_is_json_with_fit_quality():
    model = CMP.fit(_histogram(CMP(3.0, 0.5), 2_000, seed=8))
    out = json.loads(json.dumps(model.to_dict()))
    assert out["model"] == "cmp" and set(out["params"]) == {"lam", "nu"}
    assert set(out["fit"]) == {"loglik", "tv", "aic", "samples"} and out["fit"]["samples"] == 2_000


@pytest.mark.parametrize("histogram, named", [
    ([3, -1, 2], "-1"),
    ([1.0, 2.5], "2.5"),
    ([1.0, float("nan")], "nan"),
    ([1.0, float("inf")], "inf"),
    ([[1, 2], [3, 4]], "(2, 2)"),
    (["a", "b"], "dtype"),
])
def test_bad_histograms_are_refused_with_the_value_named(histogram, named):
    with pytest.raises(ValueError, match="histogram") as error:
        check_histogram(histogram)
    assert named in str(error.value)
    with pytest.raises(ValueError):
        Poisson.fit(histogram)


@pytest.mark.parametrize("build, named", [
    (lambda: Geometric(1.0), "1.0"),
    (lambda: Geometric(-0.1), "-0.1"),
    (lambda: Geometric(float("nan")), "nan"),
    (lambda: Poisson(-1.0), "-1.0"),
    (lambda: Poisson(float("nan")), "nan"),
    (lambda: CMP(2.0, 0.0), "lam < 1"),
    (lambda: CMP(1.0, -1.0), "-1.0"),
    (lambda: CMP(1e300, 0.001), "too heavy"),
    (lambda: prior(0), "workers"),
    (lambda: prior(2.5), "2.5"),
    (lambda: fit_model("gamma", [1, 2]), "gamma"),
    (lambda: Empirical([1, -2]), "empirical counts"),
    (lambda: Poisson(2.0).tilted(0.0), "r must"),
    (lambda: Poisson(2.0).log_binned_pmf(0), "table length"),
])
def test_bad_model_arguments_are_refused_with_the_value_named(build, named):
    with pytest.raises(ValueError) as error:
        build()
    assert named in str(error.value)


def test_cmp_fits_overdispersed_staleness_with_a_small_nu():
    """Staleness like many workers with variable compute times (mean 62, variance ~ 1,000): the
    best CMP has nu near 0 and lam > 1, where the series peaks far out; the fit must reach it
    instead of stopping at the geometric boundary (nu = 0)."""
    rng = np.random.default_rng(1)
    histogram = np.bincount(rng.negative_binomial(4, 4 / 66, 60_000))
    cmp_fit = fit_model("cmp", histogram)
    geometric_fit = fit_model("geometric", histogram)
    assert 0.0 < cmp_fit.nu < 1.0 and cmp_fit.lam > 1.0
    assert cmp_fit.fit_report.tv < 0.5 * geometric_fit.fit_report.tv
    assert cmp_fit.fit_report.loglik > geometric_fit.fit_report.loglik
