"""Experiment grids: policies x step sizes x momenta x workers x seeds on one task, with
updates- and time-to-target at several target losses, and the two fair comparisons.

A run directory holds ``config.json``, one ``cells/<policy>-a<lr>[-mu<momentum>]-m<workers>-s<seed>.json``
per finished cell (``-mu..`` only for a momentum other than 0; written atomically, so an
interrupted grid resumes where it stopped), and the tables rebuilt from the cells after every run:

* ``cells.csv`` -- one row per cell and target;
* ``summary.csv`` -- per policy, step, momentum, m and target: seeds reaching it, the spread over
  seeds (mean, std, min, max) of updates- and time-to-target, the worst resolution;
* ``best.csv`` -- *best against best*: per policy, m and target, the (step, momentum) of the grid
  with the fewest mean updates among those where every seed reached the target (each flagged when
  it is the grid's smallest or largest: the grid may be too narrow; a best momentum of 0 is not
  flagged, momentum cannot go lower), and its ratio to the best constant and to the best baseline
  (constant, inverse, exponential, tail) at that m, each tuned over steps and momenta.  With
  several momenta, every policy also has one row per momentum held fixed, labelled
  ``<policy>@mu<momentum>`` (``fixed_momentum`` says which), tuned over the steps only: so
  ``constant@mu0`` against ``constant`` (``vs_best_constant``) is what tuning the momentum gains;
* ``transfer.csv`` -- *transfer*: the step and momentum each policy (and each fixed-momentum
  label) tuned at the smallest m, used unchanged at every m; ratio to its own smallest-m updates
  and to the best-tuned constant and baseline at that m;
* ``staleness_fits.csv`` -- per m: the tail share above 10x the median, TV and AIC of each
  staleness model (the empirical histogram as the reference) and the best parametric one by
  AIC; ``plots/*.png``
  (:mod:`hogwild_mts.app.plots`).

Tasks: ``linear`` (a linear model on a ``--data`` spec; ``mode`` ``simulated`` with
:class:`~hogwild_mts.engines.simulated.Simulator` or ``real`` with
:class:`~hogwild_mts.engines.linear.Engine`) and ``torch`` (a network on an image spec;
``real`` with :class:`~hogwild_mts.engines.networks.TorchEngine`, ``simulated`` with
:class:`~hogwild_mts.engines.simulated.NetworkSimulator`).  ``momentum`` (default 0, any
task and mode) gives every worker a private heavy-ball velocity and binds the policies with it;
``momenta`` (a list, default [0]; ``momentum: x`` is the same as ``momenta: [x]``) makes the
momentum part of the grid, tuned per policy and m like the step (momentum 0 for a policy that sets
the workers' momentum itself, ``auto``, leaves the choice to it: its cells record what the workers
applied as ``workers_momentum``); ``weight_decay`` (default 0) is the torch task's (a linear task's weight decay is ``l2``).
Every run evaluates the loss
every ``eval_updates`` updates (in real runs the workers copy the parameters at each due count,
and the copies are scored after the run).  A cell reaches a target where its loss curve first
crosses it: updates- and time-to-target are interpolated linearly between the history rows on
either side, and the *resolution* is the gap between those rows over the updates to target.
``time_to_target`` is in the run's seconds (simulated seconds in simulated mode).  Simulated
runs with ``staleness: "event"`` may have heterogeneous workers: ``stragglers`` ('SHARE:FACTOR')
or ``worker_speeds`` (a list of m speeds when the grid has one m, or an object mapping each m of
the grid to its list), as :class:`~hogwild_mts.engines.simulated.Simulator` takes them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
import time

import numpy as np

from hogwild_mts.app.plots import (DEFAULT_DPI, DEFAULT_FORMAT, DPI_RANGE, FORMATS, SUMMARY_FILE,
                                   check_dpi)
from hogwild_mts.app.rundir import CELLS_DIR, CONFIG_FILE, RunFileError, read_cells, read_config
from hogwild_mts.core.files import directory_lock, strict_json, write_atomic
from hogwild_mts.core.options import check_nonnegative, check_probability
from hogwild_mts.policies.step_sizes import (POLICIES, AdaptivePolicy, make_policy, policy_state,
                                            policy_table, refit_policy, sets_worker_momentum)

TASKS = ("linear", "torch")
MODES = ("simulated", "real")
GRID_KEYS = ("policies", "lrs", "momenta", "workers", "seeds")
MOMENTUM_ALIAS = "momentum"   # momentum: x (a config file or --momentum) means momenta: [x]
BASELINES = ("constant", "inverse", "exponential", "tail")   # registered names compared against
ALPHA_TABLE_ENTRIES = 256  # alpha(tau) entries stored per cell for the plots
CALIBRATED = "calibrated"
CALIBRATED_TAIL_SHARE = 1e-4        # share of updates from a descheduled worker
CALIBRATED_TAIL_RANGE = (100, 30_000)  # their tau, log-uniform (measured maxima 1,701-29,756 at m = 16)

# The default grid: simulated workers with calibrated staleness on a small sparse logistic
# regression (about 45 s on 2 cores).  Its steps span 1-16: every policy's best step at both
# targets and every m lies inside the grid (2-8 when measured), so best and transfer differ.
QUICK = {
    "name": "quick",
    "task": "linear",
    "mode": "simulated",
    "model": "logreg",
    "data": "synthetic-sparse:n=10000,d=5000,nnz=20,seed=0",
    "l2": 0.0,
    "policies": ["constant", "inverse", "exponential", "tail", "mindthestep"],
    "policy_options": {},
    "refit_every": None,
    "workers": [1, 4, 16],
    "seeds": [0, 1, 2],
    "lrs": [1.0, 2.0, 4.0, 8.0, 16.0],
    "epochs": 3,
    "batch_size": 1,
    "targets": [0.4, 0.3],
    "staleness": CALIBRATED,
    "compute": "exponential",
    "eval_updates": 300,
    "stragglers": None,     # simulated event staleness: 'SHARE:FACTOR' slower workers
    "worker_speeds": None,  # simulated event staleness: m speeds, or {m: speeds} per m of the grid
    "momenta": [0.0],       # explicit heavy-ball momenta of every worker, each in [0, 1); tuned
    "weight_decay": 0.0,    # torch task only; linear tasks: l2 is the weight decay
}
# Policy labels and experiment names become file names (cells/<label>-a..json, runs/<name>):
# letters, digits and ``._+-``, starting with a letter or digit, so none can leave its directory.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
SAFE_NAME_RULE = ("1 to 100 letters, digits and '._+-', starting with a letter or digit "
                  "(it becomes a file name)")
DEFAULTS_BY_TASK = {"torch": {"model": "mlp", "data": "digits", "lrs": [0.05], "batch_size": 16,
                              "epochs": 10, "mode": "real", "targets": [0.25], "eval_updates": 20}}


class ConfigError(ValueError):
    """An experiment configuration that cannot run; the message names the key and what is allowed."""


# ---------------------------------------------------------------------------- configuration
def load_config(path: str | None, overrides: dict) -> dict:
    """QUICK, updated from the JSON file at ``path`` (if any), then from ``overrides`` (None
    values ignored); task defaults fill keys neither gave.  Validated: see :func:`check_config`."""
    given = {}
    overrides = _with_momenta({key: value for key, value in overrides.items() if value is not None},
                              "the overrides")
    if path is not None:
        try:
            with open(path) as handle:
                given = json.load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read experiment config {path}: {error.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(given, dict):
            raise ConfigError(f"{path} must hold a JSON object of settings, got {type(given).__name__}")
        given = _with_momenta(given, path)
    given.update(overrides)
    unknown = sorted(set(given) - set(QUICK))
    if unknown:
        raise ConfigError(f"unknown experiment setting(s) {unknown}; allowed: "
                          f"{sorted(set(QUICK) | {MOMENTUM_ALIAS})}")
    config = dict(QUICK)
    config.update(DEFAULTS_BY_TASK.get(given.get("task", QUICK["task"]), {}))
    config.update(given)
    return check_config(config)


def _with_momenta(settings: dict, where: str) -> dict:
    """``settings`` with ``momentum: x`` (the single-momentum form) as ``momenta: [x]``."""
    if MOMENTUM_ALIAS not in settings:
        return settings
    if "momenta" in settings:
        raise ConfigError(f"both momentum and momenta are given ({where}); give momenta (a list) only")
    settings = dict(settings)
    settings["momenta"] = [settings.pop(MOMENTUM_ALIAS)]
    return settings


def _int_list(key: str, value, minimum: int) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list of integers >= {minimum}, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise ConfigError(f"{key} must hold integers >= {minimum}, got {item!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} has repeated entries: {value!r}")
    return value


def _positive_list(key: str, value) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key} must be a non-empty list of finite numbers > 0, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) \
                or item <= 0:
            raise ConfigError(f"{key} must hold finite numbers > 0, got {item!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key} has repeated entries: {value!r}")
    return value


def _check_safe_name(what: str, value) -> None:
    """ConfigError unless ``value`` is a string that is safe as a file name (SAFE_NAME)."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not allowed; use {SAFE_NAME_RULE}")


