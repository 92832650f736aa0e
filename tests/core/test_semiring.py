"""Semirings: laws, matmul, spmv, closure and fixpoint against scipy, networkx and numpy."""

from __future__ import annotations

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy.sparse.csgraph import shortest_path

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax.core import semiring
from mmsb_jax.core.semiring import BOOLEAN, LOG, MAXPLUS, REAL, TROPICAL

INF = float("inf")
ALL = (REAL, TROPICAL, MAXPLUS, BOOLEAN, LOG)
IDS = [s.name for s in ALL]
N = 6  # fixed graph size: hypothesis never changes a shape, so nothing recompiles
WIDTH = 16  # elements drawn per law check (laws are checked elementwise on vectors)
EDGES = 12  # fixed edge capacity for edge-list tests
LAWS = settings(max_examples=25, deadline=None)
GRAPHS = settings(max_examples=30, deadline=None)


# -- helpers ------------------------------------------------------------------------------

def elements(sr):
    """Carrier values: small integers as floats (exact arithmetic) plus the infinities."""
    if sr is BOOLEAN:
        return st.booleans()
    ints = st.integers(-20, 20).map(float)
    if sr is REAL:
        return st.integers(-6, 6).map(float)
    if sr is LOG:
        floats = st.floats(-30, 30, allow_nan=False, width=32)
        return st.one_of(floats, st.sampled_from([-INF, INF]))
    return st.one_of(ints, st.sampled_from([INF, -INF]))


def vec(sr):
    return hnp.arrays(np.dtype(sr.dtype), (WIDTH,), elements=elements(sr))


def assert_same(sr, actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    if sr.idempotent:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=2e-5)


def np_add(sr):
    return {"real": np.add, "tropical": np.minimum, "maxplus": np.maximum,
            "boolean": np.logical_or, "log": np.logaddexp}[sr.name]


def np_mul_finite(sr):
    """⊗ on finite values (numpy reference for spmv/adjacency)."""
    return {"real": np.multiply, "tropical": np.add, "maxplus": np.add,
            "boolean": np.logical_and, "log": np.add}[sr.name]


def random_values(sr, rng, shape):
    if sr is BOOLEAN:
        return rng.random(shape) < 0.5
    if sr is REAL:
        return rng.uniform(-1, 1, shape).astype(np.float32)
    if sr is LOG:
        return rng.uniform(-3, 0, shape).astype(np.float32)
    return rng.integers(-5, 10, shape).astype(np.float32)


def dense(sr, mask, weights):
    return np.where(mask, weights, sr.zero).astype(sr.dtype)


@st.composite
def masks(draw, n=N):
    return draw(hnp.arrays(np.bool_, (n, n)))


@st.composite
def int_weights(draw, lo, hi, n=N):
    return draw(hnp.arrays(np.int64, (n, n), elements=st.integers(lo, hi))).astype(np.float32)


def small_real_matrix(rng, mask):
    """Entries in [-1, 1] / N on the mask: ||A||_inf < 1, so the path series converges."""
    n = mask.shape[0]
    return np.where(mask, rng.uniform(-1, 1, mask.shape) / n, 0.0).astype(np.float32)


def np_bellman_ford_longest(a):
    """All-pairs longest paths on a DAG by N rounds of relaxation (numpy reference)."""
    n = a.shape[0]
    dist = np.where(np.eye(n, dtype=bool), 0.0, -np.inf)
    for _ in range(n):
        dist = np.maximum(dist, np.max(dist[:, :, None] + a[None, :, :], axis=1))
    return dist


# -- the five semirings: fields --------------------------------------------------------------

def test_registry_and_fields():
    assert dict(semiring.SEMIRINGS) == {s.name: s for s in ALL}
    assert [s.idempotent for s in ALL] == [False, True, True, True, False]
    assert BOOLEAN.dtype == np.bool_ and TROPICAL.dtype == np.float32
    assert (TROPICAL.zero, TROPICAL.one) == (INF, 0.0)
    assert (MAXPLUS.zero, LOG.zero, BOOLEAN.zero, REAL.zero) == (-INF, -INF, False, 0.0)
    assert repr(TROPICAL) == "Semiring('tropical')"
    # A semiring is a static pytree: no leaves, passes through jit as configuration.
    assert jax.tree.leaves(TROPICAL) == []
    out = jax.jit(lambda sr, a, b: sr.add(a, b))(TROPICAL, jnp.float32(3), jnp.float32(2))
    assert float(out) == 2.0


# -- semiring laws (hypothesis) --------------------------------------------------------------

@pytest.mark.parametrize("sr", ALL, ids=IDS)
@LAWS
@given(data=st.data())
def test_add_associative_and_commutative(sr, data):
    a, b, c = (data.draw(vec(sr)) for _ in range(3))
    assert_same(sr, sr.add(sr.add(a, b), c), sr.add(a, sr.add(b, c)))
    assert_same(sr, sr.add(a, b), sr.add(b, a))


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@LAWS
@given(data=st.data())
def test_mul_associative(sr, data):
    a, b, c = (data.draw(vec(sr)) for _ in range(3))
    assert_same(sr, sr.mul(sr.mul(a, b), c), sr.mul(a, sr.mul(b, c)))


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@LAWS
@given(data=st.data())
def test_identities_and_annihilation(sr, data):
    a = jnp.asarray(data.draw(vec(sr)))
    zero = jnp.full_like(a, sr.zero)
    one = jnp.full_like(a, sr.one)
    assert_same(sr, sr.add(a, zero), a)
    assert_same(sr, sr.add(zero, a), a)
    assert_same(sr, sr.mul(a, one), a)
    assert_same(sr, sr.mul(one, a), a)
    np.testing.assert_array_equal(sr.mul(zero, a), zero)
    np.testing.assert_array_equal(sr.mul(a, zero), zero)


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@LAWS
@given(data=st.data())
def test_distributive_both_sides(sr, data):
    a, b, c = (jnp.asarray(data.draw(vec(sr))) for _ in range(3))
    assert_same(sr, sr.mul(a, sr.add(b, c)), sr.add(sr.mul(a, b), sr.mul(a, c)))
    assert_same(sr, sr.mul(sr.add(b, c), a), sr.add(sr.mul(b, a), sr.mul(c, a)))


