"""The Bus: open/recover, atomic commits, time travel, subscriptions, checkpoints, metrics."""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax.core.graph import Graph
from mmsb_jax.errors import (
    DTypeError,
    IndexOutOfRangeError,
    MaskError,
    OptionError,
    SchemaMismatchError,
    ShapeError,
    StoreError,
    UnknownPageError,
    UnknownSeqError,
)
from mmsb_jax.runtime import Bus, CommitInfo, state_at
from mmsb_jax.store import tlog as tlog_mod
from mmsb_jax.store.replay import apply_transaction, replay
from mmsb_jax.store.tlog import segment_paths

recovery_mod = importlib.import_module("mmsb_jax.store.recovery")
txn_mod = importlib.import_module("mmsb_jax.core.transaction")

SCHEMA = mm.Schema([
    mm.PageSpec("x", (8,), "int32"),
    mm.PageSpec("f", (4, 3), "float32"),
    mm.PageSpec("m", (6,), "bool"),
])


def txn(seq: int) -> list[mm.Delta]:
    ds = [mm.Delta.rows("x", np.array([seq % 8, -1], np.int32), np.array([seq, 0], np.int32),
                        op="add")]
    if seq % 2:
        ds.append(mm.Delta.full("f", np.full((4, 3), seq * 0.25, np.float32), op="mul"))
    else:
        ds.append(mm.Delta.masked("f", np.eye(4, 3, dtype=bool), np.full((4, 3), seq,
                                                                           np.float32), op="add"))
    if seq % 5 == 0:
        ds.append(mm.Delta.masked("m", np.arange(6) % 2 == 0, np.ones(6, bool), op="or"))
    return ds


def bits(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)


def assert_states_identical(a: mm.State, b: mm.State) -> None:
    assert tuple(a.pages) == tuple(b.pages)
    for n in a.pages:
        x, y = np.asarray(a.pages[n]), np.asarray(b.pages[n])
        assert x.dtype == y.dtype and x.shape == y.shape, n
        np.testing.assert_array_equal(bits(x), bits(y), err_msg=n)
        assert int(a.epochs[n]) == int(b.epochs[n]), n


def live_states(n: int) -> list[mm.State]:
    states = [mm.init_state(SCHEMA)]
    for s in range(1, n + 1):
        states.append(apply_transaction(states[-1], txn(s)))
    return states


@pytest.fixture
def bus(tmp_path):
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as b:
        yield b


# -- opening -----------------------------------------------------------------------------------


def test_new_directory_layout_and_reopen(tmp_path):
    d = tmp_path / "run"
    with pytest.raises(StoreError, match="schema is needed"):
        Bus.open(d)
    with Bus.open(d, SCHEMA) as bus:
        assert bus.seq == 0 and bus.schema == SCHEMA and bus.sync_policy == "batch"
        assert_states_identical(bus.state, mm.init_state(SCHEMA))
        bus.commit(txn(1))
    assert (d.stat().st_mode & 0o777) == 0o700
    assert sorted(p.name for p in d.iterdir()) == ["checkpoints", "log"]
    assert ((d / "checkpoints").stat().st_mode & 0o777) == 0o700
    with Bus.open(d) as bus:  # schema from the log
        assert bus.schema == SCHEMA and bus.seq == 1
    with Bus.open(d, SCHEMA, sync="always") as bus:
        assert bus.seq == 1 and "seq=1" in repr(bus)
    other = mm.Schema([mm.PageSpec("x", (8,), "int64")])
    with pytest.raises(SchemaMismatchError):
        Bus.open(d, other)
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="not a directory"):
        Bus.open(tmp_path / "file", SCHEMA)


def test_bad_options(tmp_path):
    with pytest.raises(OptionError):
        Bus.open(tmp_path, SCHEMA, sync="maybe")
    with pytest.raises(OptionError):
        Bus.open(tmp_path, SCHEMA, checkpoint_every=0)
    with pytest.raises(OptionError):
        Bus.open(tmp_path, SCHEMA, keep_checkpoints=0)


def test_each_bus_owns_its_directory(tmp_path):
    with Bus.open(tmp_path, SCHEMA), pytest.raises(StoreError, match="in use"):
        Bus.open(tmp_path, SCHEMA)
    with Bus.open(tmp_path, SCHEMA) as bus:  # released by close
        assert bus.seq == 0


