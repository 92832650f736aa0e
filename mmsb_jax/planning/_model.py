"""Transition models over the bus, closed-loop execution, and simple baseline policies.

A :class:`TransitionModel` is the interface every planner of this package consumes: a pair of
pure, unbatched functions ``step`` and ``valid_actions`` over a :class:`~mmsb_jax.State`, plus
optional prior and value functions for search. :func:`delta_model` builds one from the bus's
own vocabulary: an action becomes one or more :class:`~mmsb_jax.Delta` applied with
:func:`mmsb_jax.apply_batch` (and, given a graph, :func:`mmsb_jax.core.propagate.propagate`),
and the reward is a function of the states before and after.

:func:`rollout` runs a batched policy in closed loop through a model with one jitted
``lax.scan``; :func:`random_policy` and :func:`rollout_value` are the usual baselines.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax._checks import check_int
from mmsb_jax.core.delta import Delta, apply_batch
from mmsb_jax.core.graph import Graph
from mmsb_jax.core.pages import State
from mmsb_jax.core.propagate import propagate
from mmsb_jax.errors import DTypeError, OptionError, ShapeError

__all__ = [
    "Policy",
    "RandomPolicy",
    "Trajectory",
    "TransitionModel",
    "batch_size",
    "delta_model",
    "random_policy",
    "rollout",
    "rollout_value",
]

StepFn = Callable[[State, jax.Array], tuple[State, jax.Array, jax.Array]]
ValidFn = Callable[[State], jax.Array]
PriorFn = Callable[[State], jax.Array]
ValueFn = Callable[[State, jax.Array], jax.Array]
Policy = Callable[[State, jax.Array], jax.Array]
"""A batched policy: ``(states: State[B, ...], key) -> actions: int32[B]``."""


class TransitionModel(NamedTuple):
    """A deterministic model of an environment whose state is a :class:`~mmsb_jax.State`.

    All functions are *unbatched* (one state, scalar action) and pure; planners ``vmap`` them.
    The model is a static argument of the jitted planners: build it once and reuse it (a new
    model object, e.g. one holding fresh lambdas, compiles again).

    Attributes:
      step: ``(state: State, action: int32[]) -> (next_state: State, reward: f32[],
        discount: f32[])``. ``next_state`` has the same pages, shapes and dtypes as ``state``.
        ``discount == 0`` marks a transition into a terminal state (mctx's convention). ``step``
        must be defined for *every* action, valid or not: search masks invalid actions at the
        root (``invalid_actions``) and through the prior below it, but MuZero-style selection
        may still try one deep in the tree. :func:`delta_model` makes an invalid action a
        no-op.
      valid_actions: ``(state) -> bool[A]``, True where an action is allowed.
      num_actions: ``A`` (a Python int).
      prior_fn: optional ``(state) -> f32[A]`` prior logits (default: uniform, zeros).
      value_fn: optional ``(state, key) -> f32[]`` estimate of the return from ``state``
        (default: 0). The key lets it sample, as :func:`rollout_value` does.
    """

    step: StepFn
    valid_actions: ValidFn
    num_actions: int
    prior_fn: PriorFn | None = None
    value_fn: ValueFn | None = None


def _as_deltas(out: Any) -> list[Delta]:
    deltas = [out] if isinstance(out, Delta) else list(out)
    for d in deltas:
        if not isinstance(d, Delta):
            raise OptionError(f"action_deltas must return a Delta or a sequence of Deltas, "
                              f"got {type(d).__name__}")
    if not deltas:
        raise OptionError("action_deltas returned no delta")
    return deltas


def _select(pred: jax.Array, new: State, old: State) -> State:
    """``new`` where ``pred`` (a scalar bool) else ``old``; pages the step did not touch (the
    same array in both) are passed through without a select."""
    pick = lambda x, y: x if x is y else jnp.where(pred, x, y)
    return State(pages={n: pick(new.pages[n], old.pages[n]) for n in new.pages},
                 epochs={n: pick(new.epochs[n], old.epochs[n]) for n in new.epochs},
                 shardings=new.shardings)


def delta_model(
    num_actions: int,
    action_deltas: Callable[[State, jax.Array], Delta | Sequence[Delta]],
    reward: Callable[[State, jax.Array, State], jax.Array],
    *,
    valid_actions: ValidFn | None = None,
    terminal: Callable[[State], jax.Array] | None = None,
    discount: float = 0.99,
    graph: Any = None,
    prior_fn: PriorFn | None = None,
    value_fn: ValueFn | None = None,
) -> TransitionModel:
    """A :class:`TransitionModel` whose actions are deltas on the bus.

    ``step(state, action)``:

    1. If ``terminal(state)``, the state is absorbing: it is returned unchanged with reward 0
       and discount 0.
    2. If the action is invalid (``valid_actions(state)[action]`` is False), it is a no-op:
       the state (epochs included) is unchanged.
    3. Otherwise ``action_deltas(state, action)`` is applied with :func:`mmsb_jax.apply_batch`
       and, when ``graph`` is given, the derived pages are recomputed with
       :func:`mmsb_jax.core.propagate.propagate` (dirty = the pages of the deltas).
    4. ``reward(state, action, next_state)`` is the reward; the discount is 0 when
       ``terminal(next_state)`` and ``discount`` otherwise.

    A utility ``u`` (``State -> f32[]``, e.g. a :class:`mmsb_jax.utility.Utility`) becomes a
    reward by differencing: ``reward=lambda s, a, n: u(n) - u(s)``.

    Args:
      num_actions: ``A``, the number of discrete actions.
      action_deltas: ``(state, action: int32[]) -> Delta | Sequence[Delta]``. The action is
        traced, so the deltas must have the same pages, kinds and shapes for every action
        (select the values with ``jnp.where``/indexing, not Python ``if``).
      reward: ``(state, action, next_state) -> f32[]``.
      valid_actions: ``(state) -> bool[A]``; default: every action is valid.
      terminal: ``(state) -> bool[]``; default: no state is terminal.
      discount: per-step discount in ``[0, 1]``.
      graph: optional :class:`mmsb_jax.Graph` whose derived pages follow the deltas.
      prior_fn: optional ``(state) -> f32[A]`` prior logits for search.
      value_fn: optional ``(state, key) -> f32[]`` leaf value for search.

    Returns:
      The :class:`TransitionModel`.

    Raises:
      OptionError: a function argument is not callable, ``num_actions < 1`` or ``discount``
        outside ``[0, 1]``.

    >>> import jax.numpy as jnp, mmsb_jax as mm
    >>> from mmsb_jax import planning as mp
    >>> # A counter page; action 0 adds 1, action 1 adds 2; reaching 3 ends the episode.
    >>> model = mp.delta_model(
    ...     2, lambda s, a: mm.Delta.full("n", jnp.where(a == 0, 1, 2).astype(jnp.int32), "add"),
    ...     reward=lambda s, a, n: (n.pages["n"] == 3).astype(jnp.float32),
    ...     terminal=lambda s: s.pages["n"] >= 3, discount=0.5)
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("n", (), "int32")]))
    >>> s1, r, d = model.step(s, jnp.int32(1))
    >>> int(s1.pages["n"]), float(r), float(d), int(s1.epochs["n"])
    (2, 0.0, 0.5, 1)
    >>> s2, r, d = model.step(s1, jnp.int32(0))
    >>> int(s2.pages["n"]), float(r), float(d)
    (3, 1.0, 0.0)
    """
    check_int("num_actions", num_actions, minimum=1)
    for name, fn in (("action_deltas", action_deltas), ("reward", reward)):
        if not callable(fn):
            raise OptionError(f"{name} must be callable, got {type(fn).__name__}")
    for name, fn in (("valid_actions", valid_actions), ("terminal", terminal),
                     ("prior_fn", prior_fn), ("value_fn", value_fn)):
        if fn is not None and not callable(fn):
            raise OptionError(f"{name} must be callable or None, got {type(fn).__name__}")
    if not isinstance(discount, int | float) or not 0.0 <= float(discount) <= 1.0:
        raise OptionError(f"discount must be a number in [0, 1], got {discount!r}")
    num_actions = int(num_actions)
    gamma = float(discount)
    if graph is not None:
        if not isinstance(graph, Graph):
            raise OptionError(f"graph must be a mmsb_jax Graph, got {type(graph).__name__}")

    def valid(state: State) -> jax.Array:
        if valid_actions is None:
            return jnp.ones((num_actions,), bool)
        return jnp.asarray(valid_actions(state), bool)

    def is_terminal(state: State) -> jax.Array:
        if terminal is None:
            return jnp.zeros((), bool)
        return jnp.asarray(terminal(state), bool)

    def step(state: State, action: jax.Array) -> tuple[State, jax.Array, jax.Array]:
        action = jnp.asarray(action, jnp.int32)
        done = is_terminal(state)
        allowed = valid(state)[action]
        deltas = _as_deltas(action_deltas(state, action))
        moved = apply_batch(state, deltas)
        if graph is not None:
            moved = propagate(graph, moved, tuple(dict.fromkeys(d.page for d in deltas)))
        nxt = _select(allowed & ~done, moved, state)
        r = jnp.asarray(reward(state, action, nxt), jnp.float32)
        r = jnp.where(done, 0.0, r)
        d = jnp.where(done | is_terminal(nxt), 0.0, gamma).astype(jnp.float32)
        return nxt, r, d

    return TransitionModel(step=step, valid_actions=valid, num_actions=num_actions,
                           prior_fn=prior_fn, value_fn=value_fn)


# -- checks ---------------------------------------------------------------------------------

def batch_size(states: State) -> int:
    """The leading (batch) axis ``B`` shared by every leaf of a batched State.

    Raises:
      ShapeError: ``states`` is not a State, has no leaves, its leaves disagree on ``B``, or
        ``B == 0``.
    """
    if not isinstance(states, State):
        raise ShapeError(f"expected a batched State, got {type(states).__name__}")
    leaves = jax.tree.leaves(states)
    if not leaves:
        raise ShapeError("the State has no pages")
    sizes = {int(x.shape[0]) if getattr(x, "ndim", 0) >= 1 else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ShapeError("a batch of States needs one leading axis B on every page and epoch "
                         f"(got leading sizes {sorted(map(str, sizes))}); stack single states "
                         "with jax.tree.map(lambda *x: jnp.stack(x), *states)")
    b = sizes.pop()
    if b == 0:
        raise ShapeError("the batch of States is empty (B = 0)")
    return b


def _struct(tree: Any) -> tuple[Any, tuple[tuple[tuple[int, ...], str], ...]]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(x.shape), np.dtype(x.dtype).name) for x in leaves)


@functools.lru_cache(maxsize=256)
def _check_model_cached(model: TransitionModel, treedef: Any,
                        leaves: tuple[tuple[tuple[int, ...], str], ...]) -> None:
    example = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    a = model.num_actions
    action = jax.ShapeDtypeStruct((), jnp.int32)
    nxt, reward, discount = jax.eval_shape(model.step, example, action)
    if _struct(nxt) != (treedef, leaves):
        raise ShapeError("model.step must return a State with the same pages, shapes and "
                         f"dtypes as its input; got {nxt!r} for {example!r}")
    for name, x in (("reward", reward), ("discount", discount)):
        if tuple(x.shape) != ():
            raise ShapeError(f"model.step must return a scalar {name}, got shape "
                             f"{tuple(x.shape)} (the model is unbatched; planners vmap it)")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise DTypeError(f"model.step returned a {x.dtype} {name}; expected a float")
    valid = jax.eval_shape(model.valid_actions, example)
    if tuple(valid.shape) != (a,) or valid.dtype != jnp.bool_:
        raise ShapeError(f"model.valid_actions must return bool[{a}], got "
                         f"{valid.dtype}{list(valid.shape)}")
    if model.prior_fn is not None:
        logits = jax.eval_shape(model.prior_fn, example)
        if tuple(logits.shape) != (a,) or not jnp.issubdtype(logits.dtype, jnp.floating):
            raise ShapeError(f"model.prior_fn must return f32[{a}] logits, got "
                             f"{logits.dtype}{list(logits.shape)}")
    if model.value_fn is not None:
        value = jax.eval_shape(model.value_fn, example, jax.ShapeDtypeStruct((2,), jnp.uint32))
        if tuple(value.shape) != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise ShapeError(f"model.value_fn must return a float scalar, got "
                             f"{value.dtype}{list(value.shape)}")


def check_model(model: Any, example: State) -> None:
    """Check (by tracing, without running) that ``model`` fits an unbatched ``example`` State.

    Raises:
      OptionError: ``model`` is not a :class:`TransitionModel` or ``num_actions < 1``.
      ShapeError, DTypeError: a model function returns the wrong structure, shape or dtype.
    """
    if not isinstance(model, TransitionModel):
        raise OptionError(f"expected a TransitionModel, got {type(model).__name__}")
    check_int("model.num_actions", model.num_actions, minimum=1)
    treedef, leaves = _struct(example)
    _check_model_cached(model, treedef, leaves)


def unbatched_example(states: State) -> State:
    """A ``ShapeDtypeStruct`` State describing one element of a batch."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype), states)


