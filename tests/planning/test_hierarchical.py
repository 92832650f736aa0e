"""Goal decomposition (TROPICAL closure shortest paths) and hierarchical planning."""

from __future__ import annotations

import math

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import shortest_path

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax import planning as mp

H = W = 5
STRIDE, K = 3, 4
WALLS = np.zeros((H, W), bool)
WALLS[1:4, 2] = True
START, GOAL = np.array([2, 1]), np.array([2, 4])


def scipy_distances(walls: np.ndarray) -> np.ndarray:
    a = np.asarray(mp.grid_adjacency(walls))
    return shortest_path(np.where(np.isfinite(a), a, 0.0), method="D", unweighted=False)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.bool_, (H, W), elements=st.booleans()), st.integers(0, 2**31 - 1))
def test_waypoints_lie_on_a_shortest_path(walls, seed):
    rng = np.random.default_rng(seed)
    walls[rng.integers(H), rng.integers(W)] = False
    free = np.argwhere(~walls)
    start, goal = free[rng.integers(len(free))], free[rng.integers(len(free))]
    sg = mp.decompose_grid(walls, jnp.asarray(start), jnp.asarray(goal), stride=STRIDE,
                           max_subgoals=K)
    d = scipy_distances(walls)
    s_idx, g_idx = start[0] * W + start[1], goal[0] * W + goal[1]
    total = d[s_idx, g_idx]
    assert bool(sg.reachable) == bool(np.isfinite(total))
    if not np.isfinite(total):
        assert int(sg.count) == 0 and int(sg.hops) == -1 and bool(jnp.all(sg.nodes == -1))
        return
    assert float(sg.path_length) == total and int(sg.hops) == int(total)
    count = int(sg.count)
    assert count == min(math.ceil(total / STRIDE), K)
    nodes = np.asarray(sg.nodes)
    assert (nodes[count:] == -1).all()
    if count == 0:
        assert s_idx == g_idx
        return
    assert nodes[count - 1] == g_idx
    np.testing.assert_array_equal(np.asarray(sg.points[:count]),
                                  np.stack([nodes[:count] // W, nodes[:count] % W], axis=1))
    prev = s_idx
    for n in nodes[:count]:
        # Each waypoint is on a shortest path, evenly spaced, at most `stride` (or the spacing
        # K waypoints force) from the previous one.
        assert d[s_idx, n] + d[n, g_idx] == total
        gap = d[prev, n]
        assert 1 <= gap <= max(STRIDE, math.ceil(total / K))
        assert d[s_idx, n] > d[s_idx, prev] or prev == s_idx
        prev = n


def test_decompose_on_a_weighted_graph_with_points():
    inf = np.inf
    # 0 -> 1 -> 2 -> 3 costs 3; the direct edge 0 -> 3 costs 5.
    a = jnp.array([[inf, 1, inf, 5], [inf, inf, 1, inf], [inf, inf, inf, 1],
                   [inf, inf, inf, inf]], jnp.float32)
    points = jnp.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    sg = mp.decompose(a, 0, 3, stride=1, max_subgoals=5, node_points=points)
    assert sg.nodes.tolist() == [1, 2, 3, -1, -1] and int(sg.count) == 3
    assert float(sg.path_length) == 3.0 and int(sg.hops) == 3
    np.testing.assert_allclose(sg.points[:3], points[1:])
    np.testing.assert_allclose(sg.points[3:], 0.0)
    # Fewer slots than stride-spaced waypoints: evenly spaced, the goal last.
    sg = mp.decompose(a, 0, 3, stride=1, max_subgoals=2)
    assert sg.nodes.tolist() == [2, 3] and int(sg.count) == 2
    # Precomputed distances give the same answer; no path backwards.
    dist = mm.semiring.closure(mm.semiring.TROPICAL, a)
    assert mp.decompose(a, 0, 3, stride=2, max_subgoals=3,
                        distances=dist).nodes.tolist() == [2, 3, -1]
    back = mp.decompose(a, 3, 0, stride=2, max_subgoals=3)
    assert not bool(back.reachable) and int(back.count) == 0
    assert math.isinf(float(back.path_length))
    same = mp.decompose(a, 2, 2, stride=2, max_subgoals=3)
    assert bool(same.reachable) and int(same.count) == 0 and int(same.hops) == 0


def test_decompose_is_jittable_and_compiles_once():
    a = mp.grid_adjacency(WALLS)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def waypoints(start, goal):
        return mp.decompose(a, start, goal, stride=STRIDE, max_subgoals=K).nodes

    ref = mp.decompose(a, jnp.int32(11), jnp.int32(14), stride=STRIDE, max_subgoals=K).nodes
    np.testing.assert_array_equal(waypoints(jnp.int32(11), jnp.int32(14)), ref)
    for s, g in ((0, 24), (20, 4), (5, 9)):
        assert waypoints(jnp.int32(s), jnp.int32(g)).shape == (K,)


def test_decompose_rejects_bad_input():
    a = mp.grid_adjacency(WALLS)
    with pytest.raises(errors.ShapeError):
        mp.decompose(a[:3], 0, 1, stride=1, max_subgoals=2)
    with pytest.raises(errors.DTypeError):
        mp.decompose(jnp.ones((3, 3), jnp.int32), 0, 1, stride=1, max_subgoals=2)
    with pytest.raises(errors.DomainError):
        mp.decompose(-jnp.ones((3, 3)), 0, 1, stride=1, max_subgoals=2)
    with pytest.raises(errors.DomainError):  # a zero-cost edge
        mp.decompose(jnp.array([[0.0, 0.0], [1.0, 0.0]]), 0, 1, stride=1, max_subgoals=2)
    with pytest.raises(errors.DomainError):
        mp.decompose(a, 0, 25, stride=1, max_subgoals=2)
    with pytest.raises(errors.DTypeError):
        mp.decompose(a, 0.0, 3, stride=1, max_subgoals=2)
    with pytest.raises(errors.ShapeError):
        mp.decompose(a, jnp.array([0, 1]), 3, stride=1, max_subgoals=2)
    with pytest.raises(errors.OptionError):
        mp.decompose(a, 0, 3, stride=0, max_subgoals=2)
    with pytest.raises(errors.ShapeError):
        mp.decompose(a, 0, 3, stride=1, max_subgoals=2, node_points=jnp.zeros((4, 2)))
    with pytest.raises(errors.ShapeError):
        mp.decompose(a, 0, 3, stride=1, max_subgoals=2, distances=jnp.zeros((3, 3)))
    with pytest.raises(errors.DomainError):
        mp.decompose_grid(WALLS, jnp.array([0, 5]), jnp.array([0, 0]), stride=1,
                          max_subgoals=2)
    with pytest.raises(errors.ShapeError):
        mp.decompose_grid(WALLS, jnp.array([0]), jnp.array([0, 0]), stride=1, max_subgoals=2)
    with pytest.raises(errors.DTypeError):
        mp.grid_adjacency(WALLS.astype(np.int32))


# -- hierarchical planning --------------------------------------------------------------------

def test_hierarchical_mcts_solves_the_maze_where_greedy_fails():
    model = mp.gridworld_model()
    state = mp.gridworld_state(WALLS, START, GOAL)
    sg = mp.decompose_grid(WALLS, jnp.asarray(START), jnp.asarray(GOAL), stride=STRIDE,
                           max_subgoals=K)
    # A weak searcher (8 simulations) only ever has to look 3 steps ahead.
    seg = mp.mcts_segment(model, max_steps=5, num_simulations=8, static_pages=("walls",))
    out = mp.plan_hierarchical(state, sg, jax.random.key(0), plan_segment=seg)
    assert bool(out.success)
    assert out.state.pages["pos"].tolist() == GOAL.tolist()
    assert out.state.pages["goal"].tolist() == GOAL.tolist()  # the last subgoal is the goal
    count = int(sg.count)
    assert out.reached.tolist() == [True] * count + [False] * (K - count)
    np.testing.assert_array_equal(out.segment_states.pages["pos"][:count], sg.points[:count])
    assert int(jnp.sum(out.info.steps[:count])) == int(sg.hops)  # an optimal path: 7 steps
    flat = mp.rollout(model, jax.tree.map(lambda x: x[None], state), mp.greedy_policy,
                      jax.random.key(0), num_steps=4 * 5)
    assert not bool(flat.done[0, -1])


def test_hierarchical_gradient_goes_round_an_obstacle():
    # A circle sits exactly between start and goal: the flat gradient has no reason to leave
    # the line of symmetry and stops in front of it.
    step = mp.point_mass_step(dt=0.1)
    running, terminal = mp.point_mass_costs(effort=1e-3, velocity_weight=0.1)
    opt = optax.adam(0.3)
    obstacles = jnp.array([[2.0, 0.0, 0.8]])
    state = mp.point_mass_state(jnp.array([0.0, 0.0]), jnp.array([4.0, 0.0]),
                                obstacles=obstacles)
    flat = mp.plan_gradient(step, state, horizon=60, terminal_cost=terminal,
                            running_cost=running, action_shape=(2,), optimizer=opt, iters=150)
    flat_miss = float(jnp.linalg.norm(flat.states.pages["pos"][-1] - state.pages["goal"]))
    assert flat_miss > 1.0
    # Waypoints from a 1-unit occupancy grid over [-0.5, 4.5] x [-2.5, 2.5].
    centres = jnp.stack(jnp.meshgrid(jnp.arange(5.0), jnp.arange(-2.0, 3.0), indexing="xy"),
                        -1).reshape(-1, 2)  # node r * 5 + c is the cell at (x=c, y=r-2)
    blocked = jnp.linalg.norm(centres - obstacles[0, :2], axis=1) < obstacles[0, 2]
    walls = np.asarray(blocked).reshape(5, 5)
    sg = mp.decompose(mp.grid_adjacency(walls), 2 * 5 + 0, 2 * 5 + 4, stride=2,
                      max_subgoals=4, node_points=centres)
    assert bool(sg.reachable) and int(sg.count) == 3
    seg = mp.gradient_segment(step, horizon=20, terminal_cost=terminal, running_cost=running,
                              action_shape=(2,), optimizer=opt, iters=150,
                              reached=lambda s: jnp.linalg.norm(s.pages["pos"]
                                                                - s.pages["goal"]) < 0.15)
    traces = []

    def counted(s, key):
        traces.append(1)
        return seg(s, key)

    out = mp.plan_hierarchical(state, sg, jax.random.key(0), plan_segment=counted)
    # Compiled once: a new start state (same shapes) reuses the program.
    first = len(traces)
    moved = state.with_pages({"pos": jnp.array([0.0, 0.2])})
    again = mp.plan_hierarchical(moved, sg, jax.random.key(1), plan_segment=counted)
    assert len(traces) == first and bool(again.success)
    assert bool(out.success)
    final = out.state.pages["pos"]
    assert float(jnp.linalg.norm(final - jnp.array([4.0, 0.0]))) < 0.15
    path = out.info.states.pages["pos"][: int(sg.count)].reshape(-1, 2)  # every planned step
    assert bool(jnp.all(jnp.linalg.norm(path - obstacles[0, :2], axis=1) > 0.8))
    assert out.info.actions.shape == (4, 20, 2)


def test_plan_hierarchical_rejects_bad_input():
    state = mp.gridworld_state(WALLS, START, GOAL)
    sg = mp.decompose_grid(WALLS, jnp.asarray(START), jnp.asarray(GOAL), stride=STRIDE,
                           max_subgoals=K)
    seg = mp.mcts_segment(mp.gridworld_model(), max_steps=5, num_simulations=8)
    key = jax.random.key(0)
    with pytest.raises(errors.UnknownPageError):
        mp.plan_hierarchical(state, sg, key, plan_segment=seg, goal_page="target")
    with pytest.raises(errors.ShapeError):
        mp.plan_hierarchical(state, sg._replace(points=sg.points[:, :1]), key,
                             plan_segment=seg)
    with pytest.raises(errors.OptionError):
        mp.plan_hierarchical(state, sg, key, plan_segment="mcts")
    with pytest.raises(errors.OptionError):
        mp.plan_hierarchical(state, (1, 2), key, plan_segment=seg)
    with pytest.raises(errors.OptionError):
        mp.mcts_segment(mp.gridworld_model(), max_steps=0, num_simulations=8)
    with pytest.raises(errors.OptionError):
        mp.mcts_segment(mp.gridworld_model(), max_steps=3, num_simulations=8, policy="x")
    with pytest.raises(errors.OptionError):
        mp.gradient_segment(mp.point_mass_step(), horizon=3, terminal_cost=None,
                            reached=lambda s: True)
