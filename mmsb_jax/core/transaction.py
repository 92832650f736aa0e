"""Transactions: the one function that a commit, a batch of commits and replay all apply.

A *transaction* is a sequence of deltas applied in order (``apply_batch`` semantics), followed,
when there is a graph, by propagation of the pages it touched. :func:`apply_transaction` runs
one transaction as one jitted function; :func:`apply_transactions` stacks runs of transactions
of equal structure (``[L, ...]`` leaves) and applies each run with one jitted ``lax.scan``
whose body is that same function, so both give the same bits. The Bus commits with these
functions (``Bus.commit``, ``Bus.commit_many``) and replay rebuilds a State with them, which is
why ``restore(checkpoint) + replay(log)`` equals the live state bit for bit.

Deltas are validated on the host before they get here (:func:`mmsb_jax.core.delta.
validate_deltas`); the jitted functions have no effects (row-range ``checkify`` checks are
traced only under ``mm.checked``), so repeated calls stay on JAX's C++ dispatch fast path.

A run of length ``L`` is applied in chunks of ``limit`` transactions (the largest power of two
within ``max_chunk`` and ``chunk_bytes``) and one last chunk of the rest. A chunk whose length
is a power of two is one ``lax.scan``; any other chunk of ``n`` transactions is stacked into a
*capacity* of the next power of two and applied by a loop that runs exactly ``n`` steps (``n``
is an argument, not a shape). So one structure compiles once per power of two it meets as a
length or a capacity, usually once or twice for a whole log (a replay of 1,000 transactions of
one structure compiles the capacity-1024 loop once, where splitting the run into power-of-two
scans compiled six), and at most ``2 * (log2(limit) + 1)`` times however many transactions
there are.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax.core.delta import PADDING, Delta, apply_batch, validate_deltas
from mmsb_jax.core.pages import PageMap, State
from mmsb_jax.errors import IndexOutOfRangeError, OptionError

if TYPE_CHECKING:
    from mmsb_jax.core.graph import Graph

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_CHUNK",
    "CompiledTransaction",
    "TransactionRunner",
    "apply_stacked",
    "apply_transaction",
    "apply_transactions",
    "check_stacked_rows",
    "slice_stacked",
    "stack_transactions",
    "touched_pages",
    "txn_nbytes",
    "txn_structure",
]

DEFAULT_MAX_CHUNK = 1024
DEFAULT_CHUNK_BYTES = 64 << 20


def touched_pages(deltas: Iterable[Delta]) -> tuple[str, ...]:
    """The pages ``deltas`` write, in first-touch order."""
    return tuple(dict.fromkeys(d.page for d in deltas))


# ``shardings`` (static) is the State's recorded page shardings: traced pages on an auto mesh
# carry none, and the merge needs them to keep every page's sharding (and to merge row deltas
# on row-sharded pages per shard). With a graph, ``pages`` holds the touched pages, the derived
# pages they affect and every page those read (:func:`_used_pages`); without one, only the
# touched pages.
def _txn_impl(graph: Graph | None, pages: dict[str, jax.Array], epochs: dict[str, jax.Array],
              deltas: list[Delta], shardings: tuple = ()):
    out = apply_batch(State(pages=pages, epochs=epochs, shardings=shardings), deltas)
    if graph is not None:
        from mmsb_jax.core.propagate import propagate

        out = cast(State, propagate(graph, out, touched_pages(deltas)))
    return dict(out.pages), dict(out.epochs)


_txn = jax.jit(_txn_impl, static_argnums=(0, 4))
# The same function with the pages and epochs it reads donated: in-place page updates.
_txn_donated = jax.jit(_txn_impl, static_argnums=(0, 4), donate_argnums=(1, 2))


def _scan_impl(graph: Graph | None, pages: dict[str, jax.Array], epochs: dict[str, jax.Array],
               stacked: list[Delta], shardings: tuple = ()):
    """All ``L`` stacked transactions (leaves ``[L, ...]``), in order, by ``lax.scan`` (a
    static trip count). Each step is :func:`_txn_impl`, the body of a single commit. Also
    returns each carried page's epoch after each step (``int32[L]``)."""
    def body(carry, deltas):
        pages, epochs = _txn_impl(graph, carry[0], carry[1], deltas, shardings)
        return (pages, epochs), epochs

    (pages, epochs), per_step = lax.scan(body, (pages, epochs), stacked)
    return pages, epochs, per_step


