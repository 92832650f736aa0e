"""``RLAgent``: a flax.nnx actor-critic trained with PPO (optax), PureJaxRL's structure.

:func:`make_train` returns one function ``train(key)`` that ``jax.jit`` compiles whole: the
environments are vmapped, a ``lax.scan`` over updates runs a ``lax.scan`` over ``num_steps``
environment steps (the rollout), generalised advantage estimation (a reverse ``lax.scan``), and
``update_epochs`` epochs of ``num_minibatches`` clipped-objective minibatch updates. Parameters
travel through the scans as a pure pytree (``nnx.split``) and are put back into the module
with ``nnx.merge`` inside the loss. A progress bar is fed from inside the compiled loop with
``jax.debug.callback`` (once per update), so it costs one host call per update.

This is the library's one PPO. Its pieces are pure functions: :func:`gae`, :func:`ppo_loss`
and :func:`ppo_update` (the epochs of minibatch steps of one learner). ``make_train(...,
num_agents=A)`` adds an agent axis for independent learners on a multi-agent environment:
the forward pass and :func:`ppo_update` are vmapped over agents, so every agent has its own
parameters, gradients and optimiser statistics (:func:`mmsb_jax.apps.train_ippo` is this).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

from mmsb_jax.agents._base import Agent
from mmsb_jax.core.pages import State
from mmsb_jax.errors import OptionError, ShapeError

__all__ = ["ActorCritic", "PPOConfig", "RLAgent", "Rollout", "TrainOutput", "default_model_fn",
           "gae", "init_params", "make_optimizer", "make_train", "ppo_loss", "ppo_update"]


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters; the defaults are PureJaxRL's CartPole-v1 configuration.

    Attributes:
      lr: Adam learning rate (``eps=1e-5``).
      num_envs: environments stepped in parallel (vmapped).
      num_steps: steps per environment per update (rollout length).
      total_timesteps: environment steps of the whole run.
      update_epochs: passes over each rollout.
      num_minibatches: minibatches per epoch (``num_envs * num_steps`` must divide evenly).
      gamma: discount.
      gae_lambda: GAE lambda.
      clip_eps: PPO ratio clip (also clips the value update).
      ent_coef: entropy bonus weight.
      vf_coef: value loss weight.
      max_grad_norm: global gradient norm clip.
      anneal_lr: decay the learning rate linearly to 0 over the run.
      hidden: width of the two hidden layers of actor and critic.
      activation: ``"tanh"`` or ``"relu"``.
    """

    lr: float = 2.5e-4
    num_envs: int = 4
    num_steps: int = 128
    total_timesteps: int = 500_000
    update_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    anneal_lr: bool = True
    hidden: int = 64
    activation: str = "tanh"

    def __post_init__(self) -> None:
        for name in ("num_envs", "num_steps", "total_timesteps", "update_epochs",
                     "num_minibatches", "hidden"):
            if int(getattr(self, name)) < 1:
                raise OptionError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_updates < 1:
            raise OptionError(f"total_timesteps={self.total_timesteps} is less than one update "
                              f"(num_envs * num_steps = {self.num_envs * self.num_steps})")
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise OptionError(f"num_envs * num_steps = {self.num_envs * self.num_steps} is not "
                              f"divisible by num_minibatches = {self.num_minibatches}")
        if self.activation not in ("tanh", "relu"):
            raise OptionError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")
        for name in ("lr", "clip_eps", "max_grad_norm"):
            if not float(getattr(self, name)) > 0:
                raise OptionError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise OptionError(f"PPOConfig.{name} must be in [0, 1], got "
                                  f"{getattr(self, name)}")

    @property
    def num_updates(self) -> int:
        """``total_timesteps // (num_envs * num_steps)``."""
        return self.total_timesteps // (self.num_envs * self.num_steps)

    @property
    def minibatch_size(self) -> int:
        """``num_envs * num_steps // num_minibatches``."""
        return self.num_envs * self.num_steps // self.num_minibatches


