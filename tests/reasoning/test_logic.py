"""Horn-rule forward chaining and Datalog-style relations as BOOLEAN-semiring fixed points."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb_jax import errors
from mmsb_jax.reasoning import _logic as L

P, R, B = 10, 12, 3  # fixed capacity: propositions, rules, body atoms


def reference_chain(facts: np.ndarray, body: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Naive forward chaining in Python: fire rules until nothing changes."""
    known = set(np.nonzero(facts)[0].tolist())
    changed = True
    while changed:
        changed = False
        for b, h in zip(body.tolist(), head.tolist(), strict=True):
            if h >= 0 and h not in known and all(a in known for a in b if a >= 0):
                known.add(h)
                changed = True
    out = np.zeros(len(facts), bool)
    out[sorted(known)] = True
    return out


rule_tables = st.tuples(
    st.lists(st.lists(st.integers(-1, P - 1), min_size=B, max_size=B), min_size=R, max_size=R),
    st.lists(st.integers(-1, P - 1), min_size=R, max_size=R),
)
fact_vectors = st.lists(st.booleans(), min_size=P, max_size=P)


@jax.jit
@chex.assert_max_traces(n=1)
def _chain(facts: jax.Array, body: jax.Array, head: jax.Array) -> L.HornResult:
    return L.horn_fixpoint(facts, L.HornRules(body, head))


@settings(max_examples=40, deadline=None)
@given(rule_tables, fact_vectors)
def test_horn_fixpoint_matches_naive_chaining(table: tuple, facts: list[bool]) -> None:
    body, head = np.asarray(table[0], np.int32), np.asarray(table[1], np.int32)
    facts = np.asarray(facts)
    result = _chain(jnp.asarray(facts), jnp.asarray(body), jnp.asarray(head))
    np.testing.assert_array_equal(np.asarray(result.facts), reference_chain(facts, body, head))
    assert int(result.rounds) <= P + 1


@settings(max_examples=30, deadline=None)
@given(rule_tables, fact_vectors, fact_vectors)
def test_horn_fixpoint_laws(table: tuple, facts: list[bool], more: list[bool]) -> None:
    """Least fixed point: contains the facts, closed under the rules, monotone, idempotent."""
    body, head = jnp.asarray(table[0], jnp.int32), jnp.asarray(table[1], jnp.int32)
    small = np.asarray(facts)
    large = small | np.asarray(more)
    x = np.asarray(_chain(jnp.asarray(small), body, head).facts)
    y = np.asarray(_chain(jnp.asarray(large), body, head).facts)
    assert np.all(x >= small)
    for b, h in zip(np.asarray(body).tolist(), np.asarray(head).tolist(), strict=True):
        if h >= 0 and all(x[a] for a in b if a >= 0):
            assert x[h]
    assert np.all(y >= x)  # monotone in the facts
    np.testing.assert_array_equal(np.asarray(_chain(jnp.asarray(x), body, head).facts), x)


def test_horn_named_rules_and_depth() -> None:
    names = ["rain", "cold", "wet", "slippery", "sun", "always"]
    rules = L.horn_rules([("wet", ["rain"]), ("slippery", ["wet", "cold"]), ("always", []),
                          ("sun", ["sun", "rain"])], names=names)
    assert rules.body.shape == (4, 2)
    result = L.horn_fixpoint(jnp.array([True, True, False, False, False, False]), rules)
    assert np.asarray(result.facts).tolist() == [True, True, True, True, False, True]
    assert np.asarray(result.depth).tolist() == [0, 0, 1, 2, -1, 1]
    assert int(result.rounds) == 3  # two rounds that derive, one that confirms


def test_horn_padding_and_vmap() -> None:
    rules = L.horn_rules([(1, [0]), (2, [1, 0])], max_body=4)
    assert rules.body.tolist() == [[0, -1, -1, -1], [1, 0, -1, -1]]
    disabled = L.HornRules(rules.body, jnp.array([1, -1], jnp.int32))
    got = L.horn_fixpoint(jnp.array([True, False, False]), disabled).facts
    assert np.asarray(got).tolist() == [True, True, False]
    batch = jnp.array([[True, False, False], [False, True, False], [False, False, False]])
    out = jax.vmap(L.horn_fixpoint, in_axes=(0, None))(batch, rules).facts
    assert np.asarray(out).tolist() == [[True, True, True], [False, True, False],
                                        [False, False, False]]