def _loop_impl(graph: Graph | None, pages: dict[str, jax.Array], epochs: dict[str, jax.Array],
               stacked: list[Delta], shardings: tuple, n: jax.Array):
    """The first ``n`` of the ``[C, ...]`` stacked transactions: :func:`_scan_impl` with a
    traced trip count, so every ``n <= C`` shares one compilation (slots ``n..C-1`` are never
    read; per-step epochs past ``n`` are zero). A little slower per step than the scan."""
    cap = stacked[0].values.shape[0]
    per_step0 = {k: jnp.zeros((cap,), e.dtype) for k, e in epochs.items()}

    def body(i, carry):
        pages, epochs, per_step = carry
        deltas = [jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), d)
                  for d in stacked]
        pages, epochs = _txn_impl(graph, pages, epochs, deltas, shardings)
        per_step = {k: v.at[i].set(epochs[k]) for k, v in per_step.items()}
        return pages, epochs, per_step

    return lax.fori_loop(0, n, body, (pages, epochs, per_step0))


_scan = jax.jit(_scan_impl, static_argnums=(0, 4))
_scan_donated = jax.jit(_scan_impl, static_argnums=(0, 4), donate_argnums=(1, 2))
_loop = jax.jit(_loop_impl, static_argnums=(0, 4))
_loop_donated = jax.jit(_loop_impl, static_argnums=(0, 4), donate_argnums=(1, 2))


def _used_pages(state: State, deltas: Sequence[Delta], graph: Graph | None
                ) -> tuple[str, ...]:
    """The pages a transaction writes and, with a graph, recomputes or reads (schema order)."""
    names = touched_pages(deltas)
    if graph is None:
        return names
    from mmsb_jax.core.propagate import plan

    used = {*names, *plan(graph, names).reads}
    return tuple(n for n in state.pages if n in used)


def _operands(state: State, deltas: Sequence[Delta], graph: Graph | None):
    """``(pages, epochs, shardings)``: what the jitted transaction reads of ``state``
    (:func:`_used_pages`), with the recorded shardings of those pages."""
    names = _used_pages(state, deltas, graph)
    all_pages = cast(PageMap, state.pages)._data
    all_epochs = cast(PageMap, state.epochs)._data
    pages = {n: all_pages[n] for n in names}
    epochs = {n: all_epochs[n] for n in names}
    if not state.shardings:
        return pages, epochs, ()
    wanted = set(names)
    return pages, epochs, tuple((n, sh) for n, sh in state.shardings if n in wanted)


def apply_transaction(state: State, deltas: Sequence[Delta], *, check: bool = True,
                      graph: Graph | None = None, donate: bool = False) -> State:
    """Apply one transaction exactly as the Bus commits it (and as replay does).

    Equivalent to ``mm.apply_batch(state, deltas)`` (same merge, same order), run as one jitted
    function over the pages it reads, so the result is bit-identical to the scan body of
    :func:`apply_transactions`.

    Args:
      state: the current State.
      deltas: the transaction's deltas, in order.
      check: validate the deltas against the state first (typed errors, nothing changes).
        Pass ``False`` only for deltas already validated against a state of this schema.
      graph: an ``mm.Graph``: derived pages are then recomputed with ``mm.propagate`` from the
        pages the transaction touched, inside the same jitted function.
      donate: donate the buffers of the pages the transaction reads (with a graph: also the
        derived pages it recomputes and their inputs) and their epochs, so XLA updates them
        in place. ``state``'s arrays of those pages are deleted: use this only when nothing
        else will read ``state``.

    Returns:
      The new State; pages not read are shared with ``state``.
    """
    deltas = list(deltas)
    if not deltas:
        return state
    if check:
        validate_deltas(state, deltas)
    pages, epochs, shardings = _operands(state, deltas, graph)
    pages, epochs = (_txn_donated if donate else _txn)(graph, pages, epochs, deltas, shardings)
    return state.with_pages(pages, epochs)


