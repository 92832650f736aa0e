"""Delta ops: the op table, identities and the op/dtype rule (shared by core and kernels).

``set add mul min max or and``: ``or``/``and`` need bool or integer data, ``add``/``mul``
are not defined on bool data. :func:`op_fn` is the one combine table (the kernels' references
use the same one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.errors import OpError
from mmsb_jax.kernels.ops import reference_combine

__all__ = ["INDEX_CHECK_TAG", "OPS", "PADDING", "check_op_dtype", "identity_value", "op_fn",
           "order_independent"]

OPS: tuple[str, ...] = ("set", "add", "mul", "min", "max", "or", "and")
PADDING: int = -1
INDEX_CHECK_TAG = "mmsb:index_out_of_range"


def _is_bool(dtype: Any) -> bool:
    return jnp.dtype(dtype) == jnp.bool_


def _is_int(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.integer)


def check_op_dtype(op: str, dtype: Any, page: str = "?") -> None:
    """Raise :class:`OpError` unless ``op`` is valid for pages of ``dtype``."""
    if op not in OPS:
        raise OpError(f"unknown op {op!r}; expected one of {OPS}")
    if op in ("or", "and") and not (_is_bool(dtype) or _is_int(dtype)):
        raise OpError(f"op {op!r} needs a bool or integer page; page {page!r} is {dtype}")
    if op in ("add", "mul") and _is_bool(dtype):
        raise OpError(f"op {op!r} is not defined on bool page {page!r}; use 'or'/'and'")


def op_fn(op: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The binary function ``(old, new) -> result`` of a delta op.

    One table serves the core merge and the kernels' references (``mmsb_jax.kernels.ops``), so
    both combine values the same way.
    """
    return reference_combine(op)


def identity_value(op: str, dtype: Any) -> Any:
    """The identity element ``e`` of ``op`` on ``dtype`` (``x op e == x``); ``set`` has none."""
    dtype = jnp.dtype(dtype)
    if op == "add":
        return np.zeros((), dtype)
    if op == "mul":
        return np.ones((), dtype)
    if op in ("min", "max"):
        if _is_bool(dtype):
            return np.bool_(op == "min")
        if jnp.issubdtype(dtype, jnp.inexact):
            return np.array(np.inf if op == "min" else -np.inf, dtype)
        info = jnp.iinfo(dtype)
        return np.array(info.max if op == "min" else info.min, dtype)
    if op == "or":
        return np.zeros((), dtype)
    if op == "and":
        return np.bool_(True) if _is_bool(dtype) else np.array(-1, dtype=np.int64).astype(dtype)
    raise OpError(f"op {op!r} has no identity element")


def order_independent(op: str, dtype: Any) -> bool:
    """Whether XLA's scatter combiner for ``op`` is exact and order-independent on ``dtype``.

    Then a scatter is deterministic even with duplicate indices (and GPU atomics): integer
    ``add/mul/min/max`` and bool ``min/max/or/and``.
    """
    if _is_bool(dtype):
        return op in ("min", "max", "or", "and")
    if _is_int(dtype):
        return op in ("add", "mul", "min", "max")
    return False
