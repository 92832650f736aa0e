"""Built-in utilities of pages: sums, goal distances, constraint penalties, smoothness.

Each factory takes page names and hyper-parameters and returns a :class:`Utility`; the page is
read when the utility is called, so one utility serves every State of the schema. Integer and
bool pages are read as ``float32`` (their values count, but they carry no gradient).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.core.pages import State
from mmsb_jax.errors import DomainError, OptionError, ShapeError
from mmsb_jax.utility._base import Utility

__all__ = [
    "NORMS",
    "constraint_penalty",
    "distance",
    "goal_distance",
    "page_sum",
    "smoothness",
]

NORMS: tuple[str, ...] = ("l2", "sq", "l1", "linf")
"""Norms of :func:`goal_distance`: Euclidean, squared Euclidean, Manhattan, max-abs."""


def _check_page_name(page: Any) -> str:
    if not isinstance(page, str):
        raise OptionError(f"a page name (str) is required, got {type(page).__name__}")
    return page


def as_float(x: jax.Array) -> jax.Array:
    """``x`` if it has an inexact dtype, else ``x`` cast to ``float32``."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def numeric_array(x: Any, what: str) -> jax.Array:
    """``x`` as a JAX array with an integer or floating dtype; raises :class:`DomainError`."""
    if not isinstance(x, jax.Array):
        host = np.asarray(x)
        if host.dtype.kind not in "iuf":
            raise DomainError(f"{what} must be numeric, got {host.dtype}")
        return jnp.asarray(host)
    if not (jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.inexact)):
        raise DomainError(f"{what} must be numeric, got {x.dtype}")
    return x


def _safe_l2(sq: jax.Array) -> jax.Array:
    # sqrt has an infinite derivative at 0; the double `where` makes the gradient 0 there
    # (a valid subgradient of the norm) instead of NaN.
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def distance(x: jax.Array, target: jax.Array, norm: str = "l2") -> jax.Array:
    """The distance ``||x - target||`` over all elements.

    Args:
      x: ``[*S]`` float array.
      target: broadcastable to ``[*S]``.
      norm: one of :data:`NORMS`: ``"l2"`` (Euclidean; its gradient at ``x == target`` is 0),
        ``"sq"`` (squared Euclidean, smooth everywhere), ``"l1"``, ``"linf"``.

    Returns:
      ``f32[]``, ``>= 0``.
    """
    if norm not in NORMS:
        raise OptionError(f"unknown norm {norm!r}; expected one of {NORMS}")
    d = as_float(x) - as_float(target)
    if norm == "sq":
        return jnp.sum(d * d)
    if norm == "l2":
        return _safe_l2(jnp.sum(d * d))
    if norm == "l1":
        return jnp.sum(jnp.abs(d))
    return jnp.max(jnp.abs(d)) if d.size else jnp.zeros((), d.dtype)


def page_sum(page: str) -> Utility:
    """The sum of a page's elements.

    Args:
      page: page name; the page is ``[*S]``.

    Returns:
      A :class:`Utility` with value ``sum(page)``; its gradient is all ones.
    """
    page = _check_page_name(page)
    return Utility(lambda s: jnp.sum(as_float(s.page(page))), f"sum({page})", (page,))


def _target_shape_check(page: str, shape: tuple[int, ...], target_shape: tuple[int, ...]):
    try:
        out = np.broadcast_shapes(target_shape, shape)
    except ValueError:
        out = None
    if out != tuple(shape):
        raise ShapeError(f"goal target of shape {target_shape} does not broadcast to page "
                         f"{page!r} of shape {tuple(shape)}")


