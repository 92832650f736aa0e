"""Co-access row reordering: access telemetry -> co-access graph -> a row permutation.

A page's rows are stored in *physical* order; callers keep addressing them by *logical* row. A
:class:`Layout` holds the permutation between the two. Rows that are updated together (in one
delta, or one commit) are placed next to each other, so a batch of updates touches fewer
contiguous blocks of the page (cache lines, DMA tiles, sharded row blocks).

The relayout itself is an ordinary ``set`` delta on the whole page (:func:`apply_layout`), so it
is logged, replayed and reverted like any other change: applying ``layout.inverse()`` restores
the logical order bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse import linalg as spla

from mmsb_jax.core.delta import PADDING, Delta
from mmsb_jax.core.pages import State
from mmsb_jax.errors import (
    IndexOutOfRangeError,
    OptionError,
    ShapeError,
    UnknownPageError,
)

__all__ = [
    "METHODS",
    "Layout",
    "apply_layout",
    "blocks_touched",
    "read_logical",
    "relayout_permutation",
    "row_access",
    "touched_rows",
    "translate",
]

METHODS: tuple[str, ...] = ("rcm", "spectral", "frequency")
"""Orderings offered by :func:`relayout_permutation`."""

_DENSE_EIGH_MAX = 2048  # components up to this size use a dense eigensolver


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Layout:
    """A row permutation of one page: physical position <-> logical row.

    Attributes:
      perm: ``int32[n]``; ``perm[p]`` is the logical row stored at physical position ``p``.
      inv: ``int32[n]``; ``inv[r]`` is the physical position of logical row ``r``
        (``inv[perm] == arange(n)``).

    A pytree (both fields are leaves), so layouts pass through ``jit`` and ``vmap``. Build one
    with :meth:`from_permutation`, :meth:`identity` or :func:`relayout_permutation`.
    """

    perm: jax.Array  # [n]
    inv: jax.Array  # [n]

    @staticmethod
    def from_permutation(perm: Any) -> Layout:
        """The layout whose physical position ``p`` holds logical row ``perm[p]``.

        Args:
          perm: ``int[n]``, a permutation of ``0..n-1``.

        Raises:
          ShapeError: ``perm`` is not 1-D.
          IndexOutOfRangeError: ``perm`` is not a permutation of ``0..n-1``.
        """
        p = np.asarray(perm)
        if p.ndim != 1:
            raise ShapeError(f"a layout permutation must be 1-D, got shape {p.shape}")
        if p.size and not np.issubdtype(p.dtype, np.integer):
            raise IndexOutOfRangeError(f"a layout permutation must hold integers, got {p.dtype}")
        n = p.shape[0]
        p = p.astype(np.int64)
        if n and (p.min() < 0 or p.max() >= n or np.bincount(p, minlength=n).max() != 1):
            raise IndexOutOfRangeError(f"not a permutation of 0..{n - 1}")
        inv = np.empty(n, np.int32)
        inv[p] = np.arange(n, dtype=np.int32)
        return Layout(jnp.asarray(p, jnp.int32), jnp.asarray(inv))

    @staticmethod
    def identity(num_rows: int) -> Layout:
        """The layout that stores logical row ``r`` at physical position ``r``."""
        ar = jnp.arange(int(num_rows), dtype=jnp.int32)
        return Layout(ar, ar)

    @property
    def num_rows(self) -> int:
        """``n``, the number of rows the layout permutes."""
        return int(self.perm.shape[0])

    def inverse(self) -> Layout:
        """The layout that undoes this one (``apply_layout`` with it restores logical order)."""
        return Layout(self.inv, self.perm)

    def to_physical(self, rows: Any) -> jax.Array:
        """Physical positions of logical ``rows: int[k]``; ``-1`` padding stays ``-1``.

        Rows outside ``[-1, n)`` are passed through unchanged (still out of range), so the
        usual delta validation or ``mm.checked`` catches them.
        """
        return _gather_index(self.inv, rows)

    def to_logical(self, positions: Any) -> jax.Array:
        """Logical rows stored at physical ``positions: int[k]``; ``-1`` padding stays ``-1``."""
        return _gather_index(self.perm, positions)


def _gather_index(table: jax.Array, rows: Any) -> jax.Array:
    r = jnp.asarray(rows)
    if not jnp.issubdtype(r.dtype, jnp.integer):
        raise IndexOutOfRangeError(f"row indices must be integers, got {r.dtype}")
    r = r.astype(jnp.int32)
    n = table.shape[0]
    inside = (r >= 0) & (r < n)
    return jnp.where(inside, table[jnp.clip(r, 0, max(n - 1, 0))], r)


# -- telemetry -----------------------------------------------------------------------------------

def _groups(source: Any) -> Iterable[Sequence[Delta]]:
    """Yield one sequence of deltas per access group (a commit, or a single delta)."""
    if isinstance(source, str | os.PathLike):
        from mmsb_jax.store.tlog import log_dir, read_transactions

        source = read_transactions(log_dir(source))
    elif hasattr(source, "log") and hasattr(source, "commit"):  # a Bus
        source = source.log.transactions()
    elif hasattr(source, "transactions") and callable(source.transactions):  # a TLog
        source = source.transactions()
    if isinstance(source, Delta):
        source = [source]
    for item in source:
        if isinstance(item, Delta):
            yield (item,)
        elif hasattr(item, "deltas"):
            yield tuple(item.deltas)
        else:
            yield tuple(item)


def touched_rows(delta: Delta, num_rows: int) -> np.ndarray:
    """The distinct rows (axis 0) a delta writes, sorted.

    Args:
      delta: a concrete ``Delta`` (not traced).
      num_rows: ``n``, rows of the page.

    Returns:
      ``int64[m]``: ``rows`` deltas give their non-padding indices, ``masked`` deltas the rows
      with any True mask entry, ``full`` deltas every row.

    Raises:
      IndexOutOfRangeError: a row index lies outside ``[-1, n)``.
    """
    if delta.kind == "rows":
        idx = np.asarray(delta.indices).astype(np.int64)
        if idx.size and (idx.min() < PADDING or idx.max() >= num_rows):
            raise IndexOutOfRangeError(f"rows delta on {delta.page!r}: indices outside "
                                       f"[-1, {num_rows})")
        return np.unique(idx[idx >= 0])
    if delta.kind == "masked":
        m = np.asarray(delta.mask)
        if m.ndim == 0 or m.shape[0] != num_rows:
            raise ShapeError(f"masked delta on {delta.page!r}: mask shape {m.shape} does not "
                             f"have {num_rows} rows")
        return np.flatnonzero(m.reshape(num_rows, -1).any(axis=1))
    return np.arange(num_rows)


def row_access(source: Any, page: str, num_rows: int, *, group: Literal["commit", "delta"]
               = "commit") -> sp.csr_matrix:
    """Co-access matrix of one page's rows from deltas, transactions, a TLog or a Bus.

    Two rows are co-accessed when one access group (a commit, or with ``group="delta"`` a
    single delta) writes both. ``full`` deltas write every row and say nothing about which rows
    belong together, so they are not counted.

    Args:
      source: a ``Delta``, a sequence of deltas (each delta one group), an iterable of
        transactions (objects with ``deltas``, e.g. ``bus.log.transactions()``) or of delta
        sequences, an ``mm.TLog``, an ``mm.Bus``, or a log / bus directory.
      page: the page whose rows are counted; deltas on other pages are ignored.
      num_rows: ``n``, the page's number of rows.
      group: ``"commit"`` (all deltas of a transaction together) or ``"delta"``.

    Returns:
      ``C: float64[n, n]`` (``scipy.sparse.csr_matrix``, symmetric): ``C[i, j]`` (``i != j``)
      counts the groups that wrote both rows ``i`` and ``j``; ``C[i, i]`` counts the groups that
      wrote row ``i`` (its access frequency).

    Raises:
      OptionError: ``group`` is not ``"commit"`` or ``"delta"``; ``num_rows`` negative.
      IndexOutOfRangeError: a delta on ``page`` writes a row outside ``[-1, n)``.
    """
    if group not in ("commit", "delta"):
        raise OptionError(f"group must be 'commit' or 'delta', got {group!r}")
    n = int(num_rows)
    if n < 0:
        raise OptionError(f"num_rows must be >= 0, got {num_rows}")
    sets: list[np.ndarray] = []
    for deltas in _groups(source):
        mine = [d for d in deltas if isinstance(d, Delta) and d.page == page and d.kind != "full"]
        if group == "delta":
            sets.extend(touched_rows(d, n) for d in mine)
        elif mine:
            sets.append(np.unique(np.concatenate([touched_rows(d, n) for d in mine])))
    sets = [s for s in sets if s.size]
    if not sets:
        return sp.csr_matrix((n, n), dtype=np.float64)
    cols = np.concatenate(sets)
    rows = np.repeat(np.arange(len(sets)), [s.size for s in sets])
    incidence = sp.csr_matrix((np.ones(cols.size), (rows, cols)), shape=(len(sets), n))
    return (incidence.T @ incidence).tocsr()


# -- orderings -----------------------------------------------------------------------------------

def _spectral_order(adj: sp.csr_matrix) -> np.ndarray:
    """Order a connected component by its Fiedler vector (ties by index)."""
    m = adj.shape[0]
    if m <= 2:
        return np.arange(m)
    lap = csgraph.laplacian(adj.astype(np.float64), normed=True)
    if m <= _DENSE_EIGH_MAX:
        _, vecs = np.linalg.eigh(lap.toarray())
        fiedler = vecs[:, 1]
    else:
        # Shift-invert near 0 on a slightly shifted (positive definite) Laplacian.
        v0 = np.random.default_rng(0).standard_normal(m)
        _, vecs = spla.eigsh(lap + 1e-9 * sp.identity(m), k=2, sigma=0.0, which="LM", v0=v0)
        fiedler = vecs[:, 1]
    # L_sym = I - D^-1/2 A D^-1/2: its eigenvectors are D^1/2 times the random-walk ones,
    # whose order is the relaxed linear arrangement.
    fiedler = fiedler / np.sqrt(np.maximum(np.asarray(adj.sum(axis=1)).ravel(), 1e-300))
    # The eigenvector's sign is arbitrary: fix it so the result is reproducible.
    if fiedler[np.argmax(np.abs(fiedler))] < 0:
        fiedler = -fiedler
    return np.lexsort((np.arange(m), np.round(fiedler, 12)))


def relayout_permutation(coaccess: Any, method: Literal["rcm", "spectral", "frequency"] = "rcm"
                         ) -> Layout:
    """A row layout that stores co-accessed rows next to each other.

    Rows that were never accessed keep their relative order and move behind the accessed rows,
    which are grouped by connected component of the co-access graph (components with the most
    accesses first) and ordered within a component by ``method``:

    * ``"rcm"``: reverse Cuthill-McKee (``scipy.sparse.csgraph.reverse_cuthill_mckee``), which
      minimises the bandwidth of the co-access matrix, i.e. co-accessed rows end up close.
    * ``"spectral"``: rows sorted by the Fiedler vector of the component's normalised Laplacian
      (the relaxed minimum-linear-arrangement order).
    * ``"frequency"``: rows by access count, most accessed first (ignores co-access; a baseline).

    Args:
      coaccess: ``[n, n]`` co-access matrix (dense or scipy.sparse, e.g. from
        :func:`row_access`); entries > 0 are edges, the diagonal is the access frequency.
      method: one of :data:`METHODS`.

    Returns:
      A :class:`Layout` over ``n`` rows. Deterministic for a given matrix.

    Raises:
      OptionError: unknown ``method``.
      ShapeError: ``coaccess`` is not square.
    """
    if method not in METHODS:
        raise OptionError(f"method must be one of {METHODS}, got {method!r}")
    c = sp.csr_matrix(coaccess, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ShapeError(f"coaccess must be a square matrix, got shape {c.shape}")
    n = c.shape[0]
    c = abs(c)
    c = (c + c.T).tocsr()  # symmetric pattern whatever the input
    freq = np.asarray(c.diagonal()) / 2
    off = c - sp.diags(c.diagonal())
    off.eliminate_zeros()
    touched = np.flatnonzero((freq > 0) | (np.diff(off.indptr) > 0))
    if touched.size == 0:
        return Layout.identity(n)
    cold = np.setdiff1d(np.arange(n), touched, assume_unique=True)
    if method == "frequency":
        hot = touched[np.lexsort((touched, -freq[touched]))]
        return Layout.from_permutation(np.concatenate([hot, cold]))
    sub = off[touched][:, touched].tocsr()
    ncomp, labels = csgraph.connected_components(sub, directed=False)
    weight = np.bincount(labels, weights=freq[touched], minlength=ncomp)
    first = np.full(ncomp, len(touched))
    np.minimum.at(first, labels, np.arange(len(touched)))
    comp_order = np.lexsort((first, -weight))
    if method == "rcm":
        rcm = np.asarray(csgraph.reverse_cuthill_mckee(sub, symmetric_mode=True))
        rank = np.empty(len(touched), np.int64)
        rank[rcm] = np.arange(len(touched))
    parts = []
    for comp in comp_order:
        members = np.flatnonzero(labels == comp)
        if method == "rcm":
            local = members[np.argsort(rank[members], kind="stable")]
        else:
            local = members[_spectral_order(sub[members][:, members].tocsr())]
        parts.append(touched[local])
    return Layout.from_permutation(np.concatenate([*parts, cold]).astype(np.int64))


# -- applying a layout ---------------------------------------------------------------------------

def _page(state: State, page: str) -> jax.Array:
    if not isinstance(state, State):
        raise TypeError(f"expected a State, got {type(state).__name__}")
    if page not in state.pages:
        raise UnknownPageError(page, tuple(state.pages))
    return state.pages[page]


def _check_rows(arr: Any, layout: Layout, what: str) -> None:
    shape = tuple(arr.shape)
    if not isinstance(layout, Layout):
        raise TypeError(f"expected a Layout, got {type(layout).__name__}")
    if len(shape) < 1 or shape[0] != layout.perm.shape[0]:
        raise ShapeError(f"{what} has shape {shape}; the layout permutes "
                         f"{layout.perm.shape[0]} rows")


def apply_layout(state: State, page: str, layout: Layout, *, current: Layout | None = None
                 ) -> Delta:
    """The delta that rewrites ``page`` from layout ``current`` into ``layout``.

    Commit it (``bus.commit(delta)``) so the relayout is logged like any change. It is
    reversible: ``apply_layout(state', page, layout.inverse())`` (or
    ``apply_layout(state', page, Layout.identity(n), current=layout)``) gives the delta back to
    logical order, bit for bit.

    Args:
      state: the current State.
      page: the page to relayout (rows on axis 0).
      layout: the target layout (``n`` rows).
      current: the layout the page is stored in now (default: logical order).

    Returns:
      ``Delta.full(page, values, op="set")`` with ``values: [n, *row]`` where
      ``values[p] = logical[layout.perm[p]]``.

    Raises:
      UnknownPageError: ``page`` is not in ``state``.
      ShapeError: the page does not have ``n`` rows (or ``current`` differs in size).
    """
    arr = _page(state, page)
    _check_rows(arr, layout, f"page {page!r}")
    src = layout.perm
    if current is not None:
        _check_rows(arr, current, f"page {page!r}")
        src = current.inv[layout.perm]
    return Delta.full(page, jnp.take(arr, src, axis=0), op="set")


def translate(delta: Delta, layout: Layout) -> Delta:
    """Rewrite a delta addressed by logical row into one addressed by physical position.

    ``rows`` deltas get their indices mapped (``-1`` padding kept); ``masked`` and ``full``
    deltas get their mask and values permuted along axis 0. Jittable; the op, kind and count are
    unchanged, so ``apply(relaid, translate(d, L))`` equals ``apply_layout`` of
    ``apply(logical, d)``.

    Args:
      delta: a delta on the page ``layout`` belongs to, in logical rows.
      layout: the page's current layout (``n`` rows).

    Returns:
      The same update in physical positions.

    Raises:
      ShapeError: a ``masked``/``full`` delta does not have ``n`` rows.
      IndexOutOfRangeError: concrete row indices outside ``[-1, n)``.
    """
    if not isinstance(delta, Delta):
        raise TypeError(f"expected a Delta, got {type(delta).__name__}")
    if delta.kind == "rows":
        idx = delta.indices
        if not isinstance(idx, jax.core.Tracer) and idx.shape[0]:
            host = np.asarray(idx)
            if host.min() < PADDING or host.max() >= layout.perm.shape[0]:
                raise IndexOutOfRangeError(
                    f"rows delta on {delta.page!r}: indices outside [-1, "
                    f"{layout.perm.shape[0]}) for this layout")
        return dataclasses.replace(delta, indices=layout.to_physical(idx))
    _check_rows(delta.values, layout, f"{delta.kind} delta on {delta.page!r}")
    mask = None if delta.mask is None else jnp.take(delta.mask, layout.perm, axis=0)
    return dataclasses.replace(delta, mask=mask,
                               values=jnp.take(delta.values, layout.perm, axis=0))


def read_logical(state: State, page: str, layout: Layout, rows: Any = None) -> jax.Array:
    """Read a relaid page by logical row. Jittable.

    Args:
      state: a State whose ``page`` is stored in ``layout``.
      page: the page name.
      layout: its layout (``n`` rows).
      rows: optional ``int[k]`` logical rows; default all rows.

    Returns:
      ``[n, *row]`` (the page in logical order) or ``[k, *row]`` (the requested rows).

    Raises:
      UnknownPageError: ``page`` is not in ``state``.
      ShapeError: the page does not have ``n`` rows.
      IndexOutOfRangeError: concrete ``rows`` outside ``[0, n)``.
    """
    arr = _page(state, page)
    _check_rows(arr, layout, f"page {page!r}")
    if rows is None:
        return jnp.take(arr, layout.inv, axis=0)
    r = jnp.asarray(rows)
    if not isinstance(r, jax.core.Tracer) and r.size:
        host = np.asarray(r)
        if host.min() < 0 or host.max() >= layout.perm.shape[0]:
            raise IndexOutOfRangeError(f"rows outside [0, {layout.perm.shape[0]}) of {page!r}")
    return jnp.take(arr, layout.to_physical(r), axis=0)


def blocks_touched(rows: Any, block_size: int, layout: Layout | None = None) -> int:
    """How many ``block_size``-row blocks of the physical page a set of logical rows touches.

    Args:
      rows: ``int[k]`` logical rows (``-1`` padding ignored), or a ``rows`` Delta.
      block_size: rows per block (> 0).
      layout: the page's layout (default: logical order).

    Returns:
      The number of distinct blocks ``position // block_size`` written.

    Raises:
      OptionError: ``block_size`` < 1.
    """
    if int(block_size) < 1:
        raise OptionError(f"block_size must be >= 1, got {block_size}")
    r = np.asarray(rows.indices if isinstance(rows, Delta) else rows).astype(np.int64)
    r = r[r >= 0]
    if layout is not None:
        r = np.asarray(layout.inv)[r]
    return int(np.unique(r // int(block_size)).size)
