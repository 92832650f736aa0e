"""Row merge kernel vs its reference (interpret mode on CPU), plus the public ``merge_rows``."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_testutil import assert_same_bits, poison_like, random_array

import mmsb_jax.kernels as mk
from mmsb_jax.core import _merge as core_merge
from mmsb_jax.errors import DTypeError, OpError, ShapeError
from mmsb_jax.kernels.row_merge import RowMergeConfig, prepare_rows, row_merge_pallas
from mmsb_jax.kernels.row_merge_reference import segmented_scan

# An odd page: 37 rows of width 3, tiled 8 x 2, so the last row block and the last column
# block are partial. 24 slots leave room for duplicates, padding and out-of-range indices.
N, W, K = 37, 3, 24
CFG = RowMergeConfig(block_rows=8, block_cols=2)

VALID = {
    "float32": ("set", "add", "mul", "min", "max"),
    "float16": ("set", "add", "mul", "min", "max"),
    "bfloat16": ("set", "add", "min", "max"),
    "int32": ("set", "add", "mul", "min", "max", "or", "and"),
    "int8": ("set", "add", "min", "or"),
    "uint8": ("set", "add", "mul", "min", "max", "or", "and"),
    "bool": ("set", "min", "max", "or", "and"),
}
# Every op and every dtype at least once in the default run (interpret mode compiles slowly on
# CPU); every other valid pair is marked slow.
# (``mul`` runs through the kernel in ``test_merge_rows_forward_mode``.)
FAST = [("float32", "set"), ("float32", "add"), ("float32", "max"), ("int32", "min"),
        ("uint8", "and"), ("bool", "or")]
SLOW = [(d, o) for d, ops in VALID.items() for o in ops if (d, o) not in FAST]


@functools.cache
def _kernel(op: str, mode: str):
    """A jitted kernel-level merge: ``fresh`` output, ``poisoned`` aliased output, ``inplace``."""

    def run(page, indices, values, poison):
        prepared = prepare_rows(indices, values, op, N, CFG.block_rows)
        if mode == "poisoned":
            return row_merge_pallas(page, prepared, op, config=CFG, interpret=True,
                                    out_init=poison)
        return row_merge_pallas(page, prepared, op, config=CFG, interpret=True,
                                inplace=(mode == "inplace"))

    return jax.jit(run)


def _index_draws(rng: np.random.Generator) -> list[np.ndarray]:
    mixed = rng.integers(-1, N, size=K)
    mixed[:5] = mixed[5]  # a run of duplicates
    mixed[7] = N + 4  # out of range: dropped, like -1
    mixed[9] = -7
    heavy = rng.choice(np.array([3, 36, 0]), size=K)  # 3 rows, 8 slots each
    padding = np.full(K, -1)
    return [mixed.astype(np.int32), heavy.astype(np.int32), padding.astype(np.int32)]


def _check_kernel(rng, dtype, op, mode):
    for idx in _index_draws(rng):
        page = random_array(rng, (N, W), dtype)
        values = random_array(rng, (K, W), dtype)
        expected = mk.merge_rows_reference(page, jnp.asarray(idx), values, op)
        out = _kernel(op, mode)(page, jnp.asarray(idx), values, poison_like(expected))
        assert_same_bits(out, expected)


@pytest.mark.parametrize(("dtype", "op"), FAST)
def test_kernel_matches_reference_with_poisoned_output(rng, dtype, op):
    """Mixed / duplicate-heavy / all-padding deltas; the output starts as poison, so an
    output row that no program writes would show."""
    _check_kernel(rng, dtype, op, "poisoned")


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "op"), SLOW)
def test_kernel_matches_reference_every_dtype_and_op(rng, dtype, op):
    _check_kernel(rng, dtype, op, "poisoned")


def test_kernel_inplace_output(rng):
    """In place: the page is aliased to the output and only row blocks with updates run."""
    _check_kernel(rng, "float32", "add", "inplace")


@pytest.mark.slow
def test_kernel_fresh_output(rng):
    """A fresh (unaliased) output starts as the interpreter's NaN fill."""
    _check_kernel(rng, "float32", "add", "fresh")


