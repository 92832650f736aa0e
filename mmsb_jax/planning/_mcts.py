"""Monte Carlo tree search over a bus transition model, with mctx.

:func:`plan_mcts` runs ``mctx.gumbel_muzero_policy`` (or ``mctx.muzero_policy``) whose
``recurrent_fn`` is the model's ``step``: every node of the search tree stores the mmsb
:class:`~mmsb_jax.State` reached by the deltas along its path as its embedding. The search is
``vmap``-ed over a batch of roots, each root with its own PRNG key, so a batch gives exactly
the results of planning each root alone. Invalid actions are masked at the root through mctx's
``invalid_actions`` and below it through the prior logits (an invalid action gets the smallest
float logit, so Gumbel MuZero never selects it inside the tree).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import mctx
import numpy as np
from jax import lax

from mmsb_jax.core.pages import State
from mmsb_jax.errors import OptionError, ShapeError, UnknownPageError
from mmsb_jax.planning._model import (
    TransitionModel,
    batch_size,
    check_model,
    check_steps,
    split_keys,
    unbatched_example,
)

__all__ = [
    "POLICIES",
    "POLICY_OPTIONS",
    "MCTSPolicy",
    "PlanResult",
    "mcts_policy",
    "plan_mcts",
    "principal_variation",
]

POLICIES: tuple[str, ...] = ("gumbel_muzero", "muzero")
"""The mctx search policies :func:`plan_mcts` can run."""

POLICY_OPTIONS: dict[str, tuple[str, ...]] = {
    "gumbel_muzero": ("qtransform", "max_num_considered_actions", "gumbel_scale"),
    "muzero": ("qtransform", "dirichlet_fraction", "dirichlet_alpha", "pb_c_init", "pb_c_base",
               "temperature"),
}
"""Keyword options forwarded to each mctx policy (see ``mctx.gumbel_muzero_policy`` and
``mctx.muzero_policy`` for their meaning and defaults)."""


class PlanResult(NamedTuple):
    """The outcome of :func:`plan_mcts` for a batch of ``B`` roots and ``A`` actions.

    Attributes:
      action: ``int32[B]``, the action to take at each root (always a valid one when the root
        has any valid action; action 0 otherwise).
      action_weights: ``f32[B, A]``, mctx's policy targets (sum to 1; 0 on invalid actions).
      value: ``f32[B]``, the search value of each root.
      qvalues: ``f32[B, A]``, ``reward + discount * value`` of each root child (0 where the
        child was never visited).
      visit_counts: ``int32[B, A]``, visits of each root child.
      valid_actions: ``bool[B, A]``, ``model.valid_actions`` at each root.
      search_tree: the ``mctx.Tree`` with ``[B, num_simulations + 1, ...]`` fields; its
        ``embeddings`` is a ``State`` of the non-static pages at every node.
    """

    action: jax.Array
    action_weights: jax.Array
    value: jax.Array
    qvalues: jax.Array
    visit_counts: jax.Array
    valid_actions: jax.Array
    search_tree: mctx.Tree


def _split(state: State, dynamic: tuple[str, ...], static: tuple[str, ...]
           ) -> tuple[State, tuple[dict[str, jax.Array], dict[str, jax.Array]]]:
    dyn = State(pages={n: state.pages[n] for n in dynamic},
                epochs={n: state.epochs[n] for n in dynamic})
    return dyn, ({n: state.pages[n] for n in static}, {n: state.epochs[n] for n in static})


def _join(dyn: State, fixed: tuple[dict[str, jax.Array], dict[str, jax.Array]],
          names: tuple[str, ...]) -> State:
    pages, epochs = fixed
    return State(pages={n: pages[n] if n in pages else dyn.pages[n] for n in names},
                 epochs={n: epochs[n] if n in epochs else dyn.epochs[n] for n in names})


def _mask_logits(logits: jax.Array, valid: jax.Array) -> jax.Array:
    """mctx's masking: the smallest finite logit on invalid actions (never -inf: softmax)."""
    logits = logits - jnp.max(logits, axis=-1, keepdims=True)
    return jnp.where(valid, logits, jnp.finfo(logits.dtype).min)


def _prior(model: TransitionModel, state: State) -> jax.Array:
    if model.prior_fn is None:
        return jnp.zeros((model.num_actions,), jnp.float32)
    return jnp.asarray(model.prior_fn(state), jnp.float32)


