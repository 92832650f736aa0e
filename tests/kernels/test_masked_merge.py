"""Masked merge kernel vs its reference (interpret mode on CPU), plus ``masked_merge``."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_testutil import assert_same_bits, poison_like, random_array

import mmsb_jax.kernels as mk
from mmsb_jax.errors import DTypeError, MaskError, OpError, ShapeError
from mmsb_jax.kernels.masked_merge import masked_merge_pallas

SHAPE = (37, 3)  # 111 elements in blocks of 16: the last block is partial
BLOCK = 16
CASES = [("float32", "set"), ("float32", "add"), ("float32", "mul"), ("float32", "min"),
         ("float32", "max"), ("int32", "or"), ("uint8", "and"), ("bool", "max"),
         ("int16", "add"), ("bfloat16", "min")]


@functools.cache
def _kernel(op: str, inplace: bool):
    def run(page, mask, values, poison):
        if inplace:
            return masked_merge_pallas(page, mask, values, op, block=BLOCK, interpret=True,
                                       inplace=True)
        return masked_merge_pallas(page, mask, values, op, block=BLOCK, interpret=True,
                                   out_init=poison)

    return jax.jit(run)


@pytest.mark.parametrize(("dtype", "op"), CASES)
def test_kernel_matches_reference_with_poisoned_output(rng, dtype, op):
    for density in (0.5, 0.0, 1.0):
        page = random_array(rng, SHAPE, dtype)
        mask = jnp.asarray(rng.random(SHAPE) < density)
        values = random_array(rng, SHAPE, dtype)
        expected = mk.masked_merge_reference(page, mask, values, op)
        assert_same_bits(_kernel(op, False)(page, mask, values, poison_like(expected)),
                         expected)


def test_kernel_inplace_and_bit_identical_reruns(rng):
    page = random_array(rng, SHAPE, "float32")
    mask = jnp.asarray(rng.random(SHAPE) < 0.5)
    values = random_array(rng, SHAPE, "float32")
    first = _kernel("add", True)(page, mask, values, page)
    second = _kernel("add", True)(page, mask, values, page)
    assert_same_bits(first, mk.masked_merge_reference(page, mask, values, "add"))
    assert_same_bits(first, second)


def test_kernel_propagates_nan_like_xla(rng):
    """min/max with NaN give XLA's answer (the kernel does not rely on minnum/maxnum)."""
    page = random_array(rng, SHAPE, "float32").at[0].set(jnp.nan)
    values = random_array(rng, SHAPE, "float32").at[1].set(jnp.nan)
    mask = jnp.ones(SHAPE, bool)
    for op in ("min", "max"):
        out = _kernel(op, False)(page, mask, values, page)
        np.testing.assert_array_equal(out, mk.masked_merge_reference(page, mask, values, op))
        assert np.isnan(np.asarray(out)[:2]).all()


def test_masked_merge_api_gradients_and_single_trace(rng):
    page = random_array(rng, SHAPE, "float32")
    mask = jnp.asarray(rng.random(SHAPE) < 0.5)
    weights = random_array(rng, SHAPE, "float32")

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_grad(p, v):
        def loss(merge, p, v):
            return jnp.sum(weights * jnp.sin(merge(p, mask, v, "mul")))

        return jax.grad(functools.partial(loss, functools.partial(
            mk.masked_merge, backend="pallas")), (0, 1))(p, v), jax.grad(
                functools.partial(loss, mk.masked_merge_reference), (0, 1))(p, v)

    for _ in range(2):
        values = random_array(rng, SHAPE, "float32")
        got, want = loss_grad(page, values)
        for g, w in zip(got, want, strict=True):
            assert_same_bits(g, w)


def test_masked_merge_rejects_bad_input():
    page = jnp.ones((4, 2))
    mask = jnp.ones((4, 2), bool)
    with pytest.raises(MaskError):
        mk.masked_merge(page, jnp.ones((4, 2)), page, "set")
    with pytest.raises(MaskError):
        mk.masked_merge(page, jnp.ones((4,), bool), page, "set")
    with pytest.raises(ShapeError):
        mk.masked_merge(page, mask, jnp.ones((4, 3)), "set")
    with pytest.raises(DTypeError):
        mk.masked_merge(page, mask, jnp.ones((4, 2), jnp.int32), "set")
    with pytest.raises(OpError):
        mk.masked_merge(page, mask, page, "and")
    with pytest.raises(ValueError, match="power of two"):
        masked_merge_pallas(page, mask, page, "set", block=12, interpret=True)