@pytest.mark.parametrize("sr", [TROPICAL, MAXPLUS, BOOLEAN], ids=["tropical", "maxplus",
                                                                   "boolean"])
@LAWS
@given(data=st.data())
def test_add_idempotent_where_it_holds(sr, data):
    a = jnp.asarray(data.draw(vec(sr)))
    np.testing.assert_array_equal(sr.add(a, a), a)


@pytest.mark.parametrize("sr", [REAL, LOG], ids=["real", "log"])
def test_add_not_idempotent_for_real_and_log(sr):
    assert not sr.idempotent
    one = jnp.float32(sr.one)
    assert float(sr.add(one, one)) != float(one)  # 1 + 1 = 2, log(e^0 + e^0) = log 2


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@LAWS
@given(data=st.data())
def test_star_satisfies_its_equation(sr, data):
    """``a* = one ⊕ a ⊗ a*`` wherever the star is defined (REAL: a != 1)."""
    a = jnp.asarray(data.draw(vec(sr)))
    if sr is REAL:
        a = jnp.where(a == 1.0, 0.5, a)
    if sr is LOG:
        a = jnp.minimum(a, -1e-2)  # near 0 the star is huge and float32 cannot check it
    star = sr.star(a)
    assert_same(sr, star, sr.add(jnp.full_like(a, sr.one), sr.mul(a, star)))


def test_star_values():
    a = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(TROPICAL.star(a), [-INF, 0.0, 0.0])
    np.testing.assert_array_equal(MAXPLUS.star(a), [0.0, 0.0, INF])
    np.testing.assert_array_equal(BOOLEAN.star(jnp.array([True, False])), [True, True])
    small = jnp.array([-0.6, -0.1, 0.0, 0.3, 0.6])
    series = sum(np.asarray(small, np.float64) ** k for k in range(200))
    np.testing.assert_allclose(REAL.star(small), series, rtol=1e-5)
    logs = jnp.array([-INF, -5.0, -0.7, -0.3, -1e-3])
    expected = -np.log1p(-np.exp(np.asarray(logs, np.float64)))
    np.testing.assert_allclose(LOG.star(logs), expected, rtol=1e-5)
    np.testing.assert_allclose(LOG.star(jnp.array([-0.5])),
                               np.log(sum(np.exp(-0.5 * k) for k in range(200))), rtol=1e-5)
    np.testing.assert_array_equal(LOG.star(jnp.array([0.0, 2.0])), [INF, INF])
    grads = jax.jit(jax.grad(lambda x: LOG.star(x).sum()))(logs)
    assert np.all(np.isfinite(grads))


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@LAWS
@given(data=st.data())
def test_reduce_and_segment_reduce_fold_add(sr, data):
    x = data.draw(vec(sr))
    ids = data.draw(hnp.arrays(np.int32, (WIDTH,), elements=st.integers(-1, 3)))
    folded = [sr.zero] * 4
    for v, i in zip(x, ids, strict=True):
        if i >= 0:
            folded[i] = np_add(sr)(folded[i], v)
    got = sr.segment_reduce(jnp.asarray(x), jnp.asarray(ids), 4)
    assert_same(sr, got, np.asarray(folded, sr.dtype))
    total = sr.zero
    for v in x:
        total = np_add(sr)(total, v)
    assert_same(sr, sr.reduce(jnp.asarray(x), axis=0), total)
    assert_same(sr, sr.reduce(jnp.asarray(x).reshape(4, 4)), total)
    empty = sr.reduce(jnp.zeros((3, 0), sr.dtype), axis=1)
    np.testing.assert_array_equal(empty, np.full(3, sr.zero, sr.dtype))


def test_log_reductions_have_finite_gradients_on_empty_paths():
    @jax.jit
    def grads(x, d, a):
        finite = lambda r: jnp.where(jnp.isfinite(r), r, 0.0)
        return (jax.grad(lambda x: finite(LOG.reduce(x, axis=1)).sum())(x),
                jax.grad(lambda d: LOG.segment_reduce(d, jnp.array([0, 0, 1]), 3)[1])(d),
                jax.grad(lambda a: LOG.add(a, -jnp.inf))(a))

    gx, gd, ga = grads(jnp.array([[-INF, -INF], [0.0, -INF]]), jnp.array([-INF, -INF, 2.0]),
                       jnp.float32(-INF))
    np.testing.assert_allclose(gx, [[0, 0], [1, 0]])
    np.testing.assert_allclose(gd, [0, 0, 1])
    assert float(ga) == 0.0


