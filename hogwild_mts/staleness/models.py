"""Staleness models: distributions ``P`` over tau = 0, 1, 2, ... fitted to observed staleness.

A *histogram* is a 1-D array of integer counts indexed by tau (``histogram[k]`` = how many
updates had staleness ``k``). Every probability is computed in log space, so Poisson(lam) with
lam up to 1000 and tau up to 10,000 stay finite and accurate.

Models: :class:`Geometric`, :class:`Poisson`, :class:`CMP` (Conway-Maxwell-Poisson) and
:class:`Empirical` (smoothed histogram). Each has ``pmf(T)``, ``log_tail(T)``,
``log_binned_pmf(T)``, ``mean``, ``variance``, ``sample(size, rng)``, ``tilted(r)``,
``to_dict()`` and a maximum-likelihood ``fit(histogram)`` that attaches a :class:`FitReport`.
:class:`MomentumTarget` is not fitted to staleness: it is the law MindTheStep's momentum target
aims at, with the same pmf, tail, binning, moments and ``to_dict()``.

Degenerate data are valid: fitting an all-zero (empty) histogram gives the point mass at
tau = 0 (Poisson(0), Geometric(0), CMP(0, 1), Empirical of nothing), with ``loglik = 0`` and
``tv = 0``; callers that need a better guess before data (the policies) use :func:`prior`,
Poisson((m - 1) / 2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import gammaln

from hogwild_mts.core.options import check_nonnegative, check_positive, check_probability

TAIL_TOLERANCE = 1e-17      # truncated series stop once the remaining mass is below this, relative
MAX_SERIES_LENGTH = 1 << 22  # terms; a CMP needing more is refused as too heavy-tailed
CMP_NU_MAX = 50.0            # fits of (near) one-point histograms stop here instead of nu -> inf
CMP_LOG_LAM_MIN = math.log(1e-12)


def check_histogram(histogram) -> np.ndarray:
    """Return the histogram as int64 counts, or raise ValueError naming the first bad count."""
    array = np.asarray(histogram)
    if array.ndim != 1:
        raise ValueError(f"a staleness histogram must be 1-D counts indexed by tau, got shape {array.shape}")
    kind = array.dtype.kind
    if kind in "iub":
        counts = array.astype(np.int64, copy=False)
    elif kind == "f":
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.floor(array)))
        if bad.size:
            tau = int(bad[0])
            raise ValueError(f"staleness histogram[{tau}] = {array[tau]!r}; counts must be whole numbers >= 0")
        counts = array.astype(np.int64)
    else:
        raise ValueError(f"a staleness histogram must hold integer counts, got dtype {array.dtype}")
    negative = np.flatnonzero(counts < 0)
    if negative.size:
        tau = int(negative[0])
        raise ValueError(f"staleness histogram[{tau}] = {counts[tau]!r}; counts must be whole numbers >= 0")
    return counts


def histogram_mean(counts: np.ndarray) -> float:
    """Mean tau of counts by tau (0 for an empty histogram)."""
    samples = counts.sum()
    return float(np.dot(counts, np.arange(counts.size))) / samples if samples else 0.0


_log_factorial_cache = gammaln(np.arange(1, 4097, dtype=np.float64))


def log_factorials(stop: int) -> np.ndarray:
    """``log k!`` for k = 0..stop-1 (cached, grown by doubling)."""
    global _log_factorial_cache
    if stop > _log_factorial_cache.size:
        size = _log_factorial_cache.size
        while size < stop:
            size *= 2
        _log_factorial_cache = gammaln(np.arange(1, size + 1, dtype=np.float64))
    return _log_factorial_cache[:stop]


def logsumexp(log_values: np.ndarray) -> float:
    """``log(sum(exp(log_values)))`` without overflow (-inf for an empty or all -inf input)."""
    if log_values.size == 0:
        return -math.inf
    top = float(np.max(log_values))
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.sum(np.exp(log_values - top))))


def _too_heavy(log_lam: float, nu: float) -> ValueError:
    return ValueError(f"CMP(lam=exp({log_lam:.6g}), nu={nu!r}) has too heavy a tail to normalise "
                      f"(more than {MAX_SERIES_LENGTH} series terms)")


def _log_series(log_lam: float, nu: float, start: int):
    """Terms ``log(lam^k / (k!)^nu)`` for k = start..K and their logsumexp.

    K is the first end (doubling, from twice the mode) where the ratio bound
    ``lam / (K+1)^nu < 1`` shows the rest of the series is below TAIL_TOLERANCE times the sum.
    Returns (ks, log_terms, log_sum).
    """
    if nu > 0:
        log_mode = max(log_lam, 0.0) / nu   # log of k where lam / k^nu = 1: the terms peak there
        if log_mode > math.log(MAX_SERIES_LENGTH):
            raise _too_heavy(log_lam, nu)
        end = max(start + 64, 2 * int(math.exp(log_mode)) + 2)
    else:
        end = start + 64
    while True:
        if end > MAX_SERIES_LENGTH:
            raise _too_heavy(log_lam, nu)
        ks = np.arange(start, end + 1, dtype=np.float64)
        log_terms = ks * log_lam - nu * log_factorials(end + 1)[start:]
        log_sum = float(logsumexp(log_terms))
        log_ratio = log_lam - nu * math.log(end + 1.0)
        if log_ratio < 0.0:
            log_rest = log_terms[-1] + log_ratio - math.log(-math.expm1(log_ratio))
            if log_rest < log_sum + math.log(TAIL_TOLERANCE) or log_sum == -math.inf:
                return ks, log_terms, log_sum
        end = start + 2 * (end - start)


@dataclass(frozen=True)
class FitReport:
    """Fit quality. ``loglik = sum_k count_k log P(k)`` (nats, no multinomial constant);
    ``tv`` = total-variation distance between the normalised histogram and P, in [0, 1];
    ``aic = 2 * parameters - 2 * loglik``; ``samples`` = total count."""

    loglik: float
    tv: float
    aic: float
    samples: int


def _fit_report(model: "StalenessModel", counts: np.ndarray) -> FitReport:
    taus = np.flatnonzero(counts)
    if taus.size == 0:
        return FitReport(loglik=0.0, tv=0.0, aic=2.0 * model.parameter_count, samples=0)
    weights = counts[taus].astype(np.float64)
    samples = float(weights.sum())
    log_p = model.logpmf_at(taus)
    with np.errstate(invalid="ignore"):
        loglik = float(np.sum(weights * log_p))
    p = np.exp(log_p)
    tv = 0.5 * (float(np.abs(weights / samples - p).sum()) + max(0.0, 1.0 - float(p.sum())))
    tv = min(max(tv, 0.0), 1.0)
    return FitReport(loglik=loglik, tv=tv, aic=2.0 * model.parameter_count - 2.0 * loglik,
                     samples=int(samples))


class StalenessModel:
    """A distribution over tau = 0, 1, 2, ...; subclasses define the log-pmf and the tail."""

    name = "model"
    parameter_count = 0
    fit_report: FitReport | None = None

    def logpmf_at(self, taus) -> np.ndarray:
        """``log P(tau)`` for an integer array of taus >= 0 (-inf where P is 0)."""
        raise NotImplementedError

    def log_tail(self, T: int) -> float:
        """``log P(tau >= T)``."""
        raise NotImplementedError

    def pmf(self, T: int) -> np.ndarray:
        """``P(0..T-1)``; sums to ``1 - exp(log_tail(T))``."""
        return np.exp(self.logpmf_at(np.arange(int(T))))

    def log_binned_pmf(self, T: int) -> np.ndarray:
        """``log [P(0), ..., P(T-2), P(tau >= T-1)]``: the law of a table index when tau >= T-1
        uses the last entry. Sums (after exp) to 1."""
        T = int(T)
        if T < 1:
            raise ValueError(f"table length must be an integer >= 1, got {T!r}")
        head = self.logpmf_at(np.arange(T - 1))
        return np.append(head, self.log_tail(T - 1))

    @property
    def mean(self) -> float:
        raise NotImplementedError

    @property
    def variance(self) -> float:
        raise NotImplementedError

    def sample(self, size, rng: np.random.Generator) -> np.ndarray:
        """``size`` iid draws of tau (int64)."""
        raise NotImplementedError

    def tilted(self, r: float) -> "StalenessModel":
        """The model with pmf proportional to ``r^k P(k)``, 0 < r <= 1 (same family)."""
        raise NotImplementedError

    def params(self) -> dict:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """JSON-able: model name, parameters, mean, variance and the fit report (if fitted)."""
        out = {"model": self.name, "params": self.params(), "mean": float(self.mean),
               "variance": float(self.variance)}
        if self.fit_report is not None:
            out["fit"] = asdict(self.fit_report)
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if not isinstance(v, list))
        return f"{type(self).__name__}({args})"


class Geometric(StalenessModel):
    """``P(k) = (1 - q) q^k``, 0 <= q < 1 (q = 0: all mass at tau = 0)."""

    name = "geometric"
    parameter_count = 1

    def __init__(self, q: float):
        self.q = check_probability("geometric q", q, allow_zero=True, allow_one=False)

    def logpmf_at(self, taus) -> np.ndarray:
        taus = np.asarray(taus, dtype=np.float64)
        if self.q == 0.0:
            return np.where(taus == 0, 0.0, -np.inf)
        return math.log1p(-self.q) + taus * math.log(self.q)

    def log_tail(self, T: int) -> float:
        if T <= 0:
            return 0.0
        return -math.inf if self.q == 0.0 else T * math.log(self.q)

    @property
    def mean(self) -> float:
        return self.q / (1.0 - self.q)

    @property
    def variance(self) -> float:
        return self.q / (1.0 - self.q) ** 2

    def sample(self, size, rng: np.random.Generator) -> np.ndarray:
        return (rng.geometric(1.0 - self.q, size=size) - 1).astype(np.int64)

    def tilted(self, r: float) -> "Geometric":
        return Geometric(check_probability("r", r, allow_zero=False, allow_one=True) * self.q)

    def params(self) -> dict:
        return {"q": self.q}

    @classmethod
    def fit(cls, histogram) -> "Geometric":
        """Maximum likelihood: q = mean / (1 + mean)."""
        counts = check_histogram(histogram)
        mean = histogram_mean(counts)
        model = cls(mean / (1.0 + mean))
        model.fit_report = _fit_report(model, counts)
        return model


class MomentumTarget(StalenessModel):
    """MindTheStep's momentum target when every worker applies explicit heavy-ball momentum mu_e:
    the law Q of the lag k whose convolution with the explicit momentum's kernel
    Geometric(mu_e) is the heavy-ball kernel Geometric(mu), 0 <= mu, mu_e < 1.

    Generating function ``(1 - mu)(1 - mu_e z) / ((1 - mu_e)(1 - mu z))``:
    ``Q(0) = (1 - mu) / (1 - mu_e)``, ``Q(k) = (1 - mu)(mu - mu_e) mu^(k-1) / (1 - mu_e)`` for
    k >= 1, i.e. the mixture ``(1 - s) delta_0 + s Geometric(mu)`` with stale weight
    ``s = (mu - mu_e) / (mu (1 - mu_e))``.  A distribution iff mu >= mu_e; when mu_e > mu
    (``capped``: explicit momentum alone exceeds the target) Q is the point mass at 0, the
    mu_e = mu limit.  ``implicit_momentum`` = Q(k >= 1) = max(0, (mu - mu_e) / (1 - mu_e)), the
    momentum asynchrony must add: ``1 - mu = (1 - implicit_momentum)(1 - mu_e)`` unless capped.
    mu_e = 0 gives Geometric(mu), its log-pmf and tails bit for bit.  A target, not a model of
    observed staleness: it has no fit, sample or tilted.
    """

    name = "momentum_target"
    parameter_count = 2

    def __init__(self, mu: float, explicit_momentum: float):
        self.mu = check_probability("mu", mu, allow_zero=True, allow_one=False)
        self.explicit_momentum = check_probability("explicit momentum", explicit_momentum,
                                                   allow_zero=True, allow_one=False)
        self.capped = self.explicit_momentum > self.mu
        self.point_mass = self.explicit_momentum >= self.mu
        self.implicit_momentum = 0.0 if self.point_mass else \
            (self.mu - self.explicit_momentum) / (1.0 - self.explicit_momentum)
        # log s; exactly 0.0 when mu_e = 0, so the sums below are Geometric's bit for bit
        self._log_stale_weight = -math.inf if self.point_mass else \
            math.log(self.mu - self.explicit_momentum) - math.log(self.mu) - math.log1p(-self.explicit_momentum)

    def logpmf_at(self, taus) -> np.ndarray:
        taus = np.asarray(taus, dtype=np.float64)
        if self.point_mass:
            return np.where(taus == 0, 0.0, -np.inf)
        log_fresh = math.log1p(-self.mu) - math.log1p(-self.explicit_momentum)
        log_stale = (math.log1p(-self.mu) + self._log_stale_weight) + taus * math.log(self.mu)
        return np.where(taus == 0, log_fresh, log_stale)

    def log_tail(self, T: int) -> float:
        if T <= 0:
            return 0.0
        return -math.inf if self.point_mass else self._log_stale_weight + T * math.log(self.mu)

    @property
    def mean(self) -> float:
        return 0.0 if self.point_mass else self.implicit_momentum / (1.0 - self.mu)

    @property
    def variance(self) -> float:
        if self.point_mass:
            return 0.0
        stale_weight = math.exp(self._log_stale_weight)
        second_moment = stale_weight * self.mu * (1.0 + self.mu) / (1.0 - self.mu) ** 2
        return max(second_moment - self.mean ** 2, 0.0)

    def params(self) -> dict:
        return {"mu": self.mu, "explicit_momentum": self.explicit_momentum,
                "implicit_momentum": self.implicit_momentum, "capped": self.capped}


class CMP(StalenessModel):
    """Conway-Maxwell-Poisson: ``P(k) = lam^k / ((k!)^nu Z(lam, nu))``.

    lam >= 0, nu >= 0, and lam < 1 when nu = 0 (then it is Geometric(lam)); nu = 1 is Poisson;
    lam = 0 is the point mass at 0. Z is a truncated series in log space whose dropped tail is
    below TAIL_TOLERANCE relative.
    """

    name = "cmp"
    parameter_count = 2

    def __init__(self, lam: float, nu: float):
        self.lam = check_nonnegative("CMP lam", lam)
        self.nu = check_nonnegative("CMP nu", nu)
        if self.nu == 0.0 and self.lam >= 1.0:
            raise ValueError(f"CMP with nu = 0 needs lam < 1 (a geometric series), got lam={lam!r}")
        if self.lam == 0.0:
            self._ks, self._log_terms, self.log_z = np.zeros(1), np.zeros(1), 0.0
        else:
            self._ks, self._log_terms, self.log_z = _log_series(math.log(self.lam), self.nu, 0)
        weights = np.exp(self._log_terms - self.log_z)
        self._weights = weights / weights.sum()
        self._mean = float(np.dot(self._weights, self._ks))
        self._variance = float(np.dot(self._weights, (self._ks - self._mean) ** 2))

    def logpmf_at(self, taus) -> np.ndarray:
        taus = np.asarray(taus, dtype=np.int64)
        if self.lam == 0.0:
            return np.where(taus == 0, 0.0, -np.inf)
        return taus * math.log(self.lam) - self.nu * gammaln(taus + 1.0) - self.log_z

    def log_tail(self, T: int) -> float:
        if T <= 0:
            return 0.0
        if self.lam == 0.0:
            return -math.inf
        return _log_series(math.log(self.lam), self.nu, int(T))[2] - self.log_z

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def variance(self) -> float:
        return self._variance

    def sample(self, size, rng: np.random.Generator) -> np.ndarray:
        cumulative = np.cumsum(self._weights)
        index = np.searchsorted(cumulative, rng.random(size) * cumulative[-1], side="right")
        return np.minimum(index, self._ks.size - 1).astype(np.int64)

    def tilted(self, r: float) -> "CMP":
        return CMP(check_probability("r", r, allow_zero=False, allow_one=True) * self.lam, self.nu)

    def params(self) -> dict:
        return {"lam": self.lam, "nu": self.nu}

    @classmethod
    def fit(cls, histogram, start: tuple[float, float] | None = None) -> "CMP":
        """Maximum likelihood by damped Newton on (log lam, nu), where the log-likelihood is
        concave (an exponential family). ``start = (lam, nu)`` warm-starts (e.g. the last fit).
        nu is kept in [0, CMP_NU_MAX]; all-zero data give CMP(0, 1)."""
        counts = check_histogram(histogram)
        taus = np.flatnonzero(counts)
        weights = counts[taus].astype(np.float64)
        samples = weights.sum()
        if samples == 0 or taus[-1] == 0:
            model = cls(0.0, 1.0)
        else:
            mean_tau = float(np.dot(weights, taus)) / samples
            mean_log_fact = float(np.dot(weights, gammaln(taus + 1.0))) / samples
            variance = float(np.dot(weights, (taus - mean_tau) ** 2)) / samples
            log_lam, nu = _cmp_newton(mean_tau, mean_log_fact, variance, start)
            model = cls(math.exp(log_lam), nu)
        model.fit_report = _fit_report(model, counts)
        return model


def _cmp_objective(theta, mean_tau: float, mean_log_fact: float):
    """Negative mean log-likelihood of CMP at theta = (log lam, nu), its gradient and Hessian;
    None where the series does not converge."""
    log_lam, nu = theta
    if nu < 0 or (nu == 0 and log_lam >= 0):
        return None
    try:
        ks, log_terms, log_z = _log_series(log_lam, nu, 0)
    except ValueError:
        return None
    weights = np.exp(log_terms - log_z)
    log_fact = log_factorials(ks.size)
    expected_tau = float(np.dot(weights, ks))
    expected_log_fact = float(np.dot(weights, log_fact))
    d_tau, d_log_fact = ks - expected_tau, log_fact - expected_log_fact
    value = log_z - log_lam * mean_tau + nu * mean_log_fact
    gradient = np.array([expected_tau - mean_tau, mean_log_fact - expected_log_fact])
    cross = -float(np.dot(weights, d_tau * d_log_fact))
    hessian = np.array([[float(np.dot(weights, d_tau * d_tau)), cross],
                        [cross, float(np.dot(weights, d_log_fact * d_log_fact))]])
    return value, gradient, hessian


def _cmp_start(mean_tau: float, variance: float) -> np.ndarray:
    """Moment guess: mean ~ lam^(1/nu), variance ~ mean / nu."""
    if variance <= 0:   # one bin: the fit runs to the nu bound
        return np.array([CMP_NU_MAX * math.log(mean_tau + 0.5), CMP_NU_MAX])
    nu = min(max(mean_tau / variance, 0.05), 20.0)
    return np.array([nu * math.log(max(mean_tau, 0.5)), nu])


def _cmp_newton(mean_tau: float, mean_log_fact: float, variance: float, start) -> tuple[float, float]:
    bounds_low = np.array([CMP_LOG_LAM_MIN, 0.0])
    bounds_high = np.array([np.inf, CMP_NU_MAX])
    candidates = [_cmp_start(mean_tau, variance), np.array([math.log(mean_tau / (1 + mean_tau)), 0.0])]
    if start is not None and start[0] > 0 and start[1] >= 0:
        candidates.insert(0, np.array([math.log(start[0]), min(float(start[1]), CMP_NU_MAX)]))
    theta, state = None, None
    for candidate in candidates:
        evaluated = _cmp_objective(candidate, mean_tau, mean_log_fact)
        if evaluated is not None and (state is None or evaluated[0] < state[0]):
            theta, state = candidate, evaluated
    for _ in range(100):
        value, gradient, hessian = state
        hessian = hessian + 1e-12 * np.eye(2) * max(1.0, float(np.trace(hessian)))
        step = -np.linalg.solve(hessian, gradient)
        # an active bound fixes that coordinate; Newton on the other one alone
        for index in (0, 1):
            other = 1 - index
            at_low = theta[index] <= bounds_low[index] and step[index] < 0
            at_high = theta[index] >= bounds_high[index] and step[index] > 0
            if at_low or at_high:
                step = np.zeros(2)
                step[other] = -gradient[other] / hessian[other, other]
        decrement = -float(np.dot(gradient, step))
        if decrement < 1e-13 * (1.0 + abs(value)):
            break
        size = 1.0
        accepted = None
        while size > 1e-12:
            trial = np.clip(theta + size * step, bounds_low, bounds_high)
            evaluated = _cmp_objective(trial, mean_tau, mean_log_fact)
            if evaluated is not None and evaluated[0] <= value - 1e-4 * size * decrement:
                accepted = trial, evaluated
                break
            size *= 0.5
        if accepted is None:
            break
        theta, state = accepted
    return float(theta[0]), float(theta[1])


class Poisson(StalenessModel):
    """``P(k) = e^-lam lam^k / k!``, lam >= 0 (lam = 0: all mass at tau = 0)."""

    name = "poisson"
    parameter_count = 1

    def __init__(self, lam: float):
        self.lam = check_nonnegative("Poisson lam", lam)

    def logpmf_at(self, taus) -> np.ndarray:
        taus = np.asarray(taus, dtype=np.int64)
        if self.lam == 0.0:
            return np.where(taus == 0, 0.0, -np.inf)
        return taus * math.log(self.lam) - self.lam - gammaln(taus + 1.0)

    def log_tail(self, T: int) -> float:
        if T <= 0:
            return 0.0
        if self.lam == 0.0:
            return -math.inf
        return _log_series(math.log(self.lam), 1.0, int(T))[2] - self.lam

    @property
    def mean(self) -> float:
        return self.lam

    @property
    def variance(self) -> float:
        return self.lam

    def sample(self, size, rng: np.random.Generator) -> np.ndarray:
        return rng.poisson(self.lam, size=size).astype(np.int64)

    def tilted(self, r: float) -> "Poisson":
        return Poisson(check_probability("r", r, allow_zero=False, allow_one=True) * self.lam)

    def params(self) -> dict:
        return {"lam": self.lam}

    @classmethod
    def fit(cls, histogram) -> "Poisson":
        """Maximum likelihood: lam = mean."""
        counts = check_histogram(histogram)
        model = cls(histogram_mean(counts))
        model.fit_report = _fit_report(model, counts)
        return model


class Empirical(StalenessModel):
    """Smoothed histogram: ``P(k) = (c_k + s G(k)) / (n + s)``.

    c = counts (weights >= 0, trailing zeros dropped), n = sum c, s = ``smoothing`` pseudo-counts,
    G = Geometric(``tail_q``), by default fitted to the counts, so every tau has P > 0 unless all
    data sit at 0. No counts: P = G (default tail_q = 0, the point mass at 0).
    """

    name = "empirical"

    def __init__(self, counts, smoothing: float = 1.0, tail_q: float | None = None):
        weights = np.asarray(counts, dtype=np.float64)
        if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("empirical counts must be a 1-D array of finite numbers >= 0")
        nonzero = np.flatnonzero(weights)
        self.counts = weights[: nonzero[-1] + 1] if nonzero.size else weights[:0]
        self.smoothing = check_positive("smoothing", smoothing)
        self.samples = float(self.counts.sum())
        taus = np.arange(self.counts.size, dtype=np.float64)
        count_mean = float(np.dot(self.counts, taus)) / self.samples if self.samples else 0.0
        if tail_q is None:
            tail_q = count_mean / (1.0 + count_mean)
        self.tail = Geometric(tail_q)
        self._log_total = math.log(self.samples + self.smoothing)
        # suffix sums: _suffix[k] = sum_{j >= k} c_j
        self._suffix = np.append(np.cumsum(self.counts[::-1])[::-1], 0.0)
        mix = self.samples / (self.samples + self.smoothing)
        tail_mean, tail_variance = self.tail.mean, self.tail.variance
        self._mean = mix * count_mean + (1 - mix) * tail_mean
        count_second = float(np.dot(self.counts, taus ** 2)) / self.samples if self.samples else 0.0
        second = mix * count_second + (1 - mix) * (tail_variance + tail_mean ** 2)
        self._variance = max(second - self._mean ** 2, 0.0)

    @property
    def parameter_count(self) -> int:
        return int(np.count_nonzero(self.counts))

    def logpmf_at(self, taus) -> np.ndarray:
        taus = np.asarray(taus, dtype=np.int64)
        inside = taus < self.counts.size
        counts = np.zeros(taus.shape)
        counts[inside] = self.counts[taus[inside]]
        with np.errstate(divide="ignore"):
            log_counts = np.log(counts)
        return np.logaddexp(log_counts, math.log(self.smoothing) + self.tail.logpmf_at(taus)) - self._log_total

    def log_tail(self, T: int) -> float:
        if T <= 0:
            return 0.0
        count_tail = self._suffix[min(int(T), self.counts.size)]
        log_count_tail = math.log(count_tail) if count_tail > 0 else -math.inf
        return float(np.logaddexp(log_count_tail, math.log(self.smoothing) + self.tail.log_tail(T))) - self._log_total

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def variance(self) -> float:
        return self._variance

    def sample(self, size, rng: np.random.Generator) -> np.ndarray:
        from_tail = rng.random(size) * (self.samples + self.smoothing) >= self.samples
        draws = self.tail.sample(size, rng)
        if self.samples:
            cumulative = np.cumsum(self.counts)
            picked = np.searchsorted(cumulative, rng.random(size) * self.samples, side="right")
            draws = np.where(from_tail, draws, np.minimum(picked, self.counts.size - 1))
        return draws.astype(np.int64)

    def tilted(self, r: float) -> "Empirical":
        r = check_probability("r", r, allow_zero=False, allow_one=True)
        with np.errstate(under="ignore"):
            counts = self.counts * np.power(r, np.arange(self.counts.size))
        q = self.tail.q
        return Empirical(counts, self.smoothing * (1.0 - q) / (1.0 - r * q), tail_q=r * q)

    def params(self) -> dict:
        taus = np.flatnonzero(self.counts)
        return {"smoothing": self.smoothing, "tail_q": self.tail.q,
                "taus": [int(t) for t in taus], "counts": [float(c) for c in self.counts[taus]]}

    @classmethod
    def fit(cls, histogram, smoothing: float = 1.0) -> "Empirical":
        """The histogram itself (its nonparametric maximum likelihood), smoothed."""
        counts = check_histogram(histogram)
        model = cls(counts, smoothing)
        model.fit_report = _fit_report(model, counts)
        return model



MODELS = {"geometric": Geometric, "poisson": Poisson, "cmp": CMP, "empirical": Empirical}
MODEL_NAMES = tuple(MODELS) + ("auto",)


REFERENCE_MODELS = ("empirical",)  # fitted and shown beside the others, never the "best"


def best_of(fitted: dict) -> StalenessModel:
    """The best staleness model: the lowest AIC among the parametric models of ``fitted``
    (name -> fitted model), ties going to the earlier name.  The empirical histogram is a
    reference line, not a contender: it is the data itself (smoothed), so it would win on
    nearly every run and say nothing about the law.  The one definition behind ``"auto"``, the
    train summary's, the experiment tables' and the report's "best by AIC"."""
    contenders = [model for name, model in fitted.items() if name not in REFERENCE_MODELS]
    if not contenders:
        raise ValueError(f"no parametric staleness model among {sorted(fitted)} to pick the best of")
    return min(contenders, key=lambda model: model.fit_report.aic)


