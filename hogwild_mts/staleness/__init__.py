"""Staleness models (geometric, Poisson, CMP, empirical; :mod:`.models`) and run summaries
(:mod:`.summary`)."""

from hogwild_mts.staleness.models import CMP, MODELS, Empirical, Geometric, Poisson, StalenessModel, fit_best, fit_model

__all__ = ["CMP", "MODELS", "Empirical", "Geometric", "Poisson", "StalenessModel", "fit_best", "fit_model"]
