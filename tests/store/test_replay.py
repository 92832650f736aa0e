"""Replay: bit-exact with the live commit path, one scan per stacked run, compiled rarely."""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax.errors import (
    DTypeError,
    IndexOutOfRangeError,
    OptionError,
    StoreError,
    UnknownPageError,
    UnknownSeqError,
)
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.format import Transaction
from mmsb_jax.store.replay import apply_transaction, replay, replay_with_seq, txn_structure
from mmsb_jax.store.tlog import TLog

SCHEMA = mm.Schema([
    mm.PageSpec("f", (6, 3), "float32"),
    mm.PageSpec("i", (5,), "int32"),
    mm.PageSpec("b", (4, 2), "bool"),
    mm.PageSpec("u", (7,), "uint8"),
])
OPS_BY_DTYPE = {
    "float32": ("set", "add", "mul", "min", "max"),
    "int32": mm.OPS,
    "bool": ("set", "min", "max", "or", "and"),
    "uint8": mm.OPS,
}
CAPACITY = 3  # fixed row capacity: deltas stack and shapes never change
# the module (``mmsb_jax.store.replay`` the attribute is the function of that name)
txn_mod = importlib.import_module("mmsb_jax.core.transaction")


def _values(rng: np.random.Generator, spec: mm.PageSpec, shape: tuple[int, ...]) -> np.ndarray:
    if spec.dtype == "float32":
        v = rng.normal(scale=4.0, size=shape).astype(np.float32)
        v[rng.random(shape) < 0.1] = -0.0
        return v
    if spec.dtype == "bool":
        return rng.random(shape) < 0.5
    info = np.iinfo(spec.dtype)
    return rng.integers(max(info.min, -50), min(info.max, 50), size=shape).astype(spec.dtype)


def make_delta(rng: np.random.Generator, page: str, kind: str, op: str) -> mm.Delta:
    spec = SCHEMA[page]
    if kind == "rows":
        idx = rng.integers(-1, spec.shape[0], size=CAPACITY).astype(np.int32)
        return mm.Delta.rows(page, idx, _values(rng, spec, (CAPACITY, *spec.shape[1:])), op)
    if kind == "masked":
        return mm.Delta.masked(page, rng.random(spec.shape) < 0.5,
                               _values(rng, spec, spec.shape), op)
    return mm.Delta.full(page, _values(rng, spec, spec.shape), op)


@st.composite
def commit_sequences(draw, max_commits: int = 10):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    commits = []
    for _ in range(draw(st.integers(1, max_commits))):
        ds = []
        for _ in range(draw(st.integers(0, 2))):
            page = draw(st.sampled_from(SCHEMA.names))
            kind = draw(st.sampled_from(mm.KINDS))
            op = draw(st.sampled_from(OPS_BY_DTYPE[SCHEMA[page].dtype]))
            ds.append(make_delta(rng, page, kind, op))
        # sometimes repeat the previous commit's structure so that runs stack into scans
        if commits and draw(st.booleans()):
            prev = commits[-1]
            ds = [make_delta(rng, d.page, d.kind, d.op) for d in prev]
        commits.append(ds)
    return commits


def bits(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)


def assert_states_identical(a: mm.State, b: mm.State) -> None:
    assert tuple(a.pages) == tuple(b.pages)
    for n in a.pages:
        x, y = np.asarray(a.pages[n]), np.asarray(b.pages[n])
        assert x.dtype == y.dtype and x.shape == y.shape, n
        np.testing.assert_array_equal(bits(x), bits(y), err_msg=n)
        assert int(a.epochs[n]) == int(b.epochs[n]), n


def live_run(commits) -> list[mm.State]:
    states = [mm.init_state(SCHEMA)]
    for ds in commits:
        states.append(apply_transaction(states[-1], ds))
    return states


