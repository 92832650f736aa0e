"""Tests for mmsb_jax.core.propagate: once-per-page, ordered, cut-off, jit/grad/vmap."""

from __future__ import annotations

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import mmsb_jax as mm
from mmsb_jax.core import propagate as propagate_mod
from mmsb_jax.core.delta import Delta, apply, apply_batch
from mmsb_jax.core.graph import Graph
from mmsb_jax.core.pages import PageSpec, Schema, init_state
from mmsb_jax.core.propagate import plan, propagate
from mmsb_jax.errors import (
    DTypeError,
    GraphError,
    SchemaMismatchError,
    ShapeError,
    UnknownPageError,
)

SKIPS = ("cond", "where", "auto")
BASE = Schema([PageSpec("a", (4,)), PageSpec("b", (4,)), PageSpec("c", (4,))])


class Counter:
    """Wraps functions and counts their Python-level calls (i.e. traces under jit)."""

    def __init__(self):
        self.calls = collections.Counter()

    def wrap(self, name, fn):
        def counted(*xs):
            self.calls[name] += 1
            return fn(*xs)

        counted.__name__ = name
        return counted


def with_values(state, **pages):
    return state.with_pages({k: jnp.asarray(v, jnp.float32) for k, v in pages.items()})


def recompute_all(graph, state):
    """Reference: every derived page recomputed from scratch in topological order."""
    pages = dict(state.pages)
    for n in graph.derived:
        d = graph.derivation(n)
        pages[n] = d.fn(*(pages[i] for i in d.inputs))
    return pages


# -- exactly once, in order -------------------------------------------------------------------

@pytest.mark.parametrize("skip", SKIPS)
def test_diamond_computes_sink_once_from_both_new_inputs(skip):
    c = Counter()
    g = (Graph(BASE)
         .derive("p", ("a",), c.wrap("p", lambda a: a * 2.0))
         .derive("q", ("a",), c.wrap("q", lambda a: a + 1.0))
         .derive("d", ("p", "q"), c.wrap("d", lambda p, q: p * q)))
    s = with_values(init_state(g.schema), a=[0.0, 1.0, 2.0, 3.0])
    c.calls.clear()
    jax.make_jaxpr(lambda s: propagate(g, s, ("a",), skip=skip))(s)
    assert c.calls == {"p": 1, "q": 1, "d": 1}
    out = propagate(g, s, ("a",), skip=skip)
    a = np.arange(4.0, dtype=np.float32)
    np.testing.assert_array_equal(out.pages["d"], (2 * a) * (a + 1))
    assert {n: int(out.epochs[n]) for n in ("p", "q", "d")} == {"p": 1, "q": 1, "d": 1}


@pytest.mark.parametrize("skip", SKIPS)
def test_chain_fan_in_fan_out_and_disconnected_parts(skip):
    c = Counter()
    g = Graph(BASE)
    g = g.derive("x0", ("a",), c.wrap("x0", lambda a: a + 1.0))
    for i in range(1, 5):  # chain x0 -> x1 -> ... -> x4
        g = g.derive(f"x{i}", (f"x{i - 1}",), c.wrap(f"x{i}", lambda x: 2.0 * x))
    for i in range(4):  # fan-out from x4
        g = g.derive(f"f{i}", ("x4",), c.wrap(f"f{i}", lambda x, i=i: x + float(i)))
    g = g.derive("fan_in", ("f0", "f1", "f2", "f3", "a"),
                 c.wrap("fan_in", lambda *xs: sum(xs)))
    g = g.derive("other", ("b", "c"), c.wrap("other", lambda b, c_: b - c_))
    s = with_values(init_state(g.schema), a=[1.0, 2.0, 3.0, 4.0], b=[5.0] * 4)
    c.calls.clear()
    out = propagate(g, s, "a", skip=skip)
    assert set(c.calls) == {f"x{i}" for i in range(5)} | {f"f{i}" for i in range(4)} | {"fan_in"}
    assert all(v == 1 for v in c.calls.values())
    ref = recompute_all(g, s)
    for n in g.derived:
        if n != "other":
            np.testing.assert_allclose(out.pages[n], ref[n], rtol=1e-6)
            assert int(out.epochs[n]) == 1
    assert out.pages["other"] is s.pages["other"]  # disconnected: untouched
    assert int(out.epochs["other"]) == 0
    assert "other" not in plan(g, "a").reads and "b" not in plan(g, "a").reads