# -- matmul ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sr", ALL, ids=IDS)
@LAWS
@given(data=st.data())
def test_matmul_associative(sr, data):
    shape = hnp.arrays(np.dtype(sr.dtype), (4, 4), elements=elements(sr))
    a, b, c = (data.draw(shape) for _ in range(3))
    if sr is REAL or sr is LOG:
        # Keep REAL/LOG finite (inf - inf has no value in REAL; LOG is checked with tolerance).
        a, b, c = (np.where(np.isfinite(m), m, 0.0).astype(np.float32) for m in (a, b, c))
    left = semiring.matmul(sr, semiring.matmul(sr, a, b), c)
    right = semiring.matmul(sr, a, semiring.matmul(sr, b, c))
    if sr is LOG:
        np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-4)
    else:
        assert_same(sr, left, right)


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@pytest.mark.parametrize("block_rows", [None, 1, 3, 7, 100])
def test_matmul_equals_reference(sr, block_rows):
    rng = np.random.default_rng(7)
    a = random_values(sr, rng, (7, 5))
    b = random_values(sr, rng, (5, 4))
    if sr is not BOOLEAN:
        a[0, :] = sr.zero  # a row with no terms
    expected = semiring.matmul_reference(sr, a, b)
    assert expected.shape == (7, 4)
    assert_same(sr, semiring.matmul(sr, a, b, block_rows=block_rows), expected)
    jitted = jax.jit(lambda x, y: semiring.matmul(sr, x, y, block_rows=block_rows))
    assert_same(sr, jitted(a, b), expected)


