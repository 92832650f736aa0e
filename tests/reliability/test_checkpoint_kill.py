"""A checkpoint killed mid-save is ignored; the previous checkpoint restores.

A child process commits, saves a durable checkpoint, commits more and starts a second (large)
checkpoint; the parent SIGKILLs it as soon as Orbax's temporary directory appears. Reopening
must list only the complete checkpoint, recover the full state from it plus the log, restore
it for time travel, and accept a new checkpoint at the same seq despite the leftover.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

import mmsb_jax as mm
from mmsb_jax.runtime import Bus

SCHEMA = mm.Schema([mm.PageSpec("big", (2048, 1024), "float32"),
                    mm.PageSpec("n", (4,), "int32")])

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import mmsb_jax as mm
    from mmsb_jax.runtime import Bus
    SCHEMA = mm.Schema([mm.PageSpec("big", (2048, 1024), "float32"),
                        mm.PageSpec("n", (4,), "int32")])
    bus = Bus.open(sys.argv[1], SCHEMA, sync="always")
    def txn(seq):
        return [mm.Delta.full("big", np.full((2048, 1024), seq, np.float32), op="add"),
                mm.Delta.rows("n", np.array([seq % 4], np.int32), np.array([seq], np.int32))]
    for seq in (1, 2, 3):
        bus.commit(txn(seq))
    bus.checkpoint()
    for seq in (4, 5):
        bus.commit(txn(seq))
    print("saving", flush=True)
    bus.checkpoint()
    print("saved", flush=True)
""")


def _expected(seq: int) -> tuple[float, list[int]]:
    n = [0, 0, 0, 0]
    for s in range(1, seq + 1):
        n[s % 4] = s
    return float(sum(range(1, seq + 1))), n


def _tmp_dirs(ckpt_dir) -> list[str]:
    try:
        return [p for p in os.listdir(ckpt_dir) if "orbax-checkpoint-tmp" in p]
    except FileNotFoundError:
        return []


def test_checkpoint_killed_mid_save_is_ignored(tmp_path):
    d = tmp_path / "bus"
    for _attempt in range(5):  # the kill has to land while the save is running
        if d.exists():
            import shutil

            shutil.rmtree(d)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(d)], stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout.readline().strip() == "saving"
            deadline = time.monotonic() + 120
            while not _tmp_dirs(d / "checkpoints") and child.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.0005)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            rest = child.stdout.read()
            child.stdout.close()
        if "saved" not in rest and _tmp_dirs(d / "checkpoints"):
            break
    else:
        raise AssertionError("could not kill the child during a checkpoint save")
    leftovers = _tmp_dirs(d / "checkpoints")
    assert leftovers
    with Bus.open(d) as bus:
        assert bus.checkpoints.steps() == [3]  # the interrupted save is not listed
        assert bus.seq == 5
        total, n = _expected(5)
        np.testing.assert_array_equal(bus.read("big"), np.full((2048, 1024), total, np.float32))
        assert bus.read("n").tolist() == n
        at3 = bus.at(3)  # restores the surviving checkpoint
        assert float(at3.pages["big"][0, 0]) == _expected(3)[0]
        assert bus.checkpoint() == 5  # a new checkpoint at the same seq is not blocked
        assert bus.checkpoints.steps() == [3, 5]
    with Bus.open(d) as bus:
        state, _ = bus.checkpoints.restore(5, bus.schema)
        np.testing.assert_array_equal(np.asarray(state.pages["n"]), np.array(n, np.int32))
