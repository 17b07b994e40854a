"""PNG plots of an experiment run directory (matplotlib, Agg canvas; no display needed).

* ``staleness.png``: per m, the staleness histogram (all cells at that m summed) with the fitted
  Poisson, CMP and geometric pmfs overlaid, their total variation in the legend;
* ``loss_vs_updates.png`` and ``loss_vs_time.png``: per m, one line per policy at its shown step
  (see :func:`shown_alphas`), the mean over seeds with the min-max band, the targets dashed;
* ``alpha_tables.png``: per m, each policy's alpha(tau) at its shown step as its cells ended
  (mean over seeds);
* ``best_vs_workers.png`` and ``transfer_vs_workers.png``: per target, updates to target against
  m for each policy (best against best; the step tuned at the smallest m), mean over seeds with
  min-max bars.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from hogwild_mts.app.rundir import CELLS_DIR, CONFIG_FILE, read_cells

PLOTS_DIR = "plots"
SUMMARY_FILE = "summary.json"   # the experiment's tables as JSON (config, summary, best, transfer)
CURVE_POINTS = 200  # points of the common grid on which seeds are averaged
FIT_MODELS = ("poisson", "cmp", "geometric")


class RunDirError(ValueError):
    """A directory that does not hold an experiment run (or none of its cells finished)."""


def _figure(panels: int, title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(panels, 4)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    figure.suptitle(title)
    return figure, axes[:panels]


def _by_workers(records: list[dict]) -> dict:
    groups = {}
    for record in records:
        groups.setdefault(record["workers"], []).append(record)
    return dict(sorted(groups.items()))


def _policies(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(record["policy"] for record in records))


def plot_staleness(records: list[dict], path: str) -> str:
    from hogwild_mts.staleness import models as staleness

    groups = _by_workers([r for r in records if r["staleness_histogram"]])
    figure, axes = _figure(len(groups), "staleness histogram and fitted models")
    for axis, (workers, group) in zip(axes, groups.items()):
        size = max(len(r["staleness_histogram"]) for r in group)
        counts = np.zeros(size, np.int64)
        for record in group:
            counts[:len(record["staleness_histogram"])] += record["staleness_histogram"]
        share = counts / counts.sum()
        shown = min(size, int(np.searchsorted(np.cumsum(share), 0.999)) + 2)
        taus = np.arange(shown)
        axis.bar(taus, share[:shown], width=1.0, color="0.8", label="observed")
        for name in FIT_MODELS:
            model = staleness.fit_model(name, counts)
            axis.plot(taus, model.pmf(shown), marker=".", markersize=3,
                      label=f"{name} (TV {model.fit_report.tv:.3f})")
        axis.set_title(f"m = {workers} ({counts.sum():,} updates)")
        axis.set_xlabel("staleness tau")
        axis.set_ylabel("share of updates")
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=90)
    return path


def _mean_curve(group: list[dict], x_key: str):
    """Seeds' loss curves on a common grid from 0 to the shortest run's end: (x, mean, low, high)."""
    curves = [(np.asarray(r["history"][x_key], float), np.asarray(r["history"]["loss"], float))
              for r in group if r["history"] and len(r["history"]["loss"]) > 1]
    if not curves:
        return None
    end = min(x[-1] for x, _ in curves)
    grid = np.linspace(min(x[0] for x, _ in curves), end, CURVE_POINTS)
    values = np.array([np.interp(grid, x, y) for x, y in curves])
    return grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def shown_alphas(records: list[dict], summary: list[dict]) -> dict:
    """(policy, workers) -> the step whose curves are drawn: the best step (every seed reached,
    fewest mean updates) at the lowest target any step of that policy reached at that m (rows of
    summary.json); else the step with the lowest mean final loss."""
    chosen = {}
    for row in sorted(summary, key=lambda r: (r["target"], r["updates_to_target_mean"] or 0)):
        key = (row["policy"], row["workers"])
        if row["seeds"] and row["reached"] == row["seeds"] and key not in chosen:
            chosen[key] = row["alpha"]
    finals = {}
    for record in records:
        finals.setdefault((record["policy"], record["workers"], record["alpha"]), []).append(
            math.inf if record["diverged"] else record["final_loss"])
    for (policy, workers, alpha), values in sorted(finals.items(), key=lambda item: np.mean(item[1])):
        chosen.setdefault((policy, workers), alpha)
    return chosen


def _shown(records: list[dict], summary: list[dict]) -> list[dict]:
    chosen = shown_alphas(records, summary)
    return [r for r in records if chosen.get((r["policy"], r["workers"])) == r["alpha"]]


def plot_loss(records: list[dict], tables: dict, x_key: str, x_label: str, path: str) -> str:
    shown = _shown(records, tables["summary"])
    targets = tables["config"]["targets"]
    groups = _by_workers(shown)
    policies = _policies(records)
    figure, axes = _figure(len(groups), f"loss against {x_label} (each policy at its shown step; "
                                        "mean over seeds, min-max band)")
    for axis, (workers, group) in zip(axes, groups.items()):
        starts = [r["history"]["loss"][0] for r in group if r["history"]]
        for index, policy in enumerate(policies):
            mine = [r for r in group if r["policy"] == policy]
            curve = _mean_curve(mine, x_key)
            if curve is None:
                continue
            grid, mean, low, high = curve
            color = f"C{index}"
            axis.plot(grid, mean, color=color, label=f"{policy} ({mine[0]['alpha']:g})")
            axis.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
        for target in targets:
            axis.axhline(target, color="k", linestyle="--", linewidth=0.6)
        if starts:
            axis.set_ylim(top=1.5 * float(np.median(starts)))
        axis.set_title(f"m = {workers}")
        axis.set_xlabel(x_label)
        axis.set_ylabel("loss")
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=90)
    return path


def plot_alpha_tables(records: list[dict], tables: dict, path: str) -> str:
    groups = _by_workers([r for r in _shown(records, tables["summary"]) if r.get("alpha_table")])
    policies = _policies(records)
    figure, axes = _figure(len(groups), "alpha(tau) as the runs ended (shown step, mean over seeds)")
    for axis, (workers, group) in zip(axes, groups.items()):
        p99 = max(r["staleness"]["p99"] for r in group)
        shown = int(min(256, max(8, 2 * p99 + 2)))
        taus = np.arange(shown)
        for index, policy in enumerate(policies):
            tables = [np.asarray(r["alpha_table"]) for r in group if r["policy"] == policy]
            if not tables:
                continue
            padded = [np.concatenate([t, np.full(max(0, shown - t.size), t[-1])])[:shown] for t in tables]
            axis.plot(taus, np.mean(padded, axis=0), color=f"C{index}", label=policy)
        axis.set_yscale("log")
        axis.set_title(f"m = {workers}")
        axis.set_xlabel("staleness tau")
        axis.set_ylabel("alpha(tau)")
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=90)
    return path


def plot_comparison(rows: list[dict], title: str, path: str) -> str:
    """Per target: updates to target against m, one line per policy (rows of best.csv or
    transfer.csv), mean with min-max bars; policies that miss a target at some m have gaps."""
    targets = sorted({row["target"] for row in rows}, reverse=True)
    policies = list(dict.fromkeys(row["policy"] for row in rows))
    figure, axes = _figure(len(targets), title)
    for axis, target in zip(axes, targets):
        for index, policy in enumerate(policies):
            mine = sorted((r for r in rows if r["target"] == target and r["policy"] == policy),
                          key=lambda r: r["workers"])
            m = np.array([r["workers"] for r in mine], float)
            mean = np.array([np.nan if r["updates_mean"] is None else r["updates_mean"] for r in mine])
            low = np.array([np.nan if r["updates_min"] is None else r["updates_min"] for r in mine])
            high = np.array([np.nan if r["updates_max"] is None else r["updates_max"] for r in mine])
            axis.errorbar(m * (1 + 0.03 * index), mean, yerr=[mean - low, high - mean], color=f"C{index}",
                          marker="o", markersize=3, capsize=2, label=policy)
        axis.set_xscale("log", base=2)
        axis.set_title(f"target loss {target:g}")
        axis.set_xlabel("workers m")
        axis.set_ylabel("updates to target")
        axis.legend(fontsize=7)
    figure.savefig(path, dpi=90)
    return path


def check_run_dir(run_dir: str) -> list[dict]:
    """The finished cell records of ``run_dir``, or RunDirError saying why it is not a run."""
    if not os.path.isdir(run_dir):
        raise RunDirError(f"{run_dir} is not a directory")
    if not (os.path.isfile(os.path.join(run_dir, CONFIG_FILE))
            and os.path.isdir(os.path.join(run_dir, CELLS_DIR))):
        raise RunDirError(f"{run_dir} is not an experiment run directory (it needs {CONFIG_FILE} and "
                          f"{CELLS_DIR}/, as written by `hogwild-mts experiment --out {run_dir}`)")
    try:
        records = read_cells(run_dir)
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise RunDirError(f"{run_dir}: cannot read the cell records: {error}") from None
    if not records:
        raise RunDirError(f"{run_dir} has no finished cells yet; run the experiment first")
    return records


def draw_all(run_dir: str) -> list[str]:
    """Redraw every plot of ``run_dir`` into ``run_dir/plots`` from its cells and the tables in
    its summary.json (written by the experiment's ``write_tables``); return the paths written."""
    records = check_run_dir(run_dir)
    try:
        with open(os.path.join(run_dir, SUMMARY_FILE)) as handle:
            tables = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise RunDirError(f"{run_dir}: cannot read {SUMMARY_FILE} ({error}); run `hogwild-mts report "
                          f"{run_dir}` to rebuild it") from None
    directory = os.path.join(run_dir, PLOTS_DIR)
    os.makedirs(directory, exist_ok=True)
    finished = [r for r in records if not r["diverged"]]
    unit = finished[0]["time_unit"] if finished else "seconds"
    paths = []
    if finished:
        paths.append(plot_staleness(finished, os.path.join(directory, "staleness.png")))
        paths.append(plot_loss(finished, tables, "updates", "updates",
                               os.path.join(directory, "loss_vs_updates.png")))
        paths.append(plot_loss(finished, tables, "time_s", f"time ({unit})",
                               os.path.join(directory, "loss_vs_time.png")))
        paths.append(plot_alpha_tables(finished, tables, os.path.join(directory, "alpha_tables.png")))
    paths.append(plot_comparison(tables["best"], "best against best: each policy at its best step for each m",
                                 os.path.join(directory, "best_vs_workers.png")))
    smallest = min(record["workers"] for record in records)
    paths.append(plot_comparison(tables["transfer"], f"transfer: the step tuned at m = {smallest}, unchanged",
                                 os.path.join(directory, "transfer_vs_workers.png")))
    return paths
