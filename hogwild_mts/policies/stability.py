"""The delay-stability limit behind the ``auto`` policy (docs/policies.md, section "auto").

Mean-field model of Hogwild! on one curvature direction lambda: update t moves x by
``-lr * lambda * v``, where the worker's private velocity ``v`` sums its own gradients read
``tau`` updates ago (tau ~ P) and, with heavy-ball momentum mu, its earlier ones, one worker
cycle (``workers`` updates) apart, weighted mu^k.  With ``a = lr * lambda`` the
characteristic equation is

    z - 1 + a * H(z) = 0,   H(z) = sum_tau P(tau) z^-tau / (1 - mu z^-workers),

and the run is stable for ``0 < a < a_max``, the smallest ``a = -(z - 1) / H(z)`` that is
real and positive on the unit circle ``z = e^{i w}`` (Nyquist).  One worker without delay:
``a_max = 2 (1 + mu)``, heavy ball's limit.
"""

from __future__ import annotations

import numpy as np

MIN_FREQUENCIES = 4096      # frequencies w in (0, pi] scanned at least
FREQUENCIES_PER_LAG = 8     # and this many per lag of the longest delay (tau + worker cycle)


def delay_stability_limit(pmf: np.ndarray, workers: int, momentum: float) -> float:
    """``a_max`` (the largest stable ``lr * lambda``, dimensionless, > 0, possibly inf) for
    staleness law ``pmf`` (probabilities of tau = 0, 1, ..., summing to 1), ``workers`` >= 1
    updates between a worker's own updates and heavy-ball ``momentum`` in [0, 1).

    Scans ``z = e^{i w}`` on a uniform grid of (0, pi] (w = pi exactly included, where every
    term is real) and interpolates the crossings of the negative real axis linearly."""
    pmf = np.asarray(pmf, dtype=np.float64)
    frequencies = MIN_FREQUENCIES
    while frequencies < FREQUENCIES_PER_LAG * (pmf.size + workers):
        frequencies *= 2
    w = np.pi * np.arange(1, frequencies + 1) / frequencies
    # P^(w) = sum_tau P(tau) e^{-i w tau}: one FFT of length 2N gives w = pi k / N
    transform = np.fft.fft(pmf, 2 * frequencies)[1:frequencies + 1]
    transfer = transform / (1.0 - momentum * np.exp(-1j * w * workers))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (np.exp(1j * w) - 1.0) / transfer
    ratio[-1] = ratio[-1].real  # at w = pi every term is real
    finite = np.isfinite(ratio)
    real, imag = ratio.real, ratio.imag
    limit = np.inf
    if finite[-1] and real[-1] < 0.0:
        limit = -real[-1]
    cross = np.flatnonzero(finite[:-1] & finite[1:] & (np.signbit(imag[:-1]) != np.signbit(imag[1:])))
    if cross.size:
        share = imag[cross] / (imag[cross] - imag[cross + 1])
        at = real[cross] + share * (real[cross + 1] - real[cross])
        negative = at[at < 0.0]
        if negative.size:
            limit = min(limit, float(-negative.max()))
    return float(limit)
