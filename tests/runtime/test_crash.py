"""kill -9 in a commit loop under sync="always": no acknowledged commit is lost, reopening works.

A child process commits deterministic transactions and prints each seq once ``commit`` returned
(the acknowledgement). The parent SIGKILLs it at a random moment, reopens the directory and
checks that every acknowledged seq is there and that the state is exactly the state of that
many commits. The log keeps growing across kills (segments roll, checkpoints are taken
asynchronously and may be interrupted).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.runtime import Bus
from mmsb_jax.store.replay import apply_transaction

SCHEMA = mm.Schema([mm.PageSpec("x", (16,), "int32"), mm.PageSpec("f", (8, 4), "float32")])

TXN_SRC = """
def txn(seq):
    ds = [mm.Delta.rows("x", np.array([seq % 16, (seq * 7) % 16], np.int32),
                        np.array([seq, 1], np.int32), op="add")]
    if seq % 3:
        ds.append(mm.Delta.full("f", np.full((8, 4), seq * 0.5, np.float32), op="add"))
    else:
        ds.append(mm.Delta.masked("f", np.eye(8, 4, dtype=bool),
                                  np.full((8, 4), -seq, np.float32), op="mul"))
    return ds
"""

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import mmsb_jax as mm
    from mmsb_jax.runtime import Bus
    SCHEMA = mm.Schema([mm.PageSpec("x", (16,), "int32"), mm.PageSpec("f", (8, 4), "float32")])
    """) + TXN_SRC + textwrap.dedent("""
    bus = Bus.open(sys.argv[1], SCHEMA, sync="always", segment_bytes=2048, checkpoint_every=9)
    print("open", bus.seq, flush=True)
    seq = bus.seq
    while True:
        seq += 1
        info = bus.commit(txn(seq))
        assert info.seq == seq and info.durable
        print(seq, flush=True)
    """)

namespace: dict = {"mm": mm, "np": np}
exec(TXN_SRC, namespace)
txn = namespace["txn"]


def expected_states(n: int, cache: list[mm.State]) -> mm.State:
    while len(cache) <= n:
        cache.append(apply_transaction(cache[-1], txn(len(cache))))
    return cache[n]


def run_kills(tmp_path, kills: int, seed: int) -> None:
    rnd = random.Random(seed)
    directory = tmp_path / "bus"
    cache = [mm.init_state(SCHEMA)]
    acked = 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env=env)
        try:
            first = child.stdout.readline().split()
            assert first and first[0] == "open", "child did not start"
            assert int(first[1]) >= acked  # reopening kept every acknowledged commit
            target = rnd.randint(3, 40)
            for _ in range(target):
                line = child.stdout.readline()
                if not line:
                    break
                acked = max(acked, int(line))
            child.send_signal(signal.SIGKILL)
            # anything the child printed before dying was acknowledged too
            rest = child.stdout.read()
            for line in rest.split():
                acked = max(acked, int(line))
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        with Bus.open(directory) as bus:  # reopening always works
            assert bus.seq >= acked, (bus.seq, acked)
            want = expected_states(bus.seq, cache)
            for name in SCHEMA.names:
                np.testing.assert_array_equal(bus.read(name), np.asarray(want.pages[name]))
                assert int(bus.state.epochs[name]) == int(want.epochs[name])
            # time travel into the history written by earlier children
            k = rnd.randint(0, bus.seq)
            np.testing.assert_array_equal(np.asarray(bus.at(k).pages["f"]),
                                          np.asarray(expected_states(k, cache).pages["f"]))
            acked = bus.seq
    assert acked > 0


def test_sigkill_under_sync_always_loses_no_acknowledged_commit(tmp_path):
    run_kills(tmp_path, kills=2, seed=0)


@pytest.mark.slow
def test_sigkill_many_times(tmp_path):
    run_kills(tmp_path, kills=15, seed=1)
