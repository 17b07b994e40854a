"""The end-of-run text of ``hogwild-mts train`` and its metrics.json."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hogwild_mts.core.files import strict_json
from hogwild_mts.staleness.models import REFERENCE_MODELS
from hogwild_mts.staleness.summary import fit_staleness_models, staleness_summary, tail_note


def metrics_json(result) -> str:
    """The text of metrics.json: everything but the weights, with the intercept."""
    metrics = result.to_dict()
    metrics["intercept"] = result.intercept
    return strict_json(metrics)


def _format_fit(fit: dict) -> str:
    params = ", ".join(f"{k}={v:.4g}" for k, v in fit["params"].items() if isinstance(v, float))
    return f"{fit['model']}({params}) TV {fit['fit']['tv']:.3f}"


def _staleness_lines(tau: dict, fits: dict) -> list[str]:
    """The staleness lines of a summary: mean, median, p99 and max of tau; the tail (share
    above 10x the median, the largest tau and what causes it); the best parametric model by
    AIC, the others, and the empirical histogram as the reference (TV 0 by construction)."""
    lines = [f"staleness tau   mean {tau['mean']:.3f}  median {tau['median']}  p99 {tau['p99']}  "
             f"max {tau['max']}",
             f"staleness tail  {tail_note(tau)}"]
    if fits:
        models, best = fits["models"], fits["best"]
        lines.append(f"staleness fit   best by AIC: {_format_fit(models[best])}")
        others = [_format_fit(models[name]) for name in models if name != best and name not in REFERENCE_MODELS]
        references = [name for name in models if name in REFERENCE_MODELS]
        lines.append("                " + "; ".join(
            others + [f"{name} (the histogram itself, a reference) TV {models[name]['fit']['tv']:.3f}"
                      for name in references]))
    return lines


@dataclass
class OneVsRestRun:
    """What ``hogwild-mts train`` makes of a classifier on three or more classes: the fitted
    :class:`~hogwild_mts.estimators.HogwildClassifier` (one-vs-rest: one engine run per class
    and epoch),
    its accuracy over the classes on the training rows, and the data's name.  Read like a
    FitResult by the command line (params: the K x d weights, intercept: K values)."""

    estimator: object
    accuracy: float
    data: str
    stopped_by: str | None = field(default=None)

    @property
    def results(self) -> list:
        """Every engine run, class by class and epoch by epoch."""
        return self.estimator.fit_results_

    @property
    def class_runs(self) -> list:
        """Each trained class's runs (one per epoch), in the order of ``classes_``."""
        runs, start = [], 0
        for epochs in self.estimator.problem_epochs_:
            runs.append(self.results[start:start + epochs])
            start += epochs
        return runs

    @staticmethod
    def class_summary(runs: list) -> dict:
        """One class's runs as one: the last run's fields, the counts and times summed."""
        return {**runs[-1].to_dict(), "epochs": len(runs),
                **{name: sum(getattr(run, name) for run in runs)
                   for name in ("updates", "samples", "train_seconds", "wall_seconds")}}

    @property
    def params(self) -> np.ndarray:
        return self.estimator.coef_

    @property
    def intercept(self) -> list:
        return [float(b) for b in self.estimator.intercept_]

    @property
    def interrupted(self) -> bool:
        return any(result.interrupted for result in self.results) or \
            len(self.class_runs) < len(self.estimator.classes_)

    @property
    def updates(self) -> int:
        return sum(result.updates for result in self.results)

    def histogram(self) -> np.ndarray:
        """The runs' staleness histograms summed."""
        size = max(result.staleness_histogram.size for result in self.results)
        return sum(np.pad(r.staleness_histogram, (0, size - r.staleness_histogram.size)) for r in self.results)

    def to_dict(self) -> dict:
        """metrics.json's content: the run over all classes, then each class's run."""
        first = self.results[0]
        histogram = self.histogram()
        return {"model": first.model, "data": self.data, "one_vs_rest": True,
                "classes": self.estimator.classes_.tolist(), "workers": first.workers,
                "policy": first.policy, "settings": dict(first.settings),
                "final_accuracy": self.accuracy, "interrupted": self.interrupted,
                "updates": self.updates, "samples": sum(r.samples for r in self.results),
                "train_seconds": sum(r.train_seconds for r in self.results),
                "wall_seconds": sum(r.wall_seconds for r in self.results),
                "staleness": staleness_summary(histogram, max(r.max_staleness for r in self.results)),
                "staleness_fit": fit_staleness_models(histogram),
                "per_class": [{"class": label, **self.class_summary(runs)} for label, runs in
                              zip(self.estimator.classes_.tolist(), self.class_runs)]}


def _format_one_vs_rest(run: OneVsRestRun) -> str:
    """The end-of-run text of a one-vs-rest ``train``: the accuracy over the classes, each
    class's run, the totals and the staleness of all runs together."""
    first, classes = run.results[0], run.estimator.classes_
    lines = [f"model {first.model} one-vs-rest on {run.data}, {classes.size} classes, "
             f"{first.workers} worker(s), policy {first.policy.get('name')}"
             + ("  [INTERRUPTED]" if run.interrupted else ""),
             f"train accuracy  {run.accuracy:.4f} (over the {classes.size} classes)"]
    for label, runs in zip(classes.tolist(), run.class_runs):
        result = runs[-1]
        accuracy = "" if result.final_accuracy is None else f"  accuracy {result.final_accuracy:.4f}"
        lines.append(f"class {label!s:<10}final loss {result.final_loss:.6g}{accuracy}  "
                     f"updates {sum(r.updates for r in runs):,} in {len(runs)} epoch(s)")
    for label in classes.tolist()[len(run.class_runs):]:
        lines.append(f"class {label!s:<10}not trained (the run was stopped)")
    metrics = run.to_dict()
    lines.append(f"updates         {run.updates:,} over {len(run.results)} runs in "
                 f"{metrics['train_seconds']:.2f} s of training, {metrics['wall_seconds']:.2f} s in all")
    lines += _staleness_lines(metrics["staleness"], metrics["staleness_fit"])
    policy = first.policy
    lines.append(f"policy          {policy.get('name')}: {policy.get('formula', '')}")
    return "\n".join(lines)


def format_summary(result) -> str:
    """The end-of-run text of ``hogwild-mts train``."""
    if isinstance(result, OneVsRestRun):
        return _format_one_vs_rest(result)
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
    ]
    lines += _staleness_lines(tau, result.staleness_fit)
    policy = result.policy
    lines.append(f"policy          {policy.get('name')}: {policy.get('formula', '')}")
    if "table_head" in policy:
        lines.append("alpha(tau)      " + ", ".join(f"{a:.4g}" for a in policy["table_head"][:6]) + ", ...")
    return "\n".join(lines)
