#!/usr/bin/env bash
# Train from the shell: the same code path as `hogwild-mts train` (all flags pass through).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
exec "$python" -m hogwild_mts.app.cli train "$@"
