"""Fixed points of state maps, and their stability from the Jacobian's eigenvalues.

A *state map* ``f: [*S] -> [*S]`` is one step of discrete dynamics on a page (a Hopfield
update, a damped relaxation, a policy's effect). Its fixed points ``x* = f(x*)`` are where the
dynamics rest; a fixed point is an *attractor* when nearby states flow into it, i.e. when every
eigenvalue of the Jacobian ``J = df/dx (x*)`` lies strictly inside the unit circle.

* :func:`find_fixed_point` runs plain iteration ``x <- f(x)`` (finds attractors only) or a
  safeguarded Newton method on ``f(x) - x = 0`` (finds fixed points of every kind, stable or
  not), inside one ``lax.while_loop``. The solution is wrapped in ``lax.custom_root``, so it is
  differentiable with respect to anything ``f`` closes over (implicit function theorem).
* :func:`stability` labels a fixed point from the eigenvalues of ``J``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax._checks import check_int, check_number
from mmsb_jax.core.delta import Delta, apply
from mmsb_jax.core.pages import State
from mmsb_jax.errors import DTypeError, OptionError, ShapeError

__all__ = [
    "MARGINAL",
    "METHODS",
    "SADDLE",
    "STABILITY_LABELS",
    "STABLE",
    "UNSTABLE",
    "FixedPoint",
    "Stability",
    "find_fixed_point",
    "jacobian",
    "settle",
    "stability",
    "stability_label",
]

METHODS: tuple[str, ...] = ("iterate", "newton")
STABLE, UNSTABLE, SADDLE, MARGINAL = 0, 1, 2, 3
STABILITY_LABELS: tuple[str, ...] = ("stable", "unstable", "saddle", "marginal")
"""Labels of the stability codes: index = code (``STABLE = 0`` ... ``MARGINAL = 3``)."""

# Newton step lengths tried in order; the first that lowers the residual is taken.
_STEPS = (1.0, 0.5, 0.25, 0.125)


class FixedPoint(NamedTuple):
    """The result of :func:`find_fixed_point`.

    Attributes:
      x: ``[*S]`` the last iterate (a fixed point when ``converged``).
      converged: ``bool[]``, ``max|f(x) - x| <= tol``.
      iterations: ``int32[]`` steps taken (0 if ``x0`` was already a fixed point).
    """

    x: jax.Array  # [*S]
    converged: jax.Array  # bool[]
    iterations: jax.Array  # int32[]


class Stability(NamedTuple):
    """The linear stability of a fixed point of a map.

    Attributes:
      eigenvalues: ``complex[n]`` eigenvalues of the Jacobian ``[n, n]`` (``n = prod(S)``).
      spectral_radius: ``f32[]`` the largest ``|eigenvalue|``.
      code: ``int32[]`` index into :data:`STABILITY_LABELS`.
    """

    eigenvalues: jax.Array  # complex[n]
    spectral_radius: jax.Array  # f32[]
    code: jax.Array  # int32[]

    @property
    def label(self) -> Any:
        """The label(s) of :attr:`code` (a str; nested lists for batched results)."""
        return stability_label(self.code)


def stability_label(code: Any) -> Any:
    """The label of a stability code (or nested lists of labels for an array of codes).

    Args:
      code: ``int[*B]`` codes from :func:`stability`; ``-1`` (an empty slot) maps to ``""``.

    Returns:
      ``"stable" | "unstable" | "saddle" | "marginal"`` (or ``""``), nested like ``code``.
    """
    arr = np.asarray(code)
    if arr.ndim == 0:
        c = int(arr)
        if c == -1:
            return ""
        if not 0 <= c < len(STABILITY_LABELS):
            raise OptionError(f"unknown stability code {c}")
        return STABILITY_LABELS[c]
    return [stability_label(c) for c in arr]


def _check_options(method: str, tol: float, max_iter: int) -> None:
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; expected one of {METHODS}")
    check_number("tol", tol, strict=True)
    check_int("max_iter", max_iter, minimum=0)


def _check_map(f: Callable, x0: Any, what: str = "x0") -> jax.Array:
    if not callable(f):
        raise OptionError(f"f must be a function [*S] -> [*S], got {type(f).__name__}")
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise DTypeError(f"{what} must be a floating array, got {x0.dtype}")
    if x0.size == 0:
        raise ShapeError(f"{what} is empty (shape {tuple(x0.shape)})")
    out = jax.eval_shape(f, x0)
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(x0.shape):
        raise ShapeError(f"f maps shape {tuple(x0.shape)} to "
                         f"{getattr(out, 'shape', type(out).__name__)}; a state map must "
                         "preserve the shape")
    return x0


def _aux(err: jax.Array, iterations: jax.Array) -> tuple[jax.Array, jax.Array]:
    # custom_root's JVP gives its auxiliary outputs float tangents, so they leave the solver
    # as floats (the final residual and the step count) and are converted afterwards.
    return err, iterations.astype(err.dtype)


def _max_abs(r: jax.Array) -> jax.Array:
    e = jnp.max(jnp.abs(r), axis=-1)
    return jnp.where(jnp.isnan(e), jnp.inf, e)


def find_fixed_point(f: Callable[[jax.Array], jax.Array], x0: Any, *,
                     method: Literal["iterate", "newton"] = "iterate", tol: float = 1e-6,
                     max_iter: int = 500) -> FixedPoint:
    """Find ``x*`` with ``f(x*) = x*`` starting from ``x0``.

    ``method="iterate"`` repeats ``x <- f(x)``: it converges to attractors (fixed points whose
    Jacobian has spectral radius < 1) and never to unstable ones. ``method="newton"`` solves
    ``f(x) - x = 0`` with Newton steps ``x <- x - (J_f - I)^{-1} (f(x) - x)`` (``J_f`` by
    ``jax.jacfwd``, the solve by ``jnp.linalg.solve``), trying step lengths 1, 1/2, 1/4, 1/8
    and taking the first that lowers the residual, else one plain iteration step; it converges
    quadratically to nearby fixed points of any stability (saddles and repellers included).

    Runs in one ``lax.while_loop``, so it works under ``jit`` and ``vmap`` (batch the starts:
    ``jax.vmap(lambda x: find_fixed_point(f, x))(x0s)``). Called with an ``f`` that closes only
    over concrete values, it runs a cached ``jax.jit`` with ``f`` static (one compilation per
    ``f`` object, shape and options); an ``f`` that reads traced values runs inline.

    The solution is returned through ``lax.custom_root``: ``jax.grad`` of ``x*`` with respect
    to values ``f`` closes over is the implicit-function-theorem derivative
    ``(I - J_f)^{-1} df/dtheta``, and ``x*`` does not depend on ``x0`` (zero gradient).

    Args:
      f: a pure state map ``[*S] -> [*S]``.
      x0: ``[*S]`` floating start.
      method: ``"iterate"`` or ``"newton"``.
      tol: convergence when ``max|f(x) - x| <= tol`` (absolute).
      max_iter: most steps; ``converged`` is False if the budget runs out (or the iterate
        becomes non-finite).

    Returns:
      :class:`FixedPoint` ``(x: [*S], converged: bool[], iterations: int32[])``.

    Raises:
      OptionError: bad ``method``, ``tol`` or ``max_iter``.
      DTypeError: ``x0`` is not floating.
      ShapeError: ``x0`` is empty or ``f`` does not preserve its shape.

    >>> import jax.numpy as jnp
    >>> fp = find_fixed_point(jnp.cos, jnp.float32(1.0))  # the Dottie number
    >>> round(float(fp.x), 4), bool(fp.converged)
    (0.7391, True)
    """
    _check_options(method, tol, max_iter)
    x0 = _check_map(f, x0)
    impl = _find_fixed_point_impl if _closes_over_tracers(f, x0) else _find_fixed_point_jit
    return impl(f, x0, method=method, tol=float(tol), max_iter=int(max_iter))


def _closes_over_tracers(f: Callable, example: Any) -> bool:
    """Whether ``f`` reads traced values (of an enclosing jit/grad/vmap) or is unhashable.

    Such an ``f`` cannot be a static argument of a cached ``jax.jit``; every other ``f`` can,
    so repeated eager calls with the same ``f`` compile once.
    """
    try:
        hash(f)
    except TypeError:
        return True
    return bool(jax.closure_convert(f, example)[1])


def _find_fixed_point_impl(f: Callable, x0: jax.Array, *, method: str, tol: float,
                           max_iter: int) -> FixedPoint:
    shape, n, dtype = x0.shape, x0.size, x0.dtype

    def residual(v: jax.Array) -> jax.Array:  # [n] -> [n]
        return jnp.reshape(f(v.reshape(shape)), (n,)).astype(dtype) - v

    def solve_iterate(g: Callable, v0: jax.Array):
        def cond(c):
            _, _, e, it = c
            return (e > tol) & (it < max_iter) & jnp.isfinite(e)

        def body(c):
            v, r, _, it = c
            v = v + r  # = f(v)
            r = g(v)
            return v, r, _max_abs(r), it + 1

        r0 = g(v0)
        v, _, e, it = lax.while_loop(cond, body, (v0, r0, _max_abs(r0), jnp.int32(0)))
        return v, _aux(e, it)

    steps = jnp.asarray((*_STEPS, 0.0), dtype)

    def solve_newton(g: Callable, v0: jax.Array):
        def cond(c):
            _, _, e, it = c
            return (e > tol) & (it < max_iter) & jnp.isfinite(e)

        def body(c):
            v, r, e, it = c
            jac = jax.jacfwd(g)(v)  # [n, n] = J_f - I
            dx = jnp.linalg.solve(jac, -r)
            cands = v[None, :] + steps[:-1, None] * dx[None, :]
            cands = jnp.concatenate([cands, (v + r)[None, :]])  # last: a plain iteration step
            rc = jax.vmap(g)(cands)
            ec = _max_abs(rc)
            ok = (ec < e).at[-1].set(True)
            pick = jnp.argmax(ok)
            return cands[pick], rc[pick], ec[pick], it + 1

        r0 = g(v0)
        v, _, e, it = lax.while_loop(cond, body, (v0, r0, _max_abs(r0), jnp.int32(0)))
        return v, _aux(e, it)

    def tangent_solve(lin: Callable, y: jax.Array) -> jax.Array:
        return jnp.linalg.solve(jax.jacfwd(lin)(y), y)

    solve = solve_iterate if method == "iterate" else solve_newton
    v, (err, iterations) = lax.custom_root(residual, x0.reshape(n), solve, tangent_solve,
                                           has_aux=True)
    return FixedPoint(v.reshape(shape), lax.stop_gradient(err) <= tol,
                      lax.stop_gradient(iterations).astype(jnp.int32))


_find_fixed_point_jit = jax.jit(_find_fixed_point_impl, static_argnums=0,
                                static_argnames=("method", "tol", "max_iter"))


def jacobian(f: Callable[[jax.Array], jax.Array], x: Any) -> jax.Array:
    """The Jacobian of a state map at ``x``, flattened.

    Args:
      f: state map ``[*S] -> [*S]``.
      x: ``[*S]`` floating point.

    Returns:
      ``[n, n]`` with ``n = prod(S)``: ``J[i, j] = d f(x)_i / d x_j`` (forward mode).
    """
    x = _check_map(f, x, "x")
    shape, n = x.shape, x.size
    return jax.jacfwd(lambda v: jnp.reshape(f(v.reshape(shape)), (n,)))(x.reshape(n))


def stability(f: Callable[[jax.Array], jax.Array], x: Any, *, tol: float = 1e-4) -> Stability:
    """The linear stability of the fixed point ``x`` of the map ``f``.

    With ``lambda_i`` the eigenvalues of the Jacobian at ``x``: ``"marginal"`` if some
    ``| |lambda_i| - 1 | <= tol`` (non-hyperbolic: linearisation cannot decide), else
    ``"stable"`` if all ``|lambda_i| < 1`` (an attractor), ``"unstable"`` if all
    ``|lambda_i| > 1`` (a repeller), and ``"saddle"`` if some are inside and some outside the
    unit circle. Traceable (``jit``/``vmap``; the label is an ``int32`` code, see
    :data:`STABILITY_LABELS`). ``x`` should be a fixed point; this is not checked.

    Args:
      f: state map ``[*S] -> [*S]``.
      x: ``[*S]`` the fixed point.
      tol: width of the band around the unit circle counted as marginal (``>= 0``).

    Returns:
      :class:`Stability` ``(eigenvalues: complex[n], spectral_radius: f32[], code: int32[])``.

    >>> import jax.numpy as jnp
    >>> r = 2.8
    >>> stability(lambda x: r * x * (1 - x), jnp.float32(1 - 1 / r)).label
    'stable'
    """
    check_number("tol", tol)
    lam = jnp.linalg.eigvals(jacobian(f, x))
    mag = jnp.abs(lam)
    marginal = jnp.any(jnp.abs(mag - 1.0) <= tol)
    code = jnp.where(marginal, MARGINAL,
                     jnp.where(jnp.all(mag < 1.0), STABLE,
                               jnp.where(jnp.all(mag > 1.0), UNSTABLE, SADDLE)))
    return Stability(lam, jnp.max(mag), code.astype(jnp.int32))


def settle(state: State, page: str, f: Callable[[jax.Array], jax.Array], *,
           method: Literal["iterate", "newton"] = "iterate", tol: float = 1e-6,
           max_iter: int = 500) -> tuple[State, FixedPoint]:
    """Run the dynamics ``f`` on one page of a State to its fixed point.

    The fixed point is found from the page's current value with :func:`find_fixed_point` and
    written back as one ``Delta.full(page, x*)`` through :func:`mmsb_jax.apply`, so the page's
    epoch advances by one, as for any other change (also when it did not converge: the page
    then holds the last iterate; check ``converged``).

    Args:
      state: a State with a floating page ``page`` of shape ``[*S]``.
      page: the page the dynamics act on.
      f: state map ``[*S] -> [*S]``.
      method, tol, max_iter: as for :func:`find_fixed_point`.

    Returns:
      ``(state', FixedPoint)``.
    """
    x0 = state.page(page)
    fp = find_fixed_point(f, x0, method=method, tol=tol, max_iter=max_iter)
    return apply(state, Delta.full(page, fp.x.astype(x0.dtype))), fp