def test_matmul_reference_values_and_empty_inner_dimension():
    a = np.array([[0.0, 2.0], [INF, 1.0]], np.float32)
    b = np.array([[5.0, INF], [1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(semiring.matmul(TROPICAL, a, b), [[3.0, 2.0], [2.0, 1.0]])
    np.testing.assert_allclose(semiring.matmul(REAL, np.ones((2, 1)), np.full((1, 2), 2.0)),
                               [[2.0, 2.0], [2.0, 2.0]])
    empty = semiring.matmul(TROPICAL, np.zeros((3, 0), np.float32), np.zeros((0, 2), np.float32))
    np.testing.assert_array_equal(empty, np.full((3, 2), INF))
    np.testing.assert_array_equal(
        semiring.matmul(BOOLEAN, np.zeros((2, 0), bool), np.zeros((0, 2), bool)),
        np.zeros((2, 2), bool))


def test_matmul_is_differentiable():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    tiled = jax.jit(jax.grad(lambda x, y: semiring.matmul(LOG, x, y, block_rows=2).sum(), (0, 1)))
    reference = jax.jit(jax.grad(lambda x, y: semiring.matmul_reference(LOG, x, y).sum(), (0, 1)))
    for got, want in zip(tiled(a, b), reference(a, b), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # TROPICAL: d C[i, j] / d A[i, k] is 1 at the minimising k (no ties with normal draws).
    g = jax.jit(jax.grad(lambda x: semiring.matmul(TROPICAL, x, b, block_rows=2)[1, 2]))(a)
    expected = np.zeros_like(a)
    expected[1, np.argmin(a[1] + b[:, 2])] = 1.0
    np.testing.assert_array_equal(g, expected)


def test_integer_inputs_are_promoted():
    a = np.array([[0, 2], [3, 1]], np.int32)
    out = semiring.matmul(TROPICAL, a, a)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, [[0.0, 2.0], [3.0, 2.0]])


# -- spmv and adjacency ------------------------------------------------------------------------

def np_spmv(sr, senders, receivers, weights, x, num_nodes):
    y = np.full((num_nodes, *x.shape[1:]), sr.zero, dtype=np.result_type(sr.dtype, x.dtype))
    for s, r, w in zip(senders, receivers, weights, strict=True):
        if s < 0 or r < 0:
            continue
        y[r] = np_add(sr)(y[r], np_mul_finite(sr)(w, x[s]))
    return y


def edge_list(rng, sr, num_nodes, features=()):
    """EDGES random edges; node num_nodes-1 never receives; about a quarter is padding."""
    senders = rng.integers(0, num_nodes, EDGES).astype(np.int32)
    receivers = rng.integers(0, num_nodes - 1, EDGES).astype(np.int32)
    pad = rng.random(EDGES) < 0.25
    senders[pad] = -1
    receivers[pad & (rng.random(EDGES) < 0.5)] = -1
    weights = random_values(sr, rng, (EDGES, *features))
    return senders, receivers, weights


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@pytest.mark.parametrize("features", [(), (3,)], ids=["x[N]", "x[N,F]"])
def test_spmv_matches_numpy_loop(sr, features):
    rng = np.random.default_rng(3)
    senders, receivers, weights = edge_list(rng, sr, N)
    x = random_values(sr, rng, (N, *features))
    expected = np_spmv(sr, senders, receivers, weights, x, N)
    got = semiring.spmv(sr, senders, receivers, weights, x, N)
    assert got.shape == (N, *features)
    assert_same(sr, got, expected)
    np.testing.assert_array_equal(got[N - 1], np.full(features, sr.zero, sr.dtype))
    jitted = jax.jit(lambda s, r, w, v: semiring.spmv(sr, s, r, w, v, N))
    assert_same(sr, jitted(senders, receivers, weights, x), expected)


@pytest.mark.parametrize("sr", ALL, ids=IDS)
def test_spmv_with_per_feature_weights(sr):
    rng = np.random.default_rng(4)
    senders, receivers, weights = edge_list(rng, sr, N, features=(2,))
    x = random_values(sr, rng, (N, 2))
    expected = np.stack([np_spmv(sr, senders, receivers, weights[:, f], x[:, f], N)
                         for f in range(2)], axis=1)
    assert_same(sr, semiring.spmv(sr, senders, receivers, weights, x, N), expected)


def test_spmv_padding_contributes_nothing():
    x = jnp.array([1.0, 2.0, 3.0])
    s, r, w = [0, -1, 1, -1], [1, 2, -1, -1], [5.0, -100.0, -100.0, -100.0]
    np.testing.assert_array_equal(semiring.spmv(TROPICAL, s, r, w, x, 3), [INF, 6.0, INF])
    np.testing.assert_array_equal(semiring.spmv(REAL, s, r, w, x, 3), [0.0, 5.0, 0.0])


def test_spmv_rectangular_and_differentiable():
    # 4 source values, 2 output nodes (a bipartite message pass).
    x = jnp.array([0.0, 1.0, 2.0, 3.0])
    s, r = jnp.array([0, 3, 2]), jnp.array([1, 1, 0])
    w = jnp.array([1.0, 1.0, 5.0])
    np.testing.assert_allclose(semiring.spmv(LOG, s, r, w, x, 2),
                               [7.0, np.logaddexp(1.0, 4.0)], rtol=1e-6)
    g = jax.grad(lambda w: semiring.spmv(LOG, s, r, w, x, 2)[1])(w)
    p = np.exp([1.0, 4.0]) / np.exp([1.0, 4.0]).sum()
    np.testing.assert_allclose(g, [p[0], p[1], 0.0], rtol=1e-5)


@pytest.mark.parametrize("sr", ALL, ids=IDS)
def test_adjacency_and_spmv_agree_with_matmul(sr):
    rng = np.random.default_rng(5)
    senders, receivers, weights = edge_list(rng, sr, N)
    a = semiring.adjacency(sr, senders, receivers, weights, N)
    expected = np.full((N, N), sr.zero, sr.dtype)
    for s, r, w in zip(senders, receivers, weights, strict=True):
        if s >= 0 and r >= 0:
            expected[s, r] = np_add(sr)(expected[s, r], w)
    assert_same(sr, a, expected)
    x = random_values(sr, rng, (N,))
    assert_same(sr, semiring.spmv(sr, senders, receivers, weights, x, N),
                semiring.matmul(sr, x[None, :], a)[0])


def test_eye():
    np.testing.assert_array_equal(semiring.eye(BOOLEAN, 2), [[True, False], [False, True]])
    np.testing.assert_array_equal(semiring.eye(MAXPLUS, 2), [[0.0, -INF], [-INF, 0.0]])
    assert semiring.eye(REAL, 3, dtype=jnp.float16).dtype == jnp.float16


# -- closure -----------------------------------------------------------------------------------

closure_jit = jax.jit(semiring.closure)  # the semiring is a static pytree: no static_argnums


@GRAPHS
@given(mask=masks(), w=int_weights(1, 9))
def test_tropical_closure_equals_scipy_shortest_path(mask, w):
    got = closure_jit(TROPICAL, dense(TROPICAL, mask, w))
    expected = shortest_path(np.where(mask, w, 0.0), method="FW", directed=True)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.diag(got), np.zeros(N))


@GRAPHS
@given(mask=masks())
def test_boolean_closure_equals_networkx_transitive_closure(mask):
    g = nx.DiGraph()
    g.add_nodes_from(range(N))
    g.add_edges_from(zip(*np.nonzero(mask), strict=True))
    expected = nx.to_numpy_array(nx.transitive_closure(g, reflexive=True), nodelist=range(N))
    np.testing.assert_array_equal(closure_jit(BOOLEAN, mask), expected.astype(bool))


@GRAPHS
@given(mask=masks(), w=int_weights(-9, 9),
       perm=st.permutations(list(range(N))).map(np.asarray))
def test_maxplus_closure_equals_longest_paths_on_dags(mask, w, perm):
    dag = np.triu(mask, k=1)[np.ix_(perm, perm)]  # a DAG in a random node order
    a = dense(MAXPLUS, dag, w)
    np.testing.assert_array_equal(closure_jit(MAXPLUS, a), np_bellman_ford_longest(a))


@GRAPHS
@given(mask=masks(), seed=st.integers(0, 2**32 - 1))
def test_real_closure_equals_inverse(mask, seed):
    a = small_real_matrix(np.random.default_rng(seed), mask)
    expected = np.linalg.inv(np.eye(N) - a.astype(np.float64))
    np.testing.assert_allclose(closure_jit(REAL, a), expected, rtol=1e-5, atol=1e-6)


@GRAPHS
@given(mask=masks(), seed=st.integers(0, 2**32 - 1))
def test_log_closure_equals_log_of_real_closure(mask, seed):
    rng = np.random.default_rng(seed)
    p = np.where(mask, rng.uniform(0.05, 1.0, mask.shape) / N, 0.0).astype(np.float32)
    a = jnp.log(p)  # -inf = no edge
    got = closure_jit(LOG, a)
    expected = jnp.log(closure_jit(REAL, jnp.exp(a)))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@GRAPHS
@given(mask=masks(), seed=st.integers(0, 2**32 - 1))
def test_closure_satisfies_star_equation(sr, mask, seed):
    """``A* = I ⊕ A ⊗ A*`` for every semiring (negative/positive cycles included)."""
    rng = np.random.default_rng(seed)
    if sr is REAL:
        a = small_real_matrix(rng, mask)
    elif sr is LOG:
        a = np.where(mask, np.log(rng.uniform(0.05, 1.0, mask.shape) / N), -INF)
        a = a.astype(np.float32)
    else:
        a = dense(sr, mask, random_values(sr, rng, (N, N)))
    star = closure_jit(sr, a)
    rhs = sr.add(semiring.eye(sr, N), semiring.matmul(sr, a, star))
    if sr is LOG:
        np.testing.assert_allclose(star, rhs, rtol=1e-5, atol=1e-5)
    else:
        assert_same(sr, star, rhs)


def test_closure_divergent_cycles():
    # 0 -> 1 -> 0 with total weight -1: a negative cycle for TROPICAL, reachable from 0 and 1.
    a = np.array([[INF, 1.0, INF], [-2.0, INF, INF], [INF, INF, INF]], np.float32)
    np.testing.assert_array_equal(semiring.closure(TROPICAL, a),
                                  [[-INF, -INF, INF], [-INF, -INF, INF], [INF, INF, 0.0]])
    b = np.array([[-INF, 1.0, -INF], [2.0, -INF, -INF], [-INF, -INF, -INF]], np.float32)
    np.testing.assert_array_equal(semiring.closure(MAXPLUS, b),
                                  [[INF, INF, -INF], [INF, INF, -INF], [-INF, -INF, 0.0]])
    c = np.array([[-INF, 0.5, -INF], [0.0, -INF, -INF], [-INF, -INF, -INF]], np.float32)
    np.testing.assert_array_equal(semiring.closure(LOG, c),
                                  [[INF, INF, -INF], [INF, INF, -INF], [-INF, -INF, 0.0]])


def test_closure_eager_jit_and_vmap_agree():
    rng = np.random.default_rng(11)
    batch = np.stack([dense(TROPICAL, rng.random((N, N)) < 0.4,
                            rng.integers(1, 9, (N, N)).astype(np.float32)) for _ in range(3)])
    eager = np.stack([semiring.closure(TROPICAL, m) for m in batch])
    np.testing.assert_array_equal(jax.vmap(lambda m: semiring.closure(TROPICAL, m))(batch), eager)
    np.testing.assert_array_equal(closure_jit(TROPICAL, batch[0]), eager[0])


def test_closure_of_empty_graph_is_identity():
    for sr in ALL:
        a = np.full((4, 4), sr.zero, sr.dtype)
        np.testing.assert_array_equal(semiring.closure(sr, a), semiring.eye(sr, 4))
    np.testing.assert_array_equal(semiring.closure(TROPICAL, np.zeros((0, 0), np.float32)),
                                  np.zeros((0, 0)))


# -- gradients -----------------------------------------------------------------------------

SOFT_EDGES = [(0, 1), (1, 2), (0, 2), (2, 3), (1, 3), (3, 4), (2, 4), (4, 5), (3, 5), (5, 1)]


def _soft_cost(costs, temperature=0.5, source=0, target=N - 1):
    """Soft shortest-path cost ``-T log Σ_paths exp(-cost/T)`` from the LOG closure."""
    s, r = np.array(SOFT_EDGES).T
    a = jnp.full((N, N), -jnp.inf, costs.dtype).at[s, r].set(-costs / temperature)
    return -temperature * semiring.closure(LOG, a)[source, target]


@pytest.mark.parametrize("seed", [0, 1])
def test_log_closure_gradient_matches_finite_differences(seed):
    with jax.enable_x64(True):
        costs = jnp.asarray(np.random.default_rng(seed).uniform(0.5, 3.0, len(SOFT_EDGES)))
        check_grads(_soft_cost, (costs,), order=1, modes=["rev"])
        g = jax.grad(_soft_cost)(costs)
    # d(soft cost)/d(edge cost) is the expected number of uses of the edge under the Gibbs
    # distribution over paths: finite and non-negative (above 1 is possible on a cycle).
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g) >= -1e-12)


