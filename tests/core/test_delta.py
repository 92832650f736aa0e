"""Deltas: kinds, ops, duplicates, padding, laws, errors and recompilation."""

from __future__ import annotations

import dataclasses
import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax.core import delta as delta_mod

ROWS, WIDTH, CAP = 8, 3, 6
EXACT_OPS = ("set", "min", "max", "or", "and")
DTYPE_FOR_OP = {"set": "float32", "add": "float32", "mul": "float32", "min": "float32",
                "max": "float32", "or": "int32", "and": "int32"}


def _np_op(op):
    return {"set": lambda a, b: b, "add": np.add, "mul": np.multiply, "min": np.minimum,
            "max": np.maximum, "or": np.bitwise_or, "and": np.bitwise_and}[op]


def np_apply_rows(page, indices, values, op):
    """Sequential numpy reference: one slot at a time, in order."""
    out = page.copy()
    f = _np_op(op)
    for i, v in zip(indices, values, strict=True):
        if i >= 0:
            out[i] = f(out[i], v)
    return out


def _schema(dtype="float32"):
    return mm.Schema([mm.PageSpec("p", (ROWS, WIDTH), dtype), mm.PageSpec("q", (5,), "uint8")])


def _state(dtype="float32", seed=0):
    s = mm.init_state(_schema(dtype))
    rng = np.random.default_rng(seed)
    page = rng.integers(-4, 5, size=(ROWS, WIDTH)).astype(dtype)
    return s.with_pages({"p": jnp.asarray(page)})


# -- strategies (fixed capacity so nothing recompiles) -----------------------------------

def rows_delta(op, dtype):
    idx = hnp.arrays(np.int32, (CAP,), elements=st.integers(-1, ROWS - 1))
    vals = hnp.arrays(np.int32, (CAP, WIDTH), elements=st.integers(-4, 4))
    return st.tuples(idx, vals).map(
        lambda t: mm.Delta.rows("p", t[0], t[1].astype(dtype), op))


def masked_delta(op, dtype):
    mask = hnp.arrays(np.bool_, (ROWS, WIDTH))
    vals = hnp.arrays(np.int32, (ROWS, WIDTH), elements=st.integers(-4, 4))
    return st.tuples(mask, vals).map(lambda t: mm.Delta.masked("p", t[0], t[1].astype(dtype), op))


def full_delta(op, dtype):
    vals = hnp.arrays(np.int32, (ROWS, WIDTH), elements=st.integers(-4, 4))
    return vals.map(lambda v: mm.Delta.full("p", v.astype(dtype), op))


def any_delta(op, dtype):
    return st.one_of(rows_delta(op, dtype), masked_delta(op, dtype), full_delta(op, dtype))


def assert_state_equal(a: mm.State, b: mm.State, exact=True):
    assert a.names == b.names
    for n in a.names:
        x, y = np.asarray(a.pages[n]), np.asarray(b.pages[n])
        assert x.dtype == y.dtype
        if exact:
            np.testing.assert_array_equal(x, y, err_msg=n)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=n)
        assert int(a.epochs[n]) == int(b.epochs[n]), n


# -- behaviour --------------------------------------------------------------------------

@pytest.mark.parametrize("op", mm.OPS)
def test_rows_delta_matches_sequential_reference_with_duplicates_and_padding(op):
    dtype = DTYPE_FOR_OP[op]
    s = _state(dtype)
    idx = np.array([3, 1, 3, -1, 7, 3, 0, 1], np.int32)
    vals = np.arange(8 * WIDTH).reshape(8, WIDTH).astype(dtype) - 5
    out = mm.apply(s, mm.Delta.rows("p", idx, vals, op))
    expected = np_apply_rows(np.asarray(s.pages["p"]), idx, vals, op)
    np.testing.assert_array_equal(out.pages["p"], expected)
    assert int(out.epochs["p"]) == 1 and int(out.epochs["q"]) == 0
    np.testing.assert_array_equal(s.pages["p"], _state(dtype).pages["p"])  # input untouched


