"""The files of an experiment's run directory (``config.json``, ``cells/*.json``); they are
written with :func:`hogwild_mts.core.files.write_atomic`.  Reading them checks what every later
step relies on, so a corrupt or hand-edited file is one :class:`RunFileError` naming it."""

from __future__ import annotations

import json
import math
import numbers
import os

from hogwild_mts.model_file import current_names

CONFIG_FILE = "config.json"
CELLS_DIR = "cells"
HISTORY_KEYS = ("loss", "updates", "time_s")


class RunFileError(ValueError):
    """A file of a run directory (config.json, a cell record) that cannot be used; the message
    names the file and what is wrong."""


def _read_object(path: str, what: str) -> dict:
    """The JSON object in ``path``; RunFileError if it cannot be read, is not JSON or not an object."""
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.read())
    except OSError as error:
        raise RunFileError(f"{path}: cannot read the {what}: {error.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(f"{path}: the {what} is not valid JSON ({error})") from None
    except RecursionError:
        raise RunFileError(f"{path}: the {what} is nested too deeply to be an experiment file") from None
    if not isinstance(value, dict):
        raise RunFileError(f"{path}: the {what} must be a JSON object, got {type(value).__name__}")
    return value


def read_config(out_dir: str) -> dict:
    """The settings object of ``out_dir/config.json`` (checked as a JSON object only; earlier
    key names, its labels' options' too, renamed)."""
    config = current_names(_read_object(os.path.join(out_dir, CONFIG_FILE), "experiment config"))
    if isinstance(config.get("policy_options"), dict):
        config["policy_options"] = {label: current_names(options) if isinstance(options, dict) else options
                                    for label, options in config["policy_options"].items()}
    return config


def read_cells(out_dir: str) -> list[dict]:
    """Every finished cell record in the run directory, in file-name order, each checked by
    :func:`check_cell`."""
    directory = os.path.join(out_dir, CELLS_DIR)
    records = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json") and not name.startswith("."):
            path = os.path.join(directory, name)
            records.append(check_cell(path, current_names(_read_object(path, "cell record"))))
    return records


def _is_number(value, *, finite: bool = True) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and (not finite or math.isfinite(value)))


def _is_count(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_cell(path: str, record: dict) -> dict:
    """``record`` (from ``path``) if it holds what the tables and plots read, else RunFileError
    naming the first key that is missing or wrong."""
    def refuse(key: str, allowed: str):
        shown = repr(record[key]) if key in record else "missing"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise RunFileError(f"{path}: cell key {key!r} must be {allowed}, got {shown}")

    for key, valid, allowed in (("name", lambda v: isinstance(v, str), "a string"),
                                ("policy", lambda v: isinstance(v, str), "a string"),
                                ("lr", lambda v: _is_number(v) and v > 0, "a finite number > 0"),
                                ("workers", lambda v: _is_count(v, 1), "an integer >= 1"),
                                ("seed", lambda v: _is_count(v, 0), "an integer >= 0"),
                                ("diverged", lambda v: isinstance(v, bool), "true or false"),
                                ("staleness_histogram",
                                 lambda v: isinstance(v, list) and all(_is_count(c, 0) for c in v),
                                 "a list of integers >= 0"),
                                ("history", lambda v: isinstance(v, dict), "an object")):
        if key not in record or not valid(record[key]):
            refuse(key, allowed)
    if record["diverged"] and not record["history"]:
        return record
    history = record["history"]
    for key in HISTORY_KEYS:
        series = history.get(key)
        if not isinstance(series, list) or not series or not all(_is_number(v) for v in series):
            refuse("history", f"an object of non-empty lists {list(HISTORY_KEYS)} of finite "
                              f"numbers ({key!r} is not)")
    if len({len(history[key]) for key in HISTORY_KEYS}) != 1:
        refuse("history", f"an object of lists {list(HISTORY_KEYS)} of one length")
    if not record["diverged"]:
        for key in ("best_loss", "final_loss"):
            if not _is_number(record.get(key)):
                refuse(key, "a finite number")
        staleness = record.get("staleness")
        if staleness is not None and not (isinstance(staleness, dict)
                                          and all(_is_number(v) for v in staleness.values())):
            refuse("staleness", "an object of finite numbers")
        table = record.get("alpha_table")
        if table is not None and not (isinstance(table, list) and all(_is_number(v) for v in table)):
            refuse("alpha_table", "a list of finite numbers")
    return record
