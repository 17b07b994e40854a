"""Step-size policies: ``alpha(tau)`` as a finite table that the hot loop indexes.

Interface (every policy, including a user's own):

* ``bind(workers, momentum=0.0)`` -- called once per run before the first ``table()``; sets the
  prior.  ``momentum`` in [0, 1) is the explicit heavy-ball momentum every worker applies
  (torch.optim.SGD: ``v = momentum * v + g; theta -= alpha(tau) * v``); only MindTheStep's
  momentum target uses it.  A policy object whose ``bind`` takes no ``momentum`` (written before
  it existed) is bound with ``bind(workers)``.
* ``table()`` -- float64 array ``lr[0..T-1]``, non-empty, finite and >= 0 (0 discards an
  update); ``tau >= T`` uses the last entry.  The hot loops index it without bounds checks, so a
  policy object that is not one of the built-in classes runs wrapped in :class:`CheckedPolicy`:
  :func:`as_policy` checks its table before any worker starts, and every table it gives a worker
  (on refits too) is checked again, failing the run with the reason instead of corrupting it.
* ``observe(histogram)`` -- refit from the run's staleness histogram (int64 counts by tau).
* ``refit_every`` -- a worker calls ``observe`` after this many of its own updates; 0 = never.
* ``describe()`` -- a JSON-able dict saying what the policy is and what it fitted.

A run never binds or refits its policy object: each worker (or the Ray server) owns a *policy
state*, made by :func:`policy_state` (a bound copy), read by :func:`policy_table` and refitted by
:func:`refit_policy`.

Built-in policies keep every entry in ``[lr_min, lr_max]``; by default
``lr_min = 1e-3 * lr`` and ``lr_max = 10 * lr``, and ``lr`` must lie
between them. Formulas, parameters and references: docs/policies.md.
"""

from __future__ import annotations

import copy
import inspect
import math

import numpy as np

from hogwild_mts.core.options import check_int, check_nonnegative, check_positive, check_probability
from hogwild_mts.policies.stability import delay_stability_limit
from hogwild_mts.staleness.models import (MODEL_NAMES, MomentumTarget, StalenessModel, check_histogram,
                                          fit_model, logsumexp, prior)

DEFAULT_TABLE_LENGTH = 256
DEFAULT_LR_MIN_RATIO = 1e-3     # lr_min = ratio * lr when not given
DEFAULT_LR_MAX_RATIO = 10.0     # lr_max = ratio * lr when not given
DEFAULT_REFIT_EVERY = 2000         # own updates between refits of adaptive policies
DEFAULT_MIN_SAMPLES = 1000         # observed staleness values before the prior is replaced
FIT_HORIZON_PER_ENTRY = 4          # histograms are winsorised at 4 * table length before fitting
HEAD = 8                           # table entries shown by describe()

__all__ = ["DEFAULT_TABLE_LENGTH", "Policy", "ConstantPolicy", "InversePolicy", "ExponentialPolicy",
           "TailPolicy", "MindTheStepPolicy", "AutoPolicy", "FunctionPolicy", "CheckedPolicy", "POLICIES",
           "make_policy", "as_policy", "policy_state", "policy_table", "refit_policy", "check_table",
           "step_size"]


def step_size(table: np.ndarray, tau: int) -> float:
    """The table lookup the hot loop does: ``table[min(tau, T - 1)]``."""
    return float(table[min(int(tau), len(table) - 1)])


def check_momentum(momentum) -> float:
    """``momentum`` as float, unless it is not a finite number in [0, 1)."""
    return check_probability("momentum", momentum, allow_zero=True, allow_one=False)


def sets_worker_momentum(policy) -> bool:
    """Whether ``policy`` chooses the workers' momentum itself: it has ``worker_momentum(m)``
    (``auto``), which engines given ``momentum=None`` apply."""
    return callable(getattr(policy, "worker_momentum", None))


def _head(values: np.ndarray) -> list:
    return [float(v) for v in values[:HEAD]]


