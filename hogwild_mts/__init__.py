"""hogwild_mts: asynchronous lock-free parallel SGD with exact staleness and adaptive steps.

Imports are lazy so that worker processes load only what they run (no torch, no scipy.sparse).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "hogwild_mts.engine",
    "FitResult": "hogwild_mts.engine",
    "WorkerError": "hogwild_mts.engine",
    "DivergenceError": "hogwild_mts.engine",
    "TorchEngine": "hogwild_mts.torch_engine",
    "Dataset": "hogwild_mts.data",
    "DataError": "hogwild_mts.data",
    "as_dataset": "hogwild_mts.data",
    "load_data": "hogwild_mts.data",
    "make_policy": "hogwild_mts.policies",
    "Policy": "hogwild_mts.policies",
    "LinearModel": "models.linear",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hogwild_mts' has no attribute {name!r}")