class CompiledTransaction:
    """:func:`apply_transaction` specialised to one transaction structure: the commit hot path.

    Built once per structure (``txn_structure``) and page shardings, it holds a jitted
    function of flat tuples of arrays, ``(pages, epochs, leaves) -> (pages', epochs')``, whose
    body is the very function :func:`apply_transaction` jits (same merge, same bits). A call
    gathers the operands by name, dispatches on JAX's C++ fast path (nothing but arrays in
    tuples crosses the boundary) and rebuilds the State around the results. Deltas must
    already be validated. ``Bus.commit`` keeps one per cached commit plan.

    The call passes the pages the transaction writes and, with a graph, the derived pages it
    recomputes and every page those read (:attr:`names`), with their epochs; a graph's other
    pages stay out of it, so a commit's cost follows what it touches, not the size of the
    store. (Passing the read-only inputs without returning them measured slower on CPU: a
    World step through a Bus took ~15 % longer, so they are passed through.)

    Args:
      state: a State with the page shardings later calls pass (see :meth:`matches`).
      deltas: a transaction of the structure (at least one Delta).
      graph: as for :func:`apply_transaction`.
      donate: as for :func:`apply_transaction`.

    Raises:
      OptionError: ``deltas`` is empty.
    """

    __slots__ = ("_donated", "_fn", "_key", "_leaves", "_names", "_shardings", "_single")

    def __init__(self, state: State, deltas: Sequence[Delta], *, graph: Graph | None = None,
                 donate: bool = False):
        if not deltas:
            raise OptionError("CompiledTransaction needs at least one delta (an empty "
                              "transaction changes nothing)")
        # what the transaction writes, recomputes or reads: a commit's cost follows it, not
        # the size of the store (pages nothing here reads stay out of the call)
        names = _used_pages(state, deltas, graph)
        _, _, shardings = _operands(state, deltas, graph)
        spec = tuple((d.page, d.kind, d.op, d.count, d.unique, d.indices is not None,
                      d.mask is not None) for d in deltas)
        self._names = names
        self._shardings = state.shardings
        self._single = len(names) == 1
        attrs = [a for d in deltas for a, leaf in (("indices", d.indices), ("mask", d.mask),
                                                   ("values", d.values)) if leaf is not None]
        if len(deltas) == 1 and len(attrs) > 1:
            self._leaves = operator.attrgetter(*attrs)  # (d) -> the tuple of its leaves
        else:
            self._leaves = None
        # shared by every instance of the structure (another Bus, a reopened one, time
        # travel): a structure is traced and compiled once per process, not once per Bus
        self._key = (graph, names, spec, shardings)
        self._fn = _flat_jit(*self._key, donate)
        self._donated = self._fn if donate else None

    def matches(self, state: State) -> bool:
        """Whether ``state`` has the page shardings this transaction was compiled for (pages
        are gathered by name, so their order does not matter)."""
        sh = state.shardings
        return sh is self._shardings or sh == self._shardings

    @property
    def names(self) -> tuple[str, ...]:
        """The pages a call reads (and, donating, whose buffers and epochs it donates)."""
        return self._names

    def __call__(self, state: State, deltas: Sequence[Delta], *, donate: bool = False
                 ) -> State:
        """The State after ``deltas`` (validated, of this structure and ``state`` layout).

        ``donate=True`` donates the buffers of :attr:`names` and their epochs (``state``'s
        arrays of those pages are deleted); a transaction built with ``donate=True``
        always donates. The donating function is compiled on its first use.
        """
        all_pages = cast(PageMap, state.pages)._data
        all_epochs = cast(PageMap, state.epochs)._data
        get = self._leaves
        if get is not None:
            leaves = get(deltas[0])
        else:
            leaves = []
            for d in deltas:
                if d.indices is not None:
                    leaves.append(d.indices)
                if d.mask is not None:
                    leaves.append(d.mask)
                leaves.append(d.values)
            leaves = tuple(leaves)
        names = self._names
        pages = all_pages.copy()
        epochs = all_epochs.copy()
        fn = self._fn
        if donate:
            fn = self._donated
            if fn is None:
                fn = self._donated = _flat_jit(*self._key, True)
        if self._single:
            name = names[0]
            (pages[name],), (epochs[name],) = fn((all_pages[name],), (all_epochs[name],), leaves)
        else:
            new_pages, new_epochs = fn(tuple([all_pages[n] for n in names]),
                                       tuple([all_epochs[n] for n in names]), leaves)
            pages.update(zip(names, new_pages, strict=True))
            epochs.update(zip(names, new_epochs, strict=True))
        return State._wrap(pages, epochs, state.shardings)


