"""Attractors found from many starts, and the goals that emerge from them.

:func:`find_attractors` runs :func:`find_fixed_point` from a batch of starts under ``vmap``,
labels every end point with :func:`stability`, and deduplicates the end points (points within
``dedup_tol`` in the max norm are one fixed point). The result has a fixed capacity (one slot per
start, mctx-style): distinct fixed points come first, in the order of the first start that
reached them, and ``valid`` marks the used slots, so the whole search is one jittable function.

:func:`emergent_goals` turns the stable fixed points into :class:`Goal` s for a page, ranked by
a utility of the State that has the attractor in that page.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax._checks import check_number
from mmsb_jax.core.pages import State
from mmsb_jax.errors import DTypeError, OptionError, ShapeError
from mmsb_jax.intention._fixed_points import (
    STABLE,
    _check_map,
    _check_options,
    _closes_over_tracers,
    _find_fixed_point_impl,
    stability,
    stability_label,
)
from mmsb_jax.intention._goals import Goal
from mmsb_jax.utility._base import Utility, as_utility

__all__ = ["Attractors", "EmergentGoal", "emergent_goals", "find_attractors"]


class Attractors(NamedTuple):
    """Distinct fixed points reached from ``B`` starts, in ``B`` fixed-capacity slots.

    Slots ``0 .. count-1`` hold the distinct fixed points, in the order of the first start that
    reached each; the other slots are empty (``valid`` False, points 0, ``code`` -1).

    Attributes:
      points: ``[B, *S]`` the fixed points.
      valid: ``bool[B]`` slot holds a fixed point.
      count: ``int32[]`` number of distinct fixed points.
      basin_size: ``int32[B]`` how many starts converged to each fixed point.
      code: ``int32[B]`` stability code (see ``STABILITY_LABELS``); -1 for empty slots.
      spectral_radius: ``f32[B]`` largest ``|eigenvalue|`` of the Jacobian (0 when empty).
      eigenvalues: ``complex[B, n]`` Jacobian eigenvalues, ``n = prod(S)`` (0 when empty).
      assignment: ``int32[B]`` for each start, the slot of the fixed point it reached, or -1
        if it did not converge.
      converged: ``bool[B]`` for each start, whether it converged.
      iterations: ``int32[B]`` for each start, the steps taken.
    """

    points: jax.Array  # [B, *S]
    valid: jax.Array  # bool[B]
    count: jax.Array  # int32[]
    basin_size: jax.Array  # int32[B]
    code: jax.Array  # int32[B]
    spectral_radius: jax.Array  # f32[B]
    eigenvalues: jax.Array  # complex[B, n]
    assignment: jax.Array  # int32[B]
    converged: jax.Array  # bool[B]
    iterations: jax.Array  # int32[B]

    def labels(self) -> list[str]:
        """The stability labels of the valid slots, in slot order (host side)."""
        codes = np.asarray(self.code)[np.asarray(self.valid)]
        return [stability_label(c) for c in codes]


def find_attractors(f: Callable[[jax.Array], jax.Array], x0s: Any, *,
                    method: Literal["iterate", "newton"] = "iterate", tol: float = 1e-6,
                    max_iter: int = 500, dedup_tol: float = 1e-3,
                    stability_tol: float = 1e-4) -> Attractors:
    """Find the distinct fixed points of ``f`` reached from each start, with their stability.

    With ``method="iterate"`` only attractors (stable fixed points) can be reached; with
    ``"newton"`` fixed points of every stability are found (see :func:`find_fixed_point`).
    Deduplication is greedy in start order: a converged end point opens a new slot unless it
    lies within ``dedup_tol`` (max norm) of a slot opened before. Traceable (``jit``, ``vmap``);
    called with an ``f`` that closes only over concrete values it runs a cached ``jax.jit``
    with ``f`` static, so repeated calls with the same ``f`` and start shape compile once.

    Args:
      f: state map ``[*S] -> [*S]``.
      x0s: ``[B, *S]`` floating starts (e.g. noisy versions of states of interest, or a grid;
        draw random ones with ``jax.random``).
      method, tol, max_iter: as for :func:`find_fixed_point`.
      dedup_tol: two fixed points closer than this (max norm) are the same.
      stability_tol: the marginal band of :func:`stability`.

    Returns:
      :class:`Attractors` with ``B`` slots.

    Raises:
      OptionError: a bad option.
      DTypeError, ShapeError: ``x0s`` is not a floating ``[B, *S]`` array with ``B >= 1``,
        or ``f`` does not preserve ``S``.
    """
    _check_options(method, tol, max_iter)
    for name, v in (("dedup_tol", dedup_tol), ("stability_tol", stability_tol)):
        check_number(name, v)
    x0s = jnp.asarray(x0s)
    if x0s.ndim < 1 or x0s.shape[0] < 1:
        raise ShapeError(f"x0s must be [B, *S] with B >= 1, got shape {tuple(x0s.shape)}")
    if not jnp.issubdtype(x0s.dtype, jnp.floating):
        raise DTypeError(f"x0s must be floating, got {x0s.dtype}")
    _check_map(f, x0s[0], "x0s[0]")
    impl = _find_attractors_impl if _closes_over_tracers(f, x0s[0]) else _find_attractors_jit
    return impl(f, x0s, method=method, tol=float(tol), max_iter=int(max_iter),
                dedup_tol=float(dedup_tol), stability_tol=float(stability_tol))


def _find_attractors_impl(f: Callable, x0s: jax.Array, *, method: str, tol: float,
                          max_iter: int, dedup_tol: float, stability_tol: float) -> Attractors:
    b = x0s.shape[0]
    res = jax.vmap(lambda x: _find_fixed_point_impl(f, x, method=method, tol=tol,
                                                    max_iter=max_iter))(x0s)
    stab = jax.vmap(lambda x: stability(f, x, tol=stability_tol))(res.x)

    flat = res.x.reshape(b, -1)
    close = jnp.max(jnp.abs(flat[:, None, :] - flat[None, :, :]), axis=-1) <= dedup_tol
    conv = res.converged

    def open_slot(rep: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
        return rep.at[i].set(conv[i] & ~jnp.any(rep & close[i])), None

    rep, _ = lax.scan(open_slot, jnp.zeros((b,), jnp.bool_), jnp.arange(b))
    # each converged start belongs to the first representative close to it
    match = rep[None, :] & close
    assign_orig = jnp.where(conv & jnp.any(match, axis=1), jnp.argmax(match, axis=1), -1)
    order = jnp.argsort(~rep, stable=True)  # representatives first, in start order
    slot_of = jnp.zeros((b,), jnp.int32).at[order].set(jnp.arange(b, dtype=jnp.int32))
    assignment = jnp.where(assign_orig >= 0, slot_of[jnp.maximum(assign_orig, 0)], -1)
    valid = rep[order]
    slots = jnp.arange(b, dtype=jnp.int32)
    basin = jnp.sum(assignment[None, :] == slots[:, None], axis=1).astype(jnp.int32)

    def keep(x: jax.Array, fill: Any) -> jax.Array:
        v = valid.reshape((b,) + (1,) * (x.ndim - 1))
        return jnp.where(v, x[order], jnp.asarray(fill, x.dtype))

    return Attractors(
        points=keep(res.x, 0),
        valid=valid,
        count=jnp.sum(rep).astype(jnp.int32),
        basin_size=basin,
        code=keep(stab.code, -1),
        spectral_radius=keep(stab.spectral_radius, 0),
        eigenvalues=keep(stab.eigenvalues, 0),
        assignment=assignment.astype(jnp.int32),
        converged=conv,
        iterations=res.iterations,
    )


_find_attractors_jit = jax.jit(
    _find_attractors_impl, static_argnums=0,
    static_argnames=("method", "tol", "max_iter", "dedup_tol", "stability_tol"))


class EmergentGoal(NamedTuple):
    """A goal that emerged from an attractor, with what ranked it.

    Attributes:
      goal: a target :class:`Goal` on the page, whose target is the attractor.
      utility: the utility of the State holding the attractor in the page.
      basin_size: how many starts reached the attractor.
      label: its stability label.
      slot: its slot in the :class:`Attractors`.
    """

    goal: Goal
    utility: float
    basin_size: int
    label: str
    slot: int


def emergent_goals(attractors: Attractors, utility: Utility | Callable[[State], jax.Array],
                   state: State, page: str, *, stable_only: bool = True, weight: float = 1.0,
                   tol: float = 1e-3, norm: str = "l2") -> list[EmergentGoal]:
    """Goals that emerge from attractors, best first.

    Every valid fixed point (only stable ones with ``stable_only``) is placed into ``page`` of
    ``state`` and scored with ``utility`` (all at once, under ``vmap``); each becomes a target
    :class:`Goal` on ``page``. The list is sorted by utility, highest first (ties: larger
    basin first, then slot order; NaN utilities last). Host side: it returns Python objects.

    Args:
      attractors: from :func:`find_attractors` (not batched further).
      utility: a :class:`~mmsb_jax.utility.Utility` (or ``State -> []``) to rank by.
      state: the State whose ``page`` receives each attractor; its other pages are kept.
      page: page name; its shape must equal the attractors' point shape ``[*S]``.
      stable_only: keep only fixed points labelled ``"stable"`` (true attractors).
      weight, tol, norm: passed to each :class:`Goal`.

    Returns:
      A list of :class:`EmergentGoal`, best first.

    Raises:
      UnknownPageError: ``page`` is not in ``state``.
      ShapeError: the page's shape differs from the points' shape.
    """
    if not isinstance(attractors, Attractors):
        raise OptionError(f"expected Attractors, got {type(attractors).__name__}")
    u = as_utility(utility)
    x = state.page(page)
    points = jnp.asarray(attractors.points)
    if tuple(points.shape[1:]) != tuple(x.shape):
        raise ShapeError(f"attractor points {tuple(points.shape[1:])} do not fit page {page!r} "
                         f"of shape {tuple(x.shape)}")
    scores = np.asarray(jax.vmap(lambda p: u(state.with_pages({page: p.astype(x.dtype)})))(
        points), dtype=np.float64)
    valid = np.asarray(attractors.valid)
    codes = np.asarray(attractors.code)
    basin = np.asarray(attractors.basin_size)
    keep = valid & ((codes == STABLE) if stable_only else True)
    slots = [int(i) for i in np.flatnonzero(keep)]
    slots.sort(key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i])
                              else 0.0, -int(basin[i]), i))
    return [
        EmergentGoal(
            goal=Goal(page, target=points[i], weight=weight, tol=tol, norm=norm,
                      name=f"attractor{i}({page})"),
            utility=float(scores[i]),
            basin_size=int(basin[i]),
            label=stability_label(codes[i]),
            slot=i,
        )
        for i in slots
    ]
