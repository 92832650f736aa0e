"""Repeated SIGKILL of a writer in a commit loop, under every sync policy.

Builds on ``tests/runtime/test_crash.py`` (two kills under ``sync="always"``) with a fork
server (``_zygote.py``) so that hundreds of kills are affordable, random kill points (a random
number of acknowledged commits, then a random sub-millisecond delay, so kills land inside
writes, fsyncs, segment rolls and asynchronous checkpoints), and all three sync policies.

What must hold after every kill (a process crash; the OS keeps the page cache):
  * reopening always works (stale lock, torn tail, interrupted checkpoint are all handled);
  * the reopened state is bit-exactly the state after a prefix of the commits;
  * under ``always`` no acknowledged commit is lost. (Under ``batch``/``never`` the process
    crash loses nothing either, because the data is in the page cache; what an OS crash may
    lose there is tested with the simulated page cache in ``test_faults.py``.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmsb_jax.runtime import Bus

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _workload

ZYGOTE = Path(__file__).with_name("_zygote.py")


class Zygote:
    """Handle on the fork server process."""

    def __init__(self, cache_dir: Path) -> None:
        # a persistent compilation cache shared by the children: each compiles once, not per kill
        env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def spawn(self, directory: Path, policy: str, ackfile: Path) -> int:
        self.proc.stdin.write(f"run {directory} {policy} {ackfile}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "pid", f"fork server answered {line}"
        return int(line[1])

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()


def _read_acks(ackfile: Path) -> tuple[int | None, int]:
    """``(seq reported at open, highest acknowledged seq)`` from a child's ack file."""
    opened, acked = None, 0
    if not ackfile.exists():
        return opened, acked
    for line in ackfile.read_text().splitlines():
        if line.startswith("error"):
            raise AssertionError(f"writer failed: {line}")
        if line.startswith("open"):
            opened = int(line.split()[1])
        elif line.strip():
            acked = int(line)
    return opened, acked


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not die")


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("jax-cache"))
    yield z
    z.close()


def run_kills(zygote: Zygote, tmp_path: Path, policy: str, kills: int, seed: int
              ) -> dict[str, int]:
    """Kill a writer ``kills`` times and check each reopen; returns counters for the report."""
    rnd = random.Random(seed)
    directory = tmp_path / f"bus-{policy}"
    expected = _workload.Expected()
    stats = {"kills": 0, "acked": 0, "reopened": 0, "torn_tails_cut": 0}
    acked = 0
    for i in range(kills):
        ackfile = tmp_path / f"ack-{policy}-{i}"
        pid = zygote.spawn(directory, policy, ackfile)
        target = rnd.randint(1, 25)
        deadline = time.monotonic() + 120
        try:
            while True:
                opened, last = _read_acks(ackfile)
                if opened is not None and last >= opened + target:
                    break
                assert time.monotonic() < deadline, "writer made no progress"
                time.sleep(0.0005)
            time.sleep(rnd.uniform(0, 0.003))
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid)
        opened, last = _read_acks(ackfile)
        assert opened is not None and opened >= acked  # reopening kept every ack so far
        acked = max(acked, last)
        stats["kills"] += 1
        with Bus.open(directory) as bus:
            stats["reopened"] += 1
            stats["torn_tails_cut"] += int(bus.metrics()["torn_tail_bytes_cut"] > 0)
            assert bus.seq >= acked, (policy, bus.seq, acked)
            _workload.assert_state_is(bus.state, expected(bus.seq))
            if i % 4 == 0:  # time travel through history written by earlier writers
                k = rnd.randint(0, bus.seq)
                _workload.assert_state_is(bus.at(k), expected(k))
            acked = bus.seq
        stats["acked"] = acked
    assert acked > 0
    return stats


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_sigkill_each_policy_reopens_to_a_prefix(zygote, tmp_path, policy):
    stats = run_kills(zygote, tmp_path, policy, kills=3, seed=11)
    assert stats["kills"] == stats["reopened"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_sigkill_many_times_each_policy(zygote, tmp_path, policy):
    stats = run_kills(zygote, tmp_path, policy, kills=70, seed=12)
    print(f"\nRELIABILITY sigkill policy={policy} {stats}")
    assert stats["kills"] == stats["reopened"] == 70
