"""The environment protocol: BusEnv, the gymnax adapter and GridWorld."""

from __future__ import annotations

import chex
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
import mmsb_jax.agents as ag
from mmsb_jax.core.graph import Graph
from mmsb_jax.errors import DTypeError, OptionError, ShapeError


@pytest.fixture(scope="module")
def cartpole():
    env, params = ag.from_gymnax("CartPole-v1")
    raw, raw_params = gymnax.make("CartPole-v1")
    return env, params, raw, raw_params


def _assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _gymnax_leaves(env, state):
    return [state.pages[n] for n in env.leaf_pages]


# -- gymnax adapter ----------------------------------------------------------------------------

def test_state_is_an_mmsb_state_with_one_page_per_leaf(cartpole):
    env, params, raw, raw_params = cartpole
    obs, state = env.reset(jax.random.key(0), params)
    assert isinstance(state, mm.State)
    assert state.names == ("obs", "state/time", "state/x", "state/x_dot", "state/theta",
                           "state/theta_dot")
    raw_obs, raw_state = raw.reset(jax.random.key(0), raw_params)
    np.testing.assert_array_equal(obs, raw_obs)
    np.testing.assert_array_equal(state.pages["obs"], raw_obs)
    _assert_tree_equal(env.gymnax_state(state), raw_state)
    # every page was written by one delta
    assert all(int(e) == 1 for e in state.epochs.values())
    assert env.num_actions == 2 and env.name == "CartPole-v1"
    assert env.action_space(params).n == 2
    assert env.observation_space(params).shape == (4,)


def _make_runner(reset, step, p):
    """A jitted rollout ``(key, actions) -> (obs, reward, done)`` of one environment."""

    @jax.jit
    def go(key, actions):
        k0, k1 = jax.random.split(key)
        obs, state = reset(k0, p)

        def body(carry, xs):
            obs, state = carry
            k, a = xs
            obs, state, reward, done = step(k, state, a, p)
            return (obs, state), (obs, reward, done)

        keys = jax.random.split(k1, actions.shape[0])
        return jax.lax.scan(body, (obs, state), (keys, actions))[1]

    return go


@pytest.fixture(scope="module")
def runners(cartpole):
    """Rollouts of the adapter and of raw gymnax, compiled once for the module."""
    env, params, raw, raw_params = cartpole

    def raw_step(k, s, a, p):
        obs, s2, r, terminated, truncated, _ = raw.step(k, s, a, p)
        return obs, s2, r, terminated | truncated

    bus = _make_runner(env.reset, lambda k, s, a, p: env.step(k, s, a, p)[:4], params)
    plain = _make_runner(raw.reset, raw_step, raw_params)
    return bus, plain


def test_same_trajectories_as_raw_gymnax_through_resets(runners):
    bus, plain = runners
    actions = jax.random.randint(jax.random.key(1), (64,), 0, 2)
    key = jax.random.key(2)
    (obs, rew, done), (obs_r, rew_r, done_r) = bus(key, actions), plain(key, actions)
    assert int(done.sum()) >= 2  # automatic resets happened
    np.testing.assert_array_equal(obs, obs_r)
    np.testing.assert_array_equal(rew, rew_r)
    np.testing.assert_array_equal(done, done_r)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), actions=st.lists(st.integers(0, 1), min_size=64,
                                                        max_size=64))
def test_adapter_equals_gymnax_for_any_actions(runners, seed, actions):
    bus, plain = runners
    actions = jnp.asarray(actions, jnp.int32)
    key = jax.random.key(seed)
    _assert_tree_equal(bus(key, actions), plain(key, actions))


def test_step_eager_matches_gymnax_state_and_info(cartpole):
    env, params, raw, raw_params = cartpole
    key = jax.random.key(3)
    _, state = env.reset(key, params)
    _, raw_state = raw.reset(key, raw_params)
    for i in range(40):
        k = jax.random.fold_in(key, i)
        obs, state, r, d, info = env.step(k, state, jnp.int32(i % 2), params)
        raw_obs, raw_state, rr, term, trunc, rinfo = raw.step(k, raw_state, jnp.int32(i % 2),
                                                              raw_params)
        _assert_tree_equal(env.gymnax_state(state), raw_state)
        np.testing.assert_array_equal(obs, raw_obs)
        np.testing.assert_array_equal(info["final_observation"], rinfo["final_observation"])
        assert bool(info["terminated"]) == bool(term) and bool(info["truncated"]) == bool(trunc)
        assert bool(d) == bool(term | trunc) and float(r) == float(rr)
        assert float(info["discount"]) == float(rinfo["discount"])


