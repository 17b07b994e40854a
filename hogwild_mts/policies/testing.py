"""Hypothesis strategies and a reusable property suite for step-size policies.

Property-test your own policy in a few lines::

    from hogwild_mts.policies.testing import check_policy

    def test_my_policy():
        check_policy(lambda: MyPolicy(lr=0.1), nonincreasing=True)

``check_policy`` binds fresh policies to 1..64 workers with explicit momentum in [0, 0.99], feeds
them staleness histograms (empty, one-bin, dense, sampled from the staleness models,
long-tailed) and asserts the invariants of :func:`assert_policy_invariants`.
"""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hogwild_mts.policies.step_sizes import POLICIES, policy_state, refit_policy, step_size
from hogwild_mts.staleness.models import CMP, Empirical, Geometric, Poisson

FAR_TAU = 10 ** 9   # a staleness far past any table


def _long_tailed(bulk: list, far: list) -> np.ndarray:
    length = max([len(bulk)] + [tau + 1 for tau, _ in far])
    counts = np.zeros(length, dtype=np.int64)
    counts[: len(bulk)] = bulk
    for tau, count in far:
        counts[tau] += count
    return counts


def _sampled(model, size: int, seed: int) -> np.ndarray:
    return np.bincount(model.sample(size, np.random.default_rng(seed))).astype(np.int64)


def staleness_models(max_mean: float = 300.0):
    """Geometric, Poisson, CMP (nu = 0 included) and Empirical models with mean up to ~max_mean."""
    geometric = st.floats(0.0, max_mean / (1.0 + max_mean)).map(Geometric)
    poisson = st.floats(0.0, max_mean).map(Poisson)
    cmp = st.builds(lambda mode, nu: CMP((mode + 0.5) ** nu, nu),
                    st.floats(0.0, max_mean), st.floats(0.25, 4.0))
    cmp_geometric = st.floats(0.01, 0.95).map(lambda lam: CMP(lam, 0.0))
    empirical = st.lists(st.integers(0, 1000), min_size=1, max_size=40).map(Empirical)
    return st.one_of(geometric, poisson, cmp, cmp_geometric, empirical)


def histograms(max_tau: int = 20_000):
    """Staleness histograms (int64 counts by tau): all-zero, one bin, dense small, sampled from
    a staleness model, and long-tailed (a bulk plus a few counts out to ``max_tau``)."""
    empty = st.integers(0, 50).map(lambda length: np.zeros(length, dtype=np.int64))
    one_bin = st.builds(lambda tau, count: _long_tailed([], [(tau, count)]),
                        st.integers(0, 300), st.integers(1, 10 ** 6))
    dense = st.lists(st.integers(0, 10 ** 4), min_size=1, max_size=60).map(
        lambda counts: np.array(counts, dtype=np.int64))
    sampled = st.builds(_sampled, staleness_models(), st.integers(1, 5000), st.integers(0, 2 ** 32 - 1))
    long_tailed = st.builds(_long_tailed, st.lists(st.integers(0, 10 ** 4), max_size=40),
                            st.lists(st.tuples(st.integers(100, max_tau), st.integers(1, 5)),
                                     min_size=1, max_size=5))
    return st.one_of(empty, one_bin, dense, sampled, long_tailed)


def worker_counts(max_workers: int = 64):
    return st.integers(1, max_workers)


def momentums():
    """Explicit heavy-ball momentum of the workers: 0 (plain SGD) or in (0, 0.99]."""
    return st.one_of(st.just(0.0), st.floats(0.0, 0.99))


def _bounds(draw, lr: float) -> dict:
    if draw(st.booleans()):
        return {}
    return {"lr_min": lr * draw(st.floats(1e-6, 1.0)), "lr_max": lr * draw(st.floats(1.0, 1e3))}


