"""Experiment grids: a tiny grid end to end through the CLI (tables, plots), resume, targets not
reached, report, and bad configurations refused before anything runs."""

import csv
import io
import json
import os
import re

import numpy as np
import pytest

from hogwild_mts.app import experiment
from hogwild_mts.app.cli import main
from hogwild_mts.app.experiment import ConfigError, load_config, run_grid, target_reached
from hogwild_mts.app.plots import RunDirError, draw_all, figures
from hogwild_mts.core.files import DirectoryBusyError, directory_lock

TINY = ["--data", "synthetic-sparse:n=400,d=60,nnz=5,seed=1", "--policies", "constant,tail",
        "--workers", "1,4", "--seeds", "0,1", "--epochs", "2", "--eval-updates", "40", "--lrs", "0.5"]
PLOTS = ("staleness.png", "loss_vs_updates.png", "loss_vs_time.png", "alpha_tables.png",
         "best_vs_workers.png", "transfer_vs_workers.png")


def read_config_file(run_dir):
    return json.loads((run_dir / "config.json").read_text())


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_tiny_grid_end_to_end_writes_tables_and_plots(tmp_path):
    out = tmp_path / "run"
    assert main(["experiment", "--out", str(out), "--targets", "0.6", *TINY]) == 0
    cells = read_csv(out / "cells.csv")
    assert len(cells) == 8 and {c["policy"] for c in cells} == {"constant", "tail"}
    assert all(0 < float(c["resolution"]) * float(c["updates_to_target"]) <= 40 + 1e-9 for c in cells)
    assert all(c["reached"] == "True" and float(c["updates_to_target"]) > 0 for c in cells)
    summary = read_csv(out / "summary.csv")
    assert {(s["policy"], s["workers"]) for s in summary} == {(p, m) for p in ("constant", "tail")
                                                              for m in ("1", "4")}
    assert all(s["seeds"] == "2" for s in summary)
    fits = read_csv(out / "staleness_fits.csv")
    assert [f["workers"] for f in fits] == ["1", "4"] and float(fits[1]["tv_cmp"]) <= 1
    for name in PLOTS:
        assert (out / "plots" / name).stat().st_size > 1000
    record = json.loads((out / "cells" / "tail-a0.5-m4-s1.json").read_text())
    assert record["staleness"]["mean"] > 0 and len(record["alpha_table"]) > 1