def policy_spec(config: dict, label: str) -> tuple[str, dict]:
    """(registered policy name, options) of a grid entry: ``policy_options[label]`` may name the
    policy with ``"policy"`` (so one policy can appear with several settings under other labels)
    and its own step grid with ``"lrs"``; ``refit_every`` goes to every adaptive policy."""
    options = dict(config["policy_options"].get(label, {}))
    name = options.pop("policy", label)
    options.pop("lrs", None)
    if config["refit_every"] is not None and name in POLICIES and issubclass(POLICIES[name], AdaptivePolicy):
        options.setdefault("refit_every", config["refit_every"])
    return name, options


def lrs_of(config: dict, label: str) -> list:
    """The step grid of ``label``: its own ``policy_options[label]["lrs"]`` or ``lrs``."""
    return config["policy_options"].get(label, {}).get("lrs", config["lrs"])


def check_config(config: dict) -> dict:
    """Raise ConfigError (before anything runs) for unknown names, empty grids, bad numbers."""
    if config["task"] not in TASKS:
        raise ConfigError(f"unknown task {config['task']!r}; choose one of {list(TASKS)}")
    if config["mode"] not in MODES:
        raise ConfigError(f"unknown mode {config['mode']!r}; choose one of {list(MODES)}")
    _check_safe_name("name", config["name"])
    policies = config["policies"]
    if not isinstance(policies, list) or not policies:
        raise ConfigError(f"policies must be a non-empty list of policy names, got {policies!r}")
    options = config["policy_options"]
    if not isinstance(options, dict) or not all(isinstance(value, dict) for value in options.values()):
        raise ConfigError(f"policy_options must map a policy label to an object of its options, got "
                          f"{options!r}")
    for label in policies:
        _check_safe_name("policy label", label)
    if len(set(policies)) != len(policies):
        raise ConfigError(f"policies has repeated entries: {policies!r}")
    _int_list("workers", config["workers"], 1)
    _int_list("seeds", config["seeds"], 0)
    _positive_list("lrs", config["lrs"])
    _positive_list("targets", config["targets"])
    for key in ("epochs", "batch_size", "eval_updates"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
    refit = config["refit_every"]
    if refit is not None and (isinstance(refit, bool) or not isinstance(refit, int) or refit < 0):
        raise ConfigError(f"refit_every must be null or an integer >= 0, got {refit!r}")
    momenta = config["momenta"]
    if not isinstance(momenta, list) or not momenta:
        raise ConfigError(f"momenta must be a non-empty list of momenta in [0, 1), got {momenta!r}")
    for momentum in momenta:
        check_probability("momentum", momentum, allow_zero=True, allow_one=False, error=ConfigError)
    if len(set(momenta)) != len(momenta):
        raise ConfigError(f"momenta has repeated entries: {momenta!r}")
    check_nonnegative("weight_decay", config["weight_decay"], error=ConfigError)
    if config["task"] == "linear" and config["weight_decay"] != 0:
        raise ConfigError(f"weight_decay={config['weight_decay']!r} applies to the torch task; for a "
                          "linear model the L2 penalty l2 is the weight decay: set l2 instead")
    for label in policies:
        name, options = policy_spec(config, label)
        if name not in POLICIES:
            raise ConfigError(f"unknown policy {name!r} in policies; choose one of {sorted(POLICIES)} "
                              "(or give another label a 'policy' in policy_options)")
        for lr in _positive_list(f"lrs of {label}", lrs_of(config, label)):
            make_policy(name, lr=lr, **options)  # ValueError names a bad option
    if config["task"] == "linear":
        from hogwild_mts.models.linear import LinearModel

        LinearModel(config["model"], l2=config["l2"])
    if config["mode"] == "simulated":
        from hogwild_mts.backends.sim.simulator import compute_sampler, staleness_source

        if config["staleness"] != CALIBRATED:
            staleness_source(config["staleness"], 1)
        compute_sampler(config["compute"])
        _check_heterogeneous_workers(config)
    if config["mode"] != "simulated" and (config["stragglers"], config["worker_speeds"]) != (None, None):
        raise ConfigError("stragglers and worker_speeds shape the simulator's schedule; they need "
                          f"mode 'simulated', not {config['mode']!r}")
    if config["task"] == "torch":
        from hogwild_mts.models.nets import NETWORKS

        if config["model"] not in NETWORKS:
            raise ConfigError(f"unknown torch model {config['model']!r}; choose one of {sorted(NETWORKS)}")
    return config


def _check_heterogeneous_workers(config: dict) -> None:
    """ConfigError unless ``stragglers`` and ``worker_speeds`` suit every m of the grid (the
    event staleness only: ``calibrated`` and the iid laws have workers take turns)."""
    from hogwild_mts.backends.sim.simulator import worker_slowness

    if (config["stragglers"], config["worker_speeds"]) == (None, None):
        return
    if config["staleness"] != "event":
        raise ConfigError("stragglers and worker_speeds shape the event-driven schedule; they need "
                          f"staleness 'event', not {config['staleness']!r} (where workers take turns)")
    speeds = config["worker_speeds"]
    if isinstance(speeds, list) and len(config["workers"]) > 1:
        raise ConfigError(f"worker_speeds as one list fits a grid of one m, not workers {config['workers']}; "
                          "give an object mapping each m to its list, e.g. {\"2\": [1, 3], \"4\": [1, 1, 1, 3]}")
    if isinstance(speeds, dict):
        extra = sorted(set(speeds) - {str(m) for m in config["workers"]})
        if extra:
            raise ConfigError(f"worker_speeds has lists for m = {', '.join(extra)}, which the grid's "
                              f"workers {config['workers']} lack")
    for workers in config["workers"]:
        try:
            worker_slowness(workers, config["stragglers"], worker_speeds_at(config, workers))
        except ValueError as error:
            raise ConfigError(f"{error} (at m = {workers})") from None


def worker_speeds_at(config: dict, workers: int):
    """The ``worker_speeds`` list for ``workers`` workers: the one list, or the object's entry
    for that m (its keys are worker counts as text, as JSON writes them)."""
    speeds = config["worker_speeds"]
    if not isinstance(speeds, dict):
        return speeds
    if str(workers) not in speeds:
        raise ConfigError(f"worker_speeds gives no list for m = {workers}; give one for every m of "
                          f"the grid {config['workers']}")
    return speeds[str(workers)]


def cells_of(config: dict) -> list[dict]:
    """The grid in run order: workers, then seeds, then policies, then momenta, then steps (so
    partial grids compare)."""
    return [{"policy": p, "lr": a, "momentum": mu, "workers": m, "seed": s}
            for m in config["workers"] for s in config["seeds"] for p in config["policies"]
            for mu in config["momenta"] for a in lrs_of(config, p)]


def cell_name(cell: dict) -> str:
    """``<policy>-a<lr>[-mu<momentum>]-m<workers>-s<seed>``; momentum 0 adds nothing (the
    names of the grids from before momenta)."""
    momentum = f"-mu{cell['momentum']:g}" if cell["momentum"] else ""
    return f"{cell['policy']}-a{cell['lr']:g}{momentum}-m{cell['workers']}-s{cell['seed']}"


def calibrated_staleness(workers: int) -> np.ndarray:
    """Staleness as measured on 16 cores, as counts by tau for the simulator: Poisson((m - 1) / 2)
    (the policies' prior) for all but CALIBRATED_TAIL_SHARE of the updates, which come from a
    descheduled worker with tau log-uniform over CALIBRATED_TAIL_RANGE; one worker: tau = 0."""
    from hogwild_mts.staleness.models import prior

    if workers == 1:
        return np.array([1], dtype=np.int64)
    low, high = CALIBRATED_TAIL_RANGE
    body = prior(workers).pmf(high + 1)
    taus = np.arange(high + 1)
    tail = np.where(taus >= low, 1.0 / np.maximum(taus, 1), 0.0)
    pmf = (1 - CALIBRATED_TAIL_SHARE) * body / body.sum() + CALIBRATED_TAIL_SHARE * tail / tail.sum()
    return np.round(pmf * 1e15).astype(np.int64)


# ---------------------------------------------------------------------------- files
def _settings(config: dict) -> dict:
    """What must match for finished cells to be reused: everything but the grid (a label's own
    step grid in ``policy_options`` included) and its name."""
    settings = {key: value for key, value in config.items() if key not in GRID_KEYS + ("name",)}
    if "policy_options" in settings:
        trained = {}
        for label, options in settings["policy_options"].items():
            rest = {key: value for key, value in options.items() if key != "lrs"}
            if rest not in ({}, {"policy": label}):   # a label that only renames its grid trains as before
                trained[label] = rest
        settings["policy_options"] = trained
    return settings


def upgrade_cells(out_dir: str) -> None:
    """Give the cells of a run directory from before ``momenta`` (its config.json has no such
    key) their momentum, the config's one ``momentum`` (default 0), under their names
    (:func:`cell_name`); a no-op for later runs and when every cell has one."""
    path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    previous = read_config(out_dir)
    if "momenta" in previous:
        return
    momentum = previous.get(MOMENTUM_ALIAS, 0.0)
    for record in read_cells(out_dir):
        if "momentum" in record:
            continue
        old = os.path.join(out_dir, CELLS_DIR, record["name"] + ".json")
        record["momentum"] = momentum
        record["name"] = cell_name(record)
        write_atomic(os.path.join(out_dir, CELLS_DIR, record["name"] + ".json"),
                     strict_json(record, indent=None))
        if record["name"] + ".json" != os.path.basename(old):
            os.remove(old)


def prepare_run_dir(out_dir: str, config: dict) -> None:
    """Create ``out_dir`` or check that it holds the same experiment (grids may differ: extending
    a grid reuses the cells it shares); cells from before ``momenta`` get their momentum
    (:func:`upgrade_cells`)."""
    path = os.path.join(out_dir, CONFIG_FILE)
    if os.path.exists(path):
        previous = read_config(out_dir)
        # a config written before a key existed ran with that key's default
        old, new = _settings({**QUICK, **_with_momenta(previous, path)}), _settings(config)
        differ = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
        if differ:
            raise ConfigError(f"{out_dir} holds an experiment with other settings ({', '.join(differ)}); "
                              "choose another --out or the same settings")
    os.makedirs(os.path.join(out_dir, CELLS_DIR), exist_ok=True)
    upgrade_cells(out_dir)
    write_atomic(path, strict_json(config))


# ---------------------------------------------------------------------------- one cell
def load_task_data(config: dict):
    if config["task"] == "linear":
        from hogwild_mts.data.tabular import load_data

        return load_data(config["data"])
    from hogwild_mts.data.images import load_images

    return load_images(config["data"])


def engine_momentum(policy, cell: dict):
    """The ``momentum`` a cell's engine gets: the cell's, except that momentum 0 for a policy
    that sets the workers' momentum itself (``auto``) is None, the policy's own choice; the
    record's ``workers_momentum`` says what the workers applied."""
    if cell["momentum"] == 0 and sets_worker_momentum(policy):
        return None
    return cell["momentum"]


def make_engine(config: dict, cell: dict):
    """The engine (real or simulated) that trains one cell, evaluating every ``eval_updates``.
    Real runs defer their evaluations (parameter copies scored after the run), so frequent
    evaluations take no core from the workers."""
    name, options = policy_spec(config, cell["policy"])
    policy = make_policy(name, lr=cell["lr"], **options)
    common = dict(workers=cell["workers"], epochs=config["epochs"], batch_size=config["batch_size"],
                  seed=cell["seed"], momentum=engine_momentum(policy, cell))
    staleness = config["staleness"]
    if staleness == CALIBRATED:
        staleness = calibrated_staleness(cell["workers"])
    if config["task"] == "torch":
        network = dict(eval_every_updates=config["eval_updates"], weight_decay=config["weight_decay"],
                       progress=False, **common)
        if config["mode"] == "simulated":
            from hogwild_mts.engines.simulated import NetworkSimulator

            return NetworkSimulator(config["model"], policy, staleness=staleness,
                                    compute=config["compute"], stragglers=config["stragglers"],
                                    worker_speeds=worker_speeds_at(config, cell["workers"]), **network)
        from hogwild_mts.engines.networks import TorchEngine

        return TorchEngine(config["model"], policy, defer_evaluation=True, **network)
    from hogwild_mts.models.linear import LinearModel

    model = LinearModel(config["model"], l2=config["l2"])
    if config["mode"] == "real":
        from hogwild_mts.engines.linear import Engine

        return Engine(model, policy, eval_every_updates=config["eval_updates"],
                      progress=False, defer_evaluation=True, **common)
    from hogwild_mts.engines.simulated import Simulator

    return Simulator(model, policy, staleness=staleness, compute=config["compute"],
                     stragglers=config["stragglers"],
                     worker_speeds=worker_speeds_at(config, cell["workers"]),
                     eval_every=config["eval_updates"], **common)


def target_reached(history: dict, target: float) -> dict:
    """Where the loss first reaches ``target``: the updates and time interpolated linearly between
    the last row above it and the first row at or below it, and the resolution, the gap between
    those two rows over the interpolated updates; else not reached."""
    losses, updates, times = history["loss"], history["updates"], history["time_s"]
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return {"target": target, "reached": True, "updates": float(updates[0]),
                        "time": float(times[0]), "resolution": 0.0}
            share = (losses[i - 1] - target) / (losses[i - 1] - loss)
            at = updates[i - 1] + share * (updates[i] - updates[i - 1])
            return {"target": target, "reached": True, "updates": float(at),
                    "time": float(times[i - 1] + share * (times[i] - times[i - 1])),
                    "resolution": (updates[i] - updates[i - 1]) / at if at else 0.0}
    return {"target": target, "reached": False, "updates": None, "time": None, "resolution": None}


def alpha_table(config: dict, cell: dict, histogram: np.ndarray, momentum: float) -> list:
    """The policy's alpha(tau) as the cell ended it (bound with the ``momentum`` its workers
    applied, refitted on the cell's histogram)."""
    name, options = policy_spec(config, cell["policy"])
    state = policy_state(make_policy(name, lr=cell["lr"], **options), cell["workers"], momentum)
    table = refit_policy(state, histogram) if state.refit_every else policy_table(state)
    return [float(a) for a in table[:ALPHA_TABLE_ENTRIES]]


def run_cell(config: dict, cell: dict, data) -> dict:
    """Train one cell; return its record (diverged runs are recorded, not dropped)."""
    from hogwild_mts.core.result import DivergenceError

    engine = make_engine(config, cell)
    started = time.time()
    record = {**cell, "name": cell_name(cell),
              "time_unit": "simulated seconds" if config["mode"] == "simulated" else "seconds"}
    try:
        result = engine.fit(data)
    except DivergenceError as error:
        record.update(diverged=True, error=str(error), best_loss=None, final_loss=None, final_accuracy=None,
                      wall_seconds=time.time() - started, staleness_histogram=[], history={})
        return record
    if result.interrupted:
        raise KeyboardInterrupt
    summary = result.to_dict()
    record.update(diverged=False, best_loss=min(result.history["loss"]), final_loss=result.final_loss,
                  final_accuracy=result.final_accuracy, updates=result.updates,
                  train_seconds=result.train_seconds, wall_seconds=result.wall_seconds,
                  staleness=summary["staleness"], staleness_histogram=summary["staleness_histogram"],
                  staleness_fit=summary["staleness_fit"], policy_description=summary["policy"],
                  workers_momentum=result.settings["momentum"],
                  alpha_table=alpha_table(config, cell, result.staleness_histogram,
                                          result.settings["momentum"]),
                  history=result.history, refits=result.refits)
    return record


# ---------------------------------------------------------------------------- the grid
def run_grid(config: dict, out_dir: str, *, log=None, plots: bool = True,
             stop_signals: list = (), fmt: str = DEFAULT_FORMAT, dpi: int = DEFAULT_DPI) -> dict:
    """Run every cell not already in ``out_dir``; then rewrite the tables (and plots, as ``fmt``
    at ``dpi``) say which momentum won at each m (several momenta) and which policies' best steps (or
    momenta) are at the edge of their grids.
    Returns {"ran": n, "skipped": n, "cells": total}.  ``stop_signals``: the list
    :func:`hogwild_mts.core.signals.stop_on_signals` fills; a signal held while a cell's result
    was being made (so the cell finished) stops the grid after that cell is written
    (KeyboardInterrupt), as one that cut a cell short does before.  ``log``: where progress
    lines go (default: sys.stderr at the time of the call).  One grid at a time writes into
    ``out_dir``: another process's is refused at once (DirectoryBusyError naming its pid)."""
    os.makedirs(out_dir, exist_ok=True)
    with directory_lock(out_dir, f"experiment directory {out_dir!r}"):
        return _run_locked(config, out_dir, sys.stderr if log is None else log, plots,
                           stop_signals, fmt, dpi)


def _run_locked(config: dict, out_dir: str, log, plots: bool, stop_signals: list, fmt: str,
                dpi: int) -> dict:
    """:func:`run_grid` while it holds the lock of ``out_dir``."""
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
        write_atomic(os.path.join(out_dir, CELLS_DIR, record["name"] + ".json"), strict_json(record, indent=None))
        elapsed = time.time() - grid_started
        eta = elapsed / number * (len(todo) - number)
        print(f"[{skipped + number:>{len(str(len(cells)))}}/{len(cells)}] "
              f"{describe_outcome(record, config['targets'])}"
              f"  ({time.time() - cell_started:.1f} s, about {eta:.0f} s left)", file=log, flush=True)
        if stop_signals:
            raise KeyboardInterrupt
    write_tables(out_dir, config)
    for line in grid_notes(out_dir, config):
        print(line, file=log)
    if plots:
        from hogwild_mts.app.plots import draw_all

        for path in draw_all(out_dir, fmt, dpi):
            print(f"wrote {path}", file=log)
    return {"ran": len(todo), "skipped": skipped, "cells": len(cells)}


def outcomes(record: dict, targets: list) -> list[dict]:
    """:func:`target_reached` of the cell for each target (a diverged cell reaches none)."""
    history = record["history"] or {"loss": [], "updates": [], "time_s": []}
    return [target_reached(history, target) for target in targets]


def describe_outcome(record: dict, targets: list) -> str:
    momentum = f" mu={record['momentum']:g}" if record["momentum"] else ""
    head = f"{record['policy']} lr={record['lr']:g}{momentum} m={record['workers']} seed={record['seed']}: "
    if record["diverged"]:
        return head + "DIVERGED"
    reached = ", ".join(f"{t['target']:g} at {t['updates']:,.0f}" if t["reached"] else f"{t['target']:g} not reached"
                        for t in outcomes(record, targets))
    return head + f"targets {reached}; final loss {record['final_loss']:.4g}"


# ---------------------------------------------------------------------------- tables
CELL_COLUMNS = ("policy", "lr", "momentum", "workers", "seed", "target", "reached", "updates_to_target",
                "time_to_target", "resolution", "best_loss", "final_loss", "final_accuracy", "diverged",
                "updates", "train_seconds", "wall_seconds", "staleness_mean", "staleness_p99",
                "staleness_max")
STALENESS_MODELS = ("geometric", "poisson", "cmp", "empirical")
SPREAD = ("mean", "std", "min", "max")


def _spread(values: list) -> dict:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max())}