@st.composite
def policy_options(draw, name: str) -> dict:
    """Valid keyword options for ``make_policy(name, **options)`` of a built-in policy."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    lr = draw(st.floats(1e-4, 10.0))
    options = {"lr": lr, **_bounds(draw, lr)}
    if name not in ("constant", "auto"):
        options["length"] = draw(st.integers(1, 300))
    if name == "exponential":
        options["beta"] = draw(st.floats(0.0, 10.0))
    if name in ("tail", "mindthestep", "auto"):
        options["min_samples"] = draw(st.integers(0, 2000))
    if name == "auto":
        options["curvature"] = draw(st.floats(0.01, 100.0))
        options["gain"] = draw(st.floats(0.01, 1.0))
        options["max_momentum"] = draw(st.floats(0.0, 0.99))
    if name == "tail":
        options["A"] = draw(st.floats(0.0, 1.0))
    if name == "mindthestep":
        options["target"] = draw(st.sampled_from(["momentum", "shrink"]))
        if options["target"] == "momentum":
            options["mu"] = draw(st.floats(0.0, 0.99))
        elif draw(st.booleans()):
            options["r"] = draw(st.floats(0.01, 1.0))
        else:
            options["chi2"] = draw(st.floats(0.0, 10.0))
        options["beta"] = draw(st.floats(0.0, 1.0))
        options["staleness_model"] = draw(st.sampled_from(["poisson", "geometric", "cmp", "empirical", "auto"]))
    return options


def check_table(policy, *, nonincreasing: bool = False, stage: str = "") -> np.ndarray:
    """Assert ``policy.table()`` is a non-empty finite float64 1-D array inside the policy's
    [lr_min, lr_max] (> 0 when it has none), non-increasing if asked; return it."""
    table = policy.table()
    where = f"{type(policy).__name__} table {stage}".strip()
    assert isinstance(table, np.ndarray) and table.dtype == np.float64, f"{where}: not a float64 array"
    assert table.ndim == 1 and table.size >= 1, f"{where}: shape {table.shape}"
    assert np.all(np.isfinite(table)), f"{where}: non-finite entries {table[~np.isfinite(table)][:5]}"
    low = getattr(policy, "lr_min", 0.0)
    high = getattr(policy, "lr_max", math.inf)
    assert np.all(table > 0), f"{where}: entries <= 0: {table[table <= 0][:5]}"
    assert np.all(table >= low * (1 - 1e-12)), f"{where}: below lr_min={low}: {table.min()}"
    assert np.all(table <= high * (1 + 1e-12)), f"{where}: above lr_max={high}: {table.max()}"
    if nonincreasing:
        rises = np.flatnonzero(np.diff(table) > 0)
        assert rises.size == 0, f"{where}: increases at tau={rises[:5]}"
    return table


def assert_policy_invariants(policy, workers: int, histogram: np.ndarray, *, nonincreasing: bool = False,
                             taus=(0, FAR_TAU), momentum: float = 0.0) -> None:
    """Make the :func:`policy_state` of ``policy`` for ``workers`` with explicit ``momentum`` (a
    ``bind`` without it gets ``bind(workers)``), check its prior table, refit it on
    ``histogram``, check again; each time every tau in ``taus`` must look up a finite lr > 0
    and describe() must be JSON-able.  ``policy`` itself is left as it was."""
    state = policy_state(policy, workers, momentum)
    for stage in ("before data", "after observe"):
        table = check_table(state, nonincreasing=nonincreasing, stage=stage)
        for tau in taus:
            lr = step_size(table, tau)
            assert math.isfinite(lr) and lr > 0, f"alpha({tau}) = {lr} {stage}"
        json.dumps(state.describe())
        refit_policy(state, histogram)


def check_policy(factory, options=None, *, nonincreasing: bool = False, max_tau: int = 20_000) -> None:
    """Run the property suite on policies from ``factory(**options)``.

    ``options`` is a hypothesis strategy of keyword dicts (default: no options); the run uses
    the active hypothesis settings profile without a deadline. Raises on a falsifying example.
    """
    options = st.just({}) if options is None else options

    @settings(deadline=None)
    @given(options=options, workers=worker_counts(), histogram=histograms(max_tau), momentum=momentums())
    def policy_properties(options, workers, histogram, momentum):
        assert_policy_invariants(factory(**options), workers, histogram, nonincreasing=nonincreasing,
                                 momentum=momentum)

    policy_properties()
