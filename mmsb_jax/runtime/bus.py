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

import contextlib
import dataclasses
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mmsb_jax._checks import check_int
from mmsb_jax.core.delta import Delta
from mmsb_jax.core.graph import Graph, changed_provenance
from mmsb_jax.core.pages import Schema, State
from mmsb_jax.core.transaction import (
    TransactionRunner,
    apply_transaction,
)
from mmsb_jax.errors import (
    MMSBError,
    OptionError,
    StoreError,
    UnknownPageError,
    UnknownSeqError,
)
from mmsb_jax.runtime._pipeline import (
    AUTO_DONATE,
    CommitPlan,
    Pipeline,
    Run,
    StateHolder,
    as_transaction,
    changed_pages,
    resolve_schema,
    sole_owner,
)
from mmsb_jax.runtime.telemetry import Telemetry
from mmsb_jax.store import format as fmt
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.recovery import recover, replay_to, state_at
from mmsb_jax.store.tlog import (
    DEFAULT_BATCH_COMMITS,
    DEFAULT_BATCH_INTERVAL_MS,
    DEFAULT_SEGMENT_BYTES,
    TLog,
)

__all__ = ["Bus", "CommitInfo", "Subscription", "state_at"]

log = logging.getLogger("mmsb_jax.runtime")

Callback = Callable[["CommitInfo", State], Any]


class _Derived:
    """The ``derived`` field of :class:`CommitInfo`: read when first asked for.

    A non-data descriptor (``functools.cached_property``'s mechanism): an info built with its
    derived pages known holds them in its ``__dict__``, which takes precedence; one built with
    them pending (a bus with a graph, where they are known only once propagation has run) holds
    the epochs to compare under ``_pending`` and resolves them on the first read.
    """

    def __get__(self, info: CommitInfo | None, owner: type | None = None) -> tuple[str, ...]:
        if info is None:  # the class attribute: the field's default
            return ()
        d = info.__dict__
        value = changed_pages(*d["_pending"])
        d["derived"] = value  # later reads find it here, not in this descriptor
        return value


@dataclasses.dataclass(frozen=True)
class CommitInfo:
    """What one :meth:`Bus.commit` did.

    Attributes:
      seq: the commit's sequence number (1, 2, ...).
      bytes_logged: bytes appended to the log for this transaction.
      pages: base pages the transaction's deltas touched, in first-touch order.
      derived: derived pages whose value propagation changed (``()`` without a graph; a
        recomputed page whose value stayed the same is cut off and not listed). On a bus
        with a graph, :meth:`Bus.commit` returns without waiting for propagation: the first
        read of ``derived`` waits for it (so do ``==``, ``hash``, ``repr`` and pickling).
      durable: True if the transaction was fsynced before ``commit`` returned (``sync="always"``).
      timestamp_ns: commit time, ns since the Unix epoch (also stored in the log).
      seconds: wall time of the commit (for :meth:`Bus.commit_many`: of the whole call).
    """

    seq: int
    bytes_logged: int
    pages: tuple[str, ...]
    derived: tuple[str, ...] = _Derived()  # type: ignore[assignment]
    durable: bool = False
    timestamp_ns: int = 0
    seconds: float = 0.0

    @classmethod
    def _make(cls, seq: int, bytes_logged: int, pages: tuple[str, ...],
              derived: tuple[str, ...] | tuple[tuple[str, ...], list, list], durable: bool,
              timestamp_ns: int, seconds: float, *, pending: bool = False) -> CommitInfo:
        """The same object as ``CommitInfo(...)`` in half the time (no frozen-dataclass
        ``__setattr__`` per field): the commit hot path builds one per transaction.

        With ``pending``, ``derived`` is ``(affected, epochs before, epochs after)``: the
        derived pages are resolved from those epoch arrays on first read."""
        info = object.__new__(cls)
        info.__dict__.update(seq=seq, bytes_logged=bytes_logged, pages=pages,
                             durable=durable, timestamp_ns=timestamp_ns, seconds=seconds)
        info.__dict__["_pending" if pending else "derived"] = derived
        return info

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__, derived=self.derived)
        state.pop("_pending", None)
        return state


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
        if not self.pages.isdisjoint(info.pages):
            return True
        pending = info.__dict__.get("_pending")
        if pending is not None and self.pages.isdisjoint(pending[0]):
            return False  # none of its pages was recomputed: no need to wait for propagation
        return not self.pages.isdisjoint(info.derived)

    def unsubscribe(self) -> None:
        """Stop receiving notifications (idempotent)."""
        self._bus._remove_subscription(self)

    __call__ = unsubscribe


