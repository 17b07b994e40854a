"""Model files: a directory with ``model.json`` (strict JSON: format, version, kind, settings,
policy, counter) and ``arrays.npz`` (numbers only, loaded without pickle).  No code is stored:
a policy is kept as its registered name and constructor options, or, for a function policy, as
its table.

A linear model file holds ``coef`` (K x d: one row per binary problem, K = 1 for two classes or
regression), ``intercept`` (K), ``classes`` (classifiers) and the run's ``staleness_histogram``
(the adaptive policy's state: a policy rebuilt from the file and bound observes it again).
"""

from __future__ import annotations

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
LINEAR_KINDS = ("HogwildClassifier", "HogwildRegressor")


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------- policies
def policy_spec(policy) -> dict:
    """A JSON-able description from which :func:`policy_from_spec` rebuilds ``policy``: a name
    (with no options: the caller's alpha applies), a registered policy's constructor options,
    or any other policy's current table."""
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
                estimator_params: dict, histogram: np.ndarray, counter: int, metrics: dict) -> str:
    """Write a linear model file into directory ``path`` (created); return ``path``.
    ``estimator_params``: the estimator's ``get_params()`` (the policy as given)."""
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
    params = dict(estimator_params)
    params["policy"] = policy_spec(params.get("policy", "constant"))
    document = {"format": FORMAT, "version": VERSION, "kind": kind, "params": params,
                "n_features": int(arrays["coef"].shape[1]), "counter": int(counter),
                "metrics": metrics}
    text = strict_json(document)
    os.makedirs(path, exist_ok=True)
    write_atomic(os.path.join(path, ARRAYS), npz_bytes(arrays))
    write_atomic(os.path.join(path, MODEL_JSON), text)
    return path


def read(path: str) -> tuple[dict, dict]:
    """(the checked ``model.json`` document, its arrays) of the model file at ``path`` (the
    directory or its model.json)."""
    directory = os.path.dirname(path) if os.path.basename(path) == MODEL_JSON else path
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
    try:
        with np.load(os.path.join(directory, ARRAYS), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{os.path.join(directory, ARRAYS)}: unreadable arrays ({error})") from None
    coef = arrays.get("coef")
    if coef is None or coef.ndim != 2 or coef.shape[1] != document.get("n_features"):
        raise ModelFileError(f"{directory}: coef must be a (K, n_features) array")
    if arrays.get("intercept") is None or arrays["intercept"].shape != (coef.shape[0],):
        raise ModelFileError(f"{directory}: intercept must hold one number per row of coef")
    return document, arrays