@settings(max_examples=25, deadline=None)
@given(commits=commit_sequences(), data=st.data())
def test_checkpoint_plus_replay_equals_live_bit_exactly(commits, data):
    """restore(latest checkpoint) + replay(log suffix) == the live state, every kind and op."""
    states = live_run(commits)
    n = len(commits)
    ckpt = data.draw(st.integers(0, n), label="checkpoint seq")
    with tempfile.TemporaryDirectory() as tmp:
        with TLog.open(Path(tmp) / "log", SCHEMA, sync="never") as log:
            for seq, ds in enumerate(commits, 1):
                log.append(seq, ds)
        with CheckpointStore(Path(tmp) / "ck", async_save=False) as store:
            store.save(ckpt, states[ckpt], SCHEMA)
            restored, manifest = store.restore(ckpt, SCHEMA)
        assert manifest["seq"] == ckpt
        assert_states_identical(restored, states[ckpt])
        out, reached = replay_with_seq(restored, Path(tmp), after_seq=ckpt)
        assert reached == n
        assert_states_identical(out, states[n])
        # time travel from scratch to an arbitrary seq
        k = data.draw(st.integers(0, n), label="to_seq")
        assert_states_identical(replay(mm.init_state(SCHEMA), Path(tmp) / "log", to_seq=k),
                                states[k])


@settings(max_examples=12, deadline=None)
@given(commits=commit_sequences(max_commits=6))
def test_live_path_equals_mm_apply_batch(commits):
    """The Bus path applies a commit as ``mm.apply_batch``; epochs count every delta."""
    states = live_run(commits)
    s = mm.init_state(SCHEMA)
    for ds in commits:
        s = mm.apply_batch(s, ds)
    for name in SCHEMA.names:
        x, y = np.asarray(states[-1].pages[name]), np.asarray(s.pages[name])
        np.testing.assert_array_equal(x, y)  # same merge, same ops (NaN-free values)
        assert int(states[-1].epochs[name]) == int(s.epochs[name])
    want = {n: 0 for n in SCHEMA.names}
    for ds in commits:
        for d in ds:
            want[d.page] += d.count
    assert {n: int(e) for n, e in states[-1].epochs.items()} == want


def _same_structure_commits(n: int, seed: int = 0) -> list[list[mm.Delta]]:
    rng = np.random.default_rng(seed)
    return [[make_delta(rng, "f", "rows", "add"), make_delta(rng, "i", "masked", "max")]
            for _ in range(n)]


def _spy_chunks(monkeypatch) -> list[tuple[str, int, int]]:
    """Record ``(kind, stacked length, transactions applied)`` of every chunk dispatched."""
    calls: list[tuple[str, int, int]] = []
    scan, loop = txn_mod._scan, txn_mod._loop

    def spy_scan(graph, pages, epochs, stacked, shardings=()):
        n = int(stacked[0].values.shape[0])
        calls.append(("scan", n, n))
        return scan(graph, pages, epochs, stacked, shardings)

    def spy_loop(graph, pages, epochs, stacked, shardings, n):
        calls.append(("loop", int(stacked[0].values.shape[0]), int(n)))
        return loop(graph, pages, epochs, stacked, shardings, n)

    monkeypatch.setattr(txn_mod, "_scan", spy_scan)
    monkeypatch.setattr(txn_mod, "_loop", spy_loop)
    return calls


def test_runs_are_applied_by_few_scans(monkeypatch):
    calls = _spy_chunks(monkeypatch)
    commits = _same_structure_commits(100)
    txns = [Transaction(i + 1, tuple(ds)) for i, ds in enumerate(commits)]
    out = replay(mm.init_state(SCHEMA), txns)
    assert calls == [("loop", 128, 100)]  # one chunk, stacked into a capacity of 128
    assert_states_identical(out, live_run(commits)[-1])
    calls.clear()
    out = replay(mm.init_state(SCHEMA), txns[:64])
    assert calls == [("scan", 64, 64)]  # a power of two: the static-length scan
    assert_states_identical(out, live_run(commits[:64])[-1])
    calls.clear()
    replay(mm.init_state(SCHEMA), txns, max_chunk=32)
    assert calls == [("scan", 32, 32)] * 3 + [("scan", 4, 4)]  # 100 = 3 * 32 + 4


