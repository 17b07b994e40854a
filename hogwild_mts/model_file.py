"""Model files: a directory with ``model.json`` (strict JSON: format, version, kind, settings,
policy, counter) and an arrays file (``.npz``, numbers only, loaded without pickle) that
``model.json`` names.  No code is stored: a policy is kept as its registered name and
constructor options, or, for a function policy, as its table.

A linear model file holds ``coef`` (K x d: one row per binary problem, K = 1 for two classes or
regression), ``intercept`` (K), ``classes`` (classifiers) and the run's ``staleness_histogram``
(the adaptive policy's state: a policy rebuilt from the file and bound observes it again).

A checkpoint is a model file whose ``model.json`` also holds ``run``: the state a run resumes
from (see :mod:`hogwild_mts.checkpoint`), with the extra arrays it needs.

Saving is atomic for the directory as a whole: the arrays go to whichever of ``arrays.npz`` and
``arrays-b.npz`` the current ``model.json`` does not name, then ``model.json`` is replaced (the
commit), then the other arrays file is removed.  A crash at any point leaves the previous model
or the new one whole, never a mix.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os

import numpy as np

from hogwild_mts.core.files import npz_bytes, strict_json, write_atomic
from hogwild_mts.policies.step_sizes import POLICIES, FunctionPolicy, make_policy

FORMAT = "hogwild-mts-model"
VERSION = 1
MODEL_JSON = "model.json"
ARRAYS = "arrays.npz"
ARRAYS_NAMES = (ARRAYS, "arrays-b.npz")  # a save writes the one model.json does not name
LINEAR_KINDS = ("HogwildClassifier", "HogwildRegressor")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------- policies
def policy_spec(policy) -> dict:
    """A JSON-able description from which :func:`policy_from_spec` rebuilds ``policy``: a name
    (with no options: the caller's alpha applies), a registered policy's constructor options,
    or any other policy's current table.  A spec (a dict) is returned as it is."""
    if isinstance(policy, dict):
        return policy
    if isinstance(policy, str):
        return {"name": policy}
    cls = POLICIES.get(getattr(policy, "name", None))
    if cls is not None and type(policy) is cls:
        names = list(inspect.signature(cls).parameters)
        if all(hasattr(policy, name) for name in names):
            return {"name": policy.name, "options": {name: getattr(policy, name) for name in names}}
    return {"name": "table", "table": [float(a) for a in np.asarray(policy.table())]}


def policy_from_spec(spec: dict, where: str):
    """The policy (a name, or a policy object) that ``spec`` describes."""
    name = spec.get("name")
    if name == "table":
        table = np.asarray(spec.get("table", []), dtype=np.float64)
        if table.ndim != 1 or table.size == 0:
            raise ModelFileError(f"{where}: the policy table must be a non-empty list of numbers")
        return FunctionPolicy(lambda tau: table[min(tau, table.size - 1)], length=table.size)
    if name not in POLICIES:
        raise ModelFileError(f"{where}: unknown policy {name!r}; allowed: {sorted(POLICIES)} or 'table'")
    return make_policy(name, **spec["options"]) if "options" in spec else name


# ---------------------------------------------------------------------------- files
def save_linear(path: str, *, kind: str, coef: np.ndarray, intercept: np.ndarray, classes,
                estimator_params: dict, histogram: np.ndarray, counter: int, metrics: dict,
                run: dict | None = None, run_arrays: dict | None = None) -> str:
    """Write a linear model file into directory ``path`` (created); return ``path``.
    ``estimator_params``: the estimator's ``get_params()`` (the policy as given).  A checkpoint
    adds ``run`` (JSON-able run state) and ``run_arrays`` (name -> array, stored beside the
    model's arrays)."""
    if kind not in LINEAR_KINDS:
        raise ValueError(f"kind must be one of {list(LINEAR_KINDS)}, got {kind!r}")
    arrays = {"coef": np.asarray(coef, dtype=np.float64), "intercept": np.asarray(intercept, dtype=np.float64),
              "staleness_histogram": np.asarray(histogram, dtype=np.int64)}
    if classes is not None:
        classes = np.asarray(classes)
        if classes.dtype.kind not in "iufbU":
            raise ValueError(f"class labels of dtype {classes.dtype} cannot be stored without "
                             "pickle; use numbers or strings")
        arrays["classes"] = classes
    clashing = sorted(set(arrays) & set(run_arrays or {}))
    if clashing:
        raise ValueError(f"run arrays {clashing} would replace the model's own")
    arrays.update(run_arrays or {})
    params = dict(estimator_params)
    params["policy"] = policy_spec(params.get("policy", "constant"))
    os.makedirs(path, exist_ok=True)
    current = _arrays_name(path)
    arrays_name = ARRAYS_NAMES[1] if current == ARRAYS_NAMES[0] else ARRAYS_NAMES[0]
    document = {"format": FORMAT, "version": VERSION, "kind": kind, "params": params,
                "n_features": int(arrays["coef"].shape[1]), "counter": int(counter),
                "metrics": metrics, "arrays": arrays_name}
    if run is not None:
        document["run"] = run
    text = strict_json(document)
    write_atomic(os.path.join(path, arrays_name), npz_bytes(arrays))
    write_atomic(os.path.join(path, MODEL_JSON), text)  # the commit
    for name in ARRAYS_NAMES:
        if name != arrays_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))
    return path


