"""Graph rewriting: fuse_chains and drop_dead keep propagated values bit-identical."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import mmsb_jax as mm
from mmsb_jax import adaptive as A
from mmsb_jax.errors import GraphError, SchemaMismatchError, UnknownPageError

BASE = mm.Schema([mm.PageSpec("a", (8,), "int32"), mm.PageSpec("f", (8,), "float32")])


def _int_ops():
    return [lambda v: v * 3 + 1, lambda v: v ^ 5, lambda v: jnp.cumsum(v) % 97,
            lambda v: jnp.roll(v, 1) - v]


def _chain_graph():
    """a -> b1 -> b2 -> b3 (chain); b2 -> dbg (dead); f -> g1 -> g2 (float chain);
    (b3, g2) -> out; b1 also read by side (so b1 has two readers)."""
    ops = _int_ops()
    g = mm.Graph(BASE)
    g = g.derive("b1", ("a",), ops[0]).derive("b2", ("b1",), ops[1])
    g = g.derive("b3", ("b2",), ops[2]).derive("dbg", ("b2",), ops[3])
    g = g.derive("side", ("b1", "a"), jnp.subtract)
    g = g.derive("g1", ("f",), lambda x: jnp.sin(x) * 1.5 + 0.25)
    g = g.derive("g2", ("g1",), lambda x: jnp.exp(-x * x) / (1.0 + x))
    g = g.derive("out", ("b3", "g2", "f"),
                 lambda i, x, y: i.astype(jnp.float32) * x + jnp.tanh(y))
    return g.derive("iout", ("b3",), lambda v: v * 2 - 1)




def _run(g, a, f, state=None):
    s = mm.init_state(g.schema) if state is None else state
    s = mm.apply_batch(s, [mm.Delta.full("a", jnp.asarray(a, jnp.int32)),
                           mm.Delta.full("f", jnp.asarray(f, jnp.float32))])
    return mm.propagate(g, s, ("a", "f"))


def _same(s1, s2, names):
    """Integer pages bit-identical; float pages equal up to rounding (see _rewrite docs)."""
    for n in names:
        x, y = np.asarray(s1.pages[n]), np.asarray(s2.pages[n])
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=n)
        else:
            assert np.array_equal(x, y), n
        assert int(s1.epochs[n]) == int(s2.epochs[n]), n


def test_drop_dead_removes_unread_pages():
    g = _chain_graph()
    assert A.live_pages(g, ("out",)) == ("b1", "b2", "b3", "g1", "g2", "out")
    g2 = A.drop_dead(g, ("out",))
    assert set(g2.derived) == {"b1", "b2", "b3", "g1", "g2", "out"}
    a, f = np.arange(8), np.linspace(-1, 1, 8)
    s1, s2 = _run(g, a, f), _run(g2, a, f)
    for n in g2.schema.names:  # dropping pages changes nothing a kept page computes
        assert np.array_equal(np.asarray(s1.pages[n]), np.asarray(s2.pages[n])), n
    assert A.drop_dead(g, ("a",)).derived == ()
    assert set(A.drop_dead(g, ("side", "dbg")).derived) == {"b1", "b2", "side", "dbg"}


def test_fuse_chains_collapses_single_reader_chains():
    g = A.drop_dead(_chain_graph(), ("out",))
    g2 = A.fuse_chains(g, keep=("out",))
    assert g2.derived == ("out",)
    assert g2.inputs("out") == ("a", "f")
    both = A.fuse_chains(A.drop_dead(_chain_graph(), ("out", "iout")), keep=("out", "iout"))
    assert both.derived == ("b3", "out", "iout") and both.inputs("b3") == ("a",)
    # b1 has two readers in the full graph: it stays, the rest of its chain folds into b3
    full = A.fuse_chains(_chain_graph(), keep=("out", "side", "dbg", "iout"))
    assert set(full.derived) == {"b1", "b2", "b3", "dbg", "side", "out", "iout"}
    assert full.inputs("out") == ("b3", "f") and full.inputs("b3") == ("b2",)
    a, f = np.arange(8) - 3, np.linspace(-2, 2, 8)
    _same(_run(_chain_graph(), a, f), _run(full, a, f), full.derived)


def test_keep_and_signals_block_fusion():
    g = A.drop_dead(_chain_graph(), ("out",))
    kept = A.fuse_chains(g, keep=("out", "b2"))
    assert "b2" in kept.derived and "b1" not in kept.derived
    assert kept.inputs("b2") == ("a",)
    sig = A.fuse_chains(g.signal("g1", "b3"), keep=("out",))
    assert {"g1", "b3"} <= set(sig.derived) and sig.signals == (("g1", "b3"),)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=8, max_size=8),
       st.lists(st.floats(-3, 3, width=32), min_size=8, max_size=8),
       st.lists(st.integers(-1000, 1000), min_size=8, max_size=8))
def test_rewritten_graph_is_bit_identical_over_commits(a1, f1, a2):
    """Two commits in a row (the second with early cut-off chances): values and epochs equal,
    the integer output bit for bit, the float output up to rounding."""
    g = _chain_graph()
    outs = ("out", "iout")
    g2 = A.fuse_chains(A.drop_dead(g, outs), keep=outs)
    s1 = _run(g, a1, f1)
    s2 = _run(g2, a1, f1)
    _same(s1, s2, outs)
    s1 = _run(g, a2, f1, s1)
    s2 = _run(g2, a2, f1, s2)
    _same(s1, s2, outs)


def test_fused_chain_early_cutoff_epochs_match():
    # b1 = a // 4 is unchanged when a moves inside a bucket: the original cuts off below b1;
    # the fused page recomputes but its value is equal, so its epoch does not advance either.
    g = mm.Graph(BASE).derive("b1", ("a",), lambda v: v // 4).derive("b2", ("b1",),
                                                                   lambda v: v * 7)
    g2 = A.fuse_chains(g, keep=("b2",))
    assert g2.derived == ("b2",)
    s1 = _run(g, np.arange(8) * 4, np.zeros(8))
    s2 = _run(g2, np.arange(8) * 4, np.zeros(8))
    s1 = _run(g, np.arange(8) * 4 + 1, np.zeros(8), s1)
    s2 = _run(g2, np.arange(8) * 4 + 1, np.zeros(8), s2)
    _same(s1, s2, ("b2",))
    assert int(s2.epochs["b2"]) == 1


def test_restrict_state_and_grad_through_fused_graph():
    g = mm.Graph(BASE).derive("g1", ("f",), jnp.sin).derive("g2", ("g1",), lambda x: x * x)
    g2 = A.fuse_chains(g, keep=("g2",))
    s = mm.init_state(g.schema)
    small = A.restrict_state(s, g2)
    assert small.names == g2.schema.names

    def loss(graph, state, f):
        state = mm.apply(state, mm.Delta.full("f", f))
        return jnp.sum(mm.propagate(graph, state, ("f",)).pages["g2"])

    f = jnp.linspace(-1.0, 1.0, 8, dtype=jnp.float32)
    d1 = jax.grad(lambda x: loss(g, s, x))(f)
    d2 = jax.grad(lambda x: loss(g2, small, x))(f)
    assert np.array_equal(np.asarray(d1), np.asarray(d2))
    with pytest.raises(SchemaMismatchError):
        A.restrict_state(mm.init_state(BASE), g2)


def test_fused_graph_compiles_once():
    g2 = A.fuse_chains(A.drop_dead(_chain_graph(), ("out",)), keep=("out",))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, a):
        state = mm.apply(state, mm.Delta.full("a", a))
        return mm.propagate(g2, state, ("a",))

    s = mm.init_state(g2.schema)
    for k in range(3):
        s = step(s, jnp.full((8,), k, jnp.int32))


def test_rewrite_bad_input():
    g = _chain_graph()
    with pytest.raises(UnknownPageError):
        A.drop_dead(g, ("nope",))
    with pytest.raises(UnknownPageError):
        A.fuse_chains(g, keep=("nope",))
    with pytest.raises(GraphError):
        A.drop_dead("not a graph", ("out",))
    with pytest.raises(GraphError):
        A.fuse_chains(g, keep=(1,))
    with pytest.raises(GraphError):
        A.restrict_state({}, g)