class Policy:
    """Base class: subclasses define ``table``; non-adaptive ones ignore ``observe``."""

    name = "policy"
    refit_every = 0

    def bind(self, workers: int, momentum: float = 0.0) -> None:
        """Bind to ``workers`` (integer >= 1) workers that apply explicit heavy-ball ``momentum``
        (in [0, 1), torch.optim.SGD semantics); ValueError naming a bad value."""
        self.workers = check_int("workers", workers, 1)
        self.explicit_momentum = check_momentum(momentum)

    def table(self) -> np.ndarray:
        raise NotImplementedError

    def observe(self, histogram: np.ndarray) -> None:
        """Non-adaptive policies ignore the histogram."""

    def describe(self) -> dict:
        return {"name": self.name, "table_head": _head(self.table())}


class BoundedPolicy(Policy):
    """A policy with base step ``lr`` and every entry clipped to [lr_min, lr_max]."""

    formula = ""

    def __init__(self, lr: float, lr_min: float | None, lr_max: float | None,
                 length: int = DEFAULT_TABLE_LENGTH):
        self.lr = check_positive("lr", lr)
        self.lr_min = (DEFAULT_LR_MIN_RATIO * self.lr if lr_min is None
                          else check_positive("lr_min", lr_min))
        self.lr_max = (DEFAULT_LR_MAX_RATIO * self.lr if lr_max is None
                          else check_positive("lr_max", lr_max))
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min ({lr_min!r}) must be <= lr_max ({lr_max!r})")
        if not self.lr_min <= self.lr <= self.lr_max:
            raise ValueError(f"lr ({lr!r}) must lie in [lr_min, lr_max] = "
                             f"[{self.lr_min!r}, {self.lr_max!r}]")
        self.length = check_int("length", length, 1)

    def _clip(self, values: np.ndarray) -> np.ndarray:
        return np.clip(values, self.lr_min, self.lr_max).astype(np.float64)

    def parameters(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "formula": self.formula, "lr": self.lr,
                "lr_min": self.lr_min, "lr_max": self.lr_max, "parameters": self.parameters(),
                "table_length": int(self.table().size), "table_head": _head(self.table())}


class ConstantPolicy(BoundedPolicy):
    """``alpha(tau) = lr`` for every staleness (a one-entry table)."""

    name = "constant"
    formula = "alpha(tau) = lr"

    def __init__(self, lr: float = 0.1, lr_min: float | None = None, lr_max: float | None = None):
        super().__init__(lr, lr_min, lr_max, length=1)
        self._table = np.full(1, self.lr)

    def table(self) -> np.ndarray:
        return self._table


class InversePolicy(BoundedPolicy):
    """``alpha(tau) = lr / max(1, tau)`` (Zhang et al. 2016); never increases with tau."""

    name = "inverse"
    formula = "alpha(tau) = lr / max(1, tau)"

    def __init__(self, lr: float = 0.1, lr_min: float | None = None, lr_max: float | None = None,
                 length: int = DEFAULT_TABLE_LENGTH):
        super().__init__(lr, lr_min, lr_max, length)
        self._table = self._clip(self.lr / np.maximum(1.0, np.arange(self.length)))

    def table(self) -> np.ndarray:
        return self._table


class ExponentialPolicy(BoundedPolicy):
    """``alpha(tau) = lr exp(-beta tau)`` (FLeet-style), beta >= 0; never increases with tau."""

    name = "exponential"
    formula = "alpha(tau) = lr * exp(-beta * tau)"

    def __init__(self, lr: float = 0.1, beta: float = 0.1, lr_min: float | None = None,
                 lr_max: float | None = None, length: int = DEFAULT_TABLE_LENGTH):
        super().__init__(lr, lr_min, lr_max, length)
        self.beta = check_nonnegative("beta", beta)
        self._table = self._clip(self.lr * np.exp(-self.beta * np.arange(self.length)))

    def parameters(self) -> dict:
        return {"beta": self.beta}

    def table(self) -> np.ndarray:
        return self._table


