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

Saving is atomic for the directory as a whole, with ``model.json`` as the manifest written last:
each save writes its data into a file of its own, named after the writing process and a random
token (``arrays-<pid>-<hex>.npz``, ``weights-<pid>-<hex>.pt``), then replaces ``model.json``
naming it (the commit), then removes the data files no manifest needs any more: it keeps the one
it wrote and the one the previous ``model.json`` named (a reader that read the manifest just
before the commit still finds its file), and removes the others that an earlier version wrote
(``arrays.npz``, ``arrays-b.npz``, ``weights.pt``, ``weights-b.pt``) or that a process no longer
alive wrote (a data file a killed writer never committed); a live writer's files are never
removed.  A crash at any point leaves the previous model or the new one whole, never a mix, and
since a data file's name is never reused, a manifest and the file it names always belong
together.  Readers open the file the manifest names; if it has just been removed (a newer save
committed meanwhile) they read the manifest again.  Files written by earlier versions (data
files ``arrays.npz`` / ``arrays-b.npz``, ``weights.pt`` / ``weights-b.pt``, or no name in
``model.json``: ``arrays.npz`` / ``weights.pt``) still load.

Reading checks the whole file against one schema (:func:`check_linear`, :func:`check_network`,
and for a checkpoint's run state :func:`hogwild_mts.checkpoint.run_state`): every field a later
step uses, its type, range and shape, and that the arrays are finite and agree with each other.
A file that fails is one :class:`ModelFileError` naming the file and the field, e.g.
``run/model.json: field 'params.policy' must be an object with a policy 'name', got 'constant'``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import numbers
import os
import re
import secrets

import numpy as np

from hogwild_mts.core.files import npz_bytes, process_alive, strict_json, write_atomic
from hogwild_mts.models import linear as linear_models
from hogwild_mts.policies.step_sizes import POLICIES, FunctionPolicy, make_policy, policy_table

FORMAT = "hogwild-mts-model"
VERSION = 1
MODEL_JSON = "model.json"
ARRAYS = "arrays.npz"
ARRAYS_NAMES = (ARRAYS, "arrays-b.npz")  # data files of earlier versions (still read)
WEIGHTS_NAMES = ("weights.pt", "weights-b.pt")  # the same for a network's state_dict
LINEAR_KINDS = ("HogwildClassifier", "HogwildRegressor")
NETWORK_KIND = "TorchNetwork"
LOADERS = {**dict.fromkeys(LINEAR_KINDS, "hogwild_mts.load"), NETWORK_KIND: "hogwild_mts.load_network"}


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------- policies
def policy_spec(policy) -> dict:
    """A JSON-able description from which :func:`policy_from_spec` rebuilds ``policy``: a name
    (with no options: the caller's lr applies), a registered policy's constructor options,
    or any other policy's current table (a plain function of tau: its table over
    tau = 0..DEFAULT_TABLE_LENGTH-1, as a function policy tabulates it).  A spec (a dict) is
    returned as it is."""
    if isinstance(policy, dict):
        return policy
    if isinstance(policy, str):
        return {"name": policy}
    if callable(policy) and not hasattr(policy, "table"):  # a function of tau: its table
        policy = FunctionPolicy(policy)
    cls = POLICIES.get(getattr(policy, "name", None))
    if cls is not None and type(policy) is cls:
        names = list(inspect.signature(cls).parameters)
        if all(hasattr(policy, name) for name in names):
            return {"name": policy.name, "options": {name: getattr(policy, name) for name in names}}
    return {"name": "table", "table": [float(a) for a in policy_table(policy)]}


# Names of files (model files, checkpoints, experiment run directories) written before the
# base step was called lr.
EARLIER_NAMES = {"alpha": "lr", "alpha_min": "lr_min", "alpha_max": "lr_max", "alphas": "lrs"}


def current_names(value: dict) -> dict:
    """``value`` (an object read from a file) with its EARLIER_NAMES keys renamed."""
    return {EARLIER_NAMES.get(key, key): item for key, item in value.items()}


def policy_from_spec(spec, where: str, field: str = "params.policy"):
    """The policy (a name, or a policy object) that ``spec`` describes; ModelFileError naming
    ``where`` (the file) and ``field`` when it describes none."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        refuse(where, field, "an object with a policy 'name'", spec)
    name = spec["name"]
    if name == "table":
        table = spec.get("table", MISSING)
        if (not isinstance(table, list) or not table
                or not all(_is_number(a) and a >= 0 for a in table)):
            refuse(where, f"{field}.table", "a non-empty list of finite numbers >= 0", table)
        table = np.asarray(table, dtype=np.float64)
        return FunctionPolicy(lambda tau: table[min(tau, table.size - 1)], length=table.size)
    if name not in POLICIES:
        refuse(where, f"{field}.name", f"one of {sorted(POLICIES)} or 'table'", name)
    if "options" not in spec:
        return name
    options = spec["options"]
    if not isinstance(options, dict):
        refuse(where, f"{field}.options", "an object of the policy's options", options)
    options = current_names(options)
    try:
        return make_policy(name, **options)
    except (TypeError, ValueError, OverflowError) as error:
        raise ModelFileError(f"{where}: field {field}.options is not a valid {name!r} policy "
                             f"({_first_line(error)})") from None


# ---------------------------------------------------------------------------- schema
MISSING = object()
COUNT_LIMIT = 2 ** 62  # counts (counter, updates, samples) stay below: int64 fields with room to go on
# The estimators' losses (scikit-learn's names: a classifier takes the regressor losses too, as
# SGDClassifier does); files of earlier versions name the engine's aliases (LEGACY_LOSSES: each
# one's scikit-learn name), which still load.
REGRESSOR_LOSSES = tuple(linear_models.REGRESSOR_LOSSES)
CLASSIFIER_LOSSES = tuple(linear_models.CLASSIFIER_LOSSES) + REGRESSOR_LOSSES
LEGACY_LOSSES = linear_models.ALIASES
LINEAR_LOSSES = {"HogwildClassifier": CLASSIFIER_LOSSES + ("logreg", "svm"),
                 "HogwildRegressor": REGRESSOR_LOSSES + ("lsq",)}
READ_TRIES = 100  # manifests read while saves keep replacing the data file before giving up


def run_estimator_params(loss: str, *, step: float | None, epochs: int, l2: float, seed: int,
                         shuffle: bool = True, learning_rate: str = "constant",
                         power_t: float | None = None) -> dict:
    """An engine run described as the estimators' parameters (scikit-learn's names), as
    ``hogwild-mts train --out`` and checkpoints save it: ``loss`` by its scikit-learn name,
    ``epochs`` epochs (``max_iter``) without a stopping rule (``tol=None``), the base ``step``
    as ``eta0`` (None: a policy with a step of its own; ``eta0`` keeps its default) under
    ``learning_rate`` (and its ``power_t``), the L2 penalty ``l2`` as
    ``alpha`` (no penalty when 0; ``alpha`` is then scikit-learn's default, 1e-4), ``seed``
    as ``random_state``.  The policy, workers and backend options keep their own names and are
    the caller's to add."""
    params = {"loss": LEGACY_LOSSES.get(loss, loss), "learning_rate": learning_rate,
              "penalty": "l2" if l2 > 0 else None, "alpha": l2 if l2 > 0 else 1e-4,
              "max_iter": epochs, "tol": None, "random_state": seed, "shuffle": shuffle}
    params.update({name: value for name, value in (("eta0", step), ("power_t", power_t))
                   if value is not None})
    return params


def _shown(value) -> str:
    if value is MISSING:
        return "missing"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _first_line(error) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def refuse(where: str, field: str, allowed: str, value=MISSING):
    """Raise the ModelFileError of a field: ``WHERE: field 'F' must be ALLOWED, got VALUE``."""
    raise ModelFileError(f"{where}: field {field!r} must be {allowed}, got {_shown(value)}")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value, minimum: int = 0) -> bool:
    """An int (not a bool) in [minimum, COUNT_LIMIT)."""
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value < COUNT_LIMIT


