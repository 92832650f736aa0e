"""The durable transaction log: segment files, the writer lock, sync policies and recovery.

A log is a directory of segments ``00000001.tlog, 00000002.tlog, ...`` (byte layout in
``docs/format.md``). One writer appends transactions to the newest segment; any number of
readers may scan it. Opening a log for writing recovers it: a torn tail is truncated and
reported, corruption (a bad record with valid data after it) raises
:class:`~mmsb_jax.errors.LogCorruptError` before anything is touched.

>>> import tempfile, numpy as np, mmsb_jax as mm
>>> from mmsb_jax.store import TLog
>>> schema = mm.Schema([mm.PageSpec("x", (4,), "int32")])
>>> d = tempfile.mkdtemp()
>>> with TLog.open(d, schema, sync="never") as log:
...     nbytes = log.append(1, [mm.Delta.rows("x", np.array([1]), np.array([7], np.int32))])
>>> with TLog.open(d, readonly=True) as log:
...     [(t.seq, t.deltas[0].values.tolist()) for t in log.transactions()]
[(1, [7])]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mmsb_jax.core.delta import Delta
from mmsb_jax.core.pages import Schema
from mmsb_jax.core.transaction import slice_stacked
from mmsb_jax.errors import (
    FormatError,
    LogCorruptError,
    OptionError,
    SchemaMismatchError,
    StoreError,
    UnknownSeqError,
)
from mmsb_jax.store import format as fmt
from mmsb_jax.store._files import (
    _SEGMENT_RE,
    DirLock,
    _fdatasync,
    _fsync_dir,
    _read_file,
    _segment_name,
    _write_all,
    cut_segments,
    log_dir,
    segment_paths,
)
from mmsb_jax.store.format import SegmentHeader, SegmentScan, StackedRun, Transaction
from mmsb_jax.store.repair import RepairReport, repair

__all__ = [
    "DEFAULT_BATCH_COMMITS",
    "DEFAULT_BATCH_INTERVAL_MS",
    "DEFAULT_SEGMENT_BYTES",
    "SYNC_POLICIES",
    "LogScan",
    "RecoveryReport",
    "RepairReport",
    "TLog",
    "TLogInfo",
    "log_dir",
    "read_transactions",
    "repair",
    "scan_log",
    "segment_paths",
]

log = logging.getLogger("mmsb_jax.store")

SYNC_POLICIES: tuple[str, ...] = ("always", "batch", "never")
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_BATCH_COMMITS = 64
DEFAULT_BATCH_INTERVAL_MS = 20.0
# -- scanning a whole log -------------------------------------------------------------------


class _Segment(NamedTuple):
    """One segment file of a log (a tuple: every append rebuilds the newest one)."""

    number: int
    path: Path
    base_seq: int
    last_seq: int
    end: int  # bytes of valid data (the file may be longer while a torn tail is pending)
    salt: int


@dataclasses.dataclass
class LogScan:
    """The state of a log directory as found on disk (see :func:`scan_log`).

    Attributes:
      path: the log directory.
      segments: the valid segments in order (valid prefixes only).
      scans: per-segment scan results (``SegmentScan``), parallel to the files examined.
      schema, graph: the stored schema and graph provenance (None for an empty log).
      cuts: ``(segment path, offset)`` to truncate to (offset 0: remove the file) so that only
        whole valid transactions remain: a torn tail, or with ``allow_corrupt`` everything from
        the first corruption on.
      corrupt: the corruption found (only when ``allow_corrupt``; otherwise it is raised).
    """

    path: Path
    segments: list[_Segment]
    scans: list[tuple[Path, SegmentScan]]
    schema: Schema | None
    graph: dict[str, Any] | None
    cuts: list[tuple[Path, int]]
    corrupt: LogCorruptError | None = None

    @property
    def last_seq(self) -> int:
        """Seq of the last complete transaction (0 for an empty log)."""
        return self.segments[-1].last_seq if self.segments else 0

    @property
    def first_seq(self) -> int:
        """Seq of the first transaction the log still holds (``base_seq + 1``)."""
        return self.segments[0].base_seq + 1 if self.segments else 1

    @property
    def bytes_to_cut(self) -> int:
        """Total bytes the ``cuts`` would remove."""
        total = 0
        for path, off in self.cuts:
            total += path.stat().st_size - off
        return total


def _scan_files(files: Sequence[Path], *, allow_corrupt: bool, sizes: Mapping[Path, int] | None
                = None) -> LogScan:
    path = files[0].parent if files else Path(".")
    out = LogScan(path=path, segments=[], scans=[], schema=None, graph=None, cuts=[])
    prev: _Segment | None = None
    for i, f in enumerate(files):
        last = i == len(files) - 1
        m = _SEGMENT_RE.match(f.name)
        number = int(m.group(1)) if m else None
        buf = _read_file(f, None if sizes is None else sizes.get(f))
        if prev is not None and number is not None and number != prev.number + 1:
            err = LogCorruptError(0, str(f), f"segment {prev.number + 1} is missing")
            if not allow_corrupt:
                raise err
            out.corrupt = err
            out.cuts += [(g, 0) for g in files[i:]]
            break
        scan = fmt.scan_segment(buf, expected_segment=number,
                                expected_base_seq=None if prev is None else prev.last_seq)
        out.scans.append((f, scan))
        if (scan.schema is not None and out.schema is not None
                and (scan.schema != out.schema or scan.graph != out.graph)):
            scan.bad_offset, scan.reason, scan.valid_after_bad = (
                fmt.HEADER_SIZE, "schema differs from the first segment's", True)
            scan.good_end, scan.txns = 0, []
        if not scan.clean and (scan.valid_after_bad or not last):
            err = LogCorruptError(scan.bad_offset or 0, str(f), scan.reason)
            if not allow_corrupt:
                raise err
            out.corrupt = err
        if out.schema is None and scan.schema is not None and scan.good_end:
            out.schema, out.graph = scan.schema, scan.graph
        if scan.good_end and scan.header is not None:
            prev = _Segment(number=scan.header.segment, path=f, base_seq=scan.header.base_seq,
                            last_seq=scan.last_seq, end=scan.good_end, salt=scan.header.salt)
            out.segments.append(prev)
        if not scan.clean:
            out.cuts.append((f, scan.good_end))
            if out.corrupt is not None:
                out.cuts += [(g, 0) for g in files[i + 1:]]
                break
    return out


def scan_log(path: str | os.PathLike, *, allow_corrupt: bool = False) -> LogScan:
    """Scan every segment of the log at ``path`` (a log directory or one ``.tlog`` file).

    Nothing is modified. A torn tail (damage in the newest segment with nothing valid after it)
    is returned in ``cuts``.

    Raises:
      LogCorruptError: a bad record followed by valid data, a damaged older segment, or a gap
        in the segment numbers (unless ``allow_corrupt``, which reports it in ``corrupt`` and
        plans to cut everything from the damage on).
      FormatError: a segment of an unsupported format version.
    """
    p = Path(path)
    files = [p] if p.is_file() else segment_paths(p)
    return _scan_files(files, allow_corrupt=allow_corrupt)


# -- reports --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecoveryReport:
    """What opening a log for writing had to repair.

    Attributes:
      bytes_cut: bytes of torn tail removed (0 when the log was clean).
      truncated: ``(segment path, new size)`` of the segment cut, if any.
      removed: segment files removed entirely (a newest segment without a complete preamble).
    """

    bytes_cut: int = 0
    truncated: tuple[str, int] | None = None
    removed: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """True when nothing was cut."""
        return self.bytes_cut == 0 and not self.removed


@dataclasses.dataclass(frozen=True)
class TLogInfo:
    """A summary of one segment (used by ``mmsb log inspect``)."""

    path: str
    segment: int
    base_seq: int
    last_seq: int
    size: int
    txns: int


# -- the log --------------------------------------------------------------------------------


class TLog:
    """An append-only, checksummed transaction log in a directory of segments.

    Open with :meth:`open`. A writable log holds the directory's lock until :meth:`close`;
    :meth:`append` writes one transaction (DELTA records, an optional DERIVED record and a
    COMMIT) with one ``os.write``; :meth:`transactions` reads them back. Use as a context
    manager to close it.

    Sync policies: ``"always"`` fsyncs every transaction before :meth:`append` returns (and the
    directory when a segment is created); ``"batch"`` (default) is group commit: an fsync once
    ``batch_commits`` transactions are unsynced or ``batch_interval_ms`` after the first unsynced
    one (a background thread), and on :meth:`sync`/:meth:`close`; ``"never"`` leaves it to the
    OS.

    Write-behind (``write_behind=True``, only with ``"never"``): :meth:`append` given a
    ``layout`` keeps the transaction pending and writes it at the next append (or
    :meth:`flush`, :meth:`sync`, :meth:`close`, and before any read of this log), so device
    arrays in its deltas are read once their computation has finished instead of while it
    runs. A process crash then loses at most that one pending transaction; a failed pending
    write makes the log unusable until reopened (see :meth:`append`).

    Attributes:
      path: the log directory.
      schema: the stored schema (None for an empty read-only log).
      graph: the stored graph provenance dict.
      recovery: what opening had to cut (:class:`RecoveryReport`).
      readonly: True for a reader (no lock, never modifies files).
    """

    def __init__(self, path: Path, scan: LogScan, *, sync: str, readonly: bool,
                 segment_bytes: int, batch_commits: int, batch_interval_ms: float,
                 lock: DirLock | None, recovery: RecoveryReport,
                 on_fsync: Callable[[float], None] | None, write_behind: bool = False):
        self.path = path
        self.schema: Schema | None = scan.schema
        self.graph: dict[str, Any] = dict(scan.graph or {})
        self.sync_policy = sync
        self.readonly = readonly
        self.segment_bytes = segment_bytes
        self.batch_commits = batch_commits
        self.batch_interval_s = batch_interval_ms / 1000.0
        self.recovery = recovery
        self._on_fsync = on_fsync
        self._segments: list[_Segment] = list(scan.segments)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._dir_lock = lock
        self._fd: int | None = None
        self._size = 0
        self._txn_start: int | None = None
        self._txn_count = 1
        self._unsynced = 0
        self._first_unsynced = 0.0
        self._flusher: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._broken: str | None = None
        self.write_behind = write_behind
        # the pending transaction of write-behind: (first_seq, count, nbytes, encode)
        self._behind: tuple[int, int, int, Callable[[int], bytes]] | None = None
        self.fsyncs = 0
        self._layouts = fmt.LayoutCache()

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, schema: Schema | None = None, *,
             graph: Mapping[str, Any] | None = None, sync: str = "batch",
             readonly: bool = False, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             batch_commits: int = DEFAULT_BATCH_COMMITS,
             batch_interval_ms: float = DEFAULT_BATCH_INTERVAL_MS,
             on_fsync: Callable[[float], None] | None = None,
             write_behind: bool = False) -> TLog:
        """Open (and for a writer recover, or create) the log in directory ``path``.

        Args:
          path: the log directory (created, mode 0700, for a writer).
          schema: required to create a new log; if the log exists it must equal the stored
            schema.
          graph: graph provenance stored in the SCHEMA record of a new log.
          sync: ``"always" | "batch" | "never"``.
          readonly: open as a reader: no lock, no repair; a torn tail is ignored.
          segment_bytes: roll to a new segment when the next transaction would pass this size.
          batch_commits: ``batch`` policy: fsync after this many unsynced transactions.
          batch_interval_ms: ``batch`` policy: fsync this long after the first unsynced one.
          on_fsync: called with each fsync's duration in seconds (telemetry).
          write_behind: write each :meth:`append` (given a ``layout``) at the next one instead
            (see the class docstring); only with ``sync="never"`` on a writer.

        Raises:
          OptionError: a bad option (``write_behind`` with another policy or ``readonly``).
          StoreError: the directory is locked by another live writer, or a new log without a
          schema. SchemaMismatchError: ``schema`` differs from the stored one.
          LogCorruptError: corruption (nothing is modified).
        """
        if sync not in SYNC_POLICIES:
            raise OptionError(f"sync must be one of {SYNC_POLICIES}, got {sync!r}")
        if int(segment_bytes) < fmt.HEADER_SIZE or int(batch_commits) < 1:
            raise OptionError("segment_bytes must be >= 40 and batch_commits >= 1")
        if not float(batch_interval_ms) > 0:
            raise OptionError("batch_interval_ms must be positive")
        if schema is not None and not isinstance(schema, Schema):
            raise OptionError(f"schema must be a Schema, got {type(schema).__name__}")
        if write_behind and (sync != "never" or readonly):
            raise OptionError('write_behind needs sync="never" on a writer (a pending '
                              f"transaction cannot be fsynced), got sync={sync!r}"
                              + (", readonly" if readonly else ""))
        p = Path(path)
        if readonly:
            if not p.exists():
                raise StoreError(f"no log at {p}")
            scan = scan_log(p)
            return cls(p, scan, sync=sync, readonly=True, segment_bytes=int(segment_bytes),
                       batch_commits=int(batch_commits),
                       batch_interval_ms=float(batch_interval_ms), lock=None,
                       recovery=RecoveryReport(), on_fsync=on_fsync)
        if p.exists() and not p.is_dir():
            raise StoreError(f"{p} is not a directory")
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = DirLock(p)
        try:
            scan = scan_log(p)
            if scan.schema is not None and schema is not None and scan.schema != schema:
                raise SchemaMismatchError(
                    f"schema given for {p} differs from the stored one:\n  given:  {schema}\n"
                    f"  stored: {scan.schema}")
            if scan.schema is None and schema is None:
                raise StoreError(f"{p} holds no log yet; a schema is needed to create it")
            recovery = _apply_cuts(p, scan) if scan.cuts else RecoveryReport()
            if recovery.bytes_cut or recovery.removed:
                scan = scan_log(p)
            tlog = cls(p, scan, sync=sync, readonly=False, segment_bytes=int(segment_bytes),
                       batch_commits=int(batch_commits),
                       batch_interval_ms=float(batch_interval_ms), lock=lock,
                       recovery=recovery, on_fsync=on_fsync, write_behind=bool(write_behind))
            if not tlog._segments:
                tlog.schema = schema
                tlog.graph = dict(graph or {})
                tlog._create_segment(1, 0)
            else:
                tlog._open_newest()
            return tlog
        except BaseException:
            lock.release()
            raise

    def _open_newest(self) -> None:
        seg = self._segments[-1]
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        if self._size != seg.end:  # pragma: no cover - recovery cut the file to seg.end
            raise StoreError(f"{seg.path}: size {self._size} != recovered end {seg.end}")

    def _create_segment(self, number: int, base_seq: int) -> None:
        salt = int.from_bytes(os.urandom(4), "little")
        header = fmt.encode_header(SegmentHeader(number, salt, base_seq))
        assert self.schema is not None  # set before the first segment is created
        pre = header + fmt.frame(salt, fmt.schema_body(base_seq, self.schema, self.graph))
        path = self.path / _segment_name(number)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as e:
            raise StoreError(f"cannot create segment {path}: {e}") from e
        try:
            _write_all(fd, pre)
            if self.sync_policy != "never":
                self._timed_fsync(fd)
                _fsync_dir(self.path)
        except OSError as e:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise StoreError(f"cannot write segment {path}: {e}") from e
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._size = len(pre)
        self._segments.append(_Segment(number=number, path=path, base_seq=base_seq,
                                        last_seq=base_seq, end=len(pre), salt=salt))

    # -- properties -------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        """Seq of the last transaction appended (0 if none; a write-behind one included)."""
        behind = self._behind
        if behind is not None:
            return behind[0] + behind[1] - 1
        return self._segments[-1].last_seq if self._segments else 0

    @property
    def first_seq(self) -> int:
        """Seq of the first transaction still held (greater than 1 after pruning)."""
        return self._segments[0].base_seq + 1 if self._segments else 1

    @property
    def segments(self) -> list[Path]:
        """Paths of the segments, oldest first."""
        return [s.path for s in self._segments]

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def info(self) -> list[TLogInfo]:
        """A summary per segment (a write-behind transaction is written first)."""
        self.flush()
        return [TLogInfo(str(s.path), s.number, s.base_seq, s.last_seq, s.end,
                         s.last_seq - s.base_seq) for s in self._segments]

    # -- writing ----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._closed:
            raise StoreError(f"log {self.path} is closed")
        if self.readonly:
            raise StoreError(f"log {self.path} was opened read-only")
        if self._broken:
            raise StoreError(f"log {self.path} is unusable after an I/O error ({self._broken});"
                             " reopen it to recover")

    def append(self, seq: int, deltas: Sequence[Delta], derived: Sequence[str] = (), *,
               timestamp_ns: int | None = None, layout: fmt.TxnLayout | None = None) -> int:
        """Append one transaction and return the number of bytes written.

        The transaction is framed and written with one ``os.write`` (more only if the kernel
        accepts less). If writing (or the ``always`` fsync) fails, the segment is truncated back
        to where it was and :class:`StoreError` is raised: the log is unchanged.

        Under write-behind with a ``layout``, the transaction is kept pending (host numpy
        leaves are copied now; JAX arrays, immutable, are read when it is written) and the
        previously pending one is written first. The JAX arrays must not be deleted (or
        donated) before then. If writing a pending transaction fails, that transaction is
        not in the log, :class:`StoreError` says so, and the log refuses further appends
        until it is reopened.

        Args:
          seq: must be ``last_seq + 1``.
          deltas: the transaction's deltas (leaves are copied to the host).
          derived: names of derived pages recomputed by the transaction (DERIVED record).
          timestamp_ns: commit time (default: now).
          layout: the cached :class:`~mmsb_jax.store.format.TxnLayout` of this transaction's
            structure (built for ``deltas`` and ``derived``); skips rebuilding the headers.
            Without one the log looks the structure up in its own
            :class:`~mmsb_jax.store.format.LayoutCache` (same bytes; only an append given a
            layout is deferred under write-behind).

        Raises:
          StoreError: wrong seq, closed/read-only log, or an I/O error. FormatError: a delta
          that the format cannot hold (nothing is written).
        """
        ts = time.time_ns() if timestamp_ns is None else int(timestamp_ns)
        seq = int(seq)
        defer = False
        if layout is not None:
            if self.write_behind:
                deltas = [_pinned(d) for d in deltas]
                defer = True
        else:
            layout = self._layouts.get(deltas, derived)
        if layout is not None:
            lay = layout
            return self.append_encoded(seq, 1, lay.nbytes,
                                       lambda salt: lay.encode(salt, seq, deltas, ts),
                                       defer=defer)
        bodies = fmt.transaction_bodies(seq, deltas, derived, ts)
        need = fmt.REC_HEADER_SIZE * len(bodies) + sum(map(len, bodies))
        return self.append_encoded(seq, 1, need, lambda salt: fmt.frame_all(salt, bodies))

    def append_encoded(self, first_seq: int, count: int, nbytes: int,
                       encode: Callable[[int], bytes], *, defer: bool = False) -> int:
        """Append ``count`` consecutive transactions with one write (and one fsync).

        Args:
          first_seq: seq of the first transaction; must be ``last_seq + 1``.
          count: how many transactions ``encode`` writes (seqs ``first_seq ..``).
          nbytes: the length of ``encode``'s output (decides a segment roll first).
          encode: ``salt -> bytes``, the framed transactions for the segment's salt.
          defer: under write-behind, keep them pending (``encode`` then runs when they are
            written, so everything it reads must stay unchanged until then).

        Returns:
          The number of bytes written (or to be written, when deferred). All ``count``
          transactions are in the log, or (on an I/O error, :class:`StoreError`) none of them.
        """
        with self._lock:
            if self._closed or self.readonly or self._broken:
                self._check_writable()
            if self._behind is not None:
                self._flush_locked()
            last = self._segments[-1].last_seq if self._segments else 0
            if first_seq != last + 1:
                raise StoreError(f"append seq {first_seq}, expected {last + 1}")
            if defer and self.write_behind:
                self._behind = (first_seq, count, nbytes, encode)
                return nbytes
            return self._write_locked(first_seq, count, nbytes, encode)

    def _write_locked(self, first_seq: int, count: int, nbytes: int,
                      encode: Callable[[int], bytes]) -> int:
        """Write ``count`` transactions now (the body of :meth:`append_encoded`)."""
        seg = self._segments[-1]
        if seg.last_seq > seg.base_seq and self._size + nbytes > self.segment_bytes:
            self._roll()
            seg = self._segments[-1]
        data = encode(seg.salt)
        start = self._size
        fd = self._fd
        assert fd is not None  # a writable, open log has its newest segment open
        try:
            _write_all(fd, data)
            if self.sync_policy == "always":
                self._timed_fsync(fd)
        except OSError as e:
            self._undo_to(start, e)
            raise StoreError(f"log write failed, nothing was committed: {e}") from e
        last = first_seq + count - 1
        self._size = start + len(data)
        self._txn_start = start
        self._txn_count = count
        self._segments[-1] = _Segment(seg.number, seg.path, seg.base_seq, last, self._size,
                                      seg.salt)
        if self.sync_policy == "batch":
            self._unsynced += count
            if self._unsynced >= self.batch_commits:
                try:
                    self._sync_locked()
                except StoreError as e:
                    # the caller is told this commit failed: it must not stay in the log
                    self._undo_to(start, e)
                    self._segments[-1] = seg
                    self._txn_start = None
                    raise
            elif self._unsynced == count:
                # the first unsynced commit starts the flusher's timer; later ones need not
                # wake it (a wake-up per commit costs a context switch and lock traffic)
                self._first_unsynced = time.monotonic()
                self._ensure_flusher()
                self._cond.notify()
        return len(data)

    def _flush_locked(self) -> None:
        behind = self._behind
        if behind is None:
            return
        self._behind = None
        first, count = behind[0], behind[1]
        try:
            self._write_locked(*behind)
        except BaseException as e:
            # the caller was told these transactions were committed: say they are lost, and
            # stop, since later appends would not follow the log
            seqs = f"seq {first}" if count == 1 else f"seqs {first}..{first + count - 1}"
            self._broken = f"the write-behind of {seqs} failed ({e})"
            raise StoreError(f"log {self.path}: writing the pending {seqs} failed, so it is "
                             f"not in the log: {e}; reopen the log to recover") from e

    def flush(self) -> None:
        """Write the pending write-behind transaction now (nothing to do without one).

        Raises:
          StoreError: the write failed (see :meth:`append`).
        """
        with self._lock:
            if self._behind is not None:
                self._check_writable()
                self._flush_locked()

    def _undo_to(self, start: int, cause: BaseException) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, start)
            self._size = start
        except OSError as e:  # pragma: no cover - needs a failing ftruncate
            self._broken = f"cannot truncate after {cause}: {e}"

    def undo_last(self) -> None:
        """Remove what the last append wrote (before it is relied on): one transaction, or
        every transaction of the last :meth:`append_encoded`.

        Used by the Bus when applying a logged transaction fails, to keep log and state equal.
        """
        with self._lock:
            self._check_writable()
            if self._behind is not None:  # still pending: nothing was written
                self._behind = None
                return
            if self._txn_start is None:
                raise StoreError("no transaction to undo")
            seg = self._segments[-1]
            self._undo_to(self._txn_start, StoreError("undo"))
            if self.sync_policy != "never" and self._fd is not None:
                self._timed_fsync(self._fd)
            self._segments[-1] = seg._replace(last_seq=seg.last_seq - self._txn_count,
                                              end=self._txn_start)
            self._txn_start = None

    def _roll(self) -> None:
        # Even under "never" the finished segment is fsynced once (one fsync per segment), so
        # an OS crash can damage only the newest segment and recovery still finds a prefix.
        if self.sync_policy == "never":
            self._unsynced = 1
        self._sync_locked()
        seg = self._segments[-1]
        self._create_segment(seg.number + 1, seg.last_seq)
        self._txn_start = None

    def _timed_fsync(self, fd: int) -> None:
        t0 = time.perf_counter()
        _fdatasync(fd)
        self.fsyncs += 1
        if self._on_fsync is not None:
            self._on_fsync(time.perf_counter() - t0)

    def _sync_locked(self) -> None:
        if self._unsynced and self._fd is not None:
            try:
                self._timed_fsync(self._fd)
            except OSError as e:
                self._broken = f"fsync failed: {e}"
                raise StoreError(f"fsync of {self.path} failed: {e}") from e
        self._unsynced = 0

    def sync(self) -> None:
        """Make every appended transaction durable now (fsync)."""
        with self._lock:
            if self._closed or self.readonly:
                return
            if self._behind is not None:
                self._check_writable()
                self._flush_locked()
            if self.sync_policy == "never":
                self._unsynced = max(self._unsynced, 1)
            self._sync_locked()

    def _ensure_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="mmsb-tlog-flush",
                                             daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        with self._cond:
            while not self._closing:
                if not self._unsynced:
                    self._cond.wait()
                    continue
                wait = self._first_unsynced + self.batch_interval_s - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                try:
                    self._sync_locked()
                except StoreError:
                    log.exception("background fsync of %s failed", self.path)
                    return

    def remove_segments_through(self, seq: int) -> list[Path]:
        """Delete the segments whose transactions all have ``seq <=`` the given one.

        The newest segment is never removed. Call this only when a durable checkpoint at
        ``seq`` (or later) exists. Returns the removed paths.
        """
        with self._lock:
            self._check_writable()
            self._flush_locked()
            removed = []
            while len(self._segments) > 1 and self._segments[1].base_seq <= seq:
                seg = self._segments.pop(0)
                seg.path.unlink()
                removed.append(seg.path)
            if removed and self.sync_policy != "never":
                _fsync_dir(self.path)
            return removed

    def close(self) -> None:
        """Write a pending write-behind transaction, fsync (unless ``never``), stop the
        flusher, close files and release the lock.

        Raises:
          StoreError: the pending transaction could not be written (the log is closed anyway).
        """
        with self._lock:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            try:
                if self._behind is not None and not self._broken:
                    self._flush_locked()
                if self._fd is not None and self.sync_policy != "never" and not self._broken:
                    self._sync_locked()
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                self._closed = True
                if self._dir_lock is not None:
                    self._dir_lock.release()

    def __enter__(self) -> TLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "r" if self.readonly else f"w, sync={self.sync_policy}"
        return f"TLog({str(self.path)!r}, {mode}, seqs {self.first_seq - 1}..{self.last_seq})"

    # -- reading ----------------------------------------------------------------------------
    def transactions(self, after_seq: int = 0, to_seq: int | None = None
                     ) -> Iterator[Transaction]:
        """Iterate the transactions with ``after_seq < seq <= to_seq`` (default: all), in order.

        Only complete transactions known when the call starts are read (a pending
        write-behind one is written first); deltas have numpy leaves. A torn tail seen by a
        reader is never returned.

        Raises:
          UnknownSeqError: ``after_seq`` is before the first transaction still held.
          LogCorruptError: a segment changed underneath and no longer checks out.
        """
        return self._read(after_seq, to_seq, 0)

    def transaction_runs(self, after_seq: int = 0, to_seq: int | None = None,
                         max_run: int = 1024) -> Iterator[Transaction | StackedRun]:
        """:meth:`transactions`, with consecutive transactions of one structure read as
        :class:`~mmsb_jax.store.format.StackedRun` s of up to ``max_run`` (what replay
        applies as one scan), decoded with numpy instead of one Delta per transaction. The
        same transactions, in order, with the same checks (every CRC).

        Raises:
          UnknownSeqError, LogCorruptError: as :meth:`transactions`.
        """
        return self._read(after_seq, to_seq, max(1, int(max_run)))

    def _read(self, after_seq: int, to_seq: int | None, max_run: int) -> Iterator[Any]:
        with self._lock:
            if self._behind is not None and not self._closed:
                self._flush_locked()
            segs = list(self._segments)
        last = segs[-1].last_seq if segs else 0
        to = last if to_seq is None else min(int(to_seq), last)
        if segs and after_seq < segs[0].base_seq and to > after_seq:
            raise UnknownSeqError(f"the log starts after seq {segs[0].base_seq} (older "
                                  f"segments were removed); cannot read from seq {after_seq + 1}")
        for seg in segs:
            if seg.last_seq <= after_seq:
                continue
            if seg.base_seq >= to:
                break
            yield from _segment_transactions(seg, after_seq, to, max_run=max_run)

    def iter_info(self) -> Iterator[tuple[Path, fmt.TxnInfo]]:
        """``(segment path, TxnInfo)`` for every complete transaction (re-scans the files)."""
        self.flush()
        for seg in list(self._segments):
            scan = fmt.scan_segment(_read_file(seg.path, seg.end))
            for t in scan.txns:
                yield seg.path, t


def _pinned(d: Delta) -> Delta:
    """``d`` with its host numpy leaves copied, so a caller may reuse its buffers after a
    write-behind append (JAX arrays are immutable and kept as they are)."""
    leaves = (d.indices, d.mask, d.values)
    if not any(isinstance(x, np.ndarray) for x in leaves):
        return d
    idx, mask, vals = (x.copy() if isinstance(x, np.ndarray) else x for x in leaves)
    return Delta._new(idx, mask, vals, d.page, d.kind, d.op, d.count, d.unique)


def _segment_transactions(seg: _Segment, after_seq: int, to_seq: int, max_run: int = 0
                          ) -> Iterator[Any]:
    """The transactions of one segment; with ``max_run >= 2``, runs of one structure as
    :class:`StackedRun` (see :meth:`TLog.transaction_runs`)."""
    buf = _read_file(seg.path, seg.end)
    if len(buf) < seg.end:
        raise LogCorruptError(len(buf), str(seg.path), "segment shrank while being read")
    view = memoryview(buf)
    end = seg.end
    layouts = fmt.LayoutCache()
    deltas: list[Delta] = []
    derived: tuple[str, ...] = ()
    pos = txn_start = fmt.HEADER_SIZE
    try:
        while pos < end:
            # records one by one until a run of one structure is decoded at once; then on
            # from the end of the run
            for _, rec_end, rec in fmt.iter_records(view, pos, end, seg.salt):
                pos = rec_end
                if rec.type == fmt.SCHEMA:
                    txn_start = rec_end
                    continue
                if rec.seq > to_seq:
                    return
                if rec.type == fmt.DELTA:
                    deltas.append(rec.value)
                    continue
                if rec.type == fmt.DERIVED:
                    derived = rec.value
                    continue
                txn = Transaction(rec.seq, tuple(deltas), derived, rec.value[2])
                deltas, derived = [], ()
                start, txn_start = txn_start, rec_end
                count = 0
                layout = None
                if (max_run >= 2 and txn.deltas and txn.seq < to_seq
                        and fmt.next_looks_alike(view, start, rec_end, end)):
                    layout = layouts.get(txn.deltas, txn.derived)
                if layout is not None:
                    # the run starts with this transaction itself (decoded again, stacked)
                    count, stacked = layout.decode_run(view, start, end, seg.salt, txn.seq,
                                                       min(max_run, to_seq - txn.seq + 1))
                if layout is None or not count:
                    if txn.seq > after_seq:
                        yield txn
                    continue
                pos = txn_start = start + count * layout.nbytes
                skip = max(0, after_seq - txn.seq + 1)  # its transactions with seq <= after_seq
                if skip < count:
                    yield StackedRun(txn.seq + skip, count - skip,
                                     tuple(slice_stacked(stacked, skip, count)), txn.deltas)
                break
    except FormatError as e:
        raise LogCorruptError(0, str(seg.path), f"changed while being read: {e}") from e


def _apply_cuts(path: Path, scan: LogScan) -> RecoveryReport:
    cuts = cut_segments(path, scan.cuts, save_suffix=None)
    removed = tuple(c.segment for c in cuts if c.offset == 0)
    kept = [c for c in cuts if c.offset]
    truncated = (kept[-1].segment, kept[-1].offset) if kept else None
    total = sum(c.nbytes for c in cuts)
    log.warning("mmsb log %s: cut a torn tail of %d bytes (%s)", path, total,
                f"truncated {truncated[0]} to {truncated[1]} bytes" if truncated else
                f"removed {', '.join(removed)}")
    return RecoveryReport(bytes_cut=total, truncated=truncated, removed=removed)


def read_transactions(path: str | os.PathLike, after_seq: int = 0, to_seq: int | None = None
                      ) -> Iterable[Transaction]:
    """Transactions of the log at ``path`` (read-only; see :meth:`TLog.transactions`)."""
    with TLog.open(path, readonly=True) as tl:
        yield from tl.transactions(after_seq, to_seq)
