#!/usr/bin/env bash
# Run the whole test suite RUNS times in a row while BUSY CPU-bound processes run beside it
# (the "tests never flake" check of docs/architecture.md); prints one line per run and a total.
#   scripts/suite_under_load.sh [RUNS=10] [BUSY=2]
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
busy="${2:-2}"
python="${PYTHON:-.venv/bin/python}"
hogs=()
for _ in $(seq "$busy"); do
    "$python" -c "while True: pass" &
    hogs+=("$!")
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
passed=0
for run in $(seq "$runs"); do
    started=$(date +%s)
    if "$python" -m pytest -q -p no:cacheprovider > "/tmp/suite_under_load.$run.log" 2>&1; then
        passed=$((passed + 1)); verdict=passed
    else
        verdict="FAILED (log: /tmp/suite_under_load.$run.log)"
    fi
    echo "run $run: $verdict in $(( $(date +%s) - started )) s: $(tail -1 "/tmp/suite_under_load.$run.log")"
done
echo "$passed of $runs runs passed with $busy busy processes beside them"
[ "$passed" -eq "$runs" ]
