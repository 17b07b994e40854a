"""Experiment grids: policies x workers x seeds on one task, with updates- and time-to-target.

A run directory holds ``config.json``, one ``cells/<policy>-m<workers>-s<seed>.json`` per finished
cell (written atomically, so an interrupted grid resumes where it stopped), and the tables rebuilt
from the cells after every run: ``cells.csv`` (one row per cell), ``summary.csv`` (per policy and
m: mean, std, min, max over seeds), ``staleness_fits.csv`` (TV of each staleness model per m) and
``plots/*.png`` (see :mod:`hogwild_mts.app.plots`).

Tasks: ``linear`` (a linear model on a ``--data`` spec; ``mode`` ``simulated`` with
:class:`~hogwild_mts.backends.sim.simulator.Simulator` or ``real`` with :class:`~hogwild_mts.engines.linear.Engine`)
and ``torch`` (a network on an image spec with :class:`~hogwild_mts.engines.networks.TorchEngine`,
``real`` only).  A cell reaches the target at the first history row with ``loss <= target_loss``;
``time_to_target`` is in the run's seconds (simulated seconds in simulated mode).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time

import numpy as np

from hogwild_mts.app.rundir import CELLS_DIR, CONFIG_FILE, read_cells, write_atomic
from hogwild_mts.policies.step_sizes import POLICIES, make_policy

TASKS = ("linear", "torch")
MODES = ("simulated", "real")
GRID_KEYS = ("policies", "workers", "seeds")
ALPHA_TABLE_ENTRIES = 256  # alpha(tau) entries stored per cell for the plots

# The default grid: simulated workers on a small sparse logistic regression (about a minute on
# 2 cores).  The target is a loss the one-worker run reaches in about an epoch.
QUICK = {
    "name": "quick",
    "task": "linear",
    "mode": "simulated",
    "model": "logreg",
    "data": "synthetic-sparse:n=20000,d=5000,nnz=20,seed=0",
    "l2": 0.0,
    "policies": ["constant", "inverse", "exponential", "tail", "mindthestep"],
    "policy_options": {},
    "workers": [1, 4, 16, 64],
    "seeds": [0, 1, 2],
    "alpha": 0.5,
    "epochs": 3,
    "batch_size": 1,
    "target_loss": 0.4,
    "staleness": "event",
    "compute": "exponential",
    "evaluations": 60,
    "eval_seconds": 0.05,
}
DEFAULTS_BY_TASK = {"torch": {"model": "mlp", "data": "digits", "alpha": 0.05, "batch_size": 16,
                              "epochs": 10, "mode": "real"}}


class ConfigError(ValueError):
    """An experiment configuration that cannot run; the message names the key and what is allowed."""


# ---------------------------------------------------------------------------- configuration
def load_config(path: str | None, overrides: dict) -> dict:
    """QUICK, updated from the JSON file at ``path`` (if any), then from ``overrides`` (None
    values ignored); task defaults fill keys neither gave.  Validated: see :func:`check_config`."""
    given = {}
    if path is not None:
        try:
            with open(path) as handle:
                given = json.load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read experiment config {path}: {error.strerror}") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(given, dict):
            raise ConfigError(f"{path} must hold a JSON object of settings, got {type(given).__name__}")
    given.update({key: value for key, value in overrides.items() if value is not None})
    unknown = sorted(set(given) - set(QUICK))
    if unknown:
        raise ConfigError(f"unknown experiment setting(s) {unknown}; allowed: {sorted(QUICK)}")
    config = dict(QUICK)
    config.update(DEFAULTS_BY_TASK.get(given.get("task", QUICK["task"]), {}))
    config.update(given)
    return check_config(config)


def _int_list(key: str, value, minimum: int) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list of integers >= {minimum}, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise ConfigError(f"{key} must hold integers >= {minimum}, got {item!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} has repeated entries: {value!r}")
    return value


def policy_spec(config: dict, label: str) -> tuple[str, dict]:
    """(registered policy name, options) of a grid entry: ``policy_options[label]`` may name the
    policy with ``"policy"`` (so one policy can appear with several settings under other labels)."""
    options = dict(config["policy_options"].get(label, {}))
    name = options.pop("policy", label)
    return name, options


def check_config(config: dict) -> dict:
    """Raise ConfigError (before anything runs) for unknown names, empty grids, bad numbers."""
    if config["task"] not in TASKS:
        raise ConfigError(f"unknown task {config['task']!r}; choose one of {list(TASKS)}")
    if config["mode"] not in MODES:
        raise ConfigError(f"unknown mode {config['mode']!r}; choose one of {list(MODES)}")
    if config["task"] == "torch" and config["mode"] == "simulated":
        raise ConfigError("the simulator runs linear models only; use mode 'real' for the torch task")
    if not isinstance(config["name"], str) or not config["name"]:
        raise ConfigError(f"name must be a non-empty string, got {config['name']!r}")
    policies = config["policies"]
    if not isinstance(policies, list) or not policies:
        raise ConfigError(f"policies must be a non-empty list of policy names, got {policies!r}")
    if not isinstance(config["policy_options"], dict):
        raise ConfigError(f"policy_options must map a policy label to its options, got "
                          f"{config['policy_options']!r}")
    if len(set(policies)) != len(policies):
        raise ConfigError(f"policies has repeated entries: {policies!r}")
    _int_list("workers", config["workers"], 1)
    _int_list("seeds", config["seeds"], 0)
    for key in ("epochs", "batch_size", "evaluations"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    for key in ("alpha", "target_loss", "eval_seconds"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")
    for label in policies:
        name, options = policy_spec(config, label)
        if name not in POLICIES:
            raise ConfigError(f"unknown policy {name!r} in policies; choose one of {sorted(POLICIES)} "
                              "(or give another label a 'policy' in policy_options)")
        make_policy(name, alpha=config["alpha"], **options)  # ValueError names a bad option
    if config["task"] == "linear":
        from hogwild_mts.backends.sim.simulator import compute_sampler, staleness_source
        from hogwild_mts.models.linear import LinearModel

        LinearModel(config["model"], l2=config["l2"])
        if config["mode"] == "simulated":
            staleness_source(config["staleness"], 1)
            compute_sampler(config["compute"])
    else:
        from hogwild_mts.models.nets import NETWORKS

        if config["model"] not in NETWORKS:
            raise ConfigError(f"unknown torch model {config['model']!r}; choose one of {sorted(NETWORKS)}")
    return config


def cells_of(config: dict) -> list[dict]:
    """The grid in run order: workers, then seeds, then policies (so partial grids compare)."""
    return [{"policy": p, "workers": m, "seed": s}
            for m in config["workers"] for s in config["seeds"] for p in config["policies"]]


def cell_name(cell: dict) -> str:
    return f"{cell['policy']}-m{cell['workers']}-s{cell['seed']}"


# ---------------------------------------------------------------------------- files
def _settings(config: dict) -> dict:
    """What must match for finished cells to be reused: everything but the grid and its name."""
    return {key: value for key, value in config.items() if key not in GRID_KEYS + ("name",)}


def prepare_run_dir(out_dir: str, config: dict) -> None:
    """Create ``out_dir`` or check that it holds the same experiment (grids may differ: extending
    a grid reuses the cells it shares)."""
    path = os.path.join(out_dir, CONFIG_FILE)
    if os.path.exists(path):
        with open(path) as handle:
            previous = json.load(handle)
        old, new = _settings(previous), _settings(config)
        differ = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
        if differ:
            raise ConfigError(f"{out_dir} holds an experiment with other settings ({', '.join(differ)}); "
                              "choose another --out or the same settings")
    os.makedirs(os.path.join(out_dir, CELLS_DIR), exist_ok=True)
    write_atomic(path, json.dumps(config, indent=2))


# ---------------------------------------------------------------------------- one cell
def load_task_data(config: dict):
    if config["task"] == "linear":
        from hogwild_mts.data.tabular import load_data

        return load_data(config["data"])
    from hogwild_mts.data.images import load_images

    return load_images(config["data"])


def make_engine(config: dict, cell: dict, n_rows: int):
    """The engine (real or simulated) that trains one cell.  Real runs defer their evaluations
    (parameter copies scored after the run), so frequent evaluations for a fine time-to-target
    take no core from the workers."""
    name, options = policy_spec(config, cell["policy"])
    policy = make_policy(name, alpha=config["alpha"], **options)
    common = dict(workers=cell["workers"], epochs=config["epochs"], batch_size=config["batch_size"],
                  seed=cell["seed"])
    if config["task"] == "torch":
        from hogwild_mts.engines.networks import TorchEngine

        return TorchEngine(config["model"], policy, eval_every=config["eval_seconds"], progress=False,
                           defer_evaluation=True, **common)
    from hogwild_mts.models.linear import LinearModel

    model = LinearModel(config["model"], l2=config["l2"])
    if config["mode"] == "real":
        from hogwild_mts.engines.linear import Engine

        return Engine(model, policy, eval_every=config["eval_seconds"], progress=False,
                      defer_evaluation=True, **common)
    from hogwild_mts.engines.simulated import Simulator

    updates = config["epochs"] * -(-n_rows // config["batch_size"])
    return Simulator(model, policy, staleness=config["staleness"], compute=config["compute"],
                     eval_every=max(1, updates // config["evaluations"]), **common)


def target_reached(history: dict, target: float) -> dict:
    """First history row with ``loss <= target``: its updates and time; else not reached, with
    the best (lowest) loss seen."""
    losses = history["loss"]
    best = min(losses) if losses else None
    for i, loss in enumerate(losses):
        if loss <= target:
            return {"reached": True, "updates_to_target": history["updates"][i],
                    "time_to_target": history["time_s"][i], "best_loss": best}
    return {"reached": False, "updates_to_target": None, "time_to_target": None, "best_loss": best}


def alpha_table(config: dict, cell: dict, histogram: np.ndarray) -> list:
    """The policy's alpha(tau) as the cell ended it (refitted on the cell's histogram)."""
    name, options = policy_spec(config, cell["policy"])
    policy = make_policy(name, alpha=config["alpha"], **options)
    policy.bind(cell["workers"])
    if getattr(policy, "refit_every", 0):
        policy.observe(histogram)
    return [float(a) for a in policy.table()[:ALPHA_TABLE_ENTRIES]]


def run_cell(config: dict, cell: dict, data) -> dict:
    """Train one cell; return its record (diverged runs are recorded, not dropped)."""
    from hogwild_mts.core.result import DivergenceError

    n_rows = data.n_train if config["task"] == "torch" else data.n_samples
    engine = make_engine(config, cell, n_rows)
    started = time.time()
    record = {**cell, "name": cell_name(cell), "target_loss": config["target_loss"],
              "time_unit": "simulated seconds" if config["mode"] == "simulated" else "seconds"}
    try:
        result = engine.fit(data)
    except DivergenceError as error:
        record.update(diverged=True, error=str(error), reached=False, updates_to_target=None,
                      time_to_target=None, best_loss=None, final_loss=None, final_accuracy=None,
                      wall_seconds=time.time() - started, staleness_histogram=[], history={})
        return record
    if result.interrupted:
        raise KeyboardInterrupt
    summary = result.to_dict()
    record.update(diverged=False, **target_reached(result.history, config["target_loss"]))
    record.update(final_loss=result.final_loss, final_accuracy=result.final_accuracy,
                  updates=result.updates, train_seconds=result.train_seconds,
                  wall_seconds=result.wall_seconds, staleness=summary["staleness"],
                  staleness_histogram=summary["staleness_histogram"],
                  staleness_fit=summary["staleness_fit"], policy_description=summary["policy"],
                  alpha_table=alpha_table(config, cell, result.staleness_histogram),
                  history=result.history, refits=result.refits)
    return record


# ---------------------------------------------------------------------------- the grid
def run_grid(config: dict, out_dir: str, *, log=sys.stderr, plots: bool = True) -> dict:
    """Run every cell not already in ``out_dir``; then rewrite the tables (and plots).
    Returns {"ran": n, "skipped": n, "cells": total}."""
    prepare_run_dir(out_dir, config)
    cells = cells_of(config)
    done = {record["name"] for record in read_cells(out_dir)}
    todo = [cell for cell in cells if cell_name(cell) not in done]
    skipped = len(cells) - len(todo)
    print(f"experiment {config['name']}: {len(cells)} cells ({config['task']}, {config['mode']}), "
          f"{skipped} already done in {out_dir}", file=log, flush=True)
    data = load_task_data(config) if todo else None
    grid_started = time.time()
    for number, cell in enumerate(todo, start=1):
        cell_started = time.time()
        record = run_cell(config, cell, data)
        write_atomic(os.path.join(out_dir, CELLS_DIR, record["name"] + ".json"), json.dumps(record))
        elapsed = time.time() - grid_started
        eta = elapsed / number * (len(todo) - number)
        print(f"[{skipped + number:>{len(str(len(cells)))}}/{len(cells)}] {describe_outcome(record)}"
              f"  ({time.time() - cell_started:.1f} s, about {eta:.0f} s left)", file=log, flush=True)
    write_tables(out_dir, config)
    if plots:
        from hogwild_mts.app.plots import draw_all

        for path in draw_all(out_dir):
            print(f"wrote {path}", file=log)
    return {"ran": len(todo), "skipped": skipped, "cells": len(cells)}


def describe_outcome(record: dict) -> str:
    head = f"{record['policy']} m={record['workers']} seed={record['seed']}: "
    if record["diverged"]:
        return head + "DIVERGED"
    if record["reached"]:
        outcome = (f"target {record['target_loss']:g} at {record['updates_to_target']:,} updates, "
                   f"{record['time_to_target']:.4g} {record['time_unit']}")
    else:
        outcome = f"target {record['target_loss']:g} NOT reached (best {record['best_loss']:.4g})"
    return head + outcome + f"; final loss {record['final_loss']:.4g}"


# ---------------------------------------------------------------------------- tables
CELL_COLUMNS = ("policy", "workers", "seed", "reached", "updates_to_target", "time_to_target",
                "best_loss", "final_loss", "final_accuracy", "diverged", "updates", "train_seconds",
                "wall_seconds", "staleness_mean", "staleness_p99", "staleness_max")
STALENESS_MODELS = ("geometric", "poisson", "cmp", "empirical")


def _spread(values: list) -> dict:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max())}


def summarize(records: list[dict]) -> list[dict]:
    """One row per (policy, workers): how many seeds reached the target, and the spread over
    seeds of updates- and time-to-target (reaching seeds only), final and best loss."""
    groups = {}
    for record in records:
        groups.setdefault((record["policy"], record["workers"]), []).append(record)
    rows = []
    for (policy, workers), group in groups.items():
        reached = [r for r in group if r["reached"]]
        finished = [r for r in group if not r["diverged"]]
        row = {"policy": policy, "workers": workers, "seeds": len(group), "reached": len(reached),
               "diverged": len(group) - len(finished)}
        for key, values in (("updates_to_target", [r["updates_to_target"] for r in reached]),
                            ("time_to_target", [r["time_to_target"] for r in reached]),
                            ("final_loss", [r["final_loss"] for r in finished]),
                            ("best_loss", [r["best_loss"] for r in finished])):
            for stat, value in _spread(values).items():
                row[f"{key}_{stat}"] = value
        rows.append(row)
    return sorted(rows, key=lambda row: (row["workers"], row["policy"]))


def staleness_fits(records: list[dict]) -> list[dict]:
    """Per m: the cells' histograms summed, and the total variation of each fitted model."""
    from hogwild_mts.staleness import models as staleness

    by_workers = {}
    for record in records:
        counts = np.asarray(record["staleness_histogram"], dtype=np.int64)
        if counts.size:
            total = by_workers.setdefault(record["workers"], np.zeros(0, np.int64))
            size = max(total.size, counts.size)
            by_workers[record["workers"]] = np.pad(total, (0, size - total.size)) + \
                np.pad(counts, (0, size - counts.size))
    rows = []
    for workers in sorted(by_workers):
        counts = by_workers[workers]
        row = {"workers": workers, "samples": int(counts.sum()),
               "mean": float(np.dot(np.arange(counts.size), counts) / counts.sum())}
        for name in STALENESS_MODELS:
            fitted = staleness.fit_model(name, counts)
            row[f"tv_{name}"] = fitted.fit_report.tv
            row[f"aic_{name}"] = fitted.fit_report.aic
        row["best_by_aic"] = min(("geometric", "poisson", "cmp"), key=lambda n: row[f"aic_{n}"])
        rows.append(row)
    return rows