class AdaptivePolicy(BoundedPolicy):
    """A policy refitted from the staleness histogram every ``refit_every`` own updates.

    Until ``min_samples`` staleness values have been observed it uses the prior Poisson(m - 1)
    set by ``bind(m)``. Histograms are winsorised at ``4 * length`` (counts further out are
    counted at that tau) so a refit costs a bounded amount of work.
    """

    def __init__(self, lr, lr_min, lr_max, length, refit_every, min_samples):
        super().__init__(lr, lr_min, lr_max, length)
        self.refit_every = check_int("refit_every", refit_every, 0)
        self.min_samples = check_int("min_samples", min_samples, 0)
        self.samples = 0
        self._table = None

    def bind(self, workers: int, momentum: float = 0.0) -> None:
        super().bind(workers, momentum)
        self.prior = prior(self.workers)
        self.samples = 0
        self._refit(None)

    def observe(self, histogram: np.ndarray) -> None:
        counts = check_histogram(histogram)
        samples = int(counts.sum())
        if samples < self.min_samples or samples == 0:
            return
        horizon = FIT_HORIZON_PER_ENTRY * self.length
        if counts.size > horizon + 1:
            counts = np.append(counts[:horizon], counts[horizon:].sum())
        self.samples = samples
        self._refit(counts)

    def _refit(self, counts: np.ndarray | None) -> None:
        """Rebuild the table from ``counts`` (None: from the prior)."""
        raise NotImplementedError

    def table(self) -> np.ndarray:
        if self._table is None:
            raise RuntimeError(f"the {self.name} policy needs bind(workers) before table()")
        return self._table

    def describe(self) -> dict:
        out = super().describe()
        out.update(refit_every=self.refit_every, min_samples=self.min_samples,
                   samples_seen=self.samples, using_prior=self.samples == 0)
        return out


class TailPolicy(AdaptivePolicy):
    """TAIL-tau (ASAP.SGD): ``alpha(tau) = lr (1 + A (1 - 2 F(tau)))``, 0 <= A <= 1.

    F is the empirical CDF of the observed tau (the prior's CDF before ``min_samples``), so fresh
    gradients get up to (1 + A) lr and the stalest down to (1 - A) lr; never increases
    with tau.
    """

    name = "tail"
    formula = "alpha(tau) = lr * (1 + A * (1 - 2 * F(tau))), F = CDF of observed tau"

    def __init__(self, lr: float = 0.1, A: float = 0.5, lr_min: float | None = None,
                 lr_max: float | None = None, length: int = DEFAULT_TABLE_LENGTH,
                 refit_every: int = DEFAULT_REFIT_EVERY, min_samples: int = DEFAULT_MIN_SAMPLES):
        super().__init__(lr, lr_min, lr_max, length, refit_every, min_samples)
        self.A = check_probability("A", A, allow_zero=True, allow_one=True)

    def _refit(self, counts):
        if counts is None:
            cdf = np.cumsum(self.prior.pmf(self.length))
        else:
            head = np.zeros(self.length)
            stop = min(self.length, counts.size)
            head[:stop] = counts[:stop]
            cdf = np.cumsum(head) / counts.sum()
        self.cdf = np.minimum(np.maximum.accumulate(cdf), 1.0)
        self._table = self._clip(self.lr * (1.0 + self.A * (1.0 - 2.0 * self.cdf)))

    def parameters(self) -> dict:
        return {"A": self.A}

    def describe(self) -> dict:
        out = super().describe()
        out["cdf_source"] = (f"prior Poisson(lam={self.prior.lam!r})" if self.samples == 0
                             else f"observed ({self.samples} staleness values)")
        out["cdf_head"] = _head(self.cdf)
        return out


TARGETS = ("momentum", "shrink")
DEFAULT_TARGET = "shrink"
DEFAULT_MU = 0.5
DEFAULT_CHI2 = 0.03                # default shrink budget E_P[(alpha / lr)^2] - 1 (docs/results.md)
DEFAULT_STALENESS_MODEL = "empirical"
MAX_TILT = 50.0                    # largest -log r the chi2 solver tries (r = e^-50: only the freshest bin)


def chi2_of_tilt(log_p: np.ndarray, tilt: float) -> float:
    """``log(1 + chi2)`` of the shrink target Q(k) ~ e^(-tilt k) P(k) against P over table bins
    k = 0..T-1: ``log E_P[e^(-2 tilt k)] - 2 log E_P[e^(-tilt k)]``.  Non-decreasing in
    ``tilt`` >= 0, 0 at tilt = 0."""
    k = np.arange(log_p.size)
    possible = log_p > -np.inf
    return (logsumexp(log_p[possible] - 2.0 * tilt * k[possible])
            - 2.0 * logsumexp(log_p[possible] - tilt * k[possible]))