def summarize(records: list[dict], targets: list) -> list[dict]:
    """One row per (policy, lr, momentum, workers, target): how many seeds reached the target,
    the spread over seeds of updates- and time-to-target (reaching seeds only), the worst
    resolution, and the final and best loss (all finished seeds)."""
    groups = {}
    for record in records:
        for outcome in outcomes(record, targets):
            key = (record["policy"], record["lr"], record["momentum"], record["workers"], outcome["target"])
            groups.setdefault(key, []).append((record, outcome))
    rows = []
    for (policy, lr, momentum, workers, target), group in groups.items():
        reached = [outcome for _, outcome in group if outcome["reached"]]
        finished = [record for record, _ in group if not record["diverged"]]
        row = {"policy": policy, "lr": lr, "momentum": momentum, "workers": workers, "target": target,
               "seeds": len(group), "reached": len(reached), "diverged": len(group) - len(finished),
               "resolution_max": max((o["resolution"] for o in reached), default=None)}
        for key, values in (("updates_to_target", [o["updates"] for o in reached]),
                            ("time_to_target", [o["time"] for o in reached]),
                            ("final_loss", [r["final_loss"] for r in finished]),
                            ("best_loss", [r["best_loss"] for r in finished])):
            for stat, value in _spread(values).items():
                row[f"{key}_{stat}"] = value
        rows.append(row)
    return sorted(rows, key=lambda row: (-row["target"], row["workers"], row["policy"], row["momentum"],
                                         row["lr"]))


