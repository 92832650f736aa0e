"""Two local processes (gloo on CPU) sharing one sharded bus directory, and the helpers.

``test_two_processes_*`` launches ``mp_worker.py`` twice per phase on 127.0.0.1 (a free port),
each process with 4 fake CPU devices (a global mesh of 8): a live phase that commits, checkpoints
(Orbax, multi-process) and commits again, then a fresh pair that recovers the directory. The
checksums every process prints must agree with each other, across phases, and with an unsharded
single-process run of the same transactions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.errors import OptionError, SchemaMismatchError, StoreError
from mmsb_jax.runtime import distributed

WORKER = Path(__file__).with_name("mp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mmsb_mp_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _launch(mode: str, directory: Path, nproc: int = 2, ndev: int = 4) -> list[dict]:
    port = distributed.free_port()
    env = distributed.cpu_device_flags(ndev)
    env["JAX_PLATFORMS"] = "cpu"
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), mode, f"127.0.0.1:{port}", str(pid), str(nproc),
         str(ndev), str(directory)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for pid in range(nproc)]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=120)
            outputs.append((p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for pid, (rc, out) in enumerate(outputs):
        assert rc == 0, f"process {pid} ({mode}) exited {rc}:\n{out[-4000:]}"
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert len(lines) == 1, out[-4000:]
        results.append(json.loads(lines[0][len("RESULT "):]))
    return results


def _reference_checksums() -> dict[str, str]:
    """The same transactions applied on one device, unsharded."""
    state = mm.init_state(worker.schema())
    for deltas in worker.transactions():
        state = mm.apply_batch(state, deltas)
    out = {}
    for name, page in state.pages.items():
        h = hashlib.sha256(np.asarray(page).tobytes())
        h.update(str(int(state.epochs[name])).encode())
        out[name] = h.hexdigest()
    return out


def test_two_processes_share_one_sharded_bus_and_recover_it(tmp_path):
    directory = tmp_path / "bus"
    live = _launch("live", directory)
    assert [r["role"] for r in live] == ["Bus", "Follower"]
    assert [r["coordinator"] for r in live] == [True, False]
    for r in live:
        assert (r["processes"], r["devices"], r["local_devices"]) == (2, 8, 4)
        assert r["seq"] == worker.NUM_COMMITS
        assert r["shardings"]["w"] == "P('data', None)"
        assert r["shardings"]["i"] == "P('data', 'model')"
    reference = _reference_checksums()
    assert live[0]["checksums"] == live[1]["checksums"] == reference
    # one log, written by process 0 only; one multi-process checkpoint at CHECKPOINT_AT
    assert len(list((directory / "log").glob("*.tlog"))) >= 1
    ck = directory / "checkpoints" / str(worker.CHECKPOINT_AT) / "pages"
    assert sorted(p.name for p in ck.glob("ocdbt.process_*")) == ["ocdbt.process_0",
                                                                 "ocdbt.process_1"]
    with mm.TLog.open(directory / "log", readonly=True) as tlog:
        assert tlog.last_seq == worker.NUM_COMMITS

    restored = _launch("restore", directory)
    assert [r["role"] for r in restored] == ["Bus", "Follower"]
    for r in restored:
        assert r["seq"] == worker.NUM_COMMITS
        assert r["checksums"] == reference
        assert r["shardings"] == live[0]["shardings"]


# -- the helpers, in this (single) process ----------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(coordinator="localhost", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator="127.0.0.1:0", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator="127.0.0.1:99999", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator="127.0.0.1:1234", num_processes=0, process_id=0), "num_processes"),
    (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=2), "process_id"),
    (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=True), "process_id"),
    (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=0, local_device_count=0),
     "local_device_count"),
    (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=0, cpu_collectives="nccl"),
     "cpu_collectives"),
    # valid arguments, but JAX already runs in this process: refused before anything changes
    (dict(coordinator="127.0.0.1:1234", num_processes=1, process_id=0, local_device_count=2),
     "before any JAX"),
])
def test_initialize_rejects_bad_input_before_changing_anything(kwargs, match):
    devices = jax.device_count()
    collectives = jax.config.jax_cpu_collectives_implementation
    with pytest.raises(OptionError, match=match):
        distributed.initialize(**kwargs)
    assert not distributed.is_initialized()
    assert jax.device_count() == devices
    assert jax.config.jax_cpu_collectives_implementation == collectives


def test_single_process_defaults():
    assert distributed.is_coordinator()
    assert distributed.process_count() == 1
    distributed.barrier("noop")  # no-op with one process
    distributed.shutdown()  # idempotent when not initialised
    x = jax.numpy.arange(6)
    np.testing.assert_array_equal(distributed.gather(x), np.arange(6))


def test_cpu_device_flags_replaces_the_count():
    env = distributed.cpu_device_flags(
        3, {"XLA_FLAGS": "--foo --xla_force_host_platform_device_count=8", "A": "1"})
    assert env["XLA_FLAGS"].split() == ["--foo", "--xla_force_host_platform_device_count=3"]
    assert env["A"] == "1"
    with pytest.raises(OptionError):
        distributed.cpu_device_flags(0)


def test_follower_mirrors_the_bus_without_writing_the_log(tmp_path):
    """In one process: a Follower opened on a bus directory tracks the Bus's state exactly."""
    mesh = jax.make_mesh((4, 2), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    schema = worker.schema()
    txns = worker.transactions()
    bus = distributed.open_bus(tmp_path, schema, sync="never", mesh=mesh)
    assert isinstance(bus, mm.Bus)
    with bus:
        for deltas in txns[:3]:
            bus.commit(deltas)
        bus.checkpoint()
    log_bytes = {p: p.stat().st_size for p in (tmp_path / "log").glob("*.tlog")}
    with distributed.Follower.open(tmp_path, schema, mesh=mesh) as follower:
        assert follower.seq == 3
        for deltas in txns[3:]:
            info = follower.commit(deltas)
            assert info.bytes_logged == 0
        state = follower.state
        assert follower.seq == len(txns)
    assert {p: p.stat().st_size for p in (tmp_path / "log").glob("*.tlog")} == log_bytes
    plain = mm.init_state(schema)
    for deltas in txns:
        plain = mm.apply_batch(plain, deltas)
    fresh = mm.init_state(schema, mesh=mesh)
    for n in schema.names:
        assert jax.typeof(state.pages[n]) == jax.typeof(fresh.pages[n])
        assert state.pages[n].sharding.is_equivalent_to(fresh.pages[n].sharding,
                                                     fresh.pages[n].ndim)
        np.testing.assert_array_equal(np.asarray(state.pages[n]), np.asarray(plain.pages[n]))
        assert int(state.epochs[n]) == int(plain.epochs[n])


def test_follower_and_open_bus_reject_bad_input(tmp_path):
    with pytest.raises(StoreError, match="no bus log"):
        distributed.Follower.open(tmp_path / "missing")
    schema = worker.schema()
    with mm.Bus.open(tmp_path / "bus", schema, sync="never"):
        pass
    other = mm.Schema([mm.PageSpec("x", (4,), "int32")])
    with pytest.raises(SchemaMismatchError):
        distributed.Follower.open(tmp_path / "bus", other)
    with pytest.raises(OptionError, match="checkpoint_every"):
        distributed.Follower.open(tmp_path / "bus", schema, checkpoint_every=0)
    with pytest.raises(OptionError, match="prune_log"):
        distributed.open_bus(tmp_path / "bus", schema, prune_log=True)
