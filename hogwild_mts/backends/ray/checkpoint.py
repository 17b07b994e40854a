"""Checkpoints of the parameter server's state as model files (:mod:`hogwild_mts.model_file`:
``model.json`` + ``arrays.npz``, the estimators' format), written by the driver.

``Engine(..., backend="ray", checkpoint=ModelFileCheckpoint(path))`` rewrites the model file
at ``path`` every ``checkpoint_every`` seconds and after the run.  It loads with
``hogwild_mts.load(path)`` as a fitted estimator, and a run resumes from it with
``Engine.fit(..., init_params=resume_params(path))``.
"""

from __future__ import annotations

import numpy as np

from hogwild_mts import model_file


class ModelFileCheckpoint:
    """A checkpoint function ``f(engine, params, version, histogram)`` for a linear
    :class:`hogwild_mts.engines.linear.Engine`: ``params`` the server's flat vector (weights,
    then the intercept if fitted), ``version`` its pushes, ``histogram`` its tau counts."""

    def __init__(self, path: str):
        self.path = str(path)

    def __call__(self, engine, params: np.ndarray, version: int, histogram: np.ndarray) -> None:
        model, options = engine.model, engine.options
        n_features = params.shape[0] - int(model.fit_intercept)
        estimator_params = {"loss": model.name, "policy": options.policy, "alpha": None,
                            "workers": options.workers, "epochs": options.epochs,
                            "batch_size": options.batch_size, "l2": float(model.l2),
                            "fit_intercept": model.fit_intercept, "seed": options.seed}
        model_file.save_linear(
            self.path, kind="HogwildClassifier" if model.classifier else "HogwildRegressor",
            coef=params[None, :n_features],
            intercept=params[n_features:] if model.fit_intercept else np.zeros(1),
            classes=np.array([-1.0, 1.0]) if model.classifier else None,
            estimator_params=estimator_params, histogram=histogram, counter=version,
            metrics={"backend": "ray", "version": int(version)})


def resume_params(path: str) -> np.ndarray:
    """The flat parameter vector (weights, then the intercept if fitted) of the checkpoint at
    ``path``: ``init_params`` for the next fit."""
    document, arrays = model_file.read(path)
    weights = arrays["coef"][0]
    fit_intercept = document["params"].get("fit_intercept", True)
    return np.append(weights, arrays["intercept"][0]) if fit_intercept else weights.copy()