def field(where: str, document: dict, name: str, valid, allowed: str):
    """``document[name]`` (name may be dotted: ``params.policy``) if ``valid`` accepts it, else
    ModelFileError naming ``where`` and the field."""
    value = document
    for part in name.split("."):
        value = value.get(part, MISSING) if isinstance(value, dict) else MISSING
    if value is MISSING or not valid(value):
        refuse(where, name, allowed, value)
    return value


def check_array(where: str, arrays: dict, name: str, *, ndim: int, kinds: str = "fiu",
                shape: tuple | None = None, finite: bool = True, minimum=None) -> np.ndarray:
    """``arrays[name]`` if it is a ``ndim``-d array of a dtype kind among ``kinds`` (real
    numbers by default: no complex, bool or object), of ``shape`` (None entries: any length),
    finite, and at least ``minimum``; else ModelFileError naming the file and the array."""
    array = arrays.get(name)
    if array is None:
        raise ModelFileError(f"{where}: array {name!r} is missing")
    if array.dtype.kind not in kinds or array.dtype.kind == "b" and "b" not in kinds:
        raise ModelFileError(f"{where}: array {name!r} has dtype {array.dtype}; expected "
                             + {"fiu": "real numbers", "iu": "integers"}.get(kinds, f"kind {kinds!r}"))
    expected = f"{ndim}-d" + (" of shape (" + ", ".join("*" if n is None else str(n) for n in shape)
                              + ("," if len(shape) == 1 else "") + ")" if shape else "")
    if array.ndim != ndim or shape and any(n is not None and n != m for n, m in zip(shape, array.shape)):
        raise ModelFileError(f"{where}: array {name!r} has shape {array.shape}; expected {expected}")
    if finite and array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        bad = array.flat[np.flatnonzero(~np.isfinite(array))[0]]
        raise ModelFileError(f"{where}: array {name!r} holds a non-finite value ({bad})")
    if minimum is not None and array.size and array.min() < minimum:
        raise ModelFileError(f"{where}: array {name!r} holds {array.min()}; every entry must be "
                             f">= {minimum}")
    return array