def test_graph_schema_and_provenance(tmp_path):
    g = Graph(SCHEMA).derive("total", ("x",), lambda x: x.sum())
    with Bus.open(tmp_path, graph=g) as bus:
        assert bus.schema == g.schema and bus.graph is g
        assert bus.log.graph == g.provenance()
        bus.commit(txn(1))
    with Bus.open(tmp_path, SCHEMA, graph=g) as bus:  # the base schema is accepted
        assert bus.seq == 1
    with Bus.open(tmp_path) as bus:
        assert bus.schema == g.schema
    with pytest.raises(SchemaMismatchError):
        Bus.open(tmp_path, mm.Schema([mm.PageSpec("q", (1,))]), graph=g)


# -- commits -----------------------------------------------------------------------------------


def test_commit_returns_info_and_applies(bus):
    info = bus.commit(txn(1))
    assert isinstance(info, CommitInfo)
    assert info.seq == 1 and info.pages == ("x", "f") and info.derived == ()
    assert info.bytes_logged > 0 and not info.durable and info.seconds > 0
    info2 = bus.commit(mm.Delta.full("m", np.ones(6, bool)))  # a single Delta
    assert info2.seq == 2 and info2.pages == ("m",)
    assert bus.commit([]).seq == 3  # an empty transaction still takes a seq
    want = live_states(1)[1]
    np.testing.assert_array_equal(bus.read("x"), np.asarray(want.pages["x"]))
    assert bus.read("m").all() and int(bus.state.epochs["m"]) == 1


def test_read_is_a_copy(bus):
    bus.commit(txn(1))
    a = bus.read("x")
    a[:] = 99
    assert bus.read("x").max() < 99
    with pytest.raises(UnknownPageError):
        bus.read("nope")


@pytest.mark.parametrize("bad, err", [
    (mm.Delta.full("nope", np.zeros(3, np.float32)), UnknownPageError),
    (mm.Delta.full("f", np.zeros((4, 3), np.int32)), DTypeError),
    (mm.Delta.full("f", np.zeros((3, 3), np.float32)), ShapeError),
    (mm.Delta.rows("x", np.array([8], np.int32), np.array([1], np.int32)), IndexOutOfRangeError),
    (mm.Delta.masked("m", np.ones(5, bool), np.ones(5, bool)), MaskError),
    (mm.Delta.full("m", np.ones(6, bool), op="add"), mm.errors.OpError),
])
def test_invalid_delta_changes_nothing(bus, bad, err):
    bus.commit(txn(1))
    state = bus.state
    seg = segment_paths(bus.directory / "log")[0]
    size = seg.stat().st_size
    with pytest.raises(err):
        bus.commit([txn(2)[0], bad])  # a valid delta first: the whole transaction is refused
    assert bus.seq == 1 and bus.state is state and seg.stat().st_size == size
    assert bus.metrics()["commit_failures"] == 1
    assert bus.commit(txn(2)).seq == 2


def test_failed_log_write_changes_nothing(bus, monkeypatch):
    bus.commit(txn(1))
    state = bus.state
    seg = segment_paths(bus.directory / "log")[0]
    before = seg.read_bytes()

    def enospc(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tlog_mod, "_write_all", enospc)
    got = []
    bus.subscribe(None, lambda info, s: got.append(info.seq))
    with pytest.raises(StoreError, match="nothing was committed"):
        bus.commit(txn(2))
    assert bus.seq == 1 and bus.state is state and seg.read_bytes() == before and got == []
    monkeypatch.undo()
    assert bus.commit(txn(2)).seq == 2 and got == [2]


