"""The validators every part of the project uses: one message shape, naming the value and what is
allowed.  Each returns the value converted (int or float) or raises ``error`` (ValueError by
default; the data loaders pass DataError)."""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_int(name: str, value, minimum: int, error: type = ValueError) -> int:
    """``value`` as int, unless it is not an integer >= ``minimum`` (bool is not an integer)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_float(name: str, value, allowed: str, error: type) -> float:
    if isinstance(value, bool):
        raise error(f"{name} must be {allowed}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be {allowed}, got {value!r}") from None
    if not math.isfinite(number):
        raise error(f"{name} must be {allowed}, got {value!r}")
    return number


def check_positive(name: str, value, error: type = ValueError) -> float:
    """``value`` as float, unless it is not a finite number > 0."""
    number = _as_float(name, value, "a finite number > 0", error)
    if number <= 0:
        raise error(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_nonnegative(name: str, value, error: type = ValueError) -> float:
    """``value`` as float, unless it is not a finite number >= 0."""
    number = _as_float(name, value, "a finite number >= 0", error)
    if number < 0:
        raise error(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_probability(name: str, value, *, allow_zero: bool, allow_one: bool,
                      error: type = ValueError) -> float:
    """``value`` as float, unless it is not in [0, 1] with the chosen open or closed ends."""
    allowed = f"a finite number in {'[' if allow_zero else '('}0, 1{']' if allow_one else ')'}"
    number = _as_float(name, value, allowed, error)
    if not ((number >= 0 if allow_zero else number > 0) and (number <= 1 if allow_one else number < 1)):
        raise error(f"{name} must be {allowed}, got {value!r}")
    return number


def check_choice(name: str, value, choices, error: type = ValueError):
    """``value`` unless it is not one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_finite_vector(name: str, values, size: int, layout: str) -> np.ndarray:
    """``values`` as a float64 vector of ``size`` finite numbers; ValueError naming the shape
    (``layout`` says what the entries are, e.g. "the weights, then the intercept if fitted")
    or the first entry that is NaN or infinite otherwise."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},) ({layout}), got {vector.shape}")
    bad = np.flatnonzero(~np.isfinite(vector))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] = {float(vector[bad[0]])!r}; every entry must be finite")
    return vector