def test_resume_skips_finished_cells_and_extends_the_grid(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    config = load_config(None, {"data": "synthetic-sparse:n=300,d=40,nnz=4", "policies": ["constant"],
                                "workers": [1, 2], "seeds": [0], "epochs": 1, "targets": [0.6],
                                "lrs": [0.5]})
    assert run_grid(config, out, plots=False) == {"ran": 2, "skipped": 0, "cells": 2}
    first = os.stat(os.path.join(out, "cells", "constant-a0.5-m2-s0.json")).st_mtime_ns
    ran = []
    original = experiment.run_cell
    monkeypatch.setattr(experiment, "run_cell", lambda c, cell, d: ran.append(cell) or original(c, cell, d))
    config["seeds"] = [0, 1]
    assert run_grid(config, out, plots=False) == {"ran": 2, "skipped": 2, "cells": 4}
    assert [cell["seed"] for cell in ran] == [1, 1]
    assert os.stat(os.path.join(out, "cells", "constant-a0.5-m2-s0.json")).st_mtime_ns == first
    assert len(read_csv(os.path.join(out, "cells.csv"))) == 4
    assert not [n for n in os.listdir(os.path.join(out, "cells")) if n.startswith(".tmp")]
    config["policy_options"] = {"constant": {"policy": "constant", "lrs": [0.5, 1.0]}}
    assert run_grid(config, out, plots=False) == {"ran": 4, "skipped": 4, "cells": 8}  # its own grid
    config["eval_updates"] = 7
    with pytest.raises(ConfigError, match="other settings"):
        run_grid(config, out, plots=False)
    with directory_lock(out, "a grid already running"):  # another grid writing into the same --out
        with pytest.raises(DirectoryBusyError, match=f"experiment directory '{out}' is in use by "
                                                     f"another run \\(pid {os.getpid()}\\)"):
            run_grid(config, out, plots=False)


def test_a_stop_signal_held_while_a_cell_finished_stops_the_grid_after_that_cell(tmp_path):
    out = str(tmp_path / "run")
    config = load_config(None, {"data": "synthetic-sparse:n=300,d=40,nnz=4", "policies": ["constant"],
                                "workers": [1, 2], "seeds": [0], "epochs": 1, "targets": [0.6],
                                "lrs": [0.5]})
    with pytest.raises(KeyboardInterrupt):
        run_grid(config, out, plots=False, stop_signals=[15])  # as signals.stop_on_signals fills it
    assert os.listdir(os.path.join(out, "cells")) == ["constant-a0.5-m1-s0.json"]
    assert run_grid(config, out, plots=False) == {"ran": 1, "skipped": 1, "cells": 2}


def test_a_target_never_reached_is_recorded_with_its_best_loss(tmp_path):
    out = tmp_path / "run"
    assert main(["experiment", "--out", str(out), "--targets", "1e-9", *TINY, "--no-plots"]) == 0
    cells = read_csv(out / "cells.csv")
    assert len(cells) == 8
    assert all(c["reached"] == "False" and c["updates_to_target"] == "" and float(c["best_loss"]) > 0
               for c in cells)
    assert all(s["reached"] == "0" for s in read_csv(out / "summary.csv"))
    assert all(b["reached"] == "False" and b["vs_best_constant"] == "" for b in read_csv(out / "best.csv"))


def test_target_reached_interpolates_the_first_crossing():
    history = {"updates": [0, 10, 20, 30], "time_s": [0.0, 1.0, 2.0, 3.0], "loss": [0.7, 0.5, 0.3, 0.2]}
    assert target_reached(history, 0.5) == {"target": 0.5, "reached": True, "updates": 10, "time": 1.0,
                                            "resolution": 1.0}
    between = target_reached(history, 0.25)
    assert between["updates"] == pytest.approx(25) and between["time"] == pytest.approx(2.5)
    assert between["resolution"] == pytest.approx(10 / 25)
    assert target_reached(history, 0.9) == {"target": 0.9, "reached": True, "updates": 0, "time": 0.0,
                                            "resolution": 0.0}
    assert target_reached(history, 0.1)["reached"] is False


def test_report_redraws_and_refuses_non_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["experiment", "--out", str(out), "--targets", "0.6", *TINY, "--no-plots"]) == 0
    assert not (out / "plots").exists()
    assert main(["report", str(out)]) == 0
    for name in PLOTS:
        assert (out / "plots" / name).stat().st_size > 1000
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an experiment run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    with pytest.raises(RunDirError, match="not a directory"):
        draw_all(str(tmp_path / "missing"))
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(RunDirError, match="no finished cells"):
        draw_all(str(tmp_path / "empty"))


