"""Goals and preferences: values, satisfaction, gradients, composition, errors."""

from __future__ import annotations

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
from mmsb_jax import utility as mu

SCHEMA = mm.Schema([mm.PageSpec("pos", (4, 2)), mm.PageSpec("flag", (3,), "int32")])
TARGET = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)


def state_at(pos) -> mm.State:
    return mm.init_state(SCHEMA).with_pages({"pos": jnp.asarray(pos, jnp.float32)})


def test_target_goal_values():
    g = mi.Goal("pos", target=TARGET, weight=2.0, tol=0.1)
    s0 = state_at(np.zeros((4, 2)))
    assert float(g.distance(s0)) == pytest.approx(2.0)  # sqrt(4 * 1)
    assert float(g.utility(s0)) == pytest.approx(-4.0)
    assert not bool(g.satisfied(s0))
    near = state_at(TARGET + 0.01)
    assert bool(g.satisfied(near))
    assert float(g.utility(state_at(TARGET))) == 0.0
    assert g.name == "goal(pos)"
    sq = mi.Goal("pos", target=TARGET, norm="sq")
    assert float(sq.utility(s0)) == pytest.approx(-4.0)
    row = mi.Goal("pos", target=jnp.array([1.0, 1.0]), norm="linf")  # broadcast target
    assert float(row.distance(s0)) == pytest.approx(1.0)


def test_predicate_goals_bool_and_margin():
    inside = mi.Goal("pos", predicate=lambda x: 1.0 - jnp.max(jnp.abs(x)), weight=3.0)
    s = state_at(np.full((4, 2), 1.5))
    assert not bool(inside.satisfied(s))
    assert float(inside.distance(s)) == pytest.approx(0.5)
    assert float(inside.utility(s)) == pytest.approx(-3.0 * 0.25)
    assert bool(inside.satisfied(state_at(np.zeros((4, 2)))))
    g = mu.grad(inside.as_utility(), s, wrt="pos")
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.sum(jnp.abs(g))) > 0
    flag = mi.Goal("flag", predicate=lambda f: jnp.all(f == 0))
    assert bool(flag.satisfied(s))
    assert float(flag.utility(s)) == 0.0
    raised = s.with_pages({"flag": jnp.asarray([0, 1, 0], jnp.int32)})
    assert float(flag.utility(raised)) == -1.0 and float(flag.distance(raised)) == 1.0


@settings(max_examples=25, deadline=None)
@given(pos=st.lists(st.floats(-3, 3, width=32), min_size=8, max_size=8),
       weight=st.floats(0, 5, width=32))
def test_goal_utility_is_minus_weight_times_distance(pos, weight):
    s = state_at(np.asarray(pos, np.float32).reshape(4, 2))
    g = mi.Goal("pos", target=TARGET, weight=weight)
    assert float(g.utility(s)) == pytest.approx(-weight * float(g.distance(s)), abs=1e-5)
    assert float(g.distance(s)) >= 0
    assert bool(g.satisfied(s)) == (float(g.distance(s)) <= g.tol)


def test_goal_gradients_and_transforms():
    g = mi.Goal("pos", target=TARGET, norm="sq", weight=0.5)
    s = state_at(np.arange(8, dtype=np.float32).reshape(4, 2) / 8)
    grad = mu.grad(g.as_utility(), s, wrt="pos")
    np.testing.assert_allclose(grad, -0.5 * 2 * (np.asarray(s.pages["pos"]) - TARGET),
                               rtol=1e-6)

    def f(x):
        return g.utility(s.with_pages({"pos": x}))

    check_grads(jax.jit(f), (s.pages["pos"],), order=1, modes=["rev"], eps=1e-3, atol=1e-2,
                rtol=1e-2)
    batch = jnp.stack([jnp.zeros((4, 2)), jnp.asarray(TARGET)])
    vals = jax.vmap(lambda x: g.utility(s.with_pages({"pos": x})))(batch)
    np.testing.assert_allclose(vals, [-0.5 * 4.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(jax.jit(g.utility)(s), g.utility(s), rtol=1e-6)


def test_preferences_and_goal_sets():
    s = state_at(np.zeros((4, 2)))
    g1 = mi.Goal("pos", target=TARGET, norm="sq", weight=1.0)
    g2 = mi.Goal("pos", predicate=lambda x: -jnp.sum(x**2) + 1.0)
    prefs = [mi.Preference(-2.0, mu.smoothness("pos")), g1, (0.5, mu.page_sum("pos"))]
    u = mi.preference_utility(prefs)
    expect = -2.0 * float(mu.smoothness("pos")(s)) + float(g1.utility(s)) + 0.5 * 0.0
    assert float(u(s)) == pytest.approx(expect)
    np.testing.assert_array_equal(mi.goals_satisfied([g1, g2], s), [False, True])
    assert mi.goals_satisfied([], s).shape == (0,)


def test_goal_errors():
    s = state_at(np.zeros((4, 2)))
    with pytest.raises(errors.OptionError):
        mi.Goal("pos")
    with pytest.raises(errors.OptionError):
        mi.Goal("pos", target=TARGET, predicate=lambda x: True)
    with pytest.raises(errors.OptionError):
        mi.Goal("pos", predicate=3)
    with pytest.raises(errors.DomainError):
        mi.Goal("pos", target=TARGET, weight=-1.0)
    with pytest.raises(errors.DomainError):
        mi.Goal("pos", target=TARGET, weight=float("inf"))
    with pytest.raises(errors.OptionError):
        mi.Goal("pos", target=TARGET, tol=-0.1)
    with pytest.raises(errors.OptionError):
        mi.Goal("pos", target=TARGET, norm="l7")
    with pytest.raises(errors.OptionError):
        mi.Goal(3, target=TARGET)
    with pytest.raises(errors.DomainError):
        mi.Goal("pos", target=np.array(["a"]))
    with pytest.raises(errors.ShapeError):
        mi.Goal("pos", target=np.zeros(3)).utility(s)
    with pytest.raises(errors.ShapeError):
        mi.Goal("pos", predicate=lambda x: x > 0).satisfied(s)
    with pytest.raises(errors.UnknownPageError):
        mi.Goal("nope", target=0.0).utility(s)
    with pytest.raises(errors.OptionError):
        mi.preference_utility([42])
    with pytest.raises(errors.OptionError):
        mi.goals_satisfied([mu.page_sum("pos")], s)