@functools.lru_cache(maxsize=4096)
def _flat_jit(graph: Graph | None, names: tuple[str, ...], spec: tuple, shardings: tuple,
              donate: bool) -> Callable:
    """The jitted :func:`_flat_impl` of one structure (one per process and key; JAX's own
    caches then hold its executables per argument shapes). ``graph`` is hashed by value, as
    the static argument of :func:`apply_transaction`'s jit is."""
    return jax.jit(functools.partial(_flat_impl, graph, names, spec, shardings),
                   donate_argnums=(0, 1) if donate else ())


def _flat_impl(graph: Graph | None, names: tuple[str, ...], spec: tuple, shardings: tuple,
               pages: tuple, epochs: tuple, leaves: tuple):
    it = iter(leaves)
    deltas = [Delta(indices=next(it) if has_idx else None, mask=next(it) if has_mask else None,
                    values=next(it), page=page, kind=kind, op=op, count=count, unique=unique)
              for page, kind, op, count, unique, has_idx, has_mask in spec]
    out_pages, out_epochs = _txn_impl(graph, dict(zip(names, pages, strict=True)),
                                      dict(zip(names, epochs, strict=True)), deltas, shardings)
    return (tuple(out_pages[n] for n in names), tuple(out_epochs[n] for n in names))


def apply_stacked(state: State, stacked: Sequence[Delta], *, graph: Graph | None = None,
                  donate: bool = False) -> tuple[State, dict[str, jax.Array]]:
    """Apply ``L`` transactions of equal structure with one jitted call.

    A power-of-two ``L`` runs as one ``lax.scan``; any other ``L`` is padded to the next power
    of two and run by a loop of exactly ``L`` steps, so all lengths up to a power of two share
    one compilation. Either way each step is :func:`apply_transaction`'s function (same bits).

    Args:
      state: the current State.
      stacked: the transactions' deltas stacked position by position
        (:func:`stack_transactions`): the ``j``-th delta has leaves ``[L, ...]``.
      graph, donate: as for :func:`apply_transaction`.

    Returns:
      ``(state', epochs)``: the State after all ``L`` transactions and, for every page the
      scan carries, its epoch after each transaction, ``{name: int32[L]}``.
    """
    stacked = list(stacked)
    return _pad_and_apply(state, stacked, int(stacked[0].values.shape[0]), graph=graph,
                          donate=donate)


def _pad_and_apply(state: State, stacked: Sequence[Delta], n: int, *, graph: Graph | None,
                   donate: bool, per_step: bool = True) -> tuple[State, dict[str, jax.Array]]:
    """:func:`_apply_padded` of ``n`` stacked transactions padded to their capacity."""
    return _apply_padded(state, [_padded(d, _capacity(n)) for d in stacked], n, graph=graph,
                         donate=donate, per_step=per_step)


