"""Checkpoints and resume of linear-model runs, one API for both backends.

``Engine(..., checkpoint_dir=DIR, checkpoint_every=SECONDS, checkpoint_every_updates=N)`` keeps
the run's latest checkpoint in ``DIR``: a model file (:mod:`hogwild_mts.model_file`: it loads
with ``hogwild_mts.load`` and ``hogwild-mts predict``) whose ``model.json`` also holds ``run``,
the state the run continues from; ``Engine.fit(X, y, resume=DIR)`` continues it.  Each
checkpoint replaces the previous one atomically (a crash mid-write leaves the previous one).

Shared memory (``backend="shm"``): worker 0 takes a snapshot between two pieces of its loop
(numba calls of at most 8192 updates) once the run's update count has crossed the next multiple
of ``checkpoint_every_updates`` or ``checkpoint_every`` seconds have passed since its last one,
and the parent writes it; after the run (finished, or stopped by Ctrl-C or SIGTERM) the parent
writes the final state.  A checkpoint holds the parameters, the counter, the staleness histogram,
the update, sample, refit and maximum-staleness counts, the batches done, the state of the
generator that draws the epochs' orders (``split="dynamic"``, the only split with checkpoints;
with ``shuffle=False`` it draws nothing: every epoch's order is the stored one) and, with
``momentum``, worker 0's velocity (the other workers' velocities restart at zero).

* **One worker**: the snapshot is the exact state between two pieces, so a resumed run ends with
  the same parameters, counter and histogram, bit for bit, as the run that was never stopped,
  for every policy whose table does not change during a run (constant, inverse, exponential, a
  function or table, and tail or mindthestep with ``refit_every=0``).  Refitting policies are
  not bit-reproducible even without a resume: refits are also limited by the time they take
  (``Refitter``), and a resumed worker starts from the policy's prior and refits on the restored
  histogram at its first piece.
* **m workers**: worker 0 takes the snapshot while the others write (Hogwild-style): the
  parameters may hold part of the pieces other workers were running (the counter and update
  count are taken as the histogram's total, so the three agree); the resumed run restarts from
  the first batch not yet claimed or still in a piece being run, so those pieces run again.

Ray (``backend="ray"``): ``checkpoint_dir`` writes the parameter server's parameters, version and
histogram every ``checkpoint_every`` seconds and after the run
(:class:`hogwild_mts.backends.ray.checkpoint.ModelFileCheckpoint`); a resume starts from the
stored parameters and runs the epochs not yet covered by the pushes so far (a new server counts
from zero).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from hogwild_mts import model_file
from hogwild_mts.core.control import HIST_BINS
from hogwild_mts.core.files import writable_directory
from hogwild_mts.core.params import Integer, Option, Optional, Positive
from hogwild_mts.core.result import RunState
from hogwild_mts.kernels.split import GENERATOR_WORDS
from hogwild_mts.model_file import ModelFileError
from hogwild_mts.models.linear import CLASSIFIERS
from hogwild_mts.policies.step_sizes import policy_state

DEFAULT_CHECKPOINT_SECONDS = 60.0  # between checkpoints when no interval is given (both backends)
# Settings a resumed run must share with the checkpoint (any backend, then shared memory only).
MODEL_SETTINGS = ("n_features", "loss", "l2", "fit_intercept", "l1", "epsilon")
RUN_SETTINGS = ("n_samples", "rows_digest", "epochs", "batch_size", "seed", "split", "shuffle",
                "dtype", "momentum", "policy", "learning_rate", "power_t")
# What a checkpoint written before a setting existed ran with (so that it still resumes).
SETTING_DEFAULTS = {"l1": 0.0, "epsilon": 0.1, "learning_rate": "constant", "power_t": 0.5,
                    "shuffle": True}


@dataclass
class CheckpointOptions:
    """Where and when a shared-memory run writes checkpoints (see :func:`checkpoint_options`)."""

    directory: str
    every_seconds: float | None  # seconds between snapshots, or None
    every_updates: int | None  # updates between snapshots, or None


class Directory:
    """None, or a directory path (a non-empty string or path)."""

    def __call__(self, name: str, value):
        if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
            raise ValueError(f"{name} must be a directory path, got {value!r}")
        return value

    def __str__(self) -> str:
        return "None or a directory path"


# The engines' checkpoint options (both backends; checkpoint_every_updates: shared memory only).
CHECKPOINT_OPTIONS = (Option("checkpoint_every", Optional(Positive()), None, "checkpoints"),
                      Option("checkpoint_dir", Directory(), None, "checkpoints"),
                      Option("checkpoint_every_updates", Optional(Integer(1)), None, "checkpoints"))


def checkpoint_options(values) -> CheckpointOptions | None:
    """The shared-memory checkpoint options of the checked ``values`` (the CHECKPOINT_OPTIONS
    and ``backend``): None without ``checkpoint_dir``, and for Ray, whose checkpoints
    :func:`hogwild_mts.backends.ray.options.ray_options` sets up.  Without ``checkpoint_every``
    and ``checkpoint_every_updates`` a checkpoint is written every DEFAULT_CHECKPOINT_SECONDS;
    ValueError for an interval Ray does not take, or one given without ``checkpoint_dir``."""
    backend, directory = values["backend"], values["checkpoint_dir"]
    every_seconds, every_updates = values["checkpoint_every"], values["checkpoint_every_updates"]
    if every_updates is not None and backend == "ray":
        raise ValueError("checkpoint_every_updates applies to backend='shm'; the Ray server "
                         "is checkpointed every checkpoint_every seconds")
    if directory is None:
        if every_updates is not None or (every_seconds is not None and backend == "shm"):
            raise ValueError("checkpoint_every and checkpoint_every_updates need checkpoint_dir "
                             "(the directory the checkpoints go to)")
        return None
    if backend == "ray":
        return None
    if every_seconds is None and every_updates is None:
        every_seconds = DEFAULT_CHECKPOINT_SECONDS
    return CheckpointOptions(os.fspath(directory), every_seconds, every_updates)


def prepare_directory(directory: str) -> str:
    """``directory``, created if needed and checked to accept a file (before any work);
    ValueError naming it and why otherwise."""
    return writable_directory(directory, f"checkpoint_dir {directory!r}")


def rows_digest(labels: np.ndarray, indptr: np.ndarray, sample_weight: np.ndarray) -> str:
    """A short digest of a data set's labels, row lengths and sample weights: a resume on other
    rows of the same shape is refused."""
    digest = hashlib.blake2b(digest_size=8)
    for array, dtype in ((labels, np.float64), (indptr, np.int64), (sample_weight, np.float64)):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()


def policy_spec(policy, workers: int) -> dict:
    """:func:`hogwild_mts.model_file.policy_spec` of an engine's policy (of a policy that is not
    a registered one, its :func:`~hogwild_mts.policies.step_sizes.policy_state` for ``workers``,
    so that it has a table)."""
    if model_file.POLICIES.get(getattr(policy, "name", None)) is not type(policy):
        policy = policy_state(policy, workers)
    return model_file.policy_spec(policy)


def run_settings(engine, *, backend: str, n_features: int, n_samples: int | None = None,
                 digest: str | None = None) -> dict:
    """What a run of the linear ``engine`` on a data set of this shape is, as a checkpoint
    records it (from the engine's validated ``options``)."""
    model, options = engine.model, engine.options
    return {"backend": backend, "n_features": int(n_features), "loss": model.name,
            "l2": float(model.l2), "fit_intercept": bool(model.fit_intercept),
            "l1": float(model.l1), "epsilon": float(model.epsilon),
            "learning_rate": options.learning_rate, "power_t": float(options.power_t),
            "n_samples": n_samples, "rows_digest": digest, "epochs": options.epochs,
            "batch_size": options.batch_size, "seed": options.seed, "split": options.split,
            "shuffle": bool(options.shuffle), "dtype": options.dtype, "momentum": options.momentum,
            "workers": options.workers, "policy": policy_spec(options.policy, options.workers)}


def write_checkpoint(directory: str, settings: dict, state: RunState, classes=None) -> None:
    """Write ``state`` of the run ``settings`` describes as the model file in ``directory``;
    ``classes``: a classifier's two labels (default -1, +1: the engine's).  OSError naming the
    directory when it cannot be written (the previous checkpoint is then left whole)."""
    n_features = settings["n_features"]
    params = np.asarray(state.params, dtype=np.float64)
    classifier = settings["loss"] in CLASSIFIERS
    if classifier and classes is None:
        classes = np.array([-1.0, 1.0])
    policy = settings["policy"]
    estimator_params = {**model_file.run_estimator_params(
        settings["loss"], step=policy.get("options", {}).get("lr"),
        epochs=settings["epochs"], l2=settings["l2"], seed=settings["seed"],
        shuffle=settings.get("shuffle", True), learning_rate=settings["learning_rate"],
        power_t=settings["power_t"]),
        "policy": policy, "workers": settings["workers"], "fit_intercept": settings["fit_intercept"]}
    run = {"settings": settings, "updates": int(state.updates), "samples": int(state.samples),
           "max_staleness": int(state.max_staleness), "refits": int(state.refits),
           "position": int(state.position), "finished": bool(state.finished)}
    try:
        model_file.save_linear(
            directory, kind="HogwildClassifier" if classifier else "HogwildRegressor",
            coef=params[None, :n_features],
            intercept=params[n_features:] if settings["fit_intercept"] else np.zeros(1),
            classes=classes if classifier else None,
            estimator_params=estimator_params, histogram=state.histogram, counter=state.counter,
            metrics={"backend": settings["backend"], "updates": int(state.updates),
                     "finished": bool(state.finished)},
            run=run, run_arrays={"order_generator": np.asarray(state.order_generator, dtype=np.uint64),
                                 **({} if state.velocity is None else {"velocity": state.velocity})})
    except OSError as error:
        raise OSError(error.errno, f"checkpoint {directory} could not be written: "
                                   f"{error.strerror or error}") from None


def read_checkpoint_files(path: str, read, start_instead: str) -> tuple[dict, object, dict]:
    """(document, what ``read`` gave beside it, the run record) of the checkpoint directory at
    ``path``, read with ``read(path) -> (document, arrays or state_dict)`` (linear models:
    ``model_file.read``; networks: ``model_file.read_network``).  ModelFileError (a ValueError)
    naming the path for a missing directory or a model file without run state (``start_instead``:
    how to start from its weights instead)."""
    if not os.path.isdir(path):
        raise ModelFileError(f"resume: {path!r} is not a directory (a checkpoint is the "
                             "directory given as checkpoint_dir, or --out DIR/checkpoint)")
    document, stored = read(path)
    run = document.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("settings"), dict):
        raise ModelFileError(f"{path}: a model file without run state, not a checkpoint "
                             f"({start_instead} instead)")
    return document, stored, run


