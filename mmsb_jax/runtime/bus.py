"""The Bus: a durable, thread-safe commit pipeline over a State.

``commit`` runs *validate -> log one transaction -> apply -> propagate -> notify*. Validation
happens before anything is written; a failed log write leaves the log as it was; a failed apply
removes the logged transaction again. So a commit either happens completely or not at all.
Recovery (``Bus.open`` on an existing directory) restores the latest checkpoint and replays the
log after it, applying each transaction exactly as ``commit`` did, so the recovered state is
bit-identical to the state before the crash (up to the last durable commit).

>>> import tempfile, numpy as np, mmsb_jax as mm
>>> schema = mm.Schema([mm.PageSpec("x", (4,), "int32")])
>>> d = tempfile.mkdtemp()
>>> with mm.Bus.open(d, schema, sync="never") as bus:
...     info = bus.commit([mm.Delta.rows("x", np.array([1]), np.array([7], np.int32))])
...     info.seq, bus.read("x").tolist()
(1, [0, 7, 0, 0])
>>> with mm.Bus.open(d) as bus:                 # reopen: the schema comes from the log
...     bus.seq, bus.read("x").tolist(), bus.at(0).pages["x"].tolist()
(1, [0, 7, 0, 0], [0, 0, 0, 0])
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mmsb_jax.core.delta import Delta
from mmsb_jax.core.graph import changed_provenance
from mmsb_jax.core.pages import Schema, State, init_state
from mmsb_jax.errors import (
    GraphError,
    OptionError,
    SchemaMismatchError,
    StoreError,
    UnknownPageError,
    UnknownSeqError,
)
from mmsb_jax.runtime.telemetry import Telemetry
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.replay import _check_pages, apply_transaction, replay_with_seq
from mmsb_jax.store.tlog import (
    DEFAULT_BATCH_COMMITS,
    DEFAULT_BATCH_INTERVAL_MS,
    DEFAULT_SEGMENT_BYTES,
    TLog,
)

__all__ = ["Bus", "CommitInfo", "Subscription"]

log = logging.getLogger("mmsb_jax.runtime")

Callback = Callable[["CommitInfo", State], Any]


@dataclasses.dataclass(frozen=True)
class CommitInfo:
    """What one :meth:`Bus.commit` did.

    Attributes:
      seq: the commit's sequence number (1, 2, ...).
      bytes_logged: bytes appended to the log for this transaction.
      pages: base pages the transaction's deltas touched, in first-touch order.
      derived: derived pages recomputed by propagation (``()`` without a graph).
      durable: True if the transaction was fsynced before ``commit`` returned (``sync="always"``).
      timestamp_ns: commit time, ns since the Unix epoch (also stored in the log).
      seconds: wall time of the commit.
    """

    seq: int
    bytes_logged: int
    pages: tuple[str, ...]
    derived: tuple[str, ...] = ()
    durable: bool = False
    timestamp_ns: int = 0
    seconds: float = 0.0


class Subscription:
    """Handle returned by :meth:`Bus.subscribe`; call it (or :meth:`unsubscribe`) to stop."""

    def __init__(self, bus: Bus, pages: frozenset[str] | None, callback: Callback):
        self._bus = bus
        self.pages = pages
        self.callback = callback
        self.active = True

    def matches(self, info: CommitInfo) -> bool:
        """Whether a commit touched one of the subscribed pages (None: any commit)."""
        if self.pages is None:
            return True
        return not self.pages.isdisjoint(info.pages) or not self.pages.isdisjoint(info.derived)

    def unsubscribe(self) -> None:
        """Stop receiving notifications (idempotent)."""
        self._bus._remove_subscription(self)

    __call__ = unsubscribe


def _check_not_derived(graph: Any, deltas: Sequence[Delta]) -> None:
    for d in deltas:
        if graph.is_derived(d.page):
            raise GraphError(f"page {d.page!r} is derived (recomputed from "
                             f"{', '.join(graph.inputs(d.page))}); commit deltas to its inputs")


def _is_prefix(base: Schema, full: Schema) -> bool:
    return full.specs[: len(base.specs)] == base.specs


class Bus:
    """A durable state bus in one directory: a transaction log, checkpoints and a live State.

    Open with :meth:`Bus.open`; see the module docstring for an example. Each Bus owns its
    directory (a second writer gets :class:`StoreError`).
    """

    def __init__(self, directory: Path, schema: Schema, graph: Any, tlog: TLog,
                 ckpts: CheckpointStore, telemetry: Telemetry, state: State, seq: int, *,
                 mesh: jax.sharding.Mesh | None, checkpoint_every: int | None,
                 prune_log: bool):
        self.directory = directory
        self.schema = schema
        self.graph = graph
        self._tlog = tlog
        self._ckpts = ckpts
        self._tel = telemetry
        self._state = state
        self._seq = seq
        self._mesh = mesh
        self._checkpoint_every = checkpoint_every
        self._prune_log = prune_log
        self._lock = threading.Lock()  # serialises commits
        self._notify_lock = threading.RLock()  # keeps notifications in commit order
        self._ckpt_lock = threading.RLock()
        self._subs: list[Subscription] = []
        self._closed = False
        telemetry.seq.set(seq)
        telemetry.torn.set(tlog.recovery.bytes_cut)
        telemetry.set_page_memory(state.pages)

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike, schema: Schema | None = None,
             graph: Any = None, sync: str = "batch", *, mesh: jax.sharding.Mesh | None = None,
             checkpoint_every: int | None = None, keep_checkpoints: int = 3,
             prune_log: bool = False, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             batch_commits: int = DEFAULT_BATCH_COMMITS,
             batch_interval_ms: float = DEFAULT_BATCH_INTERVAL_MS) -> Bus:
        """Open the bus in ``directory``, creating it or recovering it.

        Args:
          directory: the bus directory (created with mode 0700): ``log/`` and
            ``checkpoints/`` live in it.
          schema: required for a new directory; for an existing one it may be omitted (read
            from the log) and, if given, must equal the stored one. With a ``graph`` it may be
            the base schema or ``graph.schema``.
          graph: an ``mm.Graph`` of derived pages (its schema is the bus schema).
          sync: ``"always"`` (fsync per commit), ``"batch"`` (group commit, default) or
            ``"never"``.
          mesh: place pages on this mesh (pages with ``sharding`` are sharded).
          checkpoint_every: also checkpoint (asynchronously) every this many commits.
          keep_checkpoints: retention: keep the last K checkpoints.
          prune_log: after each durable checkpoint, delete log segments wholly covered by the
            oldest kept checkpoint (time travel before it is then no longer possible).
          segment_bytes: roll the log to a new segment at this size.
          batch_commits: ``batch`` sync: fsync at least every this many commits.
          batch_interval_ms: ``batch`` sync: fsync at most this long after a commit.

        Returns:
          The open Bus; its state is the state after the last complete logged commit.

        Raises:
          SchemaMismatchError: ``schema`` (or the graph's) differs from the stored one.
          StoreError: another live writer holds the directory, or a new directory without a
            schema. LogCorruptError: the log is corrupt (see ``mmsb log repair``).
          OptionError: a bad option.
        """
        if checkpoint_every is not None and int(checkpoint_every) < 1:
            raise OptionError(f"checkpoint_every must be >= 1 or None, got {checkpoint_every}")
        if int(keep_checkpoints) < 1:
            raise OptionError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
        if graph is not None:
            full = graph.schema
            if schema is not None and schema != full and not _is_prefix(schema, full):
                raise SchemaMismatchError(
                    f"schema {schema} is neither the graph's schema nor its base schema")
            schema = full
        provenance = dict(graph.provenance()) if graph is not None else {}
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise StoreError(f"{directory} is not a directory")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        telemetry = Telemetry()
        tlog = TLog.open(directory / "log", schema, graph=provenance, sync=sync,
                         segment_bytes=segment_bytes, batch_commits=batch_commits,
                         batch_interval_ms=batch_interval_ms,
                         on_fsync=lambda s: telemetry.observe("fsync", s))
        ckpts = None
        try:
            ckpts = CheckpointStore(directory / "checkpoints", keep=int(keep_checkpoints))
            if graph is not None and tlog.graph:
                changed = changed_provenance(tlog.graph, provenance)
                if changed:
                    log.warning("the code of derived page(s) %s changed since %s was written; "
                                "replay recomputes them with the new code", ", ".join(changed),
                                directory)
            state, seq = _recover(tlog, ckpts, tlog.schema, mesh, graph)
            return cls(directory, tlog.schema, graph, tlog, ckpts, telemetry, state, seq,
                       mesh=mesh, checkpoint_every=None if checkpoint_every is None
                       else int(checkpoint_every), prune_log=bool(prune_log))
        except BaseException:
            if ckpts is not None:
                ckpts.close()
            tlog.close()
            raise

    # -- properties -------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The current State (immutable; later commits produce new States)."""
        return self._state

    @property
    def seq(self) -> int:
        """Seq of the last commit (0 before the first)."""
        return self._seq

    @property
    def sync_policy(self) -> str:
        """The log's sync policy."""
        return self._tlog.sync_policy

    @property
    def log(self) -> TLog:
        """The underlying transaction log."""
        return self._tlog

    @property
    def checkpoints(self) -> CheckpointStore:
        """The checkpoint store (``DIR/checkpoints``)."""
        return self._ckpts

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    # -- commit -----------------------------------------------------------------------------
    def commit(self, deltas: Delta | Sequence[Delta]) -> CommitInfo:
        """Commit one transaction: validate -> log -> apply -> propagate -> notify.

        Args:
          deltas: a Delta or a sequence of Deltas, applied in order as one transaction
            (``apply_batch`` semantics). An empty sequence commits an empty transaction.

        Returns:
          :class:`CommitInfo` with the new seq.

        Raises:
          UnknownPageError, DTypeError, ShapeError, MaskError, IndexOutOfRangeError, OpError:
            an invalid delta (nothing logged, state unchanged).
          StoreError: the log write failed (log and state unchanged) or the bus is closed.
          FormatError: a delta too large for one log record (nothing logged).
        """
        t0 = time.perf_counter()
        deltas = [deltas] if isinstance(deltas, Delta) else list(deltas)
        with self._lock:
            if self._closed:
                raise StoreError(f"bus {self.directory} is closed")
            state = self._state
            try:
                _check_pages(state, deltas)
                if self.graph is not None:
                    _check_not_derived(self.graph, deltas)
            except BaseException:
                self._tel.failures.inc()
                raise
            t1 = time.perf_counter()
            seq = self._seq + 1
            pages = tuple(dict.fromkeys(d.page for d in deltas))
            affected = (tuple(n for n in self.graph.descendants(pages) if self.graph.is_derived(n))
                        if self.graph is not None and pages else ())
            ts = time.time_ns()
            try:
                nbytes = self._tlog.append(seq, deltas, affected, timestamp_ns=ts)
            except BaseException:
                self._tel.failures.inc()
                raise
            t2 = time.perf_counter()
            try:
                new_state = apply_transaction(state, deltas, check=False, graph=self.graph)
                jax.block_until_ready([new_state.pages[n] for n in (*pages, *affected)])
                t3 = time.perf_counter()
                derived = self._changed_derived(state, new_state, affected)
            except BaseException:
                self._tel.failures.inc()
                self._tlog.undo_last()
                raise
            t4 = time.perf_counter()
            self._state = new_state
            self._seq = seq
            info = CommitInfo(seq=seq, bytes_logged=nbytes, pages=pages, derived=tuple(derived),
                              durable=self._tlog.sync_policy == "always", timestamp_ns=ts,
                              seconds=t4 - t0)
            tel = self._tel
            tel.observe("validate", t1 - t0)
            tel.observe("log", t2 - t1)
            tel.observe("apply", t3 - t2)
            tel.observe("propagate", t4 - t3)
            tel.observe("commit", t4 - t0)
            tel.commits.inc()
            tel.bytes_logged.inc(nbytes)
            tel.bytes_applied.inc(sum(int(np.size(d.values)) * np.dtype(d.values.dtype).itemsize
                                      for d in deltas))
            tel.seq.set(seq)
            if self._checkpoint_every and seq % self._checkpoint_every == 0:
                self._checkpoint_locked(wait=False)
            subs = [s for s in self._subs if s.matches(info)]
            self._notify_lock.acquire()
        try:
            t5 = time.perf_counter()
            for sub in subs:
                if not sub.active:
                    continue
                try:
                    sub.callback(info, new_state)
                except Exception:
                    tel.callback_errors.inc()
                    log.exception("subscriber callback for pages %s raised", sub.pages)
            if subs:
                tel.observe("notify", time.perf_counter() - t5)
        finally:
            self._notify_lock.release()
        return info

    @staticmethod
    def _changed_derived(before: State, after: State, affected: Sequence[str]
                         ) -> tuple[str, ...]:
        """Derived pages whose value changed in this commit (their epoch moved).

        Propagation runs inside the commit's jitted transaction (:func:`apply_transaction`
        with the graph), recomputing every affected derived page exactly once; a page whose
        value did not change keeps its epoch (early cut-off), so it is not reported.
        """
        return tuple(n for n in affected if int(after.epochs[n]) != int(before.epochs[n]))

    # -- reading ----------------------------------------------------------------------------
    def read(self, name: str) -> np.ndarray:
        """A numpy copy of page ``name`` (current state).

        Raises:
          UnknownPageError: no such page.
        """
        return np.array(self._state.page(name), copy=True)

    def at(self, seq: int) -> State:
        """The State right after commit ``seq`` (``0``: the initial state).

        Restores the nearest checkpoint at or before ``seq`` and replays the log up to ``seq``.

        Raises:
          UnknownSeqError: ``seq`` is negative, in the future, or before the oldest data still
            held (log segments pruned and no checkpoint at or before it).
        """
        if isinstance(seq, bool) or not isinstance(seq, int | np.integer):
            raise UnknownSeqError(f"seq must be an int, got {type(seq).__name__}")
        seq = int(seq)
        with self._lock:
            current, state = self._seq, self._state
        if seq < 0 or seq > current:
            raise UnknownSeqError(f"seq {seq} outside 0..{current}")
        if seq == current:
            return state
        with self._ckpt_lock:
            return _state_at(self._tlog, self._ckpts, self.schema, seq, self._mesh, self.graph)

    # -- subscriptions ----------------------------------------------------------------------
    def subscribe(self, pages: str | Iterable[str] | None, callback: Callback) -> Subscription:
        """Call ``callback(info, state)`` after each commit touching any of ``pages``.

        Args:
          pages: a page name, names, or None for every commit. Derived pages count when
            propagation recomputed them.
          callback: called in commit order, outside the commit lock, with the
            :class:`CommitInfo` and the new State. Exceptions are logged and counted
            (``metrics()["callback_errors"]``), never raised into ``commit``.

        Returns:
          A :class:`Subscription`; call it to unsubscribe.
        """
        if not callable(callback):
            raise OptionError("callback must be callable")
        names = None
        if pages is not None:
            names = frozenset([pages] if isinstance(pages, str) else pages)
            for n in names:
                if n not in self.schema:
                    raise UnknownPageError(n, self.schema.names)
        sub = Subscription(self, names, callback)
        with self._lock:
            self._subs = [*self._subs, sub]
        return sub

    def _remove_subscription(self, sub: Subscription) -> None:
        with self._lock:
            sub.active = False
            self._subs = [s for s in self._subs if s is not sub]

    # -- durability -------------------------------------------------------------------------
    def sync(self) -> None:
        """Make every commit so far durable (fsync the log)."""
        self._tlog.sync()

    def checkpoint(self) -> int:
        """Save a checkpoint of the current state and wait until it is durable.

        The log is fsynced first, so a checkpoint is never ahead of the durable log.

        Returns:
          The seq of the checkpoint.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"bus {self.directory} is closed")
            return self._checkpoint_locked(wait=True)

    def _checkpoint_locked(self, *, wait: bool) -> int:
        seq, state = self._seq, self._state
        self._tlog.sync()
        with self._ckpt_lock:
            t0 = time.perf_counter()
            if wait:
                self._ckpts.wait()
            self._ckpts.save(seq, state, self.schema, graph=self._provenance(), wait=wait)
            self._tel.checkpoints.inc()
            self._tel.observe("checkpoint", time.perf_counter() - t0)
            if wait and self._prune_log:
                self._prune_locked()
        return seq

    def prune_log(self) -> list[Path]:
        """Delete log segments wholly covered by the oldest kept checkpoint.

        Time travel (:meth:`at`) to seqs before that checkpoint is no longer possible.

        Returns:
          The removed segment paths.
        """
        with self._lock, self._ckpt_lock:
            return self._prune_locked()

    def _prune_locked(self) -> list[Path]:
        self._ckpts.wait()
        steps = self._ckpts.steps()
        if not steps:
            return []
        return self._tlog.remove_segments_through(steps[0])

    def _provenance(self) -> dict[str, str]:
        return dict(self.graph.provenance()) if self.graph is not None else {}

    # -- telemetry --------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """Counters, latency histograms and sizes as plain Python values.

        Keys: ``commits, commit_failures, seq, bytes_logged, bytes_applied, checkpoints,
        callback_errors, torn_tail_bytes_cut, page_bytes, page_bytes_by_device, latency``
        (``{stage: {count, sum_s, mean_s, buckets}}`` for commit, validate, log, apply,
        propagate, notify, fsync, checkpoint), ``fsyncs``, ``sync``, ``log_segments``,
        ``first_seq``.
        """
        out = self._tel.snapshot()
        out.update(fsyncs=self._tlog.fsyncs, sync=self._tlog.sync_policy,
                   log_segments=len(self._tlog.segments), first_seq=self._tlog.first_seq)
        return out

    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Serve Prometheus metrics at ``http://addr:port/metrics``; returns the port."""
        return self._tel.serve(port, addr)

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for checkpoints, flush and close the log, release the directory (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            with self._ckpt_lock:
                self._ckpts.close()
        finally:
            try:
                self._tlog.close()
            finally:
                self._tel.close()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"seq={self._seq}"
        return f"Bus({str(self.directory)!r}, {state}, sync={self._tlog.sync_policy!r})"


def _initial_or_checkpoint(tlog: TLog, ckpts: CheckpointStore, schema: Schema, seq: int,
                           mesh: jax.sharding.Mesh | None) -> tuple[State, int]:
    """The best starting point for reaching ``seq``: ``(state, its seq)``."""
    base = ckpts.latest(seq)
    if base is not None and base >= tlog.first_seq - 1:
        state, _ = ckpts.restore(base, schema, mesh=mesh)
        return state, base
    if tlog.first_seq > 1:
        raise UnknownSeqError(f"the log starts after seq {tlog.first_seq - 1} and no checkpoint "
                              f"at or before seq {seq} covers the gap")
    return init_state(schema, mesh=mesh), 0


def _state_at(tlog: TLog, ckpts: CheckpointStore, schema: Schema, seq: int,
              mesh: jax.sharding.Mesh | None, graph: Any = None) -> State:
    state, base = _initial_or_checkpoint(tlog, ckpts, schema, seq, mesh)
    state, reached = replay_with_seq(state, tlog, after_seq=base, to_seq=seq, graph=graph)
    if reached != seq:
        raise UnknownSeqError(f"the log ends at seq {reached}, before {seq}")
    return state


def _recover(tlog: TLog, ckpts: CheckpointStore, schema: Schema,
             mesh: jax.sharding.Mesh | None, graph: Any = None) -> tuple[State, int]:
    """The state after the last logged commit: latest usable checkpoint + log suffix."""
    last = tlog.last_seq
    for stale in [s for s in ckpts.steps() if s > last]:
        log.warning("checkpoint %d in %s is beyond the end of the log (seq %d); the log is the "
                    "source of truth, deleting it", stale, ckpts.directory, last)
        ckpts.delete(stale)
    try:
        state = _state_at(tlog, ckpts, schema, last, mesh, graph)
    except UnknownSeqError as e:
        raise StoreError(f"cannot recover {tlog.path}: {e}") from e
    return state, last


def state_at(directory: str | os.PathLike, seq: int | None = None, *,
             schema: Schema | None = None, use_checkpoints: bool = True,
             mesh: jax.sharding.Mesh | None = None,
             progress: bool | None = None, graph: Any = None) -> tuple[State, int]:
    """Read-only: the State of the bus directory ``directory`` after commit ``seq``.

    Does not take the directory's lock (a live Bus may be writing); a torn tail is ignored.

    Args:
      directory: a bus directory.
      seq: the commit to stop after (default: the last one in the log).
      schema: if given, must equal the stored schema.
      use_checkpoints: start from the nearest checkpoint (otherwise replay from seq 0).
      mesh: place pages on this mesh.
      progress: tqdm progress bar (default: on a terminal for long logs).
      graph: the ``mm.Graph`` of the bus's derived pages (rebuilt by propagation); without it
        derived pages keep the values of the checkpoint the replay starts from.

    Returns:
      ``(state, seq reached)``.
    """
    directory = Path(directory)
    with TLog.open(directory / "log", readonly=True) as tlog:
        if tlog.schema is None:
            raise StoreError(f"{directory} holds no log")
        if schema is not None and schema != tlog.schema:
            raise SchemaMismatchError(f"schema differs from the one stored in {directory}")
        target = tlog.last_seq if seq is None else int(seq)
        if target < 0 or target > tlog.last_seq:
            raise UnknownSeqError(f"seq {target} outside 0..{tlog.last_seq}")
        ck_dir = directory / "checkpoints"
        if use_checkpoints and ck_dir.is_dir():
            with CheckpointStore(ck_dir, readonly=True) as ckpts:
                state, base = _initial_or_checkpoint(tlog, ckpts, tlog.schema, target, mesh)
        elif tlog.first_seq > 1:
            raise UnknownSeqError(f"the log starts after seq {tlog.first_seq - 1}")
        else:
            state, base = init_state(tlog.schema, mesh=mesh), 0
        state, reached = replay_with_seq(state, tlog, after_seq=base, to_seq=target,
                                         progress=progress, graph=graph)
        return state, reached
