"""Transition models on the bus: delta_model semantics, rollouts, baselines, input checks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax import planning as mp
from mmsb_jax.core.graph import Graph

# A 5x5 maze with a wall column: greedy walks into it and oscillates.
WALLS = np.zeros((5, 5), bool)
WALLS[1:4, 2] = True
START, GOAL = np.array([2, 1]), np.array([2, 4])


def grid_state(start=START, goal=GOAL, walls=WALLS) -> mm.State:
    return mp.gridworld_state(walls, np.asarray(start), np.asarray(goal))


def batch(*states: mm.State) -> mm.State:
    return jax.tree.map(lambda *x: jnp.stack(x), *states)


# -- delta_model / gridworld semantics --------------------------------------------------------

def test_gridworld_state_is_written_with_deltas():
    s = grid_state()
    assert s.pages["pos"].tolist() == [2, 1] and s.pages["goal"].tolist() == [2, 4]
    assert s.pages["walls"].dtype == jnp.bool_
    assert {n: int(e) for n, e in s.epochs.items()} == {"pos": 1, "walls": 1, "goal": 1}
    assert mp.gridworld_schema(5, 5) == mm.Schema([mm.PageSpec("pos", (2,), "int32"),
                                                    mm.PageSpec("walls", (5, 5), "bool"),
                                                    mm.PageSpec("goal", (2,), "int32")])


def test_step_moves_with_a_delta_and_counts_epochs():
    model = mp.gridworld_model()
    s = grid_state()
    up, right, down, left = 0, 1, 2, 3
    assert model.valid_actions(s).tolist() == [True, False, True, True]
    nxt, r, d = model.step(s, jnp.int32(up))
    assert nxt.pages["pos"].tolist() == [1, 1]
    assert int(nxt.epochs["pos"]) == 2 and int(nxt.epochs["walls"]) == 1
    np.testing.assert_allclose([r, d], [-0.01, 0.97], rtol=1e-6)
    # An invalid move (into the wall) is a no-op that still costs a step; epochs unchanged.
    bump, r, d = model.step(s, jnp.int32(right))
    assert bump.pages["pos"].tolist() == [2, 1] and int(bump.epochs["pos"]) == 1
    np.testing.assert_allclose([r, d], [-0.01, 0.97], rtol=1e-6)
    del down, left


def test_goal_pays_and_terminal_is_absorbing():
    model = mp.gridworld_model()
    s = grid_state(start=[1, 4])
    at, r, d = model.step(s, jnp.int32(2))  # down onto the goal
    assert at.pages["pos"].tolist() == [2, 4]
    np.testing.assert_allclose([r, d], [0.99, 0.0], rtol=1e-6)
    again, r, d = model.step(at, jnp.int32(3))  # any move from the goal: nothing happens
    assert again.pages["pos"].tolist() == [2, 4] and int(again.epochs["pos"]) == 2
    assert float(r) == 0.0 and float(d) == 0.0


def test_heuristic_value_is_an_upper_bound_of_the_true_value():
    model = mp.gridworld_model()
    gamma, cost = 0.97, 0.01
    dist = mp.maze_distances(WALLS, tuple(GOAL))
    for r, c in np.argwhere(dist > 0):
        s = grid_state(start=[r, c])
        d = int(dist[r, c])
        true = gamma ** (d - 1) - cost * (1 - gamma ** d) / (1 - gamma)
        h = float(model.value_fn(s, jax.random.key(0)))
        assert h >= true - 1e-6
        if abs(r - GOAL[0]) + abs(c - GOAL[1]) == d:  # nothing in the way: exact
            np.testing.assert_allclose(h, true, rtol=1e-5)


def test_delta_model_with_graph_recomputes_derived_pages():
    schema = mm.Schema([mm.PageSpec("x", (2,)), mm.PageSpec("target", (2,))])
    graph = Graph(schema).derive("dist", ("x", "target"),
                                 lambda x, t: jnp.sum(jnp.abs(x - t)))
    moves = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    model = mp.delta_model(
        2, lambda s, a: mm.Delta.full("x", moves[a], op="add"),
        lambda s, a, n: s.pages["dist"] - n.pages["dist"],
        terminal=lambda s: s.pages["dist"] < 0.5, graph=graph, discount=1.0)
    s = mm.init_state(graph.schema)
    s = mm.apply(s, mm.Delta.full("target", jnp.array([1.0, 1.0])))
    from mmsb_jax.core.propagate import propagate
    s = propagate(graph, s, ("target",))
    assert float(s.pages["dist"]) == 2.0
    s1, r, d = model.step(s, jnp.int32(0))
    assert float(s1.pages["dist"]) == 1.0 and float(r) == 1.0 and float(d) == 1.0
    s2, r, d = model.step(s1, jnp.int32(1))
    assert float(s2.pages["dist"]) == 0.0 and float(r) == 1.0 and float(d) == 0.0
    assert int(s2.epochs["dist"]) == 3


def test_delta_model_rejects_bad_arguments():
    f = lambda s, a: mm.Delta.full("x", s.pages["x"])
    r = lambda s, a, n: jnp.float32(0)
    with pytest.raises(errors.OptionError):
        mp.delta_model(0, f, r)
    with pytest.raises(errors.OptionError):
        mp.delta_model(True, f, r)
    with pytest.raises(errors.OptionError):
        mp.delta_model(2, "f", r)
    with pytest.raises(errors.OptionError):
        mp.delta_model(2, f, r, discount=1.5)
    with pytest.raises(errors.OptionError):
        mp.delta_model(2, f, r, terminal=3)
    with pytest.raises(errors.OptionError):
        mp.delta_model(2, f, r, graph="g")
    model = mp.delta_model(2, lambda s, a: [], r)
    s = mm.init_state(mm.Schema([mm.PageSpec("x", (2,))]))
    with pytest.raises(errors.OptionError):
        model.step(s, jnp.int32(0))


def test_gridworld_inputs_are_checked():
    with pytest.raises(errors.DomainError):
        grid_state(start=[1, 2])  # a wall
    with pytest.raises(errors.IndexOutOfRangeError):
        grid_state(goal=[5, 0])
    with pytest.raises(errors.DTypeError):
        mp.gridworld_state(WALLS.astype(np.int32), START, GOAL)
    with pytest.raises(errors.ShapeError):
        mp.gridworld_states(WALLS, START, GOAL)  # not batched
    with pytest.raises(errors.OptionError):
        mp.gridworld_schema(0, 3)
    with pytest.raises(errors.OptionError):
        mp.gridworld_model(discount=0.0)
    with pytest.raises(errors.OptionError):
        mp.random_mazes(0, 2, 3, 3, min_distance=9)
    with pytest.raises(errors.DomainError):
        mp.maze_distances(WALLS, (1, 2))


def test_random_mazes_are_reproducible_and_solvable():
    w1, s1, g1 = mp.random_mazes(7, 6, 6, 6, wall_density=0.35, min_distance=5)
    w2, _, g2 = mp.random_mazes(7, 6, 6, 6, wall_density=0.35, min_distance=5)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(g1, g2)
    for w, s, g in zip(w1, s1, g1, strict=True):
        assert not w[tuple(s)] and not w[tuple(g)]
        assert mp.maze_distances(w, tuple(s))[tuple(g)] >= 5


# -- rollouts and baselines -------------------------------------------------------------------

def test_greedy_oscillates_behind_a_wall_and_random_explores():
    model = mp.gridworld_model()
    states = batch(grid_state(), grid_state(start=[0, 3]))
    traj = mp.rollout(model, states, mp.greedy_policy, jax.random.key(0), num_steps=12)
    assert traj.actions.shape == (2, 12) and traj.states.pages["pos"].shape == (2, 13, 2)
    assert not bool(traj.done[0, -1])  # stuck behind the wall
    assert bool(traj.done[1, -1]) and int(traj.steps_to_done[1]) == 3  # free run: 3 steps
    np.testing.assert_allclose(traj.total_reward, [-0.12, 0.97], rtol=1e-5)
    assert float(traj.rewards[1, 3:].sum()) == 0.0  # nothing after the goal
    rand = mp.rollout(model, states, mp.random_policy(model), jax.random.key(0), num_steps=12)
    pos = np.asarray(rand.states.pages["pos"])
    assert not WALLS[pos[..., 0], pos[..., 1]].any()  # never stands in a wall


def test_random_policy_only_picks_valid_actions():
    model = mp.gridworld_model()
    walls, starts, goals = mp.random_mazes(3, 32, 5, 5, wall_density=0.4, min_distance=1)
    states = mp.gridworld_states(walls, starts, goals)
    valid = jax.vmap(model.valid_actions)(states)
    policy = jax.jit(mp.random_policy(model))
    for k in range(5):
        a = policy(states, jax.random.key(k))
        assert bool(jnp.all(valid[jnp.arange(32), a]))


def test_rollout_value_is_the_return_of_a_random_walk():
    model = mp.gridworld_model(heuristic=False)
    value = mp.rollout_value(model, 3)
    # One step from the goal, with only the goal move valid except backwards.
    s = grid_state(start=[2, 3])
    v = jax.jit(jax.vmap(value, in_axes=(None, 0)))(s, jax.random.split(jax.random.key(1), 256))
    # Returns are one of the few discrete values of 3-step random walks.
    assert float(v.max()) == pytest.approx(0.99, abs=1e-6)
    assert float(v.min()) >= -0.03 - 1e-6
    assert 0.0 < float(jnp.mean(v == v.max())) < 1.0


def test_rollout_compiles_once():
    model = mp.gridworld_model()
    traced = chex.assert_max_traces(mp.greedy_policy, n=1)
    for seed in range(3):
        walls, starts, goals = mp.random_mazes(seed, 4, 5, 5, min_distance=2)
        traj = mp.rollout(model, mp.gridworld_states(walls, starts, goals), traced,
                          jax.random.key(seed), num_steps=6)
        assert traj.actions.shape == (4, 6)


def test_rollout_and_batches_reject_bad_input():
    model = mp.gridworld_model()
    s = grid_state()
    with pytest.raises(errors.ShapeError):
        mp.rollout(model, s, mp.greedy_policy, jax.random.key(0), num_steps=3)  # unbatched
    with pytest.raises(errors.OptionError):
        mp.rollout(model, batch(s), mp.greedy_policy, jax.random.key(0), num_steps=0)
    with pytest.raises(errors.OptionError):
        mp.rollout(model, batch(s), "greedy", jax.random.key(0), num_steps=3)
    with pytest.raises(errors.ShapeError):
        mp.batch_size(s.with_pages({"walls": jnp.zeros((3, 5, 5), bool)}))
    with pytest.raises(errors.ShapeError):
        mp.batch_size({"pos": 1})
    with pytest.raises(errors.ShapeError, match="empty"):
        mp.batch_size(jax.tree.map(lambda x: x[None][:0], s))
    with pytest.raises(errors.OptionError):
        mp.random_policy("model")
    with pytest.raises(errors.OptionError):
        mp.rollout_value(model, 0)


def test_model_outputs_are_checked_by_tracing():
    good = mp.gridworld_model()
    s = batch(grid_state())
    pol = mp.greedy_policy
    bad_reward = good._replace(step=lambda st, a: (good.step(st, a)[0], jnp.zeros(2),
                                                   jnp.float32(1)))
    with pytest.raises(errors.ShapeError, match="scalar reward"):
        mp.rollout(bad_reward, s, pol, jax.random.key(0), num_steps=2)
    int_reward = good._replace(step=lambda st, a: (good.step(st, a)[0], jnp.int32(0),
                                                   jnp.float32(1)))
    with pytest.raises(errors.DTypeError):
        mp.rollout(int_reward, s, pol, jax.random.key(0), num_steps=2)
    bad_state = good._replace(step=lambda st, a: (st.with_pages({"pos": st.pages["pos"] * 1.0}),
                                                  jnp.float32(0), jnp.float32(1)))
    with pytest.raises(errors.ShapeError, match="same pages"):
        mp.rollout(bad_state, s, pol, jax.random.key(0), num_steps=2)
    bad_valid = good._replace(valid_actions=lambda st: jnp.ones(3, bool))
    with pytest.raises(errors.ShapeError, match="valid_actions"):
        mp.rollout(bad_valid, s, pol, jax.random.key(0), num_steps=2)
    bad_prior = good._replace(prior_fn=lambda st: jnp.zeros(5))
    with pytest.raises(errors.ShapeError, match="prior_fn"):
        mp.rollout(bad_prior, s, pol, jax.random.key(0), num_steps=2)
    bad_value = good._replace(value_fn=lambda st, k: jnp.zeros(2))
    with pytest.raises(errors.ShapeError, match="value_fn"):
        mp.rollout(bad_value, s, pol, jax.random.key(0), num_steps=2)
    with pytest.raises(errors.OptionError):
        mp.rollout(good._replace(num_actions=0), s, pol, jax.random.key(0), num_steps=2)