def run_state(path: str, document: dict, run: dict, pieces) -> RunState:
    """The RunState of a checkpoint's ``document`` and ``run`` record, each field checked (the
    schema of :mod:`hogwild_mts.model_file` for the run state); ``pieces()`` gives what each
    format stores its own way: (parameters, staleness histogram, order generator words or None
    when missing, velocity or None).  ModelFileError naming ``path`` and the field for a broken
    state: a count that is not an integer in [0, 2**62) (the shared counters are int64 and
    must have room to go on), a missing or degenerate order generator of a shared-memory run, a
    velocity that is not one finite number per parameter."""
    where = os.path.join(path, model_file.MODEL_JSON)
    settings = run["settings"]
    shm = settings.get("backend") != "ray"
    field = model_file.field
    counts = "an integer in [0, 2**62)"
    counter = field(where, document, "counter", model_file.is_count, counts)
    record = {"run": run}
    for name in ("updates", "samples", "max_staleness", "refits"):
        field(where, record, f"run.{name}", model_file.is_count, counts)
    if shm:
        field(where, record, "run.position", model_file.is_count, counts)
    else:
        field(where, record, "run.position", lambda v: isinstance(v, int) and not isinstance(v, bool) and v == -1,
              "-1 (a Ray checkpoint has no batch position)")
    finished = field(where, record, "run.finished", lambda v: isinstance(v, bool), "true or false")
    try:
        params, histogram, generator, velocity = pieces()
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise ModelFileError(f"{path}: broken run state ({error!r})") from None
    params = np.array(params, dtype=np.float64)
    if not np.isfinite(params).all():
        raise ModelFileError(f"{where}: the parameters hold a non-finite value")
    histogram = np.asarray(histogram)
    if (histogram.dtype.kind not in "iu" or histogram.ndim != 1 or histogram.size > HIST_BINS
            or histogram.size and histogram.min() < 0):
        raise ModelFileError(f"{path}: staleness_histogram must be 1-d with at most {HIST_BINS} "
                             "bins of counts >= 0")
    histogram = histogram.astype(np.int64)
    if generator is None:
        if shm:
            raise ModelFileError(f"{path}: the order generator (order_generator) is missing; a "
                                 "shared-memory run resumes its epochs' orders from it")
        generator = np.zeros(GENERATOR_WORDS, np.uint64)
    words = generator.tolist() if isinstance(generator, np.ndarray) else generator
    if (isinstance(generator, np.ndarray) and generator.dtype.kind not in "iu"
            or not isinstance(words, list) or len(words) != GENERATOR_WORDS
            or not all(isinstance(w, int) and not isinstance(w, bool) and 0 <= w < 2 ** 64 for w in words)):
        raise ModelFileError(f"{path}: order_generator must hold {GENERATOR_WORDS} unsigned 64-bit "
                             f"words, got {model_file._shown(words)}")
    generator = np.array(words, dtype=np.uint64)
    if shm and not finished and not generator.any():
        raise ModelFileError(f"{path}: order_generator is all zeros, not a generator's state")
    if velocity is not None:
        velocity = np.asarray(velocity)
        if (velocity.dtype.kind != "f" or velocity.shape != params.shape
                or not np.isfinite(velocity).all()):
            raise ModelFileError(f"{path}: velocity must hold one finite number per parameter "
                                 f"({params.size}), got {velocity.dtype} of shape {velocity.shape}")
    return RunState(params=params, counter=counter, histogram=histogram, updates=run["updates"],
                    samples=run["samples"], max_staleness=run["max_staleness"], refits=run["refits"],
                    position=run["position"], order_generator=generator, finished=finished,
                    velocity=velocity)


