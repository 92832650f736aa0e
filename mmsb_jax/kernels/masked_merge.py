"""Pallas kernel for the masked merge ``where(mask, op(page, values), page)``.

The page, mask and values are flattened to ``[N]`` and tiled in blocks of ``block`` elements
(a power of two); program ``i`` owns elements ``[i * block, (i + 1) * block)`` of the output and
stores them once with a masked store (the last block is partial). Programs share nothing, so
the kernel is race-free by construction. The op is applied with
:func:`~mmsb_jax.kernels.ops.kernel_combine` (XLA's NaN rules on every backend).

This is a purely elementwise, memory-bound kernel: XLA already fuses the reference into one
pass, so the kernel is expected to match XLA, not beat it. It exists so that every hot merge
has one Pallas implementation with the same dispatch, and with ``inplace=True`` it writes the
result into the (donated) page buffer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .ops import kernel_combine

__all__ = ["DEFAULT_BLOCK", "masked_merge_pallas"]

DEFAULT_BLOCK = 1024


def _masked_merge_kernel(page_ref, mask_ref, vals_ref, *refs, op: str, size: int, block: int):
    out_ref = refs[-1]  # refs = (out_ref,) or (poisoned_out_init_ref, out_ref)
    i = pl.program_id(0)
    inside = i * block + jnp.arange(block, dtype=jnp.int32) < size
    zero = jnp.zeros((), page_ref.dtype)
    page = plgpu.load(page_ref, mask=inside, other=zero)
    take = plgpu.load(mask_ref, mask=inside, other=False)
    vals = plgpu.load(vals_ref, mask=inside & take, other=zero)
    merged = kernel_combine(op, page_ref.dtype)(page, vals)
    plgpu.store(out_ref, jnp.where(take, merged, page), mask=inside)


def masked_merge_pallas(page: jax.Array, mask: jax.Array, values: jax.Array, op: str, *,
                        block: int = DEFAULT_BLOCK, inplace: bool = False,
                        interpret: bool = False, out_init: jax.Array | None = None,
                        num_warps: int = 4) -> jax.Array:
    """Masked merge with the Pallas kernel.

    Args:
      page: ``[*S]``.
      mask: ``bool[*S]``.
      values: ``[*S]``, the page's dtype.
      op: the delta op.
      block: elements per program (a power of two).
      inplace: alias the page buffer to the output.
      interpret: run in Pallas interpret mode (the only mode on CPU).
      out_init: testing hook: a ``[*S]`` buffer aliased to the output (e.g. filled with a
        sentinel, so any element the kernel fails to write shows).
      num_warps: Triton warps per program (GPU only).

    Returns:
      ``[*S]``, the merged page.
    """
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a positive power of two, got {block}")
    shape = page.shape
    size = page.size
    flat = [page.reshape(size), mask.reshape(size), values.reshape(size)]
    spec = pl.BlockSpec((block,), lambda i: (i,))
    aliases: dict[int, int] = {}
    if out_init is not None:
        flat.append(out_init.reshape(size))
        aliases = {3: 0}
    elif inplace:
        aliases = {0: 0}
    kernel = functools.partial(_masked_merge_kernel, op=op, size=size, block=block)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((size,), page.dtype),
        grid=(pl.cdiv(size, block),),
        in_specs=[spec] * len(flat),
        out_specs=spec,
        input_output_aliases=aliases,
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        name="mmsb_masked_merge",
    )(*flat)
    return out.reshape(shape)