def check_steps(num_steps: Any, what: str = "num_steps") -> int:
    """``num_steps`` as a positive int, or :class:`OptionError`."""
    return check_int(what, num_steps, minimum=1)


def split_keys(key: jax.Array, n: int) -> jax.Array:
    """``n`` typed keys from one key, or ``key`` itself if it already is a batch of ``n`` keys.

    Accepts typed keys (``jax.random.key``: shape ``[]`` or ``[n]``) and raw ``uint32`` keys
    (``jax.random.PRNGKey``: shape ``[2]`` or ``[n, 2]``, wrapped as typed keys of the default
    implementation).

    Raises:
      ShapeError: ``key`` is neither one key nor ``n`` keys.
    """
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim < 1 or key.shape[-1] != 2:
            raise ShapeError(f"expected a PRNG key (jax.random.key or PRNGKey), got an array of "
                             f"shape {tuple(key.shape)} and dtype {key.dtype}")
        key = jax.random.wrap_key_data(key)  # one compiled program for raw and typed keys
    if tuple(key.shape) == ():
        return jax.random.split(key, n)
    if tuple(key.shape) == (n,):
        return key
    raise ShapeError(f"expected one PRNG key or {n} keys, got {tuple(key.shape)} keys")


# -- closed-loop execution ------------------------------------------------------------------

