"""Model files: a directory with ``model.json`` (strict JSON: format, version, kind, settings,
policy, counter) and the data file that ``model.json`` names: an arrays file (``.npz``, numbers
only, loaded without pickle) for a linear model, a weights file (a torch ``state_dict`` written
with ``torch.save``, read with ``torch.load(weights_only=True)``) for a network.  No code is
stored: a policy is kept as its registered name and constructor options, or, for a function
policy, as its table; a network as its bundled name and constructor arguments, or, for a
caller's own factory, only its name (loading it then needs the factory).

A linear model file holds ``coef`` (K x d: one row per binary problem, K = 1 for two classes or
regression), ``intercept`` (K), ``classes`` (classifiers) and the run's ``staleness_histogram``
(the adaptive policy's state: a policy rebuilt from the file and bound observes it again).

A checkpoint is a model file whose ``model.json`` also holds ``run``: the state a run resumes
from (see :mod:`hogwild_mts.checkpoint`), with the extra arrays it needs.

A network's model file (kind ``TorchNetwork``) holds in ``model.json`` the network (``name``: a
bundled network or None for a caller's factory, ``factory``: that factory's name,
``input_shape``, ``outputs``), ``loss``, ``classes`` (class names, None for mse), ``dtype``, the
engine's settings with its policy, the ``counter`` and the ``staleness_histogram`` (counts by
tau, trailing zeros dropped); the weights file holds the network's whole ``state_dict``
(parameters and buffers), so ``net.load_state_dict(torch.load(path, weights_only=True))`` works
without hogwild_mts.  A checkpoint adds ``run`` (the order generator's state inside it).

Saving is atomic for the directory as a whole: the data go to whichever of the two data files
(``arrays.npz`` / ``arrays-b.npz``, ``weights.pt`` / ``weights-b.pt``) the current
``model.json`` does not name, then ``model.json`` is replaced (the commit), then the other data
files are removed.  A crash at any point leaves the previous model or the new one whole, never
a mix.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os

import numpy as np

from hogwild_mts.core.files import npz_bytes, strict_json, write_atomic
from hogwild_mts.policies.step_sizes import POLICIES, FunctionPolicy, make_policy, policy_table

FORMAT = "hogwild-mts-model"
VERSION = 1
MODEL_JSON = "model.json"
ARRAYS = "arrays.npz"
ARRAYS_NAMES = (ARRAYS, "arrays-b.npz")  # a save writes the one model.json does not name
WEIGHTS_NAMES = ("weights.pt", "weights-b.pt")  # the same for a network's state_dict
LINEAR_KINDS = ("HogwildClassifier", "HogwildRegressor")
NETWORK_KIND = "TorchNetwork"
LOADERS = {**dict.fromkeys(LINEAR_KINDS, "hogwild_mts.load"), NETWORK_KIND: "hogwild_mts.load_network"}


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
    return {"name": "table", "table": [float(a) for a in policy_table(policy)]}


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
    document = {"format": FORMAT, "version": VERSION, "kind": kind, "params": params,
                "n_features": int(arrays["coef"].shape[1]), "counter": int(counter),
                "metrics": metrics}
    if run is not None:
        document["run"] = run
    return _save(path, document, "arrays", ARRAYS_NAMES, npz_bytes(arrays))


def _save(path: str, document: dict, key: str, names: tuple, payload: bytes) -> str:
    """Write ``payload`` into the one of ``names`` that the model.json in ``path`` does not name
    under ``key``, then ``document`` (naming it) as model.json (the commit), then remove every
    other data file; return ``path``."""
    os.makedirs(path, exist_ok=True)
    name = names[1] if _data_name(path, key, names) == names[0] else names[0]
    document = {**document, key: name}
    text = strict_json(document)  # before any write: a document that is not JSON changes nothing
    write_atomic(os.path.join(path, name), payload)
    write_atomic(os.path.join(path, MODEL_JSON), text)  # the commit
    for other in ARRAYS_NAMES + WEIGHTS_NAMES:
        if other != name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, other))
    return path


def _data_name(directory: str, key: str, names: tuple) -> str | None:
    """The data file (one of ``names``) the model.json in ``directory`` names under ``key``
    (None: no readable model.json, or it names none of them)."""
    try:
        with open(os.path.join(directory, MODEL_JSON)) as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    name = document.get(key, names[0]) if isinstance(document, dict) else None
    return name if name in names else None


def read(path: str) -> tuple[dict, dict]:
    """(the checked ``model.json`` document, its arrays) of the model file at ``path`` (the
    directory or its model.json)."""
    directory = _directory(path)
    for attempt in range(2):  # a save may switch arrays files between our two reads: read again
        document = _read_document(path, directory, LINEAR_KINDS, "arrays", ARRAYS_NAMES)
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


def model_kind(path: str) -> str | None:
    """The ``kind`` the model.json at ``path`` (the directory or its model.json) names; None
    when there is no readable one (the reader of its kind then says what is wrong)."""
    try:
        with open(os.path.join(_directory(path), MODEL_JSON)) as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    return document.get("kind") if isinstance(document, dict) else None


def _directory(path: str) -> str:
    """The model file's directory, given it or its model.json."""
    return os.path.dirname(path) if os.path.basename(path) == MODEL_JSON else path


