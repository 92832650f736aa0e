"""A fork server for the SIGKILL tests: imports mmsb_jax once, forks one writer per request.

Starting a Python process that imports JAX costs seconds; forking a process that has imported
(but not initialised) JAX costs milliseconds, which is what makes hundreds of kills affordable.
JAX's backend is only initialised in the forked children, never here, so forking is safe.

Protocol on stdin/stdout, one line each:
  ``run DIR POLICY ACKFILE`` -> ``pid N``: the child opens a Bus in DIR with sync=POLICY, writes
  ``open SEQ`` to ACKFILE, then commits ``txn(seq)`` forever, appending each acknowledged seq
  to ACKFILE (one ``os.write`` per line: it reaches the page cache, so it survives SIGKILL).
  ``quit``: exit.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workload
import orbax.checkpoint  # noqa: F401  (imported lazily by the store; slow, so do it once)

from mmsb_jax.runtime import Bus


def child(directory: str, policy: str, ackfile: str) -> None:
    fd = os.open(ackfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        bus = Bus.open(directory, _workload.SCHEMA, sync=policy, segment_bytes=4096,
                       checkpoint_every=13, batch_commits=4, batch_interval_ms=2.0)
        os.write(fd, f"open {bus.seq}\n".encode())
        seq = bus.seq
        while True:
            seq += 1
            info = bus.commit(_workload.txn(seq))
            if info.seq != seq:
                raise AssertionError(f"commit got seq {info.seq}, expected {seq}")
            os.write(fd, f"{seq}\n".encode())
    except BaseException:
        os.write(fd, ("error " + traceback.format_exc().replace("\n", " | ") + "\n").encode())
    finally:
        os._exit(3)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            return
        if parts[0] == "run":
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                child(parts[1], parts[2], parts[3])
            print(f"pid {pid}", flush=True)


if __name__ == "__main__":
    main()