@pytest.mark.parametrize("overrides,message", [
    ({"policies": ["constant", "fastest"]}, "unknown policy 'fastest'"),
    ({"policies": []}, "policies must be a non-empty list"),
    ({"workers": []}, "workers must be a non-empty list"),
    ({"workers": [0]}, "workers must hold integers >= 1"),
    ({"seeds": [1, 1]}, "seeds has repeated entries"),
    ({"task": "vision"}, "unknown task 'vision'"),
    ({"mode": "fake"}, "unknown mode 'fake'"),
    ({"task": "torch", "mode": "simulated", "staleness": "uniform"}, "unknown staleness 'uniform'"),
    ({"model": "forest"}, "unknown model 'forest'"),
    ({"staleness": "uniform"}, "unknown staleness 'uniform'"),
    ({"compute": "weibull"}, "unknown compute"),
    ({"targets": [-1.0]}, "targets must hold finite numbers > 0"),
    ({"lrs": []}, "lrs must be a non-empty list"),
    ({"lrs": [0.1, 0.1]}, "lrs has repeated entries"),
    ({"policy_options": {"constant": {"lrs": [0.0]}}}, "lrs of constant must hold"),
    ({"eval_updates": 0}, "eval_updates must be an integer >= 1"),
    ({"refit_every": -1}, "refit_every must be null or an integer >= 0"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"policy_options": {"tail": {"A": 2.0}}, "policies": ["tail"]}, "A must be"),
    ({"policy_options": {"mts": {"policy": "mindthestep", "speed": 1}}, "policies": ["mts"]}, "unknown option"),
    ({"momentum": 1.0}, r"momentum must be a finite number in \[0, 1\), got 1.0"),
    ({"momentum": -0.2}, "momentum must be .* got -0.2"),
    ({"momentum": "high"}, "momentum must be .* got 'high'"),
    ({"task": "torch", "weight_decay": -1.0}, "weight_decay must be a finite number >= 0, got -1.0"),
    ({"weight_decay": 0.01}, "weight_decay=0.01 applies to the torch task; .* l2 is the weight decay"),
])
def test_bad_configurations_are_refused_before_running(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_bad_config_files_and_keys(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown experiment setting"):
        load_config(None, {"workerz": [1]})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(str(bad), {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "none.json"), {})
    bad.write_text(json.dumps({"policies": ["nope"]}))
    assert main(["experiment", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_labels_run_one_policy_with_several_settings(tmp_path):
    config = load_config(None, {"data": "synthetic-sparse:n=300,d=40,nnz=4", "epochs": 1, "seeds": [0],
                                "workers": [4], "policies": ["mindthestep", "mts-shrink"], "lrs": [0.5],
                                "policy_options": {"mts-shrink": {"policy": "mindthestep",
                                                                  "target": "shrink", "r": 0.9}}})
    run_grid(config, str(tmp_path), plots=False)
    record = json.loads((tmp_path / "cells" / "mts-shrink-a0.5-m4-s0.json").read_text())
    assert record["policy_description"]["parameters"] == {"target": "shrink", "r": 0.9, "beta": 1.0,
                                                         "staleness_model": "empirical"}


def test_staleness_plot_when_the_tail_ends_in_the_last_bin(tmp_path):
    from hogwild_mts.app.plots import plot_staleness

    path = plot_staleness([{"workers": 2, "staleness_histogram": [58, 111, 11]}], str(tmp_path / "s.png"))
    assert os.path.getsize(path) > 1000


def _row(policy, lr, workers, updates, target=0.5, reached=2, momentum=0.0):
    """A summary.csv row with two seeds at ``updates`` (a list of two)."""
    return {"policy": policy, "lr": lr, "momentum": momentum, "workers": workers, "target": target, "seeds": 2,
            "reached": reached, "resolution_max": 0.01, "updates_to_target_mean": sum(updates) / 2,
            "updates_to_target_std": abs(updates[0] - updates[1]) / 2 ** 0.5,
            "updates_to_target_min": min(updates), "updates_to_target_max": max(updates)}


def test_best_against_best_and_transfer_pick_steps_per_m_and_compare_with_the_best_baseline():
    config = load_config(None, {"policies": ["constant", "tail", "mindthestep"], "workers": [1, 16],
                                "lrs": [0.5, 1.0, 2.0]})
    summary = [_row("constant", 1.0, 1, [100, 100]), _row("constant", 2.0, 1, [90, 200]),
               _row("constant", 0.5, 16, [150, 150]), _row("constant", 1.0, 16, [300, 300]),
               _row("tail", 1.0, 1, [120, 120]), _row("tail", 1.0, 16, [140, 140]),
               _row("mindthestep", 2.0, 1, [80, 80], reached=2), _row("mindthestep", 2.0, 16, [112, 112]),
               _row("mindthestep", 1.0, 16, [90, 130], reached=1)]
    best, transfer = experiment.compare(config, summary)
    best = {(b["policy"], b["workers"]): b for b in best}
    assert best[("constant", 1)]["lr"] == 1.0
    assert best[("constant", 16)]["lr"] == 0.5 and best[("constant", 16)]["lr_at_grid_edge"]
    assert best[("mindthestep", 16)]["lr"] == 2.0       # 1.0 lost a seed
    assert best[("mindthestep", 16)]["vs_best_constant"] == pytest.approx(112 / 150)
    assert best[("mindthestep", 16)]["vs_best_baseline"] == pytest.approx(112 / 140)
    assert best[("mindthestep", 16)]["best_baseline"] == "tail"
    transfer = {(t["policy"], t["workers"]): t for t in transfer}
    assert transfer[("constant", 16)]["lr"] == 1.0
    assert transfer[("constant", 16)]["vs_own_smallest_m"] == pytest.approx(3.0)
    assert transfer[("mindthestep", 16)]["vs_own_smallest_m"] == pytest.approx(112 / 80)
    assert transfer[("mindthestep", 16)]["vs_best_constant"] == pytest.approx(112 / 150)


def test_calibrated_staleness_has_mean_half_the_other_workers_and_a_rare_tail():
    counts = experiment.calibrated_staleness(16)
    share = counts / counts.sum()
    assert float(np.dot(share, np.arange(counts.size))) == pytest.approx(8.0, abs=0.1)
    assert share[100:].sum() == pytest.approx(experiment.CALIBRATED_TAIL_SHARE, rel=1e-6)
    assert counts.size == experiment.CALIBRATED_TAIL_RANGE[1] + 1
    assert experiment.calibrated_staleness(1).tolist() == [1]


def test_mnist1d_is_generated_offline_with_the_published_shape():
    from hogwild_mts.data.images import load_images  # the mnist1d package is a requirement
    from hogwild_mts.data.tabular import DataError

    state = np.random.get_state()[1].copy()
    data = load_images("mnist1d:n=100,seed=3")
    assert np.array_equal(np.random.get_state()[1], state)     # the global state is restored
    assert (data.n_train, data.n_test, data.input_shape, data.n_classes) == (80, 20, (1, 1, 40), 10)
    again = load_images("mnist1d:n=100,seed=3")
    assert np.array_equal(again.train_images, data.train_images)
    for spec, named in (("mnist1d:n=15", "multiple of 10"), ("mnist1d:size=3", "size=3"),
                        ("mnist1d:seed=x", "'x'")):
        with pytest.raises(DataError, match=named):
            load_images(spec)


def test_a_grid_with_momentum_runs_and_binds_the_policies_with_it(tmp_path, monkeypatch):
    config = load_config(None, {"data": "synthetic-sparse:n=200,d=30,nnz=4,seed=1", "epochs": 1,
                                "seeds": [0], "workers": [2], "policies": ["constant", "mts"],
                                "lrs": [0.1], "targets": [0.6], "momentum": 0.5,
                                "policy_options": {"mts": {"policy": "mindthestep", "target": "momentum",
                                                           "mu": 0.9, "min_samples": 0}}})
    made = []
    original = experiment.make_engine
    monkeypatch.setattr(experiment, "make_engine", lambda c, cell: made.append(original(c, cell)) or made[-1])
    assert run_grid(config, str(tmp_path), plots=False) == {"ran": 2, "skipped": 0, "cells": 2}
    assert [engine.momentum for engine in made] == [0.5, 0.5]
    record = json.loads((tmp_path / "cells" / "mts-a0.1-mu0.5-m2-s0.json").read_text())
    assert not record["diverged"] and record["updates"] == 200 and record["momentum"] == 0.5
    policy = experiment.make_policy("mindthestep", lr=0.1, target="momentum", mu=0.9, min_samples=0)
    policy.bind(2, 0.5)
    policy.observe(np.asarray(record["staleness_histogram"], dtype=np.int64))
    assert record["alpha_table"] == [float(a) for a in policy.table()[:experiment.ALPHA_TABLE_ENTRIES]]
    config["momenta"] = [0.5, 0.0]      # momenta are part of the grid: extending them reuses cells
    assert run_grid(config, str(tmp_path), plots=False) == {"ran": 2, "skipped": 2, "cells": 4}
    assert made[-1].momentum == 0.0 and (tmp_path / "cells" / "mts-a0.1-m2-s0.json").exists()


def test_a_run_directory_from_before_momentum_resumes(tmp_path):
    config = load_config(None, {"data": "synthetic-sparse:n=200,d=30,nnz=4,seed=1", "epochs": 1,
                                "seeds": [0], "workers": [1], "policies": ["constant"], "lrs": [0.1]})
    older = {key: value for key, value in config.items()
             if key not in ("momenta", "weight_decay", "stragglers", "worker_speeds")}
    (tmp_path / "config.json").write_text(json.dumps(older))
    experiment.prepare_run_dir(str(tmp_path), config)


def test_a_run_directory_with_one_momentum_resumes_under_momenta(tmp_path, capsys):
    settings = {"data": "synthetic-sparse:n=200,d=30,nnz=4,seed=1", "epochs": 1, "seeds": [0],
                "workers": [2], "policies": ["constant"], "lrs": [0.1], "targets": [0.6]}
    config = load_config(None, {**settings, "momentum": 0.5})
    assert config["momenta"] == [0.5] and "momentum" not in config
    run_grid(config, str(tmp_path), plots=False)
    # as a run from before momenta left it: a single momentum in config.json, none in the cells
    old_config = {key: value for key, value in config.items() if key != "momenta"}
    (tmp_path / "config.json").write_text(json.dumps({**old_config, "momentum": 0.5}))
    cell = tmp_path / "cells" / "constant-a0.1-mu0.5-m2-s0.json"
    record = json.loads(cell.read_text())
    del record["momentum"]
    record["name"] = "constant-a0.1-m2-s0"
    cell.unlink()
    (tmp_path / "cells" / "constant-a0.1-m2-s0.json").write_text(json.dumps(record))
    assert main(["report", str(tmp_path), "--dpi", "50"]) == 0     # an old run still reports
    assert read_csv(tmp_path / "best.csv")[0]["momentum"] == "0.5"
    assert json.loads(cell.read_text())["momentum"] == 0.5
    again = load_config(None, {**settings, "momenta": [0.5, 0.0]})
    assert run_grid(again, str(tmp_path), plots=False) == {"ran": 1, "skipped": 1, "cells": 2}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**settings, "momentum": 0.25}))
    assert load_config(str(path), {})["momenta"] == [0.25]
    assert load_config(str(path), {"momenta": [0.0, 0.9]})["momenta"] == [0.0, 0.9]
    with pytest.raises(ConfigError, match="both momentum and momenta"):
        load_config(None, {"momentum": 0.5, "momenta": [0.5]})


def test_a_grid_over_two_momenta_names_the_winning_momentum(tmp_path):
    config = load_config(None, {"data": "synthetic-sparse:n=400,d=60,nnz=5,seed=1", "epochs": 2,
                                "seeds": [0, 1], "workers": [1, 4], "policies": ["constant"],
                                "lrs": [0.2, 0.5], "momenta": [0.0, 0.5], "targets": [0.6],
                                "eval_updates": 20})
    log = io.StringIO()
    assert run_grid(config, str(tmp_path), plots=False, log=log)["ran"] == 16
    summary = read_csv(tmp_path / "summary.csv")
    assert {(s["momentum"], s["lr"]) for s in summary} == {(mu, a) for mu in ("0.0", "0.5")
                                                              for a in ("0.2", "0.5")}
    best = {(b["policy"], b["workers"]): b for b in read_csv(tmp_path / "best.csv")}
    assert set(best) == {(p, m) for p in ("constant", "constant@mu0", "constant@mu0.5") for m in ("1", "4")}
    for m in ("1", "4"):
        fastest = min((s for s in summary if s["workers"] == m and s["reached"] == "2"),
                      key=lambda s: float(s["updates_to_target_mean"]))
        assert (best[("constant", m)]["momentum"], best[("constant", m)]["lr"]) == \
            (fastest["momentum"], fastest["lr"])
        assert best[(f"constant@mu{float(fastest['momentum']):g}", m)]["vs_best_constant"] == "1.0"
        assert best[("constant@mu0", m)]["fixed_momentum"] == "0.0"
    transfer = {(t["policy"], t["workers"]): t for t in read_csv(tmp_path / "transfer.csv")}
    assert transfer[("constant", "4")]["momentum"] == best[("constant", "1")]["momentum"]
    assert f"best momentum of constant at target 0.6: m = 1: mu {float(best[('constant', '1')]['momentum']):g}" \
        in log.getvalue()
    figure = figures(str(tmp_path))["best_vs_workers"]
    assert [a for a in figure.findobj() if a.get_gid() == "momentum:constant"]


def test_the_best_momentum_at_the_edge_of_the_momenta_is_flagged_and_transfers():
    config = load_config(None, {"policies": ["constant"], "workers": [1, 16], "lrs": [0.5, 1.0, 2.0],
                                "momenta": [0.0, 0.5, 0.9]})
    summary = [_row("constant", 1.0, 1, [100, 100], momentum=0.9), _row("constant", 1.0, 1, [150, 150]),
               _row("constant", 1.0, 16, [300, 300], momentum=0.9), _row("constant", 1.0, 16, [200, 200]),
               _row("constant", 0.5, 16, [250, 250], momentum=0.5)]
    best, transfer = experiment.compare(config, summary)
    best = {(b["policy"], b["workers"]): b for b in best}
    assert best[("constant", 1)]["momentum"] == 0.9 and best[("constant", 1)]["momentum_at_grid_edge"]
    assert best[("constant", 16)]["momentum"] == 0.0 and not best[("constant", 16)]["momentum_at_grid_edge"]
    assert best[("constant@mu0", 1)]["vs_best_constant"] == pytest.approx(1.5)
    assert best[("constant@mu0.5", 16)]["lr"] == 0.5 and not best[("constant@mu0.5", 1)]["reached"]
    transfer = {(t["policy"], t["workers"]): t for t in transfer}
    assert (transfer[("constant", 16)]["lr"], transfer[("constant", 16)]["momentum"]) == (1.0, 0.9)
    assert transfer[("constant", 16)]["vs_own_smallest_m"] == pytest.approx(3.0)
    assert transfer[("constant@mu0", 16)]["vs_own_smallest_m"] == pytest.approx(200 / 150)
    notes = experiment.edge_notes(list(best.values()), config)
    assert "note: constant's best momentum is the largest of the momenta (0.9 of 0-0.9) for target " \
           "0.5 at m = 1: try larger (below 1) momenta" in notes
    assert not any("smallest of the momenta" in line for line in notes)


@pytest.mark.parametrize("overrides,message", [
    ({"stragglers": "0.1:10"}, "need staleness 'event', not 'calibrated'"),
    ({"staleness": "event", "stragglers": "ten"}, r"stragglers must be 'SHARE:FACTOR'.*\(at m = 1\)"),
    ({"staleness": "event", "worker_speeds": [1, 2, 3, 4]}, r"as one list fits a grid of one m, not workers \[1, 4, 16\]"),
    ({"staleness": "event", "workers": [2], "worker_speeds": [1, 2, 3]}, r"one speed per worker \(2\), got 3: .*\(at m = 2\)"),
    ({"staleness": "event", "workers": [2, 4], "worker_speeds": {"2": [1, 2]}}, "no list for m = 4"),
    ({"staleness": "event", "workers": [2], "worker_speeds": {"2": [1, 2], "3": [1, 1, 1]}},
     r"lists for m = 3, which the grid's workers \[2\] lack"),
    ({"staleness": "event", "workers": [2], "worker_speeds": [1, -1]}, "finite numbers > 0, got -1"),
    ({"mode": "real", "stragglers": "0.1:10"}, "need mode 'simulated', not 'real'"),
    ({"momenta": []}, "momenta must be a non-empty list"),
    ({"momenta": [0.0, 1.0]}, r"momentum must be a finite number in \[0, 1\), got 1.0"),
    ({"momenta": [0.5, 0.5]}, "momenta has repeated entries"),
])
def test_heterogeneous_workers_and_momenta_are_checked_before_running(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_stragglers_and_worker_speeds_reach_the_simulator(tmp_path, capsys):
    config = load_config(None, {"staleness": "event", "workers": [2, 4], "stragglers": "0.25:10"})
    engine = experiment.make_engine(config, {"policy": "constant", "lr": 1.0, "momentum": 0.0,
                                             "workers": 4, "seed": 0})
    assert engine.slowness.tolist() == pytest.approx([0.775] * 3 + [7.75])   # speeds 1, 1, 1, 0.1 over their mean
    config = load_config(None, {"staleness": "event", "workers": [2, 3],
                                "worker_speeds": {"2": [1, 3], "3": [1, 1, 2]}})
    engine = experiment.make_engine(config, {"policy": "constant", "lr": 1.0, "momentum": 0.0,
                                             "workers": 2, "seed": 0})
    assert engine.worker_speeds == [1, 3]
    out = str(tmp_path / "run")
    assert main(["experiment", "--out", out, "--staleness", "event", "--worker-speeds", "1,2,3",
                 "--workers", "2"]) == 2
    assert "one speed per worker (2), got 3" in capsys.readouterr().err
    assert main(["experiment", "--out", out, "--stragglers", "0.5:4", "--staleness", "event",
                 "--momenta", "0,0.5", "--momentum", "0.5"]) == 2
    assert "both momentum and momenta" in capsys.readouterr().err
    assert main(["experiment", "--out", out, "--stragglers", "0.5:4", "--staleness", "event", "--no-plots",
                 *TINY, "--targets", "0.6", "--policies", "constant", "--momenta", "0,0.5"]) == 0
    assert json.loads((tmp_path / "run" / "cells" / "constant-a0.5-mu0.5-m4-s1.json").read_text())["updates"] > 0
    assert read_config_file(tmp_path / "run")["stragglers"] == "0.5:4"


# ------------------------------------------------------------- hostile labels, names, run files
@pytest.mark.parametrize("overrides,message", [
    ({"policies": ["../../../ESCAPED"], "policy_options": {"../../../ESCAPED": {"policy": "constant"}}},
     r"policy label '../../../ESCAPED' is not allowed; use 1 to 100 letters, digits and '._\+-'"),
    ({"policies": ["constant", "/tmp/x"], "policy_options": {"/tmp/x": {"policy": "tail"}}},
     "policy label '/tmp/x' is not allowed"),
    ({"policies": [["constant"]]}, r"policy label \['constant'\] is not allowed"),
    ({"name": "../../ESCAPED"}, "name '../../ESCAPED' is not allowed; use 1 to 100 letters"),
    ({"name": ".hidden"}, "name '.hidden' is not allowed"),
    ({"policy_options": {"constant": 5}}, "policy_options must map a policy label to an object"),
])
def test_labels_and_names_that_would_leave_the_run_directory_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_label_with_a_path_writes_nothing_outside_the_run(tmp_path, capsys):
    config = tmp_path / "escape.json"
    config.write_text(json.dumps({"policies": ["../../../ESCAPED"],
                                  "policy_options": {"../../../ESCAPED": {"policy": "constant"}}}))
    out = tmp_path / "a" / "b" / "run"
    assert main(["experiment", "--config", str(config), "--out", str(out), *TINY[:2]]) == 2
    assert "policy label '../../../ESCAPED' is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["experiment", "--name", "../ESCAPED", "--no-plots", *TINY[:2]]) == 2
    assert "name '../ESCAPED' is not allowed" in capsys.readouterr().err


GOOD_CELL = {"name": "constant-a0.5-m1-s0", "policy": "constant", "lr": 0.5, "workers": 1, "seed": 0,
             "diverged": False, "best_loss": 0.5, "final_loss": 0.5, "staleness_histogram": [10],
             "staleness": {"mean": 0.0, "p99": 0, "max": 0},
             "history": {"loss": [0.7, 0.5], "updates": [0, 10], "time_s": [0.0, 0.1]}}


def _run_dir(tmp_path, config_text: str, cell_text: str):
    out = tmp_path / "run"
    (out / "cells").mkdir(parents=True)
    (out / "config.json").write_text(config_text)
    (out / "cells" / "constant-a0.5-m1-s0.json").write_text(cell_text)
    return out


@pytest.mark.parametrize("config_text,cell,message", [
    ("[1, 2]", GOOD_CELL, "config.json: the experiment config must be a JSON object, got list"),
    ("{broken", GOOD_CELL, "config.json: the experiment config is not valid JSON"),
    ('{"workers": "many"}', GOOD_CELL, "config.json: workers must be a non-empty list"),
    ("{}", "{broken", "constant-a0.5-m1-s0.json: the cell record is not valid JSON"),
    ("{}", [GOOD_CELL], "constant-a0.5-m1-s0.json: the cell record must be a JSON object, got list"),
    ("{}", {"name": "x"}, "constant-a0.5-m1-s0.json: cell key 'policy' must be a string, got missing"),
    ("{}", {**GOOD_CELL, "workers": "4"}, "cell key 'workers' must be an integer >= 1, got '4'"),
    ("{}", {**GOOD_CELL, "history": {"loss": [0.7, float("nan")], "updates": [0, 10], "time_s": [0, 1]}},
     "cell key 'history' must be an object of non-empty lists .* \\('loss' is not\\)"),
    ("{}", {**GOOD_CELL, "history": {"loss": [0.7], "updates": [0, 10], "time_s": [0, 1]}},
     "cell key 'history' must be an object of lists .* of one length"),
    ("{}", {**GOOD_CELL, "final_loss": None}, "cell key 'final_loss' must be a finite number, got None"),
    ("{}", {**GOOD_CELL, "staleness_histogram": {"0": 1}}, "cell key 'staleness_histogram' must be a list"),
])
def test_report_names_the_corrupt_run_file(tmp_path, capsys, config_text, cell, message):
    out = _run_dir(tmp_path, config_text, cell if isinstance(cell, str) else json.dumps(cell))
    assert main(["report", str(out)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert error.count("\n") == 1 and str(out) in error
    assert re.search(message, error), error


def test_resuming_over_a_corrupt_config_names_it(tmp_path, capsys):
    out = _run_dir(tmp_path, '["not", "settings"]', json.dumps(GOOD_CELL))
    assert main(["experiment", "--out", str(out), "--no-plots", *TINY]) == 2
    error = capsys.readouterr().err
    assert f"{out / 'config.json'}: the experiment config must be a JSON object, got list" in error
    assert "Traceback" not in error


def test_momentum_0_leaves_the_auto_policy_its_own_momentum_and_the_cell_records_it(tmp_path):
    config = load_config(None, {"data": "synthetic-sparse:n=200,d=30,nnz=4,seed=1", "epochs": 1,
                                "seeds": [0], "workers": [1, 16], "policies": ["auto"],
                                "lrs": [0.5], "targets": [0.6], "momenta": [0.0, 0.25],
                                "mode": "simulated", "staleness": "calibrated"})
    assert run_grid(config, str(tmp_path), plots=False)["ran"] == 4
    record = {name: json.loads((tmp_path / "cells" / f"auto-a0.5{name}.json").read_text())
              for name in ("-m1-s0", "-m16-s0", "-mu0.25-m16-s0")}
    chosen = experiment.make_policy("auto", lr=0.5).worker_momentum(16)
    assert record["-m1-s0"]["workers_momentum"] == 0.0
    assert record["-m16-s0"]["workers_momentum"] == chosen > 0
    assert record["-mu0.25-m16-s0"]["workers_momentum"] == 0.25    # a momentum given wins
    assert {r["momentum"] for r in record.values()} == {0.0, 0.25}
