"""The :class:`Utility` interface and its combinators.

A utility is a pure function ``State -> f32[]``: a differentiable scalar score of a store's
pages. Like an optax ``GradientTransformation`` it is a small immutable object wrapping a pure
function; utilities compose by arithmetic (``u1 + u2``, ``2.0 * u``, ``-u``) and by
:func:`weighted_sum`, never by subclassing. The result is again a pure function of the State, so
it runs under ``jit``, ``vmap`` (over a batched State) and ``grad``.

Sign convention: a *utility* is to be maximised, a *cost* minimised. The built-in measures
(:func:`~mmsb_jax.utility.goal_distance`, :func:`~mmsb_jax.utility.constraint_penalty`,
:func:`~mmsb_jax.utility.smoothness`) are costs (``>= 0``, ``0`` is best); negate them or give
them negative weights to build a utility, as the seed did (``U = -sum_i w_i * c_i``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.core.pages import State
from mmsb_jax.errors import DomainError, OptionError, ShapeError

__all__ = ["Utility", "as_utility", "constant", "scale", "weighted_sum"]


def _check_weight(w: Any, what: str = "weight") -> Any:
    """A real scalar weight: a Python/numpy number (checked finite) or a 0-d (traced) array."""
    if isinstance(w, bool):
        raise DomainError(f"{what} must be a real number, got a bool")
    if isinstance(w, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(w)):
            raise DomainError(f"{what} must be finite, got {w!r}")
        return float(w)
    if isinstance(w, (jax.Array, np.ndarray)):
        if w.ndim != 0:
            raise ShapeError(f"{what} must be a scalar, got shape {tuple(w.shape)}")
        if not jnp.issubdtype(w.dtype, jnp.number):
            raise DomainError(f"{what} must be numeric, got {w.dtype}")
        return w
    raise DomainError(f"{what} must be a real number or a 0-d array, got {type(w).__name__}")


def _union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for g in groups for n in g))


@dataclasses.dataclass(frozen=True)
class Utility:
    """A differentiable scalar function of a :class:`~mmsb_jax.State`.

    Build one from any pure function of the State, or from the built-ins
    (:func:`~mmsb_jax.utility.page_sum`, :func:`~mmsb_jax.utility.goal_distance`, ...), and
    combine them with ``+``, ``-``, ``*`` / ``/`` by a scalar, :func:`scale` and
    :func:`weighted_sum`. Calling it checks that the pages it reads exist (raising
    :class:`~mmsb_jax.errors.UnknownPageError` before anything is computed) and that ``fn``
    returned a scalar.

    Attributes:
      fn: ``State -> []`` (a scalar array). Integer or bool results are cast to ``float32``.
      name: a readable name, used in reprs and error messages.
      pages: the page names ``fn`` reads (checked on every call; ``()`` skips the check).

    >>> import mmsb_jax as mm, jax.numpy as jnp
    >>> from mmsb_jax import utility as mu
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("x", (3,))]))
    >>> s = s.with_pages({"x": jnp.array([1.0, 2.0, 3.0])})
    >>> u = 2.0 * mu.page_sum("x") - mu.smoothness("x")
    >>> float(u(s))
    10.0
    """

    fn: Callable[[State], jax.Array]
    name: str = "utility"
    pages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise OptionError(f"Utility.fn must be callable, got {type(self.fn).__name__}")
        pages = (self.pages,) if isinstance(self.pages, str) else tuple(self.pages)
        for p in pages:
            if not isinstance(p, str):
                raise OptionError(f"Utility.pages must be page names, got {p!r}")
        object.__setattr__(self, "pages", pages)

    def __call__(self, state: State) -> jax.Array:
        """Evaluate on ``state``.

        Args:
          state: a State holding at least :attr:`pages`.

        Returns:
          ``f32[]`` (or the float dtype ``fn`` returned).
        """
        for p in self.pages:
            state.page(p)  # UnknownPageError before anything runs
        out = jnp.asarray(self.fn(state))
        if out.shape != ():
            raise ShapeError(f"utility {self.name!r} returned shape {tuple(out.shape)}; "
                             "a utility must return a scalar (reduce it with jnp.sum/mean)")
        if not jnp.issubdtype(out.dtype, jnp.inexact):
            out = out.astype(jnp.float32)
        return out

    # -- arithmetic -------------------------------------------------------------------------
    def __add__(self, other: Any) -> Utility:
        if isinstance(other, Utility):
            a, b = self, other
            return Utility(lambda s: a(s) + b(s), f"({a.name} + {b.name})",
                           _union(a.pages, b.pages))
        try:
            c = _check_weight(other, "added constant")
        except DomainError:
            return NotImplemented
        return self + constant(c)

    def __radd__(self, other: Any) -> Utility:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self  # so that sum([u1, u2, ...]) works
        return constant(_check_weight(other, "added constant")) + self

    def __neg__(self) -> Utility:
        return scale(self, -1.0)

    def __sub__(self, other: Any) -> Utility:
        if isinstance(other, Utility):
            return self + (-other)
        return self + (-_check_weight(other, "subtracted constant"))

    def __rsub__(self, other: Any) -> Utility:
        return (-self) + other

    def __mul__(self, other: Any) -> Utility:
        if isinstance(other, Utility):
            return NotImplemented
        return scale(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Utility:
        if isinstance(other, Utility):
            return NotImplemented
        c = _check_weight(other, "divisor")
        if isinstance(c, float) and c == 0.0:
            raise DomainError(f"cannot divide utility {self.name!r} by zero")
        return Utility(lambda s: self(s) / c, f"({self.name} / {other!r})", self.pages)

    def __repr__(self) -> str:
        return f"Utility({self.name})"


def as_utility(u: Utility | Callable[[State], jax.Array], name: str | None = None) -> Utility:
    """``u`` itself if it is a :class:`Utility`, else ``Utility(u)``.

    Args:
      u: a Utility or a plain function ``State -> []``.
      name: the name given to a wrapped function (default: its ``__name__``).

    Returns:
      A :class:`Utility`.
    """
    if isinstance(u, Utility):
        return u
    if not callable(u):
        raise OptionError(f"expected a Utility or a function State -> [], got {type(u).__name__}")
    return Utility(u, name or getattr(u, "__name__", "utility"))


def constant(c: float | jax.Array) -> Utility:
    """The utility that ignores the State and returns ``c``.

    Args:
      c: a finite real number or a 0-d array (it may be traced).

    Returns:
      A :class:`Utility` with value ``c`` (as a float).
    """
    c = _check_weight(c, "constant")
    return Utility(lambda s: jnp.asarray(c, jnp.result_type(c, jnp.float32)), f"{c!r}"
                   if isinstance(c, float) else "constant")


def scale(u: Utility | Callable[[State], jax.Array], c: float | jax.Array) -> Utility:
    """``c * u``.

    Args:
      u: a Utility (or a function ``State -> []``).
      c: a finite real number or a 0-d array (it may be traced, e.g. a learned weight).

    Returns:
      A :class:`Utility` with value ``c * u(state)``.
    """
    u = as_utility(u)
    c = _check_weight(c, "scale")
    name = f"{c!r}*{u.name}" if isinstance(c, float) else f"c*{u.name}"
    return Utility(lambda s: c * u(s), name, u.pages)


def weighted_sum(terms: Iterable[tuple[float | jax.Array, Utility | Callable]]) -> Utility:
    """``sum_i w_i * u_i`` for ``terms = [(w_1, u_1), (w_2, u_2), ...]``.

    The seed's aggregation (``U = -sum_i w_i c_i``) is ``weighted_sum([(-w, c) ...])``.

    Args:
      terms: ``(weight, utility)`` pairs; weights are finite numbers or 0-d arrays. An empty
        sequence gives the zero utility.

    Returns:
      A :class:`Utility` reading the union of the terms' pages.

    >>> import mmsb_jax as mm, jax.numpy as jnp
    >>> from mmsb_jax import utility as mu
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("x", (2,))])).with_pages(
    ...     {"x": jnp.array([3.0, 4.0])})
    >>> u = mu.weighted_sum([(1.0, mu.page_sum("x")), (-0.5, mu.goal_distance("x", 0.0))])
    >>> float(u(s))
    4.5
    """
    pairs = []
    for item in terms:
        try:
            w, u = item
        except (TypeError, ValueError):
            raise OptionError(f"weighted_sum expects (weight, utility) pairs, got {item!r}"
                              ) from None
        pairs.append((_check_weight(w), as_utility(u)))
    if not pairs:
        return constant(0.0)
    us = tuple(u for _, u in pairs)
    ws = tuple(w for w, _ in pairs)

    def fn(s: State) -> jax.Array:
        total = ws[0] * us[0](s)
        for w, u in zip(ws[1:], us[1:], strict=True):
            total = total + w * u(s)
        return total

    name = " + ".join(f"{w!r}*{u.name}" if isinstance(w, float) else f"w*{u.name}"
                      for w, u in pairs)
    return Utility(fn, f"({name})", _union(*(u.pages for u in us)))
