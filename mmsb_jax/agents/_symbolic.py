"""``SymbolicAgent``: prioritised condition -> action rules, and ``HybridAgent`` mixtures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mmsb_jax.agents._base import Agent
from mmsb_jax.core.pages import State
from mmsb_jax.errors import OptionError, ShapeError

__all__ = ["HybridAgent", "Rule", "SymbolicAgent"]

Predicate = Callable[[jax.Array, State | None], Any]


class Rule(NamedTuple):
    """One rule: when ``predicate(obs, state)`` holds, take ``action``.

    Attributes:
      predicate: ``(obs, state) -> bool[]``, pure and traceable (``state`` is the environment's
        State, or None when the caller has none).
      action: the action in ``[0, A)``.
      priority: rules with a higher priority are tried first; equal priorities keep list order.
      name: a label for :meth:`SymbolicAgent.explain`.
    """

    predicate: Predicate
    action: int
    priority: int = 0
    name: str = ""


class SymbolicAgent(Agent):
    """Take the action of the highest-priority rule whose condition holds, else a default.

    All predicates are evaluated (vectorised, no Python branching), so the agent is pure and
    jittable and ``vmap``s over observations and states. The policy is deterministic: a one-hot
    distribution on the chosen action.

    Args:
      rules: :class:`Rule` objects or tuples ``(predicate, action[, priority[, name]])``.
      num_actions: ``A``.
      default_action: the action when no rule fires.

    Raises:
      OptionError: a rule is malformed (predicate not callable, action outside ``[0, A)``),
        ``num_actions < 1`` or ``default_action`` outside ``[0, A)``.

    >>> import jax, jax.numpy as jnp, mmsb_jax.agents as agents
    >>> agent = agents.SymbolicAgent([(lambda obs, s: obs[2] > 0, 1)], num_actions=2)
    >>> int(agent.act(jax.random.key(0), jnp.array([0.0, 0.0, 0.1, 0.0])))
    1
    """

    def __init__(self, rules: Sequence[Rule | tuple[Any, ...]], num_actions: int,
                 default_action: int = 0):
        if int(num_actions) < 1:
            raise OptionError(f"num_actions must be >= 1, got {num_actions}")
        self.num_actions = int(num_actions)
        parsed: list[Rule] = []
        for i, r in enumerate(rules):
            try:
                rule = r if isinstance(r, Rule) else Rule(*r)
            except TypeError as e:
                raise OptionError(f"rule {i}: expected (predicate, action[, priority[, name]]), "
                                  f"got {r!r}") from e
            if not callable(rule.predicate):
                raise OptionError(f"rule {i}: predicate is not callable")
            if isinstance(rule.action, bool) or not isinstance(rule.action, int):
                raise OptionError(f"rule {i}: action must be an int, got {rule.action!r}")
            if not 0 <= rule.action < self.num_actions:
                raise OptionError(f"rule {i}: action {rule.action} outside [0, {num_actions})")
            parsed.append(rule._replace(priority=int(rule.priority),
                                        name=rule.name or f"rule{i}"))
        if not 0 <= int(default_action) < self.num_actions:
            raise OptionError(f"default_action {default_action} outside [0, {num_actions})")
        self.default_action = int(default_action)
        # Stable sort: higher priority first, list order among equals.
        self.rules: tuple[Rule, ...] = tuple(sorted(parsed, key=lambda r: -r.priority))

    def fired(self, obs: jax.Array, state: State | None = None) -> jax.Array:
        """``bool[R]``: which rules' conditions hold, in priority order (:attr:`rules`).

        Raises:
          ShapeError: a predicate did not return a scalar.
        """
        out = []
        for rule in self.rules:
            value = jnp.asarray(rule.predicate(obs, state))
            if value.shape != ():
                raise ShapeError(f"predicate of {rule.name!r} returned shape {value.shape}; "
                                 "predicates take one observation and return a scalar bool")
            out.append(value.astype(bool))
        return jnp.stack(out) if out else jnp.zeros((0,), bool)

    def decide(self, obs: jax.Array, state: State | None = None
               ) -> tuple[jax.Array, jax.Array]:
        """The chosen action and the rule that chose it.

        Returns:
          ``(action: int32[], rule: int32[])`` where ``rule`` indexes :attr:`rules` (``-1``:
          no rule fired, ``action`` is the default).
        """
        fired = self.fired(obs, state)
        if not self.rules:
            return jnp.int32(self.default_action), jnp.int32(-1)
        actions = jnp.asarray([r.action for r in self.rules], jnp.int32)
        first = jnp.argmax(fired).astype(jnp.int32)
        any_fired = jnp.any(fired)
        action = jnp.where(any_fired, actions[first], jnp.int32(self.default_action))
        return action, jnp.where(any_fired, first, jnp.int32(-1))

    def explain(self, obs: jax.Array, state: State | None = None) -> str:
        """The name of the rule that decides for ``obs`` (``"default"`` if none), eagerly."""
        _, rule = self.decide(obs, state)
        return "default" if int(rule) < 0 else self.rules[int(rule)].name

    def policy(self, key: jax.Array, obs: jax.Array, state: State | None = None) -> jax.Array:
        """``float32[A]``: one-hot on the decided action (``key`` is unused)."""
        del key
        action, _ = self.decide(obs, state)
        return jax.nn.one_hot(action, self.num_actions, dtype=jnp.float32)

    def act(self, key: jax.Array, obs: jax.Array, state: State | None = None, *,
            greedy: bool = False) -> jax.Array:
        """``int32[]``: the decided action (deterministic; ``key`` and ``greedy`` are unused)."""
        del key, greedy
        return self.decide(obs, state)[0]


class HybridAgent(Agent):
    """A mixture of a learned policy and a guide (symbolic rules or a planner).

    The policy is the probability mixture ``pi = (1 - alpha) * pi_learned + alpha * pi_guide``:
    ``alpha = 0`` is the learned agent, ``alpha = 1`` the guide. :meth:`act` samples from that
    mixture by first drawing which part acts (the guide with probability ``alpha``) and then
    calling that part's own ``act`` with the *same* key, so with ``alpha`` 0 or 1 every action
    equals the part's action for the same key; ``greedy`` takes the argmax of the mixture.
    Mixing probabilities (not logits) keeps a deterministic guide's hard choices meaningful:
    a one-hot rule contributes exactly ``alpha`` of mass to its action.

    Args:
      learned: the learned agent (e.g. an :class:`~mmsb_jax.agents.RLAgent`).
      guide: the guide agent (a :class:`SymbolicAgent` or :class:`~mmsb_jax.agents.PlanningAgent`).
      alpha: weight of the guide, in ``[0, 1]``.

    Raises:
      OptionError: ``alpha`` outside ``[0, 1]`` or the parts have different action counts.
    """

    def __init__(self, learned: Agent, guide: Agent, alpha: float):
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise OptionError(f"alpha must be in [0, 1], got {alpha}")
        if learned.num_actions != guide.num_actions:
            raise OptionError(f"the parts have {learned.num_actions} and {guide.num_actions} "
                              "actions")
        self.learned, self.guide, self.alpha = learned, guide, alpha
        self.num_actions = learned.num_actions

    def policy(self, key: jax.Array, obs: jax.Array, state: State | None = None) -> jax.Array:
        """``float32[A]``: ``(1 - alpha) * learned.policy + alpha * guide.policy``.

        Both parts get the same ``key``.
        """
        p_learned = self.learned.policy(key, obs, state)
        p_guide = self.guide.policy(key, obs, state)
        return (1.0 - self.alpha) * p_learned + self.alpha * p_guide

    def act(self, key: jax.Array, obs: jax.Array, state: State | None = None, *,
            greedy: bool = False) -> jax.Array:
        """``int32[]``: a sample of the mixture, or its argmax if ``greedy`` (see the class)."""
        if greedy:
            return jnp.argmax(self.policy(key, obs, state)).astype(jnp.int32)
        coin = jax.random.uniform(jax.random.fold_in(key, 0x4D4D5342))
        return lax.cond(coin < self.alpha,
                        lambda: self.guide.act(key, obs, state).astype(jnp.int32),
                        lambda: self.learned.act(key, obs, state).astype(jnp.int32))
