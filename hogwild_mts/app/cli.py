"""``hogwild-mts`` command line: ``train``, ``experiment``, ``report``, ``predict``.

Exit status: 0 done; 1 the run failed (a worker failed or died, divergence) or its results could
not be written; 2 bad input (one line on stderr, before any worker starts; also ``--backend ray``
without the ray package, or a Ray cluster that ``--address`` does not reach); 128 + N stopped by
signal N (SIGINT 130, SIGTERM 143, SIGHUP 129) -- the partial result is still printed and
written.  ``--out`` is checked before any work and locked for the whole run (a second run on the
same directory is refused at once, naming the holder's pid); results are written before
anything is printed, each file atomically (a temporary file, then a rename), every file is tried
even when one fails (exit 1, naming the ones that failed), and a closed stdout or stderr never
stops a run or its writing.  SIGXFSZ is ignored, so a file past ``ulimit -f`` fails to write
with EFBIG like a full disk instead of killing the process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import warnings

import numpy as np

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 128 + signal.SIGINT
METRICS_FILE = "metrics.json"
PARAMS_FILE = "params.npy"
MODEL_FILES = "model.json and its arrays-*.npz"
NETWORK_FILES = "model.json and its weights-*.pt"  # a torch network's model file
CHECKPOINT_DIR = "checkpoint"  # under --out
CHECKPOINT_UNITS = {"s": "seconds", "u": "updates"}

TORCH_MODELS = ("mlp", "cnn", "lenet")
# Flags whose default is the engine's (Engine's or TorchEngine's option table), where the
# command line has none of its own.
ENGINE_FLAGS = ("policy", "workers", "lr", "epochs", "batch_size", "seed", "momentum", "dtype",
                "local_steps")
# The command line's own default data; every other default is the engine's (docs/api.md), the
# base step that of a named policy (a policy object takes no default).
LINEAR_DATA = "synthetic-sparse"
NETWORK_DATA = "digits"

# (flag, policy option, type, help): see docs/policies.md for what each policy takes.
POLICY_FLAGS = (
    ("--target", "target", str, "mindthestep target: momentum or shrink"),
    ("--mu", "mu", float, "momentum target's mu in [0, 1)"),
    ("--r", "r", float, "shrink target's r in (0, 1]"),
    ("--beta", "beta", float, "exponential: decay rate; mindthestep: tempering exponent in [0, 1]"),
    ("--tail-a", "A", float, "tail policy's A in [0, 1]"),
    ("--staleness-model", "staleness_model", str, "mindthestep's P: poisson, geometric, cmp, empirical, auto"),
    ("--lr-min", "lr_min", float, "lower clip of alpha(tau)"),
    ("--lr-max", "lr_max", float, "upper clip of alpha(tau)"),
    ("--chi2", "chi2", float, "mindthestep shrink target's budget: relative variance of the step"),
    ("--refit-every", "refit_every", int, "adaptive policies: own updates between refits"),
    ("--min-samples", "min_samples", int, "adaptive policies: staleness values before the prior is replaced"),
)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="logreg",
                        help="linear: logreg, svm, lsq; torch: mlp, cnn, lenet (default logreg)")
    parser.add_argument("--data", default=None,
                        help="linear models: synthetic-sparse[:n=..,d=..,nnz=..,seed=..,noise=..], "
                             "synthetic-dense[:...], synthetic-regression[:...], a .npz file or an "
                             "svmlight/libsvm file (default "
                             "synthetic-sparse); torch models: digits, mnist1d[:n=..,seed=..], mnist:DIR, "
                             "fashion-mnist:DIR, "
                             "cifar10:DIR (default digits)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: the engine's)")
    parser.add_argument("--policy", default=None, help="step-size policy (default: the engine's)")
    parser.add_argument("--lr", type=float, default=None,
                        help="base step size lr (default 0.5 linear, the engine's torch)")
    parser.add_argument("--alpha", dest="earlier_step_flag", default=None, help=argparse.SUPPRESS)
    policy = parser.add_argument_group("policy options (given ones are passed to the policy)")
    for flag, option, kind, text in POLICY_FLAGS:
        policy.add_argument(flag, dest=f"policy_{option}", type=kind, default=None, help=text)
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the data (default 20 linear, the engine's torch)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per update (default: the engine's)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the shuffles (default: the engine's)")
    parser.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                        help="linear models: visit the rows in their stored order every epoch "
                             "(scikit-learn's shuffle=False; default: a shuffled order per epoch)")
    parser.add_argument("--l2", type=float, default=None,
                        help="linear models: L2 penalty l2/2 ||w||^2, the weight decay (default 0)")
    parser.add_argument("--momentum", type=float, default=None,
                        help="momentum in [0, 1) of each worker's private velocity, as "
                             "torch.optim.SGD (default: the engine's, plain SGD)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="torch networks: weight decay, as torch.optim.SGD (default 0; "
                             "linear models: --l2)")
    parser.add_argument("--no-intercept", action="store_true", help="linear models: fit no intercept")
    parser.add_argument("--dtype", default=None, choices=("float64", "float32"),
                        help="parameter precision (default: the engine's)")
    parser.add_argument("--out", metavar="DIR",
                        help="write metrics.json, params.npy and the model file here "
                             "(model.json + its arrays-*.npz; torch networks: model.json + its "
                             "weights-*.pt); one run at a time: a second run on DIR is refused")
    parser.add_argument("--init", metavar="MODEL",
                        help="start from the parameters (torch: the weights and buffers) of this "
                             "model file (a directory written by --out, save() or a checkpoint)")
    parser.add_argument("--checkpoint-every", metavar="EVERY", action="append", type=_checkpoint_every,
                        help="with --out DIR: keep the run's latest checkpoint in "
                             f"DIR/{CHECKPOINT_DIR} (a model file with the run state), every N "
                             "seconds (30s) or every N updates (100000u; --backend shm); give both "
                             "flags for both; also written when the run ends or is stopped")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the run whose checkpoint is DIR (e.g. "
                             f"OUT/{CHECKPOINT_DIR}) with the same command-line settings and data; "
                             "one worker of a linear model resumes bit for bit; without --out the "
                             "continued run's results are not saved (a warning says so)")
    parser.add_argument("--backend", choices=("shm", "ray"), default="shm",
                        help="shm: worker processes on shared memory (default); ray: a parameter "
                             "server and worker actors on Ray (docs/distributed.md)")
    parser.add_argument("--address", default=None,
                        help="with --backend ray: the cluster (e.g. HOST:6379 or auto; default: a "
                             "new local Ray instance)")
    parser.add_argument("--local-steps", type=int, default=None,
                        help="with --backend ray: mini-batches a worker runs between pushes "
                             "(default: the engine's)")
    parser.add_argument("--max-worker-restarts", type=int, default=None,
                        help="with --backend ray: times a dead worker actor is re-created before "
                             "the run goes on without it (default: the engine's)")
    parser.add_argument("--placement-timeout", type=float, default=None, metavar="SECONDS",
                        help="with --backend ray: seconds a worker actor may wait for Ray to place "
                             "it on a node with a free CPU before it is lost (default: the engine's)")
    parser.add_argument("--on-lost-worker", choices=("continue", "stop"), default=None,
                        help="with --backend ray: a lost worker (dead past its restarts, or not "
                             "placed in time) lets the run go on without its shard (continue, the "
                             "default) or stops it (stop)")
    parser.add_argument("--shm-dir", metavar="DIR",
                        help="directory for a file-backed shared block when /dev/shm is too small "
                             "(default: the HOGWILD_MTS_SHM_DIR environment variable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _checkpoint_every(text: str) -> tuple[str, float]:
    """``30s`` -> ("seconds", 30.0), ``100000u`` -> ("updates", 100000)."""
    unit = CHECKPOINT_UNITS.get(text[-1:])
    try:
        number = float(text[:-1]) if unit == "seconds" else int(text[:-1])
    except ValueError:
        number = None
    if unit is None or number is None or not number > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds like 30s or of "
                                         "updates like 100000u")
    return unit, number


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (the usage is one ``--help`` away)."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hogwild-mts",
        description="Asynchronous lock-free parallel SGD with exact staleness and adaptive steps.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser("train", help="train a model (no arguments: a built-in default)")
    _add_train_arguments(train)
    from hogwild_mts.app import experiment

    grid = commands.add_parser("experiment", help="run a grid of policies x workers x seeds "
                               "(no arguments: the quick simulated grid)")
    experiment.add_arguments(grid)
    report = commands.add_parser("report", help="redraw the plots and tables of an experiment run")
    report.add_argument("run_dir", metavar="RUN_DIR")
    experiment.add_figure_arguments(report)
    from hogwild_mts.app import predict

    predict.add_arguments(commands.add_parser(
        "predict", help="predict with a saved model (CSV: prediction, class probabilities)"))
    return parser


def prepare_out_dir(path: str) -> str:
    """``--out``, checked before any work: an existing or creatable directory that accepts a
    file; ValueError naming it and why otherwise."""
    from hogwild_mts.core.files import writable_directory

    return writable_directory(path, f"--out {path!r}")


def write_outputs(out_dir: str, result, save_model=None, model_files: str = MODEL_FILES) -> dict:
    """metrics.json (everything but the weights, strict JSON), params.npy (weights; intercept
    in the JSON) and, with ``save_model(directory)``, the model file (``model_files``: what
    ``predict`` and ``--init`` read; ``--resume`` reads the run's checkpoint in CHECKPOINT_DIR),
    each written atomically and independently; returns ``{file: reason}`` for those that could
    not be written."""
    from hogwild_mts.app.report import metrics_json
    from hogwild_mts.core.files import npy_bytes, write_atomic

    writers = {METRICS_FILE: lambda: write_atomic(os.path.join(out_dir, METRICS_FILE), metrics_json(result)),
               PARAMS_FILE: lambda: write_atomic(os.path.join(out_dir, PARAMS_FILE), npy_bytes(result.params))}
    if save_model is not None:
        writers[model_files] = lambda: save_model(out_dir)
    failed = {}
    for name, write in writers.items():
        try:
            write()
        except OSError as error:
            failed[name] = error.strerror or str(error)
    return failed


def make_policy_from_args(args):
    """The policy named by --policy with --lr and every policy flag that was given."""
    from hogwild_mts.policies.step_sizes import make_policy

    options = {option: getattr(args, f"policy_{option}") for _, option, _, _ in POLICY_FLAGS
               if getattr(args, f"policy_{option}") is not None}
    return make_policy(args.policy, lr=args.lr, **options)


def train(args, stop_signals: list) -> int:
    """Check --out and --shm-dir, lock --out, train, write the results, then print the summary;
    the exit status (see the module docstring).  ``stop_signals``: the stop signals received so
    far."""
    from hogwild_mts.core.files import directory_lock

    if args.earlier_step_flag is not None:
        raise ValueError(f"--alpha {args.earlier_step_flag} is the base step's earlier name: give "
                         f"--lr {args.earlier_step_flag} (alpha is the regularisation strength of "
                         "the scikit-learn estimators; the command line's is --l2)")
    out_dir = prepare_out_dir(args.out) if args.out else None
    if args.backend == "ray":  # before any data is loaded: ray is there, --address answers
        from hogwild_mts.backends.ray.backend import probe_cluster, require_ray

        require_ray()
        if args.address is not None:
            probe_cluster(args.address)
    if args.shm_dir is not None and not os.path.isdir(args.shm_dir):
        raise ValueError(f"--shm-dir {args.shm_dir!r} is not an existing directory")
    if args.model in TORCH_MODELS:
        for flag, given in (("--l2", args.l2 is not None), ("--no-intercept", args.no_intercept),
                            ("--no-shuffle", not args.shuffle)):
            if given:
                raise ValueError(f"{flag} applies to linear models (logreg, svm, lsq), not to the "
                                 f"torch network {args.model!r}"
                                 + ("; its weight decay is --weight-decay" if flag == "--l2" else ""))
    if args.resume is not None and out_dir is None:
        print("hogwild-mts: warning: --resume without --out: the continued run's results and "
              "checkpoints are not saved", file=sys.stderr, flush=True)
    with (directory_lock(out_dir, f"--out {out_dir!r}") if out_dir else contextlib.nullcontext()), \
            _one_line_warnings():
        return _train_and_write(args, stop_signals, out_dir)


def _train_and_write(args, stop_signals: list, out_dir: str | None) -> int:
    from hogwild_mts.app.report import format_summary
    from hogwild_mts.backends.shm.block import SPILL_DIR_ENV
    from hogwild_mts.core import signals

    with _environment(SPILL_DIR_ENV, args.shm_dir):
        if args.model in TORCH_MODELS:
            result, save_model = train_network(args)
            model_files = NETWORK_FILES
        else:
            result, save_model = train_linear(args)
            model_files = MODEL_FILES
    with signals.held():  # a stop signal now only decides the exit status
        failed = write_outputs(out_dir, result, save_model, model_files) if out_dir else {}
        if out_dir and args.checkpoint_every and args.backend == "shm":
            stale = _stale_checkpoint(os.path.join(out_dir, CHECKPOINT_DIR), result)
            if stale:
                failed[CHECKPOINT_DIR] = stale
        print(format_summary(result))
        if result.stopped_by is not None:
            print(f"hogwild-mts: run failed: {result.stopped_by}"
                  + ("; the partial result above was written" if out_dir and not failed else ""),
                  file=sys.stderr)
        if failed:
            written = [name for name in (METRICS_FILE, PARAMS_FILE, model_files) if name not in failed]
            print("hogwild-mts: error: could not write "
                  + ", ".join(f"{name} ({reason})" for name, reason in failed.items())
                  + f" in {out_dir}" + (f"; {', '.join(written)} written there" if written else ""),
                  file=sys.stderr)
            return EXIT_RUN_FAILED
        if out_dir:
            print(f"wrote {os.path.join(out_dir, METRICS_FILE)}, {PARAMS_FILE} and the model file "
                  f"({model_files})")
        if args.checkpoint_every and not result.interrupted:
            print(f"checkpoint: {os.path.join(out_dir, CHECKPOINT_DIR)}")
        elif args.checkpoint_every:
            print(f"checkpoint: {os.path.join(out_dir, CHECKPOINT_DIR)} (continue with --resume "
                  f"{os.path.join(out_dir, CHECKPOINT_DIR)} and the same settings)")
        if stop_signals:
            print(f"hogwild-mts: stopped by {signal.Signals(stop_signals[0]).name}"
                  + ("; the result above is partial" if result.interrupted else " as the run ended"),
                  file=sys.stderr)
            return 128 + stop_signals[0]
    if result.stopped_by is not None:
        return EXIT_RUN_FAILED
    return EXIT_INTERRUPTED if result.interrupted else 0


def _stale_checkpoint(directory: str, result) -> str | None:
    """Why the checkpoint in ``directory`` does not hold the run's final state (its last write
    failed: a warning said why), or None when it does."""
    import json

    from hogwild_mts.model_file import MODEL_JSON

    try:
        with open(os.path.join(directory, MODEL_JSON), "rb") as handle:
            updates = json.loads(handle.read()).get("metrics", {}).get("updates")
    except (OSError, ValueError, AttributeError, RecursionError):
        return "every write failed: there is none"
    if updates != result.updates:
        return (f"the final write failed: it holds the state after {updates} of "
                f"{result.updates} updates")
    return None


@contextlib.contextmanager
def _one_line_warnings():
    """Inside, each warning is one line on stderr: ``hogwild-mts: warning: MESSAGE``."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"hogwild-mts: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _environment(name: str, value: str | None):
    """Inside, environment variable ``name`` is ``value`` (unchanged when None)."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def train_network(args):
    """Load the images, train, and return (the FitResult, a function writing its network's
    model file into a directory)."""
    import functools

    from hogwild_mts.engines import networks as torch_engine

    if args.init is not None and args.resume is not None:
        raise ValueError("give --init or --resume, not both")
    _fill_defaults(args, torch_engine.DEFAULTS,
                   {"data": NETWORK_DATA, "lr": torch_engine.DEFAULT_LR})
    _backend_options(args)  # refuses Ray-only flags without --backend ray
    args.policy = make_policy_from_args(args)
    args.lr = None  # it is inside the policy now
    engine = engine_from_args(args, **_restart_options(args), **_checkpoint_options(args))
    result = _kept(train_images, args, engine)
    return result, functools.partial(engine.save, result)


def engine_from_args(args, **options):
    """The TorchEngine of ``hogwild-mts train --model {mlp,cnn,lenet} ...``: ``args`` has
    ``model, workers, policy, lr, epochs, batch_size, seed, quiet, dtype`` and optionally
    ``momentum, weight_decay, backend, address, local_steps``; any of them None (or missing)
    takes NETWORK_OPTIONS' default.  ``options``: more engine keywords (checkpoints)."""
    from hogwild_mts.engines.networks import DEFAULTS, TorchEngine

    def option(name, flag=None):
        value = getattr(args, flag or name, None)
        return DEFAULTS[name] if value is None else value

    return TorchEngine(args.model, option("policy"), lr=option("lr"), workers=option("workers"),
                       epochs=option("epochs"), batch_size=option("batch_size"), seed=option("seed"),
                       momentum=option("momentum"), weight_decay=option("weight_decay"),
                       dtype=option("dtype"), progress=not getattr(args, "quiet", False),
                       backend=option("backend"), ray_address=option("ray_address", "address"),
                       local_steps=option("local_steps"), **options)


