"""Replay: rebuild a State from a log, one jitted ``lax.scan`` per run of same-shaped commits.

The live commit path (:func:`apply_transaction`, used by the Bus) and replay apply a
transaction with the *same* traced function, ``apply_batch`` over the transaction's deltas, so
``restore(checkpoint) + replay(log suffix)`` equals the live state bit for bit (same backend and
JAX version): replay only wraps that function in a scan over stacked transactions.

Transactions whose deltas have the same structure (pages, kinds, ops, counts, shapes and dtypes)
form a *run*. A run of length ``L`` is applied as a few scans whose lengths are the powers of two
in ``L``'s binary expansion (at most ``max_chunk`` each), so a structure compiles at most
``log2(max_chunk) + 1`` times however long the log is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax

from mmsb_jax.core.delta import PADDING, Delta, apply_batch, validate_deltas
from mmsb_jax.core.pages import State
from mmsb_jax.errors import IndexOutOfRangeError, StoreError
from mmsb_jax.store.format import Transaction

__all__ = ["apply_transaction", "replay", "replay_with_seq", "txn_structure"]

DEFAULT_MAX_CHUNK = 1024
DEFAULT_CHUNK_BYTES = 64 << 20
PROGRESS_MIN_TXNS = 2000


# ``shardings`` (static) is the State's recorded page shardings: traced pages on an auto mesh
# carry none, and apply_batch needs them to keep every page's sharding (and to merge row deltas
# on row-sharded pages per shard).
def _txn_apply_impl(pages: dict[str, jax.Array], epochs: dict[str, jax.Array],
                    deltas: list[Delta], shardings: tuple = ()):
    out = apply_batch(State(pages=pages, epochs=epochs, shardings=shardings), deltas)
    return dict(out.pages), dict(out.epochs)


_txn_apply = jax.jit(_txn_apply_impl, static_argnums=3)


def _scan_impl(pages: dict[str, jax.Array], epochs: dict[str, jax.Array],
               stacked: list[Delta], shardings: tuple = ()):
    def body(carry, deltas):
        return _txn_apply_impl(carry[0], carry[1], deltas, shardings), None

    (pages, epochs), _ = lax.scan(body, (pages, epochs), stacked)
    return pages, epochs


_scan = jax.jit(_scan_impl, static_argnums=3)


# With a graph, a transaction is apply_batch followed by propagation of the pages it touched.
# The carry is then every page (derived pages read base pages the transaction did not touch).
def _txn_graph_impl(graph: Any, pages: dict[str, jax.Array], epochs: dict[str, jax.Array],
                    deltas: list[Delta], shardings: tuple = ()):
    from mmsb_jax.core.propagate import propagate

    out = apply_batch(State(pages=pages, epochs=epochs, shardings=shardings), deltas)
    out = propagate(graph, out, tuple(_touched(deltas)))
    return dict(out.pages), dict(out.epochs)


_txn_graph = jax.jit(_txn_graph_impl, static_argnums=(0, 4))


def _scan_graph_impl(graph: Any, pages: dict[str, jax.Array], epochs: dict[str, jax.Array],
                     stacked: list[Delta], shardings: tuple = ()):
    def body(carry, deltas):
        return _txn_graph_impl(graph, carry[0], carry[1], deltas, shardings), None

    (pages, epochs), _ = lax.scan(body, (pages, epochs), stacked)
    return pages, epochs


_scan_graph = jax.jit(_scan_graph_impl, static_argnums=(0, 4))


def _touched(deltas: Sequence[Delta]) -> list[str]:
    return list(dict.fromkeys(d.page for d in deltas))


def _shardings_of(state: State, names: Sequence[str]) -> tuple:
    """The recorded shardings of ``names`` (a static jit argument; one per touched set)."""
    wanted = set(names)
    return tuple((n, sh) for n, sh in state.shardings if n in wanted)


def _jitted(fn: Any, shardings: tuple, *args: Any) -> Any:
    """``fn(*args)``, passing the static ``shardings`` last only when there are any."""
    return fn(*args, shardings) if shardings else fn(*args)


_check_pages = validate_deltas


def apply_transaction(state: State, deltas: Sequence[Delta], *, check: bool = True,
                      graph: Any = None) -> State:
    """Apply one transaction exactly as the Bus commits it (and as :func:`replay` does).

    Equivalent to ``mm.apply_batch(state, deltas)`` (same merge, same order), run as one jitted
    function over the touched pages only, so the result is bit-identical to the scan body that
    replays the transaction.

    Args:
      state: the current State.
      deltas: the transaction's deltas, in order.
      check: validate the deltas against the state first (typed errors, nothing changes).
      graph: an ``mm.Graph``: derived pages are then recomputed with ``mm.propagate`` from the
        pages the transaction touched, inside the same jitted function.

    Returns:
      The new State; pages not touched are shared with ``state``.
    """
    deltas = list(deltas)
    if not deltas:
        return state
    if check:
        _check_pages(state, deltas)
    if graph is not None:
        pages, epochs = _jitted(_txn_graph, state.shardings, graph, dict(state.pages),
                                dict(state.epochs), deltas)
        return state.with_pages(pages, epochs)
    names = _touched(deltas)
    pages, epochs = _jitted(_txn_apply, _shardings_of(state, names),
                            {n: state.pages[n] for n in names},
                            {n: state.epochs[n] for n in names}, deltas)
    return state.with_pages(pages, epochs)


def txn_structure(deltas: Sequence[Delta]) -> tuple:
    """A hashable key: transactions with equal keys stack into one scan."""
    key = []
    for d in deltas:
        leaves = tuple(None if x is None else (tuple(np.shape(x)), np.dtype(x.dtype).str)
                       for x in (d.indices, d.mask, d.values))
        key.append((d.page, d.kind, d.op, d.count, leaves))
    return tuple(key)


def _txn_nbytes(deltas: Sequence[Delta]) -> int:
    total = 0
    for d in deltas:
        for x in (d.indices, d.mask, d.values):
            if x is not None:
                total += int(np.prod(np.shape(x), dtype=np.int64)) * np.dtype(x.dtype).itemsize
    return total


def _stack(txns: Sequence[Sequence[Delta]]) -> list[Delta]:
    """Stack the j-th delta of every transaction: leaves ``[L, ...]`` (equal structure)."""
    out = []
    for j, d in enumerate(txns[0]):
        leaves = {}
        for field in ("indices", "mask", "values"):
            leaves[field] = (None if getattr(d, field) is None else
                             np.stack([np.asarray(getattr(t[j], field)) for t in txns]))
        out.append(Delta(**leaves, page=d.page, kind=d.kind, op=d.op, count=d.count))
    return out


def _check_run(state: State, txns: Sequence[Sequence[Delta]], stacked: list[Delta]) -> None:
    """Validate a run: shapes/dtypes once (equal structure), row ranges on the stacked indices."""
    _check_pages(state, txns[0])
    for d in stacked:
        if d.kind == "rows" and d.indices.size:
            n = state.pages[d.page].shape[0]
            lo, hi = int(d.indices.min()), int(d.indices.max())
            if lo < PADDING or hi >= n:
                raise IndexOutOfRangeError(
                    f"logged rows delta on {d.page!r}: indices outside [-1, {n})")


class _Runner:
    """Applies transactions to a State, batching runs of equal structure into scans."""

    def __init__(self, state: State, *, max_chunk: int, chunk_bytes: int, check: bool,
                 graph: Any = None):
        self.state = state
        self.graph = graph
        self.max_chunk = max(1, int(max_chunk))
        self.chunk_bytes = int(chunk_bytes)
        self.check = check
        self.key: tuple | None = None
        self.limit = 1
        self.buffer: list[Sequence[Delta]] = []

    def add(self, deltas: Sequence[Delta]) -> None:
        if not deltas:
            return
        key = txn_structure(deltas)
        if key != self.key:
            self.flush()
            self.key = key
            per = max(1, _txn_nbytes(deltas))
            cap = max(1, min(self.max_chunk, self.chunk_bytes // per))
            self.limit = 1 << (cap.bit_length() - 1)
        self.buffer.append(deltas)
        if len(self.buffer) >= self.limit:
            self.flush()

    def flush(self) -> None:
        buf, self.buffer = self.buffer, []
        start = 0
        while start < len(buf):
            size = 1 << ((len(buf) - start).bit_length() - 1)
            self._apply_chunk(buf[start:start + size])
            start += size

    def _apply_chunk(self, txns: Sequence[Sequence[Delta]]) -> None:
        state = self.state
        stacked = _stack(txns) if len(txns) > 1 else None
        if self.check:
            if stacked is None:
                _check_pages(state, txns[0])
            else:
                _check_run(state, txns, stacked)
        if self.graph is not None:
            pages, epochs = dict(state.pages), dict(state.epochs)
            if stacked is None:
                pages, epochs = _jitted(_txn_graph, state.shardings, self.graph, pages, epochs,
                                        list(txns[0]))
            else:
                pages, epochs = _jitted(_scan_graph, state.shardings, self.graph, pages, epochs,
                                        stacked)
            self.state = state.with_pages(pages, epochs)
            return
        names = _touched(txns[0])
        pages = {n: state.pages[n] for n in names}
        epochs = {n: state.epochs[n] for n in names}
        shardings = _shardings_of(state, names)
        if stacked is None:
            pages, epochs = _jitted(_txn_apply, shardings, pages, epochs, list(txns[0]))
        else:
            pages, epochs = _jitted(_scan, shardings, pages, epochs, stacked)
        self.state = state.with_pages(pages, epochs)


def _as_transactions(log: Any, after_seq: int, to_seq: int | None
                     ) -> tuple[Iterator[Transaction], int | None, Any]:
    """``(iterator, total or None, closer)`` for a TLog, a path, or an iterable."""
    from mmsb_jax.store.tlog import TLog

    if isinstance(log, TLog):
        last = log.last_seq if to_seq is None else min(to_seq, log.last_seq)
        return log.transactions(after_seq, to_seq), max(0, last - after_seq), None
    if isinstance(log, str | os.PathLike):
        from pathlib import Path

        p = Path(log)
        if (p / "log").is_dir():
            p = p / "log"
        tl = TLog.open(p, readonly=True)
        last = tl.last_seq if to_seq is None else min(to_seq, tl.last_seq)
        return tl.transactions(after_seq, to_seq), max(0, last - after_seq), tl

    def gen() -> Iterator[Transaction]:
        for t in log:
            if isinstance(t, Transaction):
                seq, deltas = t.seq, t.deltas
            else:
                seq, deltas = t
                deltas = list(deltas)
                t = Transaction(int(seq), tuple(deltas))
            if seq <= after_seq:
                continue
            if to_seq is not None and seq > to_seq:
                return
            yield t

    total = len(log) if hasattr(log, "__len__") else None
    return gen(), total, None


def replay_with_seq(state: State, log: Any, *, after_seq: int = 0, to_seq: int | None = None,
                    check: bool = True, progress: bool | None = None,
                    max_chunk: int = DEFAULT_MAX_CHUNK,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                    graph: Any = None) -> tuple[State, int]:
    """Like :func:`replay`, also returning the seq of the last transaction applied.

    Returns ``(state, after_seq)`` unchanged when there is nothing to apply.
    """
    after_seq = int(after_seq)
    txns, total, closer = _as_transactions(log, after_seq, to_seq)
    runner = _Runner(state, max_chunk=max_chunk, chunk_bytes=chunk_bytes, check=check,
                     graph=graph)
    if progress is None:
        progress = bool(total and total >= PROGRESS_MIN_TXNS and sys.stderr.isatty())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="txn", desc="replay", leave=False)
    seq = after_seq
    try:
        for t in txns:
            if t.seq != seq + 1:
                raise StoreError(f"transaction {t.seq} follows seq {seq}: seqs must be "
                                 "consecutive (is after_seq right?)")
            seq = t.seq
            runner.add(t.deltas)
            if bar is not None:
                bar.update(1)
        runner.flush()
    finally:
        if bar is not None:
            bar.close()
        if closer is not None:
            closer.close()
    return runner.state, seq


def replay(state: State, log: Any, *, after_seq: int = 0, to_seq: int | None = None,
           check: bool = True, progress: bool | None = None,
           max_chunk: int = DEFAULT_MAX_CHUNK, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
           graph: Any = None) -> State:
    """Apply the transactions ``after_seq < seq <= to_seq`` of a log to ``state``.

    Runs of consecutive transactions with the same structure are stacked (``[L, ...]`` leaves)
    and applied by one jitted ``lax.scan`` per power-of-two chunk; each transaction is applied
    exactly as :func:`apply_transaction` (the Bus commit path) applies it, so the result is
    bit-identical to committing the same transactions live, epochs included.

    Args:
      state: the State as of ``after_seq`` (e.g. restored from the checkpoint at that seq, or
        ``init_state(schema)`` for ``after_seq=0``).
      log: a :class:`~mmsb_jax.store.TLog`, a path (log or bus directory, read-only), or an
        iterable of :class:`Transaction` or ``(seq, [Delta, ...])`` pairs in seq order.
      after_seq: skip transactions with ``seq <= after_seq``.
      to_seq: stop after this seq (default: the end of the log).
      check: validate deltas against the state (dtype, shape, row range) before applying.
      progress: show a tqdm bar (default: when stderr is a terminal and the log is long).
      max_chunk: the longest scan (a power of two is used).
      chunk_bytes: cap on the stacked delta bytes of one scan.
      graph: the ``mm.Graph`` of the store's derived pages. Derived pages are not logged as
        deltas; with the graph they are rebuilt by propagating after every transaction (inside
        the scan body), exactly as the Bus did live, so derived values and epochs match.

    Returns:
      The State after the last transaction replayed.

    Raises:
      StoreError: seqs are not consecutive. UnknownSeqError: ``after_seq`` precedes the log.
      UnknownPageError / DTypeError / ShapeError / IndexOutOfRangeError: a logged delta does
      not fit the state.
    """
    return replay_with_seq(state, log, after_seq=after_seq, to_seq=to_seq, check=check,
                           progress=progress, max_chunk=max_chunk, chunk_bytes=chunk_bytes,
                           graph=graph)[0]

