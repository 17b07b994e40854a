"""Checkpoints of the parameter server's state as model files (:mod:`hogwild_mts.checkpoint`:
``model.json`` + arrays, the estimators' format with the run state), written by the driver.

``Engine(..., backend="ray", checkpoint_dir=path)`` (or ``checkpoint=ModelFileCheckpoint(path)``)
rewrites the model file at ``path`` every ``checkpoint_every`` seconds and after the run.  It
loads with ``hogwild_mts.load(path)`` as a fitted estimator; ``Engine.fit(..., resume=path)``
continues from it (the stored parameters, the epochs not yet covered), and
``Engine.fit(..., init_params=resume_params(path))`` starts a new run from its parameters.
"""

from __future__ import annotations

import numpy as np

from hogwild_mts import checkpoint, model_file
from hogwild_mts.core.result import RunState
from hogwild_mts.kernels.split import GENERATOR_WORDS


class ModelFileCheckpoint:
    """A checkpoint function ``f(engine, params, version, histogram)`` for a linear
    :class:`hogwild_mts.engines.linear.Engine`: ``params`` the server's flat vector (weights,
    then the intercept if fitted), ``version`` its pushes, ``histogram`` its tau counts.  The
    run state records ``samples`` as pushes x ``local_steps`` x ``batch_size`` (an upper bound:
    a worker's last push of an epoch may hold fewer rows) and no batch position.  A resumed run
    writes with ``samples_before``, the rows its earlier part did, and ``epochs``, the whole
    run's (its engine runs only the remaining ones), so that resuming it again goes on from
    where it stopped."""

    def __init__(self, path: str, *, samples_before: int = 0, epochs: int | None = None):
        self.path = str(path)
        self.samples_before, self.epochs = int(samples_before), epochs

    def __call__(self, engine, params: np.ndarray, version: int, histogram: np.ndarray) -> None:
        options = engine.options
        settings = checkpoint.run_settings(
            engine, backend="ray", n_features=params.shape[0] - int(engine.model.fit_intercept))
        if self.epochs is not None:
            settings["epochs"] = self.epochs
        rows_per_push = options.batch_size * engine.ray_options.local_steps
        taus = np.flatnonzero(histogram)
        state = RunState(
            params=np.asarray(params, dtype=np.float64), counter=int(version),
            histogram=np.asarray(histogram, dtype=np.int64), updates=int(version),
            samples=self.samples_before + int(version) * rows_per_push, max_staleness=int(taus[-1]) if taus.size else 0,
            refits=0, position=-1, order_generator=np.zeros(GENERATOR_WORDS, np.uint64),
            finished=False)
        checkpoint.write_checkpoint(self.path, settings, state)


def resume_params(path: str) -> np.ndarray:
    """The flat parameter vector (weights, then the intercept if fitted) of the checkpoint at
    ``path``: ``init_params`` for the next fit."""
    document, arrays = model_file.read(path)
    weights = arrays["coef"][0]
    fit_intercept = document["params"].get("fit_intercept", True)
    return np.append(weights, arrays["intercept"][0]) if fit_intercept else weights.copy()
