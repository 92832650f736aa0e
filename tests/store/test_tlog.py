"""The transaction log: writing, reading, segments, sync policies, locking and recovery."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.errors import (
    FormatError,
    LogCorruptError,
    OptionError,
    SchemaMismatchError,
    StoreError,
    UnknownSeqError,
)
from mmsb_jax.store import format as fmt
from mmsb_jax.store import tlog as tlog_mod
from mmsb_jax.store.tlog import TLog, repair, scan_log, segment_paths

SCHEMA = mm.Schema([mm.PageSpec("x", (8,), "int32"), mm.PageSpec("f", (4, 2), "float32")])


def txn(seq: int) -> list[mm.Delta]:
    """A deterministic, seq-dependent transaction (two or three deltas)."""
    ds = [mm.Delta.rows("x", np.array([seq % 8, -1], np.int32),
                        np.array([seq, 0], np.int32), op="add")]
    if seq % 2:
        ds.append(mm.Delta.full("f", np.full((4, 2), seq / 4, np.float32), op="max"))
    if seq % 3 == 0:
        ds.append(mm.Delta.masked("f", np.eye(4, 2, dtype=bool),
                                  np.full((4, 2), -seq, np.float32)))
    return ds


def write_log(path: Path, n: int, **kw) -> None:
    with TLog.open(path, SCHEMA, sync=kw.pop("sync", "never"), **kw) as log:
        for s in range(1, n + 1):
            log.append(s, txn(s), timestamp_ns=s)


def read_all(path: Path, **kw) -> list[fmt.Transaction]:
    with TLog.open(path, readonly=True) as log:
        return list(log.transactions(**kw))


def same_txns(got: list[fmt.Transaction], n: int) -> bool:
    if [t.seq for t in got] != list(range(1, n + 1)):
        return False
    for t in got:
        want = txn(t.seq)
        if len(t.deltas) != len(want):
            return False
        for a, b in zip(t.deltas, want, strict=True):
            if (a.page, a.kind, a.op) != (b.page, b.kind, b.op):
                return False
            if not np.array_equal(np.asarray(a.values), np.asarray(b.values)):
                return False
    return True


# -- basics ------------------------------------------------------------------------------------


def test_append_and_read_back(tmp_path):
    write_log(tmp_path, 6)
    got = read_all(tmp_path)
    assert same_txns(got, 6)
    assert [t.timestamp_ns for t in got] == [1, 2, 3, 4, 5, 6]
    assert [t.seq for t in read_all(tmp_path, after_seq=2, to_seq=4)] == [3, 4]
    with TLog.open(tmp_path, readonly=True) as log:
        assert log.schema == SCHEMA and log.last_seq == 6 and log.first_seq == 1
        assert "seqs 0..6" in repr(log)
        assert [i.txns for i in log.info()] == [6]
        assert [t.seq for _, t in log.iter_info()] == list(range(1, 7))


def test_reopen_appends_and_checks_seq(tmp_path):
    write_log(tmp_path, 3)
    with TLog.open(tmp_path, sync="always") as log:  # schema read from the log
        assert log.schema == SCHEMA and log.last_seq == 3
        with pytest.raises(StoreError, match="expected 4"):
            log.append(5, txn(5))
        log.append(4, txn(4))
    assert same_txns(read_all(tmp_path), 4)


def test_files_and_permissions(tmp_path):
    d = tmp_path / "new" / "log"
    write_log(d, 1)
    assert sorted(p.name for p in d.iterdir()) == ["00000001.tlog", "LOCK"]
    assert (d.stat().st_mode & 0o777) == 0o700
    assert ((d / "00000001.tlog").stat().st_mode & 0o777) == 0o600
    assert ((d / "LOCK").stat().st_mode & 0o777) == 0o600


def test_empty_transaction_and_derived_record(tmp_path):
    with TLog.open(tmp_path, SCHEMA, sync="never") as log:
        log.append(1, [])
        log.append(2, txn(2), derived=["energy"])
    got = read_all(tmp_path)
    assert got[0].deltas == () and got[1].derived == ("energy",)


def test_bad_options_and_inputs(tmp_path):
    with pytest.raises(OptionError):
        TLog.open(tmp_path, SCHEMA, sync="sometimes")
    with pytest.raises(OptionError):
        TLog.open(tmp_path, SCHEMA, segment_bytes=10)
    with pytest.raises(OptionError):
        TLog.open(tmp_path, SCHEMA, batch_commits=0)
    with pytest.raises(OptionError):
        TLog.open(tmp_path, SCHEMA, batch_interval_ms=0)
    with pytest.raises(OptionError):
        TLog.open(tmp_path, schema="x")
    with pytest.raises(StoreError, match="schema is needed"):
        TLog.open(tmp_path / "fresh")
    with pytest.raises(StoreError, match="no log"):
        TLog.open(tmp_path / "missing", readonly=True)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="not a directory"):
        TLog.open(tmp_path / "file", SCHEMA)
    write_log(tmp_path / "a", 1)
    other = mm.Schema([mm.PageSpec("x", (9,), "int32")])
    with pytest.raises(SchemaMismatchError):
        TLog.open(tmp_path / "a", other)
    with TLog.open(tmp_path / "a", readonly=True) as log, pytest.raises(StoreError,
                                                                         match="read-only"):
        log.append(2, txn(2))
    log = TLog.open(tmp_path / "a")
    log.close()
    log.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        log.append(2, txn(2))
    with TLog.open(tmp_path / "a") as log, pytest.raises(FormatError):
        log.append(2, [mm.Delta.full("y" * 200, np.zeros(2, np.float32))])
    assert same_txns(read_all(tmp_path / "a"), 1)


def test_append_without_a_layout_caches_one_and_writes_the_same_bytes(tmp_path):
    """A repeated structure is encoded from a cached TxnLayout: the file holds exactly the
    bytes of encode_transaction; leaves the layout would write differently (int64 indices)
    and deltas the format refuses take the long path (the same bytes, the same error)."""
    wide = mm.Delta._new(np.array([1, 3], np.int64), None, np.array([5, 6], np.int32), "x",
                         "rows", "add", 1, False)
    txns = [txn(s) for s in range(1, 9)] + [[wide], [wide]]
    with TLog.open(tmp_path, SCHEMA, sync="never") as log:
        for s, ds in enumerate(txns, 1):
            log.append(s, ds, timestamp_ns=s)
        assert len(log._layouts._layouts) == 4  # txn(s) has 4 structures; `wide` has none
        with pytest.raises(FormatError):
            log.append(11, [mm.Delta.full("y" * 200, np.zeros(2, np.float32))])
    seg = segment_paths(tmp_path)[0].read_bytes()
    body = b"".join(fmt.encode_transaction(fmt.decode_header(seg[:fmt.HEADER_SIZE]).salt, s, ds,
                                           (), s) for s, ds in enumerate(txns, 1))
    assert seg.endswith(body)
    assert [t.seq for t in read_all(tmp_path)] == list(range(1, 11))


def test_layout_cache_is_bounded():
    cache = fmt.LayoutCache(max_size=2)
    for n in range(1, 5):
        d = [mm.Delta.full("x", np.zeros(n, np.int32))]
        lay = cache.get(d)
        assert lay is not None and cache.get(d) is lay
        assert lay.encode(1, 1, d, 0) == fmt.encode_transaction(1, 1, d)
        assert len(cache._layouts) <= 2
    not_bool = mm.Delta._new(None, np.ones(2, np.uint8), np.ones(2, np.int32), "x", "masked",
                             "set", 1, False)
    assert cache.get([not_bool]) is None


# -- segments ----------------------------------------------------------------------------------


def test_segments_roll_and_stay_self_contained(tmp_path):
    write_log(tmp_path, 20, segment_bytes=600)
    segs = segment_paths(tmp_path)
    assert len(segs) > 3
    assert all(s.stat().st_size <= 600 or scan_log(s).last_seq - scan_log(s).first_seq == 0
               for s in segs)
    assert same_txns(read_all(tmp_path), 20)
    assert [t.seq for t in read_all(tmp_path, after_seq=11, to_seq=13)] == [12, 13]
    # each segment carries the schema and the seq it starts after
    for s in segs:
        one = scan_log(s)
        assert one.schema == SCHEMA
    # a transaction larger than segment_bytes gets a segment of its own
    with TLog.open(tmp_path, segment_bytes=600, sync="never") as log:
        log.append(21, [mm.Delta.full("x", np.arange(8, dtype=np.int32))] * 8)
        assert log.segments[-1] != segs[-1]


def test_remove_segments_through(tmp_path):
    write_log(tmp_path, 20, segment_bytes=600)
    with TLog.open(tmp_path, segment_bytes=600) as log:
        info = log.info()
        cut = info[2].last_seq
        removed = log.remove_segments_through(cut)
        assert removed == [Path(i.path) for i in info[:3]]
        assert log.first_seq == cut + 1
        assert log.remove_segments_through(10**9) == [Path(i.path) for i in info[3:-1]]
        assert len(log.segments) == 1  # the newest is never removed
        first = log.first_seq
        with pytest.raises(UnknownSeqError):
            list(log.transactions(after_seq=0))
        assert [t.seq for t in log.transactions(after_seq=first - 1)] == list(range(first, 21))
    assert read_all(tmp_path, after_seq=first - 1)[-1].seq == 20


def test_missing_middle_segment_is_corruption(tmp_path):
    write_log(tmp_path, 20, segment_bytes=600)
    segment_paths(tmp_path)[1].unlink()
    with pytest.raises(LogCorruptError, match="missing"):
        TLog.open(tmp_path)


def test_segment_with_another_schema_is_corruption(tmp_path):
    write_log(tmp_path / "a", 4, segment_bytes=400)
    other = mm.Schema([mm.PageSpec("x", (8,), "int32"), mm.PageSpec("f", (4, 2), "float64")])
    segs = segment_paths(tmp_path / "a")
    raw = bytearray(segs[1].read_bytes())
    header = fmt.decode_header(bytes(raw[:40]))
    rec_len = struct.unpack_from("<I", raw, 40)[0]
    body = fmt.frame(header.salt, fmt.schema_body(header.base_seq, other))
    segs[1].write_bytes(bytes(raw[:40]) + body + bytes(raw[48 + rec_len:]))
    with pytest.raises(LogCorruptError, match="schema differs"):
        scan_log(tmp_path / "a")


# -- sync policies -----------------------------------------------------------------------------


def _count_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = tlog_mod._fdatasync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(tlog_mod, "_fdatasync", counting)
    return calls


def test_sync_always_fsyncs_every_commit(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    with TLog.open(tmp_path, SCHEMA, sync="always") as log:
        base = len(calls)
        for s in range(1, 6):
            log.append(s, txn(s))
            assert len(calls) == base + s
    assert log.fsyncs >= 5


def test_sync_batch_groups_commits(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    with TLog.open(tmp_path, SCHEMA, sync="batch", batch_commits=4,
                   batch_interval_ms=10_000) as log:
        base = len(calls)
        for s in range(1, 9):
            log.append(s, txn(s))
        assert len(calls) == base + 2  # after commits 4 and 8
        log.append(9, txn(9))
        assert len(calls) == base + 2
    assert len(calls) == base + 3  # close flushes the ninth


def test_sync_batch_timer_flushes_in_background(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    with TLog.open(tmp_path, SCHEMA, sync="batch", batch_commits=1000,
                   batch_interval_ms=5) as log:
        base = len(calls)
        log.append(1, txn(1))
        deadline = time.monotonic() + 5
        while len(calls) == base and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(calls) == base + 1


def test_sync_never_and_explicit_sync(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    with TLog.open(tmp_path, SCHEMA, sync="never") as log:
        for s in range(1, 4):
            log.append(s, txn(s))
        assert calls == []
        log.sync()
        assert len(calls) == 1
    assert len(calls) == 1


# -- atomic writes -----------------------------------------------------------------------------


def test_failed_write_leaves_the_log_unchanged(tmp_path, monkeypatch):
    write_log(tmp_path, 2)
    seg = segment_paths(tmp_path)[0]
    before = seg.read_bytes()
    real = tlog_mod._write_all

    def half_then_fail(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with TLog.open(tmp_path) as log:
        monkeypatch.setattr(tlog_mod, "_write_all", half_then_fail)
        with pytest.raises(StoreError, match="nothing was committed"):
            log.append(3, txn(3))
        assert seg.read_bytes() == before and log.last_seq == 2
        monkeypatch.setattr(tlog_mod, "_write_all", real)
        log.append(3, txn(3))
    assert same_txns(read_all(tmp_path), 3)


def test_failed_fsync_under_always_rolls_back(tmp_path, monkeypatch):
    write_log(tmp_path, 1)
    before = segment_paths(tmp_path)[0].read_bytes()
    with TLog.open(tmp_path, sync="always") as log:
        def fail(fd):
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(tlog_mod, "_fdatasync", fail)
        with pytest.raises(StoreError):
            log.append(2, txn(2))
        assert segment_paths(tmp_path)[0].read_bytes() == before
        monkeypatch.undo()


def test_undo_last(tmp_path):
    write_log(tmp_path, 2)
    with TLog.open(tmp_path) as log:
        with pytest.raises(StoreError, match="no transaction"):
            log.undo_last()
        log.append(3, txn(3))
        log.undo_last()
        assert log.last_seq == 2
        log.append(3, txn(3))
    assert same_txns(read_all(tmp_path), 3)


# -- locking -----------------------------------------------------------------------------------


def test_second_writer_in_process_is_refused(tmp_path):
    with TLog.open(tmp_path, SCHEMA):
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
            TLog.open(tmp_path, SCHEMA)
        with TLog.open(tmp_path, readonly=True) as reader:  # readers need no lock
            assert reader.last_seq == 0
    with TLog.open(tmp_path, SCHEMA):  # released on close
        pass


_HOLD_LOCK = """
import os, signal, sys, time
from mmsb_jax.store.tlog import TLog
log = TLog.open(sys.argv[1])
print("locked", flush=True)
if sys.argv[2] == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""