def shrink_ratio_for_chi2(log_p: np.ndarray, chi2: float) -> float:
    """The r in (0, 1] whose shrink target spends exactly the budget ``chi2`` over the binned law
    ``exp(log_p)`` (bisection on -log r, to 1e-12 relative); where even r -> 0 spends less (P has
    little spread, e.g. one worker), r = e^-MAX_TILT."""
    goal = math.log1p(chi2)
    if chi2 == 0.0 or chi2_of_tilt(log_p, MAX_TILT) <= goal:
        return 1.0 if chi2 == 0.0 else math.exp(-MAX_TILT)
    low, high = 0.0, 1.0 / log_p.size
    while chi2_of_tilt(log_p, high) < goal:
        low, high = high, min(2.0 * high, MAX_TILT)
    while high - low > 1e-12 * high:
        middle = 0.5 * (low + high)
        if chi2_of_tilt(log_p, middle) < goal:
            low = middle
        else:
            high = middle
    return math.exp(-0.5 * (low + high))


class MindTheStepPolicy(AdaptivePolicy):
    """MindTheStep: ``alpha(k) = lr Q(k) / P(k)``, tempered, renormalised and clipped.

    P = the staleness model (``staleness_model``: empirical (default), poisson, geometric, cmp or
    auto by AIC), refitted online; Q = the target:

    * ``shrink`` (default): Q(k) proportional to r^k P(k) over the table bins (the last bin, every
      tau >= T-1, at k = T-1), so ``alpha(k) = lr r^k / E_P[r^k]``:
      fresher gradients weigh more, no weight depends on 1/P(k).  ``r`` in (0, 1] fixed, or (the
      default) solved at every refit so that the step's relative variance
      ``E_P[(alpha / lr)^2] - 1`` (the chi-square divergence of Q from P) equals ``chi2``;
      that shifts the staleness about sqrt(log(1 + chi2)) standard deviations down, whatever m.
    * ``momentum``: Q such that Q convolved with the workers' explicit momentum kernel
      Geometric(mu_e) (``bind(m, momentum=mu_e)``) is Geometric(mu), 0 <= mu < 1:
      :class:`~hogwild_mts.staleness.models.MomentumTarget`; Q = Geometric(mu) when mu_e = 0,
      the point mass at 0 (capped: the explicit momentum alone exceeds mu) when mu_e >= mu.
      Weights of order 1/P(k) on rare tau.  The shrink target ignores explicit momentum.

    With tempering beta in [0, 1]: ``alpha(k) = lr w(k) / E_P[w]``, ``w = (Q/P)^beta``; then
    clipped to [lr_min, lr_max].  The table works on binned laws: entry T-1 stands for
    every tau >= T-1, so P and Q there are tail masses.  Without clipping and with beta = 1,
    ``sum_k P(k) alpha(k) = lr`` and ``P(k) alpha(k) / lr = Q(k)`` hold exactly over the
    bins.  Where P(k) = 0 the ratio is +inf (lr_max) if Q(k) > 0 and 1 if Q(k) = 0.
    ``describe()`` reports how far clipping moved E_P[alpha] from lr and P * alpha / lr
    from Q.
    """

    name = "mindthestep"

    def __init__(self, lr: float = 0.1, target: str = DEFAULT_TARGET, mu: float | None = None,
                 r: float | None = None, chi2: float | None = None, beta: float = 1.0,
                 staleness_model: str = DEFAULT_STALENESS_MODEL, lr_min: float | None = None,
                 lr_max: float | None = None, length: int = DEFAULT_TABLE_LENGTH,
                 refit_every: int = DEFAULT_REFIT_EVERY, min_samples: int = DEFAULT_MIN_SAMPLES):
        super().__init__(lr, lr_min, lr_max, length, refit_every, min_samples)
        if target not in TARGETS:
            raise ValueError(f"unknown mindthestep target {target!r}; choose one of {list(TARGETS)}")
        if staleness_model not in MODEL_NAMES:
            raise ValueError(f"unknown staleness_model {staleness_model!r}; choose one of {list(MODEL_NAMES)}")
        if mu is not None:
            check_probability("mu", mu, allow_zero=True, allow_one=False)
        if r is not None:
            check_probability("r", r, allow_zero=False, allow_one=True)
        if chi2 is not None:
            check_nonnegative("chi2", chi2)
        if target == "momentum" and (r is not None or chi2 is not None):
            given = f"r={r!r}" if r is not None else f"chi2={chi2!r}"
            raise ValueError(f"{given} applies only to target='shrink'; target='momentum' takes mu")
        if target == "shrink" and mu is not None:
            raise ValueError(f"mu={mu!r} applies only to target='momentum'; target='shrink' takes r or chi2")
        if r is not None and chi2 is not None:
            raise ValueError(f"give the shrink target r={r!r} or chi2={chi2!r}, not both")
        self.target = target
        self.mu = (DEFAULT_MU if mu is None else float(mu)) if target == "momentum" else None
        self.r = None if r is None else float(r)
        self.chi2 = (DEFAULT_CHI2 if chi2 is None else float(chi2)) \
            if target == "shrink" and r is None else None
        self.beta = check_probability("beta", beta, allow_zero=True, allow_one=True)
        self.staleness_model = staleness_model
        self.model: StalenessModel | None = None
        self.r_used = self.r

    @property
    def formula(self) -> str:
        if self.target == "momentum":
            q = "Geometric(mu) deconvolved by Geometric(mu_e), mu_e = explicit momentum"
        else:
            q = "r^k P(k) / E_P[r^k]" + ("" if self.chi2 is None else ", r solving E_P[(Q/P)^2] - 1 = chi2")
        return (f"alpha(k) = clip(lr * (Q(k)/P(k))^beta / E_P[(Q/P)^beta], lr_min, lr_max), "
                f"Q = {q}, P = {self.staleness_model} staleness model")

    def target_model(self, model: StalenessModel) -> StalenessModel:
        """Q for the staleness model P = ``model`` before binning (momentum: given the explicit
        momentum of ``bind``; shrink: tilted by the r of the last refit; the table tilts the
        binned law, the last bin by r^(T-1))."""
        if self.target == "momentum":
            return MomentumTarget(self.mu, self.explicit_momentum)
        return model.tilted(self.r_used)

    def _refit(self, counts):
        if counts is None:
            self.model = self.prior
        else:
            self.model = fit_model(self.staleness_model, counts, previous=self.model)
        log_p = self.model.log_binned_pmf(self.length)
        if self.target == "momentum":
            log_q = self.target_model(self.model).log_binned_pmf(self.length)
        else:
            if self.chi2 is not None:
                self.r_used = shrink_ratio_for_chi2(log_p, self.chi2)
            log_q = log_p + math.log(self.r_used) * np.arange(self.length)
            log_q -= logsumexp(log_q[log_q > -np.inf])
        possible = log_p > -np.inf
        with np.errstate(invalid="ignore", over="ignore"):
            log_ratio = np.where(possible, log_q - log_p, np.where(log_q > -np.inf, np.inf, 0.0))
            log_weight = np.where(np.isinf(log_ratio), log_ratio, self.beta * log_ratio) \
                if self.beta > 0 else np.zeros(self.length)
            log_norm = logsumexp(log_p[possible] + log_weight[possible])
            raw = self.lr * np.exp(log_weight - log_norm)
        self._table = self._clip(raw)
        self.p_binned, self.q_binned = np.exp(log_p), np.exp(log_q)
        self.unclipped_head = raw[:HEAD]
        self.clipped_low = int(np.count_nonzero(raw < self.lr_min))
        self.clipped_high = int(np.count_nonzero(raw > self.lr_max))
        self.clipped_mass = float(self.p_binned[(raw < self.lr_min) | (raw > self.lr_max)].sum())

    def parameters(self) -> dict:
        if self.target == "momentum":
            target = {"mu": self.mu}
        else:
            target = {"r": self.r} if self.chi2 is None else {"chi2": self.chi2}
        return {"target": self.target, **target, "beta": self.beta, "staleness_model": self.staleness_model}

    def describe(self) -> dict:
        out = super().describe()
        table = self.table()
        achieved = float(np.dot(self.p_binned, table))
        profile = self.p_binned * table / self.lr
        out.update(
            fitted_model=self.model.to_dict(),
            target_model=self.target_model(self.model).to_dict(),
            expected_alpha=achieved,
            expected_alpha_relative_error=achieved / self.lr - 1.0,
            step_chi2=float(np.dot(self.p_binned, (table / self.lr) ** 2)) - 1.0,
            target_tv=0.5 * float(np.abs(profile - self.q_binned).sum()),
            clipped_low=self.clipped_low, clipped_high=self.clipped_high,
            clipped_mass=self.clipped_mass,
            unclipped_head=_head(self.unclipped_head),
            explicit_momentum=self.explicit_momentum,
        )
        if self.target == "shrink":
            out["r"] = self.r_used
        else:
            target = self.target_model(self.model)
            out.update(implicit_momentum=target.implicit_momentum, momentum_capped=target.capped)
        return out


