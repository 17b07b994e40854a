"""``fit(job)``: a Job's run on Ray, a parameter-server actor and worker actors
(:mod:`.linear` for a linear problem, from data in the driver or from a data file the workers
read; :mod:`.networks` for a torch network).  ``import ray`` happens only when a run starts."""

from __future__ import annotations

from hogwild_mts.core.result import FitResult
from hogwild_mts.job import Job, NetworkProblem


def fit(job: Job) -> FitResult:
    """Run ``job`` on the Ray instance of ``job.ray.address`` (or a new local one); every actor
    is gone when it returns or raises."""
    if isinstance(job.problem, NetworkProblem):
        from hogwild_mts.backends.ray.networks import fit_network

        return fit_network(job)
    from hogwild_mts.backends.ray.linear import fit_linear, fit_linear_from_path

    return (fit_linear if job.problem.path is None else fit_linear_from_path)(job)
