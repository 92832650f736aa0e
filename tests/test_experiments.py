"""Smoke tests: benchmark scripts run end to end at small sizes (so they never rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_core_quick_writes_ratios():
    proc = subprocess.run([sys.executable, "experiments/bench_core.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((ROOT / "experiments/results/bench_core_quick.json").read_text())
    rows = out["row_deltas"]["results"]
    assert {r["pattern"] for r in rows} == {"sorted_unique", "random_duplicates"}
    assert all(r["fraction_of_copy_bandwidth"] > 0 and r["speedup_vs_numpy"] > 0 for r in rows)
    assert set(out["seed_workloads"]) == {"dense", "sparse"}


def test_bench_commit_quick_writes_ratios():
    proc = subprocess.run([sys.executable, "experiments/bench_commit.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((ROOT / "experiments/results/bench_commit_quick.json").read_text())
    methods = {"numpy", "raw_jit_device_inputs", "raw_jit_host_inputs", "apply_eager",
               "bus_commit", "bus_commit_donate", "bus_commit_many_per_txn"}
    assert all(set(r["us"]) == methods and min(r["us"].values()) > 0 for r in out["size_sweep"])
    t = out["targets"]
    assert t["commit_many_16_row_adds"]["txn_per_s"] > 0
    assert [c["batch"] for c in t["commit_many_sync_always"]["per_call"]] == [1, 16, 256]
    assert (ROOT / "experiments/results/bench_commit_quick.png").stat().st_size > 0