def _value(model: TransitionModel, state: State, key: jax.Array) -> jax.Array:
    if model.value_fn is None:
        return jnp.zeros((), jnp.float32)
    return jnp.asarray(model.value_fn(state, key), jnp.float32)


def _add_batch(tree: Any) -> Any:
    return jax.tree.map(lambda x: x[None], tree)


def _drop_batch(tree: Any) -> Any:
    return jax.tree.map(lambda x: x[0], tree)


def _search_one(model: TransitionModel, policy: str, num_simulations: int,
                max_depth: int | None, names: tuple[str, ...], static: tuple[str, ...],
                options: tuple[tuple[str, Any], ...], dyn: State,
                fixed: tuple[dict[str, jax.Array], dict[str, jax.Array]],
                key: jax.Array) -> mctx.PolicyOutput:
    """mctx search from one root (mctx batch of 1)."""
    dynamic = tuple(n for n in names if n not in static)
    root = _join(dyn, fixed, names)
    valid = model.valid_actions(root)
    value_key, search_key = jax.random.split(key)
    root_out = mctx.RootFnOutput(prior_logits=_prior(model, root)[None],
                                 value=_value(model, root, value_key)[None],
                                 embedding=_add_batch(dyn))

    def recurrent_fn(params, rng_key, action, embedding):
        state = _join(_drop_batch(embedding), params, names)
        nxt, reward, discount = model.step(state, action[0])
        logits = _mask_logits(_prior(model, nxt), model.valid_actions(nxt))
        out = mctx.RecurrentFnOutput(
            reward=jnp.asarray(reward, jnp.float32)[None],
            discount=jnp.asarray(discount, jnp.float32)[None],
            prior_logits=logits[None],
            value=_value(model, nxt, rng_key)[None])
        return out, _add_batch(_split(nxt, dynamic, static)[0])

    run = mctx.gumbel_muzero_policy if policy == "gumbel_muzero" else mctx.muzero_policy
    return run(params=fixed, rng_key=search_key, root=root_out, recurrent_fn=recurrent_fn,
               num_simulations=num_simulations, invalid_actions=~valid[None],
               max_depth=max_depth, **dict(options))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _plan_jit(model: TransitionModel, policy: str, num_simulations: int,
              max_depth: int | None, names: tuple[str, ...], static: tuple[str, ...],
              options: tuple[tuple[str, Any], ...], dyn: State,
              fixed: tuple[dict[str, jax.Array], dict[str, jax.Array]],
              keys: jax.Array) -> PlanResult:
    search = functools.partial(_search_one, model, policy, num_simulations, max_depth, names,
                               static, options)
    out = jax.vmap(search)(dyn, fixed, keys)
    tree = jax.tree.map(lambda x: x[:, 0], out.search_tree)
    summary = tree.summary()
    return PlanResult(
        action=out.action[:, 0].astype(jnp.int32),
        action_weights=out.action_weights[:, 0],
        value=summary.value,
        qvalues=summary.qvalues,
        visit_counts=tree.children_visits[:, mctx.Tree.ROOT_INDEX].astype(jnp.int32),
        valid_actions=tree.root_invalid_actions == 0,
        search_tree=tree)