def train_images(args, engine=None):
    """Load the images ``args.data`` (a line on stderr) and train ``engine`` (default:
    :func:`engine_from_args` of ``args``) on them, from the model file ``args.init`` or
    continuing the checkpoint ``args.resume`` when given (missing: neither); return the
    FitResult; print no summary."""
    from hogwild_mts.data.images import load_images

    engine = engine_from_args(args) if engine is None else engine
    loading = time.time()
    print(f"loading images {args.data} ...", file=sys.stderr, flush=True)
    dataset = load_images(args.data)
    print(f"  {dataset!r} ({time.time() - loading:.1f} s)", file=sys.stderr, flush=True)
    return engine.fit(dataset, init=getattr(args, "init", None), resume=getattr(args, "resume", None))


def train_linear(args):
    """Load the data, train, and return (the FitResult, ``save(path)``: writes the fitted
    estimator it amounts to as a model file)."""
    from hogwild_mts.data.tabular import load_data
    from hogwild_mts.engines import linear
    from hogwild_mts.models.linear import LinearModel

    if args.init is not None and args.resume is not None:
        raise ValueError("give --init or --resume, not both")
    if args.weight_decay is not None:
        raise ValueError("--weight-decay is for torch networks; a linear model's weight decay is --l2")
    _fill_defaults(args, linear.DEFAULTS, {"data": LINEAR_DATA, "lr": linear.DEFAULT_LR})
    if args.l2 is None:
        args.l2 = 0.0
    model = LinearModel(args.model, l2=args.l2, fit_intercept=not args.no_intercept)
    policy = make_policy_from_args(args)
    engine = linear.Engine(model, policy, workers=args.workers, epochs=args.epochs,
                           batch_size=args.batch_size, seed=args.seed, shuffle=args.shuffle,
                           dtype=args.dtype, momentum=args.momentum, progress=not args.quiet,
                           **_backend_options(args), **_restart_options(args),
                           **_checkpoint_options(args))
    start = _initial_model(args.init, model) if args.init else None
    # a data file on Ray is read by the workers; a resume checks the rows against the
    # checkpoint's digest, so it loads the file here
    if args.backend == "ray" and not args.data.startswith("synthetic-") and args.resume is None:
        return _train_linear_from_file(args, engine, model, policy, start)
    loading = time.time()
    print(f"loading data {args.data} ...", file=sys.stderr, flush=True)
    dataset = load_data(args.data)
    print(f"  {dataset.name}: {dataset.n_samples:,} rows x {dataset.n_features:,} features, "
          f"{dataset.nnz:,} stored values ({time.time() - loading:.1f} s)", file=sys.stderr, flush=True)
    if model.classifier and np.unique(dataset.y).size > 2:
        return _train_one_vs_rest(args, dataset, model, policy)
    init_params = None
    if start is not None:
        if start.n_features_in_ != dataset.n_features:
            raise ValueError(f"--init {args.init}: the model has {start.n_features_in_} features, "
                             f"{dataset.name} has {dataset.n_features}")
        init_params = _initial_params(start, model)
    result = _kept(engine.fit, dataset, init_params=init_params, resume=args.resume)
    classes = np.unique(dataset.y) if model.classifier else None
    return result, _saver(result, classes, args, model, policy)


