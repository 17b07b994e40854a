"""Hypothesis profiles: "dev" (default) and "ci" (loaded when the CI environment variable is set:
derandomized, fewer examples, so the property suite stays well under a minute on 2 cores)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")