DEFAULT_CURVATURE = 1.2        # auto: lr * lambda_max assumed for the step tuned at m = 1
DEFAULT_GAIN = 0.5             # auto: target effective step lr / (1 - mu), over lr
DEFAULT_MAX_MOMENTUM = 0.75    # auto: the largest momentum it sets
MOMENTUM_TOLERANCE = 1e-4      # auto: bisection width of the momentum it sets


class AutoPolicy(AdaptivePolicy):
    """``auto``: the step for ``workers`` workers from the step ``lr`` tuned on one worker,
    and (through :meth:`worker_momentum`) the workers' heavy-ball momentum; docs/policies.md.

    With ``a_max(mu, P, m)`` the mean-field delay-stability limit of
    :func:`~hogwild_mts.policies.stability.delay_stability_limit` (P = the staleness law: the
    prior Poisson((m - 1) / 2) until ``min_samples`` values are seen, then the observed
    histogram, refitted every ``refit_every`` own updates) and ``mu`` the momentum the policy is
    bound with (``bind(m, momentum=mu)``: the engine's resolved momentum):

        alpha(tau) = lr * min(1 - mu, a_max(mu, P, m) / curvature)    for every tau

    (a one-entry table, clipped to [lr_min, lr_max]): the effective step
    ``lr / (1 - mu)`` never exceeds ``lr``, and ``lr * lambda_max`` stays below the
    delay limit if ``lr * lambda_max = curvature``.  ``worker_momentum(m)`` is the smallest
    mu in [0, max_momentum] whose delay limit allows the effective step ``gain * lr``:
    ``a_max(mu, prior, m) / (1 - mu) >= gain * curvature`` (0 for one worker).  Never increases
    with the delays; one worker without momentum: exactly ``lr``.
    """

    name = "auto"
    formula = "alpha(tau) = lr * min(1 - mu, a_max(mu, P, m) / curvature), mu = worker momentum"

    def __init__(self, lr: float = 0.1, curvature: float = DEFAULT_CURVATURE,
                 gain: float = DEFAULT_GAIN, max_momentum: float = DEFAULT_MAX_MOMENTUM,
                 lr_min: float | None = None, lr_max: float | None = None,
                 refit_every: int = DEFAULT_REFIT_EVERY, min_samples: int = DEFAULT_MIN_SAMPLES):
        super().__init__(lr, lr_min, lr_max, DEFAULT_TABLE_LENGTH, refit_every, min_samples)
        self.curvature = check_positive("curvature", curvature)
        self.gain = check_probability("gain", gain, allow_zero=False, allow_one=True)
        self.max_momentum = check_momentum(max_momentum)

    def worker_momentum(self, workers: int) -> float:
        """The momentum in [0, max_momentum] the workers apply when the user gives none, from
        ``workers`` and the prior staleness law (fixed for the run); 0 for one worker."""
        workers = check_int("workers", workers, 1)
        law = prior(workers).pmf(FIT_HORIZON_PER_ENTRY * self.length)
        law /= law.sum()
        goal = self.gain * self.curvature

        def enough(mu: float) -> bool:
            return delay_stability_limit(law, workers, mu) >= goal * (1.0 - mu)

        if enough(0.0):
            return 0.0
        if not enough(self.max_momentum):
            return self.max_momentum
        low, high = 0.0, self.max_momentum
        while high - low > MOMENTUM_TOLERANCE:
            middle = 0.5 * (low + high)
            low, high = (low, middle) if enough(middle) else (middle, high)
        return high

    def _refit(self, counts):
        if counts is None:
            law = self.prior.pmf(FIT_HORIZON_PER_ENTRY * self.length)
        else:
            law = counts.astype(np.float64)
        law = law / law.sum()
        self.stability_limit = delay_stability_limit(law, self.workers, self.explicit_momentum)
        self.mean_staleness = float(np.dot(np.arange(law.size), law))
        share = min(1.0 - self.explicit_momentum, self.stability_limit / self.curvature)
        self._table = self._clip(np.full(1, self.lr * share))

    def parameters(self) -> dict:
        return {"curvature": self.curvature, "gain": self.gain, "max_momentum": self.max_momentum}

    def describe(self) -> dict:
        out = super().describe()
        out.update(momentum=self.explicit_momentum, stability_limit=self.stability_limit,
                   mean_staleness=self.mean_staleness,
                   effective_step=float(self.table()[0]) / (1.0 - self.explicit_momentum))
        return out


