#!/usr/bin/env bash
# Run one benchmark command on two commits side by side: ROUNDS rounds, each running the command
# once on BEFORE and once on AFTER (alternating which goes first), so a slow spell of the machine
# hits both alike.  Each commit is checked out into a temporary worktree and imported from there
# (PYTHONPATH), with the interpreter of this checkout's environment; every output goes to
# OUT/<round>-<label>.txt.
#   scripts/compare_commits.sh BEFORE AFTER ROUNDS OUT -- python scripts/bench.py --repeats 1
# "python" in the command is replaced by the interpreter (PYTHON, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -lt 6 ] || [ "$5" != "--" ]; then
    echo "usage: $0 BEFORE AFTER ROUNDS OUT -- COMMAND..." >&2
    exit 2
fi
before="$1"; after="$2"; rounds="$3"; out="$4"; shift 5
python="${PYTHON:-.venv/bin/python}"
[[ "$python" = */* ]] && python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # a venv's link, kept
mkdir -p "$out"
out="$(realpath "$out")"
trees="$(mktemp -d)"
cleanup() {
    for label in before after; do
        git worktree remove --force "$trees/$label" 2>/dev/null || true
    done
    rm -rf "$trees"
}
trap cleanup EXIT
git worktree add --quiet --detach "$trees/before" "$before"
git worktree add --quiet --detach "$trees/after" "$after"
command=()
for word in "$@"; do
    if [ "$word" = python ]; then command+=("$python"); else command+=("$word"); fi
done
for round in $(seq "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then order=(before after); else order=(after before); fi
    for label in "${order[@]}"; do
        echo "round $round: $label ($(git rev-parse --short "${!label}"))" >&2
        (cd "$trees/$label" && PYTHONPATH="$trees/$label" "${command[@]}") > "$out/$round-$label.txt" 2>&1
    done
done
echo "outputs in $out" >&2
