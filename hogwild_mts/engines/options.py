"""The options both engines share beyond the run options of :func:`hogwild_mts.job.
run_options`: how worker processes start, how the rows are split among them, and the backend
with its checkpoints, validated in one place so that the two engines refuse the same things
the same way."""

from __future__ import annotations

from hogwild_mts.backends.ray.options import MAX_WORKER_RESTARTS, ray_options
from hogwild_mts.backends.shm.backend import START_METHODS, default_start_method
from hogwild_mts.checkpoint import checkpoint_options
from hogwild_mts.core.options import check_choice
from hogwild_mts.kernels.split import SPLITS


def process_options(*, start_method, split, backend, ray_address, local_steps, checkpoint,
                    checkpoint_every, checkpoint_dir, checkpoint_every_updates,
                    max_worker_restarts=MAX_WORKER_RESTARTS) -> dict:
    """``start_method`` (None: the platform's default), ``split``, ``backend``, ``checkpoints``
    (shared-memory CheckpointOptions or None) and ``ray_options`` (RayOptions or None), checked;
    ValueError naming the value otherwise (checkpoints need the dynamic split)."""
    split = check_choice("split", split, SPLITS)
    checkpoints = checkpoint_options(backend, checkpoint_dir, checkpoint_every,
                                     checkpoint_every_updates)
    if checkpoints is not None and split != "dynamic":
        raise ValueError("checkpoints need split='dynamic' (with one worker both splits train "
                         f"the same rows in the same order), got split={split!r}")
    return {"start_method": check_choice("start_method", start_method or default_start_method(),
                                         START_METHODS),
            "split": split, "backend": backend, "checkpoints": checkpoints,
            "ray_options": ray_options(backend, address=ray_address, local_steps=local_steps,
                                       checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                       checkpoint_dir=checkpoint_dir,
                                       max_worker_restarts=max_worker_restarts)}