def _capacity(n: int) -> int:
    """The stacked capacity a chunk of ``n`` transactions is padded to: the next power of two
    (one compilation serves every ``n`` up to it)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _apply_padded(state: State, stacked: list[Delta], n: int, *, graph: Graph | None,
                  donate: bool, per_step: bool = True) -> tuple[State, dict[str, jax.Array]]:
    """:func:`apply_stacked` of the first ``n`` rows of leaves stacked to a capacity; with
    ``per_step=False`` the per-step epochs are not wanted (``{}``: no slicing dispatches)."""
    pages, epochs, shardings = _operands(state, stacked, graph)
    if n == stacked[0].values.shape[0] and n & (n - 1) == 0:
        # a full power-of-two chunk: the static-length scan, a little faster per step
        scan = _scan_donated if donate else _scan
        pages, epochs, steps = scan(graph, pages, epochs, stacked, shardings)
    else:
        loop = _loop_donated if donate else _loop
        pages, epochs, steps = loop(graph, pages, epochs, stacked, shardings, np.int32(n))
        steps = {k: v[:n] for k, v in steps.items()} if per_step else steps
    return state.with_pages(pages, epochs), steps if per_step else {}


def _padded(d: Delta, cap: int) -> Delta:
    """``d`` (stacked leaves ``[n, ...]``) padded to ``[cap, ...]`` as
    :func:`stack_transactions` pads (indices ``-1``, masks and values zero)."""
    n = d.values.shape[0]
    if n == cap:
        return d

    def pad(x: Any, fill: int = 0) -> Any:
        if x is None:
            return None
        if isinstance(x, np.ndarray):
            out = np.full((cap, *x.shape[1:]), fill, x.dtype)
            out[:n] = x
            return out
        return jnp.concatenate([x, jnp.full((cap - n, *x.shape[1:]), fill, x.dtype)])

    return Delta._new(pad(d.indices, PADDING), pad(d.mask), pad(d.values), d.page, d.kind,
                      d.op, d.count, d.unique)


def txn_structure(deltas: Sequence[Delta]) -> tuple:
    """A hashable key: transactions with equal keys stack into one scan."""
    out = []
    for d in deltas:  # written out: every commit computes this key
        i, m, v = d.indices, d.mask, d.values
        out.append((d.page, d.kind, d.op, d.count, d.unique,
                    None if i is None else (i.shape, i.dtype),
                    None if m is None else (m.shape, m.dtype), (v.shape, v.dtype)))
    return tuple(out)


def txn_nbytes(deltas: Sequence[Delta]) -> int:
    """Bytes of the deltas' leaves (indices, masks and values)."""
    total = 0
    for d in deltas:
        for x in (d.indices, d.mask, d.values):
            if x is not None:
                total += math.prod(x.shape) * x.dtype.itemsize
    return total


def stack_transactions(txns: Sequence[Sequence[Delta]], capacity: int | None = None
                       ) -> list[Delta]:
    """Stack the ``j``-th delta of every transaction: leaves ``[L, ...]`` (equal structure).

    Args:
      txns: ``L`` transactions with equal :func:`txn_structure`.
      capacity: stack into ``capacity >= L`` rows, as a chunk's loop reads them; the rows
        past ``L`` hold padding (indices ``-1``, zero masks and values). Default ``L``.

    Returns:
      One Delta per position, with host (numpy) leaves of shape ``[capacity, *leaf.shape]``.
    """
    n = len(txns)
    cap = n if capacity is None else int(capacity)
    if cap < n:
        raise OptionError(f"capacity {cap} is less than the {n} transactions stacked")
    out = []
    for j, d in enumerate(txns[0]):
        leaves = {}
        for field in ("indices", "mask", "values"):
            first = getattr(d, field)
            if first is None:
                leaves[field] = None
                continue
            rows = np.empty((cap, *first.shape), first.dtype)
            for i, t in enumerate(txns):  # row by row: cheaper than np.stack of small arrays
                rows[i] = getattr(t[j], field)
            rows[n:] = PADDING if field == "indices" else 0
            leaves[field] = rows
        out.append(Delta(**leaves, page=d.page, kind=d.kind, op=d.op, count=d.count,
                         unique=d.unique))
    return out


def check_stacked_rows(state: State, stacked: Sequence[Delta]) -> None:
    """Row-range check of stacked ``rows`` deltas (structure already validated).

    Raises:
      IndexOutOfRangeError: some index lies outside ``[-1, rows)``.
    """
    for d in stacked:
        if d.kind == "rows" and d.indices.size:
            n = state.pages[d.page].shape[0]
            lo, hi = int(d.indices.min()), int(d.indices.max())
            if lo < PADDING or hi >= n:
                raise IndexOutOfRangeError(
                    f"rows delta on {d.page!r}: indices outside [-1, {n}) (-1 is padding)")