class FunctionPolicy(Policy):
    """A plain Python function ``tau -> lr`` tabulated once for tau = 0..length-1.

    Only the table and the function's name are kept, so the policy pickles to spawned workers
    even when the function (a lambda, a closure) does not."""

    name = "function"

    def __init__(self, function, length: int = DEFAULT_TABLE_LENGTH):
        if not callable(function):
            raise TypeError(f"a function policy needs a callable, got {function!r}")
        self.function_name = getattr(function, "__name__", repr(function))
        source = f"policy function {self.function_name!r}"
        values = []
        for tau in range(check_int("length", length, 1)):
            values.append(_calling(source, f"at tau = {tau}", function, tau))
        self._table = check_table(values, source)

    def table(self) -> np.ndarray:
        return self._table

    def describe(self) -> dict:
        return {"name": self.name, "function": self.function_name,
                "table_head": _head(self._table)}


POLICIES = {"constant": ConstantPolicy, "inverse": InversePolicy, "exponential": ExponentialPolicy,
            "tail": TailPolicy, "mindthestep": MindTheStepPolicy, "auto": AutoPolicy}


def make_policy(name: str, **options) -> Policy:
    """Build a registered policy by name; unknown names and options list what is allowed."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
    try:
        return cls(**options)
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        allowed = [p for p in inspect.signature(cls).parameters]
        unknown = sorted(set(options) - set(allowed))
        raise ValueError(f"policy {name!r} got unknown option(s) {unknown}; allowed: {allowed}") from None


class PolicyError(ValueError):
    """A user's policy (object or function) raised; the message names it, where, and the error."""


