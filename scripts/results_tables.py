"""Print the markdown tables of docs/results.md from experiment run directories.

    .venv/bin/python scripts/results_tables.py fits RUN_DIR [--cores N]
    .venv/bin/python scripts/results_tables.py best RUN_DIR [--targets 0.3,0.25]
    .venv/bin/python scripts/results_tables.py transfer RUN_DIR [--targets ...]
    .venv/bin/python scripts/results_tables.py goal RUN_DIR [--policy mindthestep]
    .venv/bin/python scripts/results_tables.py asynchrony RUN_DIR [--policy auto]

``fits``: total variation of each fitted staleness model per m (m above the core count marked *).
``best``: best against best -- per target and m, each policy at its best step: updates to target
as mean ± std [min, max] over seeds (every seed reached it), the worst resolution (gap between
the evaluations around the crossing, over the updates), ratio to the best constant step and
to the best baseline (constant, inverse, exponential, tail); ``e`` marks a best step at the edge
of the grid.  ``transfer``: the step tuned at the smallest m, unchanged at every m.
``goal``: one policy's ratios against the three goals of docs/results.md (<= 0.8 of the best baseline at
m >= 16, <= 1.3 of its own smallest-m updates at m = 16 under transfer, <= 1.05 of the best
constant at every m).
``asynchrony``: one policy (``--policy``, e.g. auto) against the plain constant step (momentum 0,
the ``constant@mu0`` rows of a grid with several momenta), per target and m: its best (step and
momentum tuned at that m) and its transfer (tuned at the smallest m) over the best plain
constant, its transfer over the best constant tuned over steps and momenta, the harm of
asynchrony (updates at m over updates at the smallest m) of its best over the plain constant's,
and mindthestep's best over the constant's (both tuned over steps and momenta).
"""

import argparse
import csv
import os
import sys


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _number(text):
    return None if text in ("", None) else float(text)


def _marked(m, cores):
    return f"{m}*" if cores and int(m) > cores else str(m)


def _spread(row):
    if _number(row["updates_mean"]) is None:
        return "—"
    mean, std, low, high = (float(row[f"updates_{k}"]) for k in ("mean", "std", "min", "max"))
    return f"{mean:,.0f} ± {std:,.0f} [{low:,.0f}, {high:,.0f}]"


def _ratio(text):
    value = _number(text)
    return "—" if value is None else f"{value:.2f}"


def _percent(text):
    value = _number(text)
    return "—" if value is None else f"{100 * value:.1f}%"


def _share(text):
    value = _number(text)
    return "—" if value is None else f"{100 * value:.3g}%"


def _selected(rows, targets):
    return [r for r in rows if targets is None or float(r["target"]) in targets]


def fits(run_dir, cores):
    """The staleness table: the tail share (above 10x the median; runs written before it was
    recorded show a dash), the TV of each model (the empirical histogram as the reference) and
    the best parametric model by AIC."""
    rows = read_csv(os.path.join(run_dir, "staleness_fits.csv"))
    print("| m | updates | mean tau | max tau | tail share | TV geometric | TV Poisson | TV CMP | "
          "TV empirical (reference) | best by AIC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {_marked(row['workers'], cores)} | {int(row['samples']):,} | {float(row['mean']):.3f} | "
              f"{int(row['max']):,} | {_share(row.get('tail_share'))} | "
              + " | ".join(f"{float(row['tv_' + name]):.3f}" for name in ("geometric", "poisson", "cmp", "empirical"))
              + f" | {row['best_by_aic']} |")