def _arrays_name(directory: str) -> str | None:
    """The arrays file the model.json in ``directory`` names (None: no readable model.json)."""
    try:
        with open(os.path.join(directory, MODEL_JSON)) as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    name = document.get("arrays", ARRAYS) if isinstance(document, dict) else None
    return name if name in ARRAYS_NAMES else None


def read(path: str) -> tuple[dict, dict]:
    """(the checked ``model.json`` document, its arrays) of the model file at ``path`` (the
    directory or its model.json)."""
    directory = os.path.dirname(path) if os.path.basename(path) == MODEL_JSON else path
    for attempt in range(2):  # a save may switch arrays files between our two reads: read again
        document = _read_document(path, directory)
        arrays_path = os.path.join(directory, document.get("arrays", ARRAYS))
        try:
            with np.load(arrays_path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            break
        except FileNotFoundError:
            if attempt:
                raise ModelFileError(f"{arrays_path}: missing (the model file is incomplete)") from None
        except (OSError, ValueError) as error:
            raise ModelFileError(f"{arrays_path}: unreadable arrays ({error})") from None
    coef = arrays.get("coef")
    if coef is None or coef.ndim != 2 or coef.shape[1] != document.get("n_features"):
        raise ModelFileError(f"{directory}: coef must be a (K, n_features) array")
    if arrays.get("intercept") is None or arrays["intercept"].shape != (coef.shape[0],):
        raise ModelFileError(f"{directory}: intercept must hold one number per row of coef")
    return document, arrays


def _read_document(path: str, directory: str) -> dict:
    """The checked ``model.json`` of the model file in ``directory``."""
    json_path = os.path.join(directory, MODEL_JSON)
    if not os.path.isfile(json_path):
        raise ModelFileError(f"{path}: not a model file (no {MODEL_JSON}; a model file is the "
                             "directory that `hogwild-mts train --out` or save() wrote)")
    try:
        with open(json_path) as handle:
            document = json.load(handle)
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{json_path}: unreadable model description ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{json_path}: not a {FORMAT} file")
    if document.get("version") != VERSION:
        raise ModelFileError(f"{json_path}: format version {document.get('version')!r}; this "
                             f"hogwild_mts reads version {VERSION}")
    if document.get("kind") not in LINEAR_KINDS:
        raise ModelFileError(f"{json_path}: a model of kind {document.get('kind')!r}; "
                             f"expected one of {list(LINEAR_KINDS)}")
    if document.get("arrays", ARRAYS) not in ARRAYS_NAMES:
        raise ModelFileError(f"{json_path}: arrays file {document.get('arrays')!r}; expected one "
                             f"of {list(ARRAYS_NAMES)}")
    return document