def test_stale_lock_of_a_dead_writer_does_not_block(tmp_path):
    write_log(tmp_path, 1)
    r = subprocess.run([sys.executable, "-c", _HOLD_LOCK, str(tmp_path), "crash"],
                       capture_output=True, text=True, timeout=120)
    assert "locked" in r.stdout and r.returncode == -signal.SIGKILL
    assert (tmp_path / "LOCK").read_text().strip() != str(os.getpid())
    with TLog.open(tmp_path) as log:  # the kernel dropped the dead writer's flock
        assert log.last_seq == 1


def test_live_writer_in_another_process_blocks(tmp_path):
    write_log(tmp_path, 1)
    child = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path), "hold"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=f"pid {child.pid}"):
            TLog.open(tmp_path)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    with TLog.open(tmp_path):
        pass


# -- recovery: torn tails ------------------------------------------------------------------


def _last_txn_start(path: Path) -> int:
    return scan_log(path).scans[-1][1].txns[-1].offset


def test_torn_tail_at_every_byte_of_the_last_transaction(tmp_path, caplog):
    src = tmp_path / "src"
    write_log(src, 5)
    seg = segment_paths(src)[0]
    data = seg.read_bytes()
    start = _last_txn_start(src)
    work = tmp_path / "work"
    work.mkdir()
    target = work / seg.name
    for cut in range(start, len(data)):
        target.write_bytes(data[:cut])
        with caplog.at_level(logging.WARNING, logger="mmsb_jax.store"):
            caplog.clear()
            with TLog.open(work, sync="never") as log:
                assert log.last_seq == 4
                assert log.recovery.bytes_cut == cut - start
                assert log.recovery.clean == (cut == start)
        assert target.stat().st_size == start
        assert same_txns(read_all(work), 4)
        if cut > start:
            assert f"{cut - start} bytes" in caplog.text
    # and the recovered log accepts the lost seq again
    with TLog.open(work, sync="never") as log:
        log.append(5, txn(5))
    assert target.read_bytes() != data[:start] and same_txns(read_all(work), 5)


