"""The kernels lower to Triton for CUDA, checked on a machine without a GPU.

``jax.jit(...).trace(...).lower(lowering_platforms=("cuda",))`` runs the Pallas Triton lowering
(JAX falls back to compute capability 9.0 when no GPU is attached), which rejects what Triton
cannot express: non-power-of-two tiles, unsupported primitives or dtypes, scalar prefetch.
Compiling the Triton IR to PTX and running it needs a GPU and is not covered here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from mmsb_jax.kernels.masked_merge import masked_merge_pallas
from mmsb_jax.kernels.row_merge import choose_row_blocks, prepare_rows, row_merge_pallas
from mmsb_jax.kernels.tropical_matmul import semiring_matmul_pallas


def _lowers_to_triton(fn, *args) -> bool:
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    return "__gpu$xla.gpu.triton" in text


@pytest.mark.parametrize(("dtype", "op", "shape", "inplace"), [
    ("float32", "set", (37, 3), False),
    ("float32", "max", (1000,), True),
    ("bfloat16", "add", (16, 300), False),
    ("float16", "min", (37, 3), True),
    ("int32", "mul", (37, 3), False),
    ("uint8", "or", (4096,), True),
    ("bool", "max", (37, 3), False),
    ("bool", "and", (37, 3), True),
])
def test_row_merge_lowers_for_cuda(dtype, op, shape, inplace):
    n, w = shape[0], (shape[1] if len(shape) > 1 else 1)
    k = 20

    def merge(page, idx, values):
        cfg = choose_row_blocks(n, w)
        prepared = prepare_rows(idx, values, op, n, cfg.block_rows)
        return row_merge_pallas(page, prepared, op, config=cfg, inplace=inplace)

    assert _lowers_to_triton(merge, jnp.zeros((n, w), dtype), jnp.zeros((k,), jnp.int32),
                             jnp.zeros((k, w), dtype))


@pytest.mark.parametrize(("dtype", "op"), [("float32", "min"), ("bool", "max"),
                                           ("uint8", "and"), ("bfloat16", "mul")])
def test_masked_merge_lowers_for_cuda(dtype, op):
    page = jnp.zeros((37, 3), dtype)
    assert _lowers_to_triton(functools.partial(masked_merge_pallas, op=op, inplace=True),
                             page, jnp.zeros((37, 3), bool), page)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("name", ["tropical", "maxplus"])
def test_semiring_matmul_lowers_for_cuda(dtype, name):
    a = jnp.zeros((100, 50), dtype)
    b = jnp.zeros((50, 70), dtype)
    assert _lowers_to_triton(functools.partial(semiring_matmul_pallas, name), a, b)
