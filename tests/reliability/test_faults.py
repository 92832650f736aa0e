"""Fault injection below the log: a simulated page cache, torn writes, fsync EIO, ENOSPC.

``FaultyFS`` wraps the ``os`` calls the transaction log uses (``open``, ``write``,
``ftruncate``, ``fsync``/``fdatasync``, ``close``) for files under one directory. Writes reach
the real file (so the process behaves normally) and the layer remembers, per file, the content
at its last successful fsync: that is what a power failure keeps. ``crash()`` then rewrites each
file the way the disk could look after the crash:

* ``drop``    every unsynced byte is lost (the page cache is discarded);
* ``torn``    a random prefix of the unsynced bytes reached the disk (writes went out in order
  but the last one only partly);
* ``garbage`` like ``torn``, followed by random junk (a torn sector), in files that had
  unsynced changes (a fully synced, closed segment is not touched by a crash).

Faults: the n-th write writes only a random prefix and then the process "dies" (``SimCrash``);
the n-th fsync fails with EIO; a byte budget after which writes fail with ENOSPC (the write
that crosses it is short, the next raises). Directory entries are not modelled: a created
segment file survives the crash (with whatever content the model gives it).

What must hold: the Bus reports every failure as ``StoreError``, a failed commit changes
neither the state nor the log, and after any crash the directory reopens to exactly the state
of a prefix of the commits that is at least as long as the last durable one (every
acknowledged commit under ``always``; every commit before the last successful fsync under
``batch``; possibly nothing under ``never``).
"""

from __future__ import annotations

import errno
import os
import random
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mmsb_jax.errors import StoreError
from mmsb_jax.runtime import Bus
from mmsb_jax.store import tlog as tlog_mod

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _workload

POLICIES = ("always", "batch", "never")


class SimCrash(BaseException):
    """The simulated process death (a BaseException: nothing in the store may swallow it)."""