def best(run_dir, targets, cores):
    print("| target | m | policy | step | updates to target | resolution | vs best constant | vs best baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for row in _selected(read_csv(os.path.join(run_dir, "best.csv")), targets):
        step = "not every seed reached it" if row["reached"] != "True" else \
            f"{float(row['lr']):g}" + (" e" if row["lr_at_grid_edge"] == "True" else "")
        print(f"| {row['target']} | {_marked(row['workers'], cores)} | {row['policy']} | {step} | "
              f"{_spread(row)} | {_percent(row['resolution_max'])} | {_ratio(row['vs_best_constant'])} | "
              f"{_ratio(row['vs_best_baseline'])} |")


def transfer(run_dir, targets, cores):
    print("| target | m | policy | step (tuned at smallest m) | reached | updates to target | resolution | "
          "vs own smallest m | vs best constant | vs best baseline |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in _selected(read_csv(os.path.join(run_dir, "transfer.csv")), targets):
        step = "—" if _number(row["lr"]) is None else f"{float(row['lr']):g}"
        print(f"| {row['target']} | {_marked(row['workers'], cores)} | {row['policy']} | {step} | "
              f"{row['reached'] or '—'} | {_spread(row)} | {_percent(row['resolution_max'])} | "
              f"{_ratio(row['vs_own_smallest_m'])} | "
              f"{_ratio(row['vs_best_constant'])} | {_ratio(row['vs_best_baseline'])} |")


def goal(run_dir, policy, targets, cores):
    best_rows = {(r["target"], r["workers"]): r for r in read_csv(os.path.join(run_dir, "best.csv"))
                 if r["policy"] == policy}
    transfer_rows = {(r["target"], r["workers"]): r for r in read_csv(os.path.join(run_dir, "transfer.csv"))
                     if r["policy"] == policy}
    print(f"| target | m | {policy}: best vs best baseline (goal <= 0.8 at m >= 16) | best vs best constant "
          "(goal <= 1.05) | transfer vs own smallest m (goal <= 1.3 at m = 16) |")
    print("|---|---|---|---|---|")
    for key, row in best_rows.items():
        if targets is not None and float(key[0]) not in targets:
            continue
        print(f"| {key[0]} | {_marked(key[1], cores)} | {_ratio(row['vs_best_baseline'])} | "
              f"{_ratio(row['vs_best_constant'])} | {_ratio(transfer_rows[key]['vs_own_smallest_m'])} |")


def _updates(row):
    return None if row is None else _number(row.get("updates_mean"))


def _over(numerator, denominator):
    return _ratio(None if numerator is None or not denominator else numerator / denominator)


def asynchrony(run_dir, policy, targets, cores, reference="constant@mu0"):
    best_rows = {(r["policy"], r["target"], r["workers"]): r
                 for r in read_csv(os.path.join(run_dir, "best.csv"))}
    transfer_rows = {(r["policy"], r["target"], r["workers"]): r
                     for r in read_csv(os.path.join(run_dir, "transfer.csv"))}
    if not any(key[0] == reference for key in best_rows):
        reference = "constant"  # a grid of one momentum
    keys = sorted({(t, m) for _, t, m in best_rows}, key=lambda tm: (-float(tm[0]), int(tm[1])))
    smallest = min(int(m) for _, m in keys)
    print(f"| target | m | {policy} best / plain constant | {policy} transfer / plain constant | "
          f"{policy} transfer / constant (steps x momenta) | harm of asynchrony: {policy} over "
          "plain constant | mindthestep / constant (same tuning) |")
    print("|---|---|---|---|---|---|---|")
    for target, m in keys:
        if targets is not None and float(target) not in targets:
            continue
        plain = _updates(best_rows.get((reference, target, m)))
        mine = _updates(best_rows.get((policy, target, m)))
        moved = _updates(transfer_rows.get((policy, target, m)))
        tuned = _updates(best_rows.get(("constant", target, m)))
        first = str(smallest)
        harm_mine = _over(mine, _updates(best_rows.get((policy, target, first))))
        harm_plain = _over(plain, _updates(best_rows.get((reference, target, first))))
        harm = "—" if "—" in (harm_mine, harm_plain) else f"{float(harm_mine) / float(harm_plain):.2f}"
        default = _updates(best_rows.get(("mindthestep", target, m)))
        print(f"| {target} | {_marked(m, cores)} | {_over(mine, plain)} | {_over(moved, plain)} | "
              f"{_over(moved, tuned)} | {harm} ({harm_mine} vs {harm_plain}) | {_over(default, tuned)} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("fits", "best", "transfer", "goal", "asynchrony"))
    parser.add_argument("run_dir")
    parser.add_argument("--cores", type=int, default=0, help="mark m above this core count with *")
    parser.add_argument("--targets", help="comma-separated target losses to show (default: all)")
    parser.add_argument("--policy", default="mindthestep", help="goal: the policy label to check")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.run_dir, "best.csv")):
        sys.exit(f"{args.run_dir} has no best.csv; run hogwild-mts experiment or report first")
    targets = None if args.targets is None else {float(t) for t in args.targets.split(",")}
    if args.table == "fits":
        fits(args.run_dir, args.cores)
    elif args.table == "best":
        best(args.run_dir, targets, args.cores)
    elif args.table == "transfer":
        transfer(args.run_dir, targets, args.cores)
    elif args.table == "asynchrony":
        asynchrony(args.run_dir, args.policy, targets, args.cores)
    else:
        goal(args.run_dir, args.policy, targets, args.cores)


if __name__ == "__main__":
    main()