def test_failed_apply_removes_the_logged_transaction(bus, monkeypatch):
    bus.commit(txn(1))
    seg = segment_paths(bus.directory / "log")[0]
    before = seg.read_bytes()

    def boom(state, deltas, plan=None, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(bus._pipe, "apply", boom)
    with pytest.raises(RuntimeError, match="device lost"):
        bus.commit(txn(2))
    assert seg.read_bytes() == before and bus.seq == 1
    monkeypatch.undo()
    bus.commit(txn(2))
    assert bus.log.last_seq == 2


def test_closed_bus_refuses_commits(tmp_path):
    bus = Bus.open(tmp_path, SCHEMA)
    bus.close()
    bus.close()  # idempotent
    assert bus.closed and "closed" in repr(bus)
    with pytest.raises(StoreError, match="closed"):
        bus.commit(txn(1))
    with pytest.raises(StoreError, match="closed"):
        bus.checkpoint()


def test_commit_path_compiles_once_per_structure(tmp_path, monkeypatch):
    """A commit structure is traced once per process: not once per commit, and not again by
    another Bus or a reopened one (the compiled transaction is shared by structure)."""
    traces = []
    real = txn_mod._flat_impl

    def counted(*args):
        traces.append(args[:4])
        return real(*args)

    txn_mod._flat_jit.cache_clear()
    monkeypatch.setattr(txn_mod, "_flat_impl", counted)
    try:
        rng = np.random.default_rng(0)
        per_bus = []
        for name in ("a", "b", "a"):  # a second bus, then the first one reopened
            with Bus.open(tmp_path / name, SCHEMA, sync="never") as bus:
                for _ in range(10):
                    bus.commit([mm.Delta.rows("x", rng.integers(-1, 8, 4).astype(np.int32),
                                              rng.integers(0, 9, 4).astype(np.int32),
                                              op="max")])
            per_bus.append(len(traces))
        # one structure, traced at most twice in the whole process: once copying and once
        # donating in place (whichever bus first commits in place), however many buses
        assert len(set(traces)) == 1 and 1 <= per_bus[0] <= per_bus[2] <= 2
    finally:
        txn_mod._flat_jit.cache_clear()


def test_repeated_commits_stay_on_the_cpp_dispatch_fast_path(bus, monkeypatch):
    """After the first commit of a structure, no commit goes through JAX's Python dispatch.

    ``pjit._run_python_pjit`` is the slow path (a cache miss, an effect such as a checkify
    check, or a non-array output); the C++ fast path never calls it.
    """
    from jax._src import pjit

    d = mm.Delta.rows("x", np.array([1, 5, -1], np.int32), np.array([3, 4, 5], np.int32), "add")
    for _ in range(3):
        bus.commit(d)
    slow = []
    real = pjit._run_python_pjit
    monkeypatch.setattr(pjit, "_run_python_pjit", lambda *a, **k: slow.append(1) or real(*a, **k))
    for _ in range(20):
        bus.commit([mm.Delta.rows("x", np.array([1, 5, -1], np.int32),
                                  np.array([3, 4, 5], np.int32), "add")])
    assert slow == []
    assert bus.read("x")[1] == 23 * 3


# -- time travel -------------------------------------------------------------------------------


def test_at_returns_earlier_states(tmp_path):
    states = live_states(12)
    with Bus.open(tmp_path, SCHEMA, sync="never", keep_checkpoints=10) as bus:
        for s in range(1, 13):
            bus.commit(txn(s))
            if s in (4, 9):
                assert bus.checkpoint() == s
        for seq in (0, 1, 3, 4, 5, 9, 10, 11, 12):
            assert_states_identical(bus.at(seq), states[seq])
        assert bus.at(12) is bus.state
        for bad in (-1, 13, "3", 2.0, True):
            with pytest.raises(UnknownSeqError):
                bus.at(bad)
        assert_states_identical(bus.at(np.int64(2)), states[2])


def test_state_at_reads_a_live_directory(tmp_path):
    states = live_states(6)
    with Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        for s in range(1, 7):
            bus.commit(txn(s))
            if s == 3:
                bus.checkpoint()
        state, seq = state_at(tmp_path, 5)  # no lock needed while the bus writes
        assert seq == 5
        assert_states_identical(state, states[5])
        state, seq = state_at(tmp_path, use_checkpoints=False)
        assert seq == 6
        assert_states_identical(state, states[6])
        with pytest.raises(SchemaMismatchError):
            state_at(tmp_path, schema=mm.Schema([mm.PageSpec("x", (1,))]))
        with pytest.raises(UnknownSeqError):
            state_at(tmp_path, 7)
    with pytest.raises(StoreError):
        state_at(tmp_path / "nothing")


# -- subscriptions -----------------------------------------------------------------------------


def test_subscribe_filters_orders_and_unsubscribes(bus, caplog):
    seen_m, seen_all, seen_x = [], [], []
    sub_m = bus.subscribe("m", lambda info, s: seen_m.append((info.seq, bool(s.pages["m"][0]))))
    bus.subscribe(None, lambda info, s: seen_all.append(info.seq))
    bus.subscribe(("x", "f"), lambda info, s: seen_x.append(info.seq))
    for s in range(1, 7):
        bus.commit(txn(s))
    assert seen_m == [(5, True)] and seen_all == [1, 2, 3, 4, 5, 6] and seen_x == seen_all
    sub_m()
    assert not sub_m.active
    sub_m.unsubscribe()  # idempotent
    bus.commit(txn(10))
    assert seen_m == [(5, True)]

    def broken(info, s):
        raise ValueError("subscriber bug")

    bus.subscribe("x", broken)
    with caplog.at_level(logging.ERROR, logger="mmsb_jax.runtime"):
        assert bus.commit(txn(11)).seq == 8  # the commit still succeeds
    assert "subscriber bug" in caplog.text and bus.metrics()["callback_errors"] == 1
    with pytest.raises(UnknownPageError):
        bus.subscribe(["x", "zz"], print)
    with pytest.raises(OptionError):
        bus.subscribe("x", "not callable")


def test_callback_may_commit(bus):
    seqs = []

    def chain(info, state):
        seqs.append(info.seq)
        if info.seq < 3:
            bus.commit(txn(info.seq + 1))

    bus.subscribe("x", chain)
    bus.commit(txn(1))
    assert seqs == [1, 2, 3] and bus.seq == 3


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_commits_have_a_consistent_serial_order(tmp_path):
    n_threads, per_thread = 4, 15
    with Bus.open(tmp_path, SCHEMA, sync="batch") as bus:
        notified = []
        bus.subscribe(None, lambda info, s: notified.append(info.seq))
        results: dict[int, list[int]] = {}

        def worker(t: int) -> None:
            out = []
            for k in range(per_thread):
                d = mm.Delta.rows("x", np.array([t], np.int32), np.array([1], np.int32),
                                  op="add")
                e = mm.Delta.full("f", np.full((4, 3), t + k, np.float32), op="max")
                out.append(bus.commit([d, e]).seq)
            results[t] = out

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        total = n_threads * per_thread
        all_seqs = sorted(s for r in results.values() for s in r)
        assert all_seqs == list(range(1, total + 1))
        assert all(r == sorted(r) for r in results.values())
        assert notified == list(range(1, total + 1))
        np.testing.assert_array_equal(bus.read("x")[:n_threads], [per_thread] * n_threads)
        live = bus.state
        # the log's serial order reproduces the live state exactly
        assert_states_identical(replay(mm.init_state(SCHEMA), bus.log), live)
    with Bus.open(tmp_path) as reopened:
        assert_states_identical(reopened.state, live)


# -- checkpoints and recovery ------------------------------------------------------------------


def test_recovery_uses_the_latest_checkpoint(tmp_path, monkeypatch):
    states = live_states(10)
    with Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        for s in range(1, 11):
            bus.commit(txn(s))
            if s == 7:
                bus.checkpoint()
    calls = []
    real = recovery_mod.replay_with_seq

    def spy(state, log, *, after_seq=0, **kw):
        calls.append(after_seq)
        return real(state, log, after_seq=after_seq, **kw)

    monkeypatch.setattr(recovery_mod, "replay_with_seq", spy)
    with Bus.open(tmp_path) as bus:
        assert calls == [7]
        assert_states_identical(bus.state, states[10])


def test_checkpoint_every_and_retention(tmp_path):
    with Bus.open(tmp_path, SCHEMA, sync="never", checkpoint_every=3, keep_checkpoints=2) as bus:
        for s in range(1, 11):
            bus.commit(txn(s))
        bus.checkpoints.wait()
        assert bus.checkpoints.steps() == [6, 9]
        assert bus.checkpoint() == 10 and bus.checkpoint() == 10
        assert bus.checkpoints.steps() == [9, 10]
        assert bus.metrics()["checkpoints"] == 5


def test_prune_log_after_checkpoints(tmp_path):
    states = live_states(30)
    with Bus.open(tmp_path, SCHEMA, sync="never", segment_bytes=1024, keep_checkpoints=2,
                  prune_log=True) as bus:
        for s in range(1, 31):
            bus.commit(txn(s))
            if s in (10, 20):
                bus.checkpoint()
        segs = bus.log.segments
        first = bus.log.first_seq
        assert first > 1 and len(segs) >= 2  # segments wholly below checkpoint 10 are gone
        assert bus.prune_log() == []
        assert_states_identical(bus.at(first), states[first])
        assert_states_identical(bus.at(10), states[10])
        with pytest.raises(UnknownSeqError):
            bus.at(first - 2)
    with Bus.open(tmp_path) as bus:
        assert_states_identical(bus.state, states[30])


def test_torn_tail_is_cut_on_open_and_reported(tmp_path, caplog):
    states = live_states(4)
    with Bus.open(tmp_path, SCHEMA, sync="always") as bus:
        for s in range(1, 5):
            bus.commit(txn(s))
    seg = segment_paths(tmp_path / "log")[0]
    data = seg.read_bytes()
    seg.write_bytes(data[:-10])  # the last commit is torn
    with caplog.at_level(logging.WARNING, logger="mmsb_jax.store"), Bus.open(tmp_path) as bus:
        assert bus.seq == 3
        assert_states_identical(bus.state, states[3])
        cut = len(data) - 10 - bus.log.segments[0].stat().st_size
        assert bus.metrics()["torn_tail_bytes_cut"] == cut > 0
        assert f"{cut} bytes" in caplog.text


def test_checkpoint_beyond_the_log_is_dropped(tmp_path, caplog):
    states = live_states(5)
    with Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        for s in range(1, 6):
            bus.commit(txn(s))
        bus.checkpoint()
    # the log loses its last two commits (e.g. a manual repair): the log is the truth
    seg = segment_paths(tmp_path / "log")[0]
    scan = tlog_mod.scan_log(tmp_path / "log")
    seg.write_bytes(seg.read_bytes()[:scan.scans[0][1].txns[2].end])
    with caplog.at_level(logging.WARNING, logger="mmsb_jax.runtime"), Bus.open(tmp_path) as bus:
        assert bus.seq == 3 and bus.checkpoints.steps() == []
        assert_states_identical(bus.state, states[3])
    assert "beyond the end of the log" in caplog.text


def test_pruned_log_without_checkpoint_cannot_recover(tmp_path):
    with Bus.open(tmp_path, SCHEMA, sync="never", segment_bytes=1024) as bus:
        for s in range(1, 21):
            bus.commit(txn(s))
        bus.checkpoint()
        assert bus.prune_log()
    for p in (tmp_path / "checkpoints").iterdir():
        if p.name.isdigit():
            shutil.rmtree(p)
    with pytest.raises(StoreError, match="cannot recover"):
        Bus.open(tmp_path)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 14), ckpts=st.sets(st.integers(1, 14), max_size=3),
       sync=st.sampled_from(["always", "batch", "never"]))
