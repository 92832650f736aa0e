"""Shared helpers of the kernel tests: random (never all-zero) data, poison, bit equality."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> jnp.ndarray:
    """Fresh random data of ``dtype``: normal floats, wide-range ints, fair-coin bools."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.bool_:
        return jnp.asarray(rng.random(shape) < 0.5)
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.asarray(rng.normal(size=shape).astype(np.float32)).astype(dtype)
    info = jnp.iinfo(dtype)
    lo, hi = max(int(info.min), -1000), min(int(info.max), 1000)
    return jnp.asarray(rng.integers(lo, hi + 1, size=shape)).astype(dtype)


def poison_like(expected: jnp.ndarray) -> jnp.ndarray:
    """A buffer that differs from ``expected`` in every element (NaN for floats)."""
    if expected.dtype == jnp.bool_:
        return ~expected
    if jnp.issubdtype(expected.dtype, jnp.floating):
        return jnp.full(expected.shape, jnp.nan, expected.dtype)
    return expected + jnp.ones((), expected.dtype)


def assert_same_bits(actual, expected) -> None:
    """Bit-for-bit equality (NaN payloads and signed zeros included)."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, (a.dtype, a.shape, e.dtype, e.shape)
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        a = a.view(f"u{a.dtype.itemsize}")
        e = e.view(f"u{e.dtype.itemsize}")
    np.testing.assert_array_equal(a, e)