def test_recompilation_guard_on_the_replay_scan(monkeypatch):
    """A structure compiles once per power-of-two length or capacity, whatever the log."""
    chex.clear_trace_counter()
    guarded_scan = jax.jit(chex.assert_max_traces(txn_mod._scan_impl, n=1),
                           static_argnums=(0, 4))
    guarded_loop = jax.jit(chex.assert_max_traces(txn_mod._loop_impl, n=1),
                           static_argnums=(0, 4))
    single_traces = []
    real_flat = txn_mod._flat_impl

    def counted_flat(*args):
        single_traces.append(args[:4])
        return real_flat(*args)

    commits = _same_structure_commits(128, seed=1)
    states = live_run(commits)
    monkeypatch.setattr(txn_mod, "_scan", guarded_scan)
    monkeypatch.setattr(txn_mod, "_loop", guarded_loop)
    monkeypatch.setattr(txn_mod, "_flat_impl", counted_flat)
    txn_mod._flat_jit.cache_clear()
    try:
        # 75, 74, 73, 65 and 100 share the capacity-128 loop; 64 is the one scan; a single
        # transaction takes the commit path's compiled form
        for upto in (75, 74, 64, 73, 65, 100, 1, 1):
            txns = [Transaction(i + 1, tuple(ds)) for i, ds in enumerate(commits[:upto])]
            assert_states_identical(replay(mm.init_state(SCHEMA), txns), states[upto])
    finally:
        txn_mod._flat_jit.cache_clear()
    assert len(single_traces) == 1


def test_chunk_loop_equals_scan_and_single_commits_bit_for_bit():
    """Every chunk length n <= capacity gives the states of n single commits, epochs too."""
    commits = _same_structure_commits(16, seed=3)
    states = live_run(commits)
    for n in (2, 3, 5, 7, 8, 9, 15, 16):
        txns = [Transaction(i + 1, tuple(ds)) for i, ds in enumerate(commits[:n])]
        assert_states_identical(replay(mm.init_state(SCHEMA), txns), states[n])
    # stacked to a larger capacity than needed: the padding slots are never applied
    stacked = txn_mod.stack_transactions(commits[:5], capacity=16)
    assert stacked[0].values.shape[0] == 16 and (stacked[0].indices[5:] == -1).all()
    out, per_step = txn_mod._apply_padded(mm.init_state(SCHEMA), stacked, 5, graph=None,
                                          donate=False)
    assert_states_identical(out, states[5])
    assert {k: v.shape for k, v in per_step.items()} == {"f": (5,), "i": (5,)}
    with pytest.raises(OptionError, match="capacity"):
        txn_mod.stack_transactions(commits[:5], capacity=4)


def test_chunk_bytes_caps_the_stack(monkeypatch):
    calls = _spy_chunks(monkeypatch)
    commits = _same_structure_commits(40)
    per_txn = txn_mod.txn_nbytes(commits[0])
    txns = [(i + 1, ds) for i, ds in enumerate(commits)]
    out = replay(mm.init_state(SCHEMA), txns, chunk_bytes=per_txn * 9)
    assert max(c[1] for c in calls) == 8 and sum(c[2] for c in calls) == 40
    assert_states_identical(out, live_run(commits)[-1])
    calls.clear()
    out = replay(mm.init_state(SCHEMA), txns, max_chunk=5)
    assert max(c[1] for c in calls) == 4 and sum(c[2] for c in calls) == 40


def test_structure_key():
    a, b = _same_structure_commits(2)
    assert txn_structure(a) == txn_structure(b)
    assert txn_structure(a) != txn_structure(a[::-1])
    assert txn_structure(a) != txn_structure([a[0].with_count(2), a[1]])