def test_set_keeps_last_duplicate_and_ignores_padding():
    s = mm.init_state(mm.Schema([mm.PageSpec("x", (4,), "int32")]))
    d = mm.Delta.rows("x", [2, -1, 2, 2, 0], [1, 99, 2, 3, 4])
    np.testing.assert_array_equal(mm.apply(s, d).pages["x"], [4, 0, 3, 0])
    all_pad = mm.Delta.rows("x", [-1, -1], [5, 6])
    np.testing.assert_array_equal(mm.apply(s, all_pad).pages["x"], [0, 0, 0, 0])
    empty = mm.Delta.rows("x", np.zeros((0,), np.int32), np.zeros((0,), np.int32))
    out = mm.apply(s, empty)
    np.testing.assert_array_equal(out.pages["x"], [0, 0, 0, 0])
    assert int(out.epochs["x"]) == 1


@pytest.mark.parametrize("op", mm.OPS)
def test_masked_and_full_deltas_match_numpy(op):
    dtype = DTYPE_FOR_OP[op]
    s = _state(dtype, seed=1)
    rng = np.random.default_rng(2)
    mask = rng.random((ROWS, WIDTH)) < 0.5
    vals = rng.integers(-4, 5, (ROWS, WIDTH)).astype(dtype)
    page = np.asarray(s.pages["p"])
    out = mm.apply(s, mm.Delta.masked("p", mask, vals, op))
    np.testing.assert_array_equal(out.pages["p"], np.where(mask, _np_op(op)(page, vals), page))
    out = mm.apply(s, mm.Delta.full("p", vals, op))
    np.testing.assert_array_equal(out.pages["p"], _np_op(op)(page, vals))


def test_byte_and_bool_pages():
    s = mm.init_state(mm.Schema([mm.PageSpec("raw", (6,), "uint8"),
                                 mm.PageSpec("b", (3,), "bool")]))
    s = mm.apply(s, mm.Delta.rows("raw", [0, 5], np.array([255, 7], np.uint8)))
    s = mm.apply(s, mm.Delta.rows("raw", [0], np.array([1], np.uint8), "add"))  # wraps
    np.testing.assert_array_equal(s.pages["raw"], [0, 0, 0, 0, 0, 7])
    s = mm.apply(s, mm.Delta.masked("b", np.array([1, 0, 1], bool), np.ones(3, bool), "or"))
    np.testing.assert_array_equal(s.pages["b"], [True, False, True])
    s = mm.apply(s, mm.Delta.rows("b", [0], np.array([False]), "and"))
    np.testing.assert_array_equal(s.pages["b"], [False, False, True])


def test_apply_is_deterministic_run_to_run():
    s = _state()
    rng = np.random.default_rng(3)
    idx = rng.integers(0, ROWS, 64).astype(np.int32)  # heavy duplicates
    vals = rng.standard_normal((64, WIDTH)).astype(np.float32)
    outs = [np.asarray(mm.apply(s, mm.Delta.rows("p", idx, vals, "add")).pages["p"])
            for _ in range(3)]
    assert all(o.tobytes() == outs[0].tobytes() for o in outs)


def test_apply_works_under_jit_and_vmap():
    s = _state()
    d = mm.Delta.rows("p", np.array([1, 2], np.int32), np.ones((2, WIDTH), np.float32))
    eager = mm.apply(s, d)
    jitted = jax.jit(mm.apply)(s, d)
    assert_state_equal(eager, jitted)
    batch = jax.tree.map(lambda x: jnp.stack([x, x]), s)
    dbatch = jax.tree.map(lambda x: jnp.stack([x, x * 2]), d)
    out = jax.vmap(mm.apply)(batch, dbatch)
    np.testing.assert_array_equal(out.pages["p"][0], eager.pages["p"])
    assert out.epochs["p"].tolist() == [1, 1]


def test_grad_flows_to_delta_values_and_page():
    s = _state()
    idx = np.array([1, 1, 4], np.int32)

    def loss(vals, page, op):
        st_ = s.with_pages({"p": page})
        return jnp.sum(mm.apply(st_, mm.Delta.rows("p", idx, vals, op)).pages["p"] ** 2)

    vals = jnp.arange(3 * WIDTH, dtype=jnp.float32).reshape(3, WIDTH) / 7 + 0.05  # no ties
    page = s.pages["p"]
    for op in ("set", "add", "mul", "max"):
        jax.test_util.check_grads(functools.partial(loss, op=op), (vals, page), order=1,
                                  modes=["rev"], atol=1e-2, rtol=1e-2)
    gv = jax.grad(loss)(vals, page, "set")
    np.testing.assert_array_equal(gv[0], 0.0)  # overwritten duplicate gets no gradient


