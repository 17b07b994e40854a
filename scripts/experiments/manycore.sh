#!/usr/bin/env bash
# The policy study on a machine with >= 16 cores: real worker processes at m = 1, 4, 8, 16 on the convex
# task (logistic regression, RCV1-shaped sparse data) and on MNIST-1D (MLP), every policy on a
# step grid, 3 seeds; the auto policy (step and workers' momentum from m and the measured staleness)
# against the constant step tuned over steps and momenta 0 and 0.5 at m = 1 and 16; then the MNIST-1D
# CNN with momentum 0.9 at m = 1 and 16.  Stops starting new cells after DEADLINE seconds (default 570: under 10
# minutes in all), then writes every table; a rerun resumes the unfinished cells.
#
#   scripts/experiments/manycore.sh [OUT_DIR]        # default runs/manycore
#
# OUT_DIR/linear, OUT_DIR/mnist1d and OUT_DIR/cnn are experiment run directories (cells, CSV tables, plots);
# OUT_DIR/tables.md holds the markdown tables (staleness fits, best against best, transfer, goal).
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
out="${1:-runs/manycore}"
deadline=$(( SECONDS + ${DEADLINE:-570} ))
cores="$(nproc)"
if (( cores < 16 )) && [[ -z "${FORCE:-}" ]]; then
    echo "manycore.sh: this machine has $cores cores; the runs need 16 (FORCE=1 runs anyway, and its" >&2
    echo "results then show time-slicing, not many-core staleness)" >&2
    exit 2
fi
cd "$here"
mkdir -p "$out"
configs=scripts/experiments

# Stages in priority order: the convex task at m = 1 and 16 with every policy first.
stages=(
    "linear $configs/manycore-linear.json --workers 1,16"
    "linear $configs/manycore-linear.json --workers 1,16 --policies constant,auto --momenta 0,0.5"
    "mnist1d $configs/manycore-mnist1d.json --workers 1,16"
    "mnist1d $configs/manycore-mnist1d.json --workers 1,16 --policies constant,auto --momenta 0,0.5"
    "linear $configs/manycore-linear.json --workers 1,4,8,16 --policies constant,tail,mindthestep,mts-chi2-0.1"
    "mnist1d $configs/manycore-mnist1d.json --workers 1,4,8,16 --policies constant,tail,mindthestep,mts-chi2-0.1"
    "cnn $configs/mnist1d-cnn-momentum.json --workers 1,16 --policies constant,mindthestep,mts-momentum-explicit"
)
for stage in "${stages[@]}"; do
    read -r name config flags <<<"$stage"
    left=$(( deadline - SECONDS ))
    if (( left < 20 )); then
        echo "manycore.sh: deadline reached; rerun to finish the remaining cells" >&2
        break
    fi
    # shellcheck disable=SC2086
    timeout --signal=INT "$left" "$python" -m hogwild_mts.app.cli experiment --config "$config" \
        --out "$out/$name" --no-plots $flags || echo "manycore.sh: stage '$name $flags' stopped early" >&2
done

{
    echo "# manycore.sh on $(hostname): $cores cores, $(date -u +%Y-%m-%dT%H:%MZ)"
    for name in linear mnist1d cnn; do
        [[ -d "$out/$name/cells" ]] || continue
        "$python" -m hogwild_mts.app.cli report "$out/$name" >/dev/null
        for table in fits best transfer goal; do
            echo; echo "## $name: $table"; echo
            "$python" scripts/results_tables.py "$table" "$out/$name" --cores "$cores"
        done
    done
} >"$out/tables.md"
echo "tables in $out/tables.md"