def test_inputs_and_filters(tmp_path):
    commits = _same_structure_commits(6)
    states = live_run(commits)
    txns = [Transaction(i + 1, tuple(ds)) for i, ds in enumerate(commits)]
    s0 = mm.init_state(SCHEMA)
    assert_states_identical(replay(s0, [(t.seq, list(t.deltas)) for t in txns]), states[6])
    assert_states_identical(replay(states[2], txns, after_seq=2, to_seq=4), states[4])
    out, seq = replay_with_seq(s0, txns, to_seq=0)
    assert seq == 0 and out is s0
    assert replay(s0, []) is s0
    with pytest.raises(StoreError, match="consecutive"):
        replay(s0, txns[1:])
    with pytest.raises(StoreError, match="consecutive"):
        replay(s0, [txns[0], txns[2]])
    # empty transactions keep the seqs going and change nothing
    mixed = [Transaction(1, ()), Transaction(2, txns[0].deltas), Transaction(3, ())]
    assert_states_identical(replay(s0, mixed), states[1])
    # a log directory, a bus directory, a TLog
    with TLog.open(tmp_path / "bus" / "log", SCHEMA, sync="never") as log:
        for t in txns:
            log.append(t.seq, t.deltas)
    assert_states_identical(replay(s0, tmp_path / "bus"), states[6])
    assert_states_identical(replay(s0, str(tmp_path / "bus" / "log"), to_seq=3), states[3])
    with TLog.open(tmp_path / "bus" / "log", readonly=True) as log:
        assert_states_identical(replay(states[5], log, after_seq=5), states[6])
        assert_states_identical(replay(s0, log, progress=True), states[6])


def test_logged_deltas_are_validated():
    s0 = mm.init_state(SCHEMA)
    bad_page = [Transaction(1, (mm.Delta.full("nope", np.zeros(2, np.float32)),))]
    with pytest.raises(UnknownPageError):
        replay(s0, bad_page)
    bad_dtype = [Transaction(1, (mm.Delta.full("i", np.zeros(5, np.float32)),))]
    with pytest.raises(DTypeError):
        replay(s0, bad_dtype)
    d = mm.Delta.rows("i", np.array([0, 1, 2], np.int32), np.ones(3, np.int32))
    far = mm.Delta(indices=np.array([0, 9, 1], np.int32), mask=None, values=np.ones(3, np.int32),
                   page="i", kind="rows")
    with pytest.raises(IndexOutOfRangeError):  # one transaction
        replay(s0, [Transaction(1, (far,))])
    with pytest.raises(IndexOutOfRangeError):  # inside a stacked run
        replay(s0, [Transaction(1, (d,)), Transaction(2, (far,))])
    # unchecked replay skips validation (trusted input)
    assert int(replay(s0, [Transaction(1, (d,))], check=False).epochs["i"]) == 1


def test_apply_transaction_validates_before_applying():
    s0 = mm.init_state(SCHEMA)
    with pytest.raises(UnknownPageError):
        apply_transaction(s0, [mm.Delta.full("zz", np.zeros(1, np.float32))])
    with pytest.raises(TypeError):
        apply_transaction(s0, ["not a delta"])
    assert apply_transaction(s0, []) is s0


def test_replay_from_pruned_log_needs_a_later_start(tmp_path):
    commits = _same_structure_commits(12)
    with TLog.open(tmp_path, SCHEMA, sync="never", segment_bytes=700) as log:
        for seq, ds in enumerate(commits, 1):
            log.append(seq, ds)
        log.remove_segments_through(5)
        first = log.first_seq
    assert first > 1
    with pytest.raises(UnknownSeqError):
        replay(mm.init_state(SCHEMA), tmp_path)
    states = live_run(commits)
    out = replay(states[first - 1], tmp_path, after_seq=first - 1)
    assert_states_identical(out, states[12])


# -- reading a log as stacked runs -------------------------------------------------------------


def _mixed_log(tmp_path, n: int = 60, seed: int = 4):
    """A log of runs of one structure broken by transactions of another of the same byte
    size (``add`` vs ``mul`` on the same page) and by a different one."""
    rng = np.random.default_rng(seed)
    commits = []
    for s in range(n):
        op = "mul" if s % 9 == 4 else "add"
        ds = [make_delta(rng, "f", "full", op), make_delta(rng, "i", "rows", "max")]
        if s % 17 == 11:
            ds = [make_delta(rng, "u", "masked", "set")]
        commits.append(ds)
    with TLog.open(tmp_path / "log", SCHEMA, sync="never", segment_bytes=4096) as log:
        for s, ds in enumerate(commits, 1):
            log.append(s, ds)
    return commits