# -- laws ------------------------------------------------------------------------------

@given(data=st.data(), op=st.sampled_from(mm.OPS))
def test_apply_batch_equals_sequential_apply(data, op):
    dtype = DTYPE_FOR_OP[op]
    ds = data.draw(st.lists(any_delta(op, dtype), min_size=1, max_size=4))
    s = _state(dtype)
    seq = functools.reduce(mm.apply, ds, s)
    batch = mm.apply_batch(s, ds)
    # Small integers in float32 are exact under add; mul can overflow the exact range.
    assert_state_equal(seq, batch, exact=op != "mul")


@given(data=st.data(), ops=st.lists(st.sampled_from(EXACT_OPS), min_size=2, max_size=5))
def test_apply_batch_mixed_ops_is_bit_exact(data, ops):
    ds = [data.draw(any_delta(op, "int32")) for op in ops]
    s = _state("int32")
    assert_state_equal(functools.reduce(mm.apply, ds, s), mm.apply_batch(s, ds))


@given(data=st.data(), op=st.sampled_from(mm.OPS))
def test_compose_law(data, op):
    dtype = DTYPE_FOR_OP[op]
    a = data.draw(any_delta(op, dtype))
    b = data.draw(any_delta(op, dtype))
    s = _state(dtype)
    assert_state_equal(mm.apply(mm.apply(s, a), b), mm.apply(s, mm.compose(a, b)),
                       exact=op != "mul")


@given(data=st.data(), op=st.sampled_from(mm.OPS))
def test_compose_is_associative(data, op):
    dtype = DTYPE_FOR_OP[op]
    a, b, c = (data.draw(any_delta(op, dtype)) for _ in range(3))
    s = _state(dtype)
    left = mm.apply(s, mm.compose(mm.compose(a, b), c))
    right = mm.apply(s, mm.compose(a, mm.compose(b, c)))
    assert_state_equal(left, right, exact=op != "mul")


@given(data=st.data())
def test_full_set_composes_with_any_op(data):
    a = data.draw(any_delta("add", "float32"))
    b = data.draw(full_delta("set", "float32"))
    s = _state()
    assert_state_equal(mm.apply(mm.apply(s, a), b), mm.apply(s, mm.compose(a, b)))
    assert_state_equal(mm.apply(mm.apply(s, b), a), mm.apply(s, mm.compose(b, a)))


def test_compose_rows_keeps_sparsity_and_counts():
    a = mm.Delta.rows("p", [1], np.ones((1, WIDTH), np.float32))
    b = mm.Delta.rows("p", [2, 3], np.ones((2, WIDTH), np.float32))
    ab = mm.compose(a, b)
    assert ab.kind == "rows" and ab.capacity == 3 and ab.count == 2
    assert int(mm.apply(_state(), ab).epochs["p"]) == 2


# -- errors ----------------------------------------------------------------------------