def test_two_dirty_parents_recompute_common_child_once():
    """The original's case: a batch update of two parents recomputes their child once."""
    c = Counter()
    g = Graph(BASE).derive("child", ("a", "b"), c.wrap("child", lambda a, b: a + 10.0 * b))
    s = init_state(g.schema)
    s = apply_batch(s, [Delta.full("a", jnp.ones(4)), Delta.full("b", jnp.full(4, 2.0))])
    c.calls.clear()
    out = propagate(g, s, ("b", "a"))
    assert c.calls == {"child": 1}
    np.testing.assert_array_equal(out.pages["child"], np.full(4, 21.0))
    assert int(out.epochs["child"]) == 1
    assert plan(g, ("b", "a", "a")).dirty == ("a", "b")


def test_passthrough_child_equals_parent_after_masked_update():
    """The original's case: an identity child mirrors its parent after a masked update."""
    schema = Schema([PageSpec("raw", (16,), "uint8")])
    g = Graph(schema).derive("mirror", ("raw",), lambda r: r)
    s = init_state(g.schema)
    mask = jnp.arange(16) % 3 == 0
    s = apply(s, Delta.masked("raw", mask, jnp.arange(16, dtype=jnp.uint8) + 100))
    out = propagate(g, s, ("raw",))
    np.testing.assert_array_equal(out.pages["mirror"], out.pages["raw"])
    assert out.pages["mirror"].dtype == jnp.uint8
    assert int(out.epochs["mirror"]) == 1


# -- early cut-off ----------------------------------------------------------------------------

@pytest.mark.parametrize("skip", SKIPS)
def test_same_bytes_change_nothing_downstream(skip):
    """The original's case: a fn that returns the same bytes changes nothing below it."""
    g = (Graph(BASE)
         .derive("clip", ("a",), lambda a: jnp.clip(a, 0.0, 1.0))
         .derive("below", ("clip",), lambda x: x * 3.0)
         .derive("below2", ("below", "b"), jnp.add))
    s = with_values(init_state(g.schema), a=[5.0, 6.0, 7.0, 8.0])
    s = propagate(g, s, "a", skip=skip)
    assert [int(s.epochs[n]) for n in ("clip", "below", "below2")] == [1, 1, 1]
    s2 = apply(s, Delta.full("a", jnp.array([9.0, 9.0, 9.0, 9.0])))  # clip still all ones
    out, changed = propagate(g, s2, ("a",), skip=skip, return_changed=True)
    assert [int(out.epochs[n]) for n in ("clip", "below", "below2")] == [1, 1, 1]
    for n in ("clip", "below", "below2"):
        np.testing.assert_array_equal(out.pages[n], s.pages[n])
        assert not bool(changed[n])
    assert bool(changed["a"]) and not bool(changed["b"])


def test_cut_off_skips_the_computation_at_run_time_with_cond():
    runs = collections.Counter()

    def expensive(x):
        jax.debug.callback(lambda: runs.update(["below"]))
        return x * 3.0

    g = (Graph(BASE).derive("sign", ("a",), jnp.sign).derive("below", ("sign",), expensive))
    s = propagate(g, with_values(init_state(g.schema), a=[1.0, -2.0, 3.0, 0.0]), "a")
    f = jax.jit(lambda s, v: propagate(g, apply(s, Delta.full("a", v)), "a", skip="cond"))
    runs.clear()
    out = jax.block_until_ready(f(s, jnp.array([7.0, -1.0, 0.5, 0.0])))  # same signs
    jax.effects_barrier()
    assert runs["below"] == 0
    assert int(out.epochs["below"]) == int(s.epochs["below"])
    out = jax.block_until_ready(f(s, jnp.array([-7.0, -1.0, 0.5, 0.0])))  # a sign flips
    jax.effects_barrier()
    assert runs["below"] == 1
    np.testing.assert_array_equal(out.pages["below"], [-3.0, -3.0, 3.0, 0.0])
    assert int(out.epochs["below"]) == int(s.epochs["below"]) + 1