def test_epochs_count_deltas_and_resets(cartpole):
    env, params, _, _ = cartpole
    key = jax.random.key(4)
    _, state = env.reset(key, params)
    steps = resets = 0
    for i in range(60):
        _, state, _, done, _ = env.step(jax.random.fold_in(key, i), state, jnp.int32(1), params)
        steps += 1
        resets += int(done)
    assert resets >= 1
    # 1 (reset) + one delta per step + one more per automatic reset
    assert int(state.epochs["state/x"]) == 1 + steps + resets


def test_vmapped_step_recompiles_once(cartpole):
    env, params, _, _ = cartpole

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step_many(keys, states, actions):
        return jax.vmap(env.step, (0, 0, 0, None))(keys, states, actions, params)

    keys = jax.random.split(jax.random.key(0), 8)
    _, states = jax.vmap(env.reset, (0, None))(keys, params)
    for i in range(3):
        _, states, reward, _, _ = step_many(jax.random.split(jax.random.key(i), 8), states,
                                            jnp.ones((8,), jnp.int32))
    assert reward.shape == (8,)
    assert states.pages["obs"].shape == (8, 4)


def test_derived_pages_follow_each_step():
    raw, raw_params = gymnax.make("CartPole-v1")

    def energy(theta, theta_dot):
        return (0.5 * theta_dot**2 + 9.8 * (1 - jnp.cos(theta))).astype(jnp.float32)

    env = ag.GymnaxBusEnv(raw, raw_params,
                          derived=[("energy", ("state/theta", "state/theta_dot"), energy)])
    assert env.graph is not None and env.schema.names[-1] == "energy"
    key = jax.random.key(5)
    _, state = env.reset(key)
    np.testing.assert_allclose(state.pages["energy"],
                               energy(state.pages["state/theta"], state.pages["state/theta_dot"]))
    for i in range(5):
        _, state, *_ = env.step(jax.random.fold_in(key, i), state, jnp.int32(0))
        np.testing.assert_allclose(
            state.pages["energy"],
            energy(state.pages["state/theta"], state.pages["state/theta_dot"]))
    assert int(state.epochs["energy"]) >= 5


def test_from_gymnax_accepts_an_environment_object():
    raw, _ = gymnax.make("Acrobot-v1")
    env, params = ag.from_gymnax(raw)
    obs, state = env.reset(jax.random.key(0), params)
    assert obs.shape == (6,) and env.num_actions == 3
    assert "state/time" in state.names


def test_adapter_bad_inputs():
    with pytest.raises(OptionError, match="no-such-env"):
        ag.from_gymnax("no-such-env")
    with pytest.raises(OptionError, match="not a gymnax environment"):
        ag.GymnaxBusEnv(object())
    with pytest.raises(OptionError, match="Schema or a Graph"):
        ag.BusEnv.__init__(object.__new__(Counter), "not a schema")


def test_bus_env_base_methods_must_be_implemented():
    with pytest.raises(TypeError, match="abstract"):
        ag.BusEnv(mm.Schema([mm.PageSpec("obs", (2,))]))

    class Partial(ag.BusEnv):  # the protocol's four methods are abstract
        num_actions = 2

    with pytest.raises(TypeError, match="abstract"):
        Partial(mm.Schema([mm.PageSpec("obs", (2,))]))


# -- a custom BusEnv ---------------------------------------------------------------------------

class Counter(ag.BusEnv):
    """Count up by the action; terminate at 5. Obs is a derived page (count / 5)."""

    def __init__(self):
        schema = mm.Schema([mm.PageSpec("count", (), "int32")])
        graph = Graph(schema).derive(
            "obs", ("count",), lambda c: jnp.stack([c.astype(jnp.float32) / 5.0]))
        super().__init__(graph)

    @property
    def default_params(self):
        return ()

    @property
    def num_actions(self):
        return 3

    def initial_deltas(self, key, params):
        return [mm.Delta.full("count", jax.random.randint(key, (), 0, 2))]

    def transition(self, key, state, action, params):
        new = state.pages["count"] + action
        return ag.Transition([mm.Delta.full("count", new)], jnp.float32(1.0), new >= 5,
                             {"count": new})


def test_custom_env_transition_is_deltas_plus_propagation():
    env = Counter()
    obs, state = env.reset(jax.random.key(0))
    start = int(state.pages["count"])
    np.testing.assert_allclose(obs, [start / 5.0])
    obs, state, reward, done, info = env.step(jax.random.key(1), state, jnp.int32(2))
    assert int(state.pages["count"]) == start + 2 and int(info["count"]) == start + 2
    np.testing.assert_allclose(obs, [(start + 2) / 5.0])
    assert float(reward) == 1.0 and not bool(done)
    assert int(state.epochs["count"]) == 2 and int(state.epochs["obs"]) == 2
    # reaching 5 terminates and resets: the final observation is kept in info
    obs, state, _, done, info = env.step(jax.random.key(2), state, jnp.int32(3))
    assert bool(done) and bool(info["terminated"]) and not bool(info["truncated"])
    assert float(info["final_observation"][0]) >= 1.0
    assert int(state.pages["count"]) in (0, 1)
    np.testing.assert_allclose(obs, state.pages["count"][None] / 5.0)