def read_checkpoint(path: str) -> tuple[dict, RunState]:
    """(the run's settings, its state) from the linear-model checkpoint at ``path``;
    ModelFileError (a ValueError) naming the path for a missing directory, a model file that is
    not a checkpoint, or a broken one."""
    document, arrays, run = read_checkpoint_files(
        path, model_file.read, "start from its parameters with init_params or --init")
    settings = run["settings"]
    where = os.path.join(path, model_file.MODEL_JSON)
    model_file.field(where, document, "run.settings.fit_intercept", lambda v: isinstance(v, bool),
                     "true or false")

    def pieces():
        params = arrays["coef"][0]
        if settings["fit_intercept"]:
            params = np.append(params, arrays["intercept"][0])
        return (params, arrays["staleness_histogram"],
                arrays.get("order_generator"), arrays.get("velocity"))

    return settings, run_state(path, document, run, pieces)


def check_same_settings(path: str, saved: dict, current: dict, names, same: str) -> None:
    """Refuse (ValueError) to resume the checkpoint at ``path`` when any of the settings ``names``
    differs between ``saved`` and ``current`` (all of them named; ``same``: what to resume with)."""
    differ = [f"{name}={saved.get(name, SETTING_DEFAULTS.get(name))!r} (this run: {current[name]!r})"
              for name in names if saved.get(name, SETTING_DEFAULTS.get(name)) != current[name]]
    if differ:
        raise ValueError(f"cannot resume {path}: it was written by a run with " + ", ".join(differ)
                         + f"; resume with the same {same}")


