"""Co-access telemetry, row orderings and logical/physical layouts (mm.adaptive)."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings

import mmsb_jax as mm
from mmsb_jax import adaptive as A
from mmsb_jax.errors import (
    IndexOutOfRangeError,
    OptionError,
    ShapeError,
    UnknownPageError,
)

N, W = 32, 3
SCHEMA = mm.Schema([mm.PageSpec("x", (N, W), "float32"), mm.PageSpec("y", (4,), "int32")])


def _state(seed: int = 0) -> mm.State:
    vals = np.random.default_rng(seed).standard_normal((N, W)).astype(np.float32)
    return mm.apply(mm.init_state(SCHEMA), mm.Delta.full("x", vals))


def _rows(idx, seed=0, op="set"):
    idx = np.asarray(idx, np.int32)
    vals = np.random.default_rng(seed).standard_normal((idx.size, W)).astype(np.float32)
    return mm.Delta.rows("x", idx, vals, op=op)


# -- telemetry -----------------------------------------------------------------------------------

def test_row_access_counts_pairs_and_frequency():
    ds = [_rows([0, 5, 9]), _rows([5, 9, -1]), _rows([2, 7, 7])]
    c = A.row_access(ds, "x", N).toarray()
    assert c.shape == (N, N) and np.array_equal(c, c.T)
    assert c[5, 9] == 2 and c[0, 5] == 1 and c[2, 7] == 1 and c[0, 2] == 0
    assert c[5, 5] == 2 and c[7, 7] == 1 and c[1, 1] == 0  # duplicates count once per group


def test_row_access_groups_by_commit_and_ignores_other_pages_and_full():
    txn = [[_rows([1, 2]), _rows([3]), mm.Delta.full("y", jnp.zeros(4, jnp.int32))],
           [mm.Delta.full("x", jnp.zeros((N, W)))]]
    commit = A.row_access(txn, "x", N).toarray()
    assert commit[1, 3] == 1 and commit[2, 3] == 1 and commit.sum() == 9
    per_delta = A.row_access([d for t in txn for d in t], "x", N, group="delta").toarray()
    assert per_delta[1, 3] == 0 and per_delta[1, 2] == 1


def test_row_access_masked_rows():
    mask = np.zeros((N, W), bool)
    mask[[4, 6], 1] = True
    d = mm.Delta.masked("x", mask, np.zeros((N, W), np.float32))
    c = A.row_access(d, "x", N).toarray()
    assert c[4, 6] == 1 and c.sum() == 4


def test_row_access_from_bus_log(tmp_path):
    with mm.Bus.open(tmp_path / "bus", schema=SCHEMA, sync="never") as bus:
        bus.commit([_rows([3, 8]), _rows([8, 11])])
        bus.commit(_rows([3, 8]))
        from_bus = A.row_access(bus, "x", N).toarray()
    from_dir = A.row_access(tmp_path / "bus", "x", N).toarray()
    assert np.array_equal(from_bus, from_dir)
    assert from_bus[3, 8] == 2 and from_bus[8, 11] == 1 and from_bus[8, 8] == 2


def test_row_access_bad_input():
    with pytest.raises(IndexOutOfRangeError):
        A.row_access([_rows([0, 40])], "x", N)
    with pytest.raises(OptionError):
        A.row_access([], "x", N, group="page")
    with pytest.raises(OptionError):
        A.row_access([], "x", -1)
    assert A.row_access([], "x", N).nnz == 0


# -- orderings -----------------------------------------------------------------------------------

def _planted(seed: int):
    """Four clusters of 6 rows scattered over N rows; groups touch rows of one cluster."""
    rng = np.random.default_rng(seed)
    hot = rng.permutation(N)[:24].reshape(4, 6)
    groups = [rng.choice(hot[rng.integers(4)], size=3, replace=False) for _ in range(40)]
    return hot, A.row_access([_rows(g) for g in groups], "x", N)


@pytest.mark.parametrize("method", A.METHODS)
def test_orderings_are_permutations_that_group_clusters(method):
    hot, c = _planted(1)
    lay = A.relayout_permutation(c, method)
    perm, inv = np.asarray(lay.perm), np.asarray(lay.inv)
    assert sorted(perm.tolist()) == list(range(N))
    assert np.array_equal(inv[perm], np.arange(N))
    touched = np.flatnonzero(c.diagonal())
    assert set(perm[: touched.size].tolist()) == set(touched.tolist())  # accessed rows first
    if method != "frequency":
        for cluster in hot:  # each cluster's touched rows are contiguous
            pos = np.sort(inv[np.intersect1d(cluster, touched)])
            assert pos[-1] - pos[0] == pos.size - 1
    again = A.relayout_permutation(c, method)
    assert np.array_equal(np.asarray(again.perm), perm)  # deterministic


def test_orderings_reduce_blocks_touched():
    hot, c = _planted(2)
    rng = np.random.default_rng(3)
    lay = A.relayout_permutation(c, "rcm")
    before = after = 0
    for _ in range(20):
        rows = rng.choice(hot[rng.integers(4)], size=4, replace=False)
        before += A.blocks_touched(rows, 4)
        after += A.blocks_touched(rows, 4, lay)
    assert after < before


def test_spectral_large_component_uses_sparse_solver():
    n = 2600  # above the dense-eigh limit: a path graph, whose Fiedler order is the path
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    src, dst = order[:-1], order[1:]
    c = sp.coo_matrix((np.ones(n - 1), (src, dst)), shape=(n, n))
    c = c + c.T + sp.identity(n)
    perm = np.asarray(A.relayout_permutation(c, "spectral").perm)
    assert np.array_equal(perm, order) or np.array_equal(perm, order[::-1])


def test_relayout_permutation_bad_input():
    with pytest.raises(OptionError):
        A.relayout_permutation(np.eye(3), "random")
    with pytest.raises(ShapeError):
        A.relayout_permutation(np.ones((3, 4)))
    lay = A.relayout_permutation(np.zeros((5, 5)))
    assert np.array_equal(np.asarray(lay.perm), np.arange(5))


def test_layout_from_permutation_bad_input():
    with pytest.raises(IndexOutOfRangeError):
        A.Layout.from_permutation([0, 0, 1])
    with pytest.raises(IndexOutOfRangeError):
        A.Layout.from_permutation([0, 3, 1])
    with pytest.raises(ShapeError):
        A.Layout.from_permutation(np.zeros((2, 2), int))


# -- applying layouts ----------------------------------------------------------------------------

perms = st.permutations(list(range(N)))
row_lists = st.lists(st.integers(-1, N - 1), min_size=6, max_size=6)


@settings(max_examples=30, deadline=None)
@given(perms, row_lists, st.sampled_from(["set", "add", "max"]))
def test_translate_commutes_with_layout(perm, rows, op):
    """apply(relaid, translate(d)) == relayout(apply(logical, d)), read back by logical row."""
    lay = A.Layout.from_permutation(perm)
    s = _state()
    d = _rows(rows, seed=len(rows), op=op)
    relaid = mm.apply(s, A.apply_layout(s, "x", lay))
    got = A.read_logical(mm.apply(relaid, A.translate(d, lay)), "x", lay)
    assert np.array_equal(np.asarray(got), np.asarray(mm.apply(s, d).pages["x"]))


@settings(max_examples=30, deadline=None)
@given(perms, perms)
def test_relayout_is_reversible_and_composes(p1, p2):
    s = _state(1)
    l1, l2 = A.Layout.from_permutation(p1), A.Layout.from_permutation(p2)
    s1 = mm.apply(s, A.apply_layout(s, "x", l1))
    back = mm.apply(s1, A.apply_layout(s1, "x", l1.inverse()))
    assert np.array_equal(np.asarray(back.pages["x"]), np.asarray(s.pages["x"]))
    s12 = mm.apply(s1, A.apply_layout(s1, "x", l2, current=l1))
    direct = mm.apply(s, A.apply_layout(s, "x", l2))
    assert np.array_equal(np.asarray(s12.pages["x"]), np.asarray(direct.pages["x"]))
    assert np.array_equal(np.asarray(A.read_logical(s12, "x", l2)), np.asarray(s.pages["x"]))


def test_translate_masked_and_full_and_padding():
    lay = A.Layout.from_permutation(np.random.default_rng(4).permutation(N))
    s = _state()
    relaid = mm.apply(s, A.apply_layout(s, "x", lay))
    mask = np.random.default_rng(5).random((N, W)) < 0.3
    vals = np.full((N, W), 7.0, np.float32)
    for d in (mm.Delta.masked("x", mask, vals, op="add"), mm.Delta.full("x", vals, op="min")):
        got = A.read_logical(mm.apply(relaid, A.translate(d, lay)), "x", lay)
        assert np.array_equal(np.asarray(got), np.asarray(mm.apply(s, d).pages["x"]))
    t = A.translate(_rows([-1, 2]), lay)
    assert int(t.indices[0]) == -1 and int(t.indices[1]) == int(lay.inv[2])
    assert np.array_equal(np.asarray(lay.to_logical(lay.to_physical(jnp.arange(N)))),
                          np.arange(N))


def test_relayout_commit_through_bus_is_logged_and_replayed(tmp_path):
    lay = A.Layout.from_permutation(np.random.default_rng(6).permutation(N))
    with mm.Bus.open(tmp_path / "b", schema=SCHEMA, sync="always") as bus:
        bus.commit(mm.Delta.full("x", np.asarray(_state().pages["x"])))
        logical = np.asarray(bus.state.pages["x"])
        bus.commit(A.apply_layout(bus.state, "x", lay))
        bus.commit(A.translate(_rows([1, 2], op="add"), lay))
        live = np.asarray(bus.state.pages["x"])
    with mm.Bus.open(tmp_path / "b") as bus:
        assert np.array_equal(np.asarray(bus.state.pages["x"]), live)
        assert np.array_equal(np.asarray(A.read_logical(bus.at(2), "x", lay)), logical)


def test_apply_layout_translate_read_bad_input():
    s = _state()
    lay = A.Layout.identity(N)
    with pytest.raises(UnknownPageError):
        A.apply_layout(s, "nope", lay)
    with pytest.raises(ShapeError):
        A.apply_layout(s, "x", A.Layout.identity(N + 1))
    with pytest.raises(ShapeError):
        A.apply_layout(s, "x", lay, current=A.Layout.identity(3))
    with pytest.raises(IndexOutOfRangeError):
        A.translate(_rows([0, N]), lay)
    with pytest.raises(ShapeError):
        A.translate(mm.Delta.full("x", np.zeros((N + 1, W), np.float32)), lay)
    with pytest.raises(IndexOutOfRangeError):
        A.read_logical(s, "x", lay, rows=[N])
    with pytest.raises(OptionError):
        A.blocks_touched([1, 2], 0)


def test_jitted_translate_and_read_compile_once():
    s = _state()
    lay = A.Layout.from_permutation(np.random.default_rng(7).permutation(N))
    relaid = mm.apply(s, A.apply_layout(s, "x", lay))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, layout, idx, vals):
        d = A.translate(mm.Delta.rows("x", idx, vals, op="add"), layout)
        state = mm.apply(state, d)
        return state, A.read_logical(state, "x", layout, idx)

    expect = s
    for k in range(3):
        idx = jnp.array([k, k + 5, -1], jnp.int32)
        vals = jnp.full((3, W), float(k + 1), jnp.float32)
        relaid, got = step(relaid, lay, idx, vals)
        expect = mm.apply(expect, mm.Delta.rows("x", idx, vals, op="add"))
        assert np.array_equal(np.asarray(got[:2]), np.asarray(expect.pages["x"][idx[:2]]))
    assert np.array_equal(np.asarray(A.read_logical(relaid, "x", lay)),
                          np.asarray(expect.pages["x"]))
