"""Benchmark of the durable store: log appends, replay, checkpoints, and the seed's workloads.

Every number is reported next to a baseline measured in the same process on the same data:

* append: ``TLog.append`` of transactions holding one 4 KiB delta, per sync policy, against a
  raw ``os.write`` loop of the same bytes with the same fsync batching (``always``: fsync per
  write; ``batch``: fsync every 64 writes; ``never``: none). ``ratio`` = log throughput / raw.
* bus_commit: ``Bus.commit`` (validate + log + apply) of the same transactions, against the raw
  loop of the same policy plus in-memory ``apply_transaction`` -- what a hand-written durable
  loop would cost.
* replay: ``replay()`` of a log from disk against in-memory ``mm.apply_batch`` of the same
  deltas, one call per transaction (the live path). ``ratio`` = replay throughput / in-memory.
* cold_recovery: reopening a Bus of 1,000 commits in a fresh process (replay from the log,
  compilation included) against applying the same transactions from memory in a fresh
  process, one ``apply_batch`` per transaction. ``ratio`` = in-memory time / reopen time.
  Both are run again with JAX's persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``,
  primed by one run of each), as a user who restarts often would set it.
* checkpoint: ``CheckpointStore.save`` (until durable) and ``restore`` MB/s against writing
  (+fsync) and reading the same bytes as one raw file.
* seed workloads: checkpoint+restore of 16 x 1 KiB pages; replay of 5 epochs of 16 pages;
  20 pages x 40 updates with a checkpoint after 400 commits, then recovery by reopening.

Run: ``python experiments/bench_store.py [--big] [--out PATH]``. Writes
``experiments/results/bench_store.json``. Timings are medians of ``--repeats`` runs (at least 7
for the append benchmark, whose fsync latency depends on whatever else writes to the disk;
the pairwise log/raw ratios are kept in the JSON to show the spread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import mmsb_jax as mm
from mmsb_jax.runtime import Bus
from mmsb_jax.store import format as fmt
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.replay import apply_transaction, replay
from mmsb_jax.store.tlog import DEFAULT_BATCH_COMMITS, TLog

OUT = Path(__file__).parent / "results" / "bench_store.json"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def block(state: mm.State) -> None:
    jax.block_until_ready(list(state.pages.values()))


# -- append -----------------------------------------------------------------------------------

APPEND_SCHEMA = mm.Schema([mm.PageSpec("p", (1024,), "float32")])  # 4 KiB


def delta_4k(i: int) -> mm.Delta:
    return mm.Delta.full("p", np.full(1024, i, np.float32), op="add")


def raw_open(path: Path) -> int:
    """Create the file as the log creates a segment (O_EXCL, fsynced with its directory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    os.write(fd, b"\0" * 200)  # stands for the segment header + schema record
    os.fdatasync(fd)
    dfd = os.open(path.parent, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    return fd


def raw_loop(fd: int, payloads: list[bytes], policy: str) -> None:
    """The baseline: one os.write per transaction, fsync with the log's batching, close."""
    for i, data in enumerate(payloads, 1):
        os.write(fd, data)
        if policy == "always" or (policy == "batch" and i % DEFAULT_BATCH_COMMITS == 0):
            os.fdatasync(fd)
    if policy != "never":
        os.fdatasync(fd)
    os.close(fd)


def timed(setup: Callable[[], object], body: Callable[[object], object]) -> float:
    """Seconds spent in ``body(setup())``; opening files is not part of the throughput."""
    ctx = setup()
    t0 = time.perf_counter()
    body(ctx)
    return time.perf_counter() - t0


def bench_append(tmp: Path, n: dict[str, int], repeats: int) -> dict:
    out = {}
    for policy in ("never", "batch", "always"):
        count = n[policy]
        deltas = [[delta_4k(i)] for i in range(count)]
        payloads = [fmt.encode_transaction(1, i + 1, ds) for i, ds in enumerate(deltas)]
        nbytes = sum(map(len, payloads))

        def open_log(policy=policy):
            return TLog.open(Path(tempfile.mkdtemp(dir=tmp)), APPEND_SCHEMA, sync=policy)

        def run_log(log, deltas=deltas):
            for i, ds in enumerate(deltas, 1):
                log.append(i, ds)
            log.close()

        def open_raw():
            return raw_open(Path(tempfile.mkdtemp(dir=tmp)) / "raw.bin")

        def run_raw(fd, policy=policy, payloads=payloads):
            raw_loop(fd, payloads, policy)

        def open_bus(policy=policy):
            return Bus.open(Path(tempfile.mkdtemp(dir=tmp)), APPEND_SCHEMA, sync=policy)

        def run_bus(bus, deltas=deltas):
            for ds in deltas:
                bus.commit(ds)
            bus.log.close()  # the final fsync; Bus.close then has nothing left to flush

        def open_raw_apply():
            return open_raw(), mm.init_state(APPEND_SCHEMA)

        def run_raw_apply(ctx, policy=policy, payloads=payloads, deltas=deltas):
            fd, state = ctx
            for i, (data, ds) in enumerate(zip(payloads, deltas, strict=True), 1):
                os.write(fd, data)
                if policy == "always" or (policy == "batch"
                                          and i % DEFAULT_BATCH_COMMITS == 0):
                    os.fdatasync(fd)
                state = apply_transaction(state, ds)
                jax.block_until_ready(state.pages["p"])
            if policy != "never":
                os.fdatasync(fd)
            os.close(fd)

        warm = open_bus()
        run_bus(warm)  # compile once
        warm.close()
        # interleave log and raw runs: fsync latency on a shared disk drifts over time
        t_log, t_raw, t_bus, t_raw_apply = [], [], [], []
        for r in range(repeats):
            if r % 2:  # alternate which goes first
                t_raw.append(timed(open_raw, run_raw))
                t_log.append(timed(open_log, run_log))
            else:
                t_log.append(timed(open_log, run_log))
                t_raw.append(timed(open_raw, run_raw))
            bus = open_bus()
            t_bus.append(timed(lambda bus=bus: bus, run_bus))
            bus.close()
            t_raw_apply.append(timed(open_raw_apply, run_raw_apply))
        pair_ratios = [r / g for r, g in zip(t_raw, t_log, strict=True)]
        t_log, t_raw = statistics.median(t_log), statistics.median(t_raw)
        t_bus, t_raw_apply = statistics.median(t_bus), statistics.median(t_raw_apply)
        out[policy] = {
            "pairwise_ratios_log_vs_raw": pair_ratios,
            "commits": count, "bytes": nbytes,
            "log_commits_per_s": count / t_log, "raw_writes_per_s": count / t_raw,
            "log_MB_per_s": nbytes / t_log / 1e6, "raw_MB_per_s": nbytes / t_raw / 1e6,
            "ratio_log_vs_raw": t_raw / t_log,
            "bus_commits_per_s": count / t_bus,
            "raw_plus_apply_per_s": count / t_raw_apply,
            "ratio_bus_vs_raw_plus_apply": t_raw_apply / t_bus,
        }
    return out


# -- replay ------------------------------------------------------------------------------------


def make_replay_workload(n_txns: int, seed: int = 0):
    schema = mm.Schema([mm.PageSpec("w", (1024,), "float32"),
                        mm.PageSpec("rows", (4096, 16), "float32"),
                        mm.PageSpec("n", (256,), "int32")])
    rng = np.random.default_rng(seed)
    txns = []
    for _ in range(n_txns):
        txns.append([
            mm.Delta.full("w", rng.normal(size=1024).astype(np.float32), op="add"),
            mm.Delta.rows("rows", rng.integers(-1, 4096, 16).astype(np.int32),
                          rng.normal(size=(16, 16)).astype(np.float32), op="set"),
            mm.Delta.masked("n", rng.random(256) < 0.1, rng.integers(0, 9, 256,
                                                                      dtype=np.int32), "max"),
        ])
    return schema, txns


def write_log(path: Path, schema: mm.Schema, txns) -> None:
    with TLog.open(path, schema, sync="never") as log:
        for i, ds in enumerate(txns, 1):
            log.append(i, ds)


def bench_replay(tmp: Path, n_txns: int, repeats: int) -> dict:
    schema, txns = make_replay_workload(n_txns)
    log_dir = tmp / "replay_log"
    write_log(log_dir, schema, txns)
    s0 = mm.init_state(schema)
    # the same deltas as device arrays, as a live program would hold them
    dev_txns = [[jax.tree.map(jnp.asarray, d) for d in ds] for ds in txns]

    def in_memory():
        s = s0
        for ds in dev_txns:
            s = mm.apply_batch(s, ds)
        block(s)
        return s

    def from_log():
        s = replay(s0, log_dir, progress=False)
        block(s)
        return s

    a, b = in_memory(), from_log()  # warm up (compiles) and check equality
    same = all(np.array_equal(np.asarray(a.pages[n]), np.asarray(b.pages[n]))
               for n in schema.names)
    t_mem, t_replay = median_time(in_memory, repeats), median_time(from_log, repeats)
    log_bytes = sum(p.stat().st_size for p in log_dir.glob("*.tlog"))
    return {"transactions": n_txns, "deltas": 3 * n_txns, "log_bytes": log_bytes,
            "in_memory_txn_per_s": n_txns / t_mem, "replay_txn_per_s": n_txns / t_replay,
            "replay_MB_per_s": log_bytes / t_replay / 1e6,
            "ratio_replay_vs_in_memory": t_mem / t_replay, "bit_identical": bool(same)}


# -- cold recovery -----------------------------------------------------------------------------

_COLD_CHILD = r"""
import sys, time, pickle
from pathlib import Path
import jax
import mmsb_jax as mm
sys.path.insert(0, sys.argv[3])
from bench_store import block, make_replay_workload
mode, target = sys.argv[1], Path(sys.argv[2])
if mode == "reopen":
    t0 = time.perf_counter()
    with mm.Bus.open(target) as bus:
        block(bus.state)
        t = time.perf_counter() - t0
        seq = bus.seq
else:
    schema, txns = make_replay_workload(int(sys.argv[4]))
    t0 = time.perf_counter()
    s = mm.init_state(schema)
    for ds in txns:
        s = mm.apply_batch(s, ds)
    block(s)
    t, seq = time.perf_counter() - t0, len(txns)
print(pickle.dumps((t, seq)).hex())
"""


def bench_cold_recovery(tmp: Path, n_txns: int, repeats: int) -> dict:
    """Reopening a Bus in a fresh process (replay from the log, compilation included) against
    applying the same transactions from memory in a fresh process (compiling the same
    structure once): what a restart after a crash costs."""
    import pickle
    import subprocess

    schema, txns = make_replay_workload(n_txns)
    bus_dir = tmp / "cold_bus"
    with Bus.open(bus_dir, schema, sync="never") as bus:
        bus.commit_many(txns)

    def child(*args: str, env: dict[str, str] | None = None) -> tuple[float, int]:
        out = subprocess.run([sys.executable, "-c", _COLD_CHILD, *args], check=True,
                             capture_output=True, text=True, env=env).stdout
        return pickle.loads(bytes.fromhex(out.strip().splitlines()[-1]))

    here = str(Path(__file__).parent)
    reopen = [child("reopen", str(bus_dir), here) for _ in range(repeats)]
    memory = [child("memory", "-", here, str(n_txns)) for _ in range(repeats)]
    # JAX's persistent compilation cache (a user's setting, process-wide): the executables
    # compiled by an earlier process (one priming run here) are read instead of compiled
    cached = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    child("reopen", str(bus_dir), here, env=cached)
    child("memory", "-", here, str(n_txns), env=cached)
    reopen_cached = [child("reopen", str(bus_dir), here, env=cached) for _ in range(repeats)]
    memory_cached = [child("memory", "-", here, str(n_txns), env=cached)
                     for _ in range(repeats)]
    t_reopen = statistics.median(t for t, _ in reopen)
    t_memory = statistics.median(t for t, _ in memory)
    t_reopen_c = statistics.median(t for t, _ in reopen_cached)
    t_memory_c = statistics.median(t for t, _ in memory_cached)
    return {"transactions": n_txns, "reopen_seconds": t_reopen,
            "in_memory_fresh_process_seconds": t_memory,
            "ratio_reopen_vs_in_memory": t_memory / t_reopen,
            "persistent_compilation_cache": {
                "reopen_seconds": t_reopen_c, "in_memory_fresh_process_seconds": t_memory_c,
                "ratio_reopen_vs_in_memory": t_memory_c / t_reopen_c},
            "recovered_seq": reopen[0][1]}


# -- checkpoints -------------------------------------------------------------------------------


def bench_checkpoint(tmp: Path, nbytes: int, repeats: int) -> dict:
    n = nbytes // 4
    schema = mm.Schema([mm.PageSpec("big", (n,), "float32")])
    state = mm.init_state(schema)
    state = state.with_pages({"big": jnp.asarray(np.random.default_rng(0).standard_normal(
        n, dtype=np.float32))})
    host = np.asarray(state.pages["big"])
    counter = iter(range(10**6))

    def save_restore():
        d = tmp / f"ck{next(counter)}"
        with CheckpointStore(d, keep=1) as store:
            t0 = time.perf_counter()
            store.save(1, state, schema, wait=True)
            t1 = time.perf_counter()
            restored, _ = store.restore(1, schema)
            jax.block_until_ready(restored.pages["big"])
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    def raw_write_read():
        p = tmp / f"raw{next(counter)}.bin"
        t0 = time.perf_counter()
        with open(p, "wb") as f:
            f.write(host.tobytes())
            f.flush()
            os.fsync(f.fileno())
        t1 = time.perf_counter()
        back = jnp.asarray(np.frombuffer(p.read_bytes(), np.float32))
        jax.block_until_ready(back)
        t2 = time.perf_counter()
        p.unlink()
        return t1 - t0, t2 - t1

    save_restore()
    ck = [save_restore() for _ in range(repeats)]
    raw = [raw_write_read() for _ in range(repeats)]
    save = statistics.median(c[0] for c in ck)
    rest = statistics.median(c[1] for c in ck)
    rsave = statistics.median(r[0] for r in raw)
    rread = statistics.median(r[1] for r in raw)
    mb = nbytes / 1e6
    return {"bytes": nbytes, "save_MB_per_s": mb / save, "restore_MB_per_s": mb / rest,
            "raw_write_fsync_MB_per_s": mb / rsave, "raw_read_MB_per_s": mb / rread,
            "ratio_save_vs_raw": rsave / save, "ratio_restore_vs_raw": rread / rest}


# -- the seed's workloads ------------------------------------------------------------------


def bench_seed(tmp: Path, repeats: int) -> dict:
    out = {}
    # 1. checkpoint + restore of 16 pages of 1 KiB
    schema16 = mm.Schema([mm.PageSpec(f"page{i}", (1024,), "uint8") for i in range(16)])
    state = mm.init_state(schema16)
    rng = np.random.default_rng(1)
    for i in range(16):
        state = mm.apply(state, mm.Delta.full(f"page{i}", rng.integers(0, 256, 1024,
                                                                       dtype=np.uint8)))
    counter = iter(range(10**6))

    def ckpt16():
        with CheckpointStore(tmp / f"seed16_{next(counter)}") as store:
            store.save(1, state, schema16)
            restored, _ = store.restore(1, schema16)
            block(restored)

    def raw16():
        p = tmp / f"seed16raw_{next(counter)}.bin"
        with open(p, "wb") as f:
            for n in schema16.names:
                f.write(np.asarray(state.pages[n]).tobytes())
            f.flush()
            os.fsync(f.fileno())
        data = p.read_bytes()
        jax.block_until_ready([jnp.asarray(np.frombuffer(data[i * 1024:(i + 1) * 1024],
                                                         np.uint8)) for i in range(16)])

    ckpt16()
    t_ck, t_raw = median_time(ckpt16, repeats), median_time(raw16, repeats)
    out["checkpoint_restore_16x1KiB"] = {"seconds": t_ck, "raw_file_seconds": t_raw,
                                          "ratio_vs_raw_file": t_raw / t_ck}

    # 2. replay of 5 epochs of the 16 pages (80 commits of one full page each)
    txns = [[mm.Delta.full(f"page{i}", rng.integers(0, 256, 1024, dtype=np.uint8))]
            for _ in range(5) for i in range(16)]
    log_dir = tmp / "seed_replay"
    write_log(log_dir, schema16, txns)
    s0 = mm.init_state(schema16)

    def mem5():
        s = s0
        for ds in txns:
            s = mm.apply_batch(s, ds)
        block(s)

    def replay5():
        block(replay(s0, log_dir, progress=False))

    mem5()
    replay5()
    t_mem, t_rep = median_time(mem5, repeats), median_time(replay5, repeats)
    out["replay_5_epochs_16_pages"] = {"commits": len(txns), "replay_seconds": t_rep,
                                        "in_memory_seconds": t_mem,
                                        "ratio_replay_vs_in_memory": t_mem / t_rep}

    # 3. 20 pages x 40 updates through the Bus, a checkpoint after 400 commits, then recovery
    schema20 = mm.Schema([mm.PageSpec(f"p{i}", (256,), "float32") for i in range(20)])
    updates = [[mm.Delta.rows(f"p{i}", np.array([(k * 7 + i) % 256], np.int32),
                              np.array([k + i], np.float32), op="add")]
               for k in range(40) for i in range(20)]

    def bus20():
        d = tmp / f"seed20_{next(counter)}"
        t0 = time.perf_counter()
        with Bus.open(d, schema20, sync="batch") as bus:
            for j, ds in enumerate(updates, 1):
                bus.commit(ds)
                if j == 400:
                    bus.checkpoint()
            live = bus.state
        t1 = time.perf_counter()
        with Bus.open(d) as bus:
            block(bus.state)
            ok = all(np.array_equal(bus.read(n), np.asarray(live.pages[n]))
                     for n in schema20.names)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, ok

    def mem20():
        s = mm.init_state(schema20)
        for ds in updates:
            s = mm.apply_batch(s, ds)
        block(s)

    bus20()
    mem20()
    runs = [bus20() for _ in range(repeats)]
    t_mem = median_time(mem20, repeats)
    t_commit = statistics.median(r[0] for r in runs)
    t_recover = statistics.median(r[1] for r in runs)
    out["pages20_updates40_with_checkpoint"] = {
        "commits": len(updates), "bus_seconds": t_commit, "recover_seconds": t_recover,
        "in_memory_seconds": t_mem, "ratio_bus_vs_in_memory": t_mem / t_commit,
        "recovered_bit_identical": all(r[2] for r in runs)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", action="store_true", help="1 GiB checkpoint, longer runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: temp)")
    args = ap.parse_args(argv)
    scale = 4 if args.big else 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        append = bench_append(tmp, {"never": 640 * scale, "batch": 640 * scale,
                                    "always": 80 * scale}, max(args.repeats, 7))
        rep = bench_replay(tmp, 400 * scale, args.repeats)
        cold = bench_cold_recovery(tmp, 1000 * scale, 3)
        ck = bench_checkpoint(tmp, (1 << 30) if args.big else (64 << 20), args.repeats)
        seed = bench_seed(tmp, args.repeats)
        elapsed = time.perf_counter() - t0
    result = {
        "benchmark": "bench_store",
        "env": {"jax": jax.__version__, "backend": jax.default_backend(),
                "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(),
                "python": sys.version.split()[0], "platform": platform.platform(),
                "mmsb_jax": mm.__version__},
        "params": {"big": args.big, "repeats": args.repeats,
                   "batch_commits": DEFAULT_BATCH_COMMITS},
        "append_4KiB": append,
        "replay": rep,
        "cold_recovery": cold,
        "checkpoint": ck,
        "seed_workloads": seed,
        "targets": {
            "batch_append_ratio_ge_0.8": append["batch"]["ratio_log_vs_raw"] >= 0.8,
            "replay_ratio_ge_0.5": rep["ratio_replay_vs_in_memory"] >= 0.5,
        },
        "elapsed_s": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"append_ratio": {k: round(v["ratio_log_vs_raw"], 3)
                                       for k, v in append.items()},
                      "replay_ratio": round(rep["ratio_replay_vs_in_memory"], 3),
                      "checkpoint_MB_s": (round(ck["save_MB_per_s"], 1),
                                          round(ck["restore_MB_per_s"], 1)),
                      "targets": result["targets"], "elapsed_s": round(elapsed, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
