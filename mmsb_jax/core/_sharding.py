"""Page shardings as the merge sees them: read, kept, and the row split of a page."""

from __future__ import annotations

from typing import Any

import jax
import jax.core
import numpy as np
from jax import lax

__all__ = ["keep_sharding", "out_sharding", "page_sharding", "replicated", "row_sharding",
           "row_sharding_of"]

_Tracer = jax.core.Tracer


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, _Tracer)


def out_sharding(page: jax.Array) -> Any:
    """The page's sharding when it lives on an explicit-sharding mesh, else ``None``.

    Scatters and gathers on explicitly sharded arrays need ``out_sharding=`` (their result
    sharding cannot be inferred); passing the page's own sharding keeps it unchanged.
    """
    sharding = getattr(jax.typeof(page), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    axis_types = getattr(mesh, "axis_types", ())
    if any(t == jax.sharding.AxisType.Explicit for t in axis_types):
        return sharding
    return None


# Ops whose scatter combiner is exact and order-independent on these dtypes, so XLA's scatter
# is deterministic even with duplicate indices (and even with GPU atomics).


def replicated(sharding: Any) -> Any:
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())


def row_sharding_of(sharding: Any, ndim: int) -> jax.sharding.NamedSharding | None:
    """``sharding`` with its spec padded to ``ndim`` if it splits axis 0 over >1 device."""
    if not isinstance(sharding, jax.sharding.NamedSharding) or not ndim:
        return None
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    axes = spec[0]
    if axes is None:
        return None
    axes = axes if isinstance(axes, tuple) else (axes,)
    if int(np.prod([sharding.mesh.shape[a] for a in axes])) <= 1:
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))


def row_sharding(page: Any) -> jax.sharding.NamedSharding | None:
    """The page's ``NamedSharding`` if its rows (axis 0) are split over devices, else ``None``.

    Works on concrete arrays and, on explicit-sharding meshes, on traced ones.
    """
    return row_sharding_of(page_sharding(page), page.ndim)


def page_sharding(page: Any) -> jax.sharding.NamedSharding | None:
    """The page's ``NamedSharding`` (concrete arrays, or traced ones on explicit meshes)."""
    sharding = getattr(page, "sharding", None) if _is_concrete(page) else None
    if sharding is None:
        sharding = getattr(jax.typeof(page), "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and not sharding.mesh.empty:
        return sharding
    return None


def keep_sharding(new: jax.Array, sharding: jax.sharding.NamedSharding | None) -> jax.Array:
    if sharding is None:
        return new
    if any(t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types):
        if jax.typeof(new).sharding.spec != sharding.spec:
            return jax.reshard(new, sharding)
        return new
    return lax.with_sharding_constraint(new, sharding)