def _read_document(path: str, directory: str, kinds: tuple, key: str, names: tuple) -> dict:
    """The checked ``model.json`` of the model file in ``directory``: one of ``kinds``, naming
    one of the data files ``names`` under ``key``."""
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
    kind = document.get("kind")
    if kind not in kinds:
        loader = f" (load it with {LOADERS[kind]})" if kind in LOADERS else ""
        raise ModelFileError(f"{json_path}: a model of kind {kind!r}; expected one of "
                             f"{list(kinds)}{loader}")
    if document.get(key, names[0]) not in names:
        raise ModelFileError(f"{json_path}: {key} file {document.get(key)!r}; expected one "
                             f"of {list(names)}")
    return document


# ---------------------------------------------------------------------------- networks
def save_network(path: str, *, state_dict: dict, network: dict, loss: str, classes, dtype: str,
                 settings: dict, histogram: np.ndarray, counter: int, metrics: dict,
                 run: dict | None = None) -> str:
    """Write a network's model file into directory ``path`` (created); return ``path``.
    ``state_dict``: name -> tensor (the network's whole state); ``network``: ``name`` (a
    bundled network, or None), ``factory`` (the factory's name), ``input_shape``, ``outputs``;
    ``classes``: class names (None for mse); ``settings``: the engine's (its ``policy`` as
    given); a checkpoint adds ``run`` (JSON-able run state)."""
    import io

    import torch

    histogram = np.asarray(histogram, dtype=np.int64)
    used = np.flatnonzero(histogram)
    settings = dict(settings)
    settings["policy"] = policy_spec(settings.get("policy", "constant"))
    document = {"format": FORMAT, "version": VERSION, "kind": NETWORK_KIND,
                "network": {"name": network["name"], "factory": network.get("factory"),
                            "input_shape": [int(n) for n in network["input_shape"]],
                            "outputs": int(network["outputs"])},
                "loss": loss, "classes": None if classes is None else [str(c) for c in classes],
                "dtype": dtype, "settings": settings, "counter": int(counter),
                "staleness_histogram": histogram[:used[-1] + 1 if used.size else 0].tolist(),
                "metrics": metrics}
    if run is not None:
        document["run"] = run
    buffer = io.BytesIO()
    torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}, buffer)
    return _save(path, document, "weights", WEIGHTS_NAMES, buffer.getvalue())


def read_network(path: str) -> tuple[dict, dict]:
    """(the checked ``model.json`` document, the ``state_dict``) of the network model file at
    ``path`` (the directory or its model.json); ModelFileError naming the file and the problem."""
    import torch

    from hogwild_mts.kernels.flat import LOSSES

    directory = _directory(path)
    for attempt in range(2):  # a save may switch weights files between our two reads: read again
        document = _read_document(path, directory, (NETWORK_KIND,), "weights", WEIGHTS_NAMES)
        weights_path = os.path.join(directory, document.get("weights", WEIGHTS_NAMES[0]))
        try:
            state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
            break
        except FileNotFoundError:
            if attempt:
                raise ModelFileError(f"{weights_path}: missing (the model file is incomplete)") from None
        except Exception as error:  # torch raises several types for a broken or unsafe file
            raise ModelFileError(f"{weights_path}: unreadable weights ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''})") from None
    json_path = os.path.join(directory, MODEL_JSON)
    if not isinstance(state_dict, dict) or not all(
            isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state_dict.items()):
        raise ModelFileError(f"{weights_path}: not a state_dict (names -> tensors)")
    network = document.get("network")
    if (not isinstance(network, dict) or not isinstance(network.get("input_shape"), list)
            or not isinstance(network.get("outputs"), int) or network["outputs"] < 1):
        raise ModelFileError(f"{json_path}: 'network' must give input_shape (a list) and "
                             "outputs (an integer >= 1)")
    histogram = document.get("staleness_histogram")
    if not isinstance(histogram, list) or not all(isinstance(n, int) and n >= 0 for n in histogram):
        raise ModelFileError(f"{json_path}: staleness_histogram must be a list of counts")
    if document.get("loss") not in LOSSES:
        raise ModelFileError(f"{json_path}: loss {document.get('loss')!r}; expected one of "
                             f"{list(LOSSES)}")
    return document, state_dict