def _check_options(policy: Any, options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    if policy not in POLICIES:
        raise OptionError(f"policy must be one of {POLICIES}, got {policy!r}")
    allowed = POLICY_OPTIONS[policy]
    for name, value in options.items():
        if name not in allowed:
            raise OptionError(f"unknown option {name!r} for policy {policy!r}; "
                              f"expected one of {allowed}")
        if isinstance(value, jax.Array | np.ndarray):
            raise OptionError(f"option {name!r} must be a Python number or function (it is "
                              "static under jit), not an array")
        try:
            hash(value)
        except TypeError:
            raise OptionError(f"option {name!r} must be hashable, got "
                              f"{type(value).__name__}") from None
    return tuple(sorted(options.items()))


def _check_static(static_pages: str | Iterable[str], names: tuple[str, ...]) -> tuple[str, ...]:
    static = (static_pages,) if isinstance(static_pages, str) else tuple(static_pages)
    for n in static:
        if not isinstance(n, str) or n not in names:
            raise UnknownPageError(str(n), names)
    static = tuple(n for n in names if n in set(static))
    if len(static) == len(names):
        raise OptionError("static_pages may not hold every page: the search needs at least one "
                          "page that actions change")
    return static


def plan_mcts(
    model: TransitionModel,
    root_states: State,
    key: jax.Array,
    *,
    num_simulations: int,
    max_depth: int | None = None,
    policy: str = "gumbel_muzero",
    static_pages: str | Iterable[str] = (),
    **policy_options: Any,
) -> PlanResult:
    """Plan one action for each of ``B`` root states with Monte Carlo tree search (mctx).

    Each root runs its own mctx search (``jax.vmap`` over roots, one PRNG key per root), so the
    result for root ``i`` depends only on ``root_states[i]`` and its key: a batch gives the same
    actions as planning each root alone with the same keys. The search tree's nodes are
    ``State`` s produced by ``model.step`` (deltas on the bus), its rewards and discounts come
    from the model, leaves are scored by ``model.value_fn`` (0 by default) and children are
    weighted by ``model.prior_fn`` (uniform by default). Actions where
    ``model.valid_actions`` is False are never returned, and get zero prior inside the tree.

    Call it eagerly (it runs a cached jitted search: one compilation per model, options and
    state shapes) or inside your own ``jax.jit``/``lax.scan`` (e.g. an agent's act function).
    The model and the options are static: build the model once.

    Example (a gridworld; see :func:`mmsb_jax.planning.gridworld_model`)::

        model = mp.gridworld_model()
        states = mp.gridworld_states(walls, starts, goals)          # State[B, ...]
        out = mp.plan_mcts(model, states, jax.random.key(0), num_simulations=64,
                           static_pages=("walls", "goal"))   # nothing moves walls or goal
        out.action            # int32[B]: the move to make from each root

    For a single, unbatched state add the batch axis:
    ``plan_mcts(model, jax.tree.map(lambda x: x[None], state), key, ...).action[0]``.

    Args:
      model: the :class:`~mmsb_jax.planning.TransitionModel` (unbatched functions).
      root_states: ``State[B, ...]``: every page and epoch has a leading batch axis ``B``.
      key: one PRNG key (split into ``B``) or ``B`` keys (``[B]`` typed or ``uint32[B, 2]``);
        root ``i`` uses key ``i``.
      num_simulations: simulations per root (``N``); the tree holds ``N + 1`` nodes.
      max_depth: the deepest a simulation may go (default: ``N``).
      policy: ``"gumbel_muzero"`` (Sequential Halving with Gumbel at the root, deterministic
        selection inside; policy improvement with few simulations) or ``"muzero"`` (PUCT with
        Dirichlet noise at the root; the action is sampled from the visit counts).
      static_pages: pages that actions never change (e.g. a maze's walls or the goal). They are
        kept once per root instead of once per tree node, which saves memory and copies in
        large trees; ``model.step`` still sees them, and anything it writes to them is
        discarded.
      **policy_options: options of the mctx policy, see :data:`POLICY_OPTIONS` (e.g.
        ``gumbel_scale=0.0`` for deterministic Gumbel search, ``temperature`` for MuZero).

    Returns:
      A :class:`PlanResult` (``action: int32[B]``, ``action_weights: f32[B, A]``, ...,
      ``search_tree``).

    Raises:
      OptionError: unknown ``policy`` or policy option, a non-positive ``num_simulations`` or
        ``max_depth``, ``model`` not a TransitionModel, or every page static.
      UnknownPageError: a static page is not in ``root_states``.
      ShapeError: ``root_states`` is not a batch, ``key`` is neither 1 nor ``B`` keys, or a
        model function returns the wrong shape (checked by tracing, before any search).
      DTypeError: ``model.step`` returns a non-float reward or discount.
    """
    num_simulations = check_steps(num_simulations, "num_simulations")
    if max_depth is not None:
        max_depth = check_steps(max_depth, "max_depth")
    options = _check_options(policy, policy_options)
    b = batch_size(root_states)
    root_states = State(pages=root_states.pages, epochs=root_states.epochs)
    names = tuple(root_states.pages)
    static = _check_static(static_pages, names)
    check_model(model, unbatched_example(root_states))
    keys = split_keys(key, b)
    dyn, fixed = _split(root_states, tuple(n for n in names if n not in static), static)
    return _plan_jit(model, policy, num_simulations, max_depth, names, static, options, dyn,
                     fixed, keys)


@dataclasses.dataclass(frozen=True)
class MCTSPolicy:
    """:func:`plan_mcts` as a hashable batched policy ``(State[B, ...], key) -> int32[B]``.

    Equal settings give equal (and equally hashed) policies, so jitted loops such as
    :func:`mmsb_jax.planning.rollout` compile once for them. Build with :func:`mcts_policy`.
    """

    model: TransitionModel
    num_simulations: int
    max_depth: int | None = None
    policy: str = "gumbel_muzero"
    static_pages: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    def plan(self, states: State, key: jax.Array) -> PlanResult:
        """The full :class:`PlanResult` of :func:`plan_mcts` for ``states: State[B, ...]``."""
        return plan_mcts(self.model, states, key, num_simulations=self.num_simulations,
                         max_depth=self.max_depth, policy=self.policy,
                         static_pages=self.static_pages, **dict(self.options))

    def __call__(self, states: State, key: jax.Array) -> jax.Array:
        """``int32[B]``: the planned action for each state."""
        return self.plan(states, key).action


def mcts_policy(model: TransitionModel, *, num_simulations: int, max_depth: int | None = None,
                policy: str = "gumbel_muzero", static_pages: str | Iterable[str] = (),
                **policy_options: Any) -> MCTSPolicy:
    """A closed-loop MCTS policy: replans with :func:`plan_mcts` at every call.

    Args:
      model: the :class:`~mmsb_jax.planning.TransitionModel`.
      num_simulations, max_depth, policy, static_pages, **policy_options: as in
        :func:`plan_mcts`.

    Returns:
      An :class:`MCTSPolicy`: ``(states: State[B, ...], key) -> int32[B]``.

    Raises:
      OptionError: as :func:`plan_mcts` for bad options.
    """
    if not isinstance(model, TransitionModel):
        raise OptionError(f"expected a TransitionModel, got {type(model).__name__}")
    num_simulations = check_steps(num_simulations, "num_simulations")
    if max_depth is not None:
        max_depth = check_steps(max_depth, "max_depth")
    options = _check_options(policy, policy_options)
    static = (static_pages,) if isinstance(static_pages, str) else tuple(static_pages)
    return MCTSPolicy(model, num_simulations, max_depth, policy, static, options)


@functools.partial(jax.jit, static_argnums=1)
def _pv_jit(tree: mctx.Tree, max_length: int) -> tuple[jax.Array, jax.Array]:
    def one(children_index: jax.Array, children_visits: jax.Array):
        def body(carry, _):
            node, alive = carry
            a = jnp.argmax(children_visits[node]).astype(jnp.int32)
            child = children_index[node, a]
            alive = alive & (child != mctx.Tree.UNVISITED) & (children_visits[node, a] > 0)
            return (jnp.where(alive, child, node), alive), jnp.where(alive, a, -1)

        (_, _), actions = lax.scan(body, (jnp.int32(mctx.Tree.ROOT_INDEX), jnp.bool_(True)),
                                   None, length=max_length)
        return actions, jnp.sum(actions >= 0).astype(jnp.int32)

    return jax.vmap(one)(tree.children_index, tree.children_visits)


def principal_variation(tree: mctx.Tree, max_length: int) -> tuple[jax.Array, jax.Array]:
    """The most visited path of each search tree: the plan the search believes in.

    From the root, repeatedly take the most visited child (ties: the lowest action) until a
    node has no visited child or ``max_length`` actions were taken.

    Args:
      tree: an ``mctx.Tree`` with ``[B, N, ...]`` fields (``PlanResult.search_tree``).
      max_length: ``L``, the most actions returned.

    Returns:
      ``(actions: int32[B, L], length: int32[B])``; ``actions`` is padded with ``-1`` after
      ``length`` actions.

    Raises:
      OptionError: ``max_length`` is not a positive int.
      ShapeError: ``tree`` is not a batched mctx tree.
    """
    max_length = check_steps(max_length, "max_length")
    if not isinstance(tree, mctx.Tree) or tree.children_index.ndim != 3:
        raise ShapeError("expected a batched mctx.Tree (PlanResult.search_tree)")
    return _pv_jit(tree, max_length)

