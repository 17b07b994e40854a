"""Step-size policies: ``alpha(tau)`` as a finite table that the hot loop indexes.

Interface (every policy, including a user's own):

* ``bind(workers)`` -- called once per run before the first ``table()``; sets the prior.
* ``table()`` -- float64 array ``alpha[0..T-1]``, finite and > 0; ``tau >= T`` uses the last entry.
* ``observe(histogram)`` -- refit from the run's staleness histogram (int64 counts by tau).
* ``refit_every`` -- a worker calls ``observe`` after this many of its own updates; 0 = never.
* ``describe()`` -- a JSON-able dict saying what the policy is and what it fitted.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_TABLE_LENGTH = 256


def check_positive_finite(name: str, value) -> float:
    """Return ``value`` as float, or raise ValueError naming it unless it is finite and > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(number) or number <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


class Policy:
    """Base class: a constant table unless a subclass overrides ``table``/``observe``."""

    name = "policy"
    refit_every = 0

    def bind(self, workers: int) -> None:
        self.workers = int(workers)

    def table(self) -> np.ndarray:
        raise NotImplementedError

    def observe(self, histogram: np.ndarray) -> None:
        """Non-adaptive policies ignore the histogram."""

    def describe(self) -> dict:
        table = self.table()
        return {"name": self.name, "table_head": [float(a) for a in table[:8]]}


class ConstantPolicy(Policy):
    """``alpha(tau) = alpha_c`` for every staleness."""

    name = "constant"

    def __init__(self, alpha: float = 0.1):
        self.alpha = check_positive_finite("alpha", alpha)

    def table(self) -> np.ndarray:
        return np.full(1, self.alpha)

    def describe(self) -> dict:
        return {"name": self.name, "formula": "alpha(tau) = alpha_c", "alpha_c": self.alpha}


class FunctionPolicy(Policy):
    """A plain Python function ``tau -> alpha`` tabulated once for tau = 0..length-1."""

    name = "function"

    def __init__(self, function, length: int = DEFAULT_TABLE_LENGTH):
        if not callable(function):
            raise TypeError(f"a function policy needs a callable, got {function!r}")
        self.function = function
        values = np.array([float(function(tau)) for tau in range(int(length))])
        bad = np.flatnonzero(~np.isfinite(values) | (values <= 0.0))
        if bad.size:
            tau = int(bad[0])
            raise ValueError(f"policy function gave alpha({tau}) = {values[tau]!r}; "
                             "every alpha must be finite and > 0")
        self._table = values

    def table(self) -> np.ndarray:
        return self._table

    def describe(self) -> dict:
        return {"name": self.name, "function": getattr(self.function, "__name__", repr(self.function)),
                "table_head": [float(a) for a in self._table[:8]]}


POLICIES = {"constant": ConstantPolicy}


def make_policy(name: str, **options) -> Policy:
    """Build a registered policy by name; unknown names list what is allowed."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return cls(**options)


def as_policy(policy, alpha: float | None = None) -> Policy:
    """Turn a name, a Policy or a function of tau into a Policy (validated, before workers start)."""
    if isinstance(policy, str):
        return make_policy(policy, **({} if alpha is None else {"alpha": alpha}))
    if alpha is not None:
        raise ValueError("alpha is given twice: pass it to the policy object, not to the engine")
    if isinstance(policy, Policy) or all(hasattr(policy, a) for a in ("bind", "table", "observe")):
        return policy
    if callable(policy):
        return FunctionPolicy(policy)
    raise TypeError(f"policy must be a name, a Policy or a function of tau, got {policy!r}")