def test_horn_bad_input() -> None:
    rules = L.horn_rules([(1, [0])])
    with pytest.raises(errors.DTypeError):
        L.horn_fixpoint(jnp.array([1, 0]), rules)
    with pytest.raises(errors.ShapeError):
        L.horn_fixpoint(jnp.zeros((2, 2), bool), rules)
    with pytest.raises(errors.InvalidProblemError, match="outside"):
        L.horn_fixpoint(jnp.zeros((1,), bool), rules)  # atom 1 with P = 1
    with pytest.raises(errors.InvalidProblemError):
        L.horn_fixpoint(jnp.zeros((2,), bool), ([[0]], [1]))  # type: ignore[arg-type]
    with pytest.raises(errors.DTypeError):
        L.horn_fixpoint(jnp.zeros((2,), bool), L.HornRules(jnp.zeros((1, 1)), jnp.ones(1)))
    with pytest.raises(errors.ShapeError):
        L.horn_fixpoint(jnp.zeros((2,), bool),
                        L.HornRules(jnp.zeros((2, 1), jnp.int32), jnp.ones(1, jnp.int32)))
    with pytest.raises(errors.InvalidProblemError, match="unknown"):
        L.horn_rules([("a", ["b"])], names=["a"])
    with pytest.raises(errors.InvalidProblemError, match="outside"):
        L.horn_rules([(3, [0])], num_props=2)
    with pytest.raises(errors.InvalidProblemError, match="max_body"):
        L.horn_rules([(0, [1, 2, 3])], max_body=2)
    with pytest.raises(errors.InvalidProblemError, match="pair"):
        L.horn_rules([(0,)])
    with pytest.raises(errors.InvalidProblemError):
        L.horn_rules([(0.5, [1])])


N = 9  # fixed node count for the relation tests: one compilation


def _dag(n: int, bits: list[bool]) -> nx.DiGraph:
    """A DAG whose edges go from lower to higher node ids (then relabelled by a shuffle)."""
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    g.add_edges_from(p for p, b in zip(pairs, bits, strict=True) if b)
    return g


def _matrix(g: nx.DiGraph, n: int) -> np.ndarray:
    a = np.zeros((n, n), bool)
    for u, v in g.edges:
        a[u, v] = True
    return a


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=N * (N - 1) // 2, max_size=N * (N - 1) // 2),
       st.permutations(range(N)))
def test_ancestors_and_descendants_match_networkx_on_dags(bits: list[bool],
                                                          perm: list[int]) -> None:
    g = nx.relabel_nodes(_dag(N, bits), dict(enumerate(perm)))
    edges = jnp.asarray(_matrix(g, N))
    anc = np.asarray(L.ancestors(edges))
    desc = np.asarray(L.descendants(edges))
    for v in range(N):
        assert set(np.nonzero(anc[v])[0].tolist()) == nx.ancestors(g, v)
        assert set(np.nonzero(desc[v])[0].tolist()) == nx.descendants(g, v)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=N * N, max_size=N * N), st.sampled_from([False, True,
                                                                                 None]))
def test_transitive_closure_matches_networkx_with_cycles(bits: list[bool],
                                                         reflexive: bool | None) -> None:
    a = np.asarray(bits).reshape(N, N)
    g = nx.DiGraph()
    g.add_nodes_from(range(N))
    g.add_edges_from(zip(*np.nonzero(a), strict=True))
    expect = _matrix(nx.transitive_closure(g, reflexive=reflexive), N)
    got = np.asarray(L.transitive_closure(jnp.asarray(a), reflexive=reflexive))
    np.testing.assert_array_equal(got, expect)
    anc = np.asarray(L.ancestors(jnp.asarray(a)))
    desc = np.asarray(L.descendants(jnp.asarray(a)))
    for v in range(N):  # cycles and self-loops included
        assert set(np.nonzero(anc[v])[0].tolist()) == nx.ancestors(g, v)
        assert set(np.nonzero(desc[v])[0].tolist()) == nx.descendants(g, v)


def test_relations_under_jit_compile_once() -> None:
    @jax.jit
    @chex.assert_max_traces(n=1)
    def query(edges: jax.Array) -> jax.Array:
        return L.ancestors(edges)

    rng = np.random.default_rng(0)
    for _ in range(3):
        a = np.triu(rng.random((N, N)) < 0.3, k=1)
        np.testing.assert_array_equal(np.asarray(query(jnp.asarray(a))),
                                      np.asarray(L.ancestors(jnp.asarray(a))))


def test_relation_bad_input() -> None:
    with pytest.raises(errors.DTypeError):
        L.transitive_closure(jnp.zeros((3, 3), jnp.int32))
    with pytest.raises(errors.ShapeError):
        L.ancestors(jnp.zeros((3, 2), bool))
    with pytest.raises(errors.ShapeError):
        L.descendants(jnp.zeros((3,), bool))


def test_horn_internal_jit_compiles_once_per_capacity() -> None:
    rules = L.horn_rules([(1, [0]), (2, [1, 0])], max_body=3)
    L.horn_fixpoint(jnp.array([True, False, False]), rules)
    size = L._horn_jit._cache_size()
    other = L.horn_rules([(0, [2]), (1, [0, 2, 1])], max_body=3)
    for facts in ([False, False, True], [True, True, False]):
        L.horn_fixpoint(jnp.array(facts), other)
    assert L._horn_jit._cache_size() == size
