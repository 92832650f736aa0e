"""Deterministic row merges: duplicates resolved before one write per row, on every backend.

See :mod:`mmsb_jax.core.delta` for the rules (``set`` keeps the last occurrence; other ops
combine occurrences in order with a position-independent segmented scan; exact commutative
integer/bool ops use the scatter combiner). Rows known to be distinct (``Delta.unique``) take
one gather-combine-scatter. Row-sharded pages merge per shard under ``jax.shard_map``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import checkify

from mmsb_jax import kernels
from mmsb_jax._ops import INDEX_CHECK_TAG, PADDING, _is_bool, op_fn, order_independent
from mmsb_jax.core._sharding import out_sharding, replicated
from mmsb_jax.kernels.row_merge_reference import (
    segmented_scan,
    sort_and_combine,
    stable_row_order,
)

__all__ = ["hashed_winning_rows", "merge_rows", "merge_rows_sharded", "resolve_rows",
           "segmented_scan", "sorted_winning_rows", "winning_rows"]

# Whether row-range checks are traced: only while ``mm.checked`` runs its function. A
# ``checkify`` check does nothing outside ``checkify``, but it is an effect, and an effect keeps
# every jitted function that contains it off JAX's C++ dispatch fast path. The setting is a
# ``jax.make_user_context`` value, part of the jit cache key, so a function traced without
# checks is traced again (with them) when it first runs under ``mm.checked``.
_checks_traced = jax.make_user_context(default_value=False)


def resolve_rows(indices: jax.Array, values: jax.Array, op: str, num_rows: int):
    """Resolve duplicate row indices deterministically.

    The kernels' reference sort (:func:`mmsb_jax.kernels.row_merge_reference.sort_and_combine`)
    is the one implementation: core merges and kernels give the same bits by construction.

    Args:
      indices: ``int32[k]``, ``-1`` = padding.
      values: ``[k, *row]``.
      op: the delta op; ``set`` keeps the last occurrence, other ops combine occurrences in
        their original order (a position-independent segmented scan).
      num_rows: the page's number of rows ``n``.

    Returns:
      ``(rows, vals)``: ``rows: int32[k]`` sorted so that every in-range row appears once,
      non-winning slots and padding set to ``n`` (out of range, dropped by the scatter);
      ``vals: [k, *row]`` the combined value for each winning slot.
    """
    slots = sort_and_combine(indices, values, op, num_rows)
    return jnp.where(slots.last & (slots.keys < num_rows), slots.keys, num_rows), slots.values


def winning_rows(indices: jax.Array, num_rows: int) -> jax.Array:
    """For ``set``: the row each slot writes, or ``num_rows`` if a later slot overwrites it.

    Args:
      indices: ``int32[k]``, ``-1`` = padding.
      num_rows: ``n``.

    Returns:
      ``int32[k]``: ``indices[i]`` where slot ``i`` is the last occurrence of its row, else
      ``n`` (dropped by a ``mode="drop"`` scatter). Every in-range row appears at most once, so
      the scatter that follows is deterministic on every backend.

    Small deltas (``32 k < n``) use :func:`hashed_winning_rows` (about half the cost of a
    sort on CPU), which falls back to :func:`sorted_winning_rows` in the rare case its hash
    rounds leave a slot unresolved; large ones a scatter-max of slot positions into an
    ``int32[n]`` buffer (``O(k + n)``, exact: ``max`` is order-independent). All give the
    same array.
    """
    k = indices.shape[0]
    if k * 32 < num_rows:
        if _packs(k, num_rows):
            return _hashed_or_sorted(indices, num_rows)
        return sorted_winning_rows(indices, num_rows)
    key = _row_keys(indices, num_rows)
    slots = jnp.arange(k, dtype=jnp.int32)
    pos = jnp.full((num_rows,), -1, jnp.int32).at[key].max(slots, mode="drop")
    wins = pos.at[key].get(mode="fill", fill_value=-1) == slots
    return jnp.where(wins, key, num_rows)


def _row_keys(indices: jax.Array, num_rows: int) -> jax.Array:
    return jnp.where(indices < 0, num_rows, indices).astype(jnp.int32)


def _slot_bits(k: int) -> int:
    return max(1, (k - 1).bit_length())


def _packs(k: int, num_rows: int) -> bool:
    """Whether ``row << bits | slot`` fits an int32 for every key in ``[0, num_rows]``."""
    return k > 0 and (num_rows + 1) << _slot_bits(k) <= 1 << 31


def sorted_winning_rows(indices: jax.Array, num_rows: int) -> jax.Array:
    """:func:`winning_rows` by a stable sort (``O(k log k)``; one packed int32 sort when it
    fits: :func:`~mmsb_jax.kernels.row_merge_reference.stable_row_order`)."""
    k = indices.shape[0]
    order, skey = stable_row_order(_row_keys(indices, num_rows), num_rows)
    last = jnp.concatenate([skey[1:] != skey[:-1], jnp.ones((1,), bool)])
    rows_sorted = jnp.where(last, skey, num_rows)
    return jnp.zeros((k,), jnp.int32).at[order].set(rows_sorted, unique_indices=True)


# Odd 32-bit multipliers (Fibonacci hashing and two others): one independent hash per round.
_HASH_MULTIPLIERS = (-1640531535, 0x2C1B3C6D, 0x297A2D39)


def hashed_winning_rows(indices: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
    """:func:`winning_rows` by hashing, without a sort: ``(rows, unresolved)``.

    Each slot is packed as ``row << b | slot`` (distinct; needs ``(n + 1) << b <= 2**31``).
    A round scatter-maxes the packed values of the open slots into ``m >= 8 k`` buckets by a
    multiplicative hash of the row: in every bucket the largest row present is *resolved*
    (all its slots hash there and see it), and its winner is the slot holding the bucket's
    maximum, i.e. the row's last occurrence. ``max`` is order-independent, so every round is
    exact and deterministic on every backend. Three rounds with independent hashes resolve
    all slots unless rows collide in all three (about ``k**2 / 2m`` slots stay open after
    the first round); ``unresolved`` says so, and the caller then uses the sort.

    Args:
      indices: ``int32[k]``, ``-1`` = padding.
      num_rows: ``n`` (static).

    Returns:
      ``(rows: int32[k], unresolved: bool[])``: ``rows`` as :func:`winning_rows` returns it
      wherever ``unresolved`` is False.
    """
    k = indices.shape[0]
    key = _row_keys(indices, num_rows)
    bits = _slot_bits(k)
    packed = (key << bits) | jnp.arange(k, dtype=jnp.int32)
    mbits = max(4, (8 * k - 1).bit_length())
    open_, wins = jnp.ones((k,), bool), jnp.zeros((k,), bool)
    for mult in _HASH_MULTIPLIERS:
        bucket = lax.shift_right_logical(key * jnp.int32(mult), jnp.int32(32 - mbits))
        top = jnp.full((1 << mbits,), -1, jnp.int32).at[bucket].max(
            jnp.where(open_, packed, -1))[bucket]
        done = open_ & ((top >> bits) == key)
        open_, wins = open_ & ~done, wins | (done & (top == packed))
    return jnp.where(wins, key, num_rows), jnp.any(open_)


@functools.lru_cache(maxsize=64)
def _hashed_or_sorted_fn(num_rows: int) -> Callable[[jax.Array], jax.Array]:
    """Hashed winners with the sort as fallback; under ``vmap`` the sort alone (the ``cond``
    would become a ``select`` that runs both paths). One function per static ``num_rows``."""

    @jax.custom_batching.custom_vmap
    def winners(indices: jax.Array) -> jax.Array:
        rows, unresolved = hashed_winning_rows(indices, num_rows)
        return lax.cond(unresolved, lambda: sorted_winning_rows(indices, num_rows),
                        lambda: rows)

    @winners.def_vmap
    def _(axis_size: int, in_batched: list[bool], indices: jax.Array):
        del axis_size, in_batched  # one argument: it is the batched one
        return jax.vmap(lambda i: sorted_winning_rows(i, num_rows))(indices), True

    return winners


def _hashed_or_sorted(indices: jax.Array, num_rows: int) -> jax.Array:
    return _hashed_or_sorted_fn(num_rows)(indices)


def _debug_check_rows(indices: jax.Array, n: int) -> None:
    if not _checks_traced.value:
        return
    checkify.debug_check(
        jnp.all((indices >= PADDING) & (indices < n)),
        INDEX_CHECK_TAG + ": row index outside [-1, {n}) in a rows delta",
        n=jnp.int32(n),
    )


def merge_rows(page: jax.Array, indices: jax.Array, values: jax.Array, op: str,
                unique: bool = False) -> jax.Array:
    n = page.shape[0]
    if indices.shape[0] == 0:
        return page
    _debug_check_rows(indices, n)
    if unique:
        return _merge_unique_rows(page, indices, values, op)
    # The dispatcher (MMSB_KERNELS=auto|pallas|xla) runs the Pallas row-merge kernel on GPU
    # and this module's XLA merge elsewhere; both give the same bits.
    return kernels.merge_rows(page, indices, values, op, xla=_merge_rows_xla)


def _merge_rows_xla(page: jax.Array, indices: jax.Array, values: jax.Array, op: str
                    ) -> jax.Array:
    n = page.shape[0]
    out = out_sharding(page)
    if op == "set":
        return page.at[winning_rows(indices, n)].set(values, mode="drop", out_sharding=out)
    if order_independent(op, page.dtype):
        key = jnp.where(indices < 0, n, indices)
        if _is_bool(page.dtype):
            op = {"or": "max", "and": "min"}.get(op, op)
        at = page.at[key]
        return {"add": at.add, "mul": at.multiply, "min": at.min, "max": at.max}[op](
            values, mode="drop", out_sharding=out)
    rows, vals = resolve_rows(indices, values, op, n)
    old = page.at[rows].get(mode="fill", fill_value=0,
                            out_sharding=None if out is None else replicated(out))
    return page.at[rows].set(op_fn(op)(old, vals), mode="drop", out_sharding=out)


def _merge_unique_rows(page: jax.Array, indices: jax.Array, values: jax.Array, op: str
                       ) -> jax.Array:
    """Merge rows known to be distinct: one gather-combine-scatter, no sort.

    Each row is written at most once, so the scatter is deterministic on every backend, and
    each written value is ``op(old, new)`` exactly as the sorting merge computes it: the
    results are bit-identical.
    """
    n = page.shape[0]
    out = out_sharding(page)
    key = jnp.where(indices < 0, n, indices)
    if op != "set":
        old = page.at[key].get(mode="fill", fill_value=0, unique_indices=True,
                               out_sharding=None if out is None else replicated(out))
        values = op_fn(op)(old, values)
    return page.at[key].set(values, mode="drop", unique_indices=True, out_sharding=out)


def merge_rows_sharded(page: jax.Array, indices: jax.Array, values: jax.Array, op: str,
                       sharding: jax.sharding.NamedSharding) -> jax.Array:
    """Row merge of a row-sharded page with ``shard_map``: each device updates only its rows.

    Shapes as :func:`apply_page` for a ``rows`` delta. Every device sees all ``k`` slots,
    keeps those that fall in its block of rows (the others become padding) and runs the same
    deterministic merge locally, so the result is bit-equal to the unsharded merge.
    """
    spec = sharding.spec
    P = jax.sharding.PartitionSpec
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)

    def local(block: jax.Array, idx: jax.Array, vals: jax.Array) -> jax.Array:
        rows = block.shape[0]
        start = lax.axis_index(axes) * rows
        mine = (idx >= start) & (idx < start + rows)
        with _checks_traced(False):  # checked once, below, on the global indices
            return merge_rows(block, jnp.where(mine, idx - start, PADDING), vals, op)

    _debug_check_rows(indices, page.shape[0])
    values_spec = P(None, *spec[1:])
    if any(t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types):
        # Explicit meshes do not reshard shard_map inputs implicitly.
        indices = jax.reshard(indices, jax.sharding.NamedSharding(sharding.mesh, P()))
        values = jax.reshard(values, jax.sharding.NamedSharding(sharding.mesh, values_spec))
    return jax.shard_map(
        local, mesh=sharding.mesh, in_specs=(spec, P(), values_spec), out_specs=spec,
    )(page, indices, values)