def _calling(source: str, where: str, function, *arguments):
    """``function(*arguments)``; an exception it raises (the user's code) becomes a PolicyError
    naming ``source`` and ``where``, chained to the original."""
    try:
        return function(*arguments)
    except PolicyError:
        raise
    except Exception as error:
        raise PolicyError(f"{source} raised {type(error).__name__} {where}: {error}") from error


def check_table(values, source: str) -> np.ndarray:
    """``values`` as a float64 1-d array, unless it is empty or an entry is NaN, infinite or
    negative: then ValueError naming ``source``, the first bad tau and its value."""
    try:
        table = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        table = None
    if table is None or table.ndim != 1 or table.size == 0:
        raise ValueError(f"{source} gave the step-size table {values!r}; a table must be a "
                         "non-empty 1-d array of finite numbers >= 0")
    bad = np.flatnonzero(~np.isfinite(table) | (table < 0.0))
    if bad.size:
        tau = int(bad[0])
        raise ValueError(f"{source} gave alpha({tau}) = {float(table[tau])!r}; every entry of a "
                         "step-size table must be finite and >= 0")
    return table


class CheckedPolicy(Policy):
    """A policy object that is not one of the built-in classes (any object with ``bind``,
    ``table``, ``observe``), with every table it gives checked by :func:`check_table`.  Other
    attributes are the wrapped object's."""

    def __init__(self, policy):
        self.policy = policy
        self.name = str(getattr(policy, "name", type(policy).__name__))

    @property
    def refit_every(self) -> int:
        return int(getattr(self.policy, "refit_every", 0) or 0)

    def bind(self, workers: int, momentum: float = 0.0) -> None:
        _calling(f"policy {self.name!r}", "in bind()", _bind, self.policy, workers, momentum)

    def table(self) -> np.ndarray:
        source = f"policy {self.name!r}"
        return check_table(_calling(source, "in table()", self.policy.table), source)

    def observe(self, histogram: np.ndarray) -> None:
        _calling(f"policy {self.name!r}", "in observe()", self.policy.observe, histogram)

    def describe(self) -> dict:
        method = getattr(self.policy, "describe", None)
        return method() if callable(method) else {"name": self.name}

    def __getattr__(self, attribute):
        policy = self.__dict__.get("policy")  # absent while a copy is being built
        if policy is None:
            raise AttributeError(attribute)
        return getattr(policy, attribute)