def check_linear(json_path: str, arrays_path: str, document: dict, arrays: dict) -> None:
    """Refuse (ModelFileError naming the file and the field) a linear model file whose
    ``model.json`` document or arrays are not what the estimators and checkpoints use."""
    kind = document["kind"]
    n_features = field(json_path, document, "n_features", lambda v: is_count(v, 1), "an integer >= 1")
    field(json_path, document, "counter", is_count, "an integer in [0, 2**62)")
    field(json_path, document, "params", lambda v: isinstance(v, dict), "an object of the estimator's settings")
    field(json_path, document, "params.loss", lambda v: v is None or v in LINEAR_LOSSES[kind],
          f"null or one of {list(LINEAR_LOSSES[kind])} (a {kind})")
    field(json_path, document, "params.fit_intercept", lambda v: isinstance(v, bool), "true or false")
    policy_from_spec(document["params"].get("policy", MISSING), json_path)
    if "metrics" in document:
        field(json_path, document, "metrics", lambda v: isinstance(v, dict), "an object")
    if document.get("feature_names") is not None:
        field(json_path, document, "feature_names",
              lambda v: isinstance(v, list) and len(v) == n_features and all(isinstance(n, str) for n in v),
              f"null or a list of {n_features} feature names (strings)")
    coef = check_array(arrays_path, arrays, "coef", ndim=2, shape=(None, n_features))
    rows = coef.shape[0]
    if rows < 1:
        raise ModelFileError(f"{arrays_path}: array 'coef' has no rows")
    check_array(arrays_path, arrays, "intercept", ndim=1, shape=(rows,))
    check_array(arrays_path, arrays, "staleness_histogram", ndim=1, kinds="iu", minimum=0)
    if kind == "HogwildRegressor":
        if rows != 1 or "classes" in arrays:
            raise ModelFileError(f"{arrays_path}: a regressor holds one row of coef and no "
                                 f"classes, found {rows} rows" + (" and classes" if "classes" in arrays else ""))
        return
    classes = check_array(arrays_path, arrays, "classes", ndim=1, kinds="iufbU")
    if classes.size < 2 or np.unique(classes).size != classes.size:
        raise ModelFileError(f"{arrays_path}: array 'classes' must hold at least 2 distinct "
                             f"labels, got {_shown(classes.tolist())}")
    expected = 1 if classes.size == 2 else classes.size
    if rows != expected:
        raise ModelFileError(f"{arrays_path}: array 'classes' holds {classes.size} labels but "
                             f"'coef' has {rows} rows ({expected} expected: one row for 2 classes, "
                             "one per class for more)")