BAD = {
    "unknown page": (lambda: mm.Delta.rows("nope", [0], np.ones((1, WIDTH), np.float32)),
                     errors.UnknownPageError),
    "wrong dtype": (lambda: mm.Delta.rows("p", [0], np.ones((1, WIDTH), np.int32)),
                    errors.DTypeError),
    "wrong row shape": (lambda: mm.Delta.rows("p", [0], np.ones((1, WIDTH + 1), np.float32)),
                        errors.ShapeError),
    "index too large": (lambda: mm.Delta.rows("p", [ROWS], np.ones((1, WIDTH), np.float32)),
                        errors.IndexOutOfRangeError),
    "index below -1": (lambda: mm.Delta.rows("p", [-2], np.ones((1, WIDTH), np.float32)),
                       errors.IndexOutOfRangeError),
    "mask shape": (lambda: mm.Delta.masked("p", np.ones((ROWS,), bool),
                                           np.ones((ROWS,), np.float32)), errors.MaskError),
    "full shape": (lambda: mm.Delta.full("p", np.ones((2, 2), np.float32)), errors.ShapeError),
    "or on float": (lambda: mm.Delta.full("p", np.ones((ROWS, WIDTH), np.float32), "or"),
                    errors.OpError),
    "add on bool": (lambda: mm.Delta.full("b", np.ones((2,), bool), "add"), errors.OpError),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_deltas_raise_typed_errors_and_change_nothing(case):
    make, exc = BAD[case]
    s = mm.init_state(mm.Schema([mm.PageSpec("p", (ROWS, WIDTH)), mm.PageSpec("b", (2,), "bool")]))
    good = mm.Delta.rows("p", [0], np.full((1, WIDTH), 5, np.float32))
    before = jax.tree.map(np.asarray, s)
    with pytest.raises(exc):
        mm.apply(s, make())
    with pytest.raises(exc):
        mm.apply_batch(s, [good, make()])  # validated before the good one is applied
    assert issubclass(exc, errors.MMSBError)
    after = jax.tree.map(np.asarray, s)
    for n in s.names:
        np.testing.assert_array_equal(before.pages[n], after.pages[n])


@pytest.mark.parametrize(
    "make, exc",
    [
        (lambda: mm.Delta.rows("p", [[0]], np.ones((1, 1, WIDTH))), errors.ShapeError),
        (lambda: mm.Delta.rows("p", [0.5], np.ones((1, WIDTH))), errors.DTypeError),
        (lambda: mm.Delta.rows("p", [0, 1], np.ones((1, WIDTH))), errors.ShapeError),
        (lambda: mm.Delta.masked("p", np.ones((2,), np.int8), np.ones((2,))), errors.MaskError),
        (lambda: mm.Delta.masked("p", np.ones((2,), bool), np.ones((3,))), errors.ShapeError),
        (lambda: mm.Delta.full("p", np.ones(2), "xor"), errors.OpError),
        (lambda: mm.compose(mm.Delta.full("p", np.ones(2), "add"),
                            mm.Delta.full("q", np.ones(2), "add")), errors.ComposeError),
        (lambda: mm.compose(mm.Delta.full("p", np.ones(2), "add"),
                            mm.Delta.full("p", np.ones(2), "max")), errors.ComposeError),
    ],
)
def test_malformed_deltas_are_rejected_at_construction(make, exc):
    with pytest.raises(exc):
        make()


def test_checked_catches_out_of_range_index_inside_jit():
    s = _state()

    @jax.jit
    def f(state, idx):
        return mm.apply(state, mm.Delta.rows("p", idx, jnp.ones((2, WIDTH), jnp.float32)))

    checked = mm.checked(f)
    out = checked(s, jnp.array([1, -1], jnp.int32))
    np.testing.assert_array_equal(out.pages["p"][1], 1.0)
    with pytest.raises(errors.IndexOutOfRangeError):
        checked(s, jnp.array([1, ROWS], jnp.int32))
    with pytest.raises(errors.IndexOutOfRangeError):
        checked(s, jnp.array([-3, 0], jnp.int32))


# -- recompilation guards ----------------------------------------------------------------

def test_jitted_apply_compiles_once_per_delta_structure():
    s = _state()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, idx, vals):
        return mm.apply(state, mm.Delta.rows("p", idx, vals, "add"))

    rng = np.random.default_rng(0)
    for _ in range(4):
        idx = jnp.asarray(rng.integers(-1, ROWS, CAP), jnp.int32)
        s = step(s, idx, jnp.asarray(rng.standard_normal((CAP, WIDTH)), jnp.float32))
    assert int(s.epochs["p"]) == 4


def test_eager_apply_reuses_its_compiled_merge(monkeypatch):
    s = _state()
    rng = np.random.default_rng(1)

    def run():
        idx = rng.integers(0, ROWS, CAP).astype(np.int32)
        return mm.apply(s, mm.Delta.rows("p", idx, rng.standard_normal((CAP, WIDTH))
                                         .astype(np.float32)))

    monkeypatch.setattr(delta_mod, "_APPLY_ONE", {})
    monkeypatch.setattr(delta_mod, "_APPLY_CACHED", {})
    run()
    (fn,) = delta_mod._APPLY_ONE.values()  # apply took the flat-argument path
    assert [f for f, _ in delta_mod._APPLY_CACHED.values()] == [fn]
    size = fn._cache_size()
    real = delta_mod.validate_deltas
    validated: list[int] = []
    monkeypatch.setattr(delta_mod, "validate_deltas",
                        lambda *a: validated.append(1) or real(*a))
    for _ in range(5):
        run()
    # the structure was validated once; later calls only check their rows
    assert validated == [] and len(delta_mod._APPLY_CACHED) == 1
    assert list(delta_mod._APPLY_ONE.values()) == [fn] and fn._cache_size() == size
    # a cached structure still refuses out-of-range rows with a typed error, unchanged
    bad = mm.Delta.rows("p", np.array([0, ROWS], np.int32), np.ones((2, WIDTH), np.float32))
    with pytest.raises(errors.IndexOutOfRangeError, match=str(ROWS)):
        mm.apply(s, bad)
    with pytest.raises(errors.IndexOutOfRangeError):
        mm.apply(s, bad)
    # same shapes, another page dtype or shape: a new structure, validated again
    other = mm.init_state(mm.Schema([mm.PageSpec("p", (ROWS, WIDTH), "int32")]))
    with pytest.raises(errors.DTypeError):
        mm.apply(other, mm.Delta.rows("p", np.arange(CAP, dtype=np.int32),
                                      np.ones((CAP, WIDTH), np.float32)))