def test_kernel_is_bit_identical_across_runs(rng):
    page = random_array(rng, (N, W), "float32")
    idx = jnp.asarray(rng.integers(0, 4, size=K).astype(np.int32))  # heavy duplicates
    values = random_array(rng, (K, W), "float32")
    fn = _kernel("add", "poisoned")
    first = fn(page, idx, values, page)
    second = fn(page, idx, values, -page)
    assert_same_bits(first, second)


@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_kernel_property_matches_reference(data):
    """Hypothesis: any indices in [-3, N + 3) (out-of-range ones are padding), add and set."""
    op = data.draw(st.sampled_from(["set", "add"]))
    idx = np.asarray(data.draw(st.lists(st.integers(-3, N + 2), min_size=K, max_size=K)),
                     np.int32)
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = np.random.default_rng(seed)
    page = random_array(g, (N, W), "float32")
    values = random_array(g, (K, W), "float32")
    expected = mk.merge_rows_reference(page, jnp.asarray(idx), values, op)
    out = _kernel(op, "poisoned")(page, jnp.asarray(idx), values, poison_like(expected))
    assert_same_bits(out, expected)


# -- the public entry point ------------------------------------------------------------------

@functools.cache
def _api(op: str, backend: str):
    return jax.jit(functools.partial(mk.merge_rows, op=op, backend=backend))


@jax.jit
@chex.assert_max_traces(n=1)
def _guarded_add(page, idx, values):
    """The Pallas route for ``add``; traced once however often it is called."""
    return mk.merge_rows(page, idx, values, "add", backend="pallas")


def test_merge_rows_pallas_route_matches_core(rng):
    """Float ``add`` with duplicates (rounding depends on the combination order): the Pallas
    route gives the bits of ``mmsb_jax.core``'s own merge."""
    page = random_array(rng, (N, W), "float32")
    idx = jnp.asarray(rng.integers(-1, 6, size=K).astype(np.int32))
    values = random_array(rng, (K, W), "float32")
    assert_same_bits(_guarded_add(page, idx, values),
                     jax.jit(core_merge.merge_rows, static_argnums=3)(page, idx, values, "add"))


@pytest.mark.parametrize(("dtype", "op"), [("float32", "mul"), ("int32", "add"),
                                           ("bool", "or")])
def test_reference_matches_core_merge(rng, dtype, op):
    page = random_array(rng, (N, W), dtype)
    idx = jnp.asarray(rng.integers(-1, 5, size=K).astype(np.int32))
    values = random_array(rng, (K, W), dtype)
    ref = jax.jit(mk.merge_rows_reference, static_argnums=3)(page, idx, values, op)
    assert_same_bits(ref, jax.jit(core_merge.merge_rows, static_argnums=3)(
        page, idx, values, op))


def test_segmented_scan_matches_core(rng):
    seg = jnp.asarray(np.sort(rng.integers(0, 5, size=K)).astype(np.int32))
    values = random_array(rng, (K, W), "float32")
    assert_same_bits(segmented_scan(jnp.add, seg, values),
                     core_merge.segmented_scan(jnp.add, seg, values))


@pytest.mark.parametrize("shape", [(29,), pytest.param((6, 2, 3), marks=pytest.mark.slow)])
def test_merge_rows_other_page_shapes(rng, shape):
    """1-D pages (row width 1) and rows with several axes."""
    k = 9
    page = random_array(rng, shape, "float32")
    idx = jnp.asarray(rng.integers(-1, shape[0], size=k).astype(np.int32))
    values = random_array(rng, (k, *shape[1:]), "float32")
    out = _api("set", "pallas")(page, idx, values)
    assert_same_bits(out, mk.merge_rows_reference(page, idx, values, "set"))


def test_merge_rows_empty_delta_returns_page(rng):
    page = random_array(rng, (N, W), "float32")
    out = mk.merge_rows(page, jnp.zeros((0,), jnp.int32), jnp.zeros((0, W)), "add",
                        backend="pallas")
    assert out is page


@pytest.mark.slow
def test_merge_rows_vmap(rng):
    batch = 3
    pages = random_array(rng, (batch, N, W), "float32")
    idx = jnp.asarray(rng.integers(-1, N, size=(batch, K)).astype(np.int32))
    values = random_array(rng, (batch, K, W), "float32")
    out = jax.jit(jax.vmap(functools.partial(mk.merge_rows, op="set", backend="pallas")))(
        pages, idx, values)
    want = jax.vmap(functools.partial(mk.merge_rows_reference, op="set"))(pages, idx, values)
    assert_same_bits(out, want)