def check_network(json_path: str, document: dict) -> None:
    """Refuse (ModelFileError naming the file and the field) a network's ``model.json`` document
    that is not what :func:`hogwild_mts.engines.networks.saved_network` uses."""
    from hogwild_mts.kernels.flat import LOSSES

    field(json_path, document, "network", lambda v: isinstance(v, dict), "an object")
    field(json_path, document, "network.input_shape",
          lambda v: isinstance(v, list) and v and all(is_count(n, 1) for n in v),
          "a non-empty list of integers >= 1")
    outputs = field(json_path, document, "network.outputs", lambda v: is_count(v, 1), "an integer >= 1")
    field(json_path, document, "staleness_histogram",
          lambda v: isinstance(v, list) and all(is_count(n) for n in v), "a list of counts")
    loss = field(json_path, document, "loss", lambda v: v in LOSSES, f"one of {list(LOSSES)}")
    field(json_path, document, "counter", is_count, "an integer in [0, 2**62)")
    field(json_path, document, "dtype", lambda v: v in ("float32", "float64"), "'float32' or 'float64'")
    field(json_path, document, "settings", lambda v: isinstance(v, dict), "an object of the engine's settings")
    policy_from_spec(document["settings"].get("policy", MISSING), json_path, "settings.policy")
    if loss == "cross_entropy":
        field(json_path, document, "classes",
              lambda v: v is None or isinstance(v, list) and len(v) == outputs
              and all(isinstance(c, str) for c in v) and len(set(v)) == len(v),
              f"null or a list of {outputs} distinct class names (one per output)")


# ---------------------------------------------------------------------------- files
def save_linear(path: str, *, kind: str, coef: np.ndarray, intercept: np.ndarray, classes,
                estimator_params: dict, histogram: np.ndarray, counter: int, metrics: dict,
                run: dict | None = None, run_arrays: dict | None = None,
                feature_names=None) -> str:
    """Write a linear model file into directory ``path`` (created); return ``path``.
    ``estimator_params``: the estimator's ``get_params()`` (the policy as given); ``classes``:
    numbers, booleans or strings (an object array of strings, as pandas labels give, is stored
    as strings); ``feature_names``: the estimator's ``feature_names_in_`` (strings, one per
    feature) or None.  A checkpoint adds ``run`` (JSON-able run state) and ``run_arrays``
    (name -> array, stored beside the model's arrays)."""
    if kind not in LINEAR_KINDS:
        raise ValueError(f"kind must be one of {list(LINEAR_KINDS)}, got {kind!r}")
    arrays = {"coef": np.asarray(coef, dtype=np.float64), "intercept": np.asarray(intercept, dtype=np.float64),
              "staleness_histogram": np.asarray(histogram, dtype=np.int64)}
    if classes is not None:
        arrays["classes"] = storable_labels(classes)
    clashing = sorted(set(arrays) & set(run_arrays or {}))
    if clashing:
        raise ValueError(f"run arrays {clashing} would replace the model's own")
    arrays.update(run_arrays or {})
    params = dict(estimator_params)
    params["policy"] = policy_spec(params.get("policy", "constant"))
    document = {"format": FORMAT, "version": VERSION, "kind": kind, "params": params,
                "n_features": int(arrays["coef"].shape[1]), "counter": int(counter),
                "metrics": metrics}
    if feature_names is not None:
        names = [str(name) for name in np.asarray(feature_names, dtype=object).tolist()]
        if len(names) != document["n_features"]:
            raise ValueError(f"{len(names)} feature names for {document['n_features']} features")
        document["feature_names"] = names
    if run is not None:
        document["run"] = run
    return _save(path, document, "arrays", npz_bytes(arrays))


