"""Deltas: pure, jittable updates of one page, and the law ``state x delta -> state'``.

A :class:`Delta` is a pytree whose page name, kind, op and count are static (part of the treedef)
and whose arrays are leaves, so deltas pass through ``jit``/``vmap``/``grad``/``lax.scan`` and
deltas of equal structure stack.

Kinds:

* ``rows``: ``indices: int32[k]`` on axis 0 and ``values: [k, *page.shape[1:]]``. Index ``-1``
  is padding (no update), so a delta has a fixed capacity ``k``.
* ``masked``: ``mask: bool[*page.shape]`` and ``values: [*page.shape]``.
* ``full``: ``values: [*page.shape]`` combined with the whole page.

Ops: ``set add mul min max or and``. ``or``/``and`` need a bool or integer page; ``add``/``mul``
are not defined on bool pages.

Duplicate row indices inside one delta are resolved deterministically, never by XLA's scatter
ordering (undefined for duplicates and nondeterministic on GPU):

* ``set`` keeps the last occurrence: the winning slot of each row is found first (a stable
  sort for small deltas, an exact scatter-max of slot positions for large ones) and each row is
  then written once.
* Float ``add/mul/min/max`` and integer ``or/and`` combine duplicates left to right with a
  stable sort and a segmented Hillis-Steele scan (``segmented_scan`` in ``core/_merge.py``,
  a fixed tree per run), then write each row once.
* Integer ``add/mul/min/max`` and bool ``min/max/or/and`` are exact, commutative and
  associative, so the scatter combiner gives the same bits in any order and is used directly.
* Rows known to be distinct (:attr:`Delta.unique`, set for sorted distinct host indices)
  skip the sort: one gather-combine-scatter, the same bits.

The merge itself lives in ``core/_merge.py``, shardings in ``core/_sharding.py`` and the op
table in ``mmsb_jax/_ops.py``; this module holds the Delta, its validation, ``apply``,
``apply_batch``, ``compose`` and ``checked``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from mmsb_jax._ops import (
    INDEX_CHECK_TAG,
    OPS,
    PADDING,
    check_op_dtype,
    identity_value,
    op_fn,
)
from mmsb_jax.core._merge import (
    _checks_traced,
    merge_rows,
    merge_rows_sharded,
    resolve_rows,
)
from mmsb_jax.core._sharding import keep_sharding, page_sharding, row_sharding, row_sharding_of
from mmsb_jax.core.pages import PageMap, State
from mmsb_jax.errors import (
    ComposeError,
    DTypeError,
    IndexOutOfRangeError,
    MaskError,
    OpError,
    ShapeError,
    UnknownPageError,
)

__all__ = [
    "INDEX_CHECK_TAG",
    "KINDS",
    "OPS",
    "PADDING",
    "UNIQUE_CHECK_MIN",
    "Delta",
    "apply",
    "apply_batch",
    "apply_page",
    "check_op_dtype",
    "checked",
    "compose",
    "identity_value",
    "op_fn",
    "validate",
    "validate_deltas",
]

KINDS: tuple[str, ...] = ("rows", "masked", "full")
#: Host row indices of at least this many slots are checked for being sorted and unique (an
#: O(k) host pass that lets the merge skip its O(k log k) device sort); shorter ones are not.
UNIQUE_CHECK_MIN: int = 64
_Tracer = jax.core.Tracer
#: A delta leaf: a ``jax.Array``, a tracer or a host ``numpy`` array (``None`` where the kind
#: has no such leaf). Typed ``Any``: jnp and numpy functions accept all three.
Leaf = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Delta:
    """An update of one page. Build with :meth:`rows`, :meth:`masked` or :meth:`full`.

    Attributes:
      page: the page name (static).
      kind: ``"rows" | "masked" | "full"`` (static).
      op: one of :data:`OPS` (static).
      count: how many user deltas this delta stands for (static; ``compose`` adds them). Applying
        it advances the page's epoch by ``count``.
      unique: (static) the in-range row indices are known to be distinct. :meth:`rows` sets it
        for host indices of at least :data:`UNIQUE_CHECK_MIN` slots whose in-range entries are
        strictly increasing; the merge then scatters directly instead of sorting (same bits).
      indices: ``int32[k]`` row indices for ``rows`` (``-1`` = padding), else ``None``.
      mask: ``bool[*page.shape]`` for ``masked``, else ``None``.
      values: ``[k, *row]`` for ``rows``, ``[*page.shape]`` otherwise.
    """

    indices: Leaf
    mask: Leaf
    values: Leaf
    page: str = dataclasses.field(metadata=dict(static=True), default="")
    kind: str = dataclasses.field(metadata=dict(static=True), default="full")
    op: str = dataclasses.field(metadata=dict(static=True), default="set")
    count: int = dataclasses.field(metadata=dict(static=True), default=1)
    unique: bool = dataclasses.field(metadata=dict(static=True), default=False)

    # -- constructors ---------------------------------------------------------------------
    @staticmethod
    def rows(page: str, indices: Any, values: Any, op: str = "set") -> Delta:
        """Update rows ``indices`` (axis 0) of ``page`` with ``values``.

        Args:
          page: page name.
          indices: ``int[k]``; ``-1`` marks a padding slot that updates nothing.
          values: ``[k, *page.shape[1:]]`` in the page's dtype.
          op: one of :data:`OPS`. Duplicates: ``set`` keeps the last, others combine in order.
        """
        _check_op_name(op)
        if type(indices) is np.ndarray and indices.dtype is _INT32 and indices.ndim == 1:
            idx = indices  # the common host case: nothing to convert or range-check
        else:
            idx = _host_or_device_indices(page, indices)
        vals = _leaf(values)
        if vals.ndim < 1 or vals.shape[0] != idx.shape[0]:
            raise ShapeError(
                f"rows delta on {page!r}: values shape {vals.shape} does not start with "
                f"k={idx.shape[0]} (one row of values per index)"
            )
        unique = (idx.shape[0] >= UNIQUE_CHECK_MIN and isinstance(idx, np.ndarray)
                  and _sorted_unique(idx))
        return Delta._new(idx, None, vals, page, "rows", op, 1, unique)

    @staticmethod
    def masked(page: str, mask: Any, values: Any, op: str = "set") -> Delta:
        """Update the elements of ``page`` where ``mask`` is True.

        Args:
          page: page name.
          mask: ``bool[*page.shape]``.
          values: ``[*page.shape]`` (entries where ``mask`` is False are ignored).
          op: one of :data:`OPS`.
        """
        _check_op_name(op)
        m = _leaf(mask)
        if m.dtype != np.bool_:
            raise MaskError(f"masked delta on {page!r}: mask must be bool, got {m.dtype}")
        vals = _leaf(values)
        if vals.shape != m.shape:
            raise ShapeError(
                f"masked delta on {page!r}: values shape {vals.shape} != mask shape {m.shape}"
            )
        return Delta._new(None, m, vals, page, "masked", op, 1, False)

    @staticmethod
    def full(page: str, values: Any, op: str = "set") -> Delta:
        """Combine the whole page with ``values: [*page.shape]`` (``set`` replaces it)."""
        _check_op_name(op)
        return Delta._new(None, None, _leaf(values), page, "full", op, 1, False)

    @classmethod
    def _new(cls, indices: Leaf, mask: Leaf, values: Leaf, page: str, kind: str, op: str,
             count: int, unique: bool) -> Delta:
        """The constructor without the dataclass ``__init__`` (one dict update instead of
        eight frozen ``__setattr__`` calls: the commit hot path builds a Delta per commit).
        Arguments must already be checked, as the public constructors do."""
        out = object.__new__(cls)
        out.__dict__.update(indices=indices, mask=mask, values=values, page=page, kind=kind,
                            op=op, count=count, unique=unique)
        return out

    # -- conveniences ---------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Number of row slots of a ``rows`` delta (``k``); 1 for other kinds."""
        return int(self.indices.shape[0]) if self.kind == "rows" else 1

    @property
    def dtype(self) -> np.dtype:
        """dtype of the values."""
        return np.dtype(self.values.dtype)

    def with_count(self, count: int) -> Delta:
        """A copy standing for ``count`` user deltas."""
        return dataclasses.replace(self, count=int(count))

    def __repr__(self) -> str:
        shape = tuple(self.values.shape)
        return (f"Delta.{self.kind}({self.page!r}, op={self.op!r}, values={self.dtype}{list(shape)}"
                + (f", count={self.count}" if self.count != 1 else "") + ")")