def _write_csv(path: str, rows: list[dict], columns) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def write_tables(out_dir: str, config: dict) -> None:
    """cells.csv, summary.csv, staleness_fits.csv and summary.json from the cell files."""
    records = read_cells(out_dir)
    flat = []
    for record in records:
        row = dict(record)
        tau = record.get("staleness") or {}
        row.update(staleness_mean=tau.get("mean"), staleness_p99=tau.get("p99"), staleness_max=tau.get("max"))
        flat.append(row)
    flat.sort(key=lambda r: (r["workers"], r["policy"], r["seed"]))
    _write_csv(os.path.join(out_dir, "cells.csv"), flat, CELL_COLUMNS)
    summary = summarize(records)
    if summary:
        _write_csv(os.path.join(out_dir, "summary.csv"), summary, summary[0].keys())
    fits = staleness_fits(records)
    if fits:
        _write_csv(os.path.join(out_dir, "staleness_fits.csv"), fits, fits[0].keys())
    write_atomic(os.path.join(out_dir, "summary.json"),
                 json.dumps({"config": config, "summary": summary, "staleness_fits": fits}, indent=2))


# ---------------------------------------------------------------------------- command line
def _comma_list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None
    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_arguments(parser) -> None:
    """Flags of ``hogwild-mts experiment``; each overrides the config file and QUICK."""
    parser.add_argument("--config", metavar="FILE", help="JSON object of settings (keys as below, "
                        "plus policy_options: {label: {option: value, 'policy': name}})")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="run directory (default runs/<name>); rerunning resumes it")
    parser.add_argument("--name", help="experiment name")
    parser.add_argument("--task", choices=TASKS, help="linear (default) or torch")
    parser.add_argument("--mode", choices=MODES, help="simulated (default for linear) or real processes")
    parser.add_argument("--model", help="linear: logreg, svm, lsq; torch: mlp, cnn, lenet")
    parser.add_argument("--data", help="data spec as for train")
    parser.add_argument("--policies", type=_comma_list(str), help="comma-separated policy labels")
    parser.add_argument("--workers", type=_comma_list(int), help="comma-separated worker counts")
    parser.add_argument("--seeds", type=_comma_list(int), help="comma-separated seeds")
    parser.add_argument("--alpha", type=float, help="base step alpha_c of every policy")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--l2", type=float)
    parser.add_argument("--target-loss", type=float, help="loss that counts as reaching the target")
    parser.add_argument("--staleness", help="simulated: event, poisson or geometric")
    parser.add_argument("--compute", help="simulated event model: constant, exponential, gamma:K, lognormal:S")
    parser.add_argument("--evaluations", type=int, help="simulated: history rows per run")
    parser.add_argument("--eval-seconds", type=float, help="real: seconds between evaluations")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")


def main(args) -> int:
    """``hogwild-mts experiment``: load the config, run the missing cells, write tables and plots."""
    overrides = {key: getattr(args, key) for key in QUICK if hasattr(args, key)}
    config = load_config(args.config, overrides)
    out_dir = args.out or os.path.join("runs", config["name"])
    outcome = run_grid(config, out_dir, plots=not args.no_plots)
    print(f"{outcome['ran']} cells run, {outcome['skipped']} reused; tables in {out_dir}")
    return 0


def report_main(args) -> int:
    """``hogwild-mts report RUN_DIR``: redraw the plots (and tables) of a run directory."""
    from hogwild_mts.app.plots import check_run_dir, draw_all

    check_run_dir(args.run_dir)
    with open(os.path.join(args.run_dir, CONFIG_FILE)) as handle:
        write_tables(args.run_dir, json.load(handle))
    for path in draw_all(args.run_dir):
        print(f"wrote {path}")
    return 0