def _train_one_vs_rest(args, dataset, model, policy):
    """A classifier on a file of three or more classes: one-vs-rest with the estimators'
    implementation (:class:`~hogwild_mts.estimators.HogwildClassifier` with the command line's
    settings: the policy with its step ``--lr`` at constant steps, ``--epochs`` epochs each
    (no stopping rule), ``--l2`` as the L2 penalty, ``--seed``, ``--no-shuffle``); returns (the
    :class:`~hogwild_mts.app.report.OneVsRestRun`, ``save(path)``)."""
    from hogwild_mts.app.report import OneVsRestRun
    from hogwild_mts.estimators import HogwildClassifier

    classes = np.unique(dataset.y)
    refused = [flag for flag, given in (("--init", args.init is not None),
                                        ("--resume", args.resume is not None),
                                        ("--checkpoint-every", bool(args.checkpoint_every)),
                                        ("--momentum", bool(args.momentum)),
                                        ("--dtype float32", args.dtype == "float32"),
                                        ("--batch-size", args.batch_size != 1))
               if given]
    if refused:
        raise ValueError(f"{dataset.name} has {classes.size} classes, trained one-vs-rest (one "
                         f"binary run per class), which does not take {', '.join(refused)}; "
                         "use them with binary labels")
    print(f"  {classes.size} classes: one-vs-rest, one run per class", file=sys.stderr, flush=True)
    estimator = HogwildClassifier(**_run_params(args, model.loss), policy=policy,
                                  fit_intercept=model.fit_intercept, workers=args.workers,
                                  **_backend_options(args))
    X = dataset.to_scipy()
    estimator.fit(X, dataset.y)
    run = OneVsRestRun(estimator, accuracy=float(estimator.score(X, dataset.y)), data=dataset.name)
    return run, estimator.save