def test_soft_shortest_path_tends_to_shortest_path():
    rng = np.random.default_rng(2)
    costs = jnp.asarray(rng.uniform(1.0, 3.0, len(SOFT_EDGES)), jnp.float32)
    s, r = np.array(SOFT_EDGES).T
    hard = semiring.closure(TROPICAL, jnp.full((N, N), INF).at[s, r].set(costs))[0, N - 1]
    soft = _soft_cost(costs, temperature=0.01)
    np.testing.assert_allclose(soft, hard, atol=0.05)


# -- fixpoint ------------------------------------------------------------------------------

def source_vector(sr, source, shape=(N,)):
    return np.asarray(semiring.eye(sr, N)[source]).reshape(shape)


def fixed_edges(rng, mask, weights):
    """The edges of ``mask`` packed into a fixed capacity N*N, padded with -1."""
    s, r = np.nonzero(mask)
    cap = N * N
    senders = np.full(cap, -1, np.int32)
    receivers = np.full(cap, -1, np.int32)
    order = rng.permutation(len(s))
    senders[: len(s)], receivers[: len(s)] = s[order], r[order]
    w = np.zeros(cap, weights.dtype)
    w[: len(s)] = weights[s[order], r[order]]
    return senders, receivers, w


fixpoint_jit = jax.jit(semiring.fixpoint, static_argnums=(5,), static_argnames=("max_iter", "tol"))


