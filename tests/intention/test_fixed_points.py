"""Fixed points by iteration and Newton, stability labels, implicit gradients, settle."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax import intention as mi
from mmsb_jax.intention import _fixed_points as fp_mod

R = 2.8


def logistic(x):
    return R * x * (1.0 - x)


def cubic2d(v):
    """Fixed points (a, b) with a, b in {-1, 0, 1}; known stability (see test)."""
    return v + 0.1 * (v - v**3)


HENON_A, HENON_B = 1.4, 0.3


def henon(v):
    x, y = v[0], v[1]
    return jnp.stack([1.0 - HENON_A * x**2 + y, HENON_B * x])


def np_label(eigs, tol=1e-4) -> str:
    mag = np.abs(np.asarray(eigs))
    if np.any(np.abs(mag - 1) <= tol):
        return "marginal"
    if np.all(mag < 1):
        return "stable"
    if np.all(mag > 1):
        return "unstable"
    return "saddle"


def test_dottie_number_both_methods():
    for method in mi.METHODS:
        res = mi.find_fixed_point(jnp.cos, jnp.float32(1.0), method=method)
        assert bool(res.converged)
        assert float(res.x) == pytest.approx(0.7390851, abs=1e-5)
    it = mi.find_fixed_point(jnp.cos, jnp.float32(1.0)).iterations
    nt = mi.find_fixed_point(jnp.cos, jnp.float32(1.0), method="newton").iterations
    assert int(nt) < int(it)  # quadratic vs linear convergence


def test_logistic_map_fixed_points_and_stability():
    star = 1.0 - 1.0 / R
    # iteration reaches only the attractor 1 - 1/r, also from near the repeller 0
    res = mi.find_fixed_point(logistic, jnp.float32(0.05))
    assert bool(res.converged) and float(res.x) == pytest.approx(star, abs=1e-5)
    # Newton finds the repeller 0 from nearby
    res0 = mi.find_fixed_point(logistic, jnp.float32(0.05), method="newton")
    assert bool(res0.converged) and abs(float(res0.x)) < 1e-6
    s0, s1 = mi.stability(logistic, res0.x), mi.stability(logistic, res.x)
    assert s0.label == "unstable" and float(s0.spectral_radius) == pytest.approx(R, rel=1e-6)
    assert s1.label == "stable" and float(s1.spectral_radius) == pytest.approx(abs(2 - R),
                                                                               rel=1e-4)


def test_two_dimensional_map_with_saddles():
    expected = {}
    for a in (-1.0, 0.0, 1.0):
        for b in (-1.0, 0.0, 1.0):
            inside = [abs(1 + 0.1 * (1 - 3 * c * c)) < 1 for c in (a, b)]
            expected[(a, b)] = ("stable" if all(inside) else
                                "unstable" if not any(inside) else "saddle")
    for (a, b), label in expected.items():
        start = jnp.asarray([a + 0.15, b - 0.1], jnp.float32)
        res = mi.find_fixed_point(cubic2d, start, method="newton")
        assert bool(res.converged)
        np.testing.assert_allclose(res.x, [a, b], atol=1e-5)
        assert mi.stability(cubic2d, res.x).label == label
    assert sorted(expected.values()).count("saddle") == 4


def test_henon_fixed_points_match_closed_form():
    a, b = HENON_A, HENON_B
    disc = math.sqrt((1 - b) ** 2 + 4 * a)
    for sign in (1.0, -1.0):
        x = (-(1 - b) + sign * disc) / (2 * a)
        expect = np.array([x, b * x])
        jac = np.array([[-2 * a * x, 1.0], [b, 0.0]])
        res = mi.find_fixed_point(henon, jnp.asarray(expect + 0.05, jnp.float32),
                                  method="newton")
        assert bool(res.converged)
        np.testing.assert_allclose(res.x, expect, atol=1e-5)
        st_ = mi.stability(henon, res.x)
        np.testing.assert_allclose(np.sort(np.abs(st_.eigenvalues)),
                                   np.sort(np.abs(np.linalg.eigvals(jac))), rtol=1e-4)
        assert st_.label == np_label(np.linalg.eigvals(jac)) == "saddle"


def test_marginal_and_failure_modes():
    assert mi.stability(lambda x: x - x**3, jnp.float32(0.0)).label == "marginal"
    c, s = math.cos(0.3), math.sin(0.3)
    rot = jnp.asarray([[c, -s], [s, c]], jnp.float32)
    assert mi.stability(lambda v: rot @ v, jnp.zeros(2)).label == "marginal"
    # too small a budget: not converged, all steps used
    slow = mi.find_fixed_point(jnp.sin, jnp.float32(1.0), max_iter=50)
    assert not bool(slow.converged) and int(slow.iterations) == 50
    # iteration runs away from the repeller of x -> 2x + 1 (stops once non-finite)
    away = mi.find_fixed_point(lambda x: 2 * x + 1, jnp.float32(0.0), max_iter=1000)
    assert not bool(away.converged) and int(away.iterations) < 1000
    newton = mi.find_fixed_point(lambda x: 2 * x + 1, jnp.float32(0.0), method="newton")
    assert bool(newton.converged) and float(newton.x) == pytest.approx(-1.0)
    assert mi.stability(lambda x: 2 * x + 1, newton.x).label == "unstable"
    # a start that is already a fixed point takes no step
    assert int(mi.find_fixed_point(logistic, jnp.float32(0.0)).iterations) == 0
    # max_iter=0 only evaluates the residual
    zero = mi.find_fixed_point(jnp.cos, jnp.float32(1.0), max_iter=0)
    assert not bool(zero.converged) and float(zero.x) == 1.0


@jax.jit
def _affine_case(a, b, x0):
    f = lambda x: a @ x + b
    res = mi.find_fixed_point(f, x0, method="newton", tol=1e-5)
    return res, mi.stability(f, res.x)


MAGNITUDES = st.one_of(st.floats(0.05, 0.8), st.floats(1.25, 3.0))


@settings(max_examples=30, deadline=None)
@given(mags=st.lists(MAGNITUDES, min_size=3, max_size=3),
       signs=st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3),
       seed=st.integers(0, 2**16))
def test_affine_maps_fixed_point_and_label_match_numpy(mags, signs, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    lam = np.asarray(mags) * np.asarray(signs)
    a = (q * lam) @ q.T
    b = rng.normal(size=3)
    res, stab = _affine_case(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                             jnp.asarray(rng.normal(size=3), jnp.float32))
    assert bool(res.converged)
    np.testing.assert_allclose(res.x, np.linalg.solve(np.eye(3) - a, b), rtol=1e-3, atol=1e-3)
    assert mi.stability_label(stab.code) == np_label(lam)
    np.testing.assert_allclose(np.sort(np.abs(np.asarray(stab.eigenvalues))),
                               np.sort(np.abs(lam)), rtol=1e-3, atol=1e-4)


def test_implicit_gradients_match_finite_differences():
    for method in mi.METHODS:
        def xstar(a, method=method):
            return mi.find_fixed_point(lambda x: a * jnp.cos(x), jnp.float32(0.5),
                                       method=method, tol=1e-7).x

        check_grads(jax.jit(xstar), (jnp.float32(1.0),), order=1, modes=["rev"], eps=1e-3,
                    atol=1e-2, rtol=1e-2)
    rng = np.random.default_rng(0)
    w = jnp.asarray(0.3 * rng.normal(size=(4, 4)), jnp.float32)

    def settle_sum(bias):
        res = mi.find_fixed_point(lambda x: jnp.tanh(w @ x + bias), jnp.zeros(4), tol=1e-7)
        return jnp.sum(res.x ** 2)

    check_grads(jax.jit(settle_sum), (jnp.asarray(rng.normal(size=4), jnp.float32),), order=1,
                modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
    # the fixed point does not depend on the start
    g0 = jax.grad(lambda x0: mi.find_fixed_point(jnp.cos, x0).x)(jnp.float32(0.3))
    assert float(g0) == 0.0


def test_vmap_jit_and_compilation_cache():
    starts = jnp.linspace(-0.2, 1.2, 8, dtype=jnp.float32)
    batched = jax.vmap(lambda x: mi.find_fixed_point(logistic, x, method="newton"))(starts)
    for i, x0 in enumerate(starts):
        one = mi.find_fixed_point(logistic, x0, method="newton")
        np.testing.assert_allclose(batched.x[i], one.x, atol=1e-6)
        assert int(batched.iterations[i]) == int(one.iterations)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def solve(x0):
        return mi.find_fixed_point(logistic, x0)

    for x0 in (0.1, 0.3, 0.5, 0.9):
        assert float(solve(jnp.float32(x0)).x) == pytest.approx(1 - 1 / R, abs=1e-5)
    # eager calls with the same f reuse one compilation of the internal jit
    mi.find_fixed_point(cubic2d, jnp.asarray([0.3, 0.4]), method="newton")
    size = fp_mod._find_fixed_point_jit._cache_size()
    for k in range(3):
        mi.find_fixed_point(cubic2d, jnp.asarray([0.5 + k, -0.2 * k]), method="newton")
    assert fp_mod._find_fixed_point_jit._cache_size() == size


def test_settle_writes_the_fixed_point_through_a_delta():
    schema = mm.Schema([mm.PageSpec("x", (2,)), mm.PageSpec("n", (2,), "int32")])
    s = mm.init_state(schema).with_pages({"x": jnp.asarray([0.4, -0.3], jnp.float32)})
    s2, res = mi.settle(s, "x", cubic2d)
    assert bool(res.converged)
    np.testing.assert_allclose(s2.pages["x"], [1.0, -1.0], atol=1e-4)
    assert int(s2.epochs["x"]) == 1 and int(s2.epochs["n"]) == 0
    with pytest.raises(errors.DTypeError):
        mi.settle(s, "n", lambda x: x)
    with pytest.raises(errors.UnknownPageError):
        mi.settle(s, "nope", cubic2d)


def test_jacobian_is_the_flattened_derivative():
    np.testing.assert_allclose(mi.jacobian(logistic, jnp.float32(0.25)), [[R * 0.5]], rtol=1e-6)
    w = jnp.arange(16, dtype=jnp.float32).reshape(2, 2, 2, 2) / 10
    jac = mi.jacobian(lambda x: jnp.einsum("ijkl,kl->ij", w, x), jnp.ones((2, 2)))
    np.testing.assert_allclose(jac, np.asarray(w).reshape(4, 4), rtol=1e-6)


def test_labels_and_errors():
    assert [mi.stability_label(c) for c in range(4)] == list(mi.STABILITY_LABELS)
    assert mi.stability_label(-1) == ""
    assert mi.stability_label(jnp.asarray([[0, 2]])) == [["stable", "saddle"]]
    with pytest.raises(errors.OptionError):
        mi.stability_label(7)
    batched = jax.vmap(lambda x: mi.stability(logistic, x))(jnp.asarray([0.0, 1 - 1 / R]))
    assert batched.label == ["unstable", "stable"]
    x0 = jnp.float32(0.5)
    with pytest.raises(errors.OptionError):
        mi.find_fixed_point(logistic, x0, method="bisect")
    with pytest.raises(errors.OptionError):
        mi.find_fixed_point(logistic, x0, tol=0.0)
    with pytest.raises(errors.OptionError):
        mi.find_fixed_point(logistic, x0, max_iter=-1)
    with pytest.raises(errors.OptionError):
        mi.find_fixed_point(logistic, x0, max_iter=2.5)
    with pytest.raises(errors.OptionError):
        mi.find_fixed_point("f", x0)
    with pytest.raises(errors.DTypeError):
        mi.find_fixed_point(lambda x: x, jnp.int32(1))
    with pytest.raises(errors.ShapeError):
        mi.find_fixed_point(lambda x: x[:1], jnp.zeros(3))
    with pytest.raises(errors.ShapeError):
        mi.find_fixed_point(lambda x: x, jnp.zeros(0))
    with pytest.raises(errors.OptionError):
        mi.stability(logistic, x0, tol=-1.0)
    with pytest.raises(errors.ShapeError):
        mi.jacobian(lambda x: jnp.sum(x), jnp.zeros(3))
