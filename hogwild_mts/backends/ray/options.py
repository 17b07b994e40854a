"""The engines' Ray options, validated before anything starts (no ``import ray`` here: an engine
imports this module whatever its backend)."""

from __future__ import annotations

from dataclasses import dataclass

from hogwild_mts.checkpoint import DEFAULT_CHECKPOINT_SECONDS
from hogwild_mts.core.params import Choice, Integer, Option, Positive

BACKENDS = ("shm", "ray")
MAX_WORKER_RESTARTS = 2  # default re-creations of one worker's actor before it is reported lost
PLACEMENT_TIMEOUT = 60.0  # default seconds a worker actor may wait for Ray to place it
ON_LOST_WORKER = ("continue", "stop")  # what a run does when a worker is lost (the first: default)
RAY_EXTRA = "pip install 'hogwild-mts[ray]'"  # how to install ray for this package


class RayNotInstalled(ImportError):
    """backend='ray' was asked for and the ray package cannot be imported (raised by
    :func:`hogwild_mts.backends.ray.backend.require_ray`)."""


class Address:
    """None, or a non-empty string naming a Ray cluster."""

    def __call__(self, name: str, value):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{name} must be None or a non-empty string such as "
                             f"'auto' or 'HOST:6379', got {value!r}")
        return value

    def __str__(self) -> str:
        return "None or a cluster address"


class Callback:
    """None, or a function ``f(engine, params, version, histogram)``."""

    def __call__(self, name: str, value):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be None or a function f(engine, params, version, histogram), "
                            f"got {value!r}")
        return value

    def __str__(self) -> str:
        return "None or f(engine, params, version, histogram)"


BACKEND = Option("backend", Choice(BACKENDS), "shm", "the backend")
# The engines' Ray options (checkpoint_every is a checkpoint option: hogwild_mts.checkpoint).
LOCAL_STEPS = Option("local_steps", Integer(1), 1, "ray")
RAY_OPTIONS = (Option("ray_address", Address(), None, "ray"), LOCAL_STEPS,
               Option("checkpoint", Callback(), None, "ray"),
               Option("max_worker_restarts", Integer(0), MAX_WORKER_RESTARTS, "ray"),
               Option("placement_timeout", Positive(), PLACEMENT_TIMEOUT, "ray"),
               Option("on_lost_worker", Choice(ON_LOST_WORKER), ON_LOST_WORKER[0], "ray"))


@dataclass
class RayOptions:
    """``address``: a Ray cluster (``ray start --head`` prints it; None: the instance this
    process is connected to, else a new local one); ``local_steps``: K, mini-batch steps a
    worker takes between pushes (>= 1); ``checkpoint``: None or a function
    ``f(engine, params, version, histogram)`` called with the server's state every
    ``checkpoint_every`` seconds and after the run (e.g.
    :class:`hogwild_mts.backends.ray.checkpoint.ModelFileCheckpoint`, which the engines'
    ``checkpoint_dir`` sets up); ``max_worker_restarts``: times a dead worker's actor is
    re-created (per worker, >= 0) before the run goes on without it; ``placement_timeout``:
    seconds a worker actor may wait for Ray to place it on a node (a node with a free CPU)
    before it is lost; ``on_lost_worker``: ``"continue"`` (the run goes on without a lost
    worker, its shard untrained) or ``"stop"`` (a lost worker stops the run with WorkerError)."""

    address: str | None
    local_steps: int
    checkpoint: object
    checkpoint_every: float
    max_worker_restarts: int = MAX_WORKER_RESTARTS
    placement_timeout: float = PLACEMENT_TIMEOUT
    on_lost_worker: str = ON_LOST_WORKER[0]


def ray_options(values) -> RayOptions | None:
    """RayOptions of the checked ``values`` (the RAY_OPTIONS, ``backend``, ``checkpoint_every``
    and ``checkpoint_dir``) for ``backend="ray"``, None for ``"shm"``; ValueError naming the
    Ray options given with the shared-memory backend.  ``checkpoint_dir`` (Ray: instead of
    ``checkpoint``) writes model-file checkpoints there; ``checkpoint_every`` None means
    DEFAULT_CHECKPOINT_SECONDS."""
    if values["backend"] == "shm":
        given = [option.name for option in RAY_OPTIONS if values[option.name] != option.default]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to backend='ray' (got backend='shm')")
        return None
    checkpoint, directory = values["checkpoint"], values["checkpoint_dir"]
    if directory is not None:
        if checkpoint is not None:
            raise ValueError("give checkpoint (a function) or checkpoint_dir, not both")
        from hogwild_mts.backends.ray.checkpoint import ModelFileCheckpoint

        checkpoint = ModelFileCheckpoint(directory)
    every = values["checkpoint_every"]
    return RayOptions(address=values["ray_address"], local_steps=values["local_steps"],
                      checkpoint=checkpoint,
                      checkpoint_every=DEFAULT_CHECKPOINT_SECONDS if every is None else every,
                      max_worker_restarts=values["max_worker_restarts"],
                      placement_timeout=values["placement_timeout"],
                      on_lost_worker=values["on_lost_worker"])