def fixed_momentum_label(policy: str, momentum: float) -> str:
    """The label of ``policy`` with its momentum held at ``momentum`` in best.csv and
    transfer.csv: ``<policy>@mu<momentum>`` ('@' is in no policy label: SAFE_NAME)."""
    return f"{policy}@mu{momentum:g}"


def _best_rows(summary: list[dict], split_momenta: bool) -> dict:
    """(label, workers, target) -> the summary row of the (step, momentum) with the fewest mean
    updates among those where every seed reached the target (ties: smaller std).  Labels: each
    policy, tuned over steps and momenta, and, when ``split_momenta``, each
    :func:`fixed_momentum_label`, tuned over the steps at that momentum."""
    best = {}
    for row in summary:
        if row["reached"] < row["seeds"] or row["seeds"] == 0:
            continue
        rank = (row["updates_to_target_mean"], row["updates_to_target_std"])
        labels = [row["policy"]]
        if split_momenta:
            labels.append(fixed_momentum_label(row["policy"], row["momentum"]))
        for label in labels:
            key = (label, row["workers"], row["target"])
            if key not in best or rank < (best[key]["updates_to_target_mean"], best[key]["updates_to_target_std"]):
                best[key] = row
    return best


def momentum_at_grid_edge(momentum, momenta: list) -> bool:
    """Whether a best ``momentum`` is the largest of a grid of several ``momenta``, or its
    smallest when that is above 0 (0 is no edge: momentum cannot go lower)."""
    return momentum is not None and len(momenta) > 1 and \
        (momentum == max(momenta) or (momentum == min(momenta) and momentum > 0))