def _kept(fit, *arguments, **keywords):
    """``fit(...)``'s result or, when a worker failed or died once the run had started, the
    partial result the WorkerError carries (``stopped_by`` says why): written like an
    interrupted run's, then reported as a failed run."""
    from hogwild_mts.core.result import WorkerError

    try:
        return fit(*arguments, **keywords)
    except WorkerError as failure:
        if failure.result is None:
            raise
        return failure.result


def _fill_defaults(args, engine_defaults, own: dict) -> None:
    """Give each ENGINE_FLAGS flag (and --data) that was not given the command line's ``own``
    default, else the engine's (``engine_defaults``: its option table's defaults)."""
    for name in ("data",) + ENGINE_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, own[name] if name in own else engine_defaults[name])


def _initial_params(start, model) -> np.ndarray:
    """The flat parameter vector (weights, then the intercept if fitted) of an --init model."""
    return np.append(start.coef_[0], start.intercept_[0]) if model.fit_intercept else start.coef_[0]


def _train_linear_from_file(args, engine, model, policy, start):
    """--backend ray with a data file: each worker actor reads its own part of ``args.data``
    (the file need not exist on this machine, only where the workers run); the driver never
    loads it.  Returns (the FitResult, ``save(path)`` of the fitted estimator)."""
    print(f"data {args.data}: each Ray worker reads its own part", file=sys.stderr, flush=True)
    init_params = _initial_params(start, model) if start is not None else None
    result = _kept(engine.fit, args.data, init_params=init_params, resume=args.resume)
    print(f"  {result.settings['data_rows']:,} rows x {result.params.size:,} features",
          file=sys.stderr, flush=True)
    classes = np.asarray(result.settings["classes"]) if model.classifier else None
    return result, _saver(result, classes, args, model, policy)


