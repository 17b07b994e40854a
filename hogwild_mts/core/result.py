"""What a fit returns and the errors it raises."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from hogwild_mts.staleness.summary import staleness_summary


class WorkerError(RuntimeError):
    """A worker raised or died; the message says which and how.  ``result``: the partial
    FitResult the other workers' updates make (``interrupted``, ``stopped_by`` this message)
    when the run had started, else None."""

    def __init__(self, message: str, result: "FitResult | None" = None):
        super().__init__(message)
        self.result = result


class DivergenceError(FloatingPointError):
    """The parameters (or a loss) became NaN or infinite."""


class Diverged(Exception):
    """What a backend raises when a worker saw NaN or inf (``where``: in what, e.g. "a worker's
    loss"); :func:`hogwild_mts.core.lifecycle.run` raises it as the run's DivergenceError, whose
    message names the policy."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


def describe(policy) -> dict:
    """The policy's ``describe()``, or its class name for a user policy without one."""
    method = getattr(policy, "describe", None)
    return method() if callable(method) else {"name": type(policy).__name__}


def divergence_message(policy, where: str, workers: int | None = None) -> str:
    """The one message of a diverged run; ``where`` says what was seen (e.g. "a worker's loss");
    ``workers``: the run's worker count (with one worker no update is stale, so the advice
    speaks of the step only)."""
    name = getattr(policy, "name", None)   # not describe(): an adaptive policy may be unbound here
    return (f"training diverged: {where} became NaN or infinite (policy "
            f"{name if isinstance(name, str) else type(policy).__name__}); lower the step size (lr)"
            + (" or use a policy that damps stale updates" if workers is None or workers > 1 else ""))


class TrainingWarning(RuntimeWarning):
    """A finished run whose loss went the wrong way (see :func:`training_trouble`): what
    ``Engine.fit`` and ``TorchEngine.fit`` warn with (the estimators warn scikit-learn's
    ConvergenceWarning instead, the command line prints it as one line on stderr)."""


START_MARGIN = 0.05  # a final loss above the starting loss by more than this share is flagged
RISE_FACTOR = 2.0  # a final loss above this multiple of the best loss of the run is flagged ...
RISE_FLOOR = 0.01  # ... when it is also above the best by this share of the starting loss
UNSCALED_FEATURES = 10.0  # max |x| above which the advice says to scale the features


def training_trouble(result, max_abs_x: float | None = None) -> str | None:
    """Why the finished run ``result`` looks bad, with advice that fits it, or None when it does
    not: its final loss is above its starting loss (the first history row) by more than
    START_MARGIN of it (SGD noise of a run started near its optimum is not a rise), or above
    RISE_FACTOR times the best loss of its history (and above that best by RISE_FLOOR of the
    starting loss: noise near a loss of 0 is not a rise).  An interrupted run is not judged.
    The advice: scale the features when ``max_abs_x`` (the largest |x| of the data, None:
    unknown) exceeds UNSCALED_FEATURES, a smaller step, less momentum when the run had some,
    and, only with several workers, a policy that damps stale updates."""
    losses = [float(v) for v in result.history.get("loss", []) if v is not None and np.isfinite(v)]
    final = float(result.final_loss)
    if result.interrupted or not losses or not np.isfinite(final):
        return None
    start, best = losses[0], min(losses + [final])
    if final > start + START_MARGIN * abs(start):
        what = f"the final loss {final:.4g} is above the starting loss {start:.4g}"
    elif final > RISE_FACTOR * best and final - best > RISE_FLOOR * abs(start):
        what = f"the final loss {final:.4g} is more than {RISE_FACTOR:g}x the best loss of the run ({best:.4g})"
    else:
        return None
    advice = []
    if max_abs_x is not None and max_abs_x > UNSCALED_FEATURES:
        advice.append(f"scale the features (max |x| is {max_abs_x:.4g}: to unit variance or "
                      "into [-1, 1])")
    lr = _base_step(result)
    advice.append("lower the step size" + (f" (lr is {lr:.4g})" if lr is not None else ""))
    momentum = result.settings.get("momentum") if isinstance(result.settings, Mapping) else None
    if momentum:
        advice.append(f"lower the momentum (it is {momentum:g})")
    if result.workers > 1:
        advice.append("use a policy that damps stale updates (tail, mindthestep)")
    return f"training went badly: {what}; " + ", ".join(advice[:-1]) + \
        (" or " if len(advice) > 1 else "") + advice[-1]


def _base_step(result) -> float | None:
    """The run's base step lr, where its policy description names it."""
    policy = result.policy if isinstance(result.policy, Mapping) else {}
    lr = policy.get("lr")
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


def warn_if_bad(result, max_abs_x: float | None = None, stacklevel: int = 3) -> None:
    """Warn a :class:`TrainingWarning` with :func:`training_trouble`'s message when the run
    went badly."""
    import warnings

    message = training_trouble(result, max_abs_x)
    if message is not None:
        warnings.warn(message, TrainingWarning, stacklevel=stacklevel)


OMIT_NONE = {"omit_none": True}  # field metadata: a Settings field left out while it is None


class Settings(Mapping):
    """The base of the typed result settings (one frozen dataclass per problem kind, in
    :mod:`hogwild_mts.job`), read like a dict (``result.settings["epochs"]``) and written to JSON
    as one.  A field holding another Settings is flattened in; a field with ``OMIT_NONE``
    metadata is left out while it is None."""

    def _items(self):
        for entry in dataclasses.fields(self):
            value = getattr(self, entry.name)
            if isinstance(value, Settings):
                yield from value._items()
            elif value is not None or not entry.metadata.get("omit_none"):
                yield entry.name, value

    def __getitem__(self, key):
        for name, value in self._items():
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self):
        return (name for name, _ in self._items())

    def __len__(self) -> int:
        return sum(1 for _ in self._items())


