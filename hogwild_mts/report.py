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


def format_summary(result) -> str:
    """The end-of-run text of ``hogwild-mts train``."""
    tau = result.staleness_summary()
    lines = [
        f"model {result.model} on {result.data}, {result.workers} worker(s), policy "
        f"{result.policy.get('name')}" + ("  [INTERRUPTED]" if result.interrupted else ""),
        f"final loss      {result.final_loss:.6g}",
    ]
    if result.final_accuracy is not None:
        lines.append(f"train accuracy  {result.final_accuracy:.4f}")
    lines += [
        f"updates         {result.updates:,} (counter {result.counter:,}) in {result.train_seconds:.2f} s "
        f"of training, {result.wall_seconds:.2f} s in all",
        f"updates/s       {result.updates_per_second:,.0f}",
        f"staleness tau   mean {tau['mean']:.3f}  median {tau['median']}  p99 {tau['p99']}  max {tau['max']}",
    ]
    return "\n".join(lines)
