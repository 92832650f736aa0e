"""Causal structure inference: writes + changes of a log, Bus logs, interventional probes."""

from __future__ import annotations

import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax.reasoning import _causal as C
from mmsb_jax.reasoning import _structure as S


def chain_log(seed: int, commits: int = 400, noise: float = 0.0):
    """Two chains 0->1->2 and 3->4->5 (pages shuffled); each commit writes one page."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(6)
    truth = np.zeros((6, 6), bool)
    for a, b in ((0, 1), (1, 2), (3, 4), (4, 5)):
        truth[labels[a], labels[b]] = True
    reach = np.asarray(mm.reasoning.transitive_closure(truth)) | np.eye(6, dtype=bool)
    src = rng.integers(0, 6, commits)
    written = np.eye(6, dtype=bool)[src]
    changed = reach[src].copy()
    flip = (rng.random(changed.shape) < noise) & ~written
    return truth, written, changed ^ flip


@pytest.mark.parametrize("seed", [0, 1])
def test_small_planted_graph_recovered_exactly(seed: int) -> None:
    truth, written, changed = chain_log(seed)
    fit = C.infer_causal(written, changed)
    np.testing.assert_array_equal(fit.edges, truth)
    assert fit.strength[truth].min() > 0.9


def test_noisy_log_still_recovered() -> None:
    truth, written, changed = chain_log(3, commits=800, noise=0.05)
    fit = C.infer_causal(written, changed)
    assert C.infer_causal(C.ChangeLog(written, changed, ()))[0].tolist() == fit.edges.tolist()
    p, r = S.edge_precision_recall(truth, fit.edges)
    assert p >= 0.9 and r >= 0.9, (p, r)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_search_recovers_planted_graphs(seed: int) -> None:
    truth, written, changed = chain_log(seed)
    fit = C.infer_causal(written, changed, search="exact")
    np.testing.assert_array_equal(fit.edges, truth)
    assert fit.strength[truth].min() > 0.9 and not fit.strength[~truth].any()
    truth, written, changed = chain_log(3, commits=800, noise=0.05)
    p, r = S.edge_precision_recall(truth, C.infer_causal(written, changed,
                                                         search="exact").edges)
    assert p >= 0.9 and r >= 0.9, (p, r)


def test_exact_search_refuses_too_many_parent_sets() -> None:
    rng = np.random.default_rng(0)
    w = rng.random((40, 40)) < 0.5
    c = np.zeros((40, 40), bool)
    c[:, 39] = True  # never written: every other page is a candidate (C(39, k), k <= 6)
    w[:, 39] = False
    with pytest.raises(errors.InvalidProblemError, match="max_exact_parents"):
        C.infer_causal(w, c, order=list(range(40)), search="exact", max_exact_parents=6,
                       min_writes=100)
    with pytest.raises(errors.InvalidProblemError):
        C.infer_causal(w, c, search="bfs")


def bus_graph() -> mm.Graph:
    schema = mm.Schema([mm.PageSpec(n, (4,), "float32") for n in ("a", "b", "z")])
    g = mm.Graph(schema)
    g = g.derive("s", ("a", "b"), lambda a, b: jnp.clip(a + b, -1.0, 1.0))
    g = g.derive("t", ("s",), lambda s: jnp.round(2.0 * s))
    return g.derive("u", ("a", "t"), lambda a, t: a * 0.5 + t)  # a -> u is also direct


def truth_of(graph: mm.Graph) -> np.ndarray:
    index = {n: i for i, n in enumerate(graph.schema.names)}
    out = np.zeros((len(index), len(index)), bool)
    for x, y in graph.edges:
        out[index[x], index[y]] = True
    return out


@pytest.fixture
def bus(tmp_path):
    graph = bus_graph()
    rng = np.random.default_rng(0)
    with mm.Bus.open(tmp_path / "bus", graph=graph, sync="never") as b:
        txns = []
        for _ in range(300):
            page = ["a", "b", "z"][int(rng.integers(3))]  # z: no dependants
            txns.append([mm.Delta.rows(page, np.array([rng.integers(4)], np.int32),
                                       rng.normal(size=(1,)).astype(np.float32))])
        b.commit_many(txns)
        yield b


def test_changelog_from_bus_and_inference(bus) -> None:
    log = C.changelog_from_bus(bus)
    assert log.names == bus.graph.schema.names and log.order == tuple(range(6))
    assert log.written.shape == (300, 6) and not log.written[:, 3:].any()
    assert log.written.sum(1).tolist() == [1] * 300
    # cut-off: t changes less often than s (rounding), derived changes never exceed writes
    counts = log.changed.sum(0)
    assert counts[4] < counts[3] <= 300
    fit = C.infer_causal(log)
    truth = truth_of(bus.graph)
    p, r = S.edge_precision_recall(truth, fit.edges)
    assert p == 1.0 and r >= 0.75, (p, r, fit.edges.astype(int))
    p, r = S.edge_precision_recall(truth, C.infer_causal(log, search="exact").edges)
    assert p == 1.0 and r >= 0.75, (p, r)
    # without a graph the DERIVED records (recomputed pages) stand in for the changes
    plain = C.changelog_from_bus(bus.log)
    assert plain.changed[:, 3:].sum() > log.changed[:, 3:].sum() and plain.order is None


def test_probes_recover_graph_exactly_and_leave_the_log_alone(bus) -> None:
    files = sorted(p for p in bus.log.path.rglob("*") if p.is_file())
    before = [p.read_bytes() for p in files]
    seq, state_a = bus.seq, bus.read("a")
    result = C.probe_bus(bus, seq=bus.seq - 10, key=1)
    truth = truth_of(bus.graph)
    np.testing.assert_array_equal(result.edges, truth)  # a -> u kept: probed with t held
    reduced = C.probe_bus(bus, key=1, direct=False)
    np.testing.assert_array_equal(reduced.edges, np.asarray(S.transitive_reduction(truth)))
    assert bus.seq == seq and np.array_equal(bus.read("a"), state_a)
    after = sorted(p for p in bus.log.path.rglob("*") if p.is_file())
    assert after == files and [p.read_bytes() for p in after] == before


def context_graph() -> mm.Graph:
    """Inputs that matter only in some states: a gate that is closed, a collision that does
    not happen, and an input that every finite change is cut off from (``0 * x``)."""
    schema = mm.Schema([mm.PageSpec("gate", (4,), "float32"), mm.PageSpec("x", (4,), "float32"),
                        mm.PageSpec("pos", (6,), "float32"), mm.PageSpec("on", (6,), "bool")])
    g = mm.Graph(schema)
    g = g.derive("gated", ("gate", "x"), lambda gate, x: jnp.where(gate > 0.0, x, 0.0))
    g = g.derive("zero", ("x",), lambda x: jnp.where(x > 0, 0.0 * x, 0.0))

    def crowded(pos, on):  # some two live entries closer than 1e-2
        d = jnp.abs(pos[:, None] - pos[None, :]) + jnp.eye(6) * 1e9
        return jnp.any((d < 1e-2) & on[:, None] & on[None, :])

    return g.derive("crowded", ("pos", "on"), crowded)


def test_probe_contexts_find_inputs_the_given_state_hides() -> None:
    graph = context_graph()
    state = mm.init_state(graph.base)
    state = state.with_pages({"gate": -jnp.ones(4), "pos": jnp.arange(6.0) * 10.0,
                              "on": jnp.zeros(6, bool)})
    truth = truth_of(graph)
    bare = C.probe_dependencies(graph, state, contexts=0, nonfinite=False)
    names = bare.names
    missed = {(names[u], names[v]) for u, v in zip(*np.nonzero(truth & ~bare.edges), strict=True)}
    assert {("x", "gated"), ("x", "zero"), ("pos", "crowded")} <= missed
    assert not (bare.edges & ~truth).any() and bare.contexts == 1
    full = C.probe_dependencies(graph, state)
    np.testing.assert_array_equal(full.edges, truth)
    assert full.contexts == 5 and full.probes > bare.probes
    # two given states: the second opens the gate, still no synthetic context needed for it
    open_gate = state.with_pages({"gate": jnp.ones(4)})
    two = C.probe_dependencies(graph, [state, open_gate], contexts=0, nonfinite=False)
    assert two.edges[names.index("x"), names.index("gated")] and two.contexts == 2


def test_probe_bus_over_several_seqs(bus) -> None:
    one = C.probe_bus(bus, seq=bus.seq - 10, key=1, contexts=0)
    many = C.probe_bus(bus, seq=[bus.seq - 10, bus.seq - 5, bus.seq], key=1, contexts=0)
    assert many.contexts == 3 and one.contexts == 1
    assert not (one.edges & ~many.edges).any()  # more states only add (true) edges
    np.testing.assert_array_equal(many.edges, truth_of(bus.graph))


def test_bad_inputs_raise_typed_errors(bus) -> None:
    w = np.zeros((5, 3), bool)
    with pytest.raises(errors.DTypeError):
        C.infer_causal(w.astype(int), w)
    with pytest.raises(errors.ShapeError):
        C.infer_causal(w, np.zeros((5, 2), bool))
    with pytest.raises(errors.ShapeError):
        C.infer_causal(np.zeros((5,), bool), np.zeros((5,), bool))
    with pytest.raises(errors.InvalidProblemError):
        C.infer_causal(w)
    with pytest.raises(errors.InvalidProblemError):
        C.infer_causal(w, w, order=[0, 0, 1])
    with pytest.raises(errors.InvalidProblemError):
        C.infer_causal(w, w, alpha=2.0)
    with pytest.raises(errors.UnknownPageError):
        C.changelog_from_sets([{"x"}], [{"y"}], pages=["x"])
    with pytest.raises(errors.InvalidProblemError):
        C.changelog_from_sets([{"x"}], [], pages=["x"])
    with pytest.raises(errors.InvalidProblemError):
        C.changelog_from_bus(bus, start=5, stop=2)
    with pytest.raises(errors.InvalidProblemError):
        C.changelog_from_bus(object())
    with pytest.raises(errors.GraphError):
        C.probe_dependencies("not a graph", None)
    with pytest.raises(errors.InvalidProblemError):
        C.probe_dependencies(bus.graph, bus.state, num_probes=0)
    with pytest.raises(errors.InvalidProblemError):
        C.probe_dependencies(bus.graph, bus.state, contexts=-1)
    with pytest.raises(errors.InvalidProblemError):
        C.probe_dependencies(bus.graph, [])
    with pytest.raises(errors.InvalidProblemError):
        C.probe_bus(bus, seq=[])
    with pytest.raises(errors.UnknownSeqError):
        C.probe_bus(bus, seq=10_000)
    with pytest.raises(errors.UnknownSeqError):
        C.probe_bus(bus, seq=[1, 10_000])


def test_changelog_from_sets() -> None:
    log = C.changelog_from_sets([["a"], []], [["b"], ["b"]], pages=["a", "b"])
    assert log.written.astype(int).tolist() == [[1, 0], [0, 0]]
    assert log.changed.astype(int).tolist() == [[1, 1], [0, 1]]


def test_jitted_fits_compile_once_per_shape() -> None:
    logs = [chain_log(s, commits=200) for s in range(3)]
    C.infer_causal(logs[0][1], logs[0][2])
    sizes = (C._reach_fit._cache_size(), C._grow_step._cache_size(),
             C._shrink_step._cache_size())
    for _, w, c in logs[1:]:
        C.infer_causal(w, c)
    assert (C._reach_fit._cache_size(), C._grow_step._cache_size(),
            C._shrink_step._cache_size()) == sizes


N = 7


@settings(max_examples=25, deadline=None)
@given(st.lists(st.booleans(), min_size=N * (N - 1) // 2, max_size=N * (N - 1) // 2),
       st.permutations(range(N)))
def test_transitive_reduction_idempotent_and_reach_preserving(bits, perm) -> None:
    pairs = [(i, j) for i in range(N) for j in range(i + 1, N)]
    a = np.zeros((N, N), bool)
    for (i, j), b in zip(pairs, bits, strict=True):
        a[perm[i], perm[j]] = b
    red = np.asarray(S.transitive_reduction(jnp.asarray(a)))
    np.testing.assert_array_equal(np.asarray(S.transitive_reduction(jnp.asarray(red))), red)
    closure = mm.reasoning.transitive_closure
    np.testing.assert_array_equal(np.asarray(closure(jnp.asarray(red))),
                                  np.asarray(closure(jnp.asarray(a))))
    assert not (red & ~a).any()
    g = nx.DiGraph(np.argwhere(a).tolist())
    g.add_nodes_from(range(N))
    assert int(red.sum()) == nx.transitive_reduction(g).number_of_edges()