def check_resume(path: str, saved: dict, current: dict) -> None:
    """Refuse (ValueError) to resume the checkpoint at ``path`` (settings ``saved``) as the run
    ``current``: another backend's checkpoint where the state cannot carry over, a finished run,
    or any setting that differs (all of them named)."""
    if current["backend"] == "shm" and saved.get("backend") != "shm":
        raise ValueError(f"cannot resume {path}: a checkpoint of a backend={saved.get('backend')!r} "
                         "run holds no shared-memory run state; resume it with backend='ray', "
                         "or start from its parameters with init_params")
    names = MODEL_SETTINGS + (RUN_SETTINGS if current["backend"] == "shm" else ())
    check_same_settings(path, saved, current, names, "model, data and settings")


def check_unfinished(path: str, state: RunState, total_batches: int,
                     instead: str = "load it with hogwild_mts.load, or start a new run from it "
                                    "with init_params / --init") -> None:
    """Refuse (ValueError) to resume a shared-memory run that had done every one of its
    ``total_batches`` (``instead``: what to do with it), or whose position is not one of them."""
    if state.finished or state.position >= total_batches:
        raise ValueError(f"cannot resume {path}: that run finished (all {state.updates} updates "
                         f"done); {instead}")
    if state.position < 0:
        raise ModelFileError(f"{path}: broken run state (batch position {state.position})")