def test_auto_uses_cond_for_costly_pages_only():
    g = (Graph(BASE).derive("x", ("a",), jnp.sign)          # child of dirty a: always computed
         .derive("y", ("x",), lambda x: x + 1.0)            # cheap: jnp.where
         .derive("z", ("y",), lambda y: y * 2.0)            # cheap: jnp.where
         .derive("big", ("x",), lambda x: jnp.tile(x, 1 << 15)))  # costly: lax.cond
    s = init_state(g.schema)
    assert g.derivation("big").cost >= propagate_mod.COND_MIN_COST > g.derivation("y").cost

    def conds(skip):
        return str(jax.make_jaxpr(lambda s: propagate(g, s, "a", skip=skip))(s)).count("cond[")

    assert (conds("auto"), conds("cond"), conds("where")) == (1, 3, 0)


def test_epoch_counts_recomputations_that_changed_the_value():
    g = Graph(BASE).derive("mx", ("a",), jnp.max)
    s = init_state(g.schema)
    epochs = []
    for v in ([1, 2, 3, 4], [4, 3, 2, 1], [0, 0, 0, 9], [9, 9, 9, 9], [9, 0, 0, 0]):
        s = propagate(g, apply(s, Delta.full("a", jnp.asarray(v, jnp.float32))), "a")
        epochs.append(int(s.epochs["mx"]))
    assert epochs == [1, 1, 2, 2, 2]
    assert int(s.epochs["a"]) == 5


def test_bitwise_comparison_of_nan_and_signed_zero():
    g = Graph(BASE).derive("y", ("a",), lambda a: a * 1.0)
    s = propagate(g, with_values(init_state(g.schema), a=[np.nan, 0.0, 1.0, 2.0]), "a")
    same = propagate(g, with_values(s, a=[np.nan, 0.0, 1.0, 2.0]), "a")
    assert int(same.epochs["y"]) == int(s.epochs["y"])  # NaN with the same payload
    neg0 = propagate(g, with_values(s, a=[np.nan, -0.0, 1.0, 2.0]), "a")
    assert int(neg0.epochs["y"]) == int(s.epochs["y"]) + 1  # -0.0 differs in its sign bit


def test_dirty_derived_page_counts_as_changed():
    g = Graph(BASE).derive("p", ("a",), lambda a: a + 1.0).derive("q", ("p",), lambda p: 2 * p)
    s = init_state(g.schema)
    s = apply(s, Delta.full("p", jnp.full(4, 5.0)))  # written directly
    out = propagate(g, s, "p")
    np.testing.assert_array_equal(out.pages["p"], np.full(4, 5.0))  # not recomputed
    np.testing.assert_array_equal(out.pages["q"], np.full(4, 10.0))
    out2 = propagate(g, s, ("a", "p"))  # p also descends from dirty a: recomputed
    np.testing.assert_array_equal(out2.pages["p"], np.ones(4))
    np.testing.assert_array_equal(out2.pages["q"], np.full(4, 2.0))


def test_dirty_derived_page_recomputed_to_its_written_value_still_updates_children():
    g = Graph(BASE).derive("p", ("a",), lambda a: a + 1.0).derive("q", ("p",), lambda p: 2 * p)
    s = init_state(g.schema)  # p = q = 0: consistent with a = -1 only, so q is stale below
    s = apply_batch(s, [Delta.full("a", jnp.full(4, 4.0)), Delta.full("p", jnp.full(4, 5.0))])
    out, changed = propagate(g, s, ("a", "p"), return_changed=True)
    np.testing.assert_array_equal(out.pages["p"], np.full(4, 5.0))  # recomputed: same value
    assert int(out.epochs["p"]) == 1  # the write counted, the recomputation did not change it
    np.testing.assert_array_equal(out.pages["q"], np.full(4, 10.0))  # not cut off
    assert bool(changed["p"]) and bool(changed["q"])


def test_dirty_page_without_descendants_returns_the_same_state():
    g = Graph(BASE).derive("p", ("a",), lambda a: a + 1.0)
    s = init_state(g.schema)
    assert propagate(g, s, "b") is s
    out, changed = propagate(g, s, (), return_changed=True)
    assert out is s and not any(bool(v) for v in changed.values())
    assert list(changed) == list(g.schema.names)


# -- hypothesis: equivalence with a full recomputation --------------------------------------

