"""hogwild_mts: asynchronous lock-free parallel SGD with exact staleness and adaptive steps.

Imports are lazy so that worker processes load only what they run (no torch, no scipy.sparse).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "hogwild_mts.engines.linear",
    "TorchEngine": "hogwild_mts.engines.networks",
    "load_network": "hogwild_mts.engines.networks",
    "Simulator": "hogwild_mts.engines.simulated",
    "HogwildClassifier": "hogwild_mts.estimators",
    "HogwildRegressor": "hogwild_mts.estimators",
    "save": "hogwild_mts.estimators",
    "load": "hogwild_mts.estimators",
    "FitResult": "hogwild_mts.core.result",
    "WorkerError": "hogwild_mts.core.result",
    "DivergenceError": "hogwild_mts.core.result",
    "Dataset": "hogwild_mts.data.tabular",
    "DataError": "hogwild_mts.data.tabular",
    "as_dataset": "hogwild_mts.data.tabular",
    "load_data": "hogwild_mts.data.tabular",
    "load_images": "hogwild_mts.data.images",
    "ArrayDataset": "hogwild_mts.data.images",
    "array_dataset": "hogwild_mts.data.images",
    "make_policy": "hogwild_mts.policies",
    "Policy": "hogwild_mts.policies",
    "LinearModel": "hogwild_mts.models.linear",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hogwild_mts' has no attribute {name!r}")
