"""Write-behind (``Bus.open(..., sync="never", write_behind=True)``): each commit's record is
written at the next commit. The log then lags the bus by one commit until flushed, replay and
time travel stay bit-exact, host buffers may be reused at once, a failed pending write is
reported and stops the bus, and a SIGKILL loses at most the last commit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax import apps
from mmsb_jax.errors import OptionError, StoreError
from mmsb_jax.runtime import Bus
from mmsb_jax.store import format as fmt
from mmsb_jax.store.replay import apply_transaction
from mmsb_jax.store.tlog import TLog, read_transactions, scan_log

SCHEMA = mm.Schema([mm.PageSpec("x", (8,), "int32"), mm.PageSpec("f", (4, 3), "float32")])

_double = jax.jit(lambda v: v * 2.0)


def txn(seq: int) -> list[mm.Delta]:
    """Deterministic transaction ``seq``: a host rows add and a device (jitted) full set."""
    f = _double(jnp.full((4, 3), float(seq), jnp.float32))
    return [mm.Delta.rows("x", np.array([seq % 8], np.int32), np.array([seq], np.int32), "add"),
            mm.Delta.full("f", f)]


def expected(n: int) -> mm.State:
    state = mm.init_state(SCHEMA)
    for seq in range(1, n + 1):
        state = apply_transaction(state, txn(seq))
    return state


def seqs_on_disk(directory) -> list[int]:
    return [t.seq for t in read_transactions(directory / "log")]


@pytest.mark.parametrize("kw", [dict(sync="batch"), dict(sync="always"),
                                dict(sync="never", donate=True)])
def test_write_behind_refuses_other_policies_and_donate(tmp_path, kw):
    with pytest.raises(OptionError, match="write_behind"):
        Bus.open(tmp_path / "b", SCHEMA, write_behind=True, **kw)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("kw", [dict(sync="batch"), dict(sync="never", readonly=True)])
def test_tlog_write_behind_needs_a_never_writer(tmp_path, kw):
    with pytest.raises(OptionError, match="write_behind"):
        TLog.open(tmp_path / "l", SCHEMA, write_behind=True, **kw)
    assert not (tmp_path / "l").exists()


def test_log_lags_one_commit_until_flushed(tmp_path):
    with Bus.open(tmp_path, SCHEMA, sync="never", write_behind=True) as bus:
        for seq in (1, 2, 3):
            assert bus.commit(txn(seq)).seq == seq
        assert bus.log.last_seq == 3
        assert bus.metrics()["write_behind"] and "write_behind=True" in repr(bus)
        assert seqs_on_disk(tmp_path) == [1, 2]  # another reader sees the written ones
        bus.sync()
        assert seqs_on_disk(tmp_path) == [1, 2, 3]
        bus.commit(txn(4))
        assert seqs_on_disk(tmp_path) == [1, 2, 3]
    assert seqs_on_disk(tmp_path) == [1, 2, 3, 4]  # close writes the pending commit
    with Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        assert bus.seq == 4
        chex.assert_trees_all_equal(bus.state, expected(4))


def test_time_travel_and_replay_are_bit_exact(tmp_path):
    live = [mm.init_state(SCHEMA)]
    with Bus.open(tmp_path, SCHEMA, sync="never", write_behind=True) as bus:
        for seq in range(1, 9):
            bus.commit(txn(seq))
            live.append(bus.state)
        for seq in range(9):  # at() reads the log: the pending commit is written first
            chex.assert_trees_all_equal(bus.at(seq), live[seq])
        assert [t.seq for t in bus.log.transactions()] == list(range(1, 9))
        bus.commit(txn(9))
        live.append(bus.state)
    chex.assert_trees_all_equal(live[9], expected(9))
    with Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        chex.assert_trees_all_equal(bus.state, live[9])


def test_segment_rolls_checkpoints_and_pruning_flush_the_pending_commit(tmp_path):
    with Bus.open(tmp_path, SCHEMA, sync="never", write_behind=True, segment_bytes=600,
                  checkpoint_every=5, keep_checkpoints=1, prune_log=True) as bus:
        for seq in range(1, 24):
            bus.commit(txn(seq))
        assert bus.checkpoint() == 23  # the log is flushed first, never behind a checkpoint
        assert bus.log.first_seq > 1  # segments rolled, and those under the checkpoint pruned
        bus.commit(txn(24))
    with Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        assert bus.seq == 24
        chex.assert_trees_all_equal(bus.state, expected(24))


def test_host_buffers_may_be_reused_after_commit(tmp_path):
    buf = np.arange(12, dtype=np.float32).reshape(4, 3)
    with Bus.open(tmp_path, SCHEMA, sync="never", write_behind=True) as bus:
        bus.commit(mm.Delta.full("f", buf))
        buf[:] = -1.0  # the pending record holds its own copy
    with Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        np.testing.assert_array_equal(bus.read("f"), np.arange(12).reshape(4, 3))


def test_a_failed_pending_write_is_reported_and_stops_the_bus(tmp_path):
    with Bus.open(tmp_path, SCHEMA, sync="never", write_behind=True) as bus:
        bus.commit(txn(1))
        doomed = _double(jnp.ones((4, 3), jnp.float32))
        bus.commit(mm.Delta.full("f", doomed))
        doomed.delete()  # the pending record of seq 2 can no longer be read
        with pytest.raises(StoreError, match="pending seq 2 failed"):
            bus.commit(txn(3))
        with pytest.raises(StoreError, match="write-behind of seq 2 failed"):
            bus.commit(txn(3))
    assert not scan_log(tmp_path / "log").cuts  # nothing half-written
    with Bus.open(tmp_path, SCHEMA, sync="never") as bus:
        assert bus.seq == 1  # seq 2 was lost, as the error said
        chex.assert_trees_all_equal(bus.state, expected(1))


def test_undo_of_a_pending_transaction_writes_nothing_and_flush_writes_it(tmp_path):
    first = [mm.Delta.full("f", np.ones((4, 3), np.float32))]
    second = [mm.Delta.full("f", np.full((4, 3), 5.0, np.float32))]
    layout = fmt.TxnLayout(first)
    with TLog.open(tmp_path, SCHEMA, sync="never", write_behind=True) as log:
        log.append(1, first, layout=layout)
        log.undo_last()
        assert log.last_seq == 0
        log.append(1, second, layout=layout)
        assert list(read_transactions(tmp_path)) == []
        log.flush()  # written now, without waiting for the next append
        (t,) = read_transactions(tmp_path)
    np.testing.assert_array_equal(t.deltas[0].values, second[0].values)


def test_commits_compile_once_and_stay_on_the_fast_path(tmp_path, monkeypatch):
    from jax._src import pjit

    with Bus.open(tmp_path, SCHEMA, sync="never", write_behind=True) as bus:
        for seq in (1, 2, 3):
            bus.commit(txn(seq))
        slow: list[int] = []
        real = pjit._run_python_pjit
        monkeypatch.setattr(pjit, "_run_python_pjit",
                            lambda *a, **k: slow.append(1) or real(*a, **k))
        for seq in range(4, 24):
            bus.commit(txn(seq))
        assert slow == []
        chex.assert_trees_all_equal(bus.state, expected(23))


def test_world_on_a_write_behind_bus_replays_bit_exactly(tmp_path):
    with apps.World.open(tmp_path / "w", 1e-3, capacity=32, max_radius=0.05, sync="never",
                         write_behind=True) as world:
        world.set_state(world.random_state(jax.random.key(1), 24, speed=2.0))
        world.step(6)
        live = world.state
        replayed = world.replay()
        for name in world.graph.schema.names:
            np.testing.assert_array_equal(np.asarray(replayed.pages[name]),
                                          np.asarray(live.pages[name]))


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import mmsb_jax as mm
    from mmsb_jax.runtime import Bus
    SCHEMA = mm.Schema([mm.PageSpec("x", (8,), "int32")])
    bus = Bus.open(sys.argv[1], SCHEMA, sync="never", write_behind=True)
    seq = 0
    while True:
        seq += 1
        bus.commit(mm.Delta.rows("x", np.array([seq % 8], np.int32),
                                 np.array([seq], np.int32), "add"))
        print(seq, flush=True)
    """)


def test_sigkill_loses_at_most_the_last_commit(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    acked = 0
    try:
        while acked < 40:
            line = child.stdout.readline()
            assert line, "child died"
            acked = int(line)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    with Bus.open(tmp_path, mm.Schema([mm.PageSpec("x", (8,), "int32")]), sync="never") as bus:
        assert acked - 1 <= bus.seq
        want = np.zeros(8, np.int32)
        for seq in range(1, bus.seq + 1):
            want[seq % 8] += seq
        np.testing.assert_array_equal(bus.read("x"), want)
