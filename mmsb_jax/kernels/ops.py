"""Delta ops shared by the merge kernels and their references.

The semantics are those of :mod:`mmsb_jax.core.delta` (``set add mul min max or and``). This
module is self-contained (it imports nothing from ``mmsb_jax.core``) because ``core`` calls into
the kernels: a cycle between the two packages would make import order matter.

Two flavours of every op exist:

* :func:`reference_combine` — the plain ``jnp`` function (what XLA runs).
* :func:`kernel_combine` — the same values, written with primitives that every Pallas GPU
  lowering supports and with XLA's NaN rules: Triton lowers ``jnp.minimum``/``jnp.maximum`` on
  floats to ``minnumf``/``maxnumf``, which *drop* a NaN operand, while XLA propagates it; and
  Triton has no ``min``/``max`` on ``bool``. So float ``min``/``max`` propagate NaN explicitly
  and bool ``min``/``max`` become ``and``/``or``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.errors import DTypeError, OpError

__all__ = [
    "KERNEL_DTYPES",
    "OPS",
    "check_op_dtype",
    "check_same_dtype",
    "kernel_combine",
    "reference_combine",
]

OPS: tuple[str, ...] = ("set", "add", "mul", "min", "max", "or", "and")

# dtypes the Pallas kernels handle (others fall back to XLA). 64-bit types are left out: they
# exist only with ``jax_enable_x64`` and were never exercised by the kernel tests.
KERNEL_DTYPES: tuple[np.dtype, ...] = tuple(
    jnp.dtype(d) for d in ("float32", "float16", "bfloat16", "int8", "int16", "int32", "uint8",
                           "uint16", "uint32", "bool")
)


def _is_bool(dtype: Any) -> bool:
    return jnp.dtype(dtype) == jnp.bool_


def check_op_dtype(op: str, dtype: Any, page: str | None = None) -> None:
    """Raise :class:`~mmsb_jax.errors.OpError` unless ``op`` is valid on ``dtype``.

    The one rule of the library (core's ``check_op_dtype`` is this function): ``or``/``and``
    need bool or integer data, ``add``/``mul`` are not defined on bool data. ``page`` names
    the page in the message.
    """
    if op not in OPS:
        raise OpError(f"unknown op {op!r}; expected one of {OPS}")
    dtype = jnp.dtype(dtype)
    where = "data" if page is None else f"page {page!r}"
    if op in ("or", "and") and not (_is_bool(dtype) or jnp.issubdtype(dtype, jnp.integer)):
        raise OpError(f"op {op!r} needs bool or integer data; {where} is {dtype}")
    if op in ("add", "mul") and _is_bool(dtype):
        raise OpError(f"op {op!r} is not defined on bool {where}; use 'or'/'and'")


def check_same_dtype(what: str, page: jax.Array, values: jax.Array) -> None:
    """Raise :class:`~mmsb_jax.errors.DTypeError` when ``values`` and ``page`` dtypes differ."""
    if jnp.dtype(values.dtype) != jnp.dtype(page.dtype):
        raise DTypeError(f"{what}: values are {values.dtype} but the page is {page.dtype} "
                         f"(cast with .astype({str(jnp.dtype(page.dtype))!r}))")


def reference_combine(op: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(old, new) -> result`` of ``op`` in plain ``jnp`` (also the core's ``op_fn``)."""
    return {
        "set": lambda a, b: b,
        "add": jnp.add,
        "mul": jnp.multiply,
        "min": jnp.minimum,
        "max": jnp.maximum,
        "or": jnp.bitwise_or,
        "and": jnp.bitwise_and,
    }[op]


def _nan_propagating(fn: Callable[[jax.Array, jax.Array], jax.Array]):
    def combine(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(a != a, a, jnp.where(b != b, b, fn(a, b)))

    return combine


def kernel_combine(op: str, dtype: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(old, new) -> result`` of ``op`` for use inside a Pallas kernel body.

    Gives the values of :func:`reference_combine` (XLA semantics, NaN propagation included) with
    primitives the Triton lowering accepts for ``dtype``.
    """
    dtype = jnp.dtype(dtype)
    if op in ("min", "max"):
        if _is_bool(dtype):
            return jnp.bitwise_and if op == "min" else jnp.bitwise_or
        fn = jnp.minimum if op == "min" else jnp.maximum
        if jnp.issubdtype(dtype, jnp.inexact):
            return _nan_propagating(fn)
        return fn
    return reference_combine(op)
