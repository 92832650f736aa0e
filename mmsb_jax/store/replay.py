"""Replay: rebuild a State from a log, one jitted ``lax.scan`` per run of same-shaped commits.

The live commit path (``Bus.commit``, ``Bus.commit_many``) and replay apply transactions with
the *same* functions, :mod:`mmsb_jax.core.transaction`, so ``restore(checkpoint) +
replay(log suffix)`` equals the live state bit for bit (same backend and JAX version): replay
only feeds the log's transactions to a :class:`~mmsb_jax.core.transaction.TransactionRunner`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

from mmsb_jax.core.pages import State
from mmsb_jax.core.transaction import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_CHUNK,
    TransactionRunner,
    apply_transaction,
    txn_structure,
)
from mmsb_jax.errors import StoreError
from mmsb_jax.store.format import StackedRun, Transaction

__all__ = ["apply_transaction", "replay", "replay_with_seq", "txn_structure"]

PROGRESS_MIN_TXNS = 2000

def _as_transactions(log: Any, after_seq: int, to_seq: int | None, max_run: int
                     ) -> tuple[Iterator[Transaction | StackedRun], int | None, Any]:
    """``(iterator, total or None, closer)`` for a TLog, a path, or an iterable. A log is
    read with runs of one structure stacked (:meth:`TLog.transaction_runs`)."""
    from mmsb_jax.store.tlog import TLog

    if isinstance(log, TLog):
        last = log.last_seq if to_seq is None else min(to_seq, log.last_seq)
        return (log.transaction_runs(after_seq, to_seq, max_run), max(0, last - after_seq),
                None)
    if isinstance(log, str | os.PathLike):
        from mmsb_jax.store.tlog import log_dir

        tl = TLog.open(log_dir(log), readonly=True)
        last = tl.last_seq if to_seq is None else min(to_seq, tl.last_seq)
        return tl.transaction_runs(after_seq, to_seq, max_run), max(0, last - after_seq), tl

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
    txns, total, closer = _as_transactions(log, after_seq, to_seq, max_chunk)
    runner = TransactionRunner(state, max_chunk=max_chunk, chunk_bytes=chunk_bytes,
                               check=check, graph=graph)
    if progress is None:
        progress = bool(total and total >= PROGRESS_MIN_TXNS and sys.stderr.isatty())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="txn", desc="replay", leave=False)
    seq = after_seq
    try:
        for t in txns:
            first = t.first_seq if isinstance(t, StackedRun) else t.seq
            if first != seq + 1:
                raise StoreError(f"transaction {first} follows seq {seq}: seqs must be "
                                 "consecutive (is after_seq right?)")
            if isinstance(t, StackedRun):
                runner.add_stacked(t.structure, t.deltas, t.count)
                seq += t.count
            else:
                runner.add(t.deltas)
                seq = t.seq
            if bar is not None:
                bar.update(seq - first + 1)
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
    and applied in chunks (one jitted ``lax.scan`` per power-of-two chunk, or a loop with a
    traced trip count over a chunk padded to the next power of two); each transaction is applied
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