@GRAPHS
@given(mask=masks(), w=int_weights(1, 9), source=st.integers(0, N - 1),
       seed=st.integers(0, 2**32 - 1))
def test_tropical_fixpoint_equals_scipy_from_source(mask, w, source, seed):
    s, r, ew = fixed_edges(np.random.default_rng(seed), mask, w)
    x, converged, steps = fixpoint_jit(TROPICAL, s, r, ew, source_vector(TROPICAL, source), N,
                                       max_iter=N + 1)
    expected = shortest_path(np.where(mask, w, 0.0), directed=True, indices=source)
    np.testing.assert_array_equal(x, expected)
    assert bool(converged) and 1 <= int(steps) <= N + 1


@pytest.mark.parametrize("sr", ALL, ids=IDS)
@GRAPHS
@given(mask=masks(), seed=st.integers(0, 2**32 - 1))
def test_fixpoint_equals_closure_rows(sr, mask, seed):
    rng = np.random.default_rng(seed)
    if sr is MAXPLUS:
        mask = np.triu(mask, k=1)  # no positive cycles: the iteration terminates
    if sr is REAL:
        a = small_real_matrix(rng, mask)
    elif sr is LOG:
        a = np.where(mask, np.log(rng.uniform(0.05, 1.0, mask.shape) / N), -INF)
    else:
        w = random_values(sr, rng, (N, N))
        a = dense(sr, mask, w if sr is BOOLEAN else np.abs(w))
    a = a.astype(sr.dtype)
    s, r, ew = fixed_edges(rng, mask, a)
    x0 = random_values(sr, rng, (N,))
    tol = None if sr.idempotent else 1e-6
    x, converged, _ = fixpoint_jit(sr, s, r, ew, x0, N, max_iter=300, tol=tol)
    expected = semiring.matmul(sr, x0[None, :], closure_jit(sr, a))[0]
    assert bool(converged)
    if sr.idempotent:
        np.testing.assert_array_equal(x, expected)
    else:
        np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-5)


def test_fixpoint_reports_non_convergence():
    chain_s = np.arange(N - 1, dtype=np.int32)  # 0 -> 1 -> ... -> N-1
    w = np.ones(N - 1, np.float32)
    x0 = source_vector(TROPICAL, 0)
    x, converged, steps = semiring.fixpoint(TROPICAL, chain_s, chain_s + 1, w, x0, N, max_iter=3)
    assert not bool(converged) and int(steps) == 3
    np.testing.assert_array_equal(x, [0, 1, 2, 3, INF, INF])
    x, converged, steps = semiring.fixpoint(TROPICAL, chain_s, chain_s + 1, w, x0, N,
                                            max_iter=N)
    assert bool(converged) and int(steps) == N  # N-1 improving steps and one that confirms
    np.testing.assert_array_equal(x, np.arange(N, dtype=np.float32))
    x, converged, steps = semiring.fixpoint(TROPICAL, chain_s, chain_s + 1, w, x0, N, max_iter=0)
    assert not bool(converged) and int(steps) == 0
    np.testing.assert_array_equal(x, x0)
    # REAL on a cycle with gain 2 diverges: never converged within max_iter.
    _, converged, steps = semiring.fixpoint(REAL, [0, 1], [1, 0], [2.0, 1.0], np.ones(N), N,
                                            max_iter=20, tol=1e-6)
    assert not bool(converged) and int(steps) == 20


def test_fixpoint_boolean_reachability_and_features():
    s = np.array([0, 1, 3, -1], np.int32)
    r = np.array([1, 2, 4, -1], np.int32)
    x0 = np.zeros((N, 2), bool)
    x0[0, 0] = x0[3, 1] = True  # two independent sources, one per feature column
    x, converged, _ = semiring.fixpoint(BOOLEAN, s, r, np.ones(4, bool), x0, N, max_iter=N)
    assert bool(converged)
    np.testing.assert_array_equal(x[:, 0], [True, True, True, False, False, False])
    np.testing.assert_array_equal(x[:, 1], [False, False, False, True, True, False])


def _soft_fixpoint(costs, temperature=0.5):
    s, r = np.array(SOFT_EDGES, np.int32).T
    x0 = jnp.full((N,), -jnp.inf, costs.dtype).at[0].set(0.0)
    x, _, _ = semiring.fixpoint(LOG, s, r, -costs / temperature, x0, N, max_iter=500, tol=1e-12)
    return -temperature * x[N - 1]


def test_log_fixpoint_gradients_by_implicit_differentiation():
    with jax.enable_x64(True):
        costs = jnp.asarray(np.random.default_rng(0).uniform(0.5, 3.0, len(SOFT_EDGES)))
        check_grads(_soft_fixpoint, (costs,), order=1, modes=["rev", "fwd"])
        np.testing.assert_allclose(_soft_fixpoint(costs), _soft_cost(costs), rtol=1e-9)
        np.testing.assert_allclose(jax.grad(_soft_fixpoint)(costs), jax.grad(_soft_cost)(costs),
                                   rtol=1e-7, atol=1e-10)