# -- GridWorld ----------------------------------------------------------------------------------

def test_gridworld_moves_walls_goal_and_derived_pages():
    walls = np.zeros((4, 4), bool)
    walls[1, 0] = True
    env = ag.GridWorld(4, start=(0, 0), goal=(0, 2), walls=walls)
    obs, s = env.reset(jax.random.key(0))
    assert s.pages["pos"].tolist() == [0, 0] and int(s.pages["distance"]) == 2
    np.testing.assert_allclose(obs, np.array([0, 0, 0, 2]) / 3.0)
    key = jax.random.key(1)
    _, s, r, d, _ = env.step(key, s, jnp.int32(0))      # up: off the grid, stays
    assert s.pages["pos"].tolist() == [0, 0] and not bool(d)
    assert float(r) == pytest.approx(-0.01)
    _, s, _, _, _ = env.step(key, s, jnp.int32(2))      # down: a wall, stays
    assert s.pages["pos"].tolist() == [0, 0] and int(s.pages["t"]) == 2
    _, s, _, _, _ = env.step(key, s, jnp.int32(1))      # right
    assert s.pages["pos"].tolist() == [0, 1] and int(s.pages["distance"]) == 1
    obs, s, r, d, info = env.step(key, s, jnp.int32(1))  # right: the goal
    assert bool(d) and bool(info["terminated"]) and float(r) == 1.0
    np.testing.assert_allclose(info["final_observation"], np.array([0, 2, 0, 2]) / 3.0)
    assert s.pages["pos"].tolist() == [0, 0] and int(s.pages["t"]) == 0   # reset


def test_gridworld_truncates_at_max_steps():
    env = ag.GridWorld(3)
    params = ag.GridWorldParams(max_steps_in_episode=3)
    _, s = env.reset(jax.random.key(0), params)
    dones = []
    for i in range(3):
        _, s, _, d, info = env.step(jax.random.key(i), s, jnp.int32(0), params)
        dones.append(bool(d))
    assert dones == [False, False, True] and bool(info["truncated"])


def test_gridworld_bad_inputs():
    with pytest.raises(OptionError):
        ag.GridWorld(1)
    with pytest.raises(OptionError, match="outside"):
        ag.GridWorld(3, start=(3, 0))
    with pytest.raises(OptionError, match="differ"):
        ag.GridWorld(3, start=(2, 2))
    walls = np.zeros((3, 3), bool)
    walls[0, 0] = True
    with pytest.raises(OptionError, match="on a wall"):
        ag.GridWorld(3, walls=walls)
    with pytest.raises(ShapeError):
        ag.GridWorld(3, walls=np.zeros((2, 2), bool))
    with pytest.raises(DTypeError):
        ag.GridWorld(3, walls=np.zeros((3, 3), np.int32))


def test_gridworld_env_and_planning_model_share_one_move_rule():
    """agents.GridWorld transitions and planning.gridworld_model steps agree on every move."""
    from mmsb_jax.planning import gridworld_model, gridworld_moves, gridworld_state

    walls = np.zeros((5, 5), bool)
    walls[1, 1:4] = walls[3, 0:3] = True
    env = ag.GridWorld(5, start=(0, 0), goal=(4, 4), walls=walls)
    params = env.default_params
    model = gridworld_model(step_cost=params.step_cost, goal_reward=params.goal_reward)
    env_step = jax.jit(lambda s, a: env.commit(
        s, env.transition(jax.random.key(0), s, a, params).deltas))
    model_step = jax.jit(lambda s, a: model.step(s, a)[0])
    env_state = env.initial_state(jax.random.key(0))
    plan_state = gridworld_state(walls, np.array([0, 0]), np.array([4, 4]))
    blocked = 0
    for action in np.random.default_rng(0).integers(0, 4, size=80):
        a = jnp.int32(action)
        blocked += not bool(gridworld_moves(jnp.asarray(walls), plan_state.pages["pos"])[1][a])
        env_state, plan_state = env_step(env_state, a), model_step(plan_state, a)
        np.testing.assert_array_equal(env_state.pages["pos"], plan_state.pages["pos"])
        assert not walls[tuple(np.asarray(plan_state.pages["pos"]))]
        if np.array_equal(plan_state.pages["pos"], [4, 4]):
            break  # the goal is terminal (absorbing) for the planner
    assert blocked > 0  # the walk bumped into walls and edges, so both no-op rules were used
