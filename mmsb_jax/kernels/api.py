"""Public entry points: dispatch to the Pallas kernels or the XLA references, with autodiff.

``merge_rows`` and ``masked_merge`` are wrapped in ``jax.custom_jvp`` (``pallas_call`` has no
transpose, so reverse mode cannot go through it): the primal comes from the kernel, the tangent
is the ``jax.jvp`` of the pure-``jnp`` reference. Both merges are linear (``set``/``add``) or
cheap elementwise (``mul/min/max``) in ``(page, values)``, so the tangent costs about one XLA
merge; ``jax.grad`` then transposes it, giving exactly the reference's gradient (for ``set``:
``d page = g`` with the updated rows zeroed, ``d values = g`` at the winning slots and 0 for
overwritten duplicates and padding; for ``add``: ``g`` reaches the page and every duplicate).
A JVP rule, unlike a ``custom_vjp``, keeps ``jax.jvp``/``jacfwd``/``hessian`` working too.

``semiring_matmul`` is wrapped in ``jax.custom_vjp`` instead: the tangent of a ``min``/``max``
reduction needs the arg-min of every output, and the reference's vjp materialises ``[M, K, N]``;
the backward pass here runs the reference vjp over row chunks (``lax.scan``), so it needs
``O(chunk * K * N)`` memory. Forward-mode differentiation of the Pallas matmul path is not
available (use ``backend="xla"`` for ``jax.jvp``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mmsb_jax.errors import DTypeError, MaskError, ShapeError

from . import dispatch
from .masked_merge import masked_merge_pallas
from .masked_merge_reference import masked_merge_reference
from .ops import KERNEL_DTYPES, check_op_dtype, check_same_dtype
from .row_merge import choose_row_blocks, prepare_rows, row_merge_pallas
from .row_merge_reference import merge_rows_reference
from .tropical_matmul import semiring_matmul_pallas
from .tropical_matmul_reference import (
    check_semiring,
    semiring_matmul_reference,
    semiring_zero,
)

__all__ = ["masked_merge", "merge_rows", "semiring_matmul"]

RowsFn = Callable[[jax.Array, jax.Array, jax.Array, str], jax.Array]
MatmulFn = Callable[[jax.Array, jax.Array], jax.Array]
# One stable callable per semiring (it is a static argument of the traced kernel wrapper).
_REFERENCE_MATMUL: dict[str, MatmulFn] = {
    name: functools.partial(semiring_matmul_reference, name) for name in ("tropical", "maxplus")
}

MATMUL_DTYPES = tuple(jnp.dtype(d) for d in ("float32", "float16", "bfloat16"))
# Elements of the ``[chunk, K, N]`` temporary of one backward step of the matmul.
BACKWARD_CHUNK_ELEMS = 1 << 22
_INT32_LIMIT = 2**31 - 2**16  # rows / slots the int32 offsets of the kernels can address


def _sharded(x: jax.Array) -> bool:
    spec = jax.typeof(x).sharding.spec
    if any(p is not None for p in spec):
        return True
    sharding = getattr(x, "sharding", None)  # concrete arrays: placed on several devices?
    return sharding is not None and not isinstance(x, jax.core.Tracer) and len(
        sharding.device_set) > 1


def _dtype_problem(x: jax.Array, supported: tuple[Any, ...]) -> str | None:
    if jnp.dtype(x.dtype) not in supported:
        return f"dtype {x.dtype} has no Pallas kernel"
    if _sharded(x):
        return "the page is sharded over several devices (the kernel runs on one device)"
    return None


def _platform_split(route: dispatch.Route, gpu_fn, interpret_fn, xla_fn, *args):
    """Run ``route``: a static choice, or ``lax.platform_dependent`` (decided at lowering)."""
    if route == "interpret":
        return interpret_fn(*args)
    off_gpu = interpret_fn if route == "gpu_or_interpret" else xla_fn
    return lax.platform_dependent(*args, cuda=gpu_fn, default=off_gpu)


# -- row merge -------------------------------------------------------------------------------

def _check_rows(page: jax.Array, indices: jax.Array, values: jax.Array, op: str) -> None:
    if page.ndim < 1:
        raise ShapeError(f"merge_rows: the page must have a row axis, got shape {page.shape}")
    if indices.ndim != 1:
        raise ShapeError(f"merge_rows: indices must be 1-D, got shape {indices.shape}")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise DTypeError(f"merge_rows: indices must be integers, got {indices.dtype}")
    want = (indices.shape[0], *page.shape[1:])
    if tuple(values.shape) != want:
        raise ShapeError(f"merge_rows: values shape {tuple(values.shape)} != {want} for a page "
                         f"of shape {tuple(page.shape)} and {indices.shape[0]} indices")
    check_same_dtype("merge_rows", page, values)
    check_op_dtype(op, page.dtype)


def _rows_problem(page: jax.Array, k: int) -> str | None:
    if page.shape[0] >= _INT32_LIMIT or k >= _INT32_LIMIT:
        return f"{page.shape[0]} rows / {k} slots exceed int32 indexing"
    return _dtype_problem(page, KERNEL_DTYPES)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def _merge_rows_kernel(op: str, inplace: bool, route: dispatch.Route, xla_fn: RowsFn,
                       page: jax.Array, indices: jax.Array, values: jax.Array) -> jax.Array:
    n, k = page.shape[0], indices.shape[0]
    w = math.prod(page.shape[1:])
    cfg = choose_row_blocks(n, w)

    def pallas(interpret: bool):
        def run(page2d, idx, vals2d):
            prepared = prepare_rows(idx, vals2d, op, n, cfg.block_rows)
            return row_merge_pallas(page2d, prepared, op, config=cfg, inplace=inplace,
                                    interpret=interpret)
        return run

    def xla(page2d, idx, vals2d):
        return xla_fn(page2d.reshape(page.shape), idx, vals2d.reshape(values.shape),
                      op).reshape(n, w)

    out = _platform_split(route, pallas(False), pallas(True), xla, page.reshape(n, w),
                          indices.astype(jnp.int32), values.reshape(k, w))
    return out.reshape(page.shape)


@_merge_rows_kernel.defjvp
def _merge_rows_kernel_jvp(op, inplace, route, xla_fn, primals, tangents):
    page, indices, values = primals
    dpage, _, dvalues = tangents
    out = _merge_rows_kernel(op, inplace, route, xla_fn, page, indices, values)
    _, dout = jax.jvp(lambda p, v: merge_rows_reference(p, indices, v, op), (page, values),
                      (dpage, dvalues))
    return out, dout


def merge_rows(page: jax.Array, indices: jax.Array, values: jax.Array, op: str = "set", *,
               inplace: bool = False, backend: str | None = None,
               xla: RowsFn | None = None) -> jax.Array:
    """Merge a rows delta into a page, deterministically: ``page x (indices, values) -> page'``.

    Same semantics as ``mmsb_jax.core.delta`` row deltas: ``-1`` (and any index outside
    ``[0, n)``) is padding; duplicates are resolved by a stable sort, ``set`` keeps the last
    occurrence, the other ops combine occurrences left to right (a fixed-order segmented scan)
    and then with the page row; each page row is written once. The Pallas and XLA paths give
    bit-identical results.

    >>> import jax.numpy as jnp, mmsb_jax.kernels as mk
    >>> mk.merge_rows(jnp.zeros((4,), jnp.int32), jnp.array([2, 0, 2, -1]),
    ...               jnp.array([7, 1, 9, 5], jnp.int32), "add").tolist()
    [1, 0, 16, 0]

    Args:
      page: ``[n, *row]``.
      indices: ``int[k]`` row indices.
      values: ``[k, *row]`` in the page's dtype.
      op: ``set add mul min max or and``.
      inplace: Pallas path only: write into the page buffer (``input_output_aliases``) and touch
        only row blocks that have an update. Pays off when the caller donates the page
        (``jax.jit(..., donate_argnums=...)``); otherwise XLA copies the page first.
      backend: ``"auto" | "pallas" | "xla"`` for this call (default: the dispatcher setting).
      xla: the function ``(page, indices, values, op) -> page'`` run on the XLA route (default
        :func:`~mmsb_jax.kernels.merge_rows_reference`); ``mmsb_jax.core`` passes its own
        (sharding-aware) merge here. It must have the same semantics. Hashable (a module-level
        function), since it becomes part of the trace.

    Returns:
      ``[n, *row]``, the merged page.

    Raises:
      ShapeError: a scalar page, non-1-D indices, or values of the wrong shape.
      DTypeError: non-integer indices, or values not in the page's dtype.
      OpError: an unknown op, or one not defined on the page's dtype.
    """
    page, indices, values = jnp.asarray(page), jnp.asarray(indices), jnp.asarray(values)
    _check_rows(page, indices, values, op)
    k = indices.shape[0]
    if k == 0 or page.size == 0:
        return page
    xla_fn = merge_rows_reference if xla is None else xla
    how = dispatch.route("merge_rows", _rows_problem(page, k), backend)
    if how == "xla":
        return xla_fn(page, indices, values, op)
    return _merge_rows_kernel(op, bool(inplace), how, xla_fn, page, indices, values)


# -- masked merge ----------------------------------------------------------------------------

@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _masked_merge_kernel(op: str, inplace: bool, route: dispatch.Route, page: jax.Array,
                         mask: jax.Array, values: jax.Array) -> jax.Array:
    def pallas(interpret: bool):
        return lambda p, m, v: masked_merge_pallas(p, m, v, op, inplace=inplace,
                                                   interpret=interpret)

    def xla(p, m, v):
        return masked_merge_reference(p, m, v, op)

    return _platform_split(route, pallas(False), pallas(True), xla, page, mask, values)


@_masked_merge_kernel.defjvp
def _masked_merge_kernel_jvp(op, inplace, route, primals, tangents):
    page, mask, values = primals
    dpage, _, dvalues = tangents
    out = _masked_merge_kernel(op, inplace, route, page, mask, values)
    _, dout = jax.jvp(lambda p, v: masked_merge_reference(p, mask, v, op), (page, values),
                      (dpage, dvalues))
    return out, dout


def masked_merge(page: jax.Array, mask: jax.Array, values: jax.Array, op: str = "set", *,
                 inplace: bool = False, backend: str | None = None) -> jax.Array:
    """Merge a masked delta: ``where(mask, op(page, values), page)``.

    >>> import jax.numpy as jnp, mmsb_jax.kernels as mk
    >>> mk.masked_merge(jnp.array([1., 2., 3.]), jnp.array([True, False, True]),
    ...                 jnp.array([5., 5., 0.]), "min").tolist()
    [1.0, 2.0, 0.0]

    Args:
      page: ``[*S]``.
      mask: ``bool[*S]``.
      values: ``[*S]`` in the page's dtype.
      op: ``set add mul min max or and``.
      inplace: Pallas path only: write into the page buffer (worth it when the page is donated).
      backend: ``"auto" | "pallas" | "xla"`` for this call (default: the dispatcher setting).

    Returns:
      ``[*S]``, the merged page.

    Raises:
      MaskError: ``mask`` is not bool or not page-shaped.
      ShapeError: ``values`` not page-shaped.
      DTypeError: values not in the page's dtype.
      OpError: an unknown op, or one not defined on the page's dtype.
    """
    page, mask, values = jnp.asarray(page), jnp.asarray(mask), jnp.asarray(values)
    if mask.dtype != jnp.bool_:
        raise MaskError(f"masked_merge: mask must be bool, got {mask.dtype}")
    if mask.shape != page.shape:
        raise MaskError(f"masked_merge: mask shape {mask.shape} != page shape {page.shape}")
    if values.shape != page.shape:
        raise ShapeError(f"masked_merge: values shape {values.shape} != page shape "
                         f"{page.shape}")
    check_same_dtype("masked_merge", page, values)
    check_op_dtype(op, page.dtype)
    if page.size == 0:
        return page
    problem = ("more elements than int32 indexing" if page.size >= _INT32_LIMIT
               else _dtype_problem(page, KERNEL_DTYPES))
    how = dispatch.route("masked_merge", problem, backend)
    if how == "xla":
        return masked_merge_reference(page, mask, values, op)
    return _masked_merge_kernel(op, bool(inplace), how, page, mask, values)


# -- semiring matmul -------------------------------------------------------------------------

def _chunked_matmul_vjp(name: str, a: jax.Array, b: jax.Array,
                        g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reference vjp of ``[M, K] (x) [K, N]`` over row chunks (``O(chunk * K * N)`` memory)."""
    m, k = a.shape
    n = b.shape[1]
    chunk = max(1, min(m, BACKWARD_CHUNK_ELEMS // max(k * n, 1)))
    ref = functools.partial(semiring_matmul_reference, name)
    if chunk >= m:
        _, vjp = jax.vjp(ref, a, b)
        return vjp(g)
    num = -(-m // chunk)
    pad = num * chunk - m
    # Padded rows get a zero cotangent, so they add nothing to ``d b``.
    a_chunks = jnp.pad(a, ((0, pad), (0, 0))).reshape(num, chunk, k)
    g_chunks = jnp.pad(g, ((0, pad), (0, 0))).reshape(num, chunk, n)

    def step(db, xs):
        a_c, g_c = xs
        _, vjp = jax.vjp(ref, a_c, b)
        da_c, db_c = vjp(g_c)
        return db + db_c, da_c

    db, da = lax.scan(step, jnp.zeros_like(b), (a_chunks, g_chunks))
    return da.reshape(num * chunk, k)[:m], db


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _matmul_kernel(name: str, route: dispatch.Route, xla_fn: MatmulFn, a: jax.Array,
                   b: jax.Array) -> jax.Array:
    # a: [B, M, K], b: [B, K, N]
    def pallas(interpret: bool):
        single = functools.partial(semiring_matmul_pallas, name, interpret=interpret)
        return jax.vmap(single)

    return _platform_split(route, pallas(False), pallas(True), jax.vmap(xla_fn), a, b)


def _matmul_kernel_fwd(name, route, xla_fn, a, b):
    return _matmul_kernel(name, route, xla_fn, a, b), (a, b)


def _matmul_kernel_bwd(name, route, xla_fn, residuals, g):
    a, b = residuals
    return jax.vmap(functools.partial(_chunked_matmul_vjp, name))(a, b, g)


_matmul_kernel.defvjp(_matmul_kernel_fwd, _matmul_kernel_bwd)


def semiring_matmul(name: str, a: jax.Array, b: jax.Array, *, backend: str | None = None,
                    xla: MatmulFn | None = None) -> jax.Array:
    """Tropical ``(min, +)`` or max-plus ``(max, +)`` matrix product.

    ``C[..., i, j] = min_k (A[..., i, k] + B[..., k, j])`` (``max_k`` for max-plus); ``+inf``
    (tropical) / ``-inf`` (max-plus) is the semiring zero ("no edge"): it absorbs in ``+``
    (``inf + -inf = inf`` in the tropical semiring) and an empty ``K`` gives it. The same
    semantics as ``mmsb_jax.core.semiring.matmul`` with ``TROPICAL`` / ``MAXPLUS``. The Pallas
    kernel needs ``O(n^2)`` memory where XLA's broadcast-and-reduce needs ``O(n^3)``.
    Differentiable with ``jax.grad`` (ties share the cotangent equally, as ``jnp.min`` does).

    >>> import jax.numpy as jnp, mmsb_jax.kernels as mk
    >>> inf = jnp.inf
    >>> a = jnp.array([[0., 1.], [inf, 0.]])
    >>> mk.semiring_matmul("tropical", a, a).tolist()
    [[0.0, 1.0], [inf, 0.0]]

    Args:
      name: ``"tropical"`` or ``"maxplus"``.
      a: ``[..., M, K]`` floating point.
      b: ``[..., K, N]``, same dtype; leading dimensions broadcast.
      backend: ``"auto" | "pallas" | "xla"`` for this call (default: the dispatcher setting).
      xla: the function ``(a: [M, K], b: [K, N]) -> [M, N]`` run on the XLA route (default:
        :func:`~mmsb_jax.kernels.semiring_matmul_reference` for ``name``); e.g. the core's
        row-blocked ``mm.semiring.matmul``. Same semantics required; hashable.

    Returns:
      ``[..., M, N]``.

    Raises:
      SemiringError: ``name`` is not ``"tropical"`` or ``"maxplus"``.
      ShapeError: fewer than 2 dimensions, mismatched ``K``, or leading dims that don't broadcast.
      DTypeError: different dtypes, or not floating point (``+-inf`` is the semiring zero).
    """
    check_semiring(name)
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"semiring_matmul needs matrices, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"semiring_matmul: inner dimensions differ: {a.shape} (x) {b.shape}")
    if a.dtype != b.dtype:
        raise DTypeError(f"semiring_matmul: dtypes differ: {a.dtype} and {b.dtype}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise DTypeError(f"semiring_matmul needs floating point (the semiring zero is +-inf), "
                         f"got {a.dtype}")
    try:
        batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError as err:
        raise ShapeError(f"semiring_matmul: batch dimensions of {a.shape} and {b.shape} do not "
                         "broadcast") from err
    (m, k), n = a.shape[-2:], b.shape[-1]
    if k == 0 or m == 0 or n == 0:
        return jnp.full((*batch, m, n), semiring_zero(name, a.dtype))
    problem = None if jnp.dtype(a.dtype) in MATMUL_DTYPES else f"dtype {a.dtype} has no kernel"
    if problem is None and (_sharded(a) or _sharded(b)):
        problem = "an operand is sharded over several devices"
    how = dispatch.route("semiring_matmul", problem, backend)
    if how == "xla" and xla is None:
        return semiring_matmul_reference(name, a, b)
    xla_fn = _REFERENCE_MATMUL[name] if xla is None else xla
    size = math.prod(batch)
    a3 = jnp.broadcast_to(a, (*batch, m, k)).reshape(size, m, k)
    b3 = jnp.broadcast_to(b, (*batch, k, n)).reshape(size, k, n)
    if how == "xla":
        return jax.vmap(xla_fn)(a3, b3).reshape(*batch, m, n)
    return _matmul_kernel(name, how, xla_fn, a3, b3).reshape(*batch, m, n)