def _saver(result, classes, args, model, policy):
    """``save(path)``: writes the estimator a command-line run amounts to as the model file
    (built only when --out saves it: the estimators import scikit-learn)."""
    return lambda path: _fitted(result, classes, args, model, policy).save(path)


def _fitted(result, classes, args, model, policy):
    """The estimator a command-line run amounts to (what --out saves as the model file)."""
    from hogwild_mts.estimators import estimator_from_run

    return estimator_from_run(result, classes, **_run_params(args, args.model), policy=policy,
                              workers=args.workers, fit_intercept=model.fit_intercept,
                              **_backend_options(args))


def _run_params(args, loss: str) -> dict:
    """The command line's run as the estimators' parameters (scikit-learn's names):
    ``--epochs`` constant-step epochs of ``--lr``, ``--l2`` the L2 penalty, ``--seed``,
    ``--no-shuffle``."""
    from hogwild_mts.model_file import run_estimator_params

    return run_estimator_params(loss, step=args.lr, epochs=args.epochs, l2=args.l2, seed=args.seed,
                                shuffle=args.shuffle)


def _restart_options(args) -> dict:
    """The engine options of --max-worker-restarts, --placement-timeout and --on-lost-worker
    (Ray only)."""
    given = {option: getattr(args, option) for option in
             ("max_worker_restarts", "placement_timeout", "on_lost_worker")
             if getattr(args, option, None) is not None}
    if given and args.backend != "ray":
        flag = "--" + next(iter(given)).replace("_", "-")
        raise ValueError(f"{flag} only applies to --backend ray")
    return given


