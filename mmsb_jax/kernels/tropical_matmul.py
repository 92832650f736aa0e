"""Pallas kernel for the tropical (min, +) and max-plus (max, +) matrix products.

Tiling: a grid ``(ceil(M / block_m), ceil(N / block_n))`` over output tiles. Program ``(i, j)``
keeps its ``[block_m, block_n]`` accumulator in registers (a ``fori_loop`` carry) initialised to
the semiring zero, walks ``K`` in blocks of ``block_k``, loads an ``[block_m, block_k]`` tile of
``A`` and a ``[block_k, block_n]`` tile of ``B`` (masked past the edges, padded with the
semiring zero), reduces ``A[:, :, None] (x) B[None, :, :]`` over the ``block_k`` axis and folds it
into the accumulator; it stores its output tile once at the end. Memory is ``O(MK + KN + MN)``
instead of the ``O(MKN)`` of XLA's broadcast-and-reduce; every output tile has exactly one
owner, so the kernel is race-free by construction.

``(x)`` is the absorbing ``+`` of :func:`~mmsb_jax.kernels.tropical_matmul_reference.semiring_times`
(``+inf (x) -inf = +inf`` in the tropical semiring), exactly as in the reference.

NaN: on GPU, Triton lowers the float ``min``/``max`` reductions to ``minnumf``/``maxnumf``,
which ignore NaN where XLA propagates it, so a NaN input may give a number on the Pallas GPU
path where the XLA path gives NaN. NaN is not a semiring value; every other input (numbers and
``+-inf``) gives the same bits on both paths.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .tropical_matmul_reference import (
    check_semiring,
    semiring_times,
    semiring_zero,
)

__all__ = ["semiring_matmul_pallas"]


def _semiring_matmul_kernel(a_ref, b_ref, o_ref, *, name: str, m: int, n: int, k: int,
                            block_m: int, block_n: int, block_k: int):
    i = pl.program_id(0)
    j = pl.program_id(1)
    zero = jnp.asarray(semiring_zero(name, o_ref.dtype))
    row_ok = i * block_m + jnp.arange(block_m, dtype=jnp.int32) < m
    col_ok = j * block_n + jnp.arange(block_n, dtype=jnp.int32) < n
    reduce = jnp.min if name == "tropical" else jnp.max
    fold = jnp.minimum if name == "tropical" else jnp.maximum

    def body(kb, acc):
        k0 = pl.multiple_of(kb * block_k, block_k)
        k_ok = k0 + jnp.arange(block_k, dtype=jnp.int32) < k
        a = plgpu.load(a_ref.at[:, pl.ds(k0, block_k)],
                       mask=row_ok[:, None] & k_ok[None, :], other=zero)
        b = plgpu.load(b_ref.at[pl.ds(k0, block_k), :],
                       mask=k_ok[:, None] & col_ok[None, :], other=zero)
        return fold(acc, reduce(semiring_times(a[:, :, None], b[None, :, :], zero), axis=1))

    acc = jnp.full((block_m, block_n), zero, o_ref.dtype)
    acc = lax.fori_loop(0, pl.cdiv(k, block_k), body, acc)
    plgpu.store(o_ref, acc, mask=row_ok[:, None] & col_ok[None, :])


def semiring_matmul_pallas(name: str, a: jax.Array, b: jax.Array, *, block_m: int = 32,
                           block_n: int = 32, block_k: int = 8, num_warps: int = 4,
                           interpret: bool = False) -> jax.Array:
    """``A (x) B`` in the tropical or max-plus semiring with the Pallas kernel.

    Args:
      name: ``"tropical"`` or ``"maxplus"``.
      a: ``[M, K]`` floating point.
      b: ``[K, N]``, same dtype.
      block_m: output rows per program (power of two).
      block_n: output columns per program (power of two).
      block_k: ``K`` step of the inner loop (power of two).
      num_warps: Triton warps per program (GPU only).
      interpret: run in Pallas interpret mode (the only mode on CPU).

    Returns:
      ``[M, N]``.
    """
    check_semiring(name)
    for what, v in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        if v <= 0 or v & (v - 1):
            raise ValueError(f"{what} must be a positive power of two, got {v}")
    m, k = a.shape
    n = b.shape[1]
    kernel = functools.partial(_semiring_matmul_kernel, name=name, m=m, n=n, k=k,
                               block_m=block_m, block_n=block_n, block_k=block_k)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((m, n), a.dtype),
        grid=(pl.cdiv(m, block_m), pl.cdiv(n, block_n)),
        in_specs=[pl.BlockSpec((block_m, k), lambda i, j: (i, 0)),
                  pl.BlockSpec((k, block_n), lambda i, j: (0, j))],
        out_specs=pl.BlockSpec((block_m, block_n), lambda i, j: (i, j)),
        interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=2),
        name=f"mmsb_{name}_matmul",
    )(a, b)