@dataclass
class RunTotals:
    """What a backend counted over a run (see :mod:`hogwild_mts.core.control`)."""

    updates: int  # applied updates, summed over workers
    counter: int  # final value of the sequence counter (= updates when stamping)
    samples: int  # rows processed
    histogram: np.ndarray  # int64 counts by tau, summed over workers
    max_staleness: int
    refits: int
    train_seconds: float  # first worker's loop start to last worker's last update (backend clock)


@dataclass
class RunState:
    """What a checkpoint holds about a run (the parameters are the model file's)."""

    params: np.ndarray  # float64: the weights, then the intercept if fitted
    counter: int  # the sequence counter
    histogram: np.ndarray  # int64 staleness counts by tau
    updates: int  # updates applied so far, all workers together
    samples: int  # rows processed so far
    max_staleness: int
    refits: int
    position: int  # batches of the run done (shm, dynamic split); -1 when unknown (Ray)
    order_generator: np.ndarray  # uint64[6]: the order generator before epoch position // per_epoch
    finished: bool  # every batch of the run was done
    velocity: np.ndarray | None = None  # worker 0's momentum velocity (shm, momentum > 0)


class L1State(NamedTuple):
    """The cumulative L1 penalty of a fit (scikit-learn's ``u`` and ``q``; see
    :mod:`hogwild_mts.kernels.linear`): ``total`` is ``l1`` times the sum of every step so far
    (>= 0) and ``applied[j]`` (float64, one per feature) the penalty weight j received.  A run
    that continues another (``Engine.fit(..., init_l1=result.l1_state)``) goes on from it."""

    total: float
    applied: np.ndarray


@dataclass
class FitResult:
    """What ``fit`` returns.  Times are seconds; ``history`` rows are evaluations."""

    params: np.ndarray  # float64 copy of the shared parameters (linear: the weights only)
    intercept: float
    history: dict  # {"time_s", "updates", "loss", "accuracy"}: lists, one entry per evaluation
    updates: int  # applied updates, summed over workers
    counter: int  # final value of the shared sequence counter (= updates when stamping)
    samples: int  # rows processed (updates x batch size, last batches shorter)
    staleness_histogram: np.ndarray  # int64 counts by tau, summed over workers
    max_staleness: int
    train_seconds: float  # from the first worker's start to the last worker's last update
    wall_seconds: float  # the whole fit, start-up and clean-up included
    final_loss: float
    final_accuracy: float | None
    workers: int
    model: str
    policy: dict
    data: str
    refits: int = 0  # policy refits done by the workers, summed
    staleness_fit: dict = field(default_factory=dict)  # best model by AIC + every model's fit
    interrupted: bool = False
    settings: Mapping = field(default_factory=dict)  # a Settings of the problem's kind
    startup_seconds: float | None = None  # fit() call to the first worker's loop start (None: not measured)
    finish_spread_seconds: float | None = None  # first worker's loop end to the last's (None: not measured)
    stopped_by: str | None = None  # why an interrupted run stopped: a worker's failure; None for a signal
    # averaged SGD (linear, average on): params/intercept are the averaged ones, these the last iterate
    last_params: np.ndarray | None = field(default=None, repr=False)
    last_intercept: float | None = None
    # linear, L1 penalty (shared memory): the cumulative penalty at the end, to continue from
    l1_state: L1State | None = field(default=None, repr=False)
    # A TorchEngine fit's ``params -> nn.Module`` (see module()); None for other fits.
    module_builder: object = field(default=None, repr=False, compare=False)

    def module(self):
        """The trained torch network of a :class:`~hogwild_mts.engines.networks.TorchEngine` fit:
        a new ``nn.Module`` (the engine's model, a copy) with the trained parameters and
        floating-point buffers (batch-norm running statistics) of ``params`` loaded, in eval
        mode, in the dtype it was trained in, ready for ``state_dict()`` or ``torch.save``.
        Each call returns a fresh copy.  TypeError for a fit of another engine."""
        if self.module_builder is None:
            raise TypeError(f"module() gives the network of a TorchEngine fit; this is a fit of "
                            f"model {self.model!r}, whose parameters are params (and intercept)")
        return self.module_builder(self.params)

    @property
    def updates_per_second(self) -> float:
        return self.updates / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0

    def staleness_summary(self) -> dict:
        return staleness_summary(self.staleness_histogram, self.max_staleness)

    def to_dict(self) -> dict:
        """JSON-able metrics (no parameter vector)."""
        return {
            "model": self.model, "data": self.data, "workers": self.workers, "policy": self.policy,
            "settings": dict(self.settings), "final_loss": self.final_loss,
            "final_accuracy": self.final_accuracy, "updates": self.updates, "counter": self.counter,
            "samples": self.samples, "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds, "updates_per_second": self.updates_per_second,
            "samples_per_second": self.samples_per_second, "interrupted": self.interrupted,
            "stopped_by": self.stopped_by,
            "staleness": self.staleness_summary(), "staleness_fit": self.staleness_fit,
            "refits": self.refits, "startup_seconds": self.startup_seconds,
            "finish_spread_seconds": self.finish_spread_seconds,
            "staleness_histogram": _trim_histogram(self.staleness_histogram).tolist(),
            "history": self.history,
        }


def _trim_histogram(histogram: np.ndarray) -> np.ndarray:
    nonzero = np.flatnonzero(histogram)
    return histogram[: nonzero[-1] + 1] if nonzero.size else histogram[:1]