def _reference(best: dict, labels: list, workers: int, target: float):
    """(label, mean updates) of the fastest of ``labels`` at (workers, target), or (None, None)."""
    candidates = [(best[(label, workers, target)]["updates_to_target_mean"], label)
                  for label in labels if (label, workers, target) in best]
    if not candidates:
        return None, None
    updates, label = min(candidates)
    return label, updates


def _ratio(numerator, denominator):
    return None if numerator is None or not denominator else numerator / denominator


def compare(config: dict, summary: list[dict]) -> tuple[list[dict], list[dict]]:
    """The best-against-best rows and the transfer rows (see the module docstring) of every
    policy label in ``summary`` (a run directory may hold cells of earlier, wider grids), and of
    every fixed-momentum label when ``summary`` holds several momenta."""
    split_momenta = len({row["momentum"] for row in summary}) > 1
    best = _best_rows(summary, split_momenta)
    labels = list(dict.fromkeys(config["policies"] + [row["policy"] for row in summary]))
    labels = [label for label in labels if any(row["policy"] == label for row in summary)]
    names = {label: policy_spec(config, label)[0] for label in labels}
    constants = [label for label, name in names.items() if name == "constant"]
    baselines = [label for label, name in names.items() if name in BASELINES]
    variants = []   # (label in the tables, policy label, the momentum held or None)
    for label in labels:
        variants.append((label, label, None))
        if split_momenta:
            momenta = sorted({row["momentum"] for row in summary if row["policy"] == label})
            variants += [(fixed_momentum_label(label, mu), label, mu) for mu in momenta]
    by_cell = {(r["policy"], r["lr"], r["momentum"], r["workers"], r["target"]): r for r in summary}
    present = sorted({(r["workers"], r["target"]) for r in summary}, key=lambda wt: (-wt[1], wt[0]))
    smallest = min((row["workers"] for row in summary), default=None)
    best_rows, transfer_rows = [], []
    for workers, target in present:
        constant, constant_updates = _reference(best, constants, workers, target)
        baseline, baseline_updates = _reference(best, baselines, workers, target)
        for variant, label, fixed in variants:
            row = best.get((variant, workers, target))
            updates = row["updates_to_target_mean"] if row else None
            grid = lrs_of(config, label)
            out = {"target": target, "workers": workers, "policy": variant, "fixed_momentum": fixed,
                   "lr": row["lr"] if row else None, "momentum": row["momentum"] if row else None,
                   "reached": row is not None,
                   "resolution_max": row["resolution_max"] if row else None,
                   "lr_at_grid_edge": bool(row and len(grid) > 1 and row["lr"] in (min(grid), max(grid))),
                   "momentum_at_grid_edge": bool(row and fixed is None and
                                                 momentum_at_grid_edge(row["momentum"], config["momenta"])),
                   "best_constant": constant, "best_baseline": baseline,
                   "vs_best_constant": _ratio(updates, constant_updates),
                   "vs_best_baseline": _ratio(updates, baseline_updates)}
            for stat in SPREAD:
                out[f"updates_{stat}"] = row[f"updates_to_target_{stat}"] if row else None
            best_rows.append(out)
            tuned = best.get((variant, smallest, target))
            lr, momentum = (tuned["lr"], tuned["momentum"]) if tuned else (None, fixed)
            cell = by_cell.get((label, lr, momentum, workers, target))
            updates = cell["updates_to_target_mean"] if cell and cell["reached"] == cell["seeds"] else None
            out = {"target": target, "workers": workers, "policy": variant, "fixed_momentum": fixed,
                   "lr": lr, "momentum": momentum,
                   "reached": f"{cell['reached']}/{cell['seeds']}" if cell else None,
                   "resolution_max": cell["resolution_max"] if cell else None,
                   "vs_own_smallest_m": _ratio(updates, tuned["updates_to_target_mean"] if tuned else None),
                   "vs_best_constant": _ratio(updates, constant_updates),
                   "vs_best_baseline": _ratio(updates, baseline_updates)}
            for stat in SPREAD:
                out[f"updates_{stat}"] = cell[f"updates_to_target_{stat}"] if updates is not None else None
            transfer_rows.append(out)
    return best_rows, transfer_rows


