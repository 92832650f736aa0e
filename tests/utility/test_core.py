"""Utilities: built-ins, combinators, gradients (pages and delta values), errors, tracing."""

from __future__ import annotations

import dataclasses
import functools

import chex
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
from mmsb_jax.core.graph import Graph
from mmsb_jax.core.propagate import propagate

ROWS, WIDTH = 6, 3
SCHEMA = mm.Schema([
    mm.PageSpec("x", (ROWS, WIDTH)),
    mm.PageSpec("y", (ROWS, WIDTH)),
    mm.PageSpec("v", (5,)),
    mm.PageSpec("n", (4,), "int32"),
    mm.PageSpec("raw", (16,), "uint8"),
])
FINITE = st.floats(-10, 10, allow_nan=False, width=32)


def make_state(seed: int = 0) -> mm.State:
    rng = np.random.default_rng(seed)
    s = mm.init_state(SCHEMA)
    return s.with_pages({
        "x": jnp.asarray(rng.normal(size=(ROWS, WIDTH)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(ROWS, WIDTH)), jnp.float32),
        "v": jnp.asarray(rng.uniform(0.1, 2.0, size=5), jnp.float32),
        "n": jnp.asarray([3, -1, 4, 1], jnp.int32),
        "raw": jnp.asarray(rng.integers(0, 256, 16), jnp.uint8),
    })


def page_states(shape=(ROWS, WIDTH)):
    return hnp.arrays(np.float32, shape, elements=FINITE)


# -- built-in values --------------------------------------------------------------------------

