"""Bus.commit_many: atomic refusal, seqs, one log write, time travel, subscribers, replay, crashes.

Every test compares against the same transactions committed one by one with ``Bus.commit``
(the reference the batch must equal bit for bit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.errors import GraphError, IndexOutOfRangeError, StoreError, UnknownPageError
from mmsb_jax.store.format import TxnLayout, encode_transaction
from mmsb_jax.store.tlog import segment_paths

SCHEMA = mm.Schema([mm.PageSpec("x", (16,), "int32"), mm.PageSpec("f", (8, 4), "float32"),
                    mm.PageSpec("m", (6,), "bool")])


def rows_add(seq: int) -> list[mm.Delta]:
    """A 16-row add; every transaction of this kind has one structure (they stack)."""
    rng = np.random.default_rng(seq)
    return [mm.Delta.rows("x", rng.integers(-1, 16, 4).astype(np.int32),
                          rng.integers(0, 9, 4).astype(np.int32), op="add"),
            mm.Delta.rows("f", rng.integers(-1, 8, 3).astype(np.int32),
                          rng.standard_normal((3, 4)).astype(np.float32), op="add")]


def mixed(seq: int) -> list[mm.Delta]:
    """Runs of several structures, including an empty transaction."""
    if seq % 7 == 0:
        return []
    if seq % 3 == 0:
        return [mm.Delta.masked("m", np.arange(6) % (seq % 4 + 1) == 0, np.ones(6, bool), "or")]
    return rows_add(seq)


def states_equal(a: mm.State, b: mm.State) -> None:
    assert tuple(a.pages) == tuple(b.pages)
    for n in a.pages:
        x, y = np.asarray(a.pages[n]), np.asarray(b.pages[n])
        np.testing.assert_array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8),
                                      err_msg=n)
        assert int(a.epochs[n]) == int(b.epochs[n]), n


def one_by_one(tmp_path, txns, **kw) -> tuple[list[mm.CommitInfo], list[mm.State]]:
    with mm.Bus.open(tmp_path / "ref", SCHEMA if "graph" not in kw else None, sync="never",
                     **kw) as bus:
        infos, states = [], [bus.state]
        for t in txns:
            infos.append(bus.commit(t))
            states.append(bus.state)
    return infos, states


def test_batch_equals_one_by_one_commits(tmp_path):
    txns = [mixed(s) for s in range(1, 60)]
    ref_infos, ref_states = one_by_one(tmp_path, txns)
    with mm.Bus.open(tmp_path / "b", SCHEMA, sync="never") as bus:
        infos = bus.commit_many(txns[:25])
        infos += bus.commit_many(txns[25:])
        assert [i.seq for i in infos] == list(range(1, 60)) and bus.seq == 59
        assert [i.pages for i in infos] == [i.pages for i in ref_infos]
        assert [i.bytes_logged for i in infos] == [i.bytes_logged for i in ref_infos]
        states_equal(bus.state, ref_states[-1])
        for k in (0, 7, 24, 25, 40, 58):  # time travel lands inside the batches
            states_equal(bus.at(k), ref_states[k])
    with mm.Bus.open(tmp_path / "b") as bus:  # replay of the log = the live state
        states_equal(bus.state, ref_states[-1])


def test_log_bytes_equal_those_of_single_commits(tmp_path):
    txns = [rows_add(s) for s in range(1, 40)]
    one_by_one(tmp_path, txns)
    with mm.Bus.open(tmp_path / "b", SCHEMA, sync="never") as bus:
        bus.commit_many(txns)
    a, b = segment_paths(tmp_path / "ref" / "log"), segment_paths(tmp_path / "b" / "log")
    # timestamps and salts differ; compare what the log decodes to, transaction by transaction
    with mm.TLog.open(a[0].parent, readonly=True) as la, mm.TLog.open(b[0].parent,
                                                                       readonly=True) as lb:
        ta, tb = list(la.transactions()), list(lb.transactions())
    assert [t.seq for t in ta] == [t.seq for t in tb]
    for x, y in zip(ta, tb, strict=True):
        for d, e in zip(x.deltas, y.deltas, strict=True):
            np.testing.assert_array_equal(np.asarray(d.values), np.asarray(e.values))
            np.testing.assert_array_equal(np.asarray(d.indices), np.asarray(e.indices))


def test_encode_run_is_byte_identical_to_encode_transaction():
    rng = np.random.default_rng(3)
    txns = [[mm.Delta.rows("a", rng.integers(-1, 9, 5).astype(np.int32),
                           rng.random((5, 3)).astype(np.float32), "max"),
             mm.Delta.masked("b", rng.random(13) > 0.5, rng.integers(0, 9, 13).astype(np.uint8)),
             mm.Delta.full("c", rng.random((2, 2)).astype(np.float32), "add")] for _ in range(9)]
    from mmsb_jax.core.transaction import stack_transactions

    layout = TxnLayout(txns[0], ("d1", "derived_2"))
    want = [encode_transaction(99, 5 + i, t, ("d1", "derived_2"), 42) for i, t in enumerate(txns)]
    assert [layout.encode(99, 5 + i, t, 42) for i, t in enumerate(txns)] == want
    assert layout.encode_run(99, 5, stack_transactions(txns), 42) == b"".join(want)
    assert layout.nbytes == len(want[0])


def test_a_bad_transaction_refuses_the_whole_call(tmp_path):
    with mm.Bus.open(tmp_path, SCHEMA, sync="always") as bus:
        bus.commit(rows_add(1))
        before = segment_paths(tmp_path / "log")[0].read_bytes()
        state = bus.state
        bad = [mm.Delta.rows("x", np.array([3, 16], np.int32), np.array([1, 1], np.int32))]
        with pytest.raises(IndexOutOfRangeError) as e:
            bus.commit_many([rows_add(2), rows_add(3), bad, rows_add(4)])
        assert e.value.transaction_index == 2
        assert any("transaction 2" in n for n in e.value.__notes__)
        with pytest.raises(UnknownPageError) as e:
            bus.commit_many([rows_add(2), mm.Delta.full("nope", np.zeros(2, np.float32))])
        assert e.value.transaction_index == 1
        with pytest.raises(TypeError):
            bus.commit_many([rows_add(2), ["not a delta"]])
        assert segment_paths(tmp_path / "log")[0].read_bytes() == before
        assert bus.seq == 1 and bus.state is state
        # one transaction takes commit's path; its errors still carry the position
        with pytest.raises(IndexOutOfRangeError) as e:
            bus.commit_many([bad])
        assert e.value.transaction_index == 0
        with pytest.raises(TypeError):
            bus.commit_many([["not a delta"]])
        assert segment_paths(tmp_path / "log")[0].read_bytes() == before
        assert bus.seq == 1 and bus.state is state
        assert bus.metrics()["commit_failures"] == 5
        assert bus.commit_many([]) == []
        assert [i.seq for i in bus.commit_many([rows_add(2), rows_add(3)])] == [2, 3]
        [one] = bus.commit_many([rows_add(4)])
        assert one.seq == 4 and one.durable and bus.seq == 4


def test_one_write_and_one_fsync_under_always(tmp_path, monkeypatch):
    from mmsb_jax.store import tlog as tlog_mod

    writes = []
    real = tlog_mod._write_all
    monkeypatch.setattr(tlog_mod, "_write_all", lambda fd, data: writes.append(len(data))
                        or real(fd, data))
    with mm.Bus.open(tmp_path, SCHEMA, sync="always") as bus:
        fsyncs = bus.metrics()["fsyncs"]
        writes.clear()  # opening wrote the segment header
        infos = bus.commit_many([rows_add(s) for s in range(1, 101)])
        assert len(writes) == 1 and writes[0] == sum(i.bytes_logged for i in infos)
        assert bus.metrics()["fsyncs"] == fsyncs + 1
        assert all(i.durable for i in infos) and bus.metrics()["commits"] == 100


def test_failed_apply_removes_the_whole_batch(tmp_path, monkeypatch):
    with mm.Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        bus.commit(rows_add(1))
        before = segment_paths(tmp_path / "log")[0].read_bytes()

        def boom(*a, **k):
            raise RuntimeError("device lost")

        monkeypatch.setattr(bus, "_apply_scanned", boom)
        with pytest.raises(RuntimeError, match="device lost"):
            bus.commit_many([rows_add(s) for s in range(2, 9)])
        assert segment_paths(tmp_path / "log")[0].read_bytes() == before and bus.seq == 1
        monkeypatch.undo()
        bus.commit_many([rows_add(s) for s in range(2, 9)])
        assert bus.log.last_seq == 8


def test_subscribers_see_every_transaction_in_order(tmp_path):
    txns = [mixed(s) for s in range(1, 30)]
    _, ref_states = one_by_one(tmp_path, txns)
    seen_any, seen_m = [], []
    with mm.Bus.open(tmp_path / "b", SCHEMA, sync="never") as bus:
        bus.subscribe(None, lambda info, st: seen_any.append(info.seq))

        def check_m(info, st):
            seen_m.append(info.seq)
            states_equal(st, ref_states[info.seq])  # the State right after this transaction

        bus.subscribe("m", check_m)
        bus.commit_many(txns)
    assert seen_any == list(range(1, 30))
    assert seen_m == [s for s in range(1, 30) if s % 3 == 0 and s % 7]


def graph() -> mm.Graph:
    g = mm.Graph(SCHEMA)
    g = g.derive("xsum", ("x",), lambda x: jnp.sum(x)[None])
    return g.derive("big", ("xsum",), lambda s: (s > 40).astype(jnp.int32))  # cut-off


def test_with_a_graph_derived_pages_and_reports_match(tmp_path):
    txns = [rows_add(s)[:1] for s in range(1, 40)] + [mixed(s) for s in range(1, 20)]
    ref_infos, ref_states = one_by_one(tmp_path, txns, graph=graph())
    assert any(i.derived == ("xsum", "big") for i in ref_infos)
    assert any(i.derived == ("xsum",) for i in ref_infos)  # "big" cut off
    with mm.Bus.open(tmp_path / "b", graph=graph(), sync="never") as bus:
        infos = bus.commit_many(txns)
        assert [i.derived for i in infos] == [i.derived for i in ref_infos]
        states_equal(bus.state, ref_states[-1])
        states_equal(bus.at(20), ref_states[20])
    with mm.Bus.open(tmp_path / "b", graph=graph()) as bus:
        states_equal(bus.state, ref_states[-1])


def test_derived_pages_are_refused(tmp_path):
    with mm.Bus.open(tmp_path, graph=graph(), sync="never") as bus:
        with pytest.raises(GraphError) as e:
            bus.commit_many([rows_add(1), [mm.Delta.full("xsum", np.zeros(1, np.int32))]])
        assert e.value.transaction_index == 1 and bus.seq == 0


def test_closed_bus_refuses(tmp_path):
    bus = mm.Bus.open(tmp_path, SCHEMA)
    bus.close()
    with pytest.raises(StoreError, match="closed"):
        bus.commit_many([rows_add(1)])


def test_checkpoint_every_crossed_by_a_batch(tmp_path):
    with mm.Bus.open(tmp_path, SCHEMA, sync="never", checkpoint_every=10) as bus:
        bus.commit_many([rows_add(s) for s in range(1, 26)])
        bus.checkpoints.wait()
        assert bus.checkpoints.steps()[-1] == 25


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import mmsb_jax as mm
    SCHEMA = mm.Schema([mm.PageSpec("x", (16,), "int32"), mm.PageSpec("f", (8, 4), "float32"),
                        mm.PageSpec("m", (6,), "bool")])
    def rows_add(seq):
        rng = np.random.default_rng(seq)
        return [mm.Delta.rows("x", rng.integers(-1, 16, 4).astype(np.int32),
                              rng.integers(0, 9, 4).astype(np.int32), op="add"),
                mm.Delta.rows("f", rng.integers(-1, 8, 3).astype(np.int32),
                              rng.standard_normal((3, 4)).astype(np.float32), op="add")]
    bus = mm.Bus.open(sys.argv[1], SCHEMA, sync="always", segment_bytes=1 << 16)
    seq = bus.seq
    print("open", seq, flush=True)
    while True:
        n = 1 + (seq * 7) % 50
        infos = bus.commit_many([rows_add(s) for s in range(seq + 1, seq + n + 1)])
        seq = infos[-1].seq
        print(seq, flush=True)
""")


