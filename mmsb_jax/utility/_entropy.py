"""Entropy of page contents and of access distributions (in bits unless told otherwise).

Three measures, for three kinds of data:

* :func:`entropy` (a :class:`Utility`): the Shannon entropy of a float page read as a
  distribution, either through a softmax (``logits=True``) or normalised by its sum
  (``logits=False``, for non-negative pages such as counts or masses). Differentiable.
* :func:`content_entropy` (a :class:`Utility`) and :func:`byte_entropy` (on arrays): the
  entropy of the byte histogram of a page's raw contents, between 0 (one repeated byte) and 8
  bits (uniformly random bytes). This is how compressible a page is; it is computed from
  integer counts and is **not differentiable** (its gradient is zero by construction).
* :func:`access_entropy`: the entropy of a distribution given by counts (page accesses, row
  touches, co-access pairs), as the seed's ``state_entropy``: ``H = -sum_i p_i log2 p_i`` with
  ``p_i = c_i / sum(c)``, zero counts skipped, and ``0`` for an empty or all-zero histogram.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax.core.pages import State
from mmsb_jax.errors import DomainError, OptionError, ShapeError
from mmsb_jax.utility._base import Utility
from mmsb_jax.utility._builtins import _check_page_name, as_float

__all__ = [
    "access_entropy",
    "byte_entropy",
    "content_entropy",
    "entropy",
    "entropy_reduction",
]


def _log_base(base: float) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 0 \
            or base == 1 or not math.isfinite(base):
        raise OptionError(f"entropy base must be a finite number > 0 and != 1, got {base!r}")
    return math.log(base)


def _plogp(p: jax.Array) -> jax.Array:
    # p * log(p) with 0 log 0 = 0; the inner `where` keeps the gradient finite at p = 0.
    pos = p > 0
    return jnp.where(pos, p * jnp.log(jnp.where(pos, p, 1.0)), 0.0)


def _normalised_entropy(x: jax.Array, axis: int) -> jax.Array:
    """Entropy in nats of ``x / sum(x)`` along ``axis``; an all-zero slice gives 0."""
    total = jnp.sum(x, axis=axis, keepdims=True)
    return -jnp.sum(_plogp(x / jnp.where(total > 0, total, 1.0)), axis=axis)


def access_entropy(counts: Any, base: float = 2.0) -> jax.Array:
    """The Shannon entropy of the distribution given by ``counts``.

    Args:
      counts: ``[*C]`` non-negative counts or weights (every element is one outcome), or a
        mapping ``{outcome: count}`` (its values are used, as the seed's dict of accesses).
      base: logarithm base; 2 gives bits.

    Returns:
      ``f32[]``: ``-sum_i p_i log_base p_i`` with ``p = counts / sum(counts)``; ``0`` when all
      counts are zero. Between 0 (one outcome) and ``log_base(#outcomes)`` (uniform).

    Raises:
      DomainError: a (concrete) count is negative or not finite.

    >>> abs(float(access_entropy([1, 1, 1])) - math.log2(3)) < 1e-6  # three equal counts
    True
    """
    ln_base = _log_base(base)
    if isinstance(counts, Mapping):
        counts = list(counts.values())
    if not isinstance(counts, jax.Array):
        counts = np.asarray(counts)
        if counts.dtype.kind not in "biuf":
            raise DomainError(f"counts must be numeric, got {counts.dtype}")
    elif not jnp.issubdtype(counts.dtype, jnp.number) and counts.dtype != jnp.bool_:
        raise DomainError(f"counts must be numeric, got {counts.dtype}")
    if not isinstance(counts, jax.core.Tracer):
        host = np.asarray(counts)
        if host.size and (not np.all(np.isfinite(host.astype(np.float64)))
                          or np.any(host < 0)):
            raise DomainError("counts must be finite and non-negative")
    return _counts_entropy_nats(counts) / ln_base


@jax.jit
def _counts_entropy_nats(counts: jax.Array) -> jax.Array:
    return _normalised_entropy(as_float(counts).reshape(-1), 0)


def entropy_reduction(old: Any, new: Any) -> jax.Array:
    """The seed's relative entropy reduction ``(old - new) / old`` (``0`` when ``old == 0``).

    Args:
      old: ``[]`` entropy before.
      new: ``[]`` entropy after.

    Returns:
      ``f32[]``; e.g. ``entropy_reduction(2.0, 1.0) == 0.5``.
    """
    old = as_float(jnp.asarray(old))
    new = as_float(jnp.asarray(new))
    safe = jnp.where(old == 0, 1.0, old)
    return jnp.where(old == 0, 0.0, (old - new) / safe)


def byte_entropy(x: Any) -> jax.Array:
    """The entropy in bits of the histogram of the bytes that make up ``x``.

    Every element is viewed as its raw bytes (``lax.bitcast_convert_type`` to ``uint8``, so a
    ``float32[n]`` array contributes ``4 n`` bytes; bool counts as one byte), the 256-bin
    histogram is taken and its Shannon entropy returned. Not differentiable: the input is
    wrapped in ``stop_gradient`` and only integer counts are used.

    Args:
      x: ``[*S]`` array of any numeric or bool dtype.

    Returns:
      ``f32[]`` in ``[0, 8]``; ``0`` for an empty array.
    """
    return _byte_entropy(lax.stop_gradient(jnp.asarray(x)))


@jax.jit
def _byte_entropy(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        b = x.astype(jnp.uint8)
    elif x.dtype == jnp.uint8:
        b = x
    else:
        b = lax.bitcast_convert_type(x, jnp.uint8)
    hist = jnp.bincount(b.reshape(-1).astype(jnp.int32), length=256)
    return _normalised_entropy(hist.astype(jnp.float32), 0) / math.log(2.0)


def entropy(page: str, *, axis: int | None = None, logits: bool = True,
            base: float = 2.0) -> Utility:
    """The Shannon entropy of a page read as a probability distribution (differentiable).

    Args:
      page: page name; the page is ``[*S]`` (float; integer pages are read as float32).
      axis: ``None``: the whole page is one distribution. An int: every slice along ``axis``
        is a distribution (e.g. ``axis=-1`` for a ``[rows, classes]`` page) and the utility is
        the mean of their entropies.
      logits: ``True``: the distribution is ``softmax(page)``. ``False``: ``page / sum(page)``
        for a non-negative page (then an all-zero slice has entropy 0, and the gradient at an
        exactly-zero element is that of ``0 log 0 = 0``, i.e. the log term contributes 0).
      base: logarithm base (2: bits, ``math.e``: nats).

    Returns:
      A :class:`Utility`, ``>= 0`` and at most ``log_base(n)`` for ``n`` outcomes.

    Raises:
      OptionError: a bad base.
      ShapeError: (when called) ``axis`` out of range.
    """
    page = _check_page_name(page)
    ln_base = _log_base(base)
    if axis is not None and (not isinstance(axis, (int, np.integer)) or isinstance(axis, bool)):
        raise OptionError(f"axis must be an int or None, got {axis!r}")

    def fn(s: State) -> jax.Array:
        x = as_float(s.page(page))
        if axis is not None and not -x.ndim <= axis < x.ndim:
            raise ShapeError(f"entropy: axis {axis} out of range for page {page!r} of shape "
                             f"{tuple(x.shape)}")
        v = x.reshape(-1) if axis is None else x
        ax = 0 if axis is None else axis
        if logits:
            logp = jax.nn.log_softmax(v, axis=ax)
            h = -jnp.sum(jnp.exp(logp) * logp, axis=ax)
        else:
            h = _normalised_entropy(v, ax)
        return jnp.mean(h) / ln_base

    kind = "softmax" if logits else "normalised"
    return Utility(fn, f"entropy[{kind}]({page})", (page,))


def content_entropy(page: str) -> Utility:
    """The byte-histogram entropy of a page's contents, in bits (**not differentiable**).

    See :func:`byte_entropy`. Useful as a compressibility measure of ``uint8`` pages (the
    seed's byte pages) and as a term in utilities that rank layouts; its gradient is zero.

    Args:
      page: page name; any dtype.

    Returns:
      A :class:`Utility` with value in ``[0, 8]``.
    """
    page = _check_page_name(page)
    return Utility(lambda s: byte_entropy(s.page(page)), f"content_entropy({page})", (page,))
