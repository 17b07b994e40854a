"""Print the markdown tables of docs/results.md from experiment run directories.

    .venv/bin/python scripts/results_tables.py fits RUN_DIR [--cores N]
    .venv/bin/python scripts/results_tables.py targets RUN_DIR

``fits``: total variation of each fitted staleness model per m (m above the core count marked *).
``targets``: per m and policy, seeds reaching the target, updates- and time-to-target as
mean ± std [min, max] over the seeds that reached it, and the final loss.
"""

import argparse
import csv
import json
import os
import sys


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def fits(run_dir, cores):
    rows = read_csv(os.path.join(run_dir, "staleness_fits.csv"))
    print("| m | updates | mean tau | TV geometric | TV Poisson | TV CMP | TV empirical | best by AIC |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        m = int(row["workers"])
        mark = f"{m}*" if cores and m > cores else str(m)
        print(f"| {mark} | {int(row['samples']):,} | {float(row['mean']):.3f} | "
              + " | ".join(f"{float(row['tv_' + name]):.3f}" for name in ("geometric", "poisson", "cmp", "empirical"))
              + f" | {row['best_by_aic']} |")


def _spread(row, key, digits):
    if row[f"{key}_mean"] == "":
        return "—"
    mean, std = float(row[f"{key}_mean"]), float(row[f"{key}_std"])
    low, high = float(row[f"{key}_min"]), float(row[f"{key}_max"])
    return f"{mean:.{digits}g} ± {std:.2g} [{low:.{digits}g}, {high:.{digits}g}]"


def targets(run_dir):
    with open(os.path.join(run_dir, "config.json")) as handle:
        config = json.load(handle)
    unit = "simulated s" if config["mode"] == "simulated" else "s"
    print(f"target loss {config['target_loss']}; time in {unit}; ± is the std over seeds that reached it")
    print()
    print("| m | policy | reached | updates to target | time to target | final loss |")
    print("|---|---|---|---|---|---|")
    for row in read_csv(os.path.join(run_dir, "summary.csv")):
        reached = f"{row['reached']}/{row['seeds']}" + (f" ({row['diverged']} diverged)" if row["diverged"] != "0" else "")
        print(f"| {row['workers']} | {row['policy']} | {reached} | {_spread(row, 'updates_to_target', 3)} | "
              f"{_spread(row, 'time_to_target', 3)} | {_spread(row, 'final_loss', 3)} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("fits", "targets"))
    parser.add_argument("run_dir")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.run_dir, "summary.csv")):
        sys.exit(f"{args.run_dir} has no summary.csv; run hogwild-mts experiment or report first")
    if args.table == "fits":
        fits(args.run_dir, args.cores)
    else:
        targets(args.run_dir)


if __name__ == "__main__":
    main()
