"""``hogwild-mts`` command line: ``train`` (more subcommands come with the experiments)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130

TORCH_MODELS = ("mlp", "cnn", "lenet")
# Defaults that depend on the kind of model: (linear models, torch networks).
LINEAR_DEFAULTS = {"data": "synthetic-sparse", "alpha": 0.5, "epochs": 20, "batch_size": 1, "dtype": "float64"}

# (flag, policy option, type, help): see docs/policies.md for what each policy takes.
POLICY_FLAGS = (
    ("--target", "target", str, "mindthestep target: momentum or shrink"),
    ("--mu", "mu", float, "momentum target's mu in [0, 1)"),
    ("--r", "r", float, "shrink target's r in (0, 1]"),
    ("--beta", "beta", float, "exponential: decay rate; mindthestep: tempering exponent in [0, 1]"),
    ("--tail-a", "A", float, "tail policy's A in [0, 1]"),
    ("--staleness-model", "staleness_model", str, "mindthestep's P: poisson, geometric, cmp, empirical, auto"),
    ("--alpha-min", "alpha_min", float, "lower clip of alpha(tau)"),
    ("--alpha-max", "alpha_max", float, "upper clip of alpha(tau)"),
    ("--refit-every", "refit_every", int, "adaptive policies: own updates between refits"),
    ("--min-samples", "min_samples", int, "adaptive policies: staleness values before the prior is replaced"),
)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="logreg",
                        help="linear: logreg, svm, lsq; torch: mlp, cnn, lenet (default logreg)")
    parser.add_argument("--data", default=None,
                        help="linear models: synthetic-sparse[:n=..,d=..,nnz=..,seed=..,noise=..], "
                             "synthetic-dense[:...], a .npz file or an svmlight/libsvm file (default "
                             "synthetic-sparse); torch models: digits, mnist:DIR, fashion-mnist:DIR, "
                             "cifar10:DIR (default digits)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--policy", default="constant", help="step-size policy (default constant)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="base step size alpha_c (default 0.5 linear, 0.05 torch)")
    policy = parser.add_argument_group("policy options (given ones are passed to the policy)")
    for flag, option, kind, text in POLICY_FLAGS:
        policy.add_argument(flag, dest=f"policy_{option}", type=kind, default=None, help=text)
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the data (default 20 linear, 10 torch)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per update (default 1 linear, 16 torch)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffles (default 0)")
    parser.add_argument("--l2", type=float, default=0.0, help="L2 penalty l2/2 ||w||^2 (default 0)")
    parser.add_argument("--no-intercept", action="store_true", help="fit no intercept")
    parser.add_argument("--dtype", default=None, choices=("float64", "float32"),
                        help="parameter precision (default float64 linear, float32 torch)")
    parser.add_argument("--out", metavar="DIR", help="write metrics.json and params.npy here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


def write_outputs(out_dir: str, result) -> None:
    """metrics.json (everything but the weights) and params.npy (weights; intercept in the JSON)."""
    os.makedirs(out_dir, exist_ok=True)
    metrics = result.to_dict()
    metrics["intercept"] = result.intercept
    with open(os.path.join(out_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2)
    np.save(os.path.join(out_dir, "params.npy"), result.params)


def make_policy_from_args(args):
    """The policy named by --policy with --alpha and every policy flag that was given."""
    from hogwild_mts.policies.step_sizes import make_policy

    options = {option: getattr(args, f"policy_{option}") for _, option, _, _ in POLICY_FLAGS
               if getattr(args, f"policy_{option}") is not None}
    return make_policy(args.policy, alpha=args.alpha, **options)


def train(args) -> int:
    from hogwild_mts.app.report import format_summary

    if args.model in TORCH_MODELS:
        result = train_network(args)
    else:
        result = train_linear(args)
    print(format_summary(result))
    if args.out:
        write_outputs(args.out, result)
        print(f"wrote {os.path.join(args.out, 'metrics.json')} and params.npy")
    return EXIT_INTERRUPTED if result.interrupted else 0


def train_network(args):
    from hogwild_mts.engines import networks as torch_engine

    if args.data is None:
        args.data = "digits"
    if args.alpha is None:
        args.alpha = torch_engine.DEFAULT_ALPHA
    args.policy = make_policy_from_args(args)
    args.alpha = None  # it is inside the policy now
    return torch_engine.train_images(args)


def train_linear(args):
    from hogwild_mts.data.tabular import load_data
    from hogwild_mts.engines.linear import Engine
    from hogwild_mts.models.linear import LinearModel

    for name, default in LINEAR_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    model = LinearModel(args.model, l2=args.l2, fit_intercept=not args.no_intercept)
    engine = Engine(model, make_policy_from_args(args), workers=args.workers, epochs=args.epochs,
                    batch_size=args.batch_size, seed=args.seed, dtype=args.dtype,
                    progress=not args.quiet)
    loading = time.time()
    print(f"loading data {args.data} ...", file=sys.stderr, flush=True)
    dataset = load_data(args.data)
    print(f"  {dataset.name}: {dataset.n_samples:,} rows x {dataset.n_features:,} features, "
          f"{dataset.nnz:,} stored values ({time.time() - loading:.1f} s)", file=sys.stderr, flush=True)
    return engine.fit(dataset)


def main(argv=None) -> int:
    from hogwild_mts.engines.linear import DivergenceError, WorkerError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        if args.command == "experiment":
            from hogwild_mts.app.experiment import main as run_experiment
            return run_experiment(args)
        if args.command == "report":
            from hogwild_mts.app.experiment import report_main
            return report_main(args)
        return train(args)
    except (WorkerError, DivergenceError) as error:
        print(f"hogwild-mts: run failed: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except (ValueError, TypeError, OSError) as error:
        print(f"hogwild-mts: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("hogwild-mts: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