def test_reopen_equals_live_bit_exactly(n, ckpts, sync):
    states = live_states(n)
    with tempfile.TemporaryDirectory() as tmp:
        with Bus.open(tmp, SCHEMA, sync=sync, segment_bytes=1500) as bus:
            for s in range(1, n + 1):
                bus.commit(txn(s))
                if s in ckpts:
                    bus.checkpoint()
            assert_states_identical(bus.state, states[n])
        with Bus.open(Path(tmp)) as bus:
            assert bus.seq == n
            assert_states_identical(bus.state, states[n])
            k = n // 2
            assert_states_identical(bus.at(k), states[k])


# -- telemetry ---------------------------------------------------------------------------------


def test_metrics(tmp_path):
    with Bus.open(tmp_path, SCHEMA, sync="always") as bus:
        for s in range(1, 6):
            bus.commit(txn(s))
        with pytest.raises(UnknownPageError):
            bus.commit(mm.Delta.full("zz", np.zeros(1, np.float32)))
        m = bus.metrics()
    assert m["commits"] == 5 and m["commit_failures"] == 1 and m["seq"] == 5
    assert m["bytes_logged"] > 0 and m["bytes_applied"] > 0 and m["sync"] == "always"
    assert m["torn_tail_bytes_cut"] == 0 and m["log_segments"] == 1 and m["first_seq"] == 1
    assert m["page_bytes"] == 8 * 4 + 12 * 4 + 6
    assert list(m["page_bytes_by_device"].values()) == [m["page_bytes"]]
    assert m["fsyncs"] >= 5
    lat = m["latency"]
    for stage in ("commit", "validate", "log", "dispatch", "wait"):
        assert lat[stage]["count"] == 5 and lat[stage]["sum_s"] > 0
    assert lat["fsync"]["count"] >= 5 and lat["commit"]["buckets"]["+Inf"] == 5


def test_sync_makes_commits_durable(bus):
    bus.commit(txn(1))
    before = bus.metrics()["fsyncs"]
    bus.sync()
    assert bus.metrics()["fsyncs"] == before + 1 and bus.sync_policy == "never"


def test_serve_metrics_on_loopback(bus):
    bus.commit(txn(1))
    port = bus.serve_metrics()
    assert bus.serve_metrics() == port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        body = r.read().decode()
    assert "mmsb_commits_total 1.0" in body and "mmsb_commit_seconds_bucket" in body
