"""Pure-``jnp`` reference of the tropical (min, +) and max-plus (max, +) matrix products.

``C[i, j] = min_k (A[i, k] (x) B[k, j])`` (tropical) or ``max_k`` (max-plus), written as XLA's
broadcast-and-reduce: it materialises ``[M, K, N]``, so memory grows as ``O(n^3)``. The Pallas
kernel in :mod:`mmsb_jax.kernels.tropical_matmul` computes the same values in ``O(n^2)``.

``(x)`` is ``+`` on the extended reals with the semiring zero absorbing: ``zero (x) a = zero``
for every ``a`` (``+inf (x) -inf = +inf`` in the tropical semiring, where plain ``+`` gives
NaN), and the reduction starts from the semiring zero. Both choices are those of
``mmsb_jax.core.semiring.TROPICAL`` / ``MAXPLUS``, so values and gradients agree bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.errors import SemiringError

__all__ = ["SEMIRINGS", "check_semiring", "semiring_matmul_reference", "semiring_times",
           "semiring_zero"]

SEMIRINGS: tuple[str, ...] = ("tropical", "maxplus")


def semiring_zero(name: str, dtype) -> np.ndarray:
    """The additive identity of semiring ``name`` (``+inf`` for tropical, ``-inf`` for max-plus),
    which is also the value of an empty ``min``/``max``."""
    check_semiring(name)
    return np.array(np.inf if name == "tropical" else -np.inf, dtype=jnp.dtype(dtype))


def check_semiring(name: str) -> None:
    """Raise :class:`~mmsb_jax.errors.SemiringError` unless ``name`` is in :data:`SEMIRINGS`."""
    if name not in SEMIRINGS:
        raise SemiringError(f"unknown semiring {name!r} for the matmul kernel; expected one of "
                            f"{SEMIRINGS}")


def semiring_matmul_reference(name: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``A (x) B`` in semiring ``name`` by broadcast-and-reduce.

    Args:
      name: ``"tropical"`` (min, +) or ``"maxplus"`` (max, +).
      a: ``[..., M, K]`` floating point.
      b: ``[..., K, N]`` floating point, same dtype (leading dims broadcast).

    Returns:
      ``[..., M, N]``; an empty ``K`` gives the semiring zero.
    """
    check_semiring(name)
    zero = semiring_zero(name, jnp.result_type(a, b))
    terms = semiring_times(a[..., :, :, None], b[..., None, :, :], zero)
    reduce = jnp.min if name == "tropical" else jnp.max
    return reduce(terms, axis=-2, initial=zero)


def semiring_times(a: jax.Array, b: jax.Array, zero: jax.Array) -> jax.Array:
    """``a (x) b``: ``a + b``, except that the semiring ``zero`` absorbs (``zero (x) x = zero``)."""
    return jnp.where((a == zero) | (b == zero), zero, a + b)