def test_reader_ignores_a_torn_tail_without_touching_it(tmp_path):
    write_log(tmp_path, 3)
    seg = segment_paths(tmp_path)[0]
    torn = seg.read_bytes() + b"\x40\x00\x00\x00abc"
    seg.write_bytes(torn)
    assert same_txns(read_all(tmp_path), 3)
    assert seg.read_bytes() == torn
    scan = scan_log(tmp_path)
    assert scan.bytes_to_cut == 7 and scan.cuts == [(seg, len(torn) - 7)]


def test_torn_new_segment_is_removed(tmp_path):
    write_log(tmp_path, 6, segment_bytes=500)
    segs = segment_paths(tmp_path)
    last = segs[-1]
    n_last = scan_log(last).last_seq - scan_log(last).first_seq + 1
    data = last.read_bytes()
    schema_end = 40 + 8 + struct.unpack_from("<I", data, 40)[0]
    for cut in (0, 10, 39, 40, 47, schema_end - 1):
        last.write_bytes(data[:cut])
        with TLog.open(tmp_path) as log:
            assert log.recovery.removed == (str(last),)
            assert log.last_seq == 6 - n_last
        assert not last.exists()
    # a crash right after the preamble keeps the (valid, empty) segment
    last.write_bytes(data[:schema_end])
    with TLog.open(tmp_path) as log:
        assert log.recovery.clean and log.segments[-1] == last