class ActorCritic(nnx.Module):
    """Separate actor and critic MLPs (two hidden layers each), PureJaxRL's initialisation.

    Hidden layers use orthogonal(sqrt 2) kernels, the policy head orthogonal(0.01), the value
    head orthogonal(1); biases start at zero.

    Args:
      obs_dim: ``D``, size of the (flattened) observation.
      num_actions: ``A``.
      hidden: width of the hidden layers.
      activation: ``"tanh"`` or ``"relu"``.
      rngs: ``nnx.Rngs`` for the initialisation.
    """

    def __init__(self, obs_dim: int, num_actions: int, *, hidden: int = 64,
                 activation: str = "tanh", rngs: nnx.Rngs):
        def dense(i: int, o: int, scale: float) -> nnx.Linear:
            return nnx.Linear(i, o, kernel_init=nnx.initializers.orthogonal(scale),
                              bias_init=nnx.initializers.zeros_init(), rngs=rngs)

        root2 = float(np.sqrt(2.0))
        self.activation = activation
        self.actor = nnx.List([dense(obs_dim, hidden, root2), dense(hidden, hidden, root2),
                               dense(hidden, num_actions, 0.01)])
        self.critic = nnx.List([dense(obs_dim, hidden, root2), dense(hidden, hidden, root2),
                                dense(hidden, 1, 1.0)])

    def _mlp(self, layers: Any, x: jax.Array) -> jax.Array:
        act = jnp.tanh if self.activation == "tanh" else jax.nn.relu
        for layer in layers[:-1]:
            x = act(layer(x))
        return layers[-1](x)

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Policy logits and state value.

        Args:
          obs: ``[..., D]`` observations.

        Returns:
          ``(logits: [..., A], value: [...])``.
        """
        obs = obs.astype(jnp.float32)
        return self._mlp(self.actor, obs), self._mlp(self.critic, obs)[..., 0]


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """Global-norm clipping then Adam (``eps=1e-5``), learning rate annealed if configured."""
    if config.anneal_lr:
        steps_per_update = config.num_minibatches * config.update_epochs

        def lr(count: jax.Array) -> jax.Array:
            frac = 1.0 - (count // steps_per_update) / config.num_updates
            return config.lr * frac
    else:
        lr = config.lr
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                       optax.adam(lr, eps=1e-5))


class TrainOutput(NamedTuple):
    """What ``train(key)`` returns.

    Attributes:
      params: the trained parameters (an ``nnx.State`` of ``nnx.Param``).
      opt_state: the optax state.
      env_state: the final (vmapped) environment state, ``[num_envs]`` on every leaf.
      metrics: per update ``U = num_updates``: ``episode_return: float32[U]`` (mean return of
        the episodes that ended during the update's rollout, NaN if none did),
        ``episodes: int32[U]`` (how many ended), ``timesteps: int32[U]`` (environment steps so
        far), and the losses ``total_loss, value_loss, actor_loss, entropy: float32[U]``
        (means over the update's minibatches).

    With ``make_train(..., num_agents=A)``, ``params`` and ``opt_state`` carry a leading
    agent axis ``A`` and the losses are ``float32[U, A]``.
    """

    params: Any
    opt_state: Any
    env_state: Any
    metrics: dict[str, jax.Array]


class Rollout(NamedTuple):
    """One rollout, time-major; with an agent axis every per-agent field gains ``A``.

    Attributes:
      done: ``bool[T, E]`` episode ended at the step (``[T, E, A]``: the team's, per agent).
      action: ``int32[T, E]`` (``[T, E, A]``).
      value: ``float32[T, E]`` critic values (``[T, E, A]``).
      reward: ``float32[T, E]`` (``[T, E, A]``: the team reward given to every agent).
      log_prob: ``float32[T, E]`` log-probability of ``action`` (``[T, E, A]``).
      obs: ``[T, E, *obs_shape]`` observations the actions were taken on
        (``[T, E, A, *obs_shape]``).
    """

    done: jax.Array  # [T, E] or [T, E, A]
    action: jax.Array  # [T, E] or [T, E, A]
    value: jax.Array  # [T, E] or [T, E, A]
    reward: jax.Array  # [T, E] or [T, E, A]
    log_prob: jax.Array  # [T, E] or [T, E, A]
    obs: jax.Array  # [T, E, *obs_shape] or [T, E, A, *obs_shape]


def _obs_shape(env: Any, params: Any) -> tuple[int, ...]:
    obs, _ = jax.eval_shape(env.reset, jax.random.key(0), params)
    return tuple(obs.shape)


def _flatten_obs(obs: jax.Array, obs_ndim: int) -> jax.Array:
    """``[..., *obs_shape] -> [..., D]``."""
    return obs.reshape(*obs.shape[: obs.ndim - obs_ndim], -1)


def _agent_obs_shape(env: Any, env_params: Any, num_agents: int | None) -> tuple[int, ...]:
    """One agent's observation shape: the env's, less its leading agent axis if any."""
    shape = _obs_shape(env, env_params)
    if num_agents is None:
        return shape
    if int(num_agents) < 1:
        raise OptionError(f"num_agents must be >= 1, got {num_agents}")
    if len(shape) < 2 or shape[0] != int(num_agents):
        raise OptionError(f"observations must be [A, ...] with A = num_agents = {num_agents}, "
                          f"got {shape}")
    return shape[1:]


def default_model_fn(config: PPOConfig, env: Any, env_params: Any = None, *,
                     num_agents: int | None = None) -> Callable[[jax.Array], ActorCritic]:
    """``key -> ActorCritic`` sized for ``env`` (flattened observation size, actions).

    Args:
      config: supplies ``hidden`` and ``activation``.
      env: the environment.
      env_params: environment parameters (default ``env.default_params``).
      num_agents: for a multi-agent environment (observations ``[A, *obs_shape]``), ``A``:
        the network is one agent's, sized for ``obs_shape``.

    Raises:
      OptionError: ``num_agents`` does not match the observation's leading axis.
    """
    env_params = env.default_params if env_params is None else env_params
    obs_dim = int(math.prod(_agent_obs_shape(env, env_params, num_agents)))
    num_actions = int(env.num_actions)

    def model_fn(key: jax.Array) -> ActorCritic:
        return ActorCritic(obs_dim, num_actions, hidden=config.hidden,
                           activation=config.activation, rngs=nnx.Rngs(params=key))

    return model_fn


def init_params(model_fn: Callable[[jax.Array], nnx.Module], key: jax.Array,
                num_agents: int | None = None) -> Any:
    """Initial parameters ``nnx.state(model_fn(key))``, or ``A`` agents' stacked.

    Args:
      model_fn: ``key -> nnx.Module``.
      key: PRNG key (split into ``A`` keys for agents).
      num_agents: ``A``; None for a single network.

    Returns:
      An ``nnx.State``; with ``num_agents`` every leaf has a leading axis ``A`` (agent ``a``
      initialised from ``jax.random.split(key, A)[a]``). The agents are built one after the
      other, not vmapped: the orthogonal initialiser calls LAPACK's QR, and that custom call
      inside a jitted, vmapped function was seen to deadlock XLA's CPU runtime.
    """
    if num_agents is None:
        return nnx.state(model_fn(key))
    per_agent = [nnx.state(model_fn(k)) for k in jax.random.split(key, int(num_agents))]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_agent)


def gae(rollout: Rollout, last_value: jax.Array, *, gamma: float, gae_lambda: float
        ) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation, a reverse ``lax.scan`` over time.

    Args:
      rollout: ``done, reward, value: [T, *B]`` (``B`` = ``[E]``, or ``[E, A]`` per agent).
      last_value: ``float32[*B]``, the value of the observation after the last step.
      gamma: discount.
      gae_lambda: GAE lambda.

    Returns:
      ``(advantages, targets)``, both ``float32[T, *B]``; ``targets = advantages + value``.
    """
    def body(carry, tr):
        adv, next_value = carry
        not_done = 1.0 - tr.done.astype(jnp.float32)
        delta = tr.reward + gamma * next_value * not_done - tr.value
        adv = delta + gamma * gae_lambda * not_done * adv
        return (adv, tr.value), adv

    _, advantages = lax.scan(body, (jnp.zeros_like(last_value), last_value), rollout,
                             reverse=True)
    return advantages, advantages + rollout.value


def ppo_loss(config: PPOConfig, apply_fn: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]],
             params: Any, batch: Rollout, advantages: jax.Array, targets: jax.Array
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """PPO's clipped objective on one minibatch of one agent.

    Args:
      config: ``clip_eps``, ``vf_coef``, ``ent_coef``.
      apply_fn: ``(params, obs [N, *obs_shape]) -> (logits [N, A], value [N])``.
      params: the network parameters.
      batch: ``Rollout`` rows ``[N]`` (``done`` and ``reward`` unused).
      advantages: ``float32[N]`` (normalised here over the minibatch).
      targets: ``float32[N]`` value targets.

    Returns:
      ``(total, (value_loss, actor_loss, entropy))``, scalars; ``total = actor_loss +
      vf_coef * value_loss - ent_coef * entropy`` (the value update is clipped too).
    """
    logits, value = apply_fn(params, batch.obs)
    log_probs = jax.nn.log_softmax(logits)
    log_prob = jnp.take_along_axis(log_probs, batch.action[..., None], axis=-1)[..., 0]
    value_clipped = batch.value + jnp.clip(value - batch.value, -config.clip_eps,
                                           config.clip_eps)
    value_loss = 0.5 * jnp.maximum(jnp.square(value - targets),
                                   jnp.square(value_clipped - targets)).mean()
    ratio = jnp.exp(log_prob - batch.log_prob)
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    actor_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - config.clip_eps,
                                                    1.0 + config.clip_eps) * adv).mean()
    entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
    total = actor_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    return total, (value_loss, actor_loss, entropy)


