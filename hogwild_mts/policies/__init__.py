"""Step-size policies alpha(tau): constant, inverse, exponential, tail and MindTheStep
(:mod:`.step_sizes`), and hypothesis strategies to property-test your own (:mod:`.testing`)."""

from hogwild_mts.policies.step_sizes import POLICIES, Policy, as_policy, make_policy, step_size

__all__ = ["POLICIES", "Policy", "as_policy", "make_policy", "step_size"]