def _host_or_device_indices(page: str, indices: Any) -> Any:
    """Row indices as ``int32[k]``: device arrays and tracers as they are (cast if needed),
    anything else as a host numpy array, range-checked before the cast.

    Raises:
      IndexOutOfRangeError: host indices outside the int32 range. ShapeError: not 1-D.
      DTypeError: not integers.
    """
    idx = indices if isinstance(indices, _ARRAYS) else np.asarray(indices)
    if isinstance(idx, np.ndarray) and idx.dtype.kind in "iu" and idx.size and (
            idx.dtype.itemsize > 4 or idx.dtype == np.uint32) and (
            idx.min() < np.iinfo(np.int32).min or idx.max() > np.iinfo(np.int32).max):
        # Checked before the int32 cast, which would wrap 2**32 + 3 to row 3.
        raise IndexOutOfRangeError(
            f"rows delta on {page!r}: indices outside the int32 range "
            f"(min {idx.min()}, max {idx.max()})")
    if idx.ndim != 1:
        raise ShapeError(f"rows delta on {page!r}: indices must be 1-D, got shape {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise DTypeError(f"rows delta on {page!r}: indices must be integers, got {idx.dtype}")
    return idx if idx.dtype == np.int32 else idx.astype(np.int32)


_INT32 = np.dtype(np.int32)
_ARRAYS = (jax.Array, _Tracer)


def _leaf(x: Any) -> Any:
    """A delta leaf without device work: JAX arrays and tracers as they are, anything else as
    a host numpy array in JAX's canonical dtype (``float64 -> float32`` unless x64 is on).

    Host leaves go to the device with the jitted apply that consumes them, in the same
    dispatch, so building a delta from numpy costs no separate transfer.
    """
    if type(x) is np.ndarray:
        arr = x
    elif isinstance(x, _ARRAYS):
        return x
    else:
        arr = np.asarray(x)
    want = _CANONICAL.get(arr.dtype)
    if want is None:
        want = _CANONICAL[arr.dtype] = np.dtype(jax.dtypes.canonicalize_dtype(arr.dtype))
    return arr if want == arr.dtype else arr.astype(want)


_CANONICAL: dict[np.dtype, np.dtype] = {}


def _sorted_unique(idx: np.ndarray) -> bool:
    """Whether the in-range (non-padding) entries of host indices strictly increase."""
    valid = idx[idx >= 0] if idx[-1] < 0 or idx[0] < 0 else idx
    return bool(valid.shape[0] < 2 or (valid[1:] > valid[:-1]).all())


def _check_op_name(op: str) -> None:
    if op not in OPS:
        raise OpError(f"unknown op {op!r}; expected one of {OPS}")


# -- validation (host side, before anything changes) ----------------------------------------

def _is_concrete(x: Any) -> bool:
    return not isinstance(x, _Tracer)


def validate(delta: Delta, page: Any, *, check_values: bool = True) -> None:
    """Check ``delta`` against a page (an array, ShapeDtypeStruct or PageSpec-like object).

    Raises a typed :mod:`mmsb_jax.errors` exception for a wrong dtype or shape, an op not valid
    for the dtype, a bad mask, or (when the indices are concrete, i.e. not traced) a row index
    outside ``[-1, rows)``. Traced indices are checked inside ``mm.checked``.
    """
    if not isinstance(delta, Delta):
        raise TypeError(f"expected a Delta, got {type(delta).__name__}")
    name = delta.page
    shape = tuple(page.shape)
    dtype = jnp.dtype(page.dtype)
    check_op_dtype(delta.op, dtype, name)
    if delta.kind not in KINDS:
        raise OpError(f"unknown delta kind {delta.kind!r}")
    if check_values and jnp.dtype(delta.values.dtype) != dtype:
        raise DTypeError(
            f"delta on {name!r} has {delta.values.dtype} values; the page is {dtype} "
            f"(cast with .astype({str(dtype)!r}))"
        )
    if delta.kind == "rows":
        if len(shape) < 1:
            raise ShapeError(f"rows delta on {name!r}: page is a scalar; use Delta.full")
        want = (delta.indices.shape[0], *shape[1:])
        if check_values and tuple(delta.values.shape) != want:
            raise ShapeError(f"rows delta on {name!r}: values shape {tuple(delta.values.shape)}"
                             f" != {want} for page shape {shape}")
        if _is_concrete(delta.indices) and delta.indices.shape[0]:
            idx = np.asarray(delta.indices)
            lo, hi = int(idx.min()), int(idx.max())
            if lo < PADDING or hi >= shape[0]:
                bad = idx[(idx < PADDING) | (idx >= shape[0])]
                raise IndexOutOfRangeError(
                    f"rows delta on {name!r}: indices {bad[:8].tolist()} outside "
                    f"[-1, {shape[0]}) (-1 is padding)"
                )
    elif delta.kind == "masked":
        if tuple(delta.mask.shape) != shape:
            raise MaskError(f"masked delta on {name!r}: mask shape {tuple(delta.mask.shape)} "
                            f"!= page shape {shape}")
        if check_values and tuple(delta.values.shape) != shape:
            raise ShapeError(f"masked delta on {name!r}: values shape "
                             f"{tuple(delta.values.shape)} != page shape {shape}")
    elif check_values and tuple(delta.values.shape) != shape:
        raise ShapeError(f"full delta on {name!r}: values shape {tuple(delta.values.shape)} "
                         f"!= page shape {shape}")


def validate_deltas(state: State, deltas: Sequence[Delta]) -> None:
    """Validate every delta against ``state`` (typed errors; see :func:`validate`).

    The structural checks (op, kind, dtypes, shapes) depend only on the delta's static
    structure and the page's shape and dtype, so they run once per structure and are
    remembered; the row-range check of concrete indices runs on every call.
    """
    pages = state.pages
    for d in deltas:
        if not isinstance(d, Delta):
            raise TypeError(f"expected a Delta, got {type(d).__name__}")
        page = pages.get(d.page)
        if page is None:
            raise UnknownPageError(d.page, tuple(pages))
        key = (d.page, d.kind, d.op, page.shape, page.dtype, d.values.shape, d.values.dtype,
               None if d.mask is None else (d.mask.shape, d.mask.dtype),
               None if d.indices is None else d.indices.shape)
        if key not in _VALID_STRUCTURES:
            validate(d, page)
            if len(_VALID_STRUCTURES) >= _MAX_VALID_STRUCTURES:
                _VALID_STRUCTURES.clear()
            _VALID_STRUCTURES.add(key)
        elif d.kind == "rows" and not _rows_in_range(d.indices, page.shape[0]):
            validate(d, page)  # raises IndexOutOfRangeError with the offending indices


_VALID_STRUCTURES: set[tuple] = set()
_MAX_VALID_STRUCTURES = 4096


def _rows_in_range(indices: Any, n: int) -> bool:
    """Whether concrete ``indices`` lie in ``[-1, n)`` (traced ones: checked under jit)."""
    if type(indices) is np.ndarray:
        host = indices
    elif isinstance(indices, _Tracer):
        return True
    else:
        host = np.asarray(indices)
    if not host.shape[0]:
        return True
    if host.shape[0] <= 64:  # Python's min/max beat two numpy reductions on short arrays
        values = host.tolist()
        return min(values) >= PADDING and max(values) < n
    return bool(host.min() >= PADDING) and bool(host.max() < n)


# -- the merge ------------------------------------------------------------------------------


def apply_page(page: jax.Array, delta: Delta) -> jax.Array:
    """Apply ``delta`` to one page array (no validation, no epoch): ``page x delta -> page'``.

    Shapes: ``page: [*S]``; the delta as documented on :class:`Delta`. Pure and jittable.
    """
    fn = op_fn(delta.op)
    if delta.kind == "rows":
        return merge_rows(page, delta.indices, delta.values, delta.op, delta.unique)
    if delta.kind == "masked":
        return jnp.where(delta.mask, fn(page, delta.values), page)
    return fn(page, delta.values).astype(page.dtype)


def _apply_impl(pages: Mapping[str, jax.Array], epochs: Mapping[str, jax.Array],
                deltas: Sequence[Delta], plans: tuple[tuple[str, Any], ...] = ()):
    pages = dict(pages)
    epochs = dict(epochs)
    shardings = dict(plans)
    for d in deltas:
        page = pages[d.page]
        sharding = shardings.get(d.page) or page_sharding(page)
        split = row_sharding(page) if sharding is None or d.page not in shardings else (
            sharding if row_sharding_of(sharding, page.ndim) else None)
        if d.kind == "rows" and split is not None and d.values.shape[0]:
            new = merge_rows_sharded(page, d.indices, d.values, d.op, split)
        else:
            new = apply_page(page, d)
        pages[d.page] = keep_sharding(new, sharding)
        epochs[d.page] = epochs[d.page] + jnp.int32(d.count)
    return pages, epochs


_apply_jit = jax.jit(_apply_impl, static_argnums=3)

def _plans(state: State, touched: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """Static sharding plans of the touched pages (recorded, or read off the arrays)."""
    recorded = dict(state.shardings)
    return tuple((n, sh) for n in touched
                 if (sh := recorded.get(n) or page_sharding(state.pages[n])) is not None)


def _apply_one_impl(spec: tuple, plans: tuple[tuple[str, Any], ...], page: jax.Array,
                    epoch: jax.Array, indices: Leaf, mask: Leaf, values: Leaf):
    """:func:`_apply_impl` of one delta, its operands passed flat (``page: [*S]``,
    ``epoch: int32[]`` and the delta's leaves) and its static fields in ``spec``."""
    name, kind, op, count, unique = spec
    delta = Delta._new(indices, mask, values, name, kind, op, count, unique)
    pages, epochs = _apply_impl({name: page}, {name: epoch}, [delta], plans)
    return pages[name], epochs[name]


#: ``(page, kind, op, count, unique, plans) -> jitted _apply_one_impl``: eager ``apply`` of
#: one delta passes nothing but arrays to JAX (no pytree of dicts and Deltas to flatten).
_APPLY_ONE: dict[tuple, Callable[..., tuple[jax.Array, jax.Array]]] = {}


def _apply_one_fn(state: State, d: Delta) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The jitted :func:`_apply_one_impl` for ``d``'s static fields and page sharding."""
    name = d.page
    plans = _plans(state, (name,))
    key = (name, d.kind, d.op, d.count, d.unique, plans)
    fn = _APPLY_ONE.get(key)
    if fn is None:
        if len(_APPLY_ONE) >= _MAX_VALID_STRUCTURES:
            _APPLY_ONE.clear()
        fn = _APPLY_ONE[key] = jax.jit(functools.partial(_apply_one_impl, key[:5], plans))
    return fn


def _run_one(state: State, d: Delta) -> State:
    name = d.page
    fn = _apply_one_fn(state, d)
    page, epoch = fn(state.pages[name], state.epochs[name], d.indices, d.mask, d.values)
    return state.with_pages({name: page}, {name: epoch})


def _run(state: State, deltas: Sequence[Delta]) -> State:
    if len(deltas) == 1:
        return _run_one(state, deltas[0])
    touched = list(dict.fromkeys(d.page for d in deltas))
    sub_pages = {n: state.pages[n] for n in touched}
    sub_epochs = {n: state.epochs[n] for n in touched}
    new_pages, new_epochs = _apply_jit(sub_pages, sub_epochs, list(deltas),
                                       _plans(state, touched))
    return state.with_pages(new_pages, new_epochs)


def apply(state: State, delta: Delta) -> State:
    """``state x delta -> state'``: apply one delta and advance the page's epoch.

    Validates first (typed errors from :mod:`mmsb_jax.errors`); the input state is never
    modified. Works eagerly and under ``jit``/``vmap``/``grad``.

    >>> import mmsb_jax as mm, jax.numpy as jnp
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("x", (3,), "int32")]))
    >>> s = mm.apply(s, mm.Delta.rows("x", jnp.array([2, 0, 2]), jnp.array([7, 1, 9])))
    >>> s.pages["x"].tolist(), int(s.epochs["x"])
    ([1, 0, 9], 1)
    """
    if type(delta) is Delta:
        out = _apply_cached(state, delta)
        if out is not None:
            return out
    validate_deltas(state, [delta])
    return _run(state, [delta])


#: ``structure -> (jitted apply, rows)`` for eager ``apply`` of one delta on a concrete page:
#: the structure key holds everything :func:`validate` checks (so a hit is valid up to its
#: row indices) and everything the compiled function depends on (the page's sharding and
#: the State's recorded shardings).
_APPLY_CACHED: dict[tuple, tuple[Callable[..., tuple[jax.Array, jax.Array]], int]] = {}
#: types of concrete (not traced) page arrays seen by ``apply``: one set lookup tells them.
_CONCRETE_PAGE_TYPES: set[type] = set()


def _apply_cached(state: State, d: Delta) -> State | None:
    """``apply`` of a delta whose structure was validated before: one lookup, the row check,
    the dispatch. ``None`` when the structure is new (or the page is traced): the caller
    then validates and applies it the general way, which fills the cache."""
    name = d.page
    page = state.pages.get(name)
    if page is None:
        return None
    if type(page) not in _CONCRETE_PAGE_TYPES:
        if not isinstance(page, jax.Array) or isinstance(page, _Tracer):
            return None
        _CONCRETE_PAGE_TYPES.add(type(page))
    idx, mask, vals = d.indices, d.mask, d.values
    key = (name, d.kind, d.op, d.count, d.unique, page.shape, page.dtype, page.sharding,
           state.shardings, vals.shape, vals.dtype,
           None if mask is None else (mask.shape, mask.dtype),
           None if idx is None else idx.shape)
    hit = _APPLY_CACHED.get(key)
    if hit is None:
        validate_deltas(state, [d])
        fn = _apply_one_fn(state, d)
        if len(_APPLY_CACHED) >= _MAX_VALID_STRUCTURES:
            _APPLY_CACHED.clear()
        hit = _APPLY_CACHED[key] = (fn, page.shape[0] if d.kind == "rows" else -1)
    fn, rows = hit
    if rows >= 0 and not _rows_in_range(idx, rows):
        validate_deltas(state, [d])  # raises IndexOutOfRangeError with the offending rows
    epochs = cast(PageMap, state.epochs)._data.copy()
    new_pages = cast(PageMap, state.pages)._data.copy()
    new_pages[name], epochs[name] = fn(page, epochs[name], idx, mask, vals)
    return State._wrap(new_pages, epochs, state.shardings)


def _merge_runs(deltas: Sequence[Delta]) -> list[Delta]:
    """Fold consecutive composable deltas on the same page (per page, order kept)."""
    by_page: dict[str, list[Delta]] = {}
    for d in deltas:
        run = by_page.setdefault(d.page, [])
        if run and _composable(run[-1], d):
            run[-1] = compose(run[-1], d)
        else:
            run.append(d)
    return [d for run in by_page.values() for d in run]


def apply_batch(state: State, deltas: Sequence[Delta]) -> State:
    """Apply ``deltas`` in order, merging per page: equals ``functools.reduce(apply, deltas)``.

    All deltas are validated before any is applied. Consecutive deltas on one page with the same
    op are composed first, so a run of row deltas becomes one sorted merge (one write per row).
    The result is bit-exact with sequential :func:`apply` for ``set/min/max/or/and``, and within
    floating-point rounding for ``add/mul`` (the merged values are combined before the page).
    """
    deltas = list(deltas)
    if not deltas:
        return state
    validate_deltas(state, deltas)
    return _run(state, _merge_runs(deltas))


# -- composition ----------------------------------------------------------------------------

def _composable(a: Delta, b: Delta) -> bool:
    if a.page != b.page:
        return False
    if b.kind == "full" and b.op == "set":
        return True
    if a.kind == "full" and a.op == "set":
        return True
    if a.op != b.op:
        return False
    if a.kind == "rows" and b.kind == "rows":
        return a.values.shape[1:] == b.values.shape[1:] and a.values.dtype == b.values.dtype
    return True if (a.kind != "rows" or b.kind != "rows") else False


def _dense_shape(a: Delta, b: Delta) -> tuple[int, ...]:
    for d in (a, b):
        if d.kind != "rows":
            return tuple(d.values.shape)
    raise ComposeError("no page shape known")  # pragma: no cover - rows+rows is handled apart


def _as_masked(d: Delta, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """``(mask, values)`` of a delta as a dense masked update of a page of ``shape``."""
    if d.kind == "masked":
        return d.mask, d.values
    if d.kind == "full":
        return jnp.ones(shape, bool), d.values
    n = shape[0]
    rows, vals = resolve_rows(d.indices, d.values, d.op, n)
    mask = jnp.zeros(shape, bool).at[rows].set(True, mode="drop")
    base = jnp.zeros(shape, d.values.dtype)
    return mask, base.at[rows].set(vals, mode="drop")


def compose(a: Delta, b: Delta) -> Delta:
    """One delta with the effect of applying ``a`` then ``b``.

    ``apply(apply(s, a), b) == apply(s, compose(a, b))`` (bit-exact for set/min/max/or/and,
    within rounding for add/mul), epochs included (``count`` adds up); ``compose`` is
    associative. Defined when both deltas touch the same page and either share an op or one of
    them is a ``full`` ``set``. Row + row stays a ``rows`` delta of capacity ``k_a + k_b``;
    anything involving a mask or a full page becomes ``masked`` (or ``full``).

    Raises:
      ComposeError: different pages, or different ops that one delta cannot express.
    """
    if not isinstance(a, Delta) or not isinstance(b, Delta):
        raise TypeError("compose expects two Delta objects")
    if a.page != b.page:
        raise ComposeError(f"cannot compose deltas on different pages ({a.page!r}, {b.page!r});"
                           " use apply_batch for several pages")
    if not _composable(a, b):
        raise ComposeError(
            f"cannot compose {a.kind}/{a.op} with {b.kind}/{b.op} on {a.page!r}: one delta cannot"
            " express two different ops (apply them in sequence or with apply_batch)")
    count = a.count + b.count
    if b.kind == "full" and b.op == "set":
        return b.with_count(count)
    if a.kind == "full" and a.op == "set":
        return Delta.full(a.page, apply_page(a.values, b), "set").with_count(count)
    if a.kind == "rows" and b.kind == "rows":
        if a.values.dtype != b.values.dtype:
            raise ComposeError(f"cannot compose {a.values.dtype} and {b.values.dtype} deltas")
        idx = jnp.concatenate([a.indices, b.indices])
        vals = jnp.concatenate([a.values, b.values])
        return Delta.rows(a.page, idx, vals, a.op).with_count(count)
    shape = _dense_shape(a, b)
    ma, va = _as_masked(a, shape)
    mb, vb = _as_masked(b, shape)
    if va.shape != vb.shape or va.dtype != vb.dtype:
        raise ComposeError(f"cannot compose deltas with values {va.dtype}{list(va.shape)} and "
                           f"{vb.dtype}{list(vb.shape)}")
    if a.op == "set":
        vals = jnp.where(mb, vb, va)
    else:
        e = identity_value(a.op, va.dtype)
        vals = op_fn(a.op)(jnp.where(ma, va, e), jnp.where(mb, vb, e))
    if a.kind == "full" or b.kind == "full":
        # A full delta touches every element; the composition does too.
        return Delta.full(a.page, vals, a.op).with_count(count)
    return Delta.masked(a.page, ma | mb, vals, a.op).with_count(count)


# -- checkify --------------------------------------------------------------------------------

def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so value checks inside it (row index ranges) run under ``jit``.

    JAX silently drops out-of-range scatter indices; eagerly, :func:`apply` checks indices on
    the host, but traced indices can only be checked with ``checkify``. ``checked(fn)`` runs
    ``fn`` functionalized by ``jax.experimental.checkify`` and raises
    :class:`~mmsb_jax.errors.IndexOutOfRangeError` (or ``CheckFailedError``) after it ran.

    >>> import jax, jax.numpy as jnp, mmsb_jax as mm
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("x", (3,))]))
    >>> f = mm.checked(jax.jit(lambda s, i: mm.apply(s, mm.Delta.rows("x", i, jnp.ones((1,))))))
    >>> f(s, jnp.array([5]))
    Traceback (most recent call last):
    ...
    mmsb_jax.errors.IndexOutOfRangeError: mmsb:index_out_of_range: row index outside [-1, 3) ...
    """
    from mmsb_jax.errors import CheckFailedError

    checked_fn = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _checks_traced(True):
            err, out = checked_fn(*args, **kwargs)
        msg = err.get()
        if msg is not None:
            if INDEX_CHECK_TAG in msg:
                raise IndexOutOfRangeError(msg.split(" (`check` failed)")[0] + " ...")
            raise CheckFailedError(msg)
        return out

    return wrapper
