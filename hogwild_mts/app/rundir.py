"""The files of an experiment's run directory (``config.json``, ``cells/*.json``) and the atomic
write every output of the project goes through."""

from __future__ import annotations

import json
import os
import tempfile

CONFIG_FILE = "config.json"
CELLS_DIR = "cells"


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_cells(out_dir: str) -> list[dict]:
    """Every finished cell record in the run directory, in file-name order."""
    directory = os.path.join(out_dir, CELLS_DIR)
    records = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(directory, name)) as handle:
                records.append(json.load(handle))
    return records