def test_torn_only_segment_of_a_new_log(tmp_path):
    write_log(tmp_path, 1)
    seg = segment_paths(tmp_path)[0]
    seg.write_bytes(seg.read_bytes()[:30])
    with pytest.raises(StoreError, match="schema is needed"):
        TLog.open(tmp_path)
    with TLog.open(tmp_path, SCHEMA) as log:  # starts afresh
        assert log.last_seq == 0 and log.recovery.removed == (str(seg),)


def test_zero_filled_tail_is_torn(tmp_path):
    write_log(tmp_path, 3)
    seg = segment_paths(tmp_path)[0]
    seg.write_bytes(seg.read_bytes() + b"\0" * 4096)
    with TLog.open(tmp_path) as log:
        assert log.recovery.bytes_cut == 4096 and log.last_seq == 3


# -- recovery: corruption ------------------------------------------------------------------


def test_single_bit_flips_are_always_detected(tmp_path):
    """Every bit of a small log: a flip is either cut as the torn last transaction, or
    LogCorruptError -- never silently different data."""
    src = tmp_path / "src"
    n = 4
    write_log(src, n)
    seg = segment_paths(src)[0]
    data = seg.read_bytes()
    last_start = _last_txn_start(src)
    work = tmp_path / "w"
    work.mkdir()
    target = work / seg.name
    target.write_bytes(data)
    torn = corrupt = 0
    fd = os.open(target, os.O_RDWR)
    try:
        for byte in range(len(data)):
            for bit in range(8):
                os.pwrite(fd, bytes([data[byte] ^ (1 << bit)]), byte)  # flip in place
                try:
                    scan = scan_log(work)
                except LogCorruptError as e:
                    assert 0 <= e.offset <= byte and e.path == str(target)
                    corrupt += 1
                    continue
                finally:
                    os.pwrite(fd, data[byte:byte + 1], byte)
                # not corrupt: must be the last transaction, cut as a torn tail
                assert byte >= last_start, (byte, bit)
                assert scan.cuts == [(target, last_start)] and scan.last_seq == n - 1
                torn += 1
    finally:
        os.close(fd)
    assert corrupt and torn and corrupt + torn == 8 * len(data)
    # the recovered content of a torn case is exactly the first n-1 transactions
    flipped = bytearray(data)
    flipped[-1] ^= 0x80
    target.write_bytes(bytes(flipped))
    with TLog.open(work) as log:
        assert log.last_seq == n - 1
    assert same_txns(read_all(work), n - 1)