def staleness_fits(records: list[dict]) -> list[dict]:
    """Per m: the cells' histograms summed (the last bin holds every larger tau), the largest tau
    of any cell, the tail (``tail_share`` of updates above ``tail_above`` = 10x the median), the
    total variation and AIC of each fitted model (the empirical histogram as the reference), and
    ``best_by_aic``: :func:`~hogwild_mts.staleness.models.best_of` them (parametric only)."""
    from hogwild_mts.staleness import models as staleness
    from hogwild_mts.staleness.summary import staleness_summary

    by_workers, largest = {}, {}
    for record in records:
        if record.get("staleness"):
            largest[record["workers"]] = max(largest.get(record["workers"], 0), record["staleness"]["max"])
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
               "mean": float(np.dot(np.arange(counts.size), counts) / counts.sum()),
               "max": largest.get(workers)}
        summary = staleness_summary(counts, largest.get(workers) or 0)
        row["tail_above"], row["tail_share"] = summary["tail_above"], summary["tail_share"]
        fitted = {name: staleness.fit_model(name, counts) for name in STALENESS_MODELS}
        for name, model in fitted.items():
            row[f"tv_{name}"] = model.fit_report.tv
            row[f"aic_{name}"] = model.fit_report.aic
        row["best_by_aic"] = staleness.best_of(fitted).name
        rows.append(row)
    return rows