class TransactionRunner:
    """Applies transactions in order, stacking runs of equal structure into scans.

    Add transactions with :meth:`add`, then :meth:`flush`. With ``donate`` the starting State's
    pages are donated to the first chunk and each chunk's to the next (in-place updates: only
    for a State nothing else reads). With ``record_epochs`` the epochs
    after every transaction are kept (``epochs``: one ``{name: int32[L]}`` mapping per applied
    chunk, in order), which is how ``Bus.commit_many`` learns which derived pages each
    transaction changed.
    """

    def __init__(self, state: State, *, graph: Graph | None = None, check: bool = True,
                 max_chunk: int = DEFAULT_MAX_CHUNK, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 record_epochs: bool = False, donate: bool = False):
        self.state = state
        self.donate = donate
        self.graph = graph
        self.check = check
        self.max_chunk = max(1, int(max_chunk))
        self.chunk_bytes = int(chunk_bytes)
        self.record_epochs = record_epochs
        self.epochs: list[tuple[int, Mapping[str, Any]]] = []
        self.key: tuple | None = None
        self.limit = 1
        self.buffer: list[Sequence[Delta]] = []
        # single transactions go through the commit path's compiled form (flat tuples of
        # arrays: JAX's C++ dispatch), one per structure met
        self._single: dict[tuple, CompiledTransaction] = {}

    def add(self, deltas: Sequence[Delta]) -> None:
        """Queue one transaction (applied no later than the next :meth:`flush`)."""
        if not deltas:
            if self.record_epochs:  # an empty transaction changes nothing
                self.flush()
                self.epochs.append((1, {}))
            return
        key = txn_structure(deltas)
        if key != self.key:
            self.flush()
            self.key = key
            self.limit = _chunk_limit(deltas, self.max_chunk, self.chunk_bytes)
        self.buffer.append(deltas)
        if len(self.buffer) >= self.limit:
            self.flush()

    def add_run(self, txns: Sequence[Sequence[Delta]], stacked: Sequence[Delta] | None
                ) -> None:
        """Apply transactions of one structure, already stacked (:func:`stack_transactions`).

        The run is applied in power-of-two chunks as :meth:`add` would; ``stacked`` saves
        stacking them again. With ``stacked=None`` the transactions are applied one by one.
        """
        self.flush()
        self.key = None
        if stacked is None or not txns[0]:
            for t in txns:  # one by one, as given (not re-stacked)
                if t:
                    self._apply_chunk([t])
                elif self.record_epochs:
                    self.epochs.append((1, {}))
            return
        limit = _chunk_limit(txns[0], self.max_chunk, self.chunk_bytes)
        start, n = 0, len(txns)
        while start < n:
            size = min(limit, n - start)
            if size == 1:
                self._apply_chunk(txns[start:start + 1])
            elif size == n:  # the whole run in one chunk: no slicing
                self._apply_stacked(n, list(stacked))
            else:
                self._apply_stacked(size, slice_stacked(stacked, start, start + size))
            start += size

    def add_stacked(self, structure: Sequence[Delta], stacked: Sequence[Delta], count: int
                    ) -> None:
        """Apply ``count`` transactions given already stacked (leaves ``[count, ...]``), each
        of the structure of ``structure`` (checked against the state first when ``check``):
        how replay applies a :class:`~mmsb_jax.store.format.StackedRun`.

        Raises:
          The errors of :func:`~mmsb_jax.core.delta.validate_deltas` and
          :func:`check_stacked_rows`, before anything of the run is applied.
        """
        self.flush()
        self.key = None
        stacked = list(stacked)
        if self.check:
            validate_deltas(self.state, structure)
            check_stacked_rows(self.state, stacked)
        self.add_run(_StackedRows(stacked, int(count)), stacked)

    def flush(self) -> State:
        """Apply everything queued; returns the State reached."""
        buf, self.buffer = self.buffer, []
        if buf:
            self._apply_chunk(buf, self.key)  # the buffer's structure (add sets it first)
        return self.state

    def _apply_chunk(self, txns: Sequence[Sequence[Delta]], key: tuple | None = None
                     ) -> None:
        """Apply ``txns`` (one structure, ``key`` its :func:`txn_structure` if known)."""
        state = self.state
        if len(txns) == 1:
            deltas = txns[0]
            if self.check:
                validate_deltas(state, deltas)
            if key is None:
                key = txn_structure(deltas)
            ct = self._single.get(key)
            if ct is None or not ct.matches(state):
                if len(self._single) >= _MAX_SINGLE:
                    self._single.clear()
                ct = self._single[key] = CompiledTransaction(state, deltas, graph=self.graph)
            self.state = ct(state, deltas, donate=self.donate)
            if self.record_epochs:
                self.epochs.append((1, self.state.epochs))
            return
        stacked = stack_transactions(txns, _capacity(len(txns)))
        if self.check:
            validate_deltas(state, txns[0])
            check_stacked_rows(state, stacked)
        self._apply_stacked(len(txns), stacked)

    def _apply_stacked(self, count: int, stacked: list[Delta]) -> None:
        """Apply ``count`` transactions stacked into ``[count, ...]`` or a capacity of them."""
        self._record(count, *_pad_and_apply(self.state, stacked, count, graph=self.graph,
                                            donate=self.donate, per_step=self.record_epochs))

    def _record(self, count: int, state: State, per_step: Mapping[str, Any]) -> None:
        self.state = state
        if self.record_epochs:
            self.epochs.append((count, per_step))