def test_bit_flip_in_an_older_segment_is_corruption(tmp_path):
    write_log(tmp_path, 12, segment_bytes=500)
    segs = segment_paths(tmp_path)
    assert len(segs) >= 3
    data = segs[0].read_bytes()
    for pos in (3, 20, 45, 100, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        segs[0].write_bytes(bytes(flipped))
        with pytest.raises(LogCorruptError) as e:
            TLog.open(tmp_path)
        assert e.value.path == str(segs[0])
    segs[0].write_bytes(data)
    # a non-final segment cut short (missing its last COMMIT) is corruption too
    last_commit = len(data) - fmt.REC_HEADER_SIZE - 25
    segs[0].write_bytes(data[:last_commit])
    with pytest.raises(LogCorruptError, match="incomplete"):
        TLog.open(tmp_path)
    segs[0].write_bytes(data[:-3])
    with pytest.raises(LogCorruptError, match="exceeds"):
        TLog.open(tmp_path)


def test_corrupted_length_field_followed_by_valid_records(tmp_path):
    write_log(tmp_path, 5)
    seg = segment_paths(tmp_path)[0]
    data = seg.read_bytes()
    txns = scan_log(tmp_path).scans[0][1].txns
    off = txns[1].offset  # first record of transaction 2
    for length in (0, 3, 2**31, 2**32 - 1, 1000, 12):
        bad = bytearray(data)
        bad[off:off + 4] = struct.pack("<I", length)
        seg.write_bytes(bytes(bad))
        with pytest.raises(LogCorruptError) as e:
            TLog.open(tmp_path)
        assert e.value.offset == off
        assert seg.read_bytes() == bytes(bad)  # nothing was modified


def test_corruption_in_the_last_transaction_before_its_commit(tmp_path):
    write_log(tmp_path, 3)
    seg = segment_paths(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    start = _last_txn_start(tmp_path)
    data[start + 20] ^= 1  # inside its first record; the COMMIT after it is still valid
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError) as e:
        TLog.open(tmp_path)
    assert e.value.offset == start


def test_unsupported_version_is_a_format_error_not_corruption(tmp_path):
    write_log(tmp_path, 1)
    seg = segment_paths(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[8:10] = struct.pack("<H", 2)
    data[36:40] = struct.pack("<I", fmt.crc32c(bytes(data[:36])))
    seg.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="version 2") as e:
        TLog.open(tmp_path)
    assert not isinstance(e.value, LogCorruptError)


# -- repair ------------------------------------------------------------------------------------


def test_repair_torn_tail_saves_the_cut_bytes(tmp_path):
    write_log(tmp_path, 3)
    seg = segment_paths(tmp_path)[0]
    good = seg.read_bytes()
    seg.write_bytes(good + b"partial-transaction")
    report = repair(tmp_path)
    assert report.bytes_cut == 19 and report.corrupt is None and report.last_seq == 3
    (orig, saved, nbytes), = report.saved
    assert orig == str(seg) and nbytes == 19
    assert Path(saved).read_bytes() == b"partial-transaction"
    assert Path(saved).name.startswith("00000001.tlog.cut-")
    assert (Path(saved).stat().st_mode & 0o777) == 0o600
    assert seg.read_bytes() == good
    assert repair(tmp_path).bytes_cut == 0  # idempotent
    assert segment_paths(tmp_path) == [seg]  # the saved copy is not a segment


def test_repair_corruption_cuts_to_the_last_good_transaction(tmp_path):
    write_log(tmp_path, 16, segment_bytes=900)
    segs = segment_paths(tmp_path)
    scan = scan_log(tmp_path)
    assert len(segs) >= 3
    bad_seg, bad_scan = scan.scans[1]
    bad_txn = bad_scan.txns[1]
    data = bytearray(bad_seg.read_bytes())
    data[bad_txn.offset + 30] ^= 4
    bad_seg.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError):
        TLog.open(tmp_path)
    report = repair(tmp_path)
    assert report.corrupt is not None and report.corrupt.offset == bad_txn.offset
    assert report.last_seq == bad_txn.seq - 1
    assert [s for s, _, _ in report.saved] == [str(p) for p in segs[1:]]
    assert segment_paths(tmp_path) == segs[:2]
    assert bad_seg.stat().st_size == bad_txn.offset
    with TLog.open(tmp_path) as log:
        assert log.recovery.clean and log.last_seq == bad_txn.seq - 1
        log.append(bad_txn.seq, txn(bad_txn.seq))
    assert same_txns(read_all(tmp_path), bad_txn.seq)


