"""The end-of-run text of ``hogwild-mts train`` and its metrics.json."""

from __future__ import annotations

from hogwild_mts.core.files import strict_json


def metrics_json(result) -> str:
    """The text of metrics.json: everything but the weights, with the intercept."""
    metrics = result.to_dict()
    metrics["intercept"] = result.intercept
    return strict_json(metrics)


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