def _write_csv(path: str, rows: list[dict], columns) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def edge_notes(best: list[dict], config: dict) -> list[str]:
    """One line per policy whose best step (rows of best.csv tuned over every momentum) is the
    smallest or largest of its step grid somewhere (the grid may be too narrow there), or one
    line saying none is; with several momenta, likewise for a best momentum at the edge of the
    momenta (:func:`momentum_at_grid_edge`)."""
    best = [row for row in best if row.get("fixed_momentum") is None]
    at_edge = {}
    for row in best:
        if row["lr_at_grid_edge"]:
            at_edge.setdefault(row["policy"], []).append(row)
    tuned = [label for label in dict.fromkeys(row["policy"] for row in best)
             if len(lrs_of(config, label)) > 1]
    lines = []
    if not at_edge:
        lines += ["every policy's best step is inside its step grid (at every m and target)"] if tuned else []
    for policy, rows in at_edge.items():
        grid = lrs_of(config, policy)
        for lr, side, hint in ((max(grid), "largest", "larger"), (min(grid), "smallest", "smaller")):
            places = _places([row for row in rows if row["lr"] == lr])
            if places:
                lines.append(f"note: {policy}'s best step is the {side} of its grid ({lr:g} of "
                             f"{min(grid):g}-{max(grid):g}) for {places}: try {hint} lrs")
    momenta = config["momenta"]
    if len(momenta) > 1:
        edges = [row for row in best if row.get("momentum_at_grid_edge")]
        if not edges:
            lines.append("every policy's best momentum is inside the momenta (or 0) at every m and target")
        for policy in dict.fromkeys(row["policy"] for row in edges):
            for momentum, side, hint in ((max(momenta), "largest", "larger (below 1)"),
                                         (min(momenta), "smallest", "smaller")):
                places = _places([row for row in edges if row["policy"] == policy and row["momentum"] == momentum])
                if places:
                    lines.append(f"note: {policy}'s best momentum is the {side} of the momenta ({momentum:g} "
                                 f"of {min(momenta):g}-{max(momenta):g}) for {places}: try {hint} momenta")
    return lines


def _places(rows: list[dict]) -> str:
    """'target 0.3 at m = 1, 4; target 0.2 at m = 16' of best.csv rows ('' for none)."""
    where = {}
    for row in rows:
        where.setdefault(row["target"], []).append(str(row["workers"]))
    return "; ".join(f"target {target:g} at m = {', '.join(ms)}" for target, ms in where.items())


def momentum_notes(best: list[dict], config: dict) -> list[str]:
    """With several momenta: per policy and target, the best (momentum, step) at each m (rows of
    best.csv tuned over every momentum; '-' where no pair reached the target at every seed)."""
    if len(config["momenta"]) < 2:
        return []
    lines = []
    best = [row for row in best if row.get("fixed_momentum") is None]
    for target in dict.fromkeys(row["target"] for row in best):
        for policy in dict.fromkeys(row["policy"] for row in best):
            mine = sorted((row for row in best if row["policy"] == policy and row["target"] == target),
                          key=lambda row: row["workers"])
            pairs = ", ".join(f"m = {row['workers']}: " + (f"mu {row['momentum']:g} (lr {row['lr']:g})"
                                                           if row["reached"] else "-") for row in mine)
            lines.append(f"best momentum of {policy} at target {target:g}: {pairs}")
    return lines