def ppo_update(config: PPOConfig, tx: optax.GradientTransformation,
               apply_fn: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]],
               params: Any, opt_state: Any, batch: Rollout, advantages: jax.Array,
               targets: jax.Array, key: jax.Array) -> tuple[Any, Any, tuple[jax.Array, ...]]:
    """``update_epochs`` epochs of ``num_minibatches`` shuffled minibatch steps, one agent.

    Vmap it over agents (parameters, optimiser state and data on an agent axis, ``key``
    shared) for independent learners: :func:`make_train` does with ``num_agents``.

    Args:
      config: the PPO configuration.
      tx: the optimiser (:func:`make_optimizer`).
      apply_fn: as :func:`ppo_loss`.
      params: parameters.
      opt_state: ``tx`` state of ``params``.
      batch: a flattened rollout, every field ``[N, ...]`` with ``N = num_envs * num_steps``.
      advantages: ``float32[N]``.
      targets: ``float32[N]``.
      key: PRNG key of the shuffles.

    Returns:
      ``(params, opt_state, (total, value_loss, actor_loss, entropy))``, the losses
      ``float32[update_epochs, num_minibatches]``.
    """
    grad_fn = jax.value_and_grad(functools.partial(ppo_loss, config, apply_fn), has_aux=True)
    n = advantages.shape[0]

    def epoch(carry, key):
        perm = jax.random.permutation(key, n)
        shuffled = jax.tree.map(
            lambda x: x[perm].reshape(config.num_minibatches, -1, *x.shape[1:]),
            (batch, advantages, targets))

        def minibatch(carry, mb):
            params, opt_state = carry
            (loss, aux), grads = grad_fn(params, *mb)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), (loss, *aux)

        return lax.scan(minibatch, carry, shuffled)

    (params, opt_state), losses = lax.scan(epoch, (params, opt_state),
                                           jax.random.split(key, config.update_epochs))
    return params, opt_state, losses