def test_sigkill_keeps_acknowledged_batches_whole(tmp_path):
    """kill -9 between and inside batches: acknowledged batches survive, reopen hits a boundary."""
    directory = tmp_path / "bus"
    acked = 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cache = [mm.init_state(SCHEMA)]
    from mmsb_jax.core.transaction import apply_transaction

    for kill in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env=env)
        try:
            first = child.stdout.readline().split()
            assert first and first[0] == "open" and int(first[1]) >= acked
            for _ in range(3 + 4 * kill):
                line = child.stdout.readline()
                if not line:
                    break
                acked = max(acked, int(line))
            child.send_signal(signal.SIGKILL)
            for line in child.stdout.read().split():
                acked = max(acked, int(line))
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        with mm.Bus.open(directory) as bus:
            assert bus.seq >= acked
            while len(cache) <= bus.seq:
                cache.append(apply_transaction(cache[-1], rows_add(len(cache))))
            states_equal(bus.state, cache[bus.seq])
            acked = bus.seq
    assert acked > 0


def test_torn_batch_recovers_to_a_transaction_boundary(tmp_path):
    """A batch cut anywhere in its bytes reopens at the last whole transaction."""
    with mm.Bus.open(tmp_path / "b", SCHEMA, sync="never") as bus:
        bus.commit(rows_add(1))
        infos = bus.commit_many([rows_add(s) for s in range(2, 8)])
    seg = segment_paths(tmp_path / "b" / "log")[0]
    full = seg.read_bytes()
    per = infos[0].bytes_logged
    start = len(full) - per * len(infos)
    for cut in (start + 1, start + per - 1, start + per, start + 3 * per + 17, len(full) - 1):
        d = tmp_path / f"cut{cut}"
        (d / "log").mkdir(parents=True)
        (d / "log" / seg.name).write_bytes(full[:cut])
        with mm.Bus.open(d) as bus:
            assert bus.seq == 1 + (cut - start) // per