def grid_notes(out_dir: str, config: dict) -> list[str]:
    """:func:`momentum_notes` and :func:`edge_notes` of the run directory's summary.json
    (written by write_tables): the console's summary of a grid."""
    with open(os.path.join(out_dir, SUMMARY_FILE)) as handle:
        best = json.load(handle)["best"]
    return momentum_notes(best, config) + edge_notes(best, config)


def write_tables(out_dir: str, config: dict) -> None:
    """cells.csv, summary.csv, best.csv, transfer.csv, staleness_fits.csv and summary.json from
    the cell files."""
    records = read_cells(out_dir)
    flat = []
    for record in records:
        tau = record.get("staleness") or {}
        for outcome in outcomes(record, config["targets"]):
            row = dict(record)
            row.update(target=outcome["target"], reached=outcome["reached"],
                       updates_to_target=outcome["updates"], time_to_target=outcome["time"],
                       resolution=outcome["resolution"], staleness_mean=tau.get("mean"),
                       staleness_p99=tau.get("p99"), staleness_max=tau.get("max"))
            flat.append(row)
    flat.sort(key=lambda r: (-r["target"], r["workers"], r["policy"], r["momentum"], r["lr"], r["seed"]))
    _write_csv(os.path.join(out_dir, "cells.csv"), flat, CELL_COLUMNS)
    summary = summarize(records, config["targets"])
    best, transfer = compare(config, summary)
    for name, rows in (("summary", summary), ("best", best), ("transfer", transfer)):
        if rows:
            _write_csv(os.path.join(out_dir, f"{name}.csv"), rows, rows[0].keys())
    fits = staleness_fits(records)
    if fits:
        _write_csv(os.path.join(out_dir, "staleness_fits.csv"), fits, fits[0].keys())
    write_atomic(os.path.join(out_dir, SUMMARY_FILE),
                 strict_json({"config": config, "summary": summary, "best": best, "transfer": transfer,
                              "staleness_fits": fits}))


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
                        "plus policy_options: {label: {option: value, 'policy': name, 'lrs': [..]}})")
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
    parser.add_argument("--lrs", type=_comma_list(float), help="comma-separated base steps lr "
                        "tried for every policy (its grid)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--l2", type=float)
    parser.add_argument("--targets", type=_comma_list(float), help="comma-separated target losses")
    parser.add_argument("--refit-every", type=int, help="own updates between refits of adaptive policies")
    parser.add_argument("--staleness", help="simulated: calibrated (default), event, poisson or geometric")
    parser.add_argument("--compute", help="simulated event model: constant, exponential, gamma:K, lognormal:S")
    parser.add_argument("--stragglers", metavar="SHARE:FACTOR", help="simulated event model: a share "
                        "of the workers (at least one when > 0) FACTOR times slower, e.g. 0.1:10")
    parser.add_argument("--worker-speeds", type=_comma_list(float), help="simulated event model: "
                        "comma-separated relative speeds, one per worker (a grid with one m)")
    parser.add_argument("--eval-updates", type=int, help="updates between loss evaluations")
    parser.add_argument("--momentum", type=float, help="explicit heavy-ball momentum in [0, 1) of "
                        "every worker (torch.optim.SGD; default 0); the same as --momenta with one")
    parser.add_argument("--momenta", type=_comma_list(float), help="comma-separated momenta tried "
                        "for every policy (tuned per m with the step)")
    parser.add_argument("--weight-decay", type=float, help="torch task: weight decay >= 0 (linear "
                        "models: use --l2)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    add_figure_arguments(parser)


def _dpi(text: str) -> int:
    import argparse

    try:
        return check_dpi(int(text))
    except ValueError:
        low, high = DPI_RANGE
        raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {text!r}") from None


def add_figure_arguments(parser) -> None:
    """--format and --dpi of the figures (``experiment`` and ``report``)."""
    parser.add_argument("--format", choices=FORMATS, default=DEFAULT_FORMAT,
                        help=f"figure file format (default {DEFAULT_FORMAT})")
    parser.add_argument("--dpi", type=_dpi, default=DEFAULT_DPI,
                        help=f"figure resolution in dots per inch, 50-1200 (default {DEFAULT_DPI}; "
                             "PNG, and raster parts of PDF/SVG)")


def main(args, stop_signals: list = ()) -> int:
    """``hogwild-mts experiment``: load the config, run the missing cells, write tables and plots
    (``stop_signals``: see :func:`run_grid`)."""
    overrides = {key: getattr(args, key) for key in (*QUICK, MOMENTUM_ALIAS) if hasattr(args, key)}
    config = load_config(args.config, overrides)
    out_dir = args.out or os.path.join("runs", config["name"])
    outcome = run_grid(config, out_dir, plots=not args.no_plots, stop_signals=stop_signals,
                       fmt=args.format, dpi=args.dpi)
    print(f"{outcome['ran']} cells run, {outcome['skipped']} reused; tables in {out_dir}")
    return 0


def run_config(out_dir: str) -> dict:
    """The settings of the run directory ``out_dir``, validated as :func:`load_config` does
    (keys it lacks take their defaults); RunFileError naming config.json otherwise."""
    given = read_config(out_dir)
    try:
        return load_config(None, given)
    except (ValueError, TypeError) as error:
        raise RunFileError(f"{os.path.join(out_dir, CONFIG_FILE)}: {error}") from None


def report_main(args) -> int:
    """``hogwild-mts report RUN_DIR``: redraw the plots (and tables) of a run directory."""
    from hogwild_mts.app.plots import check_run_dir, draw_all

    check_run_dir(args.run_dir)
    config = run_config(args.run_dir)
    upgrade_cells(args.run_dir)
    write_tables(args.run_dir, config)
    for line in grid_notes(args.run_dir, config):
        print(line)
    for path in draw_all(args.run_dir, args.format, args.dpi):
        print(f"wrote {path}")
    return 0
