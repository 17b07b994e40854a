"""Figures of an experiment run directory (matplotlib, Agg canvas; no display needed), sized for
a paper (:data:`PAGE_WIDTH` inches wide, :data:`COLUMN_WIDTH` for a one-panel figure; text at
:data:`FONT_SIZE` pt, legends at :data:`LEGEND_SIZE` pt) and saved as PNG, PDF or SVG
(:data:`FORMATS`) at a chosen dpi.

Every policy label has one colour and one marker in every figure of every run
(:func:`policy_style`): the registered policies in a fixed order of the colour-blind-safe
Okabe-Ito palette, other labels by a stable hash of the label.  Each figure has one legend below
its panels.

* ``staleness``: per m, the histogram body (99.9 % of the updates) with the fitted Poisson, CMP
  and geometric pmfs (their total variation in the legend), and beneath it the tail: the
  complementary CDF P(tau >= t) on log-log axes up to the largest tau recorded (the histogram's
  last bin holds every larger tau; beyond it only the maximum is known, drawn dotted); a panel
  where every update had tau = 0 (m = 1) says so instead of drawing one bar;
* ``loss_vs_updates`` and ``loss_vs_time``: per m, one line per policy at its shown step
  (:func:`shown_lrs`), the mean over seeds with the min-max band, the targets dashed, on a
  log loss axis whose limits come from the data (every spike is kept); curves equal within
  :data:`IDENTICAL_RTOL` are named in a note in the panel (they are drawn over each other; the
  staggered markers show each);
* ``alpha_tables``: per m, each policy's alpha(tau) at its shown step as its cells ended (mean
  over seeds), identical tables noted likewise;
* ``best_vs_workers`` and ``transfer_vs_workers``: per target, updates to target against m for
  each policy (best against best; the step and momentum tuned at the smallest m), mean over seeds
  with min-max bars, each point labelled with its momentum when the grid has several (the
  fixed-momentum labels of best.csv are left out); a policy that misses the target at some m is drawn there as its open marker at
  the top of the panel, and a point whose step is at the edge of the policy's step grid is
  ringed (the grid may be too narrow); when the two figures show the same numbers (each policy's
  best step is the same at every m) the transfer figure says so.
"""

from __future__ import annotations

import json
import math
import os
import zlib

import numpy as np

from hogwild_mts.app.rundir import CELLS_DIR, CONFIG_FILE, read_cells

PLOTS_DIR = "plots"
SUMMARY_FILE = "summary.json"   # the experiment's tables as JSON (config, summary, best, transfer)
CURVE_POINTS = 200  # points of the common grid on which seeds are averaged
FIT_MODELS = ("poisson", "cmp", "geometric")
FIGURES = ("staleness", "loss_vs_updates", "loss_vs_time", "alpha_tables", "best_vs_workers",
           "transfer_vs_workers")
FORMATS = ("png", "pdf", "svg")
DEFAULT_FORMAT = "png"
DEFAULT_DPI = 200
DPI_RANGE = (50, 1200)
PAGE_WIDTH = 7.0        # inches: a two-column paper's text width
COLUMN_WIDTH = 3.4      # inches: one column
PANEL_HEIGHT = 2.3      # inches per row of panels
FONT_SIZE = 9
LEGEND_SIZE = 8
IDENTICAL_RTOL = 1e-9   # curves equal within this relative tolerance are "identical"

# The Okabe-Ito palette (Okabe & Ito 2008), colour-blind safe; its yellow is left out (too pale
# on white).  The registered policies take the first five in this order with their own markers.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
KNOWN_POLICIES = ("constant", "inverse", "exponential", "tail", "mindthestep")
MISSED_LABEL = "target not reached (open marker at the top)"
EDGE_LABEL = "step at the edge of its grid (ringed): widen the grid"
EDGE_MOMENTUM_LABEL = "step or momentum at the edge of its grid (ringed): widen the grid"
MOMENTUM_NOTE = "the number at each point: its momentum"
BAND_BELOW = 0.88   # missed targets sit in the band above this share of a comparison panel's height
MISSED_AT = 0.94


class RunDirError(ValueError):
    """A directory that does not hold an experiment run (or none of its cells finished)."""


