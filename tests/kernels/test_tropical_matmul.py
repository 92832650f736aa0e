"""Tropical / max-plus matmul kernel vs its reference (interpret mode on CPU)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_testutil import assert_same_bits, random_array

import mmsb_jax.kernels as mk
from mmsb_jax.core import semiring as core_semiring
from mmsb_jax.errors import DTypeError, SemiringError, ShapeError
from mmsb_jax.kernels import api
from mmsb_jax.kernels.tropical_matmul import semiring_matmul_pallas

M, K, N = 37, 13, 29  # odd sizes: partial output tiles and a partial last K step


def _with_infinities(rng, x, name):
    """Sprinkle the semiring zero ("no edge") and a few opposite infinities over ``x``."""
    zero = jnp.inf if name == "tropical" else -jnp.inf
    u = jnp.asarray(rng.random(x.shape))
    return jnp.where(u < 0.2, zero, jnp.where(u > 0.97, -zero, x))


@functools.cache
def _kernel(name: str):
    return jax.jit(functools.partial(semiring_matmul_pallas, name, block_m=16, block_n=16,
                                     block_k=4, interpret=True))


@pytest.mark.parametrize("name", ["tropical", "maxplus"])
def test_kernel_matches_reference(rng, name):
    for _ in range(2):
        a = _with_infinities(rng, random_array(rng, (M, K), "float32"), name)
        b = _with_infinities(rng, random_array(rng, (K, N), "float32"), name)
        out = _kernel(name)(a, b)
        assert_same_bits(out, mk.semiring_matmul_reference(name, a, b))
        assert_same_bits(out, _kernel(name)(a, b))  # bit-identical rerun


@pytest.mark.parametrize(("name", "semiring"), [("tropical", "TROPICAL"),
                                              ("maxplus", "MAXPLUS")])
def test_reference_matches_core_semiring(rng, name, semiring):
    """Same values (absorbing zero included) and gradients as ``mmsb_jax.core.semiring``."""
    sr = getattr(core_semiring, semiring)
    a = _with_infinities(rng, random_array(rng, (M, K), "float32"), name)
    b = _with_infinities(rng, random_array(rng, (K, N), "float32"), name)
    assert_same_bits(mk.semiring_matmul_reference(name, a, b),
                     core_semiring.matmul_reference(sr, a, b))
    a = random_array(rng, (M, K), "float32")
    got = jax.grad(lambda a: jnp.sum(jnp.tanh(mk.semiring_matmul_reference(name, a, b))))(a)
    want = jax.grad(lambda a: jnp.sum(jnp.tanh(core_semiring.matmul_reference(sr, a, b))))(a)
    assert_same_bits(got, want)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_kernel_half_precision(rng, dtype):
    a = random_array(rng, (M, K), dtype)
    b = random_array(rng, (K, N), dtype)
    assert_same_bits(_kernel("tropical")(a, b), mk.semiring_matmul_reference("tropical", a, b))


def test_semiring_matmul_api_batched_and_traced_once(rng):
    """Leading dimensions broadcast; the jitted call traces once."""

    @jax.jit
    @chex.assert_max_traces(n=1)
    def product(a, b):
        return mk.semiring_matmul("maxplus", a, b, backend="pallas")

    for _ in range(2):
        a = random_array(rng, (2, 9, 5), "float32")
        b = random_array(rng, (5, 7), "float32")
        assert_same_bits(product(a, b), mk.semiring_matmul_reference("maxplus", a, b))


@pytest.mark.parametrize("chunk_elems", [1 << 22, 3 * K * N])
def test_gradients_equal_reference(rng, monkeypatch, chunk_elems):
    """The chunked backward pass (one chunk, or 3-row chunks) equals the reference's vjp;
    integer-valued inputs make ties, which share the cotangent like ``jnp.min`` does."""
    monkeypatch.setattr(api, "BACKWARD_CHUNK_ELEMS", chunk_elems)
    a = jnp.asarray(rng.integers(-3, 4, size=(M, K)).astype(np.float32))
    b = jnp.asarray(rng.integers(-3, 4, size=(K, N)).astype(np.float32))
    weights = random_array(rng, (M, N), "float32")

    def loss(matmul, a, b):
        return jnp.sum(weights * matmul("tropical", a, b))

    got = jax.jit(jax.grad(functools.partial(
        loss, functools.partial(mk.semiring_matmul, backend="pallas")), (0, 1)))(a, b)
    want = jax.grad(functools.partial(loss, mk.semiring_matmul_reference), (0, 1))(a, b)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def _largest_value(jaxpr) -> int:
    """Largest array produced anywhere in ``jaxpr``, nested jaxprs (kernel bodies) included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    largest = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            largest = max(largest, int(np.prod(getattr(v.aval, "shape", ()))))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    largest = max(largest, _largest_value(sub))
    return largest


def test_kernel_path_has_no_cubic_intermediate(rng):
    """Nothing of size M * K * N is materialised (the reference does exactly that)."""
    a = random_array(rng, (M, K), "float32")
    b = random_array(rng, (K, N), "float32")
    kernel = jax.make_jaxpr(functools.partial(mk.semiring_matmul, "tropical",
                                              backend="pallas"))(a, b)
    assert _largest_value(kernel) < M * K * N
    ref = jax.make_jaxpr(functools.partial(mk.semiring_matmul_reference, "tropical"))(a, b)
    assert _largest_value(ref) == M * K * N


def test_empty_inner_dimension_gives_semiring_zero():
    out = mk.semiring_matmul("tropical", jnp.ones((3, 0)), jnp.ones((0, 2)), backend="pallas")
    np.testing.assert_array_equal(out, np.full((3, 2), np.inf, np.float32))
    out = mk.semiring_matmul("maxplus", jnp.ones((3, 0)), jnp.ones((0, 2)), backend="xla")
    np.testing.assert_array_equal(out, np.full((3, 2), -np.inf, np.float32))


def test_semiring_matmul_rejects_bad_input():
    a = jnp.ones((3, 4))
    with pytest.raises(SemiringError):
        mk.semiring_matmul("real", a, a.T)
    with pytest.raises(ShapeError):
        mk.semiring_matmul("tropical", a, a)
    with pytest.raises(ShapeError):
        mk.semiring_matmul("tropical", jnp.ones(3), a)
    with pytest.raises(ShapeError):
        mk.semiring_matmul("tropical", jnp.ones((2, 3, 4)), jnp.ones((5, 4, 3)))
    with pytest.raises(DTypeError):
        mk.semiring_matmul("tropical", a, a.T.astype(jnp.float16))
    with pytest.raises(DTypeError):
        mk.semiring_matmul("tropical", a.astype(jnp.int32), a.T.astype(jnp.int32))
    with pytest.raises(ValueError, match="power of two"):
        semiring_matmul_pallas("tropical", a, a.T, block_k=3, interpret=True)