def test_log_fixpoint_gradient_with_respect_to_x0():
    s, r = np.array(SOFT_EDGES, np.int32).T
    w = -np.linspace(1.0, 2.0, len(SOFT_EDGES)).astype(np.float32)
    x0 = np.linspace(-3.0, 0.0, N).astype(np.float32)
    a = semiring.adjacency(LOG, s, r, w, N)

    @jax.jit
    def both(x0):
        via_fixpoint = jax.grad(lambda v: semiring.fixpoint(LOG, s, r, w, v, N, max_iter=200,
                                                            tol=1e-7).x[N - 1])(x0)
        via_closure = jax.grad(lambda v: semiring.matmul(LOG, v[None, :],
                                                         semiring.closure(LOG, a))[0, N - 1])(x0)
        return via_fixpoint, via_closure

    got, want = both(x0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_tropical_fixpoint_gradient_is_the_shortest_path_tree():
    rng = np.random.default_rng(8)
    s, r = np.array(SOFT_EDGES, np.int32).T
    costs = jnp.asarray(rng.uniform(0.5, 3.0, len(SOFT_EDGES)), jnp.float32)  # ties unlikely
    x0 = source_vector(TROPICAL, 0)

    def dist(c):
        return semiring.fixpoint(TROPICAL, s, r, c, x0, N, max_iter=N + 1).x

    def dist_closure(c):
        return semiring.closure(TROPICAL, jnp.full((N, N), INF).at[s, r].set(c))[0]

    jac = jax.jit(jax.jacrev(dist))(costs)
    np.testing.assert_allclose(jac, jax.jit(jax.jacrev(dist_closure))(costs), atol=1e-6)
    assert set(np.unique(np.asarray(jac))) <= {0.0, 1.0}
    np.testing.assert_allclose(jax.jit(jax.jacfwd(dist))(costs), jac, atol=1e-6)


def test_fixpoint_vmaps_over_sources():
    s, r = np.array(SOFT_EDGES, np.int32).T
    w = np.linspace(1.0, 2.0, len(SOFT_EDGES)).astype(np.float32)
    x0s = np.asarray(semiring.eye(TROPICAL, N))
    xs, conv, _ = jax.vmap(lambda x0: semiring.fixpoint(TROPICAL, s, r, w, x0, N,
                                                        max_iter=N + 1))(x0s)
    assert bool(jnp.all(conv))
    a = np.asarray(semiring.adjacency(TROPICAL, s, r, w, N))
    np.testing.assert_array_equal(xs, semiring.closure(TROPICAL, a))


# -- a user-defined semiring -----------------------------------------------------------------

def _bottleneck_star(a):
    return jnp.full(jnp.shape(a), jnp.inf, jnp.result_type(a))


BOTTLENECK = semiring.Semiring(
    name="bottleneck", add=jnp.maximum, mul=jnp.minimum, zero=-INF, one=INF,
    segment_reduce=jax.ops.segment_max,
    reduce=lambda x, axis=None: jnp.max(x, axis=axis, initial=-jnp.inf),
    star=_bottleneck_star, idempotent=True, dtype=np.dtype("float32"))


@GRAPHS
@given(mask=masks(), w=int_weights(1, 9))
def test_user_semiring_widest_paths(mask, w):
    a = dense(BOTTLENECK, mask, w)
    expected = np.where(np.eye(N, dtype=bool), INF, a.astype(np.float64))
    for k in range(N):  # Floyd-Warshall for maximum-capacity paths
        expected = np.maximum(expected, np.minimum(expected[:, k:k + 1], expected[k:k + 1, :]))
    np.testing.assert_array_equal(closure_jit(BOTTLENECK, a), expected)


# -- recompilation guards --------------------------------------------------------------------

def test_jitted_closure_traces_once():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def shortest(a):
        return semiring.closure(TROPICAL, a)

    rng = np.random.default_rng(0)
    for _ in range(4):
        shortest(dense(TROPICAL, rng.random((N, N)) < 0.5,
                       rng.integers(1, 9, (N, N)).astype(np.float32)))


def test_jitted_matmul_spmv_fixpoint_trace_once():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(a, b, s, r, w, x0):
        c = semiring.matmul(MAXPLUS, a, b, block_rows=2)
        y = semiring.spmv(LOG, s, r, w, x0, N)
        z = semiring.fixpoint(LOG, s, r, w - 5.0, x0, N, max_iter=50, tol=1e-6)
        return c, y, z

    rng = np.random.default_rng(1)
    for _ in range(3):
        s, r, w = edge_list(rng, LOG, N)
        step(random_values(MAXPLUS, rng, (5, 4)), random_values(MAXPLUS, rng, (4, 3)), s, r, w,
             random_values(LOG, rng, (N,)))


def test_eager_calls_reuse_compilations():
    rng = np.random.default_rng(2)
    semiring.closure(TROPICAL, np.zeros((5, 5), np.float32))
    before = semiring._closure_jit._cache_size()
    for _ in range(3):
        semiring.closure(TROPICAL, rng.random((5, 5)).astype(np.float32))
    assert semiring._closure_jit._cache_size() == before


# -- bad input -----------------------------------------------------------------------------

def test_shape_errors():
    sq = np.zeros((3, 3), np.float32)
    with pytest.raises(errors.ShapeError, match="square"):
        semiring.closure(TROPICAL, np.zeros((3, 4), np.float32))
    with pytest.raises(errors.ShapeError, match="matrix"):
        semiring.closure(TROPICAL, np.zeros(3, np.float32))
    with pytest.raises(errors.ShapeError, match="inner dimensions"):
        semiring.matmul(TROPICAL, np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(errors.ShapeError, match="inner dimensions"):
        semiring.matmul_reference(REAL, np.zeros((2, 3), np.float32), sq[:2])
    with pytest.raises(errors.ShapeError, match="matrix"):
        semiring.matmul(REAL, np.zeros((2, 3, 3), np.float32), sq)
    x = np.zeros(4, np.float32)
    with pytest.raises(errors.ShapeError, match="differ in length"):
        semiring.spmv(TROPICAL, [0, 1, 2], [1, 2], [1.0, 1.0], x, 4)
    with pytest.raises(errors.ShapeError, match="number of edges"):
        semiring.spmv(TROPICAL, [0, 1], [1, 2], [1.0, 1.0, 1.0], x, 4)
    with pytest.raises(errors.ShapeError, match="1-D"):
        semiring.spmv(TROPICAL, [[0, 1]], [[1, 2]], [1.0, 1.0], x, 4)
    with pytest.raises(errors.ShapeError, match="node axis"):
        semiring.spmv(TROPICAL, [0], [1], [1.0], np.float32(1), 4)
    with pytest.raises(errors.ShapeError, match=r"\[E\] or \[E, \*F\]"):
        semiring.spmv(TROPICAL, [0], [1], np.ones((1, 2), np.float32),
                      np.ones((4, 3), np.float32), 4)
    with pytest.raises(errors.ShapeError, match="x0 must be"):
        semiring.fixpoint(TROPICAL, [0], [1], [1.0], np.zeros(3, np.float32), 4, max_iter=4)
    with pytest.raises(errors.ShapeError, match="num_nodes"):
        semiring.spmv(TROPICAL, [0], [1], [1.0], x, -1)
    with pytest.raises(errors.ShapeError, match="num_nodes"):
        semiring.spmv(TROPICAL, [0], [1], [1.0], x, 4.0)
    with pytest.raises(errors.ShapeError, match="scalar weights"):
        semiring.adjacency(TROPICAL, [0], [1], np.ones((1, 2), np.float32), 4)


def test_index_errors_eager_and_checked():
    x = np.zeros(4, np.float32)
    with pytest.raises(errors.IndexOutOfRangeError, match="senders"):
        semiring.spmv(TROPICAL, [0, 4], [1, 2], [1.0, 1.0], x, 4)
    with pytest.raises(errors.IndexOutOfRangeError, match="receivers"):
        semiring.spmv(TROPICAL, [0, 1], [1, -2], [1.0, 1.0], x, 4)
    with pytest.raises(errors.IndexOutOfRangeError):
        semiring.fixpoint(TROPICAL, [0, 1], [1, 9], [1.0, 1.0], x, 4, max_iter=3)
    f = mm.checked(jax.jit(lambda s: semiring.spmv(TROPICAL, s, jnp.array([1, 2]),
                                                   jnp.ones(2), jnp.zeros(4), 4)))
    with pytest.raises(errors.IndexOutOfRangeError):
        f(jnp.array([0, 7]))
    np.testing.assert_array_equal(f(jnp.array([0, -1])), [INF, 1.0, INF, INF])


def test_dtype_errors():
    with pytest.raises(errors.DTypeError, match="must be bool"):
        semiring.closure(BOOLEAN, np.zeros((2, 2), np.float32))
    with pytest.raises(errors.DTypeError, match="is bool"):
        semiring.closure(TROPICAL, np.zeros((2, 2), bool))
    with pytest.raises(errors.DTypeError):
        semiring.matmul(REAL, np.zeros((2, 2), np.complex64), np.zeros((2, 2), np.complex64))
    with pytest.raises(errors.DTypeError, match="integers"):
        semiring.spmv(TROPICAL, [0.0], [1], [1.0], np.zeros(2, np.float32), 2)


def test_unknown_semiring_errors():
    a = np.zeros((2, 2), np.float32)
    for bad in ("tropical", tuple(TROPICAL), None):
        with pytest.raises(errors.UnknownSemiringError):
            semiring.closure(bad, a)
    with pytest.raises(TypeError, match=r"SEMIRINGS\['tropical'\]"):
        semiring.matmul("tropical", a, a)
    with pytest.raises(errors.MMSBError):
        semiring.spmv(object(), [0], [1], [1.0], a[0], 2)
    unhashable = TROPICAL._replace(name=["not", "hashable"])
    with pytest.raises(errors.UnknownSemiringError, match="hashable"):
        semiring.closure(unhashable, a)


def test_argument_errors():
    x = np.zeros(3, np.float32)
    with pytest.raises(errors.SemiringError, match="max_iter"):
        semiring.fixpoint(TROPICAL, [0], [1], [1.0], x, 3, max_iter=-1)
    with pytest.raises(errors.SemiringError, match="max_iter"):
        semiring.fixpoint(TROPICAL, [0], [1], [1.0], x, 3, max_iter=2.5)
    with pytest.raises(errors.SemiringError, match="tol"):
        semiring.fixpoint(LOG, [0], [1], [1.0], x, 3, max_iter=3, tol=-1.0)
    with pytest.raises(errors.SemiringError, match="tol"):
        semiring.fixpoint(BOOLEAN, [0], [1], [True], np.zeros(3, bool), 3, max_iter=3, tol=0.1)
    with pytest.raises(errors.SemiringError, match="block_rows"):
        semiring.matmul(TROPICAL, np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32),
                        block_rows=0)