@pytest.mark.parametrize("op", ["set", pytest.param("add", marks=pytest.mark.slow)])
def test_merge_rows_gradients_equal_reference(rng, op):
    """``set``: d page = g with updated rows zeroed, d values = g at winners (0 for losers and
    padding); ``add``: g reaches the page and every duplicate; others: the reference's vjp."""
    page = random_array(rng, (N, W), "float32")
    # The random tail never hits rows 4 or 36, so position 2 is row 4's only winner.
    others = np.setdiff1d(np.arange(-1, N), [4, 36])
    idx = jnp.asarray(np.r_[[4, 4, 4, -1, 36], rng.choice(others, size=K - 5)].astype(np.int32))
    values = random_array(rng, (K, W), "float32")
    weights = random_array(rng, (N, W), "float32")

    def loss(merge, p, v):
        return jnp.sum(weights * jnp.sin(merge(p, idx, v, op)))

    kernel = functools.partial(mk.merge_rows, backend="pallas")
    got = jax.jit(jax.grad(functools.partial(loss, kernel), (0, 1)))(page, values)
    want = jax.grad(functools.partial(loss, mk.merge_rows_reference), (0, 1))(page, values)
    for g, w in zip(got, want, strict=True):
        assert_same_bits(g, w)
    if op == "set":
        d_page, d_values = got
        assert not np.any(np.asarray(d_page)[4]) and not np.any(np.asarray(d_page)[36])
        assert not np.any(np.asarray(d_values)[:2])  # overwritten duplicates
        assert not np.any(np.asarray(d_values)[3])  # padding
        np.testing.assert_allclose(d_values[2], weights[4] * jnp.cos(values[2]), rtol=1e-6)


def test_merge_rows_forward_mode(rng):
    """The JVP rule keeps ``jax.jvp`` working through the kernel path."""
    page = random_array(rng, (N, W), "float32")
    idx = jnp.asarray(rng.integers(-1, N, size=K).astype(np.int32))
    values = random_array(rng, (K, W), "float32")
    tangent = random_array(rng, (K, W), "float32")
    fn = functools.partial(mk.merge_rows, page, idx, op="mul", backend="pallas")
    out, dout = jax.jvp(fn, (values,), (tangent,))
    ref_fn = functools.partial(mk.merge_rows_reference, page, idx, op="mul")
    want, dwant = jax.jvp(ref_fn, (values,), (tangent,))
    assert_same_bits(out, want)
    assert_same_bits(dout, dwant)


def test_merge_rows_compiles_once(rng):
    for _ in range(3):
        page = random_array(rng, (N, W), "float32")
        idx = jnp.asarray(rng.integers(-1, N, size=K).astype(np.int32))
        values = random_array(rng, (K, W), "float32")
        assert_same_bits(_guarded_add(page, idx, values),
                         mk.merge_rows_reference(page, idx, values, "add"))


def test_merge_rows_rejects_bad_input():
    page = jnp.ones((5, 2))
    idx = jnp.array([0, 1])
    with pytest.raises(ShapeError):
        mk.merge_rows(jnp.float32(1.0), idx, jnp.ones((2,)), "set")
    with pytest.raises(ShapeError):
        mk.merge_rows(page, idx.reshape(2, 1), jnp.ones((2, 2)), "set")
    with pytest.raises(ShapeError):
        mk.merge_rows(page, idx, jnp.ones((2, 3)), "set")
    with pytest.raises(DTypeError):
        mk.merge_rows(page, jnp.array([0.0, 1.0]), jnp.ones((2, 2)), "set")
    with pytest.raises(DTypeError):
        mk.merge_rows(page, idx, jnp.ones((2, 2), jnp.int32), "set")
    with pytest.raises(OpError):
        mk.merge_rows(page, idx, jnp.ones((2, 2)), "xor")
    with pytest.raises(OpError):
        mk.merge_rows(page > 0, idx, jnp.ones((2, 2), bool), "add")
    with pytest.raises(OpError):
        mk.merge_rows(page, idx, jnp.ones((2, 2)), "or")
