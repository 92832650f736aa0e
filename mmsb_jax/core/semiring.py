"""Semirings: one algebra for shortest, longest and soft paths and for reachability.

A semiring ``(S, ⊕, ⊗, 0̄, 1̄)`` has an associative, commutative "sum" ``⊕`` with identity ``0̄``
and an associative "product" ``⊗`` with identity ``1̄`` that distributes over ``⊕``; ``0̄``
annihilates (``0̄ ⊗ a = 0̄``). Replacing ``(+, *)`` in a matrix product, a sparse
matrix-vector product or a matrix inverse by ``(⊕, ⊗)`` turns one algorithm into many:

==============  ===============  ==========  ==========  =========================================
semiring        ``(⊕, ⊗)``       ``zero``    ``one``     ``closure(A)[i, j]`` is ...
==============  ===============  ==========  ==========  =========================================
``REAL``        ``(+, *)``       ``0``       ``1``       the sum over all paths (``inv(I - A)``)
``TROPICAL``    ``(min, +)``     ``+inf``    ``0``       the shortest-path distance
``MAXPLUS``     ``(max, +)``     ``-inf``    ``0``       the longest-path length (``+inf`` on a
                                                         positive cycle)
``BOOLEAN``     ``(or, and)``    ``False``   ``True``    whether ``j`` is reachable from ``i``
``LOG``         ``(logaddexp,    ``-inf``    ``0``       ``log Σ_paths exp(weight)``: a smooth,
                +)``                                     differentiable (soft) maximum over paths
==============  ===============  ==========  ==========  =========================================

A graph is either a dense matrix ``A: [N, N]`` (``A[i, j]`` is the weight of edge ``i -> j``;
``sr.zero`` means "no edge") or a fixed-capacity edge list as jraph stores it: ``senders`` and
``receivers: int32[E]`` and ``weights: [E]``, where an edge whose sender or receiver is ``-1`` is
padding and contributes nothing, so edge lists of one capacity stack and never recompile.

Operations: :func:`matmul` (``⊕``-reduction of ``⊗``; REAL and BOOLEAN use a dense matmul, the
others a broadcast-and-reduce tiled over row blocks so memory stays bounded),
:func:`spmv` (message passing over an edge list with a segment reduction),
:func:`closure` (the Kleene star ``A* = I ⊕ A ⊕ A² ⊕ ...`` by the Floyd-Warshall-Kleene
elimination) and :func:`fixpoint` (``x ← x0 ⊕ spmv(x)`` until nothing changes, differentiable by
implicit differentiation). Other path problems need only a new :class:`Semiring`, e.g. widest
(maximum-capacity) paths with ``(max, min)``, ``zero=-inf``, ``one=+inf``.

Every semiring is a :class:`Semiring` NamedTuple of pure functions, registered as a *static*
pytree (it has no array leaves), so it can be passed straight through ``jax.jit``, ``vmap`` and
``grad``; a different semiring is a different compilation. All functions here are pure and
jittable; inputs are validated on the host first (typed :mod:`mmsb_jax.errors`).

>>> import jax.numpy as jnp
>>> from mmsb_jax.core import semiring as sr
>>> inf = jnp.inf
>>> A = jnp.array([[inf, 1., 4.], [inf, inf, 2.], [inf, inf, inf]])
>>> sr.closure(sr.TROPICAL, A).tolist()
[[0.0, 1.0, 3.0], [inf, 0.0, 2.0], [inf, inf, 0.0]]
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify

from mmsb_jax import kernels
from mmsb_jax._ops import INDEX_CHECK_TAG, PADDING
from mmsb_jax.errors import (
    DTypeError,
    IndexOutOfRangeError,
    SemiringError,
    ShapeError,
    UnknownSemiringError,
)

__all__ = [
    "BOOLEAN",
    "LOG",
    "MAXPLUS",
    "REAL",
    "SEMIRINGS",
    "TROPICAL",
    "FixpointResult",
    "Semiring",
    "adjacency",
    "closure",
    "eye",
    "fixpoint",
    "matmul",
    "matmul_reference",
    "spmv",
]

Axis = int | Sequence[int] | None
BinaryFn = Callable[[jax.Array, jax.Array], jax.Array]

# Elements of the [block_rows, k, m] intermediate of the tiled broadcast-and-reduce matmul
# (2**22 float32 elements = 16 MiB).
_TILE_ELEMENTS = 1 << 22


class Semiring(NamedTuple):
    """A semiring ``(⊕, ⊗, zero, one)`` as pure functions, plus what the algorithms need.

    Build your own by filling the fields; every field must be hashable (module-level functions
    are), because a semiring is a static part of a jitted computation.

    Attributes:
      name: short lower-case name (``"tropical"``).
      add: ``⊕``, elementwise and broadcasting: ``(a: [*S], b: [*S]) -> [*S]``.
      mul: ``⊗``, elementwise and broadcasting; ``zero`` must annihilate it
        (``mul(zero, a) == zero`` even where ``a`` is infinite).
      zero: identity of ``⊕`` and annihilator of ``⊗`` (a Python scalar); "no edge".
      one: identity of ``⊗`` (a Python scalar); "the empty path".
      segment_reduce: ``⊕`` over segments, as jraph's ``segment_sum``:
        ``(data: [E, *F], segment_ids: int32[E], num_segments: int) -> [num_segments, *F]``.
        Empty segments get ``zero``; ids outside ``[0, num_segments)`` are dropped.
      reduce: ``⊕`` over axes, as ``jnp.sum``: ``(x, axis=None) -> x reduced over axis``; an empty
        axis gives ``zero``.
      star: the scalar Kleene star ``a* = one ⊕ a ⊕ a⊗a ⊕ ...``, elementwise. It satisfies
        ``a* = one ⊕ a ⊗ a*`` and is infinite where the series diverges.
      idempotent: whether ``a ⊕ a == a`` (then fixpoints are reached exactly).
      dtype: the default dtype; integer inputs are cast to it (for a bool semiring, inputs
        must be bool).
      dot: optional fast dense ``⊕.⊗`` product ``(A: [n, k], B: [k, m]) -> [n, m]`` used by
        :func:`matmul` instead of the tiled broadcast-and-reduce; ``None`` if there is none.
    """

    name: str
    add: BinaryFn
    mul: BinaryFn
    zero: Any
    one: Any
    segment_reduce: Callable[[jax.Array, jax.Array, int], jax.Array]
    reduce: Callable[..., jax.Array]
    star: Callable[[jax.Array], jax.Array]
    idempotent: bool
    dtype: np.dtype
    dot: BinaryFn | None = None

    def __repr__(self) -> str:
        return f"Semiring({self.name!r})"


# A semiring has no array leaves: jit/vmap/grad treat it as static configuration.
jax.tree_util.register_static(Semiring)


class FixpointResult(NamedTuple):
    """Result of :func:`fixpoint` (unpacks as ``x, converged, iterations``).

    Attributes:
      x: ``[N, *F]`` the last iterate (the fixpoint when ``converged``).
      converged: ``bool[]`` whether the last step changed nothing (within ``tol``).
      iterations: ``int32[]`` how many steps ``x ← x0 ⊕ spmv(x)`` ran.
    """

    x: jax.Array  # [N, *F]
    converged: jax.Array  # bool[]
    iterations: jax.Array  # int32[]


# -- the five semirings ----------------------------------------------------------------------

def _reduce_with_initial(fn: Callable[..., jax.Array], initial: float) -> Callable[..., jax.Array]:
    def reduce(x: jax.Array, axis: Axis = None) -> jax.Array:
        return fn(x, axis=axis, initial=initial)

    return reduce


def _annihilating_add(zero: float) -> BinaryFn:
    """``⊗ = +`` on the extended reals where ``zero`` (an infinity) absorbs the other infinity.

    Plain ``a + b`` gives NaN for ``inf + (-inf)``; in a semiring ``zero ⊗ a = zero`` for every
    ``a``, including the opposite infinity that :attr:`Semiring.star` returns on a divergent cycle.
    """

    def mul(a: jax.Array, b: jax.Array) -> jax.Array:
        a = jnp.asarray(a)
        b = jnp.asarray(b)
        return jnp.where((a == zero) | (b == zero), zero, a + b).astype(jnp.result_type(a, b))

    return mul


def _real_star(a: jax.Array) -> jax.Array:
    return 1.0 / (1.0 - a)


def _tropical_star(a: jax.Array) -> jax.Array:
    # min(0, a, 2a, ...) is 0 for a >= 0 and -inf on a negative cycle.
    return jnp.where(a >= 0, 0.0, -jnp.inf).astype(jnp.result_type(a))


def _maxplus_star(a: jax.Array) -> jax.Array:
    return jnp.where(a <= 0, 0.0, jnp.inf).astype(jnp.result_type(a))


def _boolean_star(a: jax.Array) -> jax.Array:
    return jnp.ones(jnp.shape(a), bool)


def _boolean_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    # 0/1 products are exact in any float format and a sum of non-negative terms never rounds
    # to zero, so a float matmul (tensor cores on GPU) decides "any path" exactly.
    return jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32)) > 0


def _log_add(a: jax.Array, b: jax.Array) -> jax.Array:
    """``log(exp(a) + exp(b))`` whose gradient is 0 (not NaN) where both are ``-inf``."""
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    both_zero = (a == -jnp.inf) & (b == -jnp.inf)
    safe = jnp.logaddexp(jnp.where(both_zero, 0.0, a), jnp.where(both_zero, 0.0, b))
    return jnp.where(both_zero, -jnp.inf, safe).astype(safe.dtype)


def _log_from_sum(s: jax.Array, shift: jax.Array) -> jax.Array:
    # log(s) + shift, with log(0) = -inf and no NaN in the gradient where s == 0.
    positive = s > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, s, 1.0)) + shift, -jnp.inf)


def _log_reduce(x: jax.Array, axis: Axis = None) -> jax.Array:
    """``logsumexp`` over ``axis``; ``-inf`` for an empty or all ``-inf`` slice, NaN-free grads."""
    x = jnp.asarray(x)
    shift = jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf)
    shift = lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    s = jnp.sum(jnp.exp(x - shift), axis=axis, keepdims=True)
    out = _log_from_sum(s, shift)
    if axis is None:
        return out.reshape(())
    return jnp.squeeze(out, axis=axis)


def _segment_logsumexp(data: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """``logsumexp`` per segment (``-inf`` for an empty segment), as jraph's segment ops."""
    shift = jax.ops.segment_max(data, segment_ids, num_segments)
    shift = lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    gathered = shift.at[segment_ids].get(mode="fill", fill_value=0.0)
    s = jax.ops.segment_sum(jnp.exp(data - gathered), segment_ids, num_segments)
    return _log_from_sum(s, shift)


