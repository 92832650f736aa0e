"""``PlanningAgent``: Monte Carlo tree search (mctx) over an environment's own transitions.

The agent turns a :class:`~mmsb_jax.agents.BusEnv` into a planning model
(:func:`env_model`: a :class:`mmsb_jax.planning.TransitionModel` whose step applies the
environment's transition deltas and propagates, without the automatic reset) and, at every
decision, searches from the current State with :func:`mmsb_jax.planning.plan_mcts`
(``mctx.gumbel_muzero_policy`` by default). Search nodes are States reached by deltas, leaves
are scored by an optional ``value_fn`` of the State (e.g. a utility of derived pages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

from mmsb_jax.agents._base import Agent
from mmsb_jax.agents._env import BusEnv
from mmsb_jax.core.pages import State
from mmsb_jax.errors import OptionError
from mmsb_jax.planning import PlanResult, TransitionModel, plan_mcts

__all__ = ["PlanningAgent", "env_model"]


def env_model(env: BusEnv, params: Any = None, *, discount: float = 0.99,
              key: jax.Array | None = None,
              value_fn: Callable[[State, jax.Array], jax.Array] | None = None,
              prior_fn: Callable[[State], jax.Array] | None = None) -> TransitionModel:
    """A :class:`mmsb_jax.planning.TransitionModel` of ``env``'s transitions.

    ``step(state, action)`` applies ``env.transition``'s deltas (``env.commit``: apply, then
    propagate) with a fixed ``key`` — exact for deterministic environments, one sample of the
    dynamics otherwise. It never resets: the discount is 0 on the step that terminates or
    truncates the episode (mctx then ignores everything below it).

    Args:
      env: the environment.
      params: environment parameters (default ``env.default_params``).
      discount: per-step discount in ``[0, 1]``.
      key: the key given to ``env.transition`` (default ``jax.random.key(0)``).
      value_fn: ``(state, key) -> f32[]`` leaf value (default 0).
      prior_fn: ``(state) -> f32[A]`` prior logits (default uniform).

    Returns:
      The model; every action is valid.

    Raises:
      OptionError: ``env`` is not a BusEnv or ``discount`` outside ``[0, 1]``.
    """
    if not isinstance(env, BusEnv):
        raise OptionError(f"env_model needs a BusEnv, got {type(env).__name__}")
    if not 0.0 <= float(discount) <= 1.0:
        raise OptionError(f"discount must be in [0, 1], got {discount}")
    params = env.default_params if params is None else params
    gamma = float(discount)
    step_key = jax.random.key(0) if key is None else key
    num_actions = int(env.num_actions)

    def step(state: State, action: jax.Array) -> tuple[State, jax.Array, jax.Array]:
        tr = env.transition(step_key, state, jnp.asarray(action, jnp.int32), params)
        nxt = env.commit(state, tr.deltas)
        ended = jnp.logical_or(jnp.asarray(tr.terminated, bool),
                               jnp.asarray(env.is_truncated(nxt, params), bool))
        return (nxt, jnp.asarray(tr.reward, jnp.float32),
                jnp.where(ended, 0.0, gamma).astype(jnp.float32))

    def valid_actions(state: State) -> jax.Array:
        del state
        return jnp.ones((num_actions,), bool)

    return TransitionModel(step=step, valid_actions=valid_actions, num_actions=num_actions,
                           prior_fn=prior_fn, value_fn=value_fn)


class PlanningAgent(Agent):
    """Plan every action with mctx over the environment's own transition deltas.

    The policy is mctx's improved policy (``action_weights``) at the root; :meth:`act` returns
    the action the search selected (Gumbel MuZero's Sequential Halving winner) or, with
    ``greedy=True``, the argmax of the weights. The observation is unused: the search starts
    from the environment State.

    Args:
      env: a :class:`~mmsb_jax.agents.BusEnv` (deterministic transitions plan exactly).
      params: environment parameters (default ``env.default_params``).
      num_simulations: simulations per decision.
      discount: planning discount.
      value_fn: ``(state, key) -> f32[]`` leaf value estimate (default 0).
      prior_fn: ``(state) -> f32[A]`` prior logits (default uniform).
      max_depth: deepest simulation (default ``num_simulations``).
      static_pages: pages actions never change (kept once per root, not per tree node).
      **search_options: forwarded to :func:`mmsb_jax.planning.plan_mcts` (``policy=``,
        ``gumbel_scale=``, ``max_num_considered_actions=``...).

    Raises:
      OptionError: bad options (checked on the first search), or ``env`` not a BusEnv.
    """

    def __init__(self, env: BusEnv, params: Any = None, *, num_simulations: int = 32,
                 discount: float = 0.99,
                 value_fn: Callable[[State, jax.Array], jax.Array] | None = None,
                 prior_fn: Callable[[State], jax.Array] | None = None,
                 max_depth: int | None = None, static_pages: str | Iterable[str] = (),
                 **search_options: Any):
        if isinstance(num_simulations, bool) or int(num_simulations) < 1:
            raise OptionError(f"num_simulations must be >= 1, got {num_simulations}")
        self.env = env
        self.params = env.default_params if params is None else params
        self.model = env_model(env, self.params, discount=discount, value_fn=value_fn,
                               prior_fn=prior_fn)
        self.num_actions = self.model.num_actions
        self.num_simulations = int(num_simulations)
        self.max_depth = max_depth
        self.static_pages = (static_pages,) if isinstance(static_pages, str) \
            else tuple(static_pages)
        self.search_options = dict(search_options)

    def plan(self, key: jax.Array, state: State) -> PlanResult:
        """The search from one State (a :class:`mmsb_jax.planning.PlanResult` with ``B = 1``).

        Args:
          key: PRNG key of the search.
          state: the environment State (unbatched).
        """
        if not isinstance(state, State):
            raise OptionError("PlanningAgent needs the environment State (got "
                              f"{type(state).__name__})")
        roots = jax.tree.map(lambda x: jnp.asarray(x)[None], state)
        return plan_mcts(self.model, roots, key[None], num_simulations=self.num_simulations,
                         max_depth=self.max_depth, static_pages=self.static_pages,
                         **self.search_options)

    def policy(self, key: jax.Array, obs: jax.Array, state: State | None = None) -> jax.Array:
        """``float32[A]``: the search's improved policy at the root (``obs`` is unused)."""
        del obs
        return self.plan(key, state).action_weights[0]

    def act(self, key: jax.Array, obs: jax.Array, state: State | None = None, *,
            greedy: bool = False) -> jax.Array:
        """``int32[]``: the searched action, or the argmax of the improved policy if ``greedy``."""
        del obs
        out = self.plan(key, state)
        if greedy:
            return jnp.argmax(out.action_weights[0]).astype(jnp.int32)
        return out.action[0]