def test_eager_apply_batch_reuses_its_compiled_merge(monkeypatch):
    s = _state()
    rng = np.random.default_rng(2)

    def run():
        idx = rng.integers(0, ROWS, CAP).astype(np.int32)
        vals = rng.standard_normal((CAP, WIDTH)).astype(np.float32)
        return mm.apply_batch(s, [mm.Delta.rows("p", idx, vals, "add"),
                                  mm.Delta.full("p", np.ones((ROWS, WIDTH), np.float32), "mul")])

    real = delta_mod._apply_jit
    calls: list[int] = []
    monkeypatch.setattr(delta_mod, "_apply_jit", lambda *a: calls.append(1) or real(*a))
    run()
    size = real._cache_size()
    for _ in range(5):
        run()
    assert len(calls) == 6 and real._cache_size() == size  # several deltas: the pytree path


def test_indices_beyond_int32_are_refused_not_wrapped():
    with pytest.raises(errors.IndexOutOfRangeError, match="int32"):
        mm.Delta.rows("p", np.array([2**32 + 3], np.int64), np.ones((1, WIDTH), np.float32))


# -- small merges: the direct scatter for host-known unique rows -----------------------------

UNIQUE_DTYPES = ("float32", "int32", "uint8", "bool")


@given(data=st.data(), op=st.sampled_from(mm.OPS), dtype=st.sampled_from(UNIQUE_DTYPES))
def test_unique_rows_merge_is_bit_identical_to_the_sorting_merge(data, op, dtype):
    """Sorted distinct host indices take the no-sort scatter; it must give the same bits."""
    if (op in ("add", "mul") and dtype == "bool") or (op in ("or", "and") and dtype == "float32"):
        return
    k = mm.core.delta.UNIQUE_CHECK_MIN  # fixed capacity: one compile per op and dtype
    n = 200
    rows = np.sort(data.draw(hnp.arrays(np.int32, k, elements=st.integers(0, n - 1),
                                        unique=True)))
    pad = data.draw(st.integers(0, 8))
    if pad:
        rows[-pad:] = -1
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    state = mm.init_state(mm.Schema([mm.PageSpec("p", (n, 3), dtype)]))
    page = (rng.standard_normal((n, 3)) * 4).astype(dtype)
    vals = (rng.standard_normal((k, 3)) * 4).astype(dtype)
    state = mm.apply(state, mm.Delta.full("p", page))
    fast = mm.Delta.rows("p", rows, vals, op)
    assert fast.unique
    slow = dataclasses.replace(fast, unique=False)
    a, b = mm.apply(state, fast), mm.apply(state, slow)
    np.testing.assert_array_equal(np.asarray(a.pages["p"]).view(np.uint8),
                                  np.asarray(b.pages["p"]).view(np.uint8))


def test_unique_flag_only_for_sorted_distinct_host_indices():
    k = mm.core.delta.UNIQUE_CHECK_MIN
    vals = np.zeros((k,), np.float32)
    assert mm.Delta.rows("x", np.arange(k), vals).unique
    assert mm.Delta.rows("x", np.r_[np.arange(k - 2), [-1, -1]], vals).unique
    assert not mm.Delta.rows("x", np.r_[np.arange(k - 1), [3]], vals).unique  # duplicate
    assert not mm.Delta.rows("x", np.arange(k)[::-1].copy(), vals).unique  # unsorted
    assert not mm.Delta.rows("x", np.arange(k - 1), vals[1:]).unique  # short: not checked
    assert not mm.Delta.rows("x", jnp.arange(k), vals).unique  # device indices: not checked
