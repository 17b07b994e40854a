"""Hypothesis profiles: "dev" (default) and "ci" (loaded when the CI environment variable is set:
derandomized, fewer examples, so the property suite stays well under a minute on 2 cores), and
Ctrl-C semantics that do not depend on how the suite was started."""

import os
import signal

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def ctrl_c_raises_keyboard_interrupt():
    """SIGINT raises KeyboardInterrupt in this process during every test, also when the suite
    was started with SIGINT ignored (a background job of a shell script inherits SIG_IGN, and
    then neither a real SIGINT nor ``_thread.interrupt_main`` reaches the code under test)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
