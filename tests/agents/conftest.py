"""Shared fixtures of the agent tests: environments and one short PPO run (compiled once)."""

from __future__ import annotations

import jax
import pytest

import mmsb_jax.agents as ag

SHORT_TIMESTEPS = 20_000


@pytest.fixture(scope="session")
def cartpole_env():
    """``(GymnaxBusEnv, params)`` of CartPole-v1."""
    return ag.from_gymnax("CartPole-v1")


@pytest.fixture(scope="session")
def short_trained(cartpole_env):
    """An RLAgent after a short PPO run (2e4 steps, PureJaxRL's CartPole settings otherwise)."""
    env, params = cartpole_env
    agent = ag.RLAgent(env, params, ag.PPOConfig(total_timesteps=SHORT_TIMESTEPS), seed=0)
    out = agent.train(jax.random.key(0))
    return agent, out