def make_train(config: PPOConfig, env: Any, env_params: Any = None, *,
               model_fn: Callable[[jax.Array], nnx.Module] | None = None,
               progress: Callable[[Any, Any], Any] | None = None,
               num_agents: int | None = None) -> Callable[..., TrainOutput]:
    """Build ``train(key, params=None, opt_state=None) -> TrainOutput``, one jittable function.

    Args:
      config: the PPO configuration.
      env: a gymnax-style environment (a :class:`~mmsb_jax.agents.BusEnv`, or anything with
        ``reset(key, params) -> (obs, state)`` and ``step(key, state, action, params) ->
        (obs, state, reward, done, info)`` and ``num_actions``).
      env_params: environment parameters (default ``env.default_params``).
      model_fn: ``key -> nnx.Module`` building the network, a module mapping observations
        ``[..., D]`` to ``(logits [..., A], value [...])`` (default: an :class:`ActorCritic`
        sized for ``env``, see :func:`default_model_fn`).
      progress: called on the host after every update as ``progress(update, episode_return)``
        (``int32[]`` update index from 0, ``float32[]`` mean return of the episodes that ended,
        NaN if none) through ``jax.debug.callback``.
      num_agents: the optional agent axis: ``A`` independent learners (IPPO) on a
        multi-agent ``env`` whose observations are ``[A, *obs_shape]``, actions ``int32[A]``
        and reward the team's ``float32[]``. Every agent has its own network parameters and
        optimiser state (leading axis ``A``), acts on its own observation, and learns from the
        team reward; :func:`ppo_update` (and so the loss and gradients) is vmapped over agents,
        with the minibatch shuffles shared. None (default): one agent.

    Returns:
      ``train(key, params=None, opt_state=None)``: ``key`` is split into an initialisation
      key (used when ``params`` is None: :func:`init_params`) and a run key; ``opt_state``
      defaults to a fresh optimiser state. Wrap it in ``jax.jit``: the whole run is one
      compiled computation. Observations are flattened to ``[D]`` (per agent).

    Raises:
      OptionError: ``num_agents`` is not ``>= 1`` or is not the observation's leading axis.
    """
    env_params = env.default_params if env_params is None else env_params
    obs_ndim = len(_agent_obs_shape(env, env_params, num_agents))
    if model_fn is None:
        model_fn = default_model_fn(config, env, env_params, num_agents=num_agents)
    graphdef, _ = nnx.split(model_fn(jax.random.key(0)))
    tx = make_optimizer(config)
    num_envs, num_steps = config.num_envs, config.num_steps
    batch = num_envs * num_steps

    def network(params: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return nnx.merge(graphdef, params)(_flatten_obs(obs, obs_ndim))

    act_fn, init_opt = network, tx.init
    update_fn = functools.partial(ppo_update, config, tx, network)
    if num_agents is not None:
        # Agent a: params[a] on obs[:, a]. Rollout fields [T, E, A, ...] are flattened to
        # [T * E, A, ...] and the update is vmapped over their axis 1.
        act_fn = jax.vmap(network, in_axes=(0, 1), out_axes=1)
        init_opt = jax.vmap(tx.init)
        update_fn = jax.vmap(update_fn, in_axes=(0, 0, 1, 1, 1, None))

    def flatten(x: jax.Array) -> jax.Array:
        return x.reshape(batch, *x.shape[2:])

    def train(key: jax.Array, params: Any = None, opt_state: Any = None) -> TrainOutput:
        init_key, key = jax.random.split(key)
        if params is None:
            params = init_params(model_fn, init_key, num_agents)
        if opt_state is None:
            opt_state = init_opt(params)
        reset_key, key = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, (0, None))(jax.random.split(reset_key, num_envs),
                                                        env_params)
        zeros = jnp.zeros((num_envs,), jnp.float32)

        def env_step(carry, step_key):
            params, env_state, obs, ep_return = carry
            act_key, env_key = jax.random.split(step_key)
            logits, value = act_fn(params, obs)
            action = jax.random.categorical(act_key, logits).astype(jnp.int32)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None],
                                           axis=-1)[..., 0]
            next_obs, env_state, reward, done, _ = jax.vmap(env.step, (0, 0, 0, None))(
                jax.random.split(env_key, num_envs), env_state, action, env_params)
            reward = reward.astype(jnp.float32)
            ep_return = ep_return + reward
            finished = jnp.where(done, ep_return, 0.0)
            ep_return = jnp.where(done, 0.0, ep_return)
            if num_agents is None:
                tr = Rollout(done, action, value, reward, log_prob, obs)
            else:  # the team's reward and episode end, given to every agent
                tr = Rollout(jnp.broadcast_to(done[:, None], value.shape), action, value,
                             jnp.broadcast_to(reward[:, None], value.shape), log_prob, obs)
            return (params, env_state, next_obs, ep_return), (tr, finished)

        def update(carry, xs):
            params, opt_state, env_state, obs, ep_return = carry
            update_idx, update_key = xs
            rollout_key, perm_key = jax.random.split(update_key)
            (params, env_state, obs, ep_return), (rollout, finished) = lax.scan(
                env_step, (params, env_state, obs, ep_return),
                jax.random.split(rollout_key, num_steps))
            _, last_value = act_fn(params, obs)
            advantages, targets = gae(rollout, last_value, gamma=config.gamma,
                                      gae_lambda=config.gae_lambda)
            params, opt_state, losses = update_fn(
                params, opt_state, *jax.tree.map(flatten, (rollout, advantages, targets)),
                perm_key)
            done = rollout.done if num_agents is None else rollout.done[..., 0]
            episodes = done.sum().astype(jnp.int32)
            mean_return = jnp.where(episodes > 0, finished.sum() / jnp.maximum(episodes, 1),
                                    jnp.nan)
            if progress is not None:
                jax.debug.callback(progress, update_idx, mean_return)
            # [epochs, minibatches], or [A, epochs, minibatches] -> [] or [A]
            total, value_loss, actor_loss, entropy = (x.mean(axis=(-2, -1)) for x in losses)
            metrics = dict(episode_return=mean_return, episodes=episodes,
                           timesteps=(update_idx + 1) * batch, total_loss=total,
                           value_loss=value_loss, actor_loss=actor_loss, entropy=entropy)
            return (params, opt_state, env_state, obs, ep_return), metrics

        xs = (jnp.arange(config.num_updates, dtype=jnp.int32),
              jax.random.split(key, config.num_updates))
        (params, opt_state, env_state, _, _), metrics = lax.scan(
            update, (params, opt_state, env_state, obs, zeros), xs)
        return TrainOutput(params, opt_state, env_state, metrics)

    return train


