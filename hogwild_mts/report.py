"""Summaries of a run for people: staleness statistics and the end-of-run text."""

from __future__ import annotations

import numpy as np


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
    """Fit every staleness model to the run's histogram; ``best`` is the parametric model
    (geometric, poisson, cmp) with the lowest AIC; the smoothed histogram is listed beside them."""
    from hogwild_mts import staleness

    if int(np.sum(histogram)) == 0:
        return {}
    fits = {name: staleness.fit_model(name, histogram).to_dict() for name in staleness.MODELS}
    best = min((name for name in fits if name != "empirical"), key=lambda name: fits[name]["fit"]["aic"])
    return {"best": best, "models": fits}


def _format_fit(fit: dict) -> str:
    params = ", ".join(f"{k}={v:.4g}" for k, v in fit["params"].items() if isinstance(v, float))
    return f"{fit['model']}({params}) TV {fit['fit']['tv']:.3f}"


def format_summary(result) -> str:
    """The end-of-run text of ``hogwild-mts train``."""
    tau = result.staleness_summary()
    lines = [
        f"model {result.model} on {result.data}, {result.workers} worker(s), policy "
        f"{result.policy.get('name')}" + ("  [INTERRUPTED]" if result.interrupted else ""),
        f"final loss      {result.final_loss:.6g} ({result.settings.get('loss', 'training objective')})",
    ]
    if result.final_accuracy is not None:
        split = result.settings.get("accuracy", "train")
        lines.append(f"{split + ' accuracy':<16}{result.final_accuracy:.4f}")
    lines += [
        f"updates         {result.updates:,} (counter {result.counter:,}) in {result.train_seconds:.2f} s "
        f"of training, {result.wall_seconds:.2f} s in all",
        f"updates/s       {result.updates_per_second:,.0f}",
        f"staleness tau   mean {tau['mean']:.3f}  median {tau['median']}  p99 {tau['p99']}  max {tau['max']}",
    ]
    if result.staleness_fit:
        models = result.staleness_fit["models"]
        lines.append(f"staleness fit   best by AIC: {_format_fit(models[result.staleness_fit['best']])}")
        lines.append("                " + "; ".join(_format_fit(models[name]) for name in models
                                                     if name != "empirical"))
    policy = result.policy
    lines.append(f"policy          {policy.get('name')}: {policy.get('formula', '')}")
    if "table_head" in policy:
        lines.append("alpha(tau)      " + ", ".join(f"{a:.4g}" for a in policy["table_head"][:6]) + ", ...")
    return "\n".join(lines)
