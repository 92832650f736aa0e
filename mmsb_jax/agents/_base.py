"""The agent protocol and evaluation.

Every agent maps one observation (and, for agents that reason about the store, the environment's
:class:`~mmsb_jax.State`) to a distribution over discrete actions:

* ``agent.policy(key, obs, state) -> probs: float32[A]`` — the action distribution;
* ``agent.act(key, obs, state, greedy=False) -> int32[]`` — one action.

Both are pure and traceable; batch them with ``jax.vmap``. Agents that do not need ``state``
(a learned policy) or ``key`` (rules) ignore them, so all agents are interchangeable, which is
what :class:`~mmsb_jax.agents.HybridAgent` and :func:`evaluate` rely on.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax.core.pages import State
from mmsb_jax.errors import OptionError

__all__ = ["Agent", "EvalResult", "RandomAgent", "evaluate"]


class Agent(abc.ABC):
    """Base class of agents over a discrete action space of :attr:`num_actions` actions.

    Subclasses implement :meth:`policy`; :meth:`act` samples from it (or takes its argmax).
    """

    num_actions: int

    @abc.abstractmethod
    def policy(self, key: jax.Array, obs: jax.Array, state: State | None = None) -> jax.Array:
        """The action distribution.

        Args:
          key: PRNG key (for stochastic policies such as a search with Gumbel noise).
          obs: ``[*obs_shape]`` one observation.
          state: the environment's State (``None`` for agents that only look at ``obs``).

        Returns:
          ``float32[A]`` action probabilities (non-negative, summing to 1).
        """

    def act(self, key: jax.Array, obs: jax.Array, state: State | None = None, *,
            greedy: bool = False) -> jax.Array:
        """One action: sampled from :meth:`policy`, or its most probable action if ``greedy``.

        Args:
          key: PRNG key.
          obs: ``[*obs_shape]`` one observation.
          state: the environment's State, if the agent uses it.
          greedy: take the argmax instead of sampling.

        Returns:
          ``int32[]`` action in ``[0, A)``.
        """
        policy_key, sample_key = jax.random.split(key)
        probs = self.policy(policy_key, obs, state)
        if greedy:
            return jnp.argmax(probs).astype(jnp.int32)
        return jax.random.categorical(sample_key, jnp.log(probs)).astype(jnp.int32)


class RandomAgent(Agent):
    """The uniform random policy over ``num_actions`` actions (a baseline).

    Args:
      num_actions: number of actions (>= 1).
    """

    def __init__(self, num_actions: int):
        if int(num_actions) < 1:
            raise OptionError(f"num_actions must be >= 1, got {num_actions}")
        self.num_actions = int(num_actions)

    def policy(self, key: jax.Array, obs: jax.Array, state: State | None = None) -> jax.Array:
        """``float32[A]``: ``1 / A`` everywhere."""
        del key, obs, state
        return jnp.full((self.num_actions,), 1.0 / self.num_actions, jnp.float32)


class EvalResult(NamedTuple):
    """Returns of evaluation episodes.

    Attributes:
      returns: ``float32[N]`` undiscounted return of each episode.
      lengths: ``int32[N]`` steps of each episode.
      finished: ``bool[N]`` whether the episode ended within ``max_steps``.
    """

    returns: jax.Array
    lengths: jax.Array
    finished: jax.Array

    @property
    def mean_return(self) -> float:
        """Mean return over the episodes."""
        return float(np.mean(np.asarray(self.returns)))


def _max_steps(env: Any, params: Any) -> int:
    limit = getattr(params, "max_steps_in_episode", None)
    if limit is None:
        raise OptionError("max_steps is required: the environment parameters have no "
                          "max_steps_in_episode")
    return int(limit)


@functools.partial(jax.jit, static_argnames=("agent", "env", "num_episodes", "max_steps",
                                             "greedy"))
def _evaluate(agent: Agent, env: Any, params: Any, key: jax.Array, num_episodes: int,
              max_steps: int, greedy: bool) -> EvalResult:
    reset_key, run_key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, (0, None))(jax.random.split(reset_key, num_episodes),
                                                 params)
    act = jax.vmap(lambda k, o, s: agent.act(k, o, s, greedy=greedy))
    step = jax.vmap(env.step, (0, 0, 0, None))

    def body(carry, key):
        obs, state, ret, length, alive = carry
        act_key, step_key = jax.random.split(key)
        action = act(jax.random.split(act_key, num_episodes), obs, state)
        obs, state, reward, done, _ = step(jax.random.split(step_key, num_episodes), state,
                                           action, params)
        ret = ret + jnp.where(alive, reward, 0.0)
        length = length + alive.astype(jnp.int32)
        return (obs, state, ret, length, alive & ~done), None

    zeros = jnp.zeros((num_episodes,), jnp.float32)
    init = (obs, state, zeros, zeros.astype(jnp.int32), jnp.ones((num_episodes,), bool))
    (_, _, ret, length, alive), _ = lax.scan(body, init, jax.random.split(run_key, max_steps))
    return EvalResult(ret, length, ~alive)


def evaluate(agent: Agent, env: Any, params: Any, key: jax.Array, *, num_episodes: int = 100,
             max_steps: int | None = None, greedy: bool = False) -> EvalResult:
    """Run ``num_episodes`` episodes of ``agent`` in ``env`` at once (vmapped, one jitted scan).

    Each episode is counted until its first ``done``; the environment keeps stepping (it resets
    itself) but later rewards are ignored.

    Args:
      agent: an :class:`Agent` (hashed by identity: one compilation per agent and environment).
      env: a gymnax-style environment with ``reset``/``step`` returning ``(obs, state)`` and
        ``(obs, state, reward, done, info)`` (a :class:`~mmsb_jax.agents.BusEnv`).
      params: environment parameters.
      key: PRNG key.
      num_episodes: ``N``, episodes run in parallel.
      max_steps: steps per episode (default ``params.max_steps_in_episode``).
      greedy: act greedily instead of sampling.

    Returns:
      :class:`EvalResult` with ``returns: float32[N]``.

    Raises:
      OptionError: ``num_episodes`` or ``max_steps`` < 1, or no ``max_steps`` known.
    """
    params = env.default_params if params is None else params
    max_steps = _max_steps(env, params) if max_steps is None else int(max_steps)
    if int(num_episodes) < 1 or max_steps < 1:
        raise OptionError(f"num_episodes and max_steps must be >= 1, got {num_episodes}, "
                          f"{max_steps}")
    return _evaluate(agent, env, params, key, int(num_episodes), max_steps, bool(greedy))