_LN_HALF = float(np.log(0.5))


def _log_star(a: jax.Array) -> jax.Array:
    """``-log(1 - exp(a))`` for ``a < 0`` (the sum of ``exp(k a)``), ``+inf`` for ``a >= 0``."""
    a = jnp.asarray(a)
    # Each branch only ever sees inputs where it is finite, so unselected branches cannot put
    # NaN into the gradient.
    near = (a < 0) & (a > _LN_HALF)
    far = a <= _LN_HALF
    near_val = -jnp.log(-jnp.expm1(jnp.where(near, a, -1.0)))
    far_val = -jnp.log1p(-jnp.exp(jnp.where(far, a, -1.0)))
    return jnp.where(near, near_val, jnp.where(far, far_val, jnp.inf)).astype(near_val.dtype)


REAL = Semiring(
    name="real",
    add=jnp.add,
    mul=jnp.multiply,
    zero=0.0,
    one=1.0,
    segment_reduce=jax.ops.segment_sum,
    reduce=jnp.sum,
    star=_real_star,
    idempotent=False,
    dtype=np.dtype("float32"),
    dot=jnp.matmul,
)
"""``(+, *)`` on the reals: path sums, ``closure(A) = inv(I - A)`` for spectral radius < 1."""

TROPICAL = Semiring(
    name="tropical",
    add=jnp.minimum,
    mul=_annihilating_add(float("inf")),
    zero=float("inf"),
    one=0.0,
    segment_reduce=jax.ops.segment_min,
    reduce=_reduce_with_initial(jnp.min, float("inf")),
    star=_tropical_star,
    idempotent=True,
    dtype=np.dtype("float32"),
)
"""``(min, +)``: shortest paths (``+inf`` = no edge; ``-inf`` on a negative cycle)."""

