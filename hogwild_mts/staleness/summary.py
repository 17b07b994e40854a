"""Summaries of a run's staleness histogram: quantiles, mean/median/p99/max, every model's fit."""

from __future__ import annotations

import numpy as np

from hogwild_mts.staleness.models import MODELS, best_of, fit_model


def histogram_quantile(histogram: np.ndarray, q: float) -> int:
    """Smallest tau with cumulative share >= q (0 for an empty histogram)."""
    total = int(histogram.sum())
    if total == 0:
        return 0
    return int(np.searchsorted(np.cumsum(histogram), q * total, side="left"))


TAIL_MULTIPLE = 10  # the tail: tau above this multiple of the median (of 1 when the median is 0)


def tail_threshold(median: int) -> int:
    """The tau above which an update is in the tail: TAIL_MULTIPLE x the median, or
    TAIL_MULTIPLE when the median is 0."""
    return TAIL_MULTIPLE * max(int(median), 1)


def staleness_summary(histogram: np.ndarray, max_staleness: int) -> dict:
    """Mean, median, p99 and max of tau from counts by tau (the last bin may be an overflow
    bin), and the tail: ``tail_above`` (:func:`tail_threshold` of the median) and
    ``tail_share``, the share of updates with tau above it."""
    histogram = np.asarray(histogram, dtype=np.int64)
    total = int(histogram.sum())
    mean = float(np.dot(np.arange(histogram.size), histogram) / total) if total else 0.0
    median = histogram_quantile(histogram, 0.5)
    above = tail_threshold(median)
    return {"count": total, "mean": mean, "median": median,
            "p99": histogram_quantile(histogram, 0.99), "max": int(max_staleness),
            "tail_above": above,
            "tail_share": float(histogram[above + 1:].sum() / total) if total else 0.0}


def tail_note(summary: dict) -> str:
    """One line on the tail of a :func:`staleness_summary`: the share above the threshold and
    the largest tau, with what causes a largest tau far beyond the p99 (a worker descheduled
    by the OS: preemption, not contention between running workers)."""
    text = (f"{100 * summary['tail_share']:.3g}% of updates above tau {summary['tail_above']} "
            f"({TAIL_MULTIPLE}x the median{', taken as 1' if summary['median'] == 0 else ''}); "
            f"max {summary['max']:,}")
    if summary["max"] > max(tail_threshold(summary["p99"]), summary["tail_above"]):
        text += " (a worker descheduled by the OS: preemption, not Hogwild! contention)"
    return text


def fit_staleness_models(histogram: np.ndarray) -> dict:
    """Fit every staleness model to the run's histogram; ``best`` is :func:`best_of` them (the
    lowest AIC among the parametric models, the model ``staleness_model="auto"`` picks); the
    smoothed histogram (``empirical``) is listed beside them as the reference."""
    if int(np.sum(histogram)) == 0:
        return {}
    fitted = {name: fit_model(name, histogram) for name in MODELS}
    return {"best": best_of(fitted).name, "models": {name: model.to_dict() for name, model in fitted.items()}}