# ---------------------------------------------------------------------------- styles
def policy_style(label: str) -> dict:
    """The colour and marker of a policy label in every figure: the registered policies
    (KNOWN_POLICIES) get fixed ones; any other label a pick from a CRC-32 of its text (the same in
    every run and process) that differs from every registered policy's pair."""
    if label in KNOWN_POLICIES:
        index = KNOWN_POLICIES.index(label)
        return {"color": PALETTE[index], "marker": MARKERS[index]}
    known = {(PALETTE[i], MARKERS[i]) for i in range(len(KNOWN_POLICIES))}
    pick = zlib.crc32(label.encode("utf-8"))
    while True:
        color, marker = PALETTE[pick % len(PALETTE)], MARKERS[(pick // len(PALETTE)) % len(MARKERS)]
        if (color, marker) not in known:
            return {"color": color, "marker": marker}
        pick += 1


def check_format(fmt) -> str:
    """``fmt`` if it is one of FORMATS, else ValueError naming them."""
    if fmt not in FORMATS:
        raise ValueError(f"figure format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def check_dpi(dpi) -> int:
    """``dpi`` if it is an integer in DPI_RANGE, else ValueError naming the range."""
    low, high = DPI_RANGE
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not low <= dpi <= high:
        raise ValueError(f"figure dpi must be an integer from {low} to {high}, got {dpi!r}")
    return dpi


def _rc():
    import matplotlib

    return matplotlib.rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE,
                                  "axes.labelsize": FONT_SIZE, "xtick.labelsize": LEGEND_SIZE,
                                  "ytick.labelsize": LEGEND_SIZE, "legend.fontsize": LEGEND_SIZE,
                                  "figure.titlesize": FONT_SIZE + 1, "lines.linewidth": 1.2,
                                  "lines.markersize": 4, "svg.fonttype": "none", "pdf.fonttype": 42})


def _figure(panels: int, title: str, *, rows_per_panel: int = 1, columns: int = 3):
    """A figure of ``panels`` panels (each ``rows_per_panel`` axes stacked), at most ``columns``
    per row: PAGE_WIDTH wide (COLUMN_WIDTH for one panel).  Returns (figure, list of axes lists)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, min(panels, columns))
    rows = math.ceil(panels / columns)
    width = COLUMN_WIDTH if columns == 1 else PAGE_WIDTH
    figure = Figure(figsize=(width, PANEL_HEIGHT * rows * rows_per_panel + 0.9), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows * rows_per_panel, columns, squeeze=False)
    panels_axes = []
    for index in range(rows * columns):
        row, column = divmod(index, columns)
        stack = [grid[row * rows_per_panel + k, column] for k in range(rows_per_panel)]
        if index < panels:
            panels_axes.append(stack)
        else:
            for axis in stack:
                axis.set_visible(False)
    figure.suptitle(title)
    return figure, panels_axes


def _legend(figure, handles: list, labels: list, notes: list = ()) -> None:
    """One legend for the whole figure, below its panels; ``notes`` (lines) above its entries."""
    if handles:
        wide = figure.get_figwidth() > COLUMN_WIDTH
        columns = min(len(handles), 3 if wide and max(map(len, labels)) <= 30 else 2 if wide else 1)
        legend = figure.legend(handles, labels, loc="outside lower center", ncols=columns,
                               frameon=False, title="\n".join(notes) or None,
                               title_fontsize=LEGEND_SIZE)
        legend.get_title().set_multialignment("center")


def _policy_handle(label: str):
    from matplotlib.lines import Line2D

    style = policy_style(label)
    return Line2D([], [], color=style["color"], marker=style["marker"], gid=f"policy:{label}")


def _note(axis, text: str, where: str = "lower left") -> None:
    x, ha = (0.03, "left") if "left" in where else (0.97, "right")
    y, va = (0.04, "bottom") if "lower" in where else (0.96, "top")
    axis.text(x, y, text, transform=axis.transAxes, ha=ha, va=va, fontsize=LEGEND_SIZE,
              bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.85})


def identical_groups(curves: dict, rtol: float = IDENTICAL_RTOL) -> list[list[str]]:
    """Groups (two labels or more, in ``curves`` order) of curves {label: (x, y)} equal within
    ``rtol``: same length and every x and y close."""
    groups = []
    for label, (x, y) in curves.items():
        for group in groups:
            gx, gy = curves[group[0]]
            if len(gx) == len(x) and np.allclose(gx, x, rtol=rtol, atol=0) \
                    and np.allclose(gy, y, rtol=rtol, atol=0):
                group.append(label)
                break
        else:
            groups.append([label])
    return [group for group in groups if len(group) > 1]


def _identical_notes(axis, curves: dict, panel: str) -> list[str]:
    """Flag the panel's title when some of its ``curves`` are identical; return the legend's
    note lines naming them."""
    groups = identical_groups(curves)
    if not groups:
        return []
    axis.set_title(axis.get_title() + f" ({sum(map(len, groups))} curves identical)")
    return [f"{panel}: identical curves, drawn over each other: " + " = ".join(group) for group in groups]


def _log_ticks(axis) -> None:
    """Plain tick labels (0.3, 1, 2) on a log y axis that may span less than a decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    axis.yaxis.set_minor_locator(LogLocator(base=10, subs=(4.0, 6.0, 7.0, 8.0, 9.0)))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(NullFormatter())


def _save(figure, path: str, dpi: int) -> str:
    with _rc():
        figure.savefig(path, dpi=dpi)
    return path


def _count(number: int) -> str:
    """A count in a short title: 2,250 or 2.25 M."""
    return f"{number / 1e6:.3g} M" if number >= 1e6 else f"{number:,}"


# ---------------------------------------------------------------------------- records
def _by_workers(records: list[dict]) -> dict:
    groups = {}
    for record in records:
        groups.setdefault(record["workers"], []).append(record)
    return dict(sorted(groups.items()))


def _policies(records: list[dict]) -> list[str]:
    """The policy labels of ``records`` (or table rows) in one order for every figure: the
    registered policies in KNOWN_POLICIES order, then other labels as they come."""
    labels = list(dict.fromkeys(record["policy"] for record in records))
    return sorted(labels, key=lambda label: (KNOWN_POLICIES.index(label) if label in KNOWN_POLICIES
                                             else len(KNOWN_POLICIES), labels.index(label)))


# ---------------------------------------------------------------------------- staleness
def staleness_figure(records: list[dict]):
    """The staleness figure (body and tail per m) of ``records``; see the module docstring."""
    with _rc():
        return _staleness_figure(records)


def _staleness_figure(records: list[dict]):
    from hogwild_mts.staleness import models as staleness

    model_styles = {"poisson": ("0.15", "-"), "cmp": ("0.15", "--"), "geometric": ("0.45", ":")}
    groups = _by_workers([r for r in records if r["staleness_histogram"]])
    figure, panels = _figure(len(groups), "staleness: body (histogram, fitted models) and tail "
                                          "P(tau >= t)", rows_per_panel=2)
    handles = {}
    for (body, tail), (workers, group) in zip(panels, groups.items()):
        size = max(len(r["staleness_histogram"]) for r in group)
        counts = np.zeros(size, np.int64)
        for record in group:
            counts[:len(record["staleness_histogram"])] += record["staleness_histogram"]
        total = int(counts.sum())
        recorded = [r["staleness"]["max"] for r in group if r.get("staleness")]
        largest = int(max(recorded)) if recorded else int(np.flatnonzero(counts)[-1])
        overflow = largest > size - 1    # the last bin holds every tau >= size - 1
        body.set_title(f"m = {workers}: body, {_count(total)} updates")
        tail.set_title(f"m = {workers}: tail, max tau {largest:,}")
        if largest == 0:
            for axis in (body, tail):
                axis.set_xticks([])
                axis.set_yticks([])
            _note(body, f"all {total:,} updates at tau = 0\n(no staleness; no model to fit)",
                  "upper left")
            _note(tail, "no tail: every tau = 0", "upper left")
            continue
        share = counts / total
        shown = min(size, int(np.searchsorted(np.cumsum(share), 0.999)) + 2)
        taus = np.arange(shown)
        handles["observed"] = body.bar(taus, share[:shown], width=1.0, color="0.82", label="observed")
        tvs = []
        ccdf_size = max(size, 2)
        observed_ccdf = share[::-1].cumsum()[::-1]
        t = np.arange(1, size)
        handles["observed P(tau >= t)"] = tail.step(t, observed_ccdf[1:], where="post", color="k",
                                                    linewidth=1.4, label="observed P(tau >= t)")[0]
        for name in FIT_MODELS:
            model = staleness.fit_model(name, counts)
            color, style = model_styles[name]
            handles[name] = body.plot(taus, model.pmf(shown), color=color, linestyle=style,
                                      linewidth=1.0, label=name)[0]
            pmf = model.pmf(ccdf_size)
            pmf = pmf / pmf.sum()
            model_ccdf = pmf[::-1].cumsum()[::-1]
            tail.plot(t, model_ccdf[1:size], color=color, linestyle=style, linewidth=1.0)
            tvs.append(f"{name} {model.fit_report.tv:.3f}")
        _note(tail, "total variation\n" + "\n".join(tvs), "upper right")
        floor = 0.5 / total
        if overflow:
            beyond = observed_ccdf[-1]
            handles["beyond"] = tail.plot([size - 1, largest], [beyond, 1 / total], color="k",
                                          linestyle=":", marker="o", markevery=[1], markersize=3,
                                          label="beyond the last bin: only the max is recorded")[0]
        tail.axvline(largest, color="0.5", linewidth=0.6)
        tail.set_xscale("log")
        tail.set_yscale("log")
        tail.set_xlim(1, max(largest, 2) * 1.5)
        tail.set_ylim(floor, 1.5)
        body.set_xlabel("staleness tau")
        body.set_ylabel("share of updates")
        tail.set_xlabel("t")
        tail.set_ylabel("P(tau >= t)")
    order = ["observed", "poisson", "cmp", "geometric", "observed P(tau >= t)", "beyond"]
    _legend(figure, [handles[k] for k in order if k in handles],
            [handles[k].get_label() for k in order if k in handles])
    return figure


def plot_staleness(records: list[dict], path: str, dpi: int = DEFAULT_DPI) -> str:
    return _save(staleness_figure(records), path, dpi)


# ---------------------------------------------------------------------------- loss, alpha(tau)
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


def _setting(row: dict) -> tuple:
    """(step, momentum) of a cell record or summary row (momentum 0 where a row has none)."""
    return row["lr"], row.get("momentum", 0.0)


def shown_lrs(records: list[dict], summary: list[dict]) -> dict:
    """(policy, workers) -> the (step, momentum) whose curves are drawn: the best pair (every
    seed reached, fewest mean updates) at the lowest target any pair of that policy reached at
    that m (rows of summary.json); else the pair with the lowest mean final loss."""
    chosen = {}
    for row in sorted(summary, key=lambda r: (r["target"], r["updates_to_target_mean"] or 0)):
        key = (row["policy"], row["workers"])
        if row["seeds"] and row["reached"] == row["seeds"] and key not in chosen:
            chosen[key] = _setting(row)
    finals = {}
    for record in records:
        finals.setdefault((record["policy"], record["workers"], _setting(record)), []).append(
            math.inf if record["diverged"] else record["final_loss"])
    for (policy, workers, setting), values in sorted(finals.items(), key=lambda item: np.mean(item[1])):
        chosen.setdefault((policy, workers), setting)
    return chosen


def _shown(records: list[dict], summary: list[dict]) -> list[dict]:
    chosen = shown_lrs(records, summary)
    return [r for r in records if chosen.get((r["policy"], r["workers"])) == _setting(r)]


def _step_text(setting: tuple, with_momentum: bool) -> str:
    lr, momentum = setting
    return f"{lr:g}" + (f" mu {momentum:g}" if with_momentum else "")


def _step_labels(shown: list[dict], policies: list[str], workers: list) -> list[str]:
    """Legend text per policy: its shown step (and momentum, where any is not 0), or its step at
    each m (in ``workers`` order, as the title says) where they differ."""
    labels = []
    with_momentum = any(r.get("momentum", 0.0) for r in shown)
    for policy in policies:
        steps = {r["workers"]: _setting(r) for r in shown if r["policy"] == policy}
        if len(set(steps.values())) <= 1:
            labels.append(f"{policy} (lr {_step_text(next(iter(steps.values())), with_momentum)})"
                          if steps else policy)
        else:
            labels.append(f"{policy} (lr {', '.join(_step_text(steps[m], with_momentum) if m in steps else '-' for m in workers)})")
    return labels


def _steps_title(workers: list) -> str:
    return "" if len(workers) < 2 else f" (the legend's steps at m = {', '.join(map(str, workers))})"


def _stagger(index: int, count: int, points: int = CURVE_POINTS) -> tuple:
    """markevery of the index-th of ``count`` policies: markers at staggered places, so curves
    drawn over each other still show each policy's marker."""
    count = max(count, 1)
    every = max(count, points // 8)
    return (index * every // count, every)


def loss_figure(records: list[dict], tables: dict, x_key: str, x_label: str):
    with _rc():
        return _loss_figure(records, tables, x_key, x_label)


def _loss_figure(records: list[dict], tables: dict, x_key: str, x_label: str):
    from matplotlib.lines import Line2D

    shown = _shown(records, tables["summary"])
    targets = tables["config"]["targets"]
    groups = _by_workers(shown)
    policies = _policies(records)
    figure, panels = _figure(len(groups), f"loss against {x_label}: mean over seeds, min-max band, log axis"
                                          f"\neach policy at its shown step{_steps_title(list(groups))}")
    notes = []
    for (axis,), (workers, group) in zip(panels, groups.items()):
        axis.set_title(f"m = {workers}")
        curves, lows, highs = {}, [], []
        for index, policy in enumerate(policies):
            mine = [r for r in group if r["policy"] == policy]
            curve = _mean_curve(mine, x_key)
            if curve is None:
                continue
            grid, mean, low, high = curve
            style = policy_style(policy)
            axis.plot(grid, mean, color=style["color"], marker=style["marker"],
                      markevery=_stagger(index, len(policies)), gid=f"policy:{policy}")
            axis.fill_between(grid, low, high, color=style["color"], alpha=0.15, linewidth=0,
                              gid=f"policy:{policy}")
            curves[policy] = (grid, mean)
            lows.append(low.min())
            highs.append(high.max())
        for target in targets:
            axis.axhline(target, color="k", linestyle="--", linewidth=0.6)
        axis.set_yscale("log")
        _log_ticks(axis)
        if highs:
            bottom = min(min(lows), min(targets))
            axis.set_ylim(bottom / 1.08, max(highs) * 1.08)
        notes += _identical_notes(axis, curves, f"m = {workers}")
        axis.set_xlabel(x_label)
        axis.set_ylabel("loss")
    handles = [_policy_handle(policy) for policy in policies]
    labels = _step_labels(shown, policies, list(groups))
    handles.append(Line2D([], [], color="k", linestyle="--", linewidth=0.6))
    labels.append("target losses")
    _legend(figure, handles, labels, notes)
    return figure


def plot_loss(records: list[dict], tables: dict, x_key: str, x_label: str, path: str,
              dpi: int = DEFAULT_DPI) -> str:
    return _save(loss_figure(records, tables, x_key, x_label), path, dpi)


def alpha_tables_figure(records: list[dict], tables: dict):
    with _rc():
        return _alpha_tables_figure(records, tables)


def _alpha_tables_figure(records: list[dict], tables: dict):
    all_shown = _shown(records, tables["summary"])
    groups = _by_workers([r for r in all_shown if r.get("alpha_table")])
    policies = _policies(records)
    figure, panels = _figure(len(groups), "alpha(tau) as the runs ended: mean over seeds, log axis"
                                          f"\neach policy at its shown step{_steps_title(list(groups))}")
    notes = []
    for (axis,), (workers, group) in zip(panels, groups.items()):
        p99 = max(r["staleness"]["p99"] for r in group)
        shown = int(min(256, max(8, 2 * p99 + 2)))
        taus = np.arange(shown)
        curves = {}
        for index, policy in enumerate(policies):
            mine = [np.asarray(r["alpha_table"]) for r in group if r["policy"] == policy]
            if not mine:
                continue
            padded = [np.concatenate([t, np.full(max(0, shown - t.size), t[-1])])[:shown] for t in mine]
            mean = np.mean(padded, axis=0)
            style = policy_style(policy)
            axis.plot(taus, mean, color=style["color"], marker=style["marker"],
                      markevery=_stagger(index, len(policies), shown), gid=f"policy:{policy}")
            curves[policy] = (taus, mean)
        axis.set_yscale("log")
        _log_ticks(axis)
        axis.set_title(f"m = {workers}" + (", all tau = 0" if p99 == 0 else ""))
        notes += _identical_notes(axis, curves, f"m = {workers}")
        axis.set_xlabel("staleness tau")
        axis.set_ylabel("alpha(tau)")
    _legend(figure, [_policy_handle(p) for p in policies], _step_labels(all_shown, policies, list(groups)),
            notes)
    return figure


def plot_alpha_tables(records: list[dict], tables: dict, path: str, dpi: int = DEFAULT_DPI) -> str:
    return _save(alpha_tables_figure(records, tables), path, dpi)


# ---------------------------------------------------------------------------- best, transfer
def comparison_figure(rows: list[dict], title: str, *, edges: set = frozenset(), note: str = "",
                      label_momenta: bool = False):
    """Per target: updates to target against m, one line per policy (rows of best.csv or
    transfer.csv), mean with min-max bars.  ``edges``: the (policy, workers, target) whose step
    (or momentum) is at the edge of the policy's grid (ringed); a policy that misses a target at
    some m has its open marker at the top of the panel there.  ``label_momenta`` (a grid of
    several momenta): each reached point is labelled with its momentum.  ``note``: a line under
    the title."""
    with _rc():
        return _comparison_figure(rows, title, edges, note, label_momenta)


def _comparison_figure(rows: list[dict], title: str, edges, note: str, label_momenta: bool):
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    targets = sorted({row["target"] for row in rows}, reverse=True)
    policies = _policies(rows)
    figure, panels = _figure(len(targets), title + (f"\n{note}" if note else ""), columns=2)
    missed_any = edge_any = False
    for (axis,), target in zip(panels, targets):
        top = blended_transform_factory(axis.transData, axis.transAxes)
        reached_any = panel_missed = False
        for index, policy in enumerate(policies):
            style = policy_style(policy)
            mine = sorted((r for r in rows if r["target"] == target and r["policy"] == policy),
                          key=lambda r: r["workers"])
            m = np.array([r["workers"] for r in mine], float) * (1 + 0.04 * index)
            mean = np.array([np.nan if r["updates_mean"] is None else r["updates_mean"] for r in mine])
            low = np.array([np.nan if r["updates_min"] is None else r["updates_min"] for r in mine])
            high = np.array([np.nan if r["updates_max"] is None else r["updates_max"] for r in mine])
            reached = ~np.isnan(mean)
            reached_any |= bool(reached.any())
            if reached.any():
                axis.errorbar(m, mean, yerr=[mean - low, high - mean], color=style["color"],
                              marker=style["marker"], capsize=2, gid=f"policy:{policy}")
                if label_momenta:
                    for i in np.flatnonzero(reached):
                        axis.annotate(f"{mine[i]['momentum']:g}", (m[i], mean[i]), xytext=(3, 3),
                                      textcoords="offset points", fontsize=LEGEND_SIZE - 2,
                                      color=style["color"], gid=f"momentum:{policy}")
            if (~reached).any():
                missed_any = panel_missed = True
                axis.plot(m[~reached], np.full((~reached).sum(), MISSED_AT), linestyle="none",
                          marker=style["marker"], markersize=6, markerfacecolor="none",
                          markeredgecolor=style["color"], markeredgewidth=1.3, transform=top,
                          clip_on=False, gid=f"missed:{policy}")
            ringed = [i for i, r in enumerate(mine) if reached[i] and (policy, r["workers"], target) in edges]
            if ringed:
                edge_any = True
                axis.plot(m[ringed], mean[ringed], linestyle="none", marker="o", markersize=10,
                          markerfacecolor="none", markeredgecolor="k", markeredgewidth=0.9,
                          gid=f"edge:{policy}")
        axis.set_xscale("log", base=2)
        workers = sorted({r["workers"] for r in rows})
        axis.set_xticks(workers, [str(m) for m in workers])
        axis.minorticks_off()
        axis.margins(y=0.08)
        if not reached_any:
            _note(axis, "no policy reached this target", "lower left")
        elif panel_missed:    # a band at the top for the missed targets, clear of the data
            low, high = axis.get_ylim()
            axis.set_yticks([tick for tick in axis.get_yticks() if low <= tick <= high])
            axis.set_ylim(low, low + (high - low) / BAND_BELOW)
            axis.plot([0, 1], [BAND_BELOW, BAND_BELOW], transform=axis.transAxes, color="0.75",
                      linewidth=0.6, linestyle="-")
        axis.set_title(f"target loss {target:g}")
        axis.set_xlabel("workers m")
        axis.set_ylabel("updates to target")
    handles = [_policy_handle(policy) for policy in policies]
    labels = list(policies)
    if missed_any:
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor="0.3", markersize=6))
        labels.append(MISSED_LABEL)
    if edge_any:
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                              markeredgecolor="k", markersize=10))
        labels.append(EDGE_MOMENTUM_LABEL if label_momenta else EDGE_LABEL)
    _legend(figure, handles, labels, [MOMENTUM_NOTE] if label_momenta else [])
    return figure