class Trajectory(NamedTuple):
    """A batch of closed-loop episodes, batch-major.

    Attributes:
      states: ``State`` whose leaves are ``[B, T + 1, ...]``: the start state and the state
        after each step.
      actions: ``int32[B, T]``.
      rewards: ``f32[B, T]``; 0 after the episode ended.
      discounts: ``f32[B, T]`` as returned by ``model.step`` (0 on the step that ends it).
      done: ``bool[B, T]``: the episode had ended at or before step ``t`` (a transition with
        discount 0 happened).
    """

    states: State
    actions: jax.Array
    rewards: jax.Array
    discounts: jax.Array
    done: jax.Array

    @property
    def total_reward(self) -> jax.Array:
        """``f32[B]``: the undiscounted return of each episode."""
        return jnp.sum(self.rewards, axis=1)

    @property
    def steps_to_done(self) -> jax.Array:
        """``int32[B]``: steps until the episode ended, ``T + 1`` where it did not."""
        t = self.done.shape[1]
        first = jnp.argmax(self.done, axis=1).astype(jnp.int32) + 1
        return jnp.where(jnp.any(self.done, axis=1), first, t + 1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _rollout_jit(model: TransitionModel, policy: Policy, num_steps: int, states: State,
                 keys: jax.Array) -> Trajectory:
    step = jax.vmap(model.step)

    def body(carry, key):
        s, done = carry
        a = jnp.asarray(policy(s, key), jnp.int32)
        nxt, r, d = step(s, a)
        r = jnp.where(done, 0.0, r)
        now_done = done | (d == 0)
        return (nxt, now_done), (nxt, a, r, d, now_done)

    b = jax.tree.leaves(states)[0].shape[0]
    init = (states, jnp.zeros((b,), bool))
    _, (seq, actions, rewards, discounts, done) = lax.scan(body, init, keys)
    seq = jax.tree.map(lambda s0, xs: jnp.concatenate([s0[:, None], jnp.swapaxes(xs, 0, 1)],
                                                      axis=1), states, seq)
    t = lambda x: jnp.swapaxes(x, 0, 1)
    return Trajectory(seq, t(actions), t(rewards), t(discounts), t(done))


def rollout(model: TransitionModel, states: State, policy: Policy, key: jax.Array, *,
            num_steps: int) -> Trajectory:
    """Run ``policy`` in closed loop through ``model`` from a batch of start states.

    One jitted ``lax.scan`` over time (compiled once per model, policy, ``num_steps`` and state
    shapes: pass the same, hashable ``policy`` object to reuse it — :class:`RandomPolicy`,
    :func:`mmsb_jax.planning.mcts_policy` and module-level functions are).

    Args:
      model: the transition model.
      states: ``State[B, ...]``, a batch of start states.
      policy: ``(states: State[B, ...], key) -> int32[B]``.
      key: a PRNG key; step ``t`` passes key ``t`` of ``jax.random.split(key, num_steps)``
        to the policy.
      num_steps: ``T``, the number of steps (episodes that end earlier stay in their terminal
        state, which :func:`delta_model` makes absorbing).

    Returns:
      The :class:`Trajectory`, batch-major.

    Raises:
      OptionError: ``num_steps`` is not a positive int or ``policy`` is not callable.
      ShapeError: ``states`` is not a batch of States.
    """
    num_steps = check_steps(num_steps)
    if not callable(policy):
        raise OptionError(f"policy must be callable, got {type(policy).__name__}")
    batch_size(states)
    check_model(model, unbatched_example(states))
    keys = jax.random.split(key, num_steps)
    return _rollout_jit(model, policy, num_steps, states, keys)


# -- baselines ------------------------------------------------------------------------------

def _sample_valid(valid: jax.Array, key: jax.Array) -> jax.Array:
    """A uniformly random True index of ``valid: bool[A]`` (0 when none is True)."""
    logits = jnp.where(valid, 0.0, -jnp.inf)
    logits = jnp.where(jnp.any(valid), logits, 0.0)
    return jnp.where(jnp.any(valid), jax.random.categorical(key, logits), 0).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class RandomPolicy:
    """A uniformly random valid action for each state of a batch (a hashable :data:`Policy`).

    Attributes:
      model: the model whose ``valid_actions`` restricts the choice.
    """

    model: TransitionModel

    def __call__(self, states: State, key: jax.Array) -> jax.Array:
        """``(State[B, ...], key) -> int32[B]``."""
        b = jax.tree.leaves(states)[0].shape[0]
        valid = jax.vmap(self.model.valid_actions)(states)
        return jax.vmap(_sample_valid)(valid, jax.random.split(key, b))


def random_policy(model: TransitionModel) -> RandomPolicy:
    """The uniformly random valid-action baseline policy of ``model``.

    Args:
      model: a :class:`TransitionModel`.

    Returns:
      A :class:`RandomPolicy`: ``(states: State[B, ...], key) -> int32[B]``.
    """
    if not isinstance(model, TransitionModel):
        raise OptionError(f"expected a TransitionModel, got {type(model).__name__}")
    return RandomPolicy(model)


def rollout_value(model: TransitionModel, depth: int) -> ValueFn:
    """A leaf value function for search when no heuristic is known: one random rollout.

    The value of ``state`` is the discounted return of ``depth`` uniformly random valid actions
    from it (``sum_t (prod_{i<t} discount_i) * reward_t``). Use it as
    ``model._replace(value_fn=rollout_value(model, depth))`` when no heuristic is known.

    Args:
      model: the model to roll out (its own ``value_fn`` is not used).
      depth: number of random steps (a positive int).

    Returns:
      ``(state, key) -> f32[]``.
    """
    depth = check_steps(depth, "depth")
    if not isinstance(model, TransitionModel):
        raise OptionError(f"expected a TransitionModel, got {type(model).__name__}")

    def value(state: State, key: jax.Array) -> jax.Array:
        def body(carry, k):
            s, scale, total = carry
            a = _sample_valid(model.valid_actions(s), k)
            nxt, r, d = model.step(s, a)
            return (nxt, scale * d, total + scale * r), None

        init = (state, jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32))
        (_, _, total), _ = lax.scan(body, init, jax.random.split(key, depth))
        return total

    return value
