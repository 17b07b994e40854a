#!/usr/bin/env bash
# The many-worker measurements in one run, for a machine with many cores: the ratio table of
# scripts/bench_scaling.py (workers 1, 2, 4, ... up to the cores) and the threads diagnosis of
# scripts/scaling_diagnosis.py at as many threads as cores, for both shapes, into one directory.
#
#   scripts/bench_scaling.sh [OUT_DIR] [bench_scaling.py flags...]   # default runs/scaling-<cores>core
#
# OUT_DIR gets table.md and results.json (bench_scaling), diagnosis-d47236.md and
# diagnosis-d2000000.md (with the line hand-offs between CPUs) and machine.txt (lscpu).
# PYTHON overrides the interpreter (default .venv/bin/python; a machine without the venv:
# PYTHON=python3 PYTHONPATH=. scripts/bench_scaling.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
cores="$(nproc)"
out="${1:-runs/scaling-${cores}core}"
shift || true
cd "$here"
mkdir -p "$out"
lscpu > "$out/machine.txt" 2>&1 || true
"$python" scripts/bench_scaling.py --out "$out" "$@"
for d in 47236 2000000; do
    "$python" scripts/scaling_diagnosis.py --threads "$cores" --features "$d" --repeats 3 \
        > "$out/diagnosis-d$d.md"
done
echo "bench_scaling.sh: tables in $out"
