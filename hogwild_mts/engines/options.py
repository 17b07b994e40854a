"""The options the engines share, as entries of their option tables
(:class:`hogwild_mts.core.params.Table`; each engine's own table sits beside its class), and the
rules that check options against each other.  Each entry states its default once; an engine
whose default differs has its own entry (its module says why).

Where an option goes: ``run`` (the run options every backend reads:
:func:`hogwild_mts.job.run_options`), ``policy`` (the policy built from ``policy`` and
``lr``), ``processes`` (how shared-memory workers start and split the rows), ``ray`` and
``checkpoints`` (:mod:`hogwild_mts.backends.ray.options`, :mod:`hogwild_mts.checkpoint`).
"""

from __future__ import annotations

from hogwild_mts.backends.ray.options import BACKEND, RAY_OPTIONS, ray_options
from hogwild_mts.backends.shm.backend import START_METHODS, default_start_method
from hogwild_mts.checkpoint import CHECKPOINT_OPTIONS, checkpoint_options
from hogwild_mts.core.options import check_choice
from hogwild_mts.core.params import (Checked, Choice, Flag, Fraction, Integer, Option, Optional,
                                     Positive, Rule)
from hogwild_mts.kernels.split import SPLITS
from hogwild_mts.policies.step_sizes import as_policy, check_momentum, sets_worker_momentum

POLICY = Option("policy", Checked("a name, a policy object or a function of tau"), "constant", "policy")
WORKERS = Option("workers", Integer(1), 2, "run")
SEED = Option("seed", Integer(0), 0, "run")
MOMENTUM = Option("momentum", Optional(Fraction(allow_zero=True, allow_one=False)), None,
                  "run (None: the policy's worker_momentum(workers) if it has one, else 0)")
PROGRESS = Option("progress", Flag(), True, "run")
DEFER_EVALUATION = Option("defer_evaluation", Flag(), False, "run")
EVAL_EVERY_UPDATES = Option("eval_every_updates", Optional(Integer(1)), None, "run")
START_METHOD = Option("start_method", Checked(f"None (the platform's default) or one of "
                                              f"{', '.join(START_METHODS)}"), None, "processes")
SPLIT = Option("split", Choice(SPLITS), "dynamic", "processes")
SHUFFLE = Option("shuffle", Flag(), True,
                 "the row order (False: every epoch visits the rows in stored order)")

# The entries after the run options, in validation order, of both shared-memory engines.
PROCESS_OPTIONS = (START_METHOD, SPLIT, BACKEND, *RAY_OPTIONS, *CHECKPOINT_OPTIONS)


def base_step(lr: float) -> Option:
    """The ``lr`` entry of an engine whose named policies start from ``lr`` when none is
    given (a policy object takes no lr)."""
    return Option("lr", Optional(Positive()), None, f"policy (None: {lr} for a named policy)")


def named_policy(lr: float) -> Rule:
    """The rule that makes ``policy`` a policy object: a name gets ``values["lr"]`` (None:
    ``lr``), an object is copied (see :func:`hogwild_mts.policies.step_sizes.as_policy`)."""
    def rule(values) -> dict:
        given = values["lr"]
        resolved = lr if given is None and isinstance(values["policy"], str) else given
        return {"lr": resolved, "policy": as_policy(values["policy"], resolved)}

    return rule


def worker_momentum(values) -> dict:
    """``momentum`` given: kept (the policy is bound with it).  None: the policy's
    ``worker_momentum(workers)`` where it has one (``auto``; 0 on Ray, whose workers take plain
    steps), else 0.  Runs after :func:`named_policy` and :func:`process_options`."""
    if values["momentum"] is not None:
        return {}
    policy = values["policy"]
    if not sets_worker_momentum(policy) or values.get("ray_options") is not None:
        return {"momentum": 0.0}
    return {"momentum": check_momentum(policy.worker_momentum(values["workers"]))}


def evaluation_schedule(values) -> dict:
    """``eval_every_updates``, when given, replaces the seconds of ``eval_every``."""
    return {"eval_every": None} if values["eval_every_updates"] is not None else {}


def process_options(values) -> dict:
    """``start_method`` (None: the platform's default), ``checkpoints`` (shared-memory
    CheckpointOptions or None) and ``ray_options`` (RayOptions or None); ValueError naming the
    value otherwise (checkpoints need the dynamic split)."""
    checkpoints = checkpoint_options(values)
    if checkpoints is not None and values["split"] != "dynamic":
        raise ValueError("checkpoints need split='dynamic' (with one worker both splits train "
                         f"the same rows in the same order), got split={values['split']!r}")
    return {"start_method": check_choice("start_method", values["start_method"] or default_start_method(),
                                         START_METHODS),
            "checkpoints": checkpoints, "ray_options": ray_options(values)}


def option_of(engine, name: str):
    """An engine's ``__getattr__``: option ``name`` read from its validated ``options``, where
    it lives (``engine.epochs`` is ``engine.options.epochs``).  Delegation rather than one
    property per option: the table stays the one list of names, so a new option is one entry."""
    try:
        return engine.__dict__["options"][name]
    except KeyError:
        raise AttributeError(f"{type(engine).__name__!r} object has no attribute {name!r}") from None