def _checkpoint_options(args) -> dict:
    """The engine options of --checkpoint-every (checkpoints in --out's CHECKPOINT_DIR)."""
    if not args.checkpoint_every:
        return {}
    if not args.out:
        raise ValueError(f"--checkpoint-every needs --out DIR (the checkpoints go to DIR/{CHECKPOINT_DIR})")
    every = {unit: [number for given, number in args.checkpoint_every if given == unit]
             for unit in CHECKPOINT_UNITS.values()}
    if len(every["seconds"]) > 1 or len(every["updates"]) > 1:
        raise ValueError("--checkpoint-every takes at most one number of seconds and one of updates")
    return {"checkpoint_dir": os.path.join(args.out, CHECKPOINT_DIR),
            "checkpoint_every": (every["seconds"] or [None])[0],
            "checkpoint_every_updates": (every["updates"] or [None])[0]}


def _backend_options(args) -> dict:
    """The engine options of --backend, --address and --local-steps."""
    if args.backend == "shm":
        from hogwild_mts.backends.ray.options import LOCAL_STEPS

        if args.address is not None or args.local_steps != LOCAL_STEPS.default:
            raise ValueError("--address and --local-steps only apply to --backend ray")
        return {}
    return {"backend": "ray", "ray_address": args.address, "local_steps": args.local_steps}


