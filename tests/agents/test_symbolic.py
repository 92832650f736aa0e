"""SymbolicAgent follows its rules; HybridAgent mixes a learned policy with a guide."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax.agents as ag
from mmsb_jax.errors import OptionError, ShapeError

LEFT, RIGHT = 0, 1


def balance_rules():
    """CartPole: push towards the side the pole falls to; a state-based rule has priority."""
    return [
        ag.Rule(lambda obs, s: obs[2] + 0.5 * obs[3] > 0, RIGHT, 0, "pole falls right"),
        # reads the bus State: near the right edge, push left whatever the pole does
        ag.Rule(lambda obs, s: s.pages["state/x"] > 2.0, LEFT, 10, "right edge"),
    ]


def test_rules_fire_by_priority_then_default(cartpole_env):
    env, params = cartpole_env
    agent = ag.SymbolicAgent(balance_rules(), num_actions=2, default_action=LEFT)
    assert [r.name for r in agent.rules] == ["right edge", "pole falls right"]
    _, state = env.reset(jax.random.key(0), params)

    def at(x, theta, theta_dot):
        obs = jnp.array([x, 0.0, theta, theta_dot], jnp.float32)
        return obs, state.with_pages({"state/x": jnp.float32(x)})

    cases = [((0.0, 0.1, 0.0), RIGHT, "pole falls right"),
             ((0.0, -0.1, 0.0), LEFT, "default"),
             ((0.0, -0.01, 0.1), RIGHT, "pole falls right"),
             ((2.2, 0.1, 0.0), LEFT, "right edge")]
    for args, action, rule in cases:
        obs, s = at(*args)
        assert int(agent.act(jax.random.key(0), obs, s)) == action
        assert agent.explain(obs, s) == rule
        np.testing.assert_array_equal(agent.policy(jax.random.key(0), obs, s),
                                      np.eye(2)[action])
    fired = agent.fired(*at(2.2, 0.1, 0.0))
    np.testing.assert_array_equal(fired, [True, True])


def test_equal_priorities_keep_list_order_and_tuples_are_rules():
    agent = ag.SymbolicAgent([(lambda o, s: o[0] > 0, 1), (lambda o, s: o[0] > 0, 2),
                              (lambda o, s: o[0] > 5, 0, 1, "big")], num_actions=3)
    assert int(agent.act(jax.random.key(0), jnp.array([1.0]))) == 1
    assert int(agent.act(jax.random.key(0), jnp.array([9.0]))) == 0
    assert agent.explain(jnp.array([-1.0])) == "default"
    assert agent.explain(jnp.array([1.0])) == "rule0"


def test_no_rules_always_default():
    agent = ag.SymbolicAgent([], num_actions=3, default_action=2)
    assert int(agent.act(jax.random.key(0), jnp.zeros(2))) == 2
    assert agent.fired(jnp.zeros(2)).shape == (0,)


def test_vmapped_and_jitted_decisions_equal_eager_ones():
    agent = ag.SymbolicAgent([(lambda o, s: o[0] > 0.5, 1, 1), (lambda o, s: o[1] < 0, 2)],
                             num_actions=3)
    obs = jax.random.uniform(jax.random.key(0), (64, 2), minval=-1, maxval=1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def decide(obs):
        return jax.vmap(lambda o: agent.decide(o))(obs)

    actions, rules = decide(obs)
    decide(obs + 0.1)
    expected = np.where(obs[:, 0] > 0.5, 1, np.where(obs[:, 1] < 0, 2, 0))
    np.testing.assert_array_equal(actions, expected)
    np.testing.assert_array_equal(rules, np.where(obs[:, 0] > 0.5, 0,
                                                  np.where(obs[:, 1] < 0, 1, -1)))
    for o, a in zip(obs[:8], actions[:8], strict=True):
        assert int(agent.act(jax.random.key(1), o)) == int(a)


def test_symbolic_agent_balances_cartpole_better_than_random(cartpole_env):
    env, params = cartpole_env
    agent = ag.SymbolicAgent(balance_rules(), num_actions=2, default_action=LEFT)
    rules = ag.evaluate(agent, env, params, jax.random.key(3), num_episodes=8)
    assert rules.mean_return > 150.0   # a random policy averages about 22
    # evaluation is one compiled scan per agent and environment: no retrace for a new key
    from mmsb_jax.agents._base import _evaluate

    compiled = _evaluate._cache_size()
    again = ag.evaluate(agent, env, params, jax.random.key(4), num_episodes=8)
    assert _evaluate._cache_size() == compiled
    assert again.returns.shape == (8,)


def test_bad_rules():
    with pytest.raises(OptionError, match="outside"):
        ag.SymbolicAgent([(lambda o, s: True, 5)], num_actions=2)
    with pytest.raises(OptionError, match="not callable"):
        ag.SymbolicAgent([(True, 1)], num_actions=2)
    with pytest.raises(OptionError, match="expected"):
        ag.SymbolicAgent([(lambda o, s: True,)], num_actions=2)
    with pytest.raises(OptionError, match="int"):
        ag.SymbolicAgent([(lambda o, s: True, 1.0)], num_actions=2)
    with pytest.raises(OptionError, match="default_action"):
        ag.SymbolicAgent([], num_actions=2, default_action=2)
    with pytest.raises(OptionError, match="num_actions"):
        ag.SymbolicAgent([], num_actions=0)
    agent = ag.SymbolicAgent([(lambda o, s: o > 0, 1)], num_actions=2)
    with pytest.raises(ShapeError, match="scalar"):
        agent.act(jax.random.key(0), jnp.ones(3))


# -- HybridAgent ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parts(short_trained, cartpole_env):
    agent, _ = short_trained
    env, params = cartpole_env
    rules = ag.SymbolicAgent(balance_rules(), num_actions=2, default_action=LEFT)
    keys = jax.random.split(jax.random.key(11), 256)
    obs, states = jax.vmap(env.reset, (0, None))(keys, params)
    obs = obs * 20.0   # spread the observations so that the two parts disagree often
    states = states.with_pages({"state/x": obs[:, 0]})
    return agent, rules, keys, obs, states


def _acts(agent, keys, obs, states, greedy=False):
    return jax.jit(jax.vmap(lambda k, o, s: agent.act(k, o, s, greedy=greedy)))(keys, obs,
                                                                                 states)


def _policies(agent, keys, obs, states):
    return jax.jit(jax.vmap(agent.policy))(keys, obs, states)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_hybrid_at_the_ends_equals_its_parts(parts, alpha):
    learned, rules, keys, obs, states = parts
    hybrid = ag.HybridAgent(learned, rules, alpha)
    part = learned if alpha == 0.0 else rules
    np.testing.assert_array_equal(_policies(hybrid, keys, obs, states),
                                  _policies(part, keys, obs, states))
    for greedy in (False, True):
        np.testing.assert_array_equal(_acts(hybrid, keys, obs, states, greedy),
                                      _acts(part, keys, obs, states, greedy))


def test_hybrid_mixes_probabilities(parts):
    learned, rules, keys, obs, states = parts
    hybrid = ag.HybridAgent(learned, rules, 0.25)
    p_l, p_r = _policies(learned, keys, obs, states), _policies(rules, keys, obs, states)
    np.testing.assert_allclose(_policies(hybrid, keys, obs, states), 0.75 * p_l + 0.25 * p_r,
                               rtol=1e-6)
    a_l = _acts(learned, keys, obs, states)
    a_r = _acts(rules, keys, obs, states)
    a_h = _acts(hybrid, keys, obs, states)
    # every action comes from one of the parts, and the guide acts about a quarter of the time
    assert bool(jnp.all((a_h == a_l) | (a_h == a_r)))
    disagree = a_l != a_r
    assert int(disagree.sum()) > 40
    from_guide = float(jnp.mean((a_h == a_r)[disagree]))
    assert 0.1 < from_guide < 0.45


def test_hybrid_bad_inputs(parts):
    learned, rules, *_ = parts
    with pytest.raises(OptionError, match="alpha"):
        ag.HybridAgent(learned, rules, 1.5)
    with pytest.raises(OptionError, match="actions"):
        ag.HybridAgent(learned, ag.RandomAgent(3), 0.5)
    with pytest.raises(OptionError):
        ag.RandomAgent(0)


class LinearSoftmax(ag.Agent):
    """A small stochastic agent: softmax of a fixed linear map of the observation."""

    num_actions = 3

    def policy(self, key, obs, state=None):
        w = jnp.array([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]])
        return jax.nn.softmax(obs @ w)


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(0.0, 1.0), x=st.floats(-3, 3), y=st.floats(-3, 3))
def test_hybrid_policy_is_the_probability_mixture(alpha, x, y):
    learned = LinearSoftmax()
    guide = ag.SymbolicAgent([(lambda o, s: o[0] > 0, 2)], num_actions=3, default_action=1)
    obs = jnp.array([x, y], jnp.float32)
    key = jax.random.key(0)
    mix = ag.HybridAgent(learned, guide, alpha).policy(key, obs)
    expected = (1 - alpha) * learned.policy(key, obs) + alpha * guide.policy(key, obs)
    np.testing.assert_allclose(mix, expected, rtol=1e-6, atol=1e-7)
    assert float(mix.sum()) == pytest.approx(1.0, abs=1e-5) and bool(jnp.all(mix >= 0))
    action = int(ag.HybridAgent(learned, guide, alpha).act(key, obs))
    assert 0 <= action < 3
