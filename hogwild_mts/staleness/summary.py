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


def staleness_summary(histogram: np.ndarray, max_staleness: int) -> dict:
    """Mean, median, p99 and max of tau from counts by tau (the last bin may be an overflow bin)."""
    histogram = np.asarray(histogram, dtype=np.int64)
    total = int(histogram.sum())
    mean = float(np.dot(np.arange(histogram.size), histogram) / total) if total else 0.0
    return {"count": total, "mean": mean, "median": histogram_quantile(histogram, 0.5),
            "p99": histogram_quantile(histogram, 0.99), "max": int(max_staleness)}


def fit_staleness_models(histogram: np.ndarray) -> dict:
    """Fit every staleness model to the run's histogram; ``best`` is :func:`best_of` them (the
    model ``staleness_model="auto"`` picks); the smoothed histogram is listed beside them."""
    if int(np.sum(histogram)) == 0:
        return {}
    fitted = {name: fit_model(name, histogram) for name in MODELS}
    return {"best": best_of(fitted).name, "models": {name: model.to_dict() for name, model in fitted.items()}}