def test_donating_bus_gives_the_same_states_and_deletes_old_pages(tmp_path):
    txns = [mixed(s) for s in range(1, 40)]
    _, ref_states = one_by_one(tmp_path, txns)
    with mm.Bus.open(tmp_path / "d", SCHEMA, sync="never", donate=True) as bus:
        for t in txns[:10]:
            bus.commit(t)
        old = bus.state
        bus.commit_many(txns[10:])
        states_equal(bus.state, ref_states[-1])
        assert old.pages["x"].is_deleted()  # donated to a later commit
        states_equal(bus.at(10), ref_states[10])
        seen = []
        bus.subscribe("x", lambda info, st: seen.append(np.asarray(st.pages["x"]).copy()))
        bus.commit_many([rows_add(100), rows_add(101)])  # stepwise: callbacks see live states
        assert len(seen) == 2 and not np.array_equal(seen[0], seen[1])


def test_large_transactions_are_applied_one_by_one(tmp_path):
    """Above STACK_MAX_TXN_BYTES a run is not stacked; results and log stay the same."""
    from mmsb_jax.runtime import _pipeline

    schema = mm.Schema([mm.PageSpec("big", (40_000,), "float32")])
    rng = np.random.default_rng(0)
    txns = [mm.Delta.full("big", rng.standard_normal(40_000).astype(np.float32), "add")
            for _ in range(3)]
    assert 40_000 * 4 > _pipeline.STACK_MAX_TXN_BYTES
    with mm.Bus.open(tmp_path / "a", schema, sync="never") as a, \
            mm.Bus.open(tmp_path / "b", schema, sync="never") as b:
        infos = a.commit_many(txns)
        for t in txns:
            b.commit(t)
        states_equal(a.state, b.state)
        assert [i.seq for i in infos] == [1, 2, 3]
        states_equal(a.at(2), b.at(2))
