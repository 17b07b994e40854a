"""The files of an experiment's run directory (``config.json``, ``cells/*.json``); they are
written with :func:`hogwild_mts.core.files.write_atomic`."""

from __future__ import annotations

import json
import os

CONFIG_FILE = "config.json"
CELLS_DIR = "cells"


def read_cells(out_dir: str) -> list[dict]:
    """Every finished cell record in the run directory, in file-name order."""
    directory = os.path.join(out_dir, CELLS_DIR)
    records = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(directory, name)) as handle:
                records.append(json.load(handle))
    return records