def plot_comparison(rows: list[dict], title: str, path: str, *, edges: set = frozenset(),
                    note: str = "", label_momenta: bool = False, dpi: int = DEFAULT_DPI) -> str:
    return _save(comparison_figure(rows, title, edges=edges, note=note, label_momenta=label_momenta),
                 path, dpi)


def edge_keys(best: list[dict]) -> set:
    """(policy, workers, target) of the best.csv rows whose best step or momentum is at the
    grid's edge."""
    return {(r["policy"], r["workers"], r["target"]) for r in best
            if r.get("lr_at_grid_edge") or r.get("momentum_at_grid_edge")}


def transfer_edge_keys(best: list[dict], transfer: list[dict]) -> set:
    """(policy, workers, target) of the transfer rows whose step (tuned at the smallest m) was at
    the edge of the grid there."""
    if not best:
        return set()
    smallest = min(r["workers"] for r in best)
    tuned_at_edge = {(r["policy"], r["target"]) for r in best if r["workers"] == smallest
                     and (r.get("lr_at_grid_edge") or r.get("momentum_at_grid_edge"))}
    return {(r["policy"], r["workers"], r["target"]) for r in transfer
            if (r["policy"], r["target"]) in tuned_at_edge}


def same_numbers(best: list[dict], transfer: list[dict]) -> bool:
    """Whether the best and transfer tables show the same updates everywhere (each policy's best
    step is the one tuned at the smallest m)."""
    key = lambda r: (r["target"], r["workers"], r["policy"])  # noqa: E731
    shown = lambda r: tuple(r[f"updates_{s}"] for s in ("mean", "min", "max"))  # noqa: E731
    return bool(best) and {key(r): shown(r) for r in best} == {key(r): shown(r) for r in transfer}