MAXPLUS = Semiring(
    name="maxplus",
    add=jnp.maximum,
    mul=_annihilating_add(float("-inf")),
    zero=float("-inf"),
    one=0.0,
    segment_reduce=jax.ops.segment_max,
    reduce=_reduce_with_initial(jnp.max, float("-inf")),
    star=_maxplus_star,
    idempotent=True,
    dtype=np.dtype("float32"),
)
"""``(max, +)``: longest / critical paths (``-inf`` = no edge; ``+inf`` on a positive cycle)."""

BOOLEAN = Semiring(
    name="boolean",
    add=jnp.logical_or,
    mul=jnp.logical_and,
    zero=False,
    one=True,
    segment_reduce=jax.ops.segment_max,
    reduce=jnp.any,
    star=_boolean_star,
    idempotent=True,
    dtype=np.dtype("bool"),
    dot=_boolean_dot,
)
"""``(or, and)``: reachability and transitive closure."""

LOG = Semiring(
    name="log",
    add=_log_add,
    mul=_annihilating_add(float("-inf")),
    zero=float("-inf"),
    one=0.0,
    segment_reduce=_segment_logsumexp,
    reduce=_log_reduce,
    star=_log_star,
    idempotent=False,
    dtype=np.dtype("float32"),
)
"""``(logaddexp, +)``: ``log Σ exp`` over paths, a differentiable soft maximum (use negated
costs over a temperature for soft shortest paths)."""

SEMIRINGS: Mapping[str, Semiring] = MappingProxyType(
    {s.name: s for s in (REAL, TROPICAL, MAXPLUS, BOOLEAN, LOG)}
)
"""The built-in semirings by name: ``SEMIRINGS["tropical"] is TROPICAL``."""


# -- validation (host side, at trace time) ---------------------------------------------------

