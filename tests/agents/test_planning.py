"""PlanningAgent: mctx search over the environment's own transition deltas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax.agents as ag
from mmsb_jax.errors import OptionError

PARAMS = ag.GridWorldParams(max_steps_in_episode=20)


@pytest.fixture(scope="module")
def maze():
    walls = np.zeros((5, 5), bool)
    walls[2, 1:4] = True          # a wall across the middle of the grid
    return ag.GridWorld(5, start=(0, 0), goal=(4, 4), walls=walls)


def heuristic(state, key):
    """Leaf value from the derived ``distance`` page (a utility of the bus State)."""
    del key
    return -0.1 * state.pages["distance"].astype(jnp.float32)


def test_planning_agent_beats_random(maze):
    planner = ag.PlanningAgent(maze, PARAMS, num_simulations=16, value_fn=heuristic,
                               static_pages=("walls", "goal"))
    planned = ag.evaluate(planner, maze, PARAMS, jax.random.key(0), num_episodes=4)
    random = ag.evaluate(ag.RandomAgent(4), maze, PARAMS, jax.random.key(0),
                         num_episodes=64)
    # the shortest path is 8 moves: return 1 - 7 * 0.01 = 0.93
    assert float(planned.returns.min()) > 0.8
    assert bool(jnp.all(planned.lengths <= 12))
    assert planned.mean_return > random.mean_return + 0.5
    assert float(jnp.mean(random.returns > 0)) < 0.2   # random walks rarely get there


def test_plan_policy_and_act_agree(maze):
    planner = ag.PlanningAgent(maze, PARAMS, num_simulations=8, value_fn=heuristic,
                               gumbel_scale=0.0)
    obs, state = maze.reset(jax.random.key(0), PARAMS)
    out = planner.plan(jax.random.key(1), state)
    assert out.action_weights.shape == (1, 4)
    probs = planner.policy(jax.random.key(1), obs, state)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs, out.action_weights[0])
    action = int(planner.act(jax.random.key(1), obs, state))
    assert action == int(out.action[0])
    # from the start the useful moves are right (1) and down (2)
    assert action in (1, 2)
    assert int(planner.act(jax.random.key(1), obs, state, greedy=True)) == int(
        jnp.argmax(out.action_weights[0]))


def test_env_model_matches_env_transitions(maze):
    model = ag.env_model(maze, PARAMS, discount=0.9)
    _, state = maze.reset(jax.random.key(0), PARAMS)
    nxt, reward, discount = model.step(state, jnp.int32(2))
    _, stepped, r, done, _ = maze.step(jax.random.key(0), state, jnp.int32(2), PARAMS)
    assert not bool(done)
    for name in maze.schema.names:
        np.testing.assert_array_equal(nxt.pages[name], stepped.pages[name])
    assert float(reward) == float(r) and float(discount) == pytest.approx(0.9)
    assert model.num_actions == 4 and bool(model.valid_actions(state).all())
    # the step onto the goal ends the episode: discount 0 and no reset
    at = state.with_pages({"pos": jnp.array([3, 4], jnp.int32)})
    goal, reward, discount = model.step(at, jnp.int32(2))
    assert goal.pages["pos"].tolist() == [4, 4] and float(discount) == 0.0
    assert float(reward) == 1.0


def test_planning_bad_inputs(maze):
    with pytest.raises(OptionError, match="num_simulations"):
        ag.PlanningAgent(maze, num_simulations=0)
    with pytest.raises(OptionError, match="BusEnv"):
        ag.env_model(object())
    with pytest.raises(OptionError, match="discount"):
        ag.env_model(maze, discount=2.0)
    planner = ag.PlanningAgent(maze, PARAMS, num_simulations=4)
    with pytest.raises(OptionError, match="State"):
        planner.act(jax.random.key(0), jnp.zeros(4), None)
