"""Pallas kernel for the deterministic row merge.

Pipeline (``page: [n, W]`` after flattening each row, a rows delta of capacity ``k``):

1. Outside the kernel (XLA, ``O(k log k)``): stable argsort of the slots by row, duplicates
   combined by the segmented scan of :func:`~mmsb_jax.kernels.row_merge_reference.sort_and_combine`
   (bit-identical to the reference), then the *winning* slot of every updated row is compacted
   to the front: ``crow: int32[k + 1]`` holds the updated rows in ascending order, each once,
   padded with ``INT32_MAX``; ``src: int32[k + 1]`` the row of ``upd_vals`` holding each one's
   final value. ``starts: int32[G + 1]`` (``searchsorted`` of the block boundaries) says which
   stretch ``crow[starts[i]:starts[i + 1]]`` falls into row block ``i``.
2. The kernel runs a grid ``(G, C)`` over output tiles of ``block_rows x block_cols``. Program
   ``(i, j)`` owns rows ``[i * block_rows, (i + 1) * block_rows)`` and columns
   ``[j * block_cols, (j + 1) * block_cols)`` of the output: it loads the page tile, finds for
   each of its rows the matching update (a vectorised binary search over its own stretch of
   ``crow``, at most ``block_rows`` entries, ``log2(block_rows) + 1`` steps), gathers the
   update values, combines them with the page tile and stores the tile once.

Race freedom, by construction: the output tiles of different programs are disjoint, a program
reads only its own page tile plus read-only update arrays, and stores its tile exactly once (no
atomics, no second write, no read of another program's output). Interpret mode runs the
programs one after another and so could not reveal a race; this argument is what rules them
out on a GPU.

With ``inplace=True`` the page buffer is aliased to the output (``input_output_aliases``) and a
program whose row block has no update returns without touching memory, so a merge costs
``O(k)`` instead of ``O(n)`` when the caller donates the page. Without donation XLA copies the
page first, which costs a full page copy; the default (``inplace=False``) instead streams the
page through the kernel once (read + write), the same traffic as a copy.

GPU lowering: the kernel uses only what the Pallas Triton lowering supports (power-of-two
tiles, masked ``plgpu.load``/``plgpu.store``, gathers through integer-array indexers, no scalar
prefetch) and selects Triton explicitly with ``plgpu.CompilerParams``. JAX 0.10's default GPU
backend, Mosaic GPU, expects kernels written with ``plgpu.kernel`` and warns on
``pl.pallas_call``; Triton is the lowering for grid/BlockSpec kernels like this one.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .ops import kernel_combine
from .row_merge_reference import sort_and_combine

__all__ = [
    "ROW_SENTINEL",
    "PreparedRows",
    "RowMergeConfig",
    "choose_row_blocks",
    "prepare_rows",
    "row_merge_pallas",
]

ROW_SENTINEL = int(jnp.iinfo(jnp.int32).max)


class RowMergeConfig(NamedTuple):
    """Static tiling of the row merge kernel.

    Attributes:
      block_rows: output rows per program (a power of two).
      block_cols: output columns per program (a power of two).
      num_warps: Triton warps per program (GPU only).
    """

    block_rows: int
    block_cols: int
    num_warps: int = 4


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def _prev_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x).bit_length() - 1)


def choose_row_blocks(num_rows: int, row_width: int, *, tile_elems: int = 4096,
                      max_block_rows: int = 1024, max_block_cols: int = 256) -> RowMergeConfig:
    """Pick power-of-two tiles of about ``tile_elems`` elements for a ``[num_rows, row_width]``
    page: a whole (padded) row when it fits in ``max_block_cols``, as many rows as fill the rest.
    """
    block_cols = min(_next_pow2(max(row_width, 1)), max_block_cols)
    block_rows = _prev_pow2(max(tile_elems // block_cols, 1))
    block_rows = max(1, min(block_rows, max_block_rows, _next_pow2(max(num_rows, 1))))
    num_warps = 4 if block_rows * block_cols <= 4096 else 8
    return RowMergeConfig(block_rows, block_cols, num_warps)


class PreparedRows(NamedTuple):
    """Sorted, duplicate-free updates in the layout the kernel reads.

    Attributes:
      starts: ``int32[G + 1]``; block ``i`` owns ``crow[starts[i]:starts[i + 1]]``.
      crow: ``int32[k + 1]`` updated rows, ascending, each once, padded with ``ROW_SENTINEL``.
      src: ``int32[k + 1]`` row of ``upd_vals`` holding the final value for ``crow[t]``.
      upd_vals: ``[m, W]`` update values (``m = k``).
    """

    starts: jax.Array  # [G + 1]
    crow: jax.Array  # [k + 1]
    src: jax.Array  # [k + 1]
    upd_vals: jax.Array  # [k, W]


def prepare_rows(indices: jax.Array, values2d: jax.Array, op: str, num_rows: int,
                 block_rows: int) -> PreparedRows:
    """Sort, resolve and compact a rows delta for :func:`row_merge_pallas` (runs in XLA).

    Args:
      indices: ``int[k]`` (``k >= 1``); anything outside ``[0, num_rows)`` is padding.
      values2d: ``[k, W]``.
      op: the delta op.
      num_rows: ``n``.
      block_rows: the kernel's rows per program.

    Returns:
      A :class:`PreparedRows`.
    """
    k = indices.shape[0]
    slots = sort_and_combine(indices, values2d, op, num_rows, combine_values=(op != "set"))
    winner = slots.last & (slots.keys < num_rows)
    # The t-th winner (0-based) is the first sorted slot whose running winner count is t + 1.
    running = jnp.cumsum(winner.astype(jnp.int32))
    num_winners = running[-1]
    ranks = jnp.arange(1, k + 1, dtype=jnp.int32)
    pos = jnp.searchsorted(running, ranks, side="left", method="scan_unrolled")
    pos = jnp.minimum(pos.astype(jnp.int32), k - 1)
    valid = ranks <= num_winners
    crow = jnp.where(valid, slots.keys[pos], ROW_SENTINEL).astype(jnp.int32)
    # ``set`` did not permute the values: map back through the sort order instead of gathering.
    src = jnp.where(valid, slots.order[pos] if op == "set" else pos, 0).astype(jnp.int32)
    crow = jnp.concatenate([crow, jnp.full((1,), ROW_SENTINEL, jnp.int32)])
    src = jnp.concatenate([src, jnp.zeros((1,), jnp.int32)])
    num_blocks = pl.cdiv(num_rows, block_rows)
    bounds = jnp.arange(num_blocks + 1, dtype=jnp.int32) * block_rows
    starts = jnp.searchsorted(crow, bounds, side="left", method="scan_unrolled")
    starts = starts.astype(jnp.int32)
    return PreparedRows(starts, crow, src, slots.values)


def _row_merge_kernel(starts_ref, crow_ref, src_ref, vals_ref, page_ref, *refs, op: str,
                      num_rows: int, row_width: int, block_rows: int, block_cols: int,
                      skip_empty: bool):
    out_ref = refs[-1]  # refs = (out_ref,) or (poisoned_out_init_ref, out_ref)
    i = pl.program_id(0)
    j = pl.program_id(1)
    base = starts_ref[i]
    count = starts_ref[i + 1] - base

    def merge_tile():
        rows = i * block_rows + jnp.arange(block_rows, dtype=jnp.int32)
        cols = j * block_cols + jnp.arange(block_cols, dtype=jnp.int32)
        tile_mask = (rows < num_rows)[:, None] & (cols < row_width)[None, :]
        zero = jnp.zeros((), page_ref.dtype)
        tile = plgpu.load(page_ref, mask=tile_mask, other=zero)

        # Vectorised lower_bound of each row in crow[base : base + count] (count <= block_rows).
        lo = jnp.zeros((block_rows,), jnp.int32)
        hi = jnp.full((block_rows,), count, jnp.int32)
        for _ in range(int(math.log2(block_rows)) + 1):
            active = lo < hi
            mid = (lo + hi) // 2
            probe = crow_ref[base + jnp.where(active, mid, 0)]
            right = probe < rows
            lo = jnp.where(active & right, mid + 1, lo)
            hi = jnp.where(active & ~right, mid, hi)
        hit = crow_ref[base + jnp.minimum(lo, count)]
        found = (lo < count) & (hit == rows)

        slot = src_ref[jnp.where(found, base + lo, 0)]
        slot2 = jnp.broadcast_to(slot[:, None], (block_rows, block_cols))
        col2 = jnp.broadcast_to(jnp.minimum(cols, row_width - 1)[None, :],
                                (block_rows, block_cols))
        upd_mask = found[:, None] & tile_mask
        upd = plgpu.load(vals_ref.at[slot2, col2], mask=upd_mask, other=zero)
        merged = kernel_combine(op, page_ref.dtype)(tile, upd)
        plgpu.store(out_ref, jnp.where(found[:, None], merged, tile), mask=tile_mask)

    if skip_empty:
        pl.when(count > 0)(merge_tile)
    else:
        merge_tile()


def row_merge_pallas(page2d: jax.Array, prepared: PreparedRows, op: str, *,
                     config: RowMergeConfig | None = None, inplace: bool = False,
                     interpret: bool = False, out_init: jax.Array | None = None) -> jax.Array:
    """Merge prepared row updates into ``page2d`` with the Pallas kernel.

    Args:
      page2d: ``[n, W]``.
      prepared: the output of :func:`prepare_rows` for the same ``n`` and
        ``config.block_rows``.
      op: the delta op.
      config: tiling; :func:`choose_row_blocks` when None.
      inplace: alias the page to the output and skip row blocks without updates.
      interpret: run in Pallas interpret mode (the only mode on CPU).
      out_init: testing hook: a ``[n, W]`` buffer aliased to the output instead (every tile is
        then written by the kernel), e.g. filled with a sentinel so unwritten rows show.

    Returns:
      ``[n, W]`` the merged page.
    """
    n, w = page2d.shape
    cfg = config or choose_row_blocks(n, w)
    num_blocks = pl.cdiv(n, cfg.block_rows)
    if prepared.starts.shape != (num_blocks + 1,):
        raise ValueError(f"prepared for {prepared.starts.shape[0] - 1} row blocks, the tiling "
                         f"has {num_blocks}")
    grid = (num_blocks, pl.cdiv(w, cfg.block_cols))

    def whole(x: jax.Array) -> pl.BlockSpec:
        return pl.BlockSpec(x.shape, lambda i, j, nd=x.ndim: (0,) * nd)

    tile_spec = pl.BlockSpec((cfg.block_rows, cfg.block_cols), lambda i, j: (i, j))
    args: list[Any] = [prepared.starts, prepared.crow, prepared.src, prepared.upd_vals, page2d]
    in_specs = [whole(prepared.starts), whole(prepared.crow), whole(prepared.src),
                whole(prepared.upd_vals), tile_spec]
    aliases: dict[int, int] = {}
    if out_init is not None:
        args.append(out_init)
        in_specs.append(tile_spec)
        aliases = {len(args) - 1: 0}
    elif inplace:
        aliases = {4: 0}
    kernel = functools.partial(
        _row_merge_kernel, op=op, num_rows=n, row_width=w, block_rows=cfg.block_rows,
        block_cols=cfg.block_cols, skip_empty=inplace and out_init is None)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n, w), page2d.dtype),
        grid=grid,
        in_specs=in_specs,
        out_specs=tile_spec,
        input_output_aliases=aliases,
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=1),
        name="mmsb_row_merge",
    )(*args)