def storable_labels(classes) -> np.ndarray:
    """``classes`` (an array, a list, a pandas Series or Categorical) as an array the arrays
    file stores without pickle: numbers and booleans as they are, strings (also an object
    array of strings) as a unicode array; ValueError for anything else."""
    array = np.asarray(classes)
    if array.dtype.kind == "O" and array.size and all(isinstance(c, str) for c in array.ravel()):
        array = np.asarray(array.tolist(), dtype=str)
    if array.dtype.kind not in "iufbU":
        kinds = sorted({type(c).__name__ for c in array.ravel()}) if array.dtype.kind == "O" else []
        raise ValueError(f"class labels of dtype {array.dtype}"
                         + (f" (holding {', '.join(kinds)})" if kinds else "")
                         + " cannot be stored without pickle; use numbers, booleans or strings "
                         "(all of one kind)")
    return array


DATA_FILES = {"arrays": re.compile(r"^arrays(?:-b|-(\d+)-[0-9a-f]{8})?\.npz$"),
              "weights": re.compile(r"^weights(?:-b|-(\d+)-[0-9a-f]{8})?\.pt$")}
DATA_DEFAULTS = {"arrays": ARRAYS, "weights": WEIGHTS_NAMES[0]}  # files that name none
DATA_SUFFIXES = {"arrays": ".npz", "weights": ".pt"}


def _save(path: str, document: dict, key: str, payload: bytes) -> str:
    """Write ``payload`` into a new data file of ``path`` (``<key>-<pid>-<hex><suffix>``), then
    ``document`` naming it under ``key`` as model.json (the commit), then remove the data files
    no longer needed (see the module docstring); return ``path``."""
    os.makedirs(path, exist_ok=True)
    previous = _named_data(path)
    name = f"{key}-{os.getpid()}-{secrets.token_hex(4)}{DATA_SUFFIXES[key]}"
    document = {**document, key: name}
    text = strict_json(document)  # before any write: a document that is not JSON changes nothing
    write_atomic(os.path.join(path, name), payload)
    try:
        write_atomic(os.path.join(path, MODEL_JSON), text)  # the commit
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
        raise
    _remove_superseded(path, keep={name, previous})
    return path


def _named_data(directory: str) -> str | None:
    """The data file the model.json in ``directory`` names (None: no readable model.json)."""
    try:
        with open(os.path.join(directory, MODEL_JSON), "rb") as handle:
            document = json.loads(handle.read())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    key = "weights" if document.get("kind") == NETWORK_KIND else "arrays"
    name = document.get(key, DATA_DEFAULTS[key])
    return name if isinstance(name, str) else None


def _remove_superseded(directory: str, keep: set) -> None:
    """Remove the data files of ``directory`` not in ``keep`` that an earlier version wrote (no
    pid in their name), this process wrote, or a process no longer alive wrote."""
    for name in os.listdir(directory):
        if name in keep:
            continue
        for pattern in DATA_FILES.values():
            match = pattern.match(name)
            if match is None:
                continue
            pid = match.group(1)
            if pid is None or int(pid) == os.getpid() or not process_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))


def _read_pair(path: str, kinds: tuple, key: str, load) -> tuple[dict, str, object]:
    """(the ``model.json`` document, the data file's path, ``load(file object, its path)``) of
    the model file at ``path``: the data file the manifest names, opened before it is read.  A
    file removed between reading the manifest and opening it (a newer save committed) is looked
    up again in the new manifest; one the manifest still names is missing."""
    directory = _directory(path)
    missing = None
    for _ in range(READ_TRIES):
        document, json_path = _read_document(path, directory, kinds, key)
        name = document.get(key, DATA_DEFAULTS[key])
        data_path = os.path.join(directory, name)
        try:
            handle = open(data_path, "rb")
        except FileNotFoundError:
            if name == missing:
                raise ModelFileError(f"{json_path}: field {key!r} names {name}, which is missing "
                                     "(the model file is incomplete)") from None
            missing = name
            continue
        except OSError as error:
            raise ModelFileError(f"{data_path}: cannot be read ({error.strerror or error})") from None
        with handle:
            return document, data_path, load(handle, data_path)
    raise ModelFileError(f"{directory}: the model file was replaced {READ_TRIES} times while "
                         "it was being read; read it when the writer pauses")


