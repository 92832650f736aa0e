"""Tests that need 8 (fake CPU) devices.

They run in their own pytest process, started by ``tests/test_multidevice.py`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` so the rest of the suite keeps one
device. Running this directory directly needs that flag set before JAX starts.
"""

from __future__ import annotations

import jax
import pytest


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
    assert jax.device_count() >= 8, (
        "run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_multidevice.py "
        "does this)")