def test_builtins_match_numpy():
    s = make_state()
    x, y = np.asarray(s.pages["x"], np.float64), np.asarray(s.pages["y"], np.float64)
    t = np.linspace(-1, 1, WIDTH)
    d = x - t
    np.testing.assert_allclose(mu.page_sum("x")(s), x.sum(), rtol=1e-5)
    np.testing.assert_allclose(mu.page_sum("n")(s), 7.0)
    np.testing.assert_allclose(mu.goal_distance("x", t)(s), np.sqrt((d**2).sum()), rtol=1e-5)
    np.testing.assert_allclose(mu.goal_distance("x", t, "sq")(s), (d**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(mu.goal_distance("x", t, "l1")(s), np.abs(d).sum(), rtol=1e-5)
    np.testing.assert_allclose(mu.goal_distance("x", t, "linf")(s), np.abs(d).max(), rtol=1e-5)
    np.testing.assert_allclose(mu.goal_distance("x", "y")(s), np.sqrt(((x - y)**2).sum()),
                               rtol=1e-5)
    pen = (np.maximum(x - 0.5, 0)**2 + np.maximum(-0.2 - x, 0)**2).sum()
    np.testing.assert_allclose(mu.constraint_penalty("x", -0.2, 0.5)(s), pen, rtol=1e-5)
    np.testing.assert_allclose(mu.constraint_penalty("x", upper=0.5)(s),
                               (np.maximum(x - 0.5, 0)**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(mu.smoothness("x")(s), (np.diff(x, axis=0)**2).sum(), rtol=1e-5)
    np.testing.assert_allclose(mu.smoothness("x", axis=1)(s), (np.diff(x, axis=1)**2).sum(),
                               rtol=1e-5)


def test_distance_on_arrays():
    x, t = jnp.asarray([[3.0, 0.0], [0.0, -4.0]]), jnp.zeros(2)
    assert float(mu.distance(x, t)) == pytest.approx(5.0)
    assert float(mu.distance(x, t, "sq")) == pytest.approx(25.0)
    assert float(mu.distance(x, t, "l1")) == pytest.approx(7.0)
    assert float(mu.distance(x, t, "linf")) == pytest.approx(4.0)
    assert float(mu.distance(jnp.zeros(0), 0.0, "linf")) == 0.0
    assert set(mu.NORMS) == {"l2", "sq", "l1", "linf"}
    with pytest.raises(errors.OptionError):
        mu.distance(x, t, "l0")


def test_combinators_and_names():
    s = make_state()
    a, b = mu.page_sum("x"), mu.smoothness("y")
    va, vb = float(a(s)), float(b(s))
    np.testing.assert_allclose((a + b)(s), va + vb, rtol=1e-6)
    np.testing.assert_allclose((a - b)(s), va - vb, rtol=1e-6)
    np.testing.assert_allclose((-a)(s), -va, rtol=1e-6)
    np.testing.assert_allclose((3.0 * a)(s), 3 * va, rtol=1e-6)
    np.testing.assert_allclose((a * 3.0)(s), 3 * va, rtol=1e-6)
    np.testing.assert_allclose((a / 4.0)(s), va / 4, rtol=1e-6)
    np.testing.assert_allclose((a + 1.5)(s), va + 1.5, rtol=1e-6)
    np.testing.assert_allclose((1.5 - a)(s), 1.5 - va, rtol=1e-6)
    np.testing.assert_allclose(sum([a, b, a])(s), 2 * va + vb, rtol=1e-6)
    np.testing.assert_allclose(mu.scale(a, 0.5)(s), 0.5 * va, rtol=1e-6)
    np.testing.assert_allclose(mu.constant(2.0)(s), 2.0)
    np.testing.assert_allclose(mu.weighted_sum([])(s), 0.0)
    u = mu.weighted_sum([(1.0, a), (-2.0, b), (0.5, lambda st_: jnp.sum(st_.pages["v"]))])
    np.testing.assert_allclose(u(s), va - 2 * vb + 0.5 * float(jnp.sum(s.pages["v"])),
                               rtol=1e-5)
    assert (a + b).pages == ("x", "y")
    assert "sum(x)" in repr(a + b)
    # a plain function is accepted where a Utility is expected; ints are cast to float
    assert mu.as_utility(lambda st_: jnp.sum(st_.pages["n"]))(s).dtype == jnp.float32


U1 = mu.goal_distance("x", "y", "sq")
U2 = mu.smoothness("x")


@jax.jit
def _linearity_case(x, y, w1, w2):
    """Weighted sum, operators and gradients at one point; weights are traced scalars."""
    s = make_state().with_pages({"x": x, "y": y})
    ws = mu.weighted_sum([(w1, U1), (w2, U2)])
    ops = w1 * U1 + w2 * U2
    return (ws(s), ops(s), w1 * U1(s) + w2 * U2(s), mu.grad(ws, s, ("x", "y")),
            mu.grad(U1, s, ("x", "y")), mu.grad(U2, s, ("x", "y")))


@settings(max_examples=30, deadline=None)
@given(w1=FINITE, w2=FINITE, x=page_states(), y=page_states())
def test_weighted_sum_is_linear_in_value_and_gradient(w1, w2, x, y):
    ws, ops, manual, g, g1, g2 = _linearity_case(x, y, np.float32(w1), np.float32(w2))
    np.testing.assert_allclose(ws, manual, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(ops, manual, rtol=1e-4, atol=1e-2)
    for name in ("x", "y"):
        np.testing.assert_allclose(g[name], w1 * g1[name] + w2 * g2[name], rtol=1e-4, atol=1e-2)


@settings(max_examples=30, deadline=None)
@given(x=page_states(), y=page_states(), z=page_states(),
       norm=st.sampled_from(["l2", "l1", "linf"]))
def test_goal_distance_is_a_metric(x, y, z, norm):
    base = make_state()

    def dist(a, b):
        return float(mu.goal_distance("x", "y", norm)(base.with_pages({"x": a, "y": b})))

    a, b, c = (jnp.asarray(v) for v in (x, y, z))
    assert dist(a, a) == 0.0
    assert dist(a, b) >= 0.0
    np.testing.assert_allclose(dist(a, b), dist(b, a), rtol=1e-6)
    assert dist(a, c) <= dist(a, b) + dist(b, c) + 1e-3 * (1 + dist(a, c))


@settings(max_examples=30, deadline=None)
@given(x=page_states(), shift=FINITE)
def test_smoothness_and_penalty_laws(x, shift):
    s = make_state().with_pages({"x": jnp.asarray(x)})
    shifted = s.with_pages({"x": jnp.asarray(x) + np.float32(shift)})
    sm = mu.smoothness("x")
    np.testing.assert_allclose(sm(s), sm(shifted), rtol=1e-3, atol=1e-1)
    assert float(sm(s)) >= 0
    lo, hi = float(np.min(x)), float(np.max(x))
    assert float(mu.constraint_penalty("x", lo, hi)(s)) == 0.0  # inside the box: no penalty
    assert float(mu.constraint_penalty("x", lo + 1.0, hi + 2.0)(s)) > 0.0


# -- gradients with respect to pages ----------------------------------------------------------

BUILTINS = {
    "page_sum": mu.page_sum("x"),
    "goal_l2": mu.goal_distance("x", 0.3),
    "goal_sq": mu.goal_distance("x", "y", "sq"),
    "goal_l1": mu.goal_distance("x", 5.0, "l1"),
    "penalty": mu.constraint_penalty("x", -0.3, 0.3),
    "smoothness": mu.smoothness("x"),
    "entropy": mu.entropy("x"),
    "entropy_rows": mu.entropy("x", axis=-1),
    "entropy_norm": mu.entropy("v", logits=False),
    "mixed": 2.0 * mu.smoothness("y") - mu.goal_distance("x", "y") + mu.entropy("x"),
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_page_gradients_match_finite_differences(name):
    u = BUILTINS[name]
    s = make_state(1)
    names = tuple(n for n in u.pages)

    def f(*pages):
        return u(s.with_pages(dict(zip(names, pages, strict=True))))

    check_grads(jax.jit(f), tuple(s.pages[n] for n in names), order=1, modes=["rev"], eps=1e-3,
                atol=2e-2, rtol=2e-2)
    g = mu.grad(u, s)
    assert set(g) == {"x", "y", "v"}  # every floating page; int and uint8 pages have none
    for n in ("x", "y", "v"):
        if n not in names:
            np.testing.assert_array_equal(g[n], 0.0)


def test_known_gradients_and_wrt_forms():
    s = make_state()
    x, y = np.asarray(s.pages["x"]), np.asarray(s.pages["y"])
    np.testing.assert_array_equal(mu.grad(mu.page_sum("x"), s, wrt="x"), np.ones_like(x))
    np.testing.assert_allclose(mu.grad(mu.goal_distance("x", "y", "sq"), s, wrt="x"),
                               2 * (x - y), rtol=1e-5)
    g = mu.grad(mu.goal_distance("x", "y", "sq"), s, wrt=("x", "y"))
    np.testing.assert_allclose(g["y"], -2 * (x - y), rtol=1e-5)
    # l2 distance at the goal: gradient 0, not NaN
    at_goal = s.with_pages({"x": s.pages["y"]})
    np.testing.assert_array_equal(mu.grad(mu.goal_distance("x", "y"), at_goal, wrt="x"), 0.0)
    value, gv = mu.value_and_grad(mu.smoothness("x"), s, wrt="x")
    d = np.diff(x, axis=0)
    expect = np.zeros_like(x)
    expect[1:] += 2 * d
    expect[:-1] -= 2 * d
    np.testing.assert_allclose(gv, expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, (d**2).sum(), rtol=1e-5)


def test_grad_under_jit_and_vmap():
    s = make_state()
    u = mu.goal_distance("x", "y", "sq") + mu.entropy("v", logits=False)
    jitted = jax.jit(lambda st_: mu.grad(u, st_, wrt=("x", "v")))(s)
    eager = mu.grad(u, s, wrt=("x", "v"))
    for n in ("x", "v"):
        np.testing.assert_allclose(jitted[n], eager[n], rtol=1e-5, atol=1e-6)
    batch = jax.tree.map(lambda *a: jnp.stack(a), make_state(0), make_state(1), make_state(2))
    values = jax.vmap(u)(batch)
    for i in range(3):
        np.testing.assert_allclose(values[i], u(make_state(i)), rtol=1e-5)


# -- gradients with respect to delta values ---------------------------------------------------

def delta_cases():
    rng = np.random.default_rng(3)
    vals = jnp.asarray(rng.normal(size=(4, WIDTH)), jnp.float32)
    idx = jnp.asarray([1, 4, -1, 2], jnp.int32)
    return {
        "rows_set": mm.Delta.rows("x", idx, vals, "set"),
        "rows_add": mm.Delta.rows("x", idx, vals, "add"),
        "masked": mm.Delta.masked("x", jnp.asarray(rng.random((ROWS, WIDTH)) < 0.5),
                                  jnp.asarray(rng.normal(size=(ROWS, WIDTH)), jnp.float32)),
        "full_add": mm.Delta.full("x", jnp.asarray(rng.normal(size=(ROWS, WIDTH)),
                                                   jnp.float32), "add"),
    }


def assert_matches_finite_differences(f, x, g, *, eps=1e-3, seed=0, tol=2e-2):
    """``<g, d>`` equals the central difference of ``f`` along random directions ``d``."""
    rng = np.random.default_rng(seed)
    for _ in range(3):
        d = jnp.asarray(rng.normal(size=x.shape), x.dtype)
        fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", sorted(delta_cases()))
def test_delta_gradients_match_finite_differences(kind):
    d = delta_cases()[kind]
    s = make_state(2)
    u = mu.goal_distance("x", "y", "sq") + 0.5 * mu.smoothness("x") + mu.entropy("x")
    f = jax.jit(lambda values: u(mm.apply(s, dataclasses.replace(d, values=values))))
    value, g = mu.value_and_grad_wrt_delta(u, s, d)
    assert g.shape == d.values.shape
    np.testing.assert_allclose(value, f(d.values), rtol=1e-6)
    assert_matches_finite_differences(f, d.values, g)
    if kind.startswith("rows"):
        np.testing.assert_array_equal(g[2], 0.0)  # the padding slot changes nothing


def test_delta_gradient_duplicates_and_sequences():
    s = make_state()
    vals = jnp.ones((3, WIDTH), jnp.float32)
    d = mm.Delta.rows("x", jnp.asarray([2, 2, 0]), vals, "set")
    g = mu.grad_wrt_delta(mu.page_sum("x"), s, d)
    np.testing.assert_array_equal(g, [[0.0] * WIDTH, [1.0] * WIDTH, [1.0] * WIDTH])
    d2 = mm.Delta.full("x", jnp.full((ROWS, WIDTH), 2.0, jnp.float32), "mul")
    g1, g2 = mu.grad_wrt_delta(mu.page_sum("x"), s, [d, d2])
    np.testing.assert_array_equal(g1, [[0.0] * WIDTH, [2.0] * WIDTH, [2.0] * WIDTH])
    x_after = np.asarray(mm.apply(s, d).pages["x"])
    np.testing.assert_allclose(g2, x_after, rtol=1e-6)


def test_delta_gradient_through_propagation():
    g = Graph(SCHEMA).derive("energy", ("x", "y"),
                             lambda x, y: jnp.sum((x - y) ** 2, axis=1))
    s = mm.init_state(g.schema).with_pages(dict(make_state(4).pages))
    s = propagate(g, s, ("x",))
    u = mu.page_sum("energy") + mu.smoothness("energy")
    rng = np.random.default_rng(5)
    d = mm.Delta.rows("x", jnp.asarray([0, 3]), jnp.asarray(rng.normal(size=(2, WIDTH)),
                                                            jnp.float32), "add")

    @jax.jit
    def f(values):
        st_ = mm.apply(s, dataclasses.replace(d, values=values))
        return u(propagate(g, st_, ("x",)))

    value, grad = mu.value_and_grad_wrt_delta(u, s, d, graph=g)
    np.testing.assert_allclose(value, f(d.values), rtol=1e-6)
    assert_matches_finite_differences(f, d.values, grad)
    # without the graph the derived page is stale and the gradient is zero
    np.testing.assert_array_equal(mu.grad_wrt_delta(u, s, d), 0.0)


# -- errors -----------------------------------------------------------------------------------

def test_bad_inputs_raise_typed_errors():
    s = make_state()
    with pytest.raises(errors.UnknownPageError):
        mu.page_sum("nope")(s)
    with pytest.raises(errors.UnknownPageError):
        mu.goal_distance("x", "nope")(s)
    with pytest.raises(errors.ShapeError):
        mu.Utility(lambda st_: st_.pages["x"])(s)  # not a scalar
    with pytest.raises(errors.OptionError):
        mu.goal_distance("x", 0.0, norm="l3")
    with pytest.raises(errors.ShapeError):
        mu.goal_distance("x", jnp.zeros(4))(s)
    with pytest.raises(errors.ShapeError):
        mu.goal_distance("x", "v")(s)
    with pytest.raises(errors.DomainError):
        mu.goal_distance("x", True)  # a bool target is not numeric
    with pytest.raises(errors.OptionError):
        mu.constraint_penalty("x")
    with pytest.raises(errors.DomainError):
        mu.constraint_penalty("x", 1.0, 0.0)
    with pytest.raises(errors.ShapeError):
        mu.smoothness("x", axis=2)(s)
    with pytest.raises(errors.ShapeError):
        mu.entropy("x", axis=-3)(s)
    with pytest.raises(errors.OptionError):
        mu.entropy("x", base=1.0)
    with pytest.raises(errors.OptionError):
        mu.page_sum(3)
    with pytest.raises(errors.OptionError):
        mu.Utility(42)
    with pytest.raises(errors.DomainError):
        mu.scale(mu.page_sum("x"), float("nan"))
    with pytest.raises(errors.ShapeError):
        mu.scale(mu.page_sum("x"), jnp.ones(2))
    with pytest.raises(errors.DomainError):
        _ = mu.page_sum("x") / 0.0
    with pytest.raises(TypeError):
        _ = mu.page_sum("x") * mu.page_sum("y")
    with pytest.raises(errors.OptionError):
        mu.weighted_sum([mu.page_sum("x")])
    with pytest.raises(errors.DTypeError):
        mu.grad(mu.page_sum("n"), s, wrt="n")
    with pytest.raises(errors.UnknownPageError):
        mu.grad(mu.page_sum("x"), s, wrt=("x", "nope"))
    with pytest.raises(errors.OptionError):
        mu.grad(mu.page_sum("x"), s, wrt=(1,))
    int_delta = mm.Delta.rows("n", jnp.asarray([0]), jnp.asarray([1], jnp.int32))
    with pytest.raises(errors.DTypeError):
        mu.grad_wrt_delta(mu.page_sum("x"), s, int_delta)
    with pytest.raises(errors.IndexOutOfRangeError):
        mu.grad_wrt_delta(mu.page_sum("x"), s,
                          mm.Delta.rows("x", jnp.asarray([ROWS]), jnp.ones((1, WIDTH))))
    with pytest.raises(errors.UnknownPageError):
        mu.grad_wrt_delta(mu.page_sum("x"), s, mm.Delta.full("nope", jnp.ones(3)))
    with pytest.raises(errors.OptionError):
        mu.grad_wrt_delta(mu.page_sum("x"), s, [])
    assert isinstance(errors.DomainError("x"), errors.MMSBError)


# -- recompilation guards ---------------------------------------------------------------------

def test_jitted_utility_and_delta_gradient_compile_once():
    u = mu.goal_distance("x", "y", "sq") + mu.entropy("x") - mu.constraint_penalty("v", 0, 1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def value(state):
        return u(state)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def delta_grad(state, idx, vals):
        return mu.grad_wrt_delta(u, state, mm.Delta.rows("x", idx, vals, "add"))

    for seed in range(3):
        s = make_state(seed)
        np.testing.assert_allclose(value(s), u(s), rtol=1e-5)
        rng = np.random.default_rng(seed)
        idx = jnp.asarray(rng.integers(-1, ROWS, 3), jnp.int32)
        vals = jnp.asarray(rng.normal(size=(3, WIDTH)), jnp.float32)
        np.testing.assert_allclose(
            delta_grad(s, idx, vals),
            mu.grad_wrt_delta(u, s, mm.Delta.rows("x", idx, vals, "add")), rtol=1e-4,
            atol=1e-5)


def test_partial_utilities_are_static_friendly():
    # a Utility is hashable, so it can be a static argument of jax.jit
    u = mu.page_sum("x")
    f = jax.jit(lambda util, st_: util(st_), static_argnums=0)
    s = make_state()
    np.testing.assert_allclose(f(u, s), u(s), rtol=1e-6)
    assert hash(u) == hash(u)
    assert functools.reduce(lambda a, b: a + b, [u, u])(s) == pytest.approx(2 * float(u(s)),
                                                                             rel=1e-6)