INT_BASE = Schema([PageSpec("s0", (4,), "int32"), PageSpec("s1", (4,), "int32"),
                   PageSpec("s2", (4,), "int32")])
INT_FNS = (
    lambda *xs: sum(xs),
    lambda *xs: jnp.maximum(xs[0], 3),
    lambda *xs: xs[-1] // 4,
    lambda *xs: jnp.clip(sum(xs), -5, 5),
    lambda *xs: xs[0] * 3 - xs[-1],
)


@st.composite
def int_graph_case(draw):
    n = draw(st.integers(1, 7))
    names = list(INT_BASE.names)
    defs = []
    for i in range(n):
        ins = tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)))
        defs.append((f"d{i}", ins, draw(st.integers(0, len(INT_FNS) - 1))))
        names.append(f"d{i}")
    dirty = draw(st.lists(st.sampled_from(INT_BASE.names), min_size=1, max_size=3,
                          unique=True))
    values = {n: draw(st.lists(st.integers(-8, 8), min_size=4, max_size=4)) for n in dirty}
    start = {n: draw(st.lists(st.integers(-8, 8), min_size=4, max_size=4))
             for n in INT_BASE.names}
    return defs, dirty, values, start


@settings(max_examples=25, deadline=None)
@given(int_graph_case())
def test_propagate_equals_full_recomputation_in_every_skip_mode(case):
    defs, dirty, values, start = case
    g = Graph(INT_BASE)
    for name, ins, k in defs:
        g = g.derive(name, ins, INT_FNS[k])
    s = init_state(g.schema).with_pages({n: jnp.asarray(v, jnp.int32) for n, v in start.items()})
    s = s.with_pages(recompute_all(g, s))  # a consistent state
    s2 = apply_batch(s, [Delta.full(n, jnp.asarray(v, jnp.int32)) for n, v in values.items()])
    ref = recompute_all(g, s2)
    results = [propagate(g, s2, tuple(dirty), skip=k, return_changed=True) for k in SKIPS]
    for out, changed in results:
        for n in g.derived:
            np.testing.assert_array_equal(out.pages[n], ref[n])
            moved = not np.array_equal(np.asarray(ref[n]), np.asarray(s.pages[n]))
            assert int(out.epochs[n]) == int(s.epochs[n]) + moved
            assert bool(changed[n]) == moved
        for n in INT_BASE.names:
            assert bool(changed[n]) == (n in dirty)


# -- errors ---------------------------------------------------------------------------------

def test_wrong_state_shape_or_dtype_raises_and_changes_nothing():
    g = Graph(BASE).derive("p", ("a",), lambda a: a * 2.0)
    other = Schema([PageSpec("a", (5,)), PageSpec("b", (4,)), PageSpec("c", (4,)),
                    PageSpec("p", (5,))])
    s = init_state(other)
    before = jax.tree.map(np.asarray, s)
    with pytest.raises(ShapeError, match="'a'"):
        propagate(g, s, "a")
    ints = init_state(Schema([PageSpec("a", (4,), "int32"), PageSpec("p", (4,), "int32")]))
    with pytest.raises(DTypeError, match="'a'"):
        propagate(g, ints, "a")
    chex.assert_trees_all_equal(before, jax.tree.map(np.asarray, s))


def test_fn_returning_wrong_shape_at_propagate_time_raises_clearly():
    """The original's case: a fn of the wrong shape raises a clear error, changes nothing."""
    mode = {"bad": None}

    def flaky(a):
        if mode["bad"] == "shape":
            return jnp.zeros(3)
        if mode["bad"] == "dtype":
            return a.astype(jnp.int32)
        return a + 1.0

    g = Graph(BASE).derive("p", ("a",), flaky).derive("q", ("p", "b"), jnp.add)
    s = with_values(init_state(g.schema), a=[1.0, 2.0, 3.0, 4.0])
    mode["bad"] = "shape"
    for skip in SKIPS:
        with pytest.raises(ShapeError, match=r"'p'.*\(3,\)"):
            propagate(g, s, "a", skip=skip)
    mode["bad"] = "dtype"
    with pytest.raises(DTypeError, match="'p'"):
        propagate(g, s, "a")
    np.testing.assert_array_equal(s.pages["p"], np.zeros(4))
    assert int(s.epochs["p"]) == 0
    mode["bad"] = None
    np.testing.assert_array_equal(propagate(g, s, "a").pages["q"], [2.0, 3.0, 4.0, 5.0])