class Bus(StateHolder):
    """A durable state bus in one directory: a transaction log, checkpoints and a live State.

    Open with :meth:`Bus.open`; see the module docstring for an example. Each Bus owns its
    directory (a second writer gets :class:`StoreError`).
    """

    def __init__(self, directory: Path, schema: Schema, graph: Graph | None, tlog: TLog,
                 ckpts: CheckpointStore, telemetry: Telemetry, state: State, seq: int, *,
                 mesh: jax.sharding.Mesh | None, checkpoint_every: int | None,
                 prune_log: bool, donate: bool = False):
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
        self._donate = bool(donate)
        self._pipe = Pipeline(graph, log_layouts=True, donate=self._donate)
        # in-place commits when nothing else holds the State (see ``_commit``)
        self._auto_donate = AUTO_DONATE and not self._donate and graph is None
        self._durable = tlog.sync_policy == "always"
        telemetry.seq.set(seq)
        telemetry.torn.set(tlog.recovery.bytes_cut)
        telemetry.set_page_memory(state.pages)

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike, schema: Schema | None = None,
             graph: Graph | None = None, sync: str = "batch", *,
             mesh: jax.sharding.Mesh | None = None,
             checkpoint_every: int | None = None, keep_checkpoints: int = 3,
             prune_log: bool = False, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             batch_commits: int = DEFAULT_BATCH_COMMITS,
             batch_interval_ms: float = DEFAULT_BATCH_INTERVAL_MS,
             donate: bool = False, write_behind: bool = False) -> Bus:
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
          donate: update pages in place: each commit donates the buffers of the pages it
            touches (with a graph: also the derived pages it recomputes and the pages they
            read) to XLA, as ``jax.jit(..., donate_argnums=...)``
            does, instead of copying them. Then a State obtained before a commit
            (``bus.state``, ``bus.at(bus.seq)``, a subscriber's argument) has those pages
            deleted by it: read with :meth:`read` (a copy) or copy what you keep. With
            ``checkpoint_every`` the periodic checkpoints are then saved synchronously (a
            background save must not read a donated page). Off by default.
          write_behind: (``sync="never"`` only) write each commit's log record at the next
            commit (or :meth:`sync`, :meth:`checkpoint`, :meth:`at`, :meth:`close`) instead of
            in :meth:`commit`, so a commit of arrays that a jitted step is still computing
            returns without waiting for them and the next step's work overlaps the log write.
            A process crash can then lose the last commit (``never`` already loses unsynced
            ones on an OS crash); the log on disk lags the bus by that one commit until
            flushed; JAX arrays committed must not be deleted before the next commit. Not
            with ``donate``. Off by default.

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
        if write_behind and (donate or sync != "never"):
            raise OptionError(
                f'write_behind needs sync="never" and no donate, got sync={sync!r}, '
                f"donate={donate!r} (a pending record cannot be fsynced, and a donating "
                "commit would delete page buffers the previous commit's record still reads)")
        schema = resolve_schema(schema, graph)
        provenance = dict(graph.provenance()) if graph is not None else {}
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise StoreError(f"{directory} is not a directory")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        telemetry = Telemetry()
        tlog = TLog.open(directory / "log", schema, graph=provenance, sync=sync,
                         segment_bytes=segment_bytes, batch_commits=batch_commits,
                         batch_interval_ms=batch_interval_ms, write_behind=write_behind,
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
            stored = tlog.schema
            assert stored is not None  # a writable log always holds its schema
            state, seq = recover(tlog, ckpts, stored, mesh, graph)
            return cls(directory, stored, graph, tlog, ckpts, telemetry, state, seq,
                       mesh=mesh, checkpoint_every=None if checkpoint_every is None
                       else int(checkpoint_every), prune_log=bool(prune_log),
                       donate=donate)
        except BaseException:
            if ckpts is not None:
                ckpts.close()
            tlog.close()
            raise

    # -- properties -------------------------------------------------------------------------
    @property
    def sync_policy(self) -> str:
        """The log's sync policy."""
        return self._tlog.sync_policy

    @property
    def log(self) -> TLog:
        """The underlying transaction log."""
        return self._tlog

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    # -- commit -----------------------------------------------------------------------------
    def commit(self, deltas: Delta | Sequence[Delta]) -> CommitInfo:
        """Commit one transaction: validate -> log -> apply -> propagate -> notify.

        The transaction is applied by one jitted function (apply + propagation) that JAX runs
        asynchronously: ``commit`` returns once it is logged and dispatched, with a graph too
        (the returned :attr:`CommitInfo.derived` waits for the propagation when first read;
        a donating bus reads it before returning). A repeated commit of the same structure
        reuses its cached plan and hits JAX's C++ dispatch fast path.

        Args:
          deltas: a Delta or a sequence of Deltas, applied in order as one transaction
            (``apply_batch`` semantics). An empty sequence commits an empty transaction.

        Returns:
          :class:`CommitInfo` with the new seq.

        Raises:
          UnknownPageError, DTypeError, ShapeError, MaskError, IndexOutOfRangeError, OpError:
            an invalid delta (nothing logged, state unchanged). GraphError: a delta writes a
            derived page.
          StoreError: the log write failed (log and state unchanged) or the bus is closed.
          FormatError: a delta too large for one log record (nothing logged).
        """
        return self._commit(time.perf_counter(), as_transaction(deltas), None)

    def _commit(self, t0: float, deltas: list[Delta], batch: list[list[Delta]] | None
                ) -> CommitInfo:
        """:meth:`commit` of ``deltas``; ``batch = [deltas]`` when :meth:`commit_many` was
        given one transaction (its errors then carry ``transaction_index = 0``)."""
        tel = self._tel
        with self._lock:
            if self._closed:
                raise StoreError(f"bus {self.directory} is closed")
            state = self._state
            try:
                plan = (self._pipe.prepare(state, deltas) if batch is None
                        else self._pipe.prepare_at(state, batch, 0))
            except BaseException:
                tel.failures.inc()
                raise
            t1 = time.perf_counter()
            seq = self._seq + 1
            ts = time.time_ns()
            try:
                nbytes = self._tlog.append(seq, deltas, plan.affected, timestamp_ns=ts,
                                           layout=plan.layout)
            except BaseException:
                tel.failures.inc()
                raise
            t2 = time.perf_counter()
            try:
                # A bus without a graph updates its pages in place when nothing else holds
                # the State (or its page maps, or the touched arrays): no copy of the page,
                # and nothing anyone can read is invalidated. A held State keeps its pages.
                donate = (self._auto_donate and plan.compiled is not None
                          and not self._ckpts.saving()
                          and sole_owner(state, plan.compiled.names))
                affected = plan.affected
                if affected:  # a graph: the epochs to compare, read before a donation
                    before = [state.epochs[n] for n in affected]
                    if self._donate:
                        before = jax.device_get(before)  # this commit donates them
                new_state = self._pipe.apply(state, deltas, plan, donate=donate)
                t3 = time.perf_counter()
                # Which derived pages changed is known once propagation ran: the info reads
                # it on first use, so the commit does not wait for the device. On a donating
                # bus the next commit deletes these epochs, so it waits now.
                derived: Any = ()
                pending = False
                if affected:
                    derived = (affected, before, [new_state.epochs[n] for n in affected])
                    pending = not self._donate
                    if not pending:
                        derived = changed_pages(*derived)
            except BaseException:
                tel.failures.inc()
                self._tlog.undo_last()
                raise
            t4 = time.perf_counter()
            self._state = new_state
            self._seq = seq
            info = CommitInfo._make(seq, nbytes, plan.pages, derived, self._durable, ts, t4 - t0,
                                    pending=pending)
            tel.record_commit(t0, t1, t2, t3, t4, 1, nbytes, plan.nbytes_applied)
            tel.seq.value = seq
            if self._checkpoint_every and seq % self._checkpoint_every == 0:
                self._checkpoint_locked(wait=False)
            if not self._subs:
                return info
            subs = [s for s in self._subs if s.matches(info)]
            self._notify_lock.acquire()
        self._notify([(info, new_state, subs)])
        return info

    def commit_many(self, transactions: Iterable[Delta | Sequence[Delta]]
                    ) -> list[CommitInfo]:
        """Commit a sequence of transactions in one call: one log write, one jitted scan.

        The seed's "command buffers": every transaction is validated first, all of them are
        then encoded and written with one ``os.write`` (one fsync under ``sync="always"``:
        group commit made explicit) and applied in order, runs of same-shaped transactions
        stacked into one jitted ``lax.scan`` (propagation inside the scan body, as replay
        does). Each transaction keeps its own seq, :class:`CommitInfo`, time-travel target
        (``bus.at(seq)``) and subscriber notifications, in order. The result is bit-identical
        to committing the transactions one by one with :meth:`commit`.

        When a subscriber would be notified of a transaction of the batch, the transactions
        are applied one at a time instead of scanned (each notification gets the State right
        after its own transaction); ``checkpoint_every`` checkpoints after the call, at its
        last seq, when the batch crossed a multiple. A single transaction is committed as
        :meth:`commit` does (same log bytes and result, less overhead than a batch of one).

        Args:
          transactions: each a Delta or a sequence of Deltas (one transaction each).

        Returns:
          One :class:`CommitInfo` per transaction, in order (``[]`` for no transactions).

        Raises:
          The errors of :meth:`commit`. A bad transaction refuses the whole call before
          anything is logged or applied; the exception carries its position as
          ``exc.transaction_index`` and in a note.
        """
        t0 = time.perf_counter()
        txns = [as_transaction(t) for t in transactions]
        if len(txns) == 1:  # nothing to batch: commit's path, without its scan machinery
            return [self._commit(t0, txns[0], txns)]
        with _gc_paused():
            return self._commit_many(t0, txns)

    def _commit_many(self, t0: float, txns: list[list[Delta]]) -> list[CommitInfo]:
        tel = self._tel
        with self._lock:
            if self._closed:
                raise StoreError(f"bus {self.directory} is closed")
            if not txns:
                return []
            state = self._state
            try:
                runs = self._pipe.prepare_runs(state, txns)
            except (MMSBError, TypeError):
                tel.failures.inc()
                raise
            t1 = time.perf_counter()
            first = self._seq + 1
            ts = time.time_ns()
            try:
                nbytes = self._log_runs(first, txns, runs, ts)
            except BaseException:
                tel.failures.inc()
                raise
            t2 = time.perf_counter()
            plans = [run.plan for run in runs for _ in range(run.stop - run.start)]
            stepwise = any(s.pages is None or not s.pages.isdisjoint(run.plan.pages)
                           or not s.pages.isdisjoint(run.plan.affected)
                           for s in self._subs for run in runs)
            try:
                if stepwise:
                    states, derived = self._apply_stepwise(state, txns, plans)
                    new_state = states[-1]
                else:
                    states = None
                    new_state, derived = self._apply_scanned(state, txns, runs, plans)
                t3 = time.perf_counter()
            except BaseException:
                tel.failures.inc()
                self._tlog.undo_last()
                raise
            t4 = time.perf_counter()
            last = first + len(txns) - 1
            durable, seconds = self._durable, t4 - t0
            infos = [CommitInfo._make(first + i, _txn_bytes(plan), plan.pages, derived[i],
                                      durable, ts, seconds) for i, plan in enumerate(plans)]
            self._state = new_state
            self._seq = last
            tel.record_commit(t0, t1, t2, t3, t4, len(txns), nbytes,
                              sum(r.plan.nbytes_applied * (r.stop - r.start) for r in runs))
            tel.seq.value = last
            every = self._checkpoint_every
            if every and last // every > (first - 1) // every:
                self._checkpoint_locked(wait=False)
            if states is None:
                return infos
            batch = [(info, st, [s for s in self._subs if s.matches(info)])
                     for info, st in zip(infos, states, strict=True)]
            self._notify_lock.acquire()
        self._notify(batch)
        return infos

    # -- commit_many helpers (called with the commit lock held) -----------------------------
    def _log_runs(self, first: int, txns: list[list[Delta]], runs: list[Run], ts: int) -> int:
        """Encode every transaction (each run at once) and append them in one write."""
        total = sum(_txn_bytes(r.plan) * (r.stop - r.start) for r in runs)

        def encode(salt: int) -> bytes:
            parts = []
            for run in runs:
                layout = run.plan.layout
                if layout is None:  # empty transactions
                    parts += [fmt.encode_transaction(salt, first + i, [], (), ts)
                              for i in range(run.start, run.stop)]
                elif run.stacked is None or run.stop - run.start < _ENCODE_RUN_MIN:
                    parts += [layout.encode(salt, first + i, txns[i], ts)
                              for i in range(run.start, run.stop)]
                else:
                    parts.append(layout.encode_run(salt, first + run.start, run.stacked, ts))
            return b"".join(parts)

        return self._tlog.append_encoded(first, len(txns), total, encode)

    def _apply_stepwise(self, state: State, txns: list[list[Delta]],
                        plans: list[CommitPlan]) -> tuple[list[State], list[tuple]]:
        states, derived = [], []
        for t, plan in zip(txns, plans, strict=True):
            # never donated: the subscribers read every intermediate State afterwards
            new = apply_transaction(state, t, check=False, graph=self.graph) if t else state
            derived.append(self._pipe.changed(state, new, plan.affected))
            states.append(new)
            state = new
        return states, derived

    def _apply_scanned(self, state: State, txns: list[list[Delta]], runs: list[Run],
                       plans: list[CommitPlan]) -> tuple[State, list[tuple]]:
        names = sorted({n for p in plans for n in p.affected})
        # read before the runner runs: a donating bus deletes these epochs
        prev = dict(zip(names, map(int, jax.device_get([state.epochs[n] for n in names])),
                        strict=True))
        runner = TransactionRunner(state, graph=self.graph, check=False,
                                   record_epochs=self.graph is not None, donate=self._donate)
        for run in runs:
            runner.add_run(txns[run.start:run.stop], run.stacked)
        new_state = runner.flush()
        if self.graph is None:
            return new_state, [()] * len(txns)
        derived: list[tuple] = []
        i = 0
        for count, epochs in runner.epochs:
            steps = {n: np.asarray(epochs[n]).reshape(count) for n in names if n in epochs}
            for j in range(count):
                moved = set()
                for n, col in steps.items():
                    v = int(col[j])
                    if v != prev[n]:
                        prev[n] = v
                        moved.add(n)
                derived.append(tuple(n for n in plans[i].affected if n in moved))
                i += 1
        return new_state, derived

    def _notify(self, batch: list[tuple[CommitInfo, State, list[Subscription]]]) -> None:
        """Run subscriber callbacks in commit order (the notify lock is held on entry)."""
        tel = self._tel
        try:
            t5 = time.perf_counter()
            called = False
            for info, new_state, subs in batch:
                for sub in subs:
                    if not sub.active:
                        continue
                    called = True
                    try:
                        sub.callback(info, new_state)
                    except Exception:
                        tel.callback_errors.inc()
                        log.exception("subscriber callback for pages %s raised", sub.pages)
            if called:
                tel.observe("notify", time.perf_counter() - t5)
        finally:
            self._notify_lock.release()

    @staticmethod
    def _changed_derived(before: State, after: State, affected: Sequence[str]
                         ) -> tuple[str, ...]:
        """Derived pages whose value changed in this commit (see ``Pipeline.changed``)."""
        return Pipeline.changed(before, after, affected)

    # -- reading ----------------------------------------------------------------------------
    def read(self, name: str) -> np.ndarray:
        """A numpy copy of page ``name`` (current state).

        Raises:
          UnknownPageError: no such page.
        """
        with self._lock:  # a commit may donate the buffers of a State no one else holds
            return np.array(self._state.page(name), copy=True)

    @property
    def state(self) -> State:
        """The current State (immutable; later commits produce new States; pages of a State
        you hold are never donated)."""
        with self._lock:  # taken under the commit lock: see ``sole_owner``
            return self._state

    def at(self, seq: int) -> State:
        """The State right after commit ``seq`` (``0``: the initial state).

        Restores the nearest checkpoint at or before ``seq`` and replays the log up to ``seq``.

        Raises:
          UnknownSeqError: ``seq`` is negative, in the future, or before the oldest data still
            held (log segments pruned and no checkpoint at or before it).
        """
        seq = check_int("seq", seq, error=UnknownSeqError)
        with self._lock:
            current, state = self._seq, self._state
        if seq < 0 or seq > current:
            raise UnknownSeqError(f"seq {seq} outside 0..{current}")
        if seq == current:
            return state
        with self._ckpt_lock:
            return replay_to(self._tlog, self._ckpts, self.schema, seq, self._mesh, self.graph)

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
        """Make every commit so far durable (fsync the log; a write-behind commit is written
        first)."""
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
            self._ckpts.save(seq, state, self.schema, graph=self._provenance(),
                             wait=wait or self._donate)
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
        propagate, notify, fsync, checkpoint), ``fsyncs``, ``sync``, ``write_behind``,
        ``log_segments``, ``first_seq``.
        """
        out = self._tel.snapshot()
        out.update(fsyncs=self._tlog.fsyncs, sync=self._tlog.sync_policy,
                   write_behind=self._tlog.write_behind,
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
        behind = ", write_behind=True" if self._tlog.write_behind else ""
        return f"Bus({str(self.directory)!r}, {state}, sync={self._tlog.sync_policy!r}{behind})"


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a batch allocates its O(L) small objects.

    Without it the allocations of a large ``commit_many`` trigger collections that traverse
    every object of the process (a JAX program holds millions), which cost several times the
    batch's own work (measured: 6.7 vs 1.6 µs per transaction for 4,096 transactions).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: Framed bytes of an empty transaction (a lone COMMIT record).
_EMPTY_TXN_BYTES = len(fmt.encode_transaction(0, 1, [], (), 0))


#: Runs shorter than this are encoded transaction by transaction: ``encode_run``'s array set-up
#: costs more than it saves below about 40 transactions (16-row adds, 2026-12-08: 0.84 against
#: 0.91 us a transaction at 32, 0.84 against 0.71 at 64; ~20 before one-delta records joined
#: their leaves' buffers directly).
_ENCODE_RUN_MIN = 40


def _txn_bytes(plan: CommitPlan) -> int:
    """Logged bytes of one transaction of ``plan``."""
    return _EMPTY_TXN_BYTES if plan.layout is None else plan.layout.nbytes

