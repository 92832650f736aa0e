"""Gradient-based trajectory optimisation through differentiable bus transitions.

:func:`plan_gradient` treats an open-loop sequence of continuous actions as parameters and
minimises the cost of the trajectory they produce with an optax optimiser. The trajectory is a
``lax.scan`` of ``step_fn`` (deltas applied with ``mm.apply``, which ``jax.grad``
differentiates with respect to the delta values), and the whole optimisation is one jitted
``lax.scan`` over iterations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mmsb_jax.core.pages import State
from mmsb_jax.errors import DomainError, DTypeError, OptionError, ShapeError
from mmsb_jax.planning._model import _struct, check_steps

__all__ = ["DEFAULT_OPTIMIZER", "GradientPlan", "plan_gradient", "trajectory_cost"]

DEFAULT_OPTIMIZER: optax.GradientTransformation = optax.adam(learning_rate=0.1)
""":func:`plan_gradient`'s optimiser when none is given: ``optax.adam(0.1)``."""

StepFn = Callable[[State, jax.Array], State]
TerminalCost = Callable[[State], jax.Array]
RunningCost = Callable[[State, jax.Array], jax.Array]


class GradientPlan(NamedTuple):
    """The result of :func:`plan_gradient` for horizon ``T`` and actions of shape ``[*U]``.

    Attributes:
      actions: ``f32[T, *U]``, the lowest-cost action sequence seen during the optimisation.
      cost: ``f32[]``, its cost.
      initial_cost: ``f32[]``, the cost of the initial actions.
      cost_history: ``f32[iters]``, the cost at each iteration (before its update).
      states: ``State`` with leaves ``[T + 1, ...]``: the start state and the state after each
        of ``actions``.
    """

    actions: jax.Array
    cost: jax.Array
    initial_cost: jax.Array
    cost_history: jax.Array
    states: State


def _rollout_cost(step_fn: StepFn, terminal_cost: TerminalCost,
                  running_cost: RunningCost | None, state: State, actions: jax.Array
                  ) -> tuple[jax.Array, State]:
    def body(s: State, a: jax.Array):
        c = jnp.zeros((), jnp.float32) if running_cost is None else running_cost(s, a)
        nxt = step_fn(s, a)
        return nxt, (jnp.asarray(c, jnp.float32), nxt)

    final, (costs, states) = lax.scan(body, state, actions)
    total = jnp.sum(costs) + jnp.asarray(terminal_cost(final), jnp.float32)
    states = jax.tree.map(lambda s0, xs: jnp.concatenate([s0[None], xs]), state, states)
    return total, states