def test_other_bad_input():
    g = Graph(BASE).derive("p", ("a",), lambda a: a * 2.0)
    s = init_state(g.schema)
    with pytest.raises(UnknownPageError):
        propagate(g, s, ("a", "nope"))
    with pytest.raises(SchemaMismatchError, match="init_state"):
        propagate(g, init_state(BASE), "a")
    with pytest.raises(GraphError):
        propagate(g, s, "a", skip="sometimes")
    with pytest.raises(GraphError):
        propagate(g, {"a": 1}, "a")  # type: ignore[arg-type]
    with pytest.raises(GraphError):
        plan("graph", "a")  # type: ignore[arg-type]


def test_fn_returning_a_non_array_at_propagate_time_raises():
    mode = {"dict": False}
    g = Graph(BASE).derive("z", ("a",), lambda a: {"v": a} if mode["dict"] else a)
    s = init_state(g.schema)
    mode["dict"] = True
    with pytest.raises(GraphError, match="not an array"):
        propagate(g, s, "a")


# -- jit: one compilation per dirty set -----------------------------------------------------

def test_plan_compiles_once_per_dirty_set_under_user_jit():
    g = Graph(BASE).derive("p", ("a", "b"), jnp.add).derive("q", ("p",), jnp.tanh)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, v):
        return propagate(g, apply(state, Delta.rows("a", jnp.array([1, -1]), v)), ("a",))

    s = init_state(g.schema)
    for k in range(3):
        s = step(s, jnp.full((2,), float(k + 1)))
    np.testing.assert_allclose(s.pages["q"], np.tanh([0.0, 3.0, 0.0, 0.0]), rtol=1e-6)
    assert int(s.epochs["q"]) == 3


def test_jit_with_graph_and_dirty_static_and_eager_cache():
    g = Graph(BASE).derive("p", ("a",), lambda a: a - 1.0)
    jp = jax.jit(chex.assert_max_traces(propagate, n=1), static_argnames=("graph", "dirty"))
    s = init_state(g.schema)
    for v in (1.0, 2.0, 3.0):
        out = jp(graph=g, state=with_values(s, a=[v] * 4), dirty=("a",))
        np.testing.assert_array_equal(out.pages["p"], np.full(4, v - 1.0))
    size = propagate_mod._propagate_jit._cache_size()
    for v in (4.0, 5.0, 6.0):
        propagate(g, with_values(s, a=[v] * 4), "a")
    assert propagate_mod._propagate_jit._cache_size() == size + 1


# -- grad and vmap --------------------------------------------------------------------------

def graphs_for_grad():
    return {
        "diamond": (Graph(BASE)
                    .derive("p", ("a",), jnp.sin)
                    .derive("q", ("a", "b"), lambda a, b: a * b)
                    .derive("u", ("p", "q"), lambda p, q: jnp.sum(p * q + q ** 2))),
        "chain_with_cutoff": (Graph(BASE)
                              .derive("flat", ("a",), lambda a: jnp.clip(a, -100.0, -50.0))
                              .derive("below", ("flat",), lambda f: 2.0 * f)
                              .derive("sq", ("a", "c"), lambda a, c: jnp.tanh(a) * c)
                              .derive("u", ("below", "sq"),
                                      lambda x, y: jnp.sum(x) + jnp.sum(y ** 2))),
        "wide": (Graph(BASE)
                 .derive("m", ("a", "b", "c"), lambda a, b, c: a * b + c)
                 .derive("n1", ("m",), jnp.exp)
                 .derive("n2", ("m", "a"), lambda m, a: m / (1.0 + a ** 2))
                 .derive("u", ("n1", "n2"), lambda x, y: jnp.mean(x * y))),
    }


