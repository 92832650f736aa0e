"""Pure-``jnp`` reference of the masked merge (what the XLA path runs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .ops import reference_combine

__all__ = ["masked_merge_reference"]


def masked_merge_reference(page: jax.Array, mask: jax.Array, values: jax.Array,
                           op: str) -> jax.Array:
    """``where(mask, op(page, values), page)``: the masked delta of ``mmsb_jax.core``.

    Args:
      page: ``[*S]``.
      mask: ``bool[*S]``; True where the element is updated.
      values: ``[*S]`` in the page's dtype (ignored where ``mask`` is False).
      op: one of ``set add mul min max or and``.

    Returns:
      ``[*S]``, the merged page.
    """
    return jnp.where(mask, reference_combine(op)(page, values), page)