BUILT_IN_POLICIES = (*POLICIES.values(), FunctionPolicy, CheckedPolicy)


def _bind(policy, workers: int, momentum: float) -> None:
    """``policy.bind(workers, momentum)`` after checking ``momentum`` (in [0, 1)); a policy
    object whose ``bind`` has no ``momentum`` parameter (nor ``**kwargs``) gets
    ``bind(workers)``: it was written before explicit momentum was passed and ignores it."""
    momentum = check_momentum(momentum)
    try:
        parameters = inspect.signature(policy.bind).parameters.values()
    except (TypeError, ValueError):   # a builtin without a signature: the old interface
        parameters = ()
    if any(p.name == "momentum" or p.kind is p.VAR_KEYWORD for p in parameters):
        policy.bind(workers, momentum=momentum)
    else:
        policy.bind(workers)


def policy_state(policy, workers: int, momentum: float = 0.0):
    """The policy state of one worker (or of the Ray server): a copy of the run's ``policy``
    bound to ``workers`` workers that apply explicit heavy-ball ``momentum`` (in [0, 1)).

    The state is the only object a run binds and refits; ``policy`` itself is never changed.
    ValueError naming a bad ``workers`` or ``momentum``.
    """
    state = copy.deepcopy(policy)
    _bind(state, workers, momentum)
    return state


def policy_table(state, dtype=np.float64) -> np.ndarray:
    """The step-size table of a policy ``state`` as a contiguous array of ``dtype`` (the hot
    loops index it without bounds checks)."""
    return np.ascontiguousarray(state.table(), dtype=dtype)


def refit_policy(state, histogram: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Refit the policy ``state`` in place on ``histogram`` (int64 counts by tau); return its
    new :func:`policy_table`.  Whether and when to refit is the caller's schedule."""
    state.observe(histogram)
    return policy_table(state, dtype)


def as_policy(policy, lr: float | None = None) -> Policy:
    """Turn a name, a Policy or a function of tau into a Policy (validated, before workers start).
    A policy object is copied: fitting never changes the caller's object.  Any other policy
    object is wrapped in a :class:`CheckedPolicy` and its table checked once, bound to one worker."""
    if isinstance(policy, str):
        return make_policy(policy, **({} if lr is None else {"lr": lr}))
    if lr is not None:
        raise ValueError("lr is given twice: pass it to the policy object, not to the engine")
    if type(policy) in BUILT_IN_POLICIES:
        return copy.deepcopy(policy)
    if isinstance(policy, Policy) or all(hasattr(policy, a) for a in ("bind", "table", "observe")):
        checked = CheckedPolicy(copy.deepcopy(policy))
        policy_table(policy_state(checked, 1))
        return checked
    if callable(policy):
        return FunctionPolicy(policy)
    raise TypeError(f"policy must be a name, a Policy or a function of tau, got {policy!r}")
