"""Entropy of access distributions, of page contents (bytes) and of float pages."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax import utility as mu

CAP = 12  # fixed capacity: zero counts do not change an entropy, so pad instead of reshaping
COUNTS = hnp.arrays(np.int32, CAP, elements=st.integers(0, 1000))


def np_entropy_bits(counts) -> float:
    c = np.asarray(counts, np.float64).ravel()
    if c.sum() == 0:
        return 0.0
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())


def test_seed_entropy_numbers():
    # issue 8: the entropy of three equal counts is log2 3
    assert float(mu.access_entropy([1, 1, 1])) == pytest.approx(math.log2(3), abs=1e-6)
    # the seed's state_entropy: a dict of (page, page) -> accesses
    uniform = {(1, 2): 10, (2, 3): 10, (3, 4): 10}
    assert float(mu.access_entropy(uniform)) == pytest.approx(math.log2(3), abs=1e-6)
    assert float(mu.access_entropy({(1, 2): 100})) == 0.0
    assert float(mu.access_entropy({})) == 0.0
    assert float(mu.access_entropy([0, 0, 0])) == 0.0
    assert float(mu.entropy_reduction(2.0, 1.0)) == 0.5
    assert float(mu.entropy_reduction(0.0, 1.0)) == 0.0


@settings(max_examples=40, deadline=None)
@given(counts=COUNTS, perm_seed=st.integers(0, 2**16), scale=st.integers(1, 50))
def test_access_entropy_laws(counts, perm_seed, scale):
    h = float(mu.access_entropy(counts))
    assert h == pytest.approx(np_entropy_bits(counts), abs=1e-4)
    assert -1e-6 <= h <= math.log2(max(1, int(np.count_nonzero(counts)))) + 1e-4
    perm = np.random.default_rng(perm_seed).permutation(counts)
    assert float(mu.access_entropy(perm)) == pytest.approx(h, abs=1e-4)
    assert float(mu.access_entropy(counts * scale)) == pytest.approx(h, abs=1e-4)
    nats = float(mu.access_entropy(counts, base=math.e))
    assert nats == pytest.approx(h * math.log(2), abs=1e-4)
    # jitted (traced counts skip the host check) equals eager
    assert float(jax.jit(mu.access_entropy)(counts)) == pytest.approx(h, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 64))
def test_uniform_counts_have_maximal_entropy(n):
    padded = np.zeros(64, np.float32)
    padded[:n] = 7.0
    assert float(mu.access_entropy(padded)) == pytest.approx(math.log2(n), abs=1e-5)


def test_byte_entropy_matches_numpy_histogram():
    rng = np.random.default_rng(0)
    assert float(mu.byte_entropy(np.zeros(100, np.uint8))) == 0.0
    assert float(mu.byte_entropy(np.arange(256, dtype=np.uint8))) == pytest.approx(8.0)
    raw = rng.integers(0, 256, 4096, dtype=np.uint8)
    expect = np_entropy_bits(np.bincount(raw, minlength=256))
    assert float(mu.byte_entropy(raw)) == pytest.approx(expect, abs=1e-5)
    floats = rng.normal(size=(32, 8)).astype(np.float32)
    expect = np_entropy_bits(np.bincount(floats.view(np.uint8).ravel(), minlength=256))
    assert float(mu.byte_entropy(floats)) == pytest.approx(expect, abs=1e-5)
    bits = rng.random(50) < 0.5
    assert float(mu.byte_entropy(bits)) == pytest.approx(np_entropy_bits(
        np.bincount(bits.astype(np.uint8), minlength=2)), abs=1e-5)
    signed = rng.integers(-128, 128, 300).astype(np.int8)
    assert float(mu.byte_entropy(signed)) == pytest.approx(
        np_entropy_bits(np.bincount(signed.view(np.uint8), minlength=256)), abs=1e-5)
    assert float(mu.byte_entropy(np.zeros(0, np.uint8))) == 0.0


def test_content_entropy_of_pages_is_not_differentiable():
    schema = mm.Schema([mm.PageSpec("raw", (64,), "uint8"), mm.PageSpec("w", (4, 4))])
    s = mm.init_state(schema)
    u = mu.content_entropy("raw")
    assert float(u(s)) == 0.0  # a zero page is one repeated byte
    s = s.with_pages({"raw": jnp.arange(64, dtype=jnp.uint8),
                      "w": jnp.linspace(-1, 1, 16, dtype=jnp.float32).reshape(4, 4)})
    assert float(u(s)) == pytest.approx(6.0)  # 64 distinct bytes
    assert float(jax.jit(u)(s)) == pytest.approx(6.0)
    g = mu.grad(mu.content_entropy("w") + mu.page_sum("w"), s, wrt="w")
    np.testing.assert_array_equal(g, 1.0)  # content entropy contributes no gradient


def test_entropy_utility_of_float_pages():
    schema = mm.Schema([mm.PageSpec("logits", (5, 4)), mm.PageSpec("counts", (6,)),
                        mm.PageSpec("ints", (3,), "int32")])
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    counts = np.array([4, 0, 2, 2, 0, 8], np.float32)
    s = mm.init_state(schema).with_pages({"logits": jnp.asarray(logits),
                                           "counts": jnp.asarray(counts),
                                           "ints": jnp.asarray([1, 1, 2], jnp.int32)})
    assert float(mu.entropy("logits")(mm.init_state(schema))) == pytest.approx(math.log2(20))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rows = -(p * np.log2(p)).sum(axis=1)
    assert float(mu.entropy("logits", axis=-1)(s)) == pytest.approx(rows.mean(), abs=1e-5)
    assert float(mu.entropy("logits", axis=1, base=math.e)(s)) == pytest.approx(
        rows.mean() * math.log(2), abs=1e-5)
    flat = np.exp(logits.ravel()) / np.exp(logits.ravel()).sum()
    assert float(mu.entropy("logits")(s)) == pytest.approx(-(flat * np.log2(flat)).sum(),
                                                           abs=1e-5)
    # a counts page read with logits=False is the access entropy
    assert float(mu.entropy("counts", logits=False)(s)) == pytest.approx(
        np_entropy_bits(counts), abs=1e-5)
    assert float(mu.entropy("ints", logits=False)(s)) == pytest.approx(1.5, abs=1e-6)
    cols = mu.entropy("logits", axis=0, logits=False)
    pos = s.with_pages({"logits": jnp.abs(s.pages["logits"]) + 0.1})

    def f(x):
        return cols(pos.with_pages({"logits": x}))

    check_grads(jax.jit(f), (pos.pages["logits"],), order=1, modes=["rev"], eps=1e-3,
                atol=2e-2, rtol=2e-2)
    # gradient of the normalised entropy at an exactly-zero count is finite
    g = mu.grad(mu.entropy("counts", logits=False), s, wrt="counts")
    assert np.all(np.isfinite(np.asarray(g)))


def test_entropy_errors():
    with pytest.raises(errors.DomainError):
        mu.access_entropy([1, -1, 2])
    with pytest.raises(errors.DomainError):
        mu.access_entropy([1.0, float("nan")])
    with pytest.raises(errors.DomainError):
        mu.access_entropy(np.array(["a", "b"]))
    with pytest.raises(errors.OptionError):
        mu.access_entropy([1, 2], base=0)
    with pytest.raises(errors.OptionError):
        mu.entropy("x", axis=1.5)
    with pytest.raises(errors.OptionError):
        mu.content_entropy(None)
    with pytest.raises(errors.UnknownPageError):
        mu.content_entropy("nope")(mm.init_state(mm.Schema([mm.PageSpec("x", (2,))])))