_MAX_SINGLE = 256  # compiled single-transaction structures a runner keeps


class _StackedRows(Sequence):
    """Stacked transactions seen as a sequence of transactions (row ``i`` of every leaf)."""

    def __init__(self, stacked: list[Delta], n: int):
        self.stacked, self.n = stacked, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        return [Delta._new(_row(d.indices, i), _row(d.mask, i), d.values[i], d.page, d.kind,
                           d.op, d.count, d.unique) for d in self.stacked]


def _row(x: Any, i: int) -> Any:
    return None if x is None else x[i]


def _chunk_limit(deltas: Sequence[Delta], max_chunk: int, chunk_bytes: int) -> int:
    """The longest chunk of this structure: a power of two within both caps."""
    per = max(1, txn_nbytes(deltas))
    cap = max(1, min(max_chunk, chunk_bytes // per))
    return 1 << (cap.bit_length() - 1)


def slice_stacked(stacked: Sequence[Delta], start: int, stop: int) -> list[Delta]:
    """Transactions ``start:stop`` of stacked deltas (leaves ``[L, ...]``): views, no copy."""
    return [Delta._new(None if d.indices is None else d.indices[start:stop],
                       None if d.mask is None else d.mask[start:stop], d.values[start:stop],
                       d.page, d.kind, d.op, d.count, d.unique) for d in stacked]


def apply_transactions(state: State, txns: Iterable[Sequence[Delta]], *,
                       graph: Graph | None = None, check: bool = True,
                       max_chunk: int = DEFAULT_MAX_CHUNK,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> State:
    """Apply transactions in order; runs of equal structure go through one scan each.

    Equals ``functools.reduce(lambda s, t: apply_transaction(s, t, graph=graph), txns,
    state)`` bit for bit, with one dispatch per power-of-two chunk of a run instead of one per
    transaction.

    Args:
      state: the starting State.
      txns: transactions (sequences of Deltas), in order.
      graph: as for :func:`apply_transaction`.
      check: validate each run against the state first (typed errors).
      max_chunk: the longest scan (a power of two is used).
      chunk_bytes: cap on the stacked delta bytes of one scan.

    Returns:
      The State after the last transaction.
    """
    runner = TransactionRunner(state, graph=graph, check=check, max_chunk=max_chunk,
                               chunk_bytes=chunk_bytes)
    for t in txns:
        runner.add(list(t))
    return runner.flush()