class RLAgent(Agent):
    """A PPO actor-critic agent for a discrete-action gymnax-style environment.

    Args:
      env: the environment (a :class:`~mmsb_jax.agents.BusEnv`, e.g. from
        :func:`~mmsb_jax.agents.from_gymnax`).
      env_params: environment parameters (default ``env.default_params``).
      config: :class:`PPOConfig` (default: PureJaxRL's CartPole configuration).
      seed: seed of the initial parameters.

    Attributes:
      params: the current parameters, ``nnx.State``.
      opt_state: the optax state after the last :meth:`train` (None before).

    >>> import jax, mmsb_jax.agents as agents
    >>> env, params = agents.from_gymnax("CartPole-v1")
    >>> agent = agents.RLAgent(env, params, agents.PPOConfig(total_timesteps=2048))
    >>> out = agent.train(jax.random.key(0))
    >>> out.metrics["episode_return"].shape
    (4,)
    """

    def __init__(self, env: Any, env_params: Any = None, config: PPOConfig | None = None, *,
                 seed: int = 0):
        if not hasattr(env, "reset") or not hasattr(env, "step"):
            raise OptionError(f"{type(env).__name__} is not a gymnax-style environment")
        self.env = env
        self.env_params = env.default_params if env_params is None else env_params
        self.config = PPOConfig() if config is None else config
        if not isinstance(self.config, PPOConfig):
            raise OptionError(f"config must be a PPOConfig, got {type(self.config).__name__}")
        self.num_actions = int(env.num_actions)
        model_fn = default_model_fn(self.config, env, self.env_params)
        self._model_fn = model_fn
        self.graphdef, params = nnx.split(model_fn(jax.random.key(seed)))
        self.params = jax.tree.map(jnp.copy, params)
        self.opt_state: Any = None
        self.optimizer = make_optimizer(self.config)
        self._obs_ndim = len(_obs_shape(env, self.env_params))
        self._bar: Any = None
        self._train = jax.jit(make_train(self.config, env, self.env_params,
                                         model_fn=model_fn, progress=self._on_update))

    # -- training -------------------------------------------------------------------------
    def _on_update(self, update: Any, episode_return: Any) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.update(1)
        value = float(episode_return)
        if np.isfinite(value):
            bar.set_postfix(episode_return=f"{value:.1f}", refresh=False)

    def train(self, key: jax.Array, *, progress: bool = False, resume: bool = False
              ) -> TrainOutput:
        """Train with PPO for ``config.total_timesteps`` steps (one compiled computation).

        Args:
          key: PRNG key of the run (initialisation, environments, sampling, minibatches).
          progress: show a tqdm progress bar (one tick per update).
          resume: continue from the current :attr:`params` and :attr:`opt_state` instead of
            re-initialising the network from ``key``.

        Returns:
          :class:`TrainOutput`; :attr:`params` and :attr:`opt_state` are set to the result.
        """
        init_key, _ = jax.random.split(key)
        if resume:
            params = self.params
            opt_state = self.optimizer.init(params) if self.opt_state is None \
                else self.opt_state
        else:
            # Initialised here exactly as ``train`` would (same key split), so that a fresh
            # run and a resumed one share one compiled function.
            params = nnx.state(self._model_fn(init_key))
            opt_state = self.optimizer.init(params)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.config.num_updates, unit="update",
                             desc=f"PPO {getattr(self.env, 'name', type(self.env).__name__)}")
        try:
            out = self._train(key, params, opt_state)
            jax.block_until_ready(out.params)
            jax.effects_barrier()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        self.params, self.opt_state = out.params, out.opt_state
        return out

    # -- acting ---------------------------------------------------------------------------
    def apply(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Logits and value of the current network.

        Args:
          obs: ``[..., *obs_shape]``: one observation or any leading batch axes.

        Returns:
          ``(logits: [..., A], value: [...])``.
        """
        return nnx.merge(self.graphdef, self.params)(
            _flatten_obs(jnp.asarray(obs), self._obs_ndim))

    @property
    def model(self) -> nnx.Module:
        """The network as an ``nnx`` module holding the current :attr:`params`."""
        return nnx.merge(self.graphdef, self.params)

    def logits(self, obs: jax.Array) -> jax.Array:
        """``[..., A]`` policy logits for observations ``[..., *obs_shape]``."""
        return self.apply(obs)[0]

    def value(self, obs: jax.Array) -> jax.Array:
        """``[...]`` state values for observations ``[..., *obs_shape]``."""
        return self.apply(obs)[1]

    def policy(self, key: jax.Array, obs: jax.Array, state: State | None = None) -> jax.Array:
        """``float32[A]``: softmax of the logits (``key`` and ``state`` are unused)."""
        del key, state
        return jax.nn.softmax(self.logits(obs))

    def act(self, key: jax.Array, obs: jax.Array, state: State | None = None, *,
            greedy: bool = False) -> jax.Array:
        """``int32[]``: ``categorical(key, logits)``, or the most probable action if ``greedy``.

        Sampling uses ``key`` directly (as in training), so the same key gives the same action.

        Raises:
          ShapeError: ``obs`` is a batch (vmap ``act`` instead).
        """
        del state
        logits = self.logits(obs)
        if logits.shape != (self.num_actions,):
            raise ShapeError(f"act takes one observation; logits have shape {logits.shape}")
        if greedy:
            return jnp.argmax(jax.nn.softmax(logits)).astype(jnp.int32)
        return jax.random.categorical(key, logits).astype(jnp.int32)