def _initial_model(path: str, model):
    """The binary or regression model file at ``path``, checked against ``model``'s loss and
    intercept (a one-vs-rest file has one row per class: train it with the Python estimators)."""
    from hogwild_mts.estimators import load
    from hogwild_mts.models.linear import ALIASES

    start = load(path)
    loss = ALIASES.get(start.loss, start.loss)
    if start.coef_.shape[0] != 1:
        raise ValueError(f"--init {path}: a one-vs-rest model of {start.coef_.shape[0]} classes; "
                         "the command line trains binary and regression models")
    if loss != model.loss or bool(start.fit_intercept) != model.fit_intercept:
        raise ValueError(f"--init {path}: a {loss} model "
                         f"{'with' if start.fit_intercept else 'without'} intercept; this run trains "
                         f"{model.loss} {'with' if model.fit_intercept else 'without'} intercept")
    return start


class _Unbreakable:
    """A text stream whose writes never raise: once its reader is gone (a closed pipe, a hung-up
    terminal) output is dropped, and the descriptor is pointed at /dev/null so that flushing at
    exit is quiet too.  Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):  # ValueError: the stream was closed
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._break()

    def _break(self) -> None:
        self.broken = True
        with contextlib.suppress(AttributeError, OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _unbreakable_output():
    """sys.stdout and sys.stderr as :class:`_Unbreakable` streams while inside."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Unbreakable(sys.stdout), _Unbreakable(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def main(argv=None) -> int:
    from hogwild_mts.core import signals

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a one-line usage error
        return int(exit_request.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    with _unbreakable_output(), _file_size_limit_as_error(), signals.stop_on_signals() as stop_signals:
        return _run_command(args, stop_signals)


@contextlib.contextmanager
def _file_size_limit_as_error():
    """Inside, SIGXFSZ is ignored: a write past ``ulimit -f`` fails with EFBIG (an OSError the
    command reports like a full disk) instead of killing the process with a core dump."""
    try:
        saved = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    except ValueError:  # not the main thread: signal dispositions stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGXFSZ, saved)


def _run_command(args, stop_signals: list) -> int:
    """Run the chosen command; map its errors to one line on stderr and an exit status."""
    from hogwild_mts.backends.ray.options import RayNotInstalled
    from hogwild_mts.core.result import DivergenceError, WorkerError

    try:
        if args.command == "experiment":
            from hogwild_mts.app.experiment import main as run_experiment
            status = run_experiment(args, stop_signals)
            if stop_signals:  # held while the last cell's result, the tables or plots were written
                print(f"hogwild-mts: stopped by {signal.Signals(stop_signals[0]).name} as the grid "
                      "ended", file=sys.stderr)
                return 128 + stop_signals[0]
            return status
        if args.command == "report":
            from hogwild_mts.app.experiment import report_main
            return report_main(args)
        if args.command == "predict":
            from hogwild_mts.app.predict import main as predict_main
            return predict_main(args)
        return train(args, stop_signals)
    except (WorkerError, DivergenceError) as error:
        print(f"hogwild-mts: run failed: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP (signals.Interrupted), outside a run
        signum = stop_signals[0] if stop_signals else signal.SIGINT
        print(f"hogwild-mts: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except MemoryError as error:
        print(f"hogwild-mts: error: out of memory: {error or 'an allocation failed'}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, TypeError, OSError, RayNotInstalled) as error:
        print(f"hogwild-mts: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
