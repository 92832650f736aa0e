"""Gradients of utilities with respect to pages and to delta values.

``mm.apply`` and ``mm.propagate`` are differentiable, so the gradient of a utility of the
state *after* a delta (and after propagation through derived pages) with respect to the
delta's values is an ordinary ``jax.grad``. These helpers package the two common cases and
check their inputs first; they are traceable, so they also run inside ``jit``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mmsb_jax.core.delta import Delta, apply, validate
from mmsb_jax.core.pages import State
from mmsb_jax.core.propagate import propagate
from mmsb_jax.errors import DTypeError, OptionError, UnknownPageError
from mmsb_jax.utility._base import Utility, as_utility

__all__ = ["grad", "grad_wrt_delta", "value_and_grad", "value_and_grad_wrt_delta"]


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _resolve_wrt(state: State, wrt: str | Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """(page names, single) for a ``wrt`` argument."""
    if isinstance(wrt, str) and wrt == "pages":
        return tuple(n for n in state.pages if _is_float(state.pages[n])), False
    single = isinstance(wrt, str)
    names = (wrt,) if single else tuple(wrt)
    for n in names:
        if not isinstance(n, str):
            raise OptionError(f"wrt must be 'pages', a page name or page names, got {n!r}")
        if n not in state.pages:
            raise UnknownPageError(n, tuple(state.pages))
        if not _is_float(state.pages[n]):
            raise DTypeError(f"cannot differentiate with respect to page {n!r} of dtype "
                             f"{state.pages[n].dtype}; only floating pages have gradients")
    return names, single


def value_and_grad(u: Utility | Callable[[State], jax.Array], state: State,
                   wrt: str | Sequence[str] = "pages") -> tuple[jax.Array, Any]:
    """The value of ``u`` at ``state`` and its gradient with respect to pages.

    Args:
      u: a Utility (or a function ``State -> []``).
      state: the point of evaluation.
      wrt: ``"pages"`` (every floating page), one page name, or a sequence of page names.

    Returns:
      ``(value: f32[], grads)`` where ``grads`` is ``{name: [*S_name]}`` for ``"pages"`` or a
      sequence, and one array ``[*S]`` for a single page name.

    Raises:
      UnknownPageError: a ``wrt`` page is not in ``state``.
      DTypeError: a named page is not floating (integer/bool pages have no gradient).
    """
    u = as_utility(u)
    names, single = _resolve_wrt(state, wrt)
    if not names:
        return u(state), {}

    def f(sub: dict[str, jax.Array]) -> jax.Array:
        return u(state.with_pages(sub))

    value, g = jax.value_and_grad(f)({n: state.pages[n] for n in names})
    return value, (g[names[0]] if single else g)


def grad(u: Utility | Callable[[State], jax.Array], state: State,
         wrt: str | Sequence[str] = "pages") -> Any:
    """The gradient of ``u`` at ``state`` with respect to pages.

    Args:
      u: a Utility (or a function ``State -> []``).
      state: the point of evaluation.
      wrt: ``"pages"`` (every floating page), one page name, or a sequence of page names.

    Returns:
      ``{name: [*S_name]}`` for ``"pages"`` or a sequence of names; ``[*S]`` for one name.

    >>> import mmsb_jax as mm, jax.numpy as jnp
    >>> from mmsb_jax import utility as mu
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("x", (2,))])).with_pages(
    ...     {"x": jnp.array([3.0, 4.0])})
    >>> mu.grad(mu.goal_distance("x", 0.0, norm="sq"), s, wrt="x").tolist()
    [6.0, 8.0]
    """
    return value_and_grad(u, state, wrt)[1]


def _check_deltas(state: State, delta: Delta | Sequence[Delta]) -> tuple[list[Delta], bool]:
    single = isinstance(delta, Delta)
    deltas = [delta] if single else list(delta)
    if not deltas:
        raise OptionError("grad_wrt_delta needs at least one delta")
    for d in deltas:
        if not isinstance(d, Delta):
            raise OptionError(f"expected a Delta, got {type(d).__name__}")
        validate(d, state.page(d.page))
        if not _is_float(d.values):
            raise DTypeError(f"cannot differentiate with respect to the {d.values.dtype} values "
                             f"of a delta on {d.page!r}; only floating values have gradients")
    return deltas, single


def value_and_grad_wrt_delta(u: Utility | Callable[[State], jax.Array], state: State,
                             delta: Delta | Sequence[Delta], *, graph: Any = None
                             ) -> tuple[jax.Array, Any]:
    """``u(apply(state, delta))`` and its gradient with respect to ``delta.values``.

    The deltas are applied in order with :func:`mmsb_jax.apply` (duplicates, padding and ops
    as usual: a row overwritten by a later slot of a ``set`` delta gets a zero gradient), then,
    if ``graph`` is given, the derived pages are recomputed with :func:`mmsb_jax.propagate`,
    and ``u`` is evaluated on the result.

    Args:
      u: a Utility (or a function ``State -> []``).
      state: the state the deltas apply to.
      delta: one Delta or a sequence of Deltas with floating values.
      graph: optional ``mm.Graph``; when given, propagation runs with the deltas' pages dirty,
        so ``u`` may read derived pages.

    Returns:
      ``(value: f32[], grads)``: ``grads`` is ``values``-shaped (``[k, *row]`` for a rows delta,
      ``[*S]`` otherwise) for one delta, a list of such arrays for a sequence.

    Raises:
      UnknownPageError, DTypeError, ShapeError, IndexOutOfRangeError, OpError: a delta that
        does not fit ``state`` (as :func:`mmsb_jax.apply`), or integer/bool values.
    """
    u = as_utility(u)
    deltas, single = _check_deltas(state, delta)
    dirty = tuple(dict.fromkeys(d.page for d in deltas))

    def f(values: list[jax.Array]) -> jax.Array:
        ds = [dataclasses.replace(d, values=v) for d, v in zip(deltas, values, strict=True)]
        s = functools.reduce(apply, ds, state)
        if graph is not None:
            s = propagate(graph, s, dirty)
        return u(s)

    value, g = jax.value_and_grad(f)([d.values for d in deltas])
    return value, (g[0] if single else g)


def grad_wrt_delta(u: Utility | Callable[[State], jax.Array], state: State,
                   delta: Delta | Sequence[Delta], *, graph: Any = None) -> Any:
    """The gradient of ``u(apply(state, delta))`` with respect to ``delta.values``.

    See :func:`value_and_grad_wrt_delta` for the arguments.

    Returns:
      ``values``-shaped gradient for one delta; a list of them for a sequence of deltas.

    >>> import mmsb_jax as mm, jax.numpy as jnp
    >>> from mmsb_jax import utility as mu
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("x", (3,))]))
    >>> d = mm.Delta.rows("x", jnp.array([0, 2]), jnp.array([1.0, 2.0]), op="add")
    >>> mu.grad_wrt_delta(mu.goal_distance("x", 0.0, norm="sq"), s, d).tolist()
    [2.0, 4.0]
    """
    return value_and_grad_wrt_delta(u, state, delta, graph=graph)[1]