# ---------------------------------------------------------------------------- run directories
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


def figures(run_dir: str) -> dict:
    """Every figure of ``run_dir`` (name -> matplotlib Figure, names from FIGURES) from its cells
    and the tables in its summary.json (written by the experiment's ``write_tables``)."""
    records = check_run_dir(run_dir)
    try:
        with open(os.path.join(run_dir, SUMMARY_FILE)) as handle:
            tables = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise RunDirError(f"{run_dir}: cannot read {SUMMARY_FILE} ({error}); run `hogwild-mts report "
                          f"{run_dir}` to rebuild it") from None
    finished = [r for r in records if not r["diverged"]]
    unit = finished[0]["time_unit"] if finished else "seconds"
    drawn = {}
    if finished:
        drawn["staleness"] = staleness_figure(finished)
        drawn["loss_vs_updates"] = loss_figure(finished, tables, "updates", "updates")
        drawn["loss_vs_time"] = loss_figure(finished, tables, "time_s", f"time ({unit})")
        drawn["alpha_tables"] = alpha_tables_figure(finished, tables)
    # the labels with a fixed momentum stay in the tables; the figures show each policy tuned
    best, transfer = ([r for r in tables[name] if r.get("fixed_momentum") is None]
                      for name in ("best", "transfer"))
    label_momenta = len(tables["config"].get("momenta", [0.0])) > 1
    drawn["best_vs_workers"] = comparison_figure(
        best, "best against best: each policy at its best step" + (" and momentum" if label_momenta else "")
        + " for each m", edges=edge_keys(best), label_momenta=label_momenta)
    smallest = min(record["workers"] for record in records)
    drawn["transfer_vs_workers"] = comparison_figure(
        transfer, f"transfer: the step{' and momentum' if label_momenta else ''} tuned at m = {smallest}, unchanged",
        edges=transfer_edge_keys(best, transfer), label_momenta=label_momenta,
        note="the same numbers as best against best: each policy's best step is the same at every m"
        if same_numbers(best, transfer) else "")
    return drawn


def draw_all(run_dir: str, fmt: str = DEFAULT_FORMAT, dpi: int = DEFAULT_DPI) -> list[str]:
    """Redraw every figure of ``run_dir`` into ``run_dir/plots/<name>.<fmt>`` at ``dpi`` (see
    :func:`figures`); return the paths written."""
    check_format(fmt)
    check_dpi(dpi)
    drawn = figures(run_dir)
    directory = os.path.join(run_dir, PLOTS_DIR)
    os.makedirs(directory, exist_ok=True)
    return [_save(figure, os.path.join(directory, f"{name}.{fmt}"), dpi) for name, figure in drawn.items()]