def test_repair_refuses_while_a_writer_is_open(tmp_path):
    with TLog.open(tmp_path, SCHEMA), pytest.raises(StoreError, match="in use"):
        repair(tmp_path)
    with pytest.raises(StoreError, match="no log"):
        repair(tmp_path / "nope")


def test_repair_accepts_a_bus_directory_and_a_segment(tmp_path):
    write_log(tmp_path / "bus" / "log", 2)
    seg = segment_paths(tmp_path / "bus" / "log")[0]
    seg.write_bytes(seg.read_bytes() + b"xx")
    assert repair(tmp_path / "bus").bytes_cut == 2
    seg.write_bytes(seg.read_bytes() + b"yyy")
    assert repair(seg).bytes_cut == 3


# -- concurrency -------------------------------------------------------------------------------


def test_reader_during_appends_sees_only_whole_transactions(tmp_path):
    stop = threading.Event()
    with TLog.open(tmp_path, SCHEMA, sync="never") as log:
        def writer():
            s = 1
            while not stop.is_set() and s <= 300:
                log.append(s, txn(s))
                s += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            for _ in range(20):
                got = read_all(tmp_path)
                assert same_txns(got, len(got))
                got2 = list(log.transactions())
                assert same_txns(got2, len(got2))
        finally:
            stop.set()
            t.join()


def test_copy_of_a_log_directory_opens(tmp_path):
    write_log(tmp_path / "a", 3)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with TLog.open(tmp_path / "b") as log:
        assert log.last_seq == 3
