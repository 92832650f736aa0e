"""Load: 8 threads committing concurrently while readers read and checkpoints run.

Each committing thread records the seq ``commit`` returned for each of its transactions; the
transactions do not commute (a ``set`` on shared rows), so the final state pins down the serial
order. Checks: the seqs are exactly ``1..N`` and increase within each thread; subscribers see
commits in seq order; every State a reader sees is internally consistent (a counter page equals
its own epoch); the live state equals the in-memory replay of the recorded serial order and the
replay of the log from seq 0; every checkpoint restores to the replayed state at its seq; every
thread finishes (no deadlock).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.runtime import Bus, state_at
from mmsb_jax.store.replay import apply_transaction

SCHEMA = mm.Schema([mm.PageSpec("owner", (64,), "int32"), mm.PageSpec("n", (1,), "int32"),
                    mm.PageSpec("acc", (8,), "float32")])
WRITERS = 8
JOIN_TIMEOUT_S = 600.0


def txn(thread: int, i: int) -> list[mm.Delta]:
    """Transaction ``i`` of writer ``thread``: order-sensitive (set on shared rows)."""
    slots = np.array([(thread * 131 + i) % 64, (i * 7) % 64], np.int32)
    return [mm.Delta.rows("owner", slots, np.array([thread * 100_000 + i] * 2, np.int32)),
            mm.Delta.rows("n", np.array([0], np.int32), np.array([1], np.int32), op="add"),
            mm.Delta.full("acc", np.full((8,), 1.0 + thread / 64, np.float32), op="mul")
            if i % 2 else
            mm.Delta.full("acc", np.full((8,), thread - 3.5, np.float32), op="add")]


def run_load(tmp_path, commits: int) -> dict[str, int]:
    per_thread = commits // WRITERS
    total = per_thread * WRITERS
    bus = Bus.open(tmp_path / "bus", SCHEMA, sync="batch", keep_checkpoints=100)
    seqs: list[list[int]] = [[] for _ in range(WRITERS)]
    notified: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()
    reads = [0]
    checkpoints: list[int] = []
    bus.subscribe(None, lambda info, state: notified.append(info.seq))

    def writer(t: int) -> None:
        try:
            for i in range(per_thread):
                seqs[t].append(bus.commit(txn(t, i)).seq)
        except BaseException as e:  # pragma: no cover - reported by the assertions below
            errors.append(e)

    def reader() -> None:
        try:
            while not done.is_set():
                state = bus.state
                n = int(np.asarray(state.pages["n"])[0])
                assert n == int(state.epochs["n"]), "a reader saw a half-applied commit"
                assert bus.read("owner").shape == (64,)
                reads[0] += 1
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    def checkpointer() -> None:
        try:
            while not done.is_set() and len(checkpoints) < 5:
                checkpoints.append(bus.checkpoint())
                done.wait(0.05)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = ([threading.Thread(target=writer, args=(t,)) for t in range(WRITERS)]
               + [threading.Thread(target=reader) for _ in range(2)]
               + [threading.Thread(target=checkpointer)])
    for th in threads:
        th.start()
    for th in threads[:WRITERS]:
        th.join(JOIN_TIMEOUT_S)
    done.set()
    for th in threads[WRITERS:]:
        th.join(JOIN_TIMEOUT_S)
    assert not any(th.is_alive() for th in threads), "deadlock: a thread did not finish"
    assert not errors, errors

    # serial order: seqs are 1..N, increasing within each thread, notified in order
    flat = sorted(s for ss in seqs for s in ss)
    assert flat == list(range(1, total + 1))
    assert all(ss == sorted(ss) for ss in seqs)
    assert notified == list(range(1, total + 1))

    # replay of the recorded serial order == live == replay of the log
    order = {s: (t, i) for t, ss in enumerate(seqs) for i, s in enumerate(ss)}
    state = mm.init_state(SCHEMA)
    by_seq = {0: state}
    ck = set(checkpoints)
    for s in range(1, total + 1):
        state = apply_transaction(state, txn(*order[s]))
        if s in ck:
            by_seq[s] = state
    live = bus.state
    for name in SCHEMA.names:
        np.testing.assert_array_equal(np.asarray(live.pages[name]), np.asarray(state.pages[name]))
    assert int(live.pages["n"][0]) == total
    for s in checkpoints:
        restored, _ = bus.checkpoints.restore(s, SCHEMA)
        for name in SCHEMA.names:
            np.testing.assert_array_equal(np.asarray(restored.pages[name]),
                                          np.asarray(by_seq[s].pages[name]))
    bus.close()
    replayed, reached = state_at(tmp_path / "bus", use_checkpoints=False)
    assert reached == total
    for name in SCHEMA.names:
        np.testing.assert_array_equal(np.asarray(replayed.pages[name]),
                                      np.asarray(state.pages[name]))
    return {"commits": total, "reads": reads[0], "checkpoints": len(checkpoints)}


def test_eight_writers_readers_and_checkpoints(tmp_path):
    stats = run_load(tmp_path, commits=800)
    assert stats["checkpoints"] >= 1 and stats["reads"] > 0


@pytest.mark.slow
def test_eight_writers_10k_commits(tmp_path):
    stats = run_load(tmp_path, commits=10_000)
    print(f"\nRELIABILITY load {stats}")