def _expand(items) -> list[tuple[int, list[mm.Delta]]]:
    from mmsb_jax.core.transaction import _StackedRows
    from mmsb_jax.store.format import StackedRun

    out = []
    for it in items:
        if isinstance(it, StackedRun):
            rows = _StackedRows(list(it.deltas), it.count)
            out += [(it.first_seq + j, rows[j]) for j in range(it.count)]
        else:
            out.append((it.seq, list(it.deltas)))
    return out


def test_transaction_runs_are_the_transactions(tmp_path):
    from mmsb_jax.store.format import StackedRun

    commits = _mixed_log(tmp_path)
    with TLog.open(tmp_path / "log", readonly=True) as log:
        assert len(log.segments) > 1  # runs end at segment boundaries too
        for after, to in ((0, None), (7, 33), (12, 13), (0, 1), (59, None), (3, 5)):
            plain = [(t.seq, list(t.deltas)) for t in log.transactions(after, to)]
            items = list(log.transaction_runs(after, to, max_run=8))
            if (after, to) == (0, None):
                assert any(isinstance(i, StackedRun) for i in items)
            assert all(i.count <= 8 for i in items if isinstance(i, StackedRun))
            runs = _expand(items)
            assert [s for s, _ in runs] == [s for s, _ in plain]
            for (_, a), (_, b) in zip(runs, plain, strict=True):
                for x, y in zip(a, b, strict=True):
                    assert (x.page, x.kind, x.op, x.count) == (y.page, y.kind, y.op, y.count)
                    for f in ("indices", "mask", "values"):
                        u, v = getattr(x, f), getattr(y, f)
                        assert (u is None) == (v is None)
                        if u is not None:
                            np.testing.assert_array_equal(bits(np.asarray(u)), bits(v))
    states = live_run(commits)
    for after, to in ((0, None), (0, 30), (10, 41)):
        out = replay(states[after], tmp_path / "log", after_seq=after, to_seq=to, max_chunk=8)
        assert_states_identical(out, states[to or len(commits)])


def test_transaction_runs_start_inside_a_run_at_after_seq(tmp_path):
    from mmsb_jax.store.format import StackedRun

    commits = [[mm.Delta.full("u", np.full(7, s, np.uint8), "add")] for s in range(1, 21)]
    with TLog.open(tmp_path / "log", SCHEMA, sync="never") as log:
        for s, ds in enumerate(commits, 1):
            log.append(s, ds)
        items = list(log.transaction_runs(after_seq=7, to_seq=18))
    # one run decoded from seq 1, its first 7 transactions skipped, cut at to_seq
    assert len(items) == 1 and isinstance(items[0], StackedRun)
    assert (items[0].first_seq, items[0].count) == (8, 11)
    assert items[0].deltas[0].values[:, 0].tolist() == list(range(8, 19))
    states = live_run(commits)
    out = replay(states[7], tmp_path / "log", after_seq=7, to_seq=18)
    assert_states_identical(out, states[18])


def test_replay_from_a_log_refuses_a_bad_stacked_run_before_applying_it(tmp_path):
    def t(row: int) -> list[mm.Delta]:
        return [mm.Delta.rows("i", np.array([row], np.int32), np.array([7], np.int32), "add")]

    with TLog.open(tmp_path / "log", SCHEMA, sync="never") as log:
        for s, row in enumerate([0, 1, 0, 1, 4, 0], 1):  # seqs 2.. are read as one run
            log.append(s, t(row))
    small = mm.Schema([mm.PageSpec("f", (6, 3), "float32"), mm.PageSpec("i", (2,), "int32"),
                       mm.PageSpec("b", (4, 2), "bool"), mm.PageSpec("u", (7,), "uint8")])
    with pytest.raises(IndexOutOfRangeError):  # row 4 of a 2-row page, in the run
        replay(mm.init_state(small), tmp_path / "log")
    out = replay(mm.init_state(small), tmp_path / "log", to_seq=4)  # before it: fine
    assert np.asarray(out.pages["i"]).tolist() == [14, 14] and int(out.epochs["i"]) == 4
