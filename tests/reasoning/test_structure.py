"""Structural inference of page dependencies from co-change logs."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax.reasoning import _structure as S


def planted(seed: int, pages: int = 20, p: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """A random DAG: (its direct edges = transitive reduction, reflexive reachability)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(pages)
    g = nx.DiGraph()
    g.add_nodes_from(range(pages))
    g.add_edges_from((int(order[i]), int(order[j])) for i in range(pages)
                     for j in range(i + 1, pages) if rng.random() < p)
    edges = np.zeros((pages, pages), bool)
    for u, v in nx.transitive_reduction(g).edges:
        edges[u, v] = True
    reach = np.eye(pages, dtype=bool)
    for u in range(pages):
        reach[u, list(nx.descendants(g, u))] = True
    return edges, reach


def simulate(reach: np.ndarray, commits: int, drop: float, spurious: float,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each commit changes a uniform source page and all its descendants, plus flip noise."""
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, reach.shape[0], commits)
    changes = reach[sources].copy()
    changes &= ~(rng.random(changes.shape) < drop)
    changes |= rng.random(changes.shape) < spurious
    return changes, sources


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infer_dependencies_on_planted_graph_with_noise(seed: int) -> None:
    """5% dropped and 5% spurious changes, 2000 commits, 20 pages: P and R >= 0.9."""
    edges, reach = planted(1000 + seed)
    changes, sources = simulate(reach, 2000, 0.05, 0.05, seed)
    fit = S.infer_dependencies(changes)
    precision, recall = S.edge_precision_recall(edges, fit.edges)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert abs(float(fit.drop_rate) - 0.05) < 0.02
    assert abs(float(fit.spurious_rate) - 0.05) < 0.02
    assert np.mean(np.asarray(fit.sources) == sources) > 0.8
    # The reachability is the closure of the edges, and the edges are a DAG.
    closure = np.asarray(mm.reasoning.transitive_closure(fit.edges))
    np.testing.assert_array_equal(closure, np.asarray(fit.reachability))
    assert not np.any(np.diag(closure))


def test_noise_free_logs_are_recovered_exactly() -> None:
    edges, reach = planted(7)
    changes, _ = simulate(reach, 600, 0.0, 0.0, 7)
    fit = S.infer_dependencies(changes)
    np.testing.assert_array_equal(np.asarray(fit.edges), edges)
    np.testing.assert_array_equal(np.asarray(fit.reachability), reach & ~np.eye(20, dtype=bool))
    baseline = S.cochange_dependencies(changes, threshold=1.0)
    np.testing.assert_array_equal(np.asarray(baseline), edges)


def test_one_compile_for_many_logs() -> None:
    @jax.jit
    @chex.assert_max_traces(n=1)
    def fit(changes: jax.Array) -> S.DependencyFit:
        return S.infer_dependencies(changes)

    for seed in range(3):
        _, reach = planted(50 + seed)
        changes, _ = simulate(reach, 500, 0.02, 0.02, seed)
        got = fit(jnp.asarray(changes))
        np.testing.assert_array_equal(np.asarray(got.edges),
                                      np.asarray(S.infer_dependencies(changes).edges))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=12 * 5, max_size=12 * 5))
def test_cochange_stats_match_numpy(bits: list[bool]) -> None:
    c = np.asarray(bits).reshape(12, 5)
    s = S.cochange_stats(c)
    x = c.astype(np.float64)
    counts = x.sum(0)
    joint = x.T @ x
    assert int(s.num_commits) == 12
    np.testing.assert_array_equal(np.asarray(s.counts), counts)
    np.testing.assert_array_equal(np.asarray(s.joint), joint)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(counts[:, None] > 0, joint / counts[:, None], 0.0)
        lift = np.where(joint > 0, joint * 12 / (counts[:, None] * counts[None, :]), 0.0)
        pmi = np.where(joint > 0, np.log(lift), -np.inf)
    np.testing.assert_allclose(np.asarray(s.conditional), cond, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.lift), lift, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.pmi), pmi, rtol=1e-5, atol=1e-6)


N = 9


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=N * (N - 1) // 2, max_size=N * (N - 1) // 2),
       st.permutations(range(N)))
def test_transitive_reduction_matches_networkx(bits: list[bool], perm: list[int]) -> None:
    g = nx.DiGraph()
    g.add_nodes_from(range(N))
    pairs = [(i, j) for i in range(N) for j in range(i + 1, N)]
    g.add_edges_from((perm[i], perm[j]) for (i, j), b in zip(pairs, bits, strict=True) if b)
    a = np.zeros((N, N), bool)
    for u, v in g.edges:
        a[u, v] = True
    expect = np.zeros((N, N), bool)
    for u, v in nx.transitive_reduction(g).edges:
        expect[u, v] = True
    np.testing.assert_array_equal(np.asarray(S.transitive_reduction(jnp.asarray(a))), expect)
    # Reducing the closure gives the same edges.
    closed = np.asarray(mm.reasoning.transitive_closure(jnp.asarray(a)))
    np.testing.assert_array_equal(np.asarray(S.transitive_reduction(jnp.asarray(closed))),
                                  expect)


def test_transitive_reduction_drops_cycles() -> None:
    a = np.zeros((4, 4), bool)
    a[0, 1] = a[1, 0] = True  # 0 <-> 1: direction unknown
    a[1, 2] = a[2, 3] = True
    got = np.asarray(S.transitive_reduction(jnp.asarray(a)))
    expect = np.zeros((4, 4), bool)
    expect[0, 2] = expect[1, 2] = expect[2, 3] = True
    np.testing.assert_array_equal(got, expect)


def test_cochange_baseline_statistics() -> None:
    """Each statistic's relation, oriented rare -> frequent and reduced, as networkx does it."""
    _, reach = planted(3)
    changes, _ = simulate(reach, 800, 0.03, 0.03, 3)
    x = changes.astype(np.float64)
    counts = x.sum(0)
    joint = x.T @ x
    lift = joint * len(x) / np.maximum(counts[:, None] * counts[None, :], 1)
    scores = {"conditional": (joint / np.maximum(counts[:, None], 1), 0.8),
              "lift": (lift, 1.3), "pmi": (np.log(np.maximum(lift, 1e-30)), 0.25)}
    index = np.arange(len(counts))
    upstream = (counts[:, None] < counts[None, :]) | (
        (counts[:, None] == counts[None, :]) & (index[:, None] < index[None, :]))
    for statistic, (score, threshold) in scores.items():
        related = (score >= threshold) & (joint > 0) & upstream
        g = nx.DiGraph()
        g.add_nodes_from(range(len(counts)))
        g.add_edges_from(zip(*np.nonzero(related), strict=True))
        expect = np.zeros_like(related)
        for u, v in nx.transitive_reduction(g).edges:
            expect[u, v] = True
        got = np.asarray(S.cochange_dependencies(changes, statistic=statistic,
                                                 threshold=threshold))
        np.testing.assert_array_equal(got, expect, err_msg=statistic)
    with pytest.raises(errors.InvalidProblemError, match="statistic"):
        S.cochange_dependencies(changes, statistic="jaccard")


def test_changes_from_commits() -> None:
    changes, names = S.changes_from_commits([["b", "a"], [], ["c"]])
    assert names == ("a", "b", "c")
    assert changes.astype(int).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    changes, names = S.changes_from_commits([{"x"}], pages=["y", "x"])
    assert names == ("y", "x") and changes.tolist() == [[False, True]]
    with pytest.raises(errors.UnknownPageError, match="'z'"):
        S.changes_from_commits([{"z"}], pages=["x"])
    with pytest.raises(errors.InvalidProblemError):
        S.changes_from_commits(["ab"])
    with pytest.raises(errors.InvalidProblemError):
        S.changes_from_commits([{"x"}], pages=["x", "x"])


def test_changes_from_log(tmp_path: object) -> None:
    from mmsb_jax.store.tlog import TLog

    schema = mm.Schema([mm.PageSpec("a", (4,), "int32"), mm.PageSpec("b", (4,), "int32")])
    row = np.array([1], np.int32)
    val = np.array([5], np.int32)
    with TLog.open(tmp_path, schema, sync="never") as log:
        log.append(1, [mm.Delta.rows("a", row, val)], derived=("total",))
        log.append(2, [mm.Delta.rows("b", row, val), mm.Delta.rows("a", row, val)])
    changes, names = S.changes_from_log(tmp_path)
    assert names == ("a", "b", "total")
    assert changes.astype(int).tolist() == [[1, 0, 1], [1, 1, 0]]
    changes, names = S.changes_from_log(tmp_path, pages=["a", "b"], include_derived=False)
    assert changes.astype(int).tolist() == [[1, 0], [1, 1]]


def test_bad_inputs() -> None:
    with pytest.raises(errors.DTypeError):
        S.infer_dependencies(np.zeros((4, 3), np.int32))
    with pytest.raises(errors.ShapeError):
        S.infer_dependencies(np.zeros((4,), bool))
    with pytest.raises(errors.ShapeError):
        S.cochange_stats(np.zeros((0, 3), bool))
    with pytest.raises(errors.InvalidProblemError):
        S.infer_dependencies(np.zeros((4, 3), bool), init_steps=-1)
    with pytest.raises(errors.InvalidProblemError):
        S.infer_dependencies(np.zeros((4, 3), bool), max_flips=1.5)  # type: ignore[arg-type]
    with pytest.raises(errors.DTypeError):
        S.transitive_reduction(np.zeros((3, 3), np.float32))
    with pytest.raises(errors.ShapeError):
        S.transitive_reduction(np.zeros((3, 2), bool))
    with pytest.raises(errors.ShapeError):
        S.edge_precision_recall(np.zeros((3, 3), bool), np.zeros((2, 2), bool))


def test_edge_precision_recall() -> None:
    truth = np.zeros((3, 3), bool)
    truth[0, 1] = truth[1, 2] = True
    pred = np.zeros((3, 3), bool)
    pred[0, 1] = pred[0, 2] = True
    assert S.edge_precision_recall(truth, pred) == (0.5, 0.5)
    assert S.edge_precision_recall(truth, np.zeros((3, 3), bool)) == (1.0, 0.0)


def test_statistics_compile_once_per_shape() -> None:
    rng = np.random.default_rng(0)
    logs = [rng.random((40, 6)) < 0.3 for _ in range(3)]
    S.cochange_stats(logs[0])
    S.cochange_dependencies(logs[0], threshold=0.5)
    sizes = (S._stats_jit._cache_size(), S._cochange_dependencies_jit._cache_size())
    for log, threshold in zip(logs[1:], (0.6, 0.7), strict=True):
        S.cochange_stats(log)
        S.cochange_dependencies(log, threshold=threshold)
    assert (S._stats_jit._cache_size(), S._cochange_dependencies_jit._cache_size()) == sizes
