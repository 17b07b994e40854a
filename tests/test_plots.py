"""Figures of an experiment run: one colour and marker per policy in every figure (read from the
drawn artists), missed-target and grid-edge markers, identical-curve notes, the staleness tail,
--format/--dpi."""

import os

import pytest
from matplotlib.colors import to_hex

from hogwild_mts.app import experiment, plots
from hogwild_mts.app.cli import main
from hogwild_mts.app.experiment import load_config, run_grid

LABELS = ("constant", "tail", "mts-x")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small grid: three labels (one not a registered name), two steps (so every best step is
    at the grid's edge), a target nobody reaches (1e-9)."""
    out = str(tmp_path_factory.mktemp("plots") / "run")
    config = load_config(None, {"data": "synthetic-sparse:n=400,d=60,nnz=5,seed=1", "policies": list(LABELS),
                                "policy_options": {"mts-x": {"policy": "mindthestep"}},
                                "workers": [1, 4], "seeds": [0, 1], "epochs": 2, "eval_updates": 40,
                                "lrs": [0.25, 0.5], "targets": [0.6, 1e-9]})
    run_grid(config, out, plots=False, log=open(os.devnull, "w"))
    return out


def _styles(figure) -> dict:
    """label -> set of (colour, marker) of the artists drawn for that policy (gid policy:<label>;
    a missed target's open marker: its edge colour and marker)."""
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D

    found = {}
    for artist in figure.findobj():
        gid = artist.get_gid() or ""
        kind, _, label = gid.partition(":")
        if kind == "policy" and isinstance(artist, Line2D):   # errorbar caps: colour only
            marker = artist.get_marker()
            style = (to_hex(artist.get_color()), None if marker in ("_", "|") else marker)
        elif kind == "policy" and isinstance(artist, Collection):
            style = (to_hex(artist.get_facecolor()[0] if len(artist.get_facecolor())
                            else artist.get_edgecolor()[0], keep_alpha=False), None)
        elif kind == "missed":
            style = (to_hex(artist.get_markeredgecolor()), artist.get_marker())
        else:
            continue
        found.setdefault(label, set()).add(style)
    return found


def test_every_figure_draws_each_policy_in_one_colour_and_marker(run_dir):
    drawn = plots.figures(run_dir)
    assert set(drawn) == set(plots.FIGURES)
    seen = {}
    for name, figure in drawn.items():
        if name == "staleness":     # no policy in it
            continue
        styles = _styles(figure)
        assert set(styles) == set(LABELS), name
        for label, pairs in styles.items():
            for color, marker in pairs:
                seen.setdefault(label, set()).add(color)
                if marker is not None:
                    seen.setdefault((label, "marker"), set()).add(marker)
    for label in LABELS:
        assert seen[label] == {to_hex(plots.policy_style(label)["color"])}, label
        assert seen[(label, "marker")] == {plots.policy_style(label)["marker"]}, label
    colours = [next(iter(seen[label])) for label in LABELS]
    assert len(set(zip(colours, (plots.policy_style(label)["marker"] for label in LABELS)))) == 3


def test_policy_styles_are_fixed_for_known_names_and_a_stable_hash_otherwise():
    assert plots.policy_style("constant") == {"color": plots.PALETTE[0], "marker": plots.MARKERS[0]}
    assert plots.policy_style("mindthestep") == {"color": plots.PALETTE[4], "marker": plots.MARKERS[4]}
    known = {tuple(plots.policy_style(name).values()) for name in plots.KNOWN_POLICIES}
    assert len(known) == len(plots.KNOWN_POLICIES)
    for label in ("mts-x", "mts-r0.9-auto", "mts-momentum-poisson", "a", "zz"):
        style = plots.policy_style(label)
        assert style == plots.policy_style(label) and tuple(style.values()) not in known
    # a CRC-32 of the text: the same in every process and run (no per-process hash seed)
    assert plots.policy_style("mts-x") == {"color": "#CC79A7", "marker": "X"}


def _row(policy, workers, updates, target=0.5):
    return {"policy": policy, "workers": workers, "target": target, "updates_mean": updates,
            "updates_min": None if updates is None else updates - 5,
            "updates_max": None if updates is None else updates + 5}


def _legend_texts(figure):
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_a_missed_target_is_an_open_marker_at_the_top_with_a_legend_entry():
    rows = [_row("constant", 1, 100.0), _row("constant", 4, 120.0),
            _row("tail", 1, 90.0), _row("tail", 4, None)]
    figure = plots.comparison_figure(rows, "best")
    missed = [a for a in figure.findobj() if a.get_gid() == "missed:tail"]
    assert len(missed) == 1
    x, y = missed[0].get_data()
    assert list(y) == [plots.MISSED_AT] and 4 <= x[0] < 4.5     # m = 4 (slightly offset), top band
    assert missed[0].get_markerfacecolor() == "none"
    assert to_hex(missed[0].get_markeredgecolor()) == plots.policy_style("tail")["color"].lower()
    assert not [a for a in figure.findobj() if a.get_gid() == "missed:constant"]
    assert plots.MISSED_LABEL in _legend_texts(figure)
    axis = figure.axes[0]
    assert max(axis.get_yticks()) <= 125    # no tick label in the band of missed targets
    reached = plots.comparison_figure([_row("constant", 1, 100.0)], "best")
    assert plots.MISSED_LABEL not in _legend_texts(reached)


def test_a_best_step_at_the_grid_edge_is_ringed_noted_on_the_console_and_in_the_legend(run_dir, capsys):
    import json

    with open(os.path.join(run_dir, plots.SUMMARY_FILE)) as handle:
        best = json.load(handle)["best"]
    assert any(row["lr_at_grid_edge"] for row in best)       # two steps: every best is an edge
    figure = plots.figures(run_dir)["best_vs_workers"]
    rings = [a for a in figure.findobj() if (a.get_gid() or "").startswith("edge:")]
    assert rings and plots.EDGE_LABEL in _legend_texts(figure)
    config = experiment.run_config(run_dir)
    notes = experiment.edge_notes(best, config)
    assert notes and all(line.startswith("note: ") and "of its grid (" in line for line in notes)
    assert main(["report", run_dir, "--dpi", "50"]) == 0
    out = capsys.readouterr().out
    assert "best step is the" in out and ("try larger lrs" in out or "try smaller lrs" in out)
    inside = [dict(row, lr_at_grid_edge=False) for row in best]
    assert experiment.edge_notes(inside, config) == [
        "every policy's best step is inside its step grid (at every m and target)"]
    assert not [a for a in plots.comparison_figure(inside, "b", edges=plots.edge_keys(inside)).findobj()
                if (a.get_gid() or "").startswith("edge:")]


def test_identical_curves_are_detected_and_named_in_the_legend(run_dir):
    import numpy as np

    x = np.arange(5.0)
    assert plots.identical_groups({"a": (x, x), "b": (x, x * (1 + 1e-12)), "c": (x, x + 1)}) == [["a", "b"]]
    assert plots.identical_groups({"a": (x, x), "c": (x, x + 1)}) == []
    figure = plots.figures(run_dir)["loss_vs_updates"]
    # at m = 1 (no staleness) constant and tail take the same steps: the same curves
    notes = figure.legends[0].get_title().get_text()
    assert "m = 1: identical curves" in notes and "constant = " in notes
    assert "curves identical" in figure.axes[0].get_title()


def test_staleness_tail_and_the_single_worker_panel():
    records = [{"workers": 1, "staleness_histogram": [500], "staleness": {"max": 0}},
               {"workers": 4, "staleness_histogram": [100, 200, 100, 50, 0, 3],
                "staleness": {"max": 900}}]    # the last bin holds tau >= 5; the max is 900
    figure = plots.staleness_figure(records)
    body1, body4, tail1, tail4 = figure.axes[0], figure.axes[1], figure.axes[2], figure.axes[3]
    assert "all 500 updates at tau = 0" in " ".join(t.get_text() for t in body1.texts)
    assert not body1.patches                                         # no bar over -0.5..0.5
    assert tail4.get_xscale() == "log" and tail4.get_yscale() == "log"
    assert tail4.get_xlim()[1] >= 900 and "max tau 900" in tail4.get_title()
    beyond = [line for line in tail4.get_lines() if line.get_linestyle() == ":"
              and list(line.get_xdata()) == [5, 900]]
    assert beyond, "the dotted segment from the last bin to the recorded max"
    assert body4.patches and "no tail" in " ".join(t.get_text() for t in tail1.texts)


def test_loss_axes_keep_the_spikes(run_dir):
    figure = plots.figures(run_dir)["loss_vs_updates"]
    for axis in figure.axes:
        assert axis.get_yscale() == "log"
        highest = max(max(line.get_ydata()) for line in axis.get_lines() if len(line.get_ydata()) > 2)
        assert axis.get_ylim()[1] >= highest


@pytest.mark.parametrize("fmt,head", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_report_writes_pdf_and_svg(run_dir, fmt, head):
    assert main(["report", run_dir, "--format", fmt, "--dpi", "100"]) == 0
    for name in plots.FIGURES:
        with open(os.path.join(run_dir, "plots", f"{name}.{fmt}"), "rb") as handle:
            assert handle.read(5).startswith(head), name


@pytest.mark.parametrize("args,message", [
    (["--format", "jpg"], "argument --format: invalid choice: 'jpg'"),
    (["--dpi", "0"], "argument --dpi: must be an integer from 50 to 1200, got '0'"),
    (["--dpi", "high"], "argument --dpi: must be an integer from 50 to 1200, got 'high'"),
])
def test_bad_format_or_dpi_is_one_clear_error(run_dir, capsys, args, message):
    assert main(["report", run_dir, *args]) == 2
    assert main(["experiment", "--out", run_dir, *args]) == 2
    errors = capsys.readouterr().err
    assert errors.count(message) == 2, errors


def test_draw_all_checks_format_and_dpi(run_dir):
    with pytest.raises(ValueError, match="figure format must be one of png, pdf, svg, got 'gif'"):
        plots.draw_all(run_dir, "gif")
    with pytest.raises(ValueError, match="figure dpi must be an integer from 50 to 1200, got 20"):
        plots.draw_all(run_dir, "png", 20)


def test_the_quick_grid_has_steps_around_every_measured_best():
    # measured (docs/results.md): every policy's best step of the quick grid lies in 2-8
    lrs = experiment.QUICK["lrs"]
    assert min(lrs) < 2 and max(lrs) > 8


def test_the_transfer_figure_says_when_it_shows_the_best_figure_s_numbers():
    best = [dict(_row("constant", 1, 100.0), lr=1.0), dict(_row("constant", 4, 120.0), lr=1.0)]
    assert plots.same_numbers(best, [dict(row) for row in best])
    assert not plots.same_numbers(best, [best[0], _row("constant", 4, 150.0)])
    figure = plots.comparison_figure(best, "transfer", note="the same numbers as best against best")
    assert "the same numbers as best against best" in figure.get_suptitle()