def _check_semiring(sr: Any) -> Semiring:
    if not isinstance(sr, Semiring):
        hint = ""
        if isinstance(sr, str):
            hint = f"; for a name use mm.semiring.SEMIRINGS[{sr!r}]"
        raise UnknownSemiringError(
            f"expected a mm.semiring.Semiring (REAL, TROPICAL, MAXPLUS, BOOLEAN, LOG or your own),"
            f" got {type(sr).__name__} {sr!r}{hint}"
        )
    try:
        hash(sr)
    except TypeError as err:
        raise UnknownSemiringError(
            f"semiring {sr.name!r} has an unhashable field; every field must be hashable ({err})"
        ) from None
    return sr


def _operand(sr: Semiring, x: Any, what: str) -> jax.Array:
    """``x`` as an array of a dtype ``sr`` works on (integers are cast to ``sr.dtype``)."""
    x = jnp.asarray(x)
    want = np.dtype(sr.dtype)
    got = np.dtype(x.dtype)
    if want == np.bool_:
        if got != np.bool_:
            raise DTypeError(f"{sr.name} semiring: {what} must be bool, got {got} "
                             "(convert with `x != 0` first)")
        return x
    if got == np.bool_:
        raise DTypeError(f"{sr.name} semiring: {what} is bool; cast it to numbers yourself, "
                         f"using {sr.zero!r} for 'no edge' and {sr.one!r} for 'free edge'")
    if jnp.issubdtype(want, jnp.inexact):
        if jnp.issubdtype(got, jnp.integer):
            return x.astype(want)
        if jnp.issubdtype(got, jnp.floating):
            return x
    elif jnp.issubdtype(got, jnp.integer):
        return x
    raise DTypeError(f"{sr.name} semiring: {what} has dtype {got}; expected {want}-compatible")


def _check_matrix(x: jax.Array, what: str) -> None:
    if x.ndim != 2:
        raise ShapeError(f"{what} must be a matrix [rows, cols], got shape {tuple(x.shape)}")


def _check_size(n: Any, what: str) -> int:
    try:
        n = operator.index(n)
    except TypeError:
        raise ShapeError(f"{what} must be a Python int (static), got {type(n).__name__}") from None
    if n < 0:
        raise ShapeError(f"{what} must be >= 0, got {n}")
    return n


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_index_range(idx: jax.Array, upper: int, what: str) -> None:
    if not _is_concrete(idx) or idx.shape[0] == 0:
        return
    host = np.asarray(idx)
    bad = host[(host < PADDING) | (host >= upper)]
    if bad.size:
        raise IndexOutOfRangeError(
            f"{what} {bad[:8].tolist()} outside [-1, {upper}) (-1 marks a padding edge)"
        )


