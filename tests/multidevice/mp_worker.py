"""One process of a multi-process mmsb-jax run (launched by ``test_multiprocess.py``).

Usage: ``python mp_worker.py MODE COORDINATOR PROCESS_ID NUM_PROCESSES LOCAL_DEVICES DIR``

Every process runs the same code: ``distributed.open_bus`` gives process 0 the writing
``mm.Bus`` and the others a ``Follower`` (same ``commit``/``checkpoint``, never writes the log);
pages live on one mesh over every process's devices.

* ``live``: a new directory; every process commits the same transactions in the same order;
  after commit ``CHECKPOINT_AT`` all join the collective Orbax save, then a few more commits
  follow (a log suffix for recovery to replay).
* ``restore``: a fresh set of processes reopens ``DIR``: collective restore of the checkpoint onto
  the mesh + replay of the log suffix.

Each process prints ``RESULT {json}`` with the seq, its devices and a SHA-256 of every page's
*global* value (gathered from all processes), so the launcher can compare processes, phases and
an unsharded single-process reference.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

NUM_COMMITS = 7
CHECKPOINT_AT = 4


def schema():
    """The store's pages: a row-sharded float page, a 2-D-sharded int page, a replicated page."""
    import mmsb_jax as mm

    return mm.Schema([
        mm.PageSpec("w", (64, 8), "float32", sharding=("data", None)),
        mm.PageSpec("i", (64, 8), "int32", sharding=("data", "model")),
        mm.PageSpec("r", (16,), "uint8"),
    ])


def transactions(n: int = NUM_COMMITS) -> list[list]:
    """The same deterministic transactions in every process (row, masked and full deltas)."""
    import mmsb_jax as mm

    rng = np.random.default_rng(2024)
    out = []
    for t in range(n):
        idx = rng.integers(-1, 64, 16).astype(np.int32)
        deltas = [mm.Delta.rows("w", idx, rng.integers(-9, 10, (16, 8)).astype(np.float32),
                                "add" if t % 2 else "set"),
                  mm.Delta.rows("i", rng.integers(0, 64, 8).astype(np.int32),
                                rng.integers(0, 99, (8, 8)).astype(np.int32), "max")]
        if t % 3 == 2:
            deltas.append(mm.Delta.masked("i", rng.random((64, 8)) < 0.2,
                                          rng.integers(0, 7, (64, 8)).astype(np.int32), "or"))
            deltas.append(mm.Delta.full("r", rng.integers(0, 255, 16).astype(np.uint8)))
        out.append(deltas)
    return out


def checksums(state) -> dict[str, str]:
    """SHA-256 of each page's global value and epoch (gathered from every process)."""
    from mmsb_jax.runtime.distributed import gather

    out = {}
    for name, page in state.pages.items():
        value = gather(page)
        h = hashlib.sha256(value.tobytes())
        h.update(str(int(state.epochs[name])).encode())
        out[name] = h.hexdigest()
    return out


def _shardings(state) -> dict[str, str]:
    return {n: str(p.sharding.spec) for n, p in state.pages.items()}


def main(argv: list[str]) -> None:
    mode, coordinator, pid, nproc, ndev, directory = argv
    pid, nproc, ndev, directory = int(pid), int(nproc), int(ndev), Path(directory)

    from mmsb_jax.runtime import distributed

    distributed.initialize(coordinator, nproc, pid, local_device_count=ndev)

    import jax

    devices = jax.device_count()
    mesh = jax.make_mesh((devices // 2, 2), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    result = {"process": pid, "processes": jax.process_count(), "devices": devices,
              "local_devices": jax.local_device_count(),
              "coordinator": distributed.is_coordinator()}
    # The same code on every process: process 0 gets the writing Bus, the others a Follower.
    bus = distributed.open_bus(directory, schema(), sync="always", mesh=mesh)
    result["role"] = type(bus).__name__
    if mode == "live":
        for seq, deltas in enumerate(transactions(), start=1):
            assert bus.commit(deltas).seq == seq
            if seq == CHECKPOINT_AT:
                assert bus.checkpoint() == CHECKPOINT_AT
    elif mode != "restore":
        raise SystemExit(f"unknown mode {mode!r}")
    state, seq = bus.state, bus.seq
    bus.close()
    result.update(seq=seq, shardings=_shardings(state), checksums=checksums(state))
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
