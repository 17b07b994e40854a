"""The engines' Ray options, validated before anything starts (no ``import ray`` here: an engine
imports this module whatever its backend)."""

from __future__ import annotations

from dataclasses import dataclass

from hogwild_mts.checkpoint import DEFAULT_CHECKPOINT_SECONDS
from hogwild_mts.core.options import check_choice, check_int, check_positive

BACKENDS = ("shm", "ray")
MAX_WORKER_RESTARTS = 2  # default re-creations of one worker's actor before it is reported lost


@dataclass
class RayOptions:
    """``address``: a Ray cluster (``ray start --head`` prints it; None: the instance this
    process is connected to, else a new local one); ``local_steps``: K, mini-batch steps a
    worker takes between pushes (>= 1); ``checkpoint``: None or a function
    ``f(engine, params, version, histogram)`` called with the server's state every
    ``checkpoint_every`` seconds and after the run (e.g.
    :class:`hogwild_mts.backends.ray.checkpoint.ModelFileCheckpoint`, which the engines'
    ``checkpoint_dir`` sets up); ``max_worker_restarts``: times a dead worker's actor is
    re-created (per worker, >= 0) before the run goes on without it."""

    address: str | None
    local_steps: int
    checkpoint: object
    checkpoint_every: float
    max_worker_restarts: int = MAX_WORKER_RESTARTS


def ray_options(backend, *, address=None, local_steps=1, checkpoint=None,
                checkpoint_every=DEFAULT_CHECKPOINT_SECONDS, checkpoint_dir=None,
                max_worker_restarts=MAX_WORKER_RESTARTS) -> RayOptions | None:
    """RayOptions for ``backend="ray"``, None for ``"shm"``; ValueError naming the value for an
    unknown backend, a bad option, or a Ray option given with the shared-memory backend.
    ``checkpoint_dir`` (Ray: instead of ``checkpoint``) writes model-file checkpoints there;
    ``checkpoint_every`` None means DEFAULT_CHECKPOINT_SECONDS."""
    check_choice("backend", backend, BACKENDS)
    if checkpoint_every is None:
        checkpoint_every = DEFAULT_CHECKPOINT_SECONDS
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ValueError(f"ray_address must be None or a non-empty string such as "
                         f"'auto' or 'HOST:6379', got {address!r}")
    local_steps = check_int("local_steps", local_steps, 1)
    max_worker_restarts = check_int("max_worker_restarts", max_worker_restarts, 0)
    checkpoint_every = check_positive("checkpoint_every", checkpoint_every)
    if checkpoint is not None and not callable(checkpoint):
        raise TypeError(f"checkpoint must be None or a function f(engine, params, version, histogram), "
                        f"got {checkpoint!r}")
    if backend == "shm":
        given = [name for name, value, default in (
            ("ray_address", address, None), ("local_steps", local_steps, 1),
            ("checkpoint", checkpoint, None),
            ("max_worker_restarts", max_worker_restarts, MAX_WORKER_RESTARTS)) if value != default]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to backend='ray' (got backend='shm')")
        return None
    if checkpoint_dir is not None:
        if checkpoint is not None:
            raise ValueError("give checkpoint (a function) or checkpoint_dir, not both")
        from hogwild_mts.backends.ray.checkpoint import ModelFileCheckpoint

        checkpoint = ModelFileCheckpoint(checkpoint_dir)
    return RayOptions(address=address, local_steps=local_steps, checkpoint=checkpoint,
                      checkpoint_every=checkpoint_every, max_worker_restarts=max_worker_restarts)
