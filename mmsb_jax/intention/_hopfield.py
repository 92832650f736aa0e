"""A Hopfield network: the classic system whose attractors are stored memories.

Patterns ``xi^mu in {-1, +1}^N`` are stored with the Hebbian rule
``W = (1/N) sum_mu xi^mu xi^mu^T`` (zero diagonal). The update ``x <- tanh(beta W x)`` (or
``sign(W x)``) then has each stored pattern (and its negation) as a stable fixed point while the
number of patterns stays well below the capacity ``~0.138 N``; the energy
``E(x) = -1/2 x^T W x`` is lowest at the stored patterns, so ``-E`` ranks attractors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax._checks import check_number
from mmsb_jax.errors import DomainError, ShapeError

__all__ = ["hebbian_weights", "hopfield_energy", "hopfield_map"]


def hebbian_weights(patterns: Any) -> jax.Array:
    """The Hebbian weight matrix of a set of ``+-1`` patterns.

    Args:
      patterns: ``[P, N]`` entries in ``{-1, +1}``.

    Returns:
      ``f32[N, N]`` symmetric, ``W = patterns^T patterns / N`` with a zero diagonal.

    Raises:
      ShapeError: ``patterns`` is not 2-D with ``N >= 1``.
      DomainError: an entry is not ``-1`` or ``+1`` (checked when concrete).
    """
    p = jnp.asarray(patterns)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ShapeError(f"patterns must be [P, N] with N >= 1, got shape {tuple(p.shape)}")
    if not isinstance(p, jax.core.Tracer) and not np.all(np.abs(np.asarray(p)) == 1):
        raise DomainError("Hopfield patterns must have entries -1 or +1")
    p = p.astype(jnp.float32)
    n = p.shape[1]
    w = p.T @ p / n
    return w * (1.0 - jnp.eye(n, dtype=w.dtype))


def _check_weights(weights: Any) -> jax.Array:
    w = jnp.asarray(weights)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ShapeError(f"Hopfield weights must be a square [N, N] matrix, got "
                         f"{tuple(w.shape)}")
    return w


def hopfield_map(weights: Any, beta: float | None = None) -> Callable[[jax.Array], jax.Array]:
    """The synchronous Hopfield update as a state map.

    Args:
      weights: ``[N, N]`` weight matrix (e.g. from :func:`hebbian_weights`).
      beta: inverse temperature ``> 0``: the map is ``x -> tanh(beta W x)`` (smooth; large
        ``beta`` approaches the sign update). ``None``: ``x -> sign(W x)`` with ``sign(0) = +1``
        (its Jacobian is zero wherever it is defined).

    Returns:
      ``f: [N] -> [N]``.
    """
    w = _check_weights(weights)
    if beta is None:
        return lambda x: jnp.where(w @ x >= 0, 1.0, -1.0).astype(jnp.result_type(x))
    check_number("beta", beta, strict=True, error=DomainError)
    return lambda x: jnp.tanh(beta * (w @ x))


def hopfield_energy(weights: Any, x: Any) -> jax.Array:
    """The Hopfield energy ``E(x) = -1/2 x^T W x``.

    Args:
      weights: ``[N, N]``.
      x: ``[N]`` state.

    Returns:
      ``f32[]``; stored patterns sit at low energy.
    """
    w = _check_weights(weights)
    x = jnp.asarray(x)
    if x.shape != (w.shape[0],):
        raise ShapeError(f"state of shape {tuple(x.shape)} does not match weights "
                         f"{tuple(w.shape)}")
    return -0.5 * x @ (w @ x)