class FaultyFS:
    """A fault-injecting model of the page cache for files under ``root`` (see module doc)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, rng: random.Random):
        self.root = str(root)
        self.rng = rng
        self.fds: dict[int, str] = {}
        self.durable: dict[str, bytes] = {}
        self.dead = False
        self.writes = 0
        self.fsyncs = 0
        self.tear_write_at: int | None = None
        self.fail_fsync_at: int | None = None
        self.space_left: int | None = None
        self.synced_seq = 0  # the log's last seq at its last successful fsync
        self.tlog: tlog_mod.TLog | None = None
        self.counts = {"torn_writes": 0, "fsync_eio": 0, "enospc": 0}
        self._lock = threading.RLock()
        self._real = {n: getattr(os, n) for n in ("open", "write", "close", "ftruncate",
                                                  "fsync", "fdatasync")}
        for name in self._real:
            monkeypatch.setattr(os, name, getattr(self, "_" + name))
        monkeypatch.setattr(tlog_mod, "_fdatasync", self._fdatasync)
        self._monkeypatch = monkeypatch

    def uninstall(self) -> None:
        """Give the real ``os`` functions back (before reopening the crashed directory)."""
        self._monkeypatch.undo()

    # -- the wrapped calls ----------------------------------------------------------------
    def _tracked(self, fd: int) -> str | None:
        return self.fds.get(fd)

    def _open(self, path, flags, mode=0o777, *, dir_fd=None):
        fd = self._real["open"](path, flags, mode, dir_fd=dir_fd)
        p = os.path.abspath(os.fsdecode(path))
        if p.startswith(self.root) and os.path.isfile(p) and not p.endswith("LOCK"):
            with self._lock:
                self.fds[fd] = p
                if p not in self.durable:  # a new file: nothing of it is durable yet
                    self.durable[p] = b"" if flags & os.O_CREAT else Path(p).read_bytes()
        return fd

    def _close(self, fd):
        with self._lock:
            self.fds.pop(fd, None)
        return self._real["close"](fd)

    def _write(self, fd, data):
        path = self._tracked(fd)
        if path is None:
            return self._real["write"](fd, data)
        with self._lock:
            if self.dead:
                raise OSError(errno.EIO, "simulated: the process is dead")
            self.writes += 1
            data = bytes(data)
            if self.tear_write_at is not None and self.writes >= self.tear_write_at:
                self.tear_write_at = None
                self.counts["torn_writes"] += 1
                self._real["write"](fd, data[: self.rng.randrange(len(data))])
                self.dead = True
                raise SimCrash(f"torn write {self.writes}")
            if self.space_left is not None:
                if self.space_left <= 0:
                    self.counts["enospc"] += 1
                    raise OSError(errno.ENOSPC, "simulated: no space left on device")
                if len(data) > self.space_left:
                    data = data[: self.space_left]
                n = self._real["write"](fd, data)
                self.space_left -= n
                return n
            return self._real["write"](fd, data)

    def _ftruncate(self, fd, length):
        if self._tracked(fd) is not None and self.dead:
            raise OSError(errno.EIO, "simulated: the process is dead")
        return self._real["ftruncate"](fd, length)

    def _sync(self, fd, real):
        path = self._tracked(fd)
        if path is None:
            return real(fd)
        with self._lock:
            if self.dead:
                raise OSError(errno.EIO, "simulated: the process is dead")
            self.fsyncs += 1
            if self.fail_fsync_at is not None and self.fsyncs >= self.fail_fsync_at:
                self.fail_fsync_at = None
                self.counts["fsync_eio"] += 1
                raise OSError(errno.EIO, "simulated: fsync failed")
            real(fd)
            self.durable[path] = Path(path).read_bytes()
            if self.tlog is not None:
                self.synced_seq = max(self.synced_seq, self.tlog.last_seq)

    def _fsync(self, fd):
        return self._sync(fd, self._real["fsync"])

    def _fdatasync(self, fd):
        return self._sync(fd, self._real["fdatasync"])

    # -- the crash ------------------------------------------------------------------------
    def crash(self, bus: Bus, mode: str) -> None:
        """Kill ``bus`` (no further I/O reaches the disk) and leave the post-crash image."""
        with self._lock:
            self.dead = True
        try:
            bus.close()  # only releases fds, threads and the lock: every I/O now fails
        except StoreError:
            pass
        self.uninstall()
        for path, durable in self.durable.items():
            current = Path(path).read_bytes() if os.path.exists(path) else b""
            keep = durable
            in_flight = current != durable  # only files with unsynced changes can be damaged
            if mode != "drop" and current.startswith(durable) and len(current) > len(durable):
                keep = current[: self.rng.randint(len(durable), len(current))]
            if mode == "garbage" and in_flight:
                keep += self.rng.randbytes(self.rng.randint(1, 64))
            with open(path, "wb") as f:
                f.write(keep)


def _open_bus(d: Path, policy: str, **kw) -> Bus:
    kw.setdefault("batch_commits", 4)
    kw.setdefault("batch_interval_ms", 60_000.0)  # group commits by count (deterministic)
    return Bus.open(d, _workload.SCHEMA, sync=policy, segment_bytes=4096, **kw)


def _check_reopen(d: Path, expected: _workload.Expected, lower: int, upper: int) -> int:
    with Bus.open(d, _workload.SCHEMA) as bus:
        assert lower <= bus.seq <= upper, (lower, bus.seq, upper)
        _workload.assert_state_is(bus.state, expected(bus.seq))
        return bus.seq


def _durable_lower_bound(policy: str, fs: FaultyFS, acked: int) -> int:
    return {"always": acked, "batch": fs.synced_seq, "never": 0}[policy]


@pytest.mark.parametrize("mode", ["drop", "torn", "garbage"])
@pytest.mark.parametrize("policy", POLICIES)
def test_os_crash_reopens_to_a_durable_prefix(tmp_path, monkeypatch, policy, mode):
    rng = random.Random(f"{policy}-{mode}")
    expected = _workload.Expected()
    for trial in range(3):
        d = tmp_path / f"bus{trial}"
        fs = FaultyFS(monkeypatch, d, rng)
        bus = _open_bus(d, policy)
        fs.tlog = bus.log
        acked = 0
        for seq in range(1, rng.randint(1, 30)):
            bus.commit(_workload.txn(seq))
            acked = seq
        lower = _durable_lower_bound(policy, fs, acked)
        fs.crash(bus, mode)
        _check_reopen(d, expected, lower, acked)


@pytest.mark.parametrize("policy", POLICIES)
def test_torn_write_then_crash(tmp_path, monkeypatch, policy):
    rng = random.Random(policy)
    expected = _workload.Expected()
    for trial in range(4):
        d = tmp_path / f"bus{trial}"
        fs = FaultyFS(monkeypatch, d, rng)
        bus = _open_bus(d, policy)
        fs.tlog = bus.log
        fs.tear_write_at = fs.writes + rng.randint(1, 20)
        acked = 0
        with pytest.raises(SimCrash):
            for seq in range(1, 100):
                bus.commit(_workload.txn(seq))
                acked = seq
        assert fs.counts["torn_writes"] == 1
        lower = _durable_lower_bound(policy, fs, acked)
        fs.crash(bus, rng.choice(["drop", "torn", "garbage"]))
        _check_reopen(d, expected, lower, acked)


@pytest.mark.parametrize("policy", ["always", "batch"])
def test_fsync_eio_is_a_store_error_and_leaves_log_and_state_equal(tmp_path, monkeypatch,
                                                                   policy):
    rng = random.Random(policy)
    expected = _workload.Expected()
    for trial in range(3):
        d = tmp_path / f"bus{trial}"
        fs = FaultyFS(monkeypatch, d, rng)
        bus = _open_bus(d, policy)
        fs.tlog = bus.log
        fs.fail_fsync_at = fs.fsyncs + rng.randint(1, 6)
        failures = 0
        for _ in range(1, 40):
            before = bus.state
            try:
                bus.commit(_workload.txn(bus.seq + 1))
            except StoreError:
                failures += 1
                assert bus.state is before  # nothing applied
            assert bus.log.last_seq == bus.seq  # the log holds exactly what was applied
            _workload.assert_state_is(bus.state, expected(bus.seq))
        assert fs.counts["fsync_eio"] == 1 and failures >= 1
        if policy == "always":
            assert failures == 1  # the failed transaction was cut; the next fsync works again
        else:
            assert failures > 1  # the log refuses further commits until it is reopened
        applied = bus.seq
        lower = _durable_lower_bound(policy, fs, 0 if policy == "batch" else applied)
        fs.crash(bus, "drop")
        _check_reopen(d, expected, lower, applied)


def test_background_fsync_eio_fails_the_next_commit(tmp_path, monkeypatch):
    rng = random.Random(0)
    expected = _workload.Expected()
    d = tmp_path / "bus"
    fs = FaultyFS(monkeypatch, d, rng)
    bus = _open_bus(d, "batch", batch_interval_ms=1.0, batch_commits=1000)
    fs.tlog = bus.log
    fs.fail_fsync_at = fs.fsyncs + 1
    bus.commit(_workload.txn(1))
    bus.log._flusher.join(timeout=30)  # the flusher stops after the failed fsync
    assert fs.counts["fsync_eio"] == 1
    with pytest.raises(StoreError, match="unusable"):
        bus.commit(_workload.txn(2))
    assert bus.seq == 1 and bus.log.last_seq == 1
    fs.crash(bus, "drop")
    _check_reopen(d, expected, 0, 1)


@pytest.mark.parametrize("policy", POLICIES)
def test_enospc_during_append_commit_fails_cleanly(tmp_path, monkeypatch, policy):
    rng = random.Random(policy)
    expected = _workload.Expected()
    d = tmp_path / "bus"
    fs = FaultyFS(monkeypatch, d, rng)
    bus = _open_bus(d, policy)
    fs.tlog = bus.log
    seq = 0
    failures = 0
    for round_ in range(5):
        fs.space_left = rng.randint(0, 600)
        while True:
            before, size = bus.state, os.path.getsize(bus.log.segments[-1])
            try:
                bus.commit(_workload.txn(seq + 1))
            except StoreError as e:
                assert "No space" in str(e) or "no space" in str(e)
                failures += 1
                assert bus.state is before and bus.seq == seq == bus.log.last_seq
                assert os.path.getsize(bus.log.segments[-1]) == size  # cut back
                break
            seq += 1
        fs.space_left = None  # space was freed: commits work again
        for _ in range(round_ + 1):
            seq += 1
            assert bus.commit(_workload.txn(seq)).seq == seq
    assert failures == 5 and fs.counts["enospc"] >= 1
    bus.close()
    fs.uninstall()
    assert _check_reopen(d, expected, seq, seq) == seq


def test_enospc_during_checkpoint_fails_cleanly(tmp_path, monkeypatch):
    """Orbax writes through tensorstore (C++), below the ``os`` layer: inject at its save."""
    expected = _workload.Expected()
    d = tmp_path / "bus"
    with _open_bus(d, "always") as bus:
        for seq in range(1, 6):
            bus.commit(_workload.txn(seq))
        assert bus.checkpoint() == 5
        bus.commit(_workload.txn(6))
        manager = bus.checkpoints._manager

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "simulated: no space left on device")

        monkeypatch.setattr(manager, "save", no_space)
        before = bus.state
        with pytest.raises(StoreError, match="space"):
            bus.checkpoint()
        assert bus.state is before and bus.seq == 6 and bus.checkpoints.steps() == [5]
        monkeypatch.undo()
        bus.commit(_workload.txn(7))
        assert bus.checkpoint() == 7
    _check_reopen(d, expected, 7, 7)
    with Bus.open(d) as bus:
        assert bus.checkpoints.steps() == [5, 7]
        _workload.assert_state_is(bus.at(6), expected(6))


def test_file_size_limit_during_checkpoint_is_a_store_error(tmp_path):
    """A real write failure inside tensorstore: RLIMIT_FSIZE makes its writes fail (EFBIG)."""
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import numpy as np
        import mmsb_jax as mm
        from mmsb_jax.errors import StoreError
        from mmsb_jax.runtime import Bus
        schema = mm.Schema([mm.PageSpec("big", (512, 1024), "float32")])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        rng = np.random.default_rng(0)
        with Bus.open({str(tmp_path / "bus")!r}, schema, sync="always") as bus:
            bus.commit(mm.Delta.full("big", rng.random((512, 1024), dtype=np.float32)))
            resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, resource.RLIM_INFINITY))
            try:
                bus.checkpoint()
            except StoreError as e:
                print("STORE_ERROR", type(e.__cause__).__name__, bus.checkpoints.steps())
            else:
                print("SAVED")
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
            bus.commit(mm.Delta.full("big", np.ones((512, 1024), np.float32), op="add"))
            print("SEQ", bus.seq)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert "STORE_ERROR" in out.stdout and "[]" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "SEQ 2" in out.stdout
    with Bus.open(tmp_path / "bus") as bus:
        assert bus.seq == 2 and bus.checkpoints.steps() == []
        assert np.all(bus.read("big") >= 1.0)