def trajectory_cost(step_fn: StepFn, state: State, actions: jax.Array, *,
                    terminal_cost: TerminalCost, running_cost: RunningCost | None = None
                    ) -> jax.Array:
    """The cost :func:`plan_gradient` minimises, for one action sequence.

    ``sum_t running_cost(s_t, a_t) + terminal_cost(s_T)`` with ``s_{t+1} = step_fn(s_t, a_t)``.

    Args:
      step_fn: ``(state, action: f32[*U]) -> next_state``, differentiable.
      state: the start ``State``.
      actions: ``f32[T, *U]``.
      terminal_cost: ``(state) -> f32[]``.
      running_cost: optional ``(state, action) -> f32[]``.

    Returns:
      ``f32[]``.
    """
    return _rollout_cost(step_fn, terminal_cost, running_cost, state, actions)[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _optimise(step_fn: StepFn, terminal_cost: TerminalCost, running_cost: RunningCost | None,
              optimizer: optax.GradientTransformation, iters: int, bounded: bool,
              state: State, actions: jax.Array, low: jax.Array, high: jax.Array
              ) -> GradientPlan:
    def cost_of(a: jax.Array) -> jax.Array:
        return _rollout_cost(step_fn, terminal_cost, running_cost, state, a)[0]

    value_and_grad = jax.value_and_grad(cost_of)

    def body(carry, _):
        a, opt_state, best_a, best_c = carry
        c, g = value_and_grad(a)
        better = c < best_c  # NaN costs are never better
        best_a = jnp.where(better, a, best_a)
        best_c = jnp.where(better, c, best_c)
        updates, opt_state = optimizer.update(g, opt_state, a)
        a = optax.apply_updates(a, updates)
        if bounded:
            a = jnp.clip(a, low, high)
        return (a, opt_state, best_a, best_c), c

    initial_cost = cost_of(actions)
    init = (actions, optimizer.init(actions), actions, initial_cost)
    (last, _, best_a, best_c), history = lax.scan(body, init, None, length=iters)
    last_c = cost_of(last)
    better = last_c < best_c
    best_a = jnp.where(better, last, best_a)
    best_c = jnp.where(better, last_c, best_c)
    _, states = _rollout_cost(step_fn, terminal_cost, running_cost, state, best_a)
    return GradientPlan(best_a, best_c, initial_cost, history, states)


def _check_bounds(bounds: Any, action_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    try:
        low, high = bounds
    except (TypeError, ValueError):
        raise OptionError("action_bounds must be a pair (low, high)") from None
    low = jnp.broadcast_to(jnp.asarray(low, jnp.float32), action_shape)
    high = jnp.broadcast_to(jnp.asarray(high, jnp.float32), action_shape)
    if not isinstance(low, jax.core.Tracer) and not isinstance(high, jax.core.Tracer) \
            and bool(jnp.any(low > high)):
        raise DomainError("action_bounds: low must be <= high everywhere")
    return low, high


def plan_gradient(
    step_fn: StepFn,
    state: State,
    *,
    horizon: int,
    terminal_cost: TerminalCost,
    running_cost: RunningCost | None = None,
    action_shape: tuple[int, ...] = (),
    optimizer: optax.GradientTransformation | None = None,
    iters: int = 100,
    init_actions: jax.Array | None = None,
    action_bounds: tuple[Any, Any] | None = None,
) -> GradientPlan:
    """Optimise an open-loop action sequence by gradient descent through the transitions.

    Minimises :func:`trajectory_cost` over ``actions: f32[T, *U]`` with ``optimizer`` for
    ``iters`` steps (projected onto ``action_bounds`` after each step when given) and returns
    the best sequence seen. ``jax.grad`` flows through ``step_fn`` — typically deltas with
    float values applied by ``mm.apply``/``mm.apply_batch`` and, optionally, derived pages
    recomputed by ``mm.propagate`` — so the model must be differentiable in the action.

    One jitted ``lax.scan`` over iterations; it compiles once per ``step_fn``, cost functions,
    optimizer object, ``iters`` and shapes: create the optimizer once (``optax.adam(...)``
    builds a new object on every call). ``jax.vmap`` it over start states to plan a batch.

    Args:
      step_fn: ``(state, action: f32[*U]) -> next_state`` with the same pages, shapes, dtypes.
      state: the start ``State`` (unbatched).
      horizon: ``T``, the number of actions.
      terminal_cost: ``(state) -> f32[]``, cost of the final state (e.g. squared distance to
        a goal page).
      running_cost: optional ``(state, action) -> f32[]`` paid before each step (effort,
        obstacle penalties).
      action_shape: ``U``, the shape of one action (``(2,)`` for a planar force).
      optimizer: an optax ``GradientTransformation`` (default :data:`DEFAULT_OPTIMIZER`).
      iters: optimisation steps.
      init_actions: ``f32[T, *U]`` starting sequence (default zeros).
      action_bounds: optional ``(low, high)``, scalars or arrays broadcastable to ``U``.

    Returns:
      A :class:`GradientPlan`.

    Raises:
      OptionError: a non-callable function, a non-positive ``horizon``/``iters``, an optimizer
        that is not an optax transformation, or malformed bounds.
      ShapeError: ``init_actions`` is not ``[T, *U]``; ``step_fn`` changes the State's
        structure; a cost is not a scalar.
      DTypeError: ``init_actions`` is not floating point.
      DomainError: ``low > high`` somewhere in ``action_bounds``.
    """
    for name, fn in (("step_fn", step_fn), ("terminal_cost", terminal_cost)):
        if not callable(fn):
            raise OptionError(f"{name} must be callable, got {type(fn).__name__}")
    if running_cost is not None and not callable(running_cost):
        raise OptionError(f"running_cost must be callable or None, got "
                          f"{type(running_cost).__name__}")
    if not isinstance(state, State):
        raise OptionError(f"state must be a State, got {type(state).__name__}")
    horizon = check_steps(horizon, "horizon")
    iters = check_steps(iters, "iters")
    try:
        action_shape = tuple(int(n) for n in action_shape)
    except TypeError:
        raise OptionError(f"action_shape must be a tuple of ints, got {action_shape!r}") from None
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise OptionError("optimizer must be an optax GradientTransformation, got "
                          f"{type(optimizer).__name__}")
    want = (horizon, *action_shape)
    if init_actions is None:
        actions = jnp.zeros(want, jnp.float32)
    else:
        actions = jnp.asarray(init_actions)
        if tuple(actions.shape) != want:
            raise ShapeError(f"init_actions must have shape [T, *U] = {want}, got "
                             f"{tuple(actions.shape)}")
        if not jnp.issubdtype(actions.dtype, jnp.floating):
            raise DTypeError(f"init_actions must be floating point, got {actions.dtype}")
        actions = actions.astype(jnp.float32)
    if action_bounds is None:
        low = high = jnp.zeros(action_shape, jnp.float32)
    else:
        low, high = _check_bounds(action_bounds, action_shape)
        actions = jnp.clip(actions, low, high)
    _check_fns(step_fn, terminal_cost, running_cost, state, action_shape)
    return _optimise(step_fn, terminal_cost, running_cost, optimizer, iters,
                     action_bounds is not None, state, actions, low, high)


def _check_fns(step_fn: StepFn, terminal_cost: TerminalCost, running_cost: RunningCost | None,
               state: State, action_shape: tuple[int, ...]) -> None:
    """Trace the functions on abstract values (once per signature); typed errors first."""
    treedef, leaves = _struct(state)
    _check_fns_cached(step_fn, terminal_cost, running_cost, treedef, leaves, action_shape)


@functools.lru_cache(maxsize=256)
def _check_fns_cached(step_fn: StepFn, terminal_cost: TerminalCost,
                      running_cost: RunningCost | None, treedef: Any,
                      leaves: tuple[tuple[tuple[int, ...], str], ...],
                      action_shape: tuple[int, ...]) -> None:
    example = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    action = jax.ShapeDtypeStruct(action_shape, jnp.float32)
    nxt = jax.eval_shape(step_fn, example, action)
    if not isinstance(nxt, State) or _struct(nxt) != _struct(example):
        raise ShapeError("step_fn must return a State with the same pages, shapes and dtypes "
                         "as its input")
    costs = [("terminal_cost", jax.eval_shape(terminal_cost, example))]
    if running_cost is not None:
        costs.append(("running_cost", jax.eval_shape(running_cost, example, action)))
    for name, c in costs:
        if tuple(c.shape) != ():
            raise ShapeError(f"{name} must return a scalar, got shape {tuple(c.shape)}")
        if not jnp.issubdtype(c.dtype, jnp.floating):
            raise DTypeError(f"{name} must return a float, got {c.dtype}")