@pytest.mark.parametrize("skip", ("cond", "where"))
@pytest.mark.parametrize("name", ("diamond", "chain_with_cutoff", "wide"))
def test_grad_wrt_delta_values_and_source_pages_matches_finite_differences(name, skip):
    g = graphs_for_grad()[name]
    s = with_values(init_state(g.schema), a=[0.3, -0.2, 0.5, 0.1], b=[1.0, 0.5, -0.7, 0.2],
                    c=[0.4, 0.4, -0.3, 1.1])
    s = propagate(g, s, ("a", "b", "c"))

    def via_rows_delta(v):
        s1 = apply(s, Delta.rows("a", jnp.array([2, 0]), v))
        return propagate(g, s1, ("a",), skip=skip).pages["u"]

    def via_masked_delta(v):
        s1 = apply(s, Delta.masked("b", jnp.array([True, False, True, True]), v, op="add"))
        return propagate(g, s1, ("b",), skip=skip).pages["u"]

    def via_sources(a, c):
        return propagate(g, s.with_pages({"a": a, "c": c}), ("a", "c"), skip=skip).pages["u"]

    tol = dict(order=1, modes=["rev"], eps=1e-3, atol=5e-3, rtol=5e-3)
    check_grads(via_rows_delta, (jnp.array([0.7, -0.4]),), **tol)
    check_grads(via_masked_delta, (jnp.array([0.1, 0.2, -0.3, 0.4]),), **tol)
    check_grads(via_sources, (s.pages["a"] + 0.1, s.pages["c"]), **tol)
    grad = jax.grad(via_rows_delta)(jnp.array([0.7, -0.4]))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_grad_is_zero_through_a_cut_off_branch():
    g = graphs_for_grad()["chain_with_cutoff"]
    s = propagate(g, with_values(init_state(g.schema), a=[1.0] * 4, c=[1.0] * 4), "a")
    dflat = jax.grad(lambda a: propagate(g, with_values(s, a=a), "a").pages["below"].sum())
    np.testing.assert_array_equal(dflat(jnp.full(4, 2.0)), np.zeros(4))


@pytest.mark.parametrize("skip", SKIPS)
def test_vmap_over_a_batch_of_states(skip):
    g = (Graph(BASE).derive("sign", ("a",), jnp.sign)
         .derive("scaled", ("sign", "b"), lambda s_, b: s_ * b)
         .derive("tot", ("scaled",), jnp.sum))
    base = propagate(g, with_values(init_state(g.schema), a=[1.0] * 4, b=[2.0] * 4), ("a", "b"))
    new_a = jnp.array([[3.0, 3.0, 3.0, 3.0],   # same signs: cut off below sign
                       [-1.0, 1.0, 1.0, 1.0],  # one sign flips
                       [0.0, 0.0, 0.0, 0.0]])
    batch = jax.tree.map(lambda x: jnp.stack([x] * 3), base)
    batch = batch.with_pages({"a": new_a})
    out = jax.vmap(lambda st_: propagate(g, st_, "a", skip=skip, return_changed=True))(batch)
    for i in range(3):
        one, changed = propagate(g, base.with_pages({"a": new_a[i]}), "a", return_changed=True)
        for n in ("sign", "scaled", "tot"):
            np.testing.assert_array_equal(out[0].pages[n][i], one.pages[n])
            assert int(out[0].epochs[n][i]) == int(one.epochs[n])
            assert bool(jnp.broadcast_to(out[1][n], (3,))[i]) == bool(changed[n])
    assert [int(e) for e in out[0].epochs["tot"]] == [1, 2, 2]


@pytest.mark.parametrize("skip", ["where", "cond", "auto"])
def test_gradient_flows_through_cut_off_pages(skip):
    """An unchanged (cut-off) page still has the derivative of its function."""
    base = mm.Schema([mm.PageSpec("pos", (4,), "float32")])
    g = (mm.Graph(base).derive("sq", ("pos",), lambda p: p * p)
         .derive("pot", ("sq",), lambda s: jnp.sum(s)[None]))
    st = mm.propagate(g, mm.init_state(g.schema).with_pages({"pos": jnp.arange(4.0)}), ("pos",))

    def pot(v):
        s2 = mm.propagate(g, mm.apply(st, mm.Delta.full("pos", v, "add")), ("pos",), skip=skip)
        return s2.pages["pot"][0]

    # At v = 0 the add changes no bit, so "sq" is cut off; d pot / d v = 2 * pos regardless.
    np.testing.assert_allclose(jax.grad(pot)(jnp.zeros(4)), [0.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(jax.jit(jax.grad(pot))(jnp.zeros(4)), [0.0, 2.0, 4.0, 6.0])