def _check_edges(sr: Semiring, senders: Any, receivers: Any, weights: Any, num_senders: int,
                 num_nodes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    senders = jnp.asarray(senders)
    receivers = jnp.asarray(receivers)
    for what, idx in (("senders", senders), ("receivers", receivers)):
        if idx.ndim != 1:
            raise ShapeError(f"{what} must be 1-D [E], got shape {tuple(idx.shape)}")
        if not jnp.issubdtype(idx.dtype, jnp.integer):
            raise DTypeError(f"{what} must be integers, got {idx.dtype}")
    if senders.shape != receivers.shape:
        raise ShapeError(f"senders {tuple(senders.shape)} and receivers "
                         f"{tuple(receivers.shape)} differ in length")
    weights = _operand(sr, weights, "weights")
    if weights.ndim < 1 or weights.shape[0] != senders.shape[0]:
        raise ShapeError(f"weights shape {tuple(weights.shape)} does not start with the number "
                         f"of edges E={senders.shape[0]}")
    _check_index_range(senders, num_senders, "senders")
    _check_index_range(receivers, num_nodes, "receivers")
    return senders.astype(jnp.int32), receivers.astype(jnp.int32), weights


def _check_features(weights: jax.Array, x: jax.Array) -> None:
    if x.ndim < 1:
        raise ShapeError(f"x must have a node axis [N, *F], got shape {tuple(x.shape)}")
    if weights.ndim != 1 and weights.shape[1:] != x.shape[1:]:
        raise ShapeError(f"weights shape {tuple(weights.shape)} must be [E] or [E, *F] with "
                         f"F = {tuple(x.shape[1:])} from x")


# -- dense helpers ---------------------------------------------------------------------------

def eye(sr: Semiring, n: int, dtype: Any = None) -> jax.Array:
    """The ``⊗``-identity matrix: ``one`` on the diagonal, ``zero`` elsewhere.

    Args:
      sr: the semiring.
      n: the size ``N``.
      dtype: result dtype; defaults to ``sr.dtype``.

    Returns:
      ``[N, N]``.

    >>> eye(TROPICAL, 2).tolist()
    [[0.0, inf], [inf, 0.0]]
    """
    sr = _check_semiring(sr)
    n = _check_size(n, "n")
    dtype = sr.dtype if dtype is None else dtype
    return jnp.where(jnp.eye(n, dtype=bool), sr.one, sr.zero).astype(dtype)


def adjacency(sr: Semiring, senders: Any, receivers: Any, weights: Any,
              num_nodes: int) -> jax.Array:
    """The dense matrix of an edge list: ``A[s, r] = ⊕`` of the weights of the edges ``s -> r``.

    Args:
      sr: the semiring.
      senders: ``int32[E]``, ``-1`` = padding edge.
      receivers: ``int32[E]``, ``-1`` = padding edge.
      weights: ``[E]``.
      num_nodes: ``N``.

    Returns:
      ``[N, N]``, ``sr.zero`` where there is no edge; parallel edges are ``⊕``-combined.

    Raises:
      ShapeError: mismatched lengths or non-1-D inputs.
      IndexOutOfRangeError: an endpoint outside ``[-1, N)``.
    """
    sr = _check_semiring(sr)
    num_nodes = _check_size(num_nodes, "num_nodes")
    senders, receivers, weights = _check_edges(sr, senders, receivers, weights, num_nodes,
                                               num_nodes)
    if weights.ndim != 1:
        raise ShapeError(f"adjacency needs scalar weights [E], got {tuple(weights.shape)}")
    return _adjacency_jit(sr, senders, receivers, weights, num_nodes)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _adjacency_jit(sr: Semiring, senders: jax.Array, receivers: jax.Array, weights: jax.Array,
                   num_nodes: int) -> jax.Array:
    valid = (senders >= 0) & (receivers >= 0)
    cells = num_nodes * num_nodes
    flat = jnp.where(valid, senders * num_nodes + receivers, cells)
    return sr.segment_reduce(weights, flat, cells).reshape(num_nodes, num_nodes)


# -- matmul ----------------------------------------------------------------------------------

def _check_matmul(sr: Any, a: Any, b: Any) -> tuple[Semiring, jax.Array, jax.Array]:
    sr = _check_semiring(sr)
    a = _operand(sr, a, "A")
    b = _operand(sr, b, "B")
    _check_matrix(a, "A")
    _check_matrix(b, "B")
    if a.shape[1] != b.shape[0]:
        raise ShapeError(f"matmul inner dimensions differ: A {tuple(a.shape)} x B "
                         f"{tuple(b.shape)}")
    return sr, a, b


def matmul_reference(sr: Semiring, a: Any, b: Any) -> jax.Array:
    """``C[i, j] = ⊕_k A[i, k] ⊗ B[k, j]`` by plain broadcast-and-reduce (the test oracle).

    Pure jnp with an ``[n, k, m]`` intermediate, so use it on small inputs; it is what faster
    implementations (:func:`matmul`, Pallas kernels) are checked against.

    Args:
      sr: the semiring.
      a: ``[n, k]``.
      b: ``[k, m]``.

    Returns:
      ``[n, m]``.

    Raises:
      ShapeError: not matrices, or ``A.shape[1] != B.shape[0]``.
    """
    sr, a, b = _check_matmul(sr, a, b)
    return sr.reduce(sr.mul(a[:, :, None], b[None, :, :]), axis=1)


def matmul(sr: Semiring, a: Any, b: Any, *, block_rows: int | None = None) -> jax.Array:
    """Semiring matrix product ``C[i, j] = ⊕_k A[i, k] ⊗ B[k, j]``.

    Uses ``sr.dot`` when the semiring has one (``jnp.matmul`` for REAL, a 0/1 float matmul for
    BOOLEAN). Otherwise it broadcasts and reduces one block of rows at a time
    (``lax.map`` over row blocks), so the intermediate holds ``block_rows * k * m`` elements
    instead of ``n * k * m``. Differentiable (``jax.grad`` follows the ⊕/⊗ functions).

    Args:
      sr: the semiring.
      a: ``[n, k]``.
      b: ``[k, m]``.
      block_rows: rows per block of the tiled path; default: as many as keep the intermediate
        at about 4 Mi elements.

    Returns:
      ``[n, m]``.

    Raises:
      ShapeError: not matrices, or ``A.shape[1] != B.shape[0]``.
      SemiringError: ``block_rows < 1``.

    >>> matmul(TROPICAL, jnp.array([[0., 2.]]), jnp.array([[5.], [1.]])).tolist()
    [[3.0]]
    """
    sr, a, b = _check_matmul(sr, a, b)
    if block_rows is not None:
        block_rows = operator.index(block_rows)
        if block_rows < 1:
            raise SemiringError(f"block_rows must be >= 1, got {block_rows}")
    return _matmul_jit(sr, a, b, block_rows)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _matmul_jit(sr: Semiring, a: jax.Array, b: jax.Array, block_rows: int | None) -> jax.Array:
    if (sr.name in ("tropical", "maxplus") and a.dtype == b.dtype
            and jnp.issubdtype(a.dtype, jnp.floating) and a.size and b.size):
        # The tiled Pallas kernel (O(n^2) memory) on GPU; the blocked XLA path elsewhere.
        return kernels.semiring_matmul(
            sr.name, a, b, xla=functools.partial(_matmul_blocked, sr, block_rows))
    return _matmul_blocked(sr, block_rows, a, b)


def _matmul_blocked(sr: Semiring, block_rows: int | None, a: jax.Array, b: jax.Array
                    ) -> jax.Array:
    n, k = a.shape
    m = b.shape[1]
    if sr.dot is not None:
        return sr.dot(a, b)
    dtype = jnp.result_type(a, b)
    if n == 0 or m == 0 or k == 0:
        return jnp.full((n, m), sr.zero, dtype)
    if block_rows is None:
        block_rows = _TILE_ELEMENTS // (k * m)
    block_rows = max(1, min(n, block_rows))

    def row(a_row: jax.Array) -> jax.Array:  # [k] -> [m]
        return sr.reduce(sr.mul(a_row[:, None], b), axis=0)

    return lax.map(row, a, batch_size=block_rows).astype(dtype)


# -- sparse: edge lists ----------------------------------------------------------------------

def _spmv_core(sr: Semiring, senders: jax.Array, receivers: jax.Array, weights: jax.Array,
               x: jax.Array, num_nodes: int) -> jax.Array:
    valid = (senders >= 0) & (receivers >= 0)
    src = jnp.where(valid, senders, 0)
    # Padding edges go to segment num_nodes, which the segment reduction drops.
    dst = jnp.where(valid, receivers, num_nodes)
    w = weights.reshape(weights.shape + (1,) * (x.ndim - weights.ndim))
    messages = sr.mul(w, x[src])
    return sr.segment_reduce(messages, dst, num_nodes).astype(messages.dtype)


def _debug_check_edges(senders: jax.Array, receivers: jax.Array, num_senders: int,
                       num_nodes: int) -> None:
    checkify.debug_check(
        jnp.all((senders >= PADDING) & (senders < num_senders)
                & (receivers >= PADDING) & (receivers < num_nodes)),
        INDEX_CHECK_TAG + ": edge endpoint outside [-1, {n}) in an edge list",
        n=jnp.int32(num_nodes),
    )


@functools.partial(jax.jit, static_argnums=(0, 5))
def _spmv_jit(sr: Semiring, senders: jax.Array, receivers: jax.Array, weights: jax.Array,
              x: jax.Array, num_nodes: int) -> jax.Array:
    _debug_check_edges(senders, receivers, x.shape[0], num_nodes)
    return _spmv_core(sr, senders, receivers, weights, x, num_nodes)


def spmv(sr: Semiring, senders: Any, receivers: Any, weights: Any, x: Any,
         num_nodes: int) -> jax.Array:
    """Message passing: ``y[r] = ⊕_{e: receivers[e] = r} weights[e] ⊗ x[senders[e]]``.

    The ``⊗`` is the edge map and ``⊕`` a segment reduction over receivers, as in jraph. A node
    with no incoming edge gets ``sr.zero``; an edge whose sender or receiver is ``-1`` is padding
    and contributes nothing. With a dense ``A = adjacency(...)`` and a commutative ``⊗`` this is
    ``y = x ⊗ A`` (a row vector times the matrix).

    Args:
      sr: the semiring.
      senders: ``int32[E]`` in ``[-1, M)``.
      receivers: ``int32[E]`` in ``[-1, N)``.
      weights: ``[E]`` (broadcast over features) or ``[E, *F]``.
      x: ``[M, *F]`` node values (usually ``M == N``).
      num_nodes: ``N``, the number of output nodes (static).

    Returns:
      ``y: [N, *F]``.

    Raises:
      ShapeError: lengths of senders/receivers/weights differ, or feature shapes disagree.
      DTypeError: non-integer indices, or values of a dtype the semiring cannot use.
      IndexOutOfRangeError: an endpoint out of range (checked on the host for concrete indices;
        inside ``jit`` use ``mm.checked``).

    >>> spmv(TROPICAL, jnp.array([0, 1, -1]), jnp.array([1, 2, -1]), jnp.array([2., 3., 9.]),
    ...      jnp.array([0., 10., 20.]), 3).tolist()
    [inf, 2.0, 13.0]
    """
    sr = _check_semiring(sr)
    num_nodes = _check_size(num_nodes, "num_nodes")
    x = _operand(sr, x, "x")
    if x.ndim < 1:
        raise ShapeError(f"x must have a node axis [N, *F], got shape {tuple(x.shape)}")
    senders, receivers, weights = _check_edges(sr, senders, receivers, weights, x.shape[0],
                                               num_nodes)
    _check_features(weights, x)
    return _spmv_jit(sr, senders, receivers, weights, x, num_nodes)


# -- closure ---------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0,))
def _closure_jit(sr: Semiring, a: jax.Array) -> jax.Array:
    n = a.shape[0]
    if n == 0:
        return a

    def eliminate(k: jax.Array, d: jax.Array) -> jax.Array:
        col = lax.dynamic_index_in_dim(d, k, axis=1, keepdims=False)  # [N]: paths i -> k
        row = lax.dynamic_index_in_dim(d, k, axis=0, keepdims=False)  # [N]: paths k -> j
        through_k = sr.mul(col, sr.star(row[k]))  # i -> k, then any number of k -> k cycles
        return sr.add(d, sr.mul(through_k[:, None], row[None, :]))

    d = lax.fori_loop(0, n, eliminate, a)
    identity = jnp.where(jnp.eye(n, dtype=bool), sr.one, sr.zero).astype(d.dtype)
    return sr.add(d, identity).astype(d.dtype)


def closure(sr: Semiring, a: Any) -> jax.Array:
    """The Kleene star ``A* = I ⊕ A ⊕ A² ⊕ ...``: the ``⊕`` over all paths, of every length.

    ``A[i, j]`` is the weight of edge ``i -> j`` and ``sr.zero`` means no edge; ``A*[i, j]`` is
    the ``⊕`` over all paths from ``i`` to ``j`` of the ``⊗`` of their edge weights, the empty
    path included (so the diagonal is ``⊕ sr.one``). Computed by the Floyd-Warshall-Kleene
    elimination in a ``lax.fori_loop`` with ``O(N²)`` memory and ``O(N³)`` work::

        for k in range(N):  D ← D ⊕ D[:, k] ⊗ star(D[k, k]) ⊗ D[k, :]
        A* = D ⊕ I

    TROPICAL gives all-pairs shortest paths (``-inf`` where a negative cycle is reachable),
    MAXPLUS longest paths (``+inf`` through a positive cycle), BOOLEAN the reflexive transitive
    closure, REAL ``inv(I - A)`` (the path sum when the spectral radius of ``A`` is below 1; in
    general a Gauss-Jordan inverse without pivoting), LOG ``log Σ_paths exp(weight)`` — soft
    shortest paths that ``jax.grad`` differentiates.

    Reverse-mode memory: the ``fori_loop`` keeps what each step needs for the backward pass,
    ``O(N²)`` for REAL and up to ``O(N³)`` for LOG/TROPICAL/MAXPLUS.

    Args:
      sr: the semiring.
      a: ``[N, N]`` edge weights.

    Returns:
      ``[N, N]``.

    Raises:
      ShapeError: ``a`` is not a square matrix.

    >>> closure(BOOLEAN, jnp.array([[False, True], [False, False]])).tolist()
    [[True, True], [False, True]]
    """
    sr = _check_semiring(sr)
    a = _operand(sr, a, "A")
    _check_matrix(a, "A")
    if a.shape[0] != a.shape[1]:
        raise ShapeError(f"closure needs a square matrix, got shape {tuple(a.shape)}")
    return _closure_jit(sr, a)


# -- fixpoint --------------------------------------------------------------------------------

def _unchanged(new: jax.Array, old: jax.Array, tol: float | None) -> jax.Array:
    if tol is None:
        return jnp.all(new == old)
    # Equal entries (infinities included) have no change; NaN never converges.
    change = jnp.where(new == old, 0.0, jnp.abs(new - old))
    return jnp.all(change <= tol)


def _iterate(step: Callable[[jax.Array], jax.Array], start: jax.Array, max_iter: int,
             tol: float | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Run ``x ← step(x)`` from ``start`` until unchanged (within ``tol``) or ``max_iter``."""

    def cond(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, done, it = carry
        return jnp.logical_not(done) & (it < max_iter)

    def body(carry: tuple[jax.Array, jax.Array, jax.Array]):
        x, _, it = carry
        new = step(x).astype(x.dtype)
        return new, _unchanged(new, x, tol), it + 1

    return lax.while_loop(cond, body, (start, jnp.bool_(False), jnp.int32(0)))


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _fixpoint_jit(sr: Semiring, senders: jax.Array, receivers: jax.Array, weights: jax.Array,
                  x0: jax.Array, num_nodes: int, max_iter: int,
                  tol: float | None) -> FixpointResult:
    _debug_check_edges(senders, receivers, num_nodes, num_nodes)

    def step_with(x0: jax.Array, weights: jax.Array) -> Callable[[jax.Array], jax.Array]:
        return lambda x: sr.add(x0, _spmv_core(sr, senders, receivers, weights, x, num_nodes))

    if not jnp.issubdtype(x0.dtype, jnp.inexact):
        return FixpointResult(*_iterate(step_with(x0, weights), x0, max_iter, tol))

    # The forward iteration runs on values cut from autodiff (a while_loop has no transpose);
    # custom_root then attaches the implicit-function derivative at the fixpoint it found.
    fixed_x0 = lax.stop_gradient(x0)
    x_star, done, it = _iterate(step_with(fixed_x0, lax.stop_gradient(weights)), fixed_x0,
                                max_iter, tol)

    def neumann(matvec: Callable[[jax.Array], jax.Array], b: jax.Array) -> jax.Array:
        # matvec(t) = J t - t (the residual linearised at the fixpoint); solve it = b by the
        # iteration t ← J t - b, which converges when the forward iteration does.
        return _iterate(lambda t: matvec(t) + t - b, -b, max_iter, tol)[0]

    def tangent_solve(g: Callable[[jax.Array], jax.Array], y: jax.Array) -> jax.Array:
        return lax.custom_linear_solve(g, y, solve=neumann, transpose_solve=neumann)

    step = step_with(x0, weights)
    x = lax.custom_root(lambda z: step(z) - z, x0, lambda _residual, _guess: x_star,
                        tangent_solve)
    return FixpointResult(x, done, it)


def fixpoint(sr: Semiring, senders: Any, receivers: Any, weights: Any, x0: Any, num_nodes: int,
             *, max_iter: int, tol: float | None = None) -> FixpointResult:
    """Iterate ``x ← x0 ⊕ spmv(sr, senders, receivers, weights, x)`` to a fixpoint.

    Starting from ``x = x0``, each step relaxes every edge once (Bellman-Ford as message
    passing), in a ``lax.while_loop`` that stops when a step changes nothing (``tol=None``: exact
    equality, reached in at most ``N`` steps by idempotent semirings on graphs without
    improving cycles) or changes no entry by more than ``tol``, or after ``max_iter`` steps.
    For a commutative ``⊗`` the fixpoint is ``x0 ⊗ A*`` with ``A = adjacency(...)``: with ``x0``
    ``one`` at a source and ``zero`` elsewhere, TROPICAL gives shortest distances from the
    source, BOOLEAN the reachable set, MAXPLUS longest (or, on a DAG, critical) paths, LOG/REAL
    soft path sums (pass ``tol`` for these: they converge geometrically).

    Differentiable for float semirings by the implicit function theorem (``lax.custom_root``):
    ``jax.grad``/``jax.jvp`` never unroll the loop; the tangent system ``t = J t + b`` is solved by
    the same iteration (same ``max_iter``/``tol``). Gradients assume the iteration converged.

    Args:
      sr: the semiring.
      senders: ``int32[E]``, ``-1`` = padding edge.
      receivers: ``int32[E]``, ``-1`` = padding edge.
      weights: ``[E]`` or ``[E, *F]``.
      x0: ``[N, *F]`` the initial values (also ``⊕``-ed into every step).
      num_nodes: ``N`` (static).
      max_iter: the most steps to run (static, ``>= 0``).
      tol: ``None`` for "unchanged", else converged when ``max |Δ| <= tol`` (static; not for
        BOOLEAN).

    Returns:
      :class:`FixpointResult` ``(x: [N, *F], converged: bool[], iterations: int32[])``.

    Raises:
      ShapeError: lengths differ, or ``x0`` is not ``[num_nodes, *F]``.
      IndexOutOfRangeError: an endpoint outside ``[-1, N)``.
      SemiringError: ``max_iter < 0``, ``tol < 0``, or ``tol`` with a bool semiring.

    >>> s, r = jnp.array([0, 1]), jnp.array([1, 2])
    >>> x, ok, steps = fixpoint(TROPICAL, s, r, jnp.array([1., 2.]),
    ...                         jnp.array([0., jnp.inf, jnp.inf]), 3, max_iter=10)
    >>> x.tolist(), bool(ok), int(steps)
    ([0.0, 1.0, 3.0], True, 3)
    """
    sr = _check_semiring(sr)
    num_nodes = _check_size(num_nodes, "num_nodes")
    try:
        max_iter = operator.index(max_iter)
    except TypeError:
        raise SemiringError(f"max_iter must be a Python int, got {type(max_iter).__name__}"
                            ) from None
    if max_iter < 0:
        raise SemiringError(f"max_iter must be >= 0, got {max_iter}")
    x0 = _operand(sr, x0, "x0")
    if tol is not None:
        if np.dtype(sr.dtype) == np.bool_ or x0.dtype == jnp.bool_:
            raise SemiringError(f"tol is meaningless for the bool semiring {sr.name!r}; "
                                "leave it None")
        tol = float(tol)
        if not tol >= 0:
            raise SemiringError(f"tol must be >= 0, got {tol}")
    if x0.ndim < 1 or x0.shape[0] != num_nodes:
        raise ShapeError(f"x0 must be [num_nodes={num_nodes}, *F], got {tuple(x0.shape)}")
    senders, receivers, weights = _check_edges(sr, senders, receivers, weights, num_nodes,
                                               num_nodes)
    _check_features(weights, x0)
    dtype = jnp.result_type(weights, x0)
    return _fixpoint_jit(sr, senders, receivers, weights.astype(dtype), x0.astype(dtype),
                         num_nodes, max_iter, tol)