def fit_best(histogram) -> StalenessModel:
    """Fit every parametric model in MODELS (not the empirical reference) and return
    :func:`best_of` them."""
    counts = check_histogram(histogram)
    return best_of({name: fit_model(name, counts) for name in MODELS if name not in REFERENCE_MODELS})


def fit_model(name: str, histogram, previous: StalenessModel | None = None) -> StalenessModel:
    """Fit the model called ``name`` (or ``"auto"``: :func:`fit_best`); a previous CMP warm-starts CMP."""
    if name == "auto":
        return fit_best(histogram)
    if name not in MODELS:
        raise ValueError(f"unknown staleness model {name!r}; choose one of {list(MODEL_NAMES)}")
    if name == "cmp" and isinstance(previous, CMP) and previous.lam > 0:
        return CMP.fit(histogram, start=(previous.lam, previous.nu))
    return MODELS[name].fit(histogram)


PRIOR_MEAN_PER_OTHER_WORKER = 0.5  # measured: mean tau ~ (m - 1) / 2 (read before, claim after the gradient)


def prior(workers: int) -> Poisson:
    """Staleness before any data: Poisson((workers - 1) / 2) (workers = 1: all mass at tau = 0).

    Each of the other m - 1 workers lands about one update per cycle, and a worker's read-to-claim
    window is about half its cycle (the gradient; the write follows the claim): on 16 cores the
    measured mean was 8.0 at m = 16, Poisson-like."""
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return Poisson(PRIOR_MEAN_PER_OTHER_WORKER * float(workers - 1))