def goal_distance(page: str, target: Any, norm: Literal["l2", "sq", "l1", "linf"] = "l2"
                  ) -> Utility:
    """The distance from a page to a target: a cost, ``0`` at the goal.

    Args:
      page: page name; the page is ``[*S]``.
      target: an array broadcastable to ``[*S]`` (a scalar, a row, the whole page), or the name
        of another page of the same shape (the distance between two pages).
      norm: one of :data:`NORMS` (see :func:`distance`).

    Returns:
      A :class:`Utility` with value ``||page - target||_norm >= 0``.

    Raises:
      OptionError: an unknown norm.
      ShapeError: (when called) ``target`` does not broadcast to the page's shape.
    """
    page = _check_page_name(page)
    if norm not in NORMS:
        raise OptionError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if isinstance(target, str):
        other = target

        def fn_page(s: State) -> jax.Array:
            x, t = s.page(page), s.page(other)
            _target_shape_check(page, x.shape, t.shape)
            return distance(x, t, norm)

        return Utility(fn_page, f"{norm}({page} - {other})", (page, other))
    t = numeric_array(target, "goal target")

    def fn(s: State) -> jax.Array:
        x = s.page(page)
        _target_shape_check(page, x.shape, t.shape)
        return distance(x, t, norm)

    return Utility(fn, f"{norm}({page} - target)", (page,))


def constraint_penalty(page: str, lower: Any = None, upper: Any = None) -> Utility:
    """A smooth penalty for leaving the box ``lower <= page <= upper``: a cost.

    Each element outside the box contributes its squared violation (a squared hinge,
    ``relu(x - upper)^2 + relu(lower - x)^2``), so the penalty is 0 inside the box, grows
    quadratically outside and is continuously differentiable everywhere.

    Args:
      page: page name; the page is ``[*S]``.
      lower: lower bound, broadcastable to ``[*S]``, or ``None`` (no lower bound).
      upper: upper bound, broadcastable to ``[*S]``, or ``None`` (no upper bound).

    Returns:
      A :class:`Utility` with value ``sum(relu(x - upper)^2 + relu(lower - x)^2) >= 0``.

    Raises:
      OptionError: neither bound given.
      DomainError: ``lower > upper`` somewhere (checked when both are concrete).
      ShapeError: (when called) a bound does not broadcast to the page's shape.
    """
    page = _check_page_name(page)
    if lower is None and upper is None:
        raise OptionError("constraint_penalty needs a lower or an upper bound")
    lo = None if lower is None else numeric_array(lower, "lower bound")
    hi = None if upper is None else numeric_array(upper, "upper bound")
    if lo is not None and hi is not None and not isinstance(lo, jax.core.Tracer) \
            and not isinstance(hi, jax.core.Tracer):
        try:
            bad = bool(np.any(np.asarray(lo) > np.asarray(hi)))
        except ValueError as e:
            raise ShapeError(f"bounds of shapes {lo.shape} and {hi.shape} do not broadcast"
                             ) from e
        if bad:
            raise DomainError(f"constraint_penalty on {page!r}: lower > upper")

    def fn(s: State) -> jax.Array:
        x = as_float(s.page(page))
        total = jnp.zeros((), x.dtype)
        for bound, sign in ((hi, 1.0), (lo, -1.0)):
            if bound is None:
                continue
            _target_shape_check(page, x.shape, bound.shape)
            v = jax.nn.relu(sign * (x - as_float(bound)))
            total = total + jnp.sum(v * v)
        return total

    return Utility(fn, f"penalty({page})", (page,))


def smoothness(page: str, axis: int = 0) -> Utility:
    """The roughness of a page: the sum of squared differences of neighbours along ``axis``.

    ``sum_i (x[i+1] - x[i])^2`` along ``axis`` (summed over every other axis): 0 for a page
    that is constant along ``axis``, and invariant to adding a constant. A cost.

    Args:
      page: page name; the page is ``[*S]`` with ``len(S) >= 1``.
      axis: the axis along which neighbours are compared (default 0, the row axis).

    Returns:
      A :class:`Utility` with value ``sum(diff(x, axis=axis)^2) >= 0``.

    Raises:
      ShapeError: (when called) the page is a scalar or ``axis`` is out of range.
    """
    page = _check_page_name(page)
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise OptionError(f"axis must be an int, got {axis!r}")

    def fn(s: State) -> jax.Array:
        x = as_float(s.page(page))
        if not -x.ndim <= axis < x.ndim:
            raise ShapeError(f"smoothness: axis {axis} out of range for page {page!r} of "
                             f"shape {tuple(x.shape)}")
        d = jnp.diff(x, axis=axis)
        return jnp.sum(d * d)

    return Utility(fn, f"smoothness({page})", (page,))
