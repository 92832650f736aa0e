"""Fixtures for the kernel tests: per-test random generators and a clean backend setting."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import mmsb_jax.kernels as mk


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's name: fresh per test, reproducible per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _clean_backend(monkeypatch):
    """Every test starts with no Python setting and no ``MMSB_KERNELS``."""
    monkeypatch.delenv(mk.ENV_VAR, raising=False)
    mk.set_backend(None)
    yield
    mk.set_backend(None)
