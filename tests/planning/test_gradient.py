"""plan_gradient: reaches goals in the point-mass world through mm.apply, gradients, errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax import planning as mp

STEP = mp.point_mass_step(dt=0.1, mass=1.0, drag=0.1)
RUNNING, TERMINAL = mp.point_mass_costs(effort=1e-3, velocity_weight=0.1)
OPT = optax.adam(0.3)
T, ITERS = 30, 150


def start(goal, pos=(0.0, 0.0), obstacles=None) -> mm.State:
    return mp.point_mass_state(jnp.asarray(pos), jnp.asarray(goal), obstacles=obstacles)


def plan(state, **kw):
    kw.setdefault("horizon", T)
    kw.setdefault("iters", ITERS)
    kw.setdefault("optimizer", OPT)
    return mp.plan_gradient(STEP, state, terminal_cost=TERMINAL, running_cost=RUNNING,
                            action_shape=(2,), **kw)


def test_point_mass_step_is_two_add_deltas():
    s = start([1.0, 1.0])
    s1 = STEP(s, jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(s1.pages["vel"], [0.1, 0.0], rtol=1e-6)
    np.testing.assert_allclose(s1.pages["pos"], [0.01, 0.0], rtol=1e-6)
    assert int(s1.epochs["vel"]) == 2 and int(s1.epochs["pos"]) == 2
    assert int(s1.epochs["goal"]) == 1


def test_gradient_planner_reaches_the_goal_and_beats_doing_nothing():
    goals = jnp.array([[2.0, 1.0], [-1.5, 0.5], [0.5, -2.0]])
    states = jax.vmap(lambda g: start(g))(goals)
    plans = jax.vmap(plan)(states)
    final_pos = plans.states.pages["pos"][:, -1]
    final_vel = plans.states.pages["vel"][:, -1]
    assert plans.actions.shape == (3, T, 2) and plans.cost_history.shape == (3, ITERS)
    np.testing.assert_allclose(final_pos, goals, atol=0.1)
    assert bool(jnp.all(jnp.linalg.norm(final_vel, axis=1) < 0.3))
    zero = jax.vmap(lambda s: mp.trajectory_cost(STEP, s, jnp.zeros((T, 2)),
                                                 terminal_cost=TERMINAL,
                                                 running_cost=RUNNING))(states)
    np.testing.assert_allclose(plans.initial_cost, zero, rtol=1e-6)  # zero actions: the start
    assert bool(jnp.all(plans.cost < 0.05 * zero))
    # The reported cost is the cost of the returned actions, the best of the history.
    again = jax.vmap(lambda s, a: mp.trajectory_cost(STEP, s, a, terminal_cost=TERMINAL,
                                                     running_cost=RUNNING))(states,
                                                                            plans.actions)
    np.testing.assert_allclose(plans.cost, again, rtol=1e-5)
    assert bool(jnp.all(plans.cost <= jnp.min(plans.cost_history, axis=1) + 1e-6))


def test_gradients_through_the_bus_match_finite_differences():
    s = start([1.0, -0.5], obstacles=jnp.array([[0.3, 0.0, 0.2]]))
    actions = jax.random.normal(jax.random.key(0), (5, 2))

    @jax.jit
    def cost(a):
        return mp.trajectory_cost(STEP, s, a, terminal_cost=TERMINAL, running_cost=RUNNING)

    check_grads(cost, (actions,), order=1, modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-2)


def test_action_bounds_are_respected():
    p = plan(start([3.0, 3.0]), action_bounds=(-0.5, 0.5), iters=20)
    assert float(jnp.max(jnp.abs(p.actions))) <= 0.5 + 1e-6
    assert float(p.cost) < float(p.initial_cost)


def test_plan_gradient_compiles_once():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def solve(state):
        return mp.plan_gradient(STEP, state, horizon=8, terminal_cost=TERMINAL,
                                action_shape=(2,), optimizer=OPT, iters=5).actions

    traces = []

    def counted(state, action):
        traces.append(1)
        return STEP(state, action)

    for g in ([1.0, 0.0], [0.0, 1.0], [2.0, 2.0]):
        assert solve(start(g)).shape == (8, 2)
        # The eager entry point traces step_fn on the first call only (check + plan).
        p = mp.plan_gradient(counted, start(g), horizon=8, terminal_cost=TERMINAL,
                             action_shape=(2,), optimizer=OPT, iters=5)
        assert p.actions.shape == (8, 2)
        if g == [1.0, 0.0]:
            first = len(traces)
    assert first > 0 and len(traces) == first


def test_plan_gradient_rejects_bad_input():
    s = start([1.0, 0.0])
    with pytest.raises(errors.OptionError):
        mp.plan_gradient("step", s, horizon=3, terminal_cost=TERMINAL)
    with pytest.raises(errors.OptionError):
        mp.plan_gradient(STEP, s, horizon=0, terminal_cost=TERMINAL, action_shape=(2,))
    with pytest.raises(errors.OptionError):
        mp.plan_gradient(STEP, s, horizon=3, terminal_cost=TERMINAL, action_shape=(2,),
                         iters=-1)
    with pytest.raises(errors.OptionError):
        mp.plan_gradient(STEP, s, horizon=3, terminal_cost=TERMINAL, action_shape=(2,),
                         optimizer="adam")
    with pytest.raises(errors.OptionError):
        mp.plan_gradient(STEP, {"pos": 1}, horizon=3, terminal_cost=TERMINAL)
    with pytest.raises(errors.ShapeError):
        mp.plan_gradient(STEP, s, horizon=3, terminal_cost=TERMINAL, action_shape=(2,),
                         init_actions=jnp.zeros((4, 2)))
    with pytest.raises(errors.DTypeError):
        mp.plan_gradient(STEP, s, horizon=3, terminal_cost=TERMINAL, action_shape=(2,),
                         init_actions=jnp.zeros((3, 2), jnp.int32))
    with pytest.raises(errors.DomainError):
        mp.plan_gradient(STEP, s, horizon=3, terminal_cost=TERMINAL, action_shape=(2,),
                         action_bounds=(1.0, -1.0))
    with pytest.raises(errors.OptionError):
        mp.plan_gradient(STEP, s, horizon=3, terminal_cost=TERMINAL, action_shape=(2,),
                         action_bounds=1.0)
    with pytest.raises(errors.ShapeError, match="scalar"):
        mp.plan_gradient(STEP, s, horizon=3, terminal_cost=lambda st: st.pages["pos"],
                         action_shape=(2,))
    with pytest.raises(errors.ShapeError, match="same pages"):
        mp.plan_gradient(lambda st, a: st.with_pages({"pos": jnp.zeros(3)}), s, horizon=3,
                         terminal_cost=TERMINAL, action_shape=(2,))
    with pytest.raises(errors.ShapeError):
        mp.point_mass_state(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(errors.OptionError):
        mp.point_mass_step(dt=0.0)
    with pytest.raises(errors.OptionError):
        mp.point_mass_costs(effort=-1.0)
    with pytest.raises(errors.OptionError):
        mp.point_mass_schema(-1)