def _load_arrays(handle, arrays_path: str) -> dict:
    try:
        with np.load(handle, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as error:  # truncated or corrupt: zipfile, zlib, EOFError, ValueError ...
        raise ModelFileError(f"{arrays_path}: unreadable arrays ({type(error).__name__}: "
                             f"{_first_line(error)})") from None


def read(path: str) -> tuple[dict, dict]:
    """(the checked ``model.json`` document, its arrays) of the model file at ``path`` (the
    directory or its model.json); ModelFileError naming the file and the field otherwise."""
    document, arrays_path, arrays = _read_pair(path, LINEAR_KINDS, "arrays", _load_arrays)
    check_linear(os.path.join(_directory(path), MODEL_JSON), arrays_path, document, arrays)
    return document, arrays


def model_kind(path: str) -> str | None:
    """The ``kind`` the model.json at ``path`` (the directory or its model.json) names; None
    when there is no readable one (the reader of its kind then says what is wrong)."""
    try:
        with open(os.path.join(_directory(path), MODEL_JSON), "rb") as handle:
            document = json.loads(handle.read())
    except (OSError, ValueError, RecursionError):
        return None
    return document.get("kind") if isinstance(document, dict) else None


def _directory(path: str) -> str:
    """The model file's directory, given it or its model.json."""
    return os.path.dirname(path) if os.path.basename(path) == MODEL_JSON else path


def _refuse_constant(constant: str):
    raise ValueError(f"{constant} is not a JSON number (strict JSON)")


def _read_document(path: str, directory: str, kinds: tuple, key: str) -> tuple[dict, str]:
    """(the ``model.json`` of the model file in ``directory``, its path): a JSON object of one
    of ``kinds``, naming a data file of ``key`` (or none: a file of an earlier version)."""
    json_path = os.path.join(directory, MODEL_JSON)
    if not os.path.isfile(json_path):
        raise ModelFileError(f"{path}: not a model file (no {MODEL_JSON}; a model file is the "
                             "directory that `hogwild-mts train --out` or save() wrote)")
    try:
        with open(json_path, "rb") as handle:
            document = json.loads(handle.read(), parse_constant=_refuse_constant)
    except RecursionError:
        raise ModelFileError(f"{json_path}: nested too deeply to be a model description") from None
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{json_path}: unreadable model description ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{json_path}: not a {FORMAT} file")
    if document.get("version") != VERSION:
        raise ModelFileError(f"{json_path}: format version {_shown(document.get('version'))}; this "
                             f"hogwild_mts reads version {VERSION}")
    kind = document.get("kind")
    if kind not in kinds:
        loader = f" (load it with {LOADERS[kind]})" if isinstance(kind, str) and kind in LOADERS else ""
        raise ModelFileError(f"{json_path}: a model of kind {_shown(kind)}; expected one of "
                             f"{list(kinds)}{loader}")
    if key in document:
        field(json_path, document, key, lambda v: isinstance(v, str) and DATA_FILES[key].match(v),
              f"the name of a data file of this directory ({key}-<pid>-<hex>{DATA_SUFFIXES[key]})")
    return document, json_path


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
    return _save(path, document, "weights", buffer.getvalue())


def read_network(path: str) -> tuple[dict, dict]:
    """(the checked ``model.json`` document, the ``state_dict``) of the network model file at
    ``path`` (the directory or its model.json); ModelFileError naming the file and the field."""
    import torch

    def load(handle, weights_path):
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a broken or unsafe file
            raise ModelFileError(f"{weights_path}: unreadable weights ({type(error).__name__}: "
                                 f"{_first_line(error) if str(error) else ''})") from None

    document, weights_path, state_dict = _read_pair(path, (NETWORK_KIND,), "weights", load)
    if not isinstance(state_dict, dict) or not all(
            isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state_dict.items()):
        raise ModelFileError(f"{weights_path}: not a state_dict (names -> tensors)")
    for name, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{weights_path}: tensor {name!r} holds a non-finite value")
        if value.is_complex():
            raise ModelFileError(f"{weights_path}: tensor {name!r} is complex")
    check_network(os.path.join(_directory(path), MODEL_JSON), document)
    return document, state_dict
