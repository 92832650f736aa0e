"""Independent PPO (IPPO) for multi-agent bus environments with a shared team reward.

Each of the ``A`` agents has its own :class:`~mmsb_jax.agents.ActorCritic` parameters and its
own optimiser state; it acts on its own observation only, and learns from the team reward with
the clipped PPO objective of :func:`mmsb_jax.agents.make_train` (same hyper-parameters,
:class:`~mmsb_jax.agents.PPOConfig`, same optimiser, :func:`~mmsb_jax.agents.make_optimizer`).
The agents' parameters are stacked on a leading agent axis and every per-agent computation
(forward pass, loss, gradient, optimiser update) is ``jax.vmap``-ed over it, so no gradient
or optimiser statistic is shared: this is *independent* learning, vectorised. The whole run is
one jitted function (``lax.scan`` over updates, rollouts, epochs and minibatches).

Environment protocol (e.g. :class:`~mmsb_jax.apps.Foraging`): ``reset(key, params) ->
(obs [A, D], state)``, ``step(key, state, actions int32[A], params) -> (obs [A, D], state,
reward float32[], done bool[], info)``, ``num_actions``, ``num_agents``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from mmsb_jax.agents import ActorCritic, PPOConfig, make_optimizer
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


class _Batch(NamedTuple):
    obs: jax.Array  # [T, E, A, D]
    action: jax.Array  # [T, E, A]
    value: jax.Array  # [T, E, A]
    log_prob: jax.Array  # [T, E, A]
    reward: jax.Array  # [T, E]
    done: jax.Array  # [T, E]


def _model_fn(config: PPOConfig, obs_dim: int, num_actions: int
              ) -> Callable[[jax.Array], ActorCritic]:
    def build(key: jax.Array) -> ActorCritic:
        return ActorCritic(obs_dim, num_actions, hidden=config.hidden,
                           activation=config.activation, rngs=nnx.Rngs(params=key))

    return build


class IPPO(NamedTuple):
    """The pieces :func:`make_ippo_train` returns.

    Attributes:
      init: ``init(key) -> params``: per-agent initial parameters stacked on a leading agent
        axis. Runs eagerly, one agent at a time: the orthogonal initialiser calls LAPACK's QR,
        and that custom call inside a jitted, vmapped function was seen to deadlock XLA's CPU
        runtime.
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
      OptionError: ``env`` lacks ``num_agents`` or has a non-``[A, D]`` observation.
    """
    env_params = env.default_params if env_params is None else env_params
    num_agents = int(getattr(env, "num_agents", 0))
    if num_agents < 1:
        raise OptionError(f"{type(env).__name__} is not a multi-agent environment "
                          "(no num_agents)")
    obs_struct, _ = jax.eval_shape(env.reset, jax.random.key(0), env_params)
    if len(obs_struct.shape) != 2 or obs_struct.shape[0] != num_agents:
        raise OptionError(f"observations must be [A, D] = [{num_agents}, D], got "
                          f"{obs_struct.shape}")
    obs_dim, num_actions = int(obs_struct.shape[1]), int(env.num_actions)
    build = _model_fn(config, obs_dim, num_actions)
    graphdef, _ = nnx.split(build(jax.random.key(0)))
    tx = make_optimizer(config)
    num_envs, num_steps = config.num_envs, config.num_steps
    batch = num_envs * num_steps

    def net(params: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return nnx.merge(graphdef, params)(obs)

    def forward(params: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``obs: [..., A, D]`` -> ``logits [..., A, n], value [..., A]`` (agent a: params[a])."""
        moved = jnp.moveaxis(obs, -2, 0)
        logits, value = jax.vmap(net)(params, moved)
        return jnp.moveaxis(logits, 0, -2), jnp.moveaxis(value, 0, -1)

    def agent_loss(params: Any, obs, action, old_value, old_log_prob, adv, target):
        logits, value = net(params, obs)
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, action[..., None], axis=-1)[..., 0]
        clipped = old_value + jnp.clip(value - old_value, -config.clip_eps, config.clip_eps)
        value_loss = 0.5 * jnp.maximum(jnp.square(value - target),
                                       jnp.square(clipped - target)).mean()
        ratio = jnp.exp(log_prob - old_log_prob)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        actor_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - config.clip_eps,
                                                        1.0 + config.clip_eps) * adv).mean()
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
        total = actor_loss + config.vf_coef * value_loss - config.ent_coef * entropy
        return total, (value_loss, actor_loss, entropy)

    grad_fn = jax.vmap(jax.value_and_grad(agent_loss, has_aux=True))

    def init(key: jax.Array) -> Any:
        per_agent = [nnx.split(build(k))[1] for k in jax.random.split(key, num_agents)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_agent)

    def train(key: jax.Array, params: Any) -> IPPOOutput:
        reset_key, key = jax.random.split(key)
        opt_state = jax.vmap(tx.init)(params)
        obs, env_state = jax.vmap(env.reset, (0, None))(
            jax.random.split(reset_key, num_envs), env_params)

        def env_step(carry, step_key):
            params, env_state, obs, ep_return = carry
            act_key, env_key = jax.random.split(step_key)
            logits, value = forward(params, obs)  # [E, A, n], [E, A]
            action = jax.random.categorical(act_key, logits).astype(jnp.int32)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None],
                                           axis=-1)[..., 0]
            next_obs, env_state, reward, done, _ = jax.vmap(env.step, (0, 0, 0, None))(
                jax.random.split(env_key, num_envs), env_state, action, env_params)
            reward = reward.astype(jnp.float32)
            ep_return = ep_return + reward
            finished = jnp.where(done, ep_return, 0.0)
            ep_return = jnp.where(done, 0.0, ep_return)
            tr = _Batch(obs, action, value, log_prob, reward, done)
            return (params, env_state, next_obs, ep_return), (tr, finished)

        def gae(tr: _Batch, last_value: jax.Array):
            def body(carry, x):
                adv, next_value = carry
                value, reward, done = x
                not_done = 1.0 - done.astype(jnp.float32)[:, None]
                delta = reward[:, None] + config.gamma * next_value * not_done - value
                adv = delta + config.gamma * config.gae_lambda * not_done * adv
                return (adv, value), adv

            _, adv = lax.scan(body, (jnp.zeros_like(last_value), last_value),
                              (tr.value, tr.reward, tr.done), reverse=True)
            return adv, adv + tr.value  # [T, E, A]

        def update(carry, xs):
            params, opt_state, env_state, obs, ep_return = carry
            update_idx, update_key = xs
            rollout_key, perm_key = jax.random.split(update_key)
            (params, env_state, obs, ep_return), (tr, finished) = lax.scan(
                env_step, (params, env_state, obs, ep_return),
                jax.random.split(rollout_key, num_steps))
            _, last_value = forward(params, obs)
            adv, targets = gae(tr, last_value)
            # Per agent: [A, T * E, ...].
            flat = [jnp.moveaxis(x.reshape(batch, num_agents, *x.shape[3:]), 1, 0)
                    for x in (tr.obs, tr.action, tr.value, tr.log_prob, adv, targets)]

            def epoch(carry, key):
                params, opt_state = carry
                perm = jax.random.permutation(key, batch)
                shuffled = [x[:, perm].reshape(num_agents, config.num_minibatches, -1,
                                               *x.shape[2:]) for x in flat]
                shuffled = [jnp.moveaxis(x, 1, 0) for x in shuffled]  # [M, A, B, ...]

                def minibatch(carry, mb):
                    params, opt_state = carry
                    (loss, aux), grads = grad_fn(params, *mb)
                    updates, opt_state = jax.vmap(tx.update)(grads, opt_state, params)
                    params = optax.apply_updates(params, updates)
                    return (params, opt_state), (loss, *aux)

                return lax.scan(minibatch, (params, opt_state), shuffled)

            (params, opt_state), losses = lax.scan(
                epoch, (params, opt_state), jax.random.split(perm_key, config.update_epochs))
            episodes = tr.done.sum().astype(jnp.int32)
            mean_return = jnp.where(episodes > 0, finished.sum() / jnp.maximum(episodes, 1),
                                    jnp.nan)
            total, value_loss, actor_loss, entropy = (x.mean(axis=(0, 1)) for x in losses)
            metrics = dict(episode_return=mean_return, episodes=episodes,
                           timesteps=(update_idx + 1) * batch, total_loss=total,
                           value_loss=value_loss, actor_loss=actor_loss, entropy=entropy)
            return (params, opt_state, env_state, obs, ep_return), metrics

        xs = (jnp.arange(config.num_updates, dtype=jnp.int32),
              jax.random.split(key, config.num_updates))
        zeros = jnp.zeros((num_envs,), jnp.float32)
        (params, opt_state, _, _, _), metrics = lax.scan(
            update, (params, opt_state, env_state, obs, zeros), xs)
        return IPPOOutput(params, opt_state, metrics)

    return IPPO(init, train, graphdef)


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
