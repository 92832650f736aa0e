"""Delta ops for the core: the op table, identities and the op/dtype rule.

``set add mul min max or and``: ``or``/``and`` need bool or integer data, ``add``/``mul``
are not defined on bool data. The table, the rule and the combine functions are the kernels'
(``mmsb_jax.kernels.ops``: the kernels must not import the core, which calls into them), so
core merges and kernel references combine values the same way; this module adds what only
the core needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.errors import OpError
from mmsb_jax.kernels.ops import OPS, check_op_dtype, reference_combine

__all__ = ["INDEX_CHECK_TAG", "OPS", "PADDING", "check_op_dtype", "identity_value", "op_fn",
           "order_independent"]

PADDING: int = -1
INDEX_CHECK_TAG = "mmsb:index_out_of_range"


def _is_bool(dtype: Any) -> bool:
    return jnp.dtype(dtype) == jnp.bool_


def _is_int(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.integer)


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
