"""Independent PPO (IPPO) for multi-agent bus environments with a shared team reward.

IPPO is :func:`mmsb_jax.agents.make_train` with its agent axis (``num_agents=A``): each of
the ``A`` agents has its own :class:`~mmsb_jax.agents.ActorCritic` parameters and optimiser
state, acts on its own observation only, and learns from the team reward with the library's
one PPO (:func:`~mmsb_jax.agents.ppo_update` vmapped over agents; same hyper-parameters,
:class:`~mmsb_jax.agents.PPOConfig`). No gradient or optimiser statistic is shared: this is
*independent* learning, vectorised. The whole run is one jitted function.

Environment protocol (e.g. :class:`~mmsb_jax.apps.Foraging`): ``reset(key, params) ->
(obs [A, D], state)``, ``step(key, state, actions int32[A], params) -> (obs [A, D], state,
reward float32[], done bool[], info)``, ``num_actions``, ``num_agents``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from mmsb_jax.agents import PPOConfig, default_model_fn, init_params, make_train
from mmsb_jax.errors import OptionError

__all__ = ["IPPO", "IPPOOutput", "evaluate_team", "make_ippo_train", "team_policy",
           "train_ippo"]


class IPPOOutput(NamedTuple):
    """What the IPPO ``train(key)`` returns.

    Attributes:
      params: per-agent parameters, an ``nnx.State`` with a leading agent axis ``A`` on every
        leaf.
      opt_state: per-agent optax states (leading axis ``A``).
      metrics: per update ``U``: ``episode_return: float32[U]`` (mean team return of the
        episodes that ended in the update's rollout, NaN if none), ``episodes: int32[U]``,
        ``timesteps: int32[U]`` and the losses ``total_loss, value_loss, actor_loss,
        entropy: float32[U, A]`` (per agent).
    """

    params: Any
    opt_state: Any
    metrics: dict[str, jax.Array]


class IPPO(NamedTuple):
    """The pieces :func:`make_ippo_train` returns.

    Attributes:
      init: ``init(key) -> params``: per-agent initial parameters stacked on a leading agent
        axis (:func:`mmsb_jax.agents.init_params`, eager, one agent at a time).
      train: ``train(key, params) -> IPPOOutput``, pure; wrap it in ``jax.jit``.
      graphdef: rebuilds one agent's network: ``nnx.merge(graphdef, params_of_agent)``.
    """

    init: Callable[[jax.Array], Any]
    train: Callable[[jax.Array, Any], IPPOOutput]
    graphdef: Any


def make_ippo_train(config: PPOConfig, env: Any, env_params: Any = None) -> IPPO:
    """Build the initialiser and the jittable training function of independent PPO.

    Args:
      config: PPO hyper-parameters (shared by all agents; each agent has its own parameters
        and optimiser state).
      env: a multi-agent environment (see the module docstring).
      env_params: environment parameters (default ``env.default_params``).

    Returns:
      :class:`IPPO` ``(init, train, graphdef)``; ``train`` runs ``config.num_updates``
      updates.

    Raises:
      OptionError: ``env`` lacks ``num_agents`` or its observations are not ``[A, ...]``.
    """
    env_params = env.default_params if env_params is None else env_params
    num_agents = int(getattr(env, "num_agents", 0))
    if num_agents < 1:
        raise OptionError(f"{type(env).__name__} is not a multi-agent environment "
                          "(no num_agents)")
    build = default_model_fn(config, env, env_params, num_agents=num_agents)
    graphdef, _ = nnx.split(build(jax.random.key(0)))
    ppo_train = make_train(config, env, env_params, model_fn=build, num_agents=num_agents)

    def train(key: jax.Array, params: Any) -> IPPOOutput:
        out = ppo_train(key, params)
        return IPPOOutput(out.params, out.opt_state, out.metrics)

    return IPPO(functools.partial(init_params, build, num_agents=num_agents), train, graphdef)


def train_ippo(config: PPOConfig, env: Any, key: jax.Array, env_params: Any = None
               ) -> tuple[IPPOOutput, Any]:
    """Initialise and train independent PPO agents (one compiled training run).

    Args:
      config: PPO hyper-parameters.
      env: a multi-agent environment.
      key: PRNG key of the run (the same key gives the same parameters).
      env_params: environment parameters (default ``env.default_params``).

    Returns:
      ``(IPPOOutput, graphdef)``; pass both to :func:`team_policy`.
    """
    init_key, train_key = jax.random.split(key)
    ippo = make_ippo_train(config, env, env_params)
    out = jax.jit(ippo.train)(train_key, ippo.init(init_key))
    jax.block_until_ready(out.params)
    return out, ippo.graphdef


def team_policy(graphdef: Any, params: Any, *, greedy: bool = False
                ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``policy(key, obs [A, D]) -> actions int32[A]`` from per-agent parameters.

    Args:
      graphdef: the network graphdef (:func:`train_ippo`, :class:`IPPO`).
      params: per-agent parameters (leading agent axis), e.g. ``IPPOOutput.params``.
      greedy: take each agent's most probable action instead of sampling.
    """
    def policy(key: jax.Array, obs: jax.Array) -> jax.Array:
        logits, _ = jax.vmap(lambda p, o: nnx.merge(graphdef, p)(o))(params, obs)
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.random.categorical(key, logits).astype(jnp.int32)

    return policy


def evaluate_team(env: Any, policy: Callable[[jax.Array, jax.Array], jax.Array] | None,
                  key: jax.Array, num_episodes: int, env_params: Any = None,
                  max_steps: int | None = None) -> jax.Array:
    """Team return of ``num_episodes`` episodes run in parallel (one jitted rollout).

    Args:
      env: a multi-agent environment.
      policy: ``policy(key, obs [A, D]) -> int32[A]``; ``None`` for the uniform random policy.
      key: PRNG key.
      num_episodes: episodes (vmapped).
      env_params: environment parameters (default ``env.default_params``).
      max_steps: steps per episode (default ``env_params.episode_len``); only the first
        episode of each environment is counted.

    Returns:
      ``float32[num_episodes]`` undiscounted team returns.
    """
    env_params = env.default_params if env_params is None else env_params
    steps = int(max_steps if max_steps is not None else env_params.episode_len)
    num_agents = int(env.num_agents)
    if policy is None:
        def policy(k: jax.Array, obs: jax.Array) -> jax.Array:
            del obs
            return jax.random.randint(k, (num_agents,), 0, env.num_actions, jnp.int32)

    def episode(k: jax.Array) -> jax.Array:
        reset_key, run_key = jax.random.split(k)
        obs, state = env.reset(reset_key, env_params)

        def body(carry, step_key):
            obs, state, total, live = carry
            act_key, env_key = jax.random.split(step_key)
            action = policy(act_key, obs)
            obs, state, reward, done, _ = env.step(env_key, state, action, env_params)
            total = total + jnp.where(live, reward, 0.0)
            return (obs, state, total, live & ~done), None

        init = (obs, state, jnp.zeros((), jnp.float32), jnp.ones((), bool))
        (_, _, total, _), _ = lax.scan(body, init, jax.random.split(run_key, steps))
        return total

    return jax.jit(jax.vmap(episode))(jax.random.split(key, int(num_episodes)))
