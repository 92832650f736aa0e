"""Shared pytest configuration: hypothesis profiles and a few fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=30,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.register_profile(
    "slow",
    deadline=None,
    max_examples=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
_default_profile = "ci" if os.environ.get("CI") else "default"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default_profile))

# tests/multidevice needs 8 devices before JAX starts: tests/test_multidevice.py runs it in a
# subprocess with the right XLA_FLAGS, so the main process skips collecting it.
collect_ignore = [] if os.environ.get("MMSB_MULTIDEVICE") else ["multidevice"]
