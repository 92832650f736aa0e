"""Telemetry: per-bus registries, histograms as dicts, page memory, loopback exporter."""

from __future__ import annotations

import urllib.request

import jax.numpy as jnp

from mmsb_jax.runtime.telemetry import LATENCY_BUCKETS, Telemetry, page_memory


def test_registries_are_separate():
    a, b = Telemetry(), Telemetry()
    a.record_commit(0.0, 1e-6, 2e-6, 3e-6, 4e-6, 3, 10, 20)
    a.observe("commit", 0.002)
    assert a.snapshot()["commits"] == 3 and b.snapshot()["commits"] == 0
    assert a.snapshot()["bytes_logged"] == 10 and a.snapshot()["bytes_applied"] == 20
    assert b.snapshot()["latency"]["commit"]["count"] == 0


def test_histogram_snapshot():
    t = Telemetry()
    for s in (5e-6, 3e-4, 0.02, 20.0):
        t.observe("dispatch", s)
    h = t.histogram("dispatch")
    assert h["count"] == 4 and abs(h["sum_s"] - 20.0203050) < 1e-6
    assert h["mean_s"] == h["sum_s"] / 4
    assert h["buckets"][repr(1e-5)] == 1 and h["buckets"][repr(5e-4)] == 2
    assert h["buckets"][repr(10.0)] == 3 and h["buckets"]["+Inf"] == 4
    assert len(h["buckets"]) == len(LATENCY_BUCKETS) + 1
    assert t.histogram("fsync") == {"count": 0, "sum_s": 0.0, "mean_s": 0.0,
                                    "buckets": dict.fromkeys(h["buckets"], 0)}


def test_page_memory_counts_each_device_once():
    pages = {"a": jnp.zeros((4, 4), jnp.float32), "b": jnp.zeros(3, jnp.uint8)}
    mem = page_memory(pages)
    assert sum(mem.values()) == 64 + 3 and len(mem) == 1
    t = Telemetry()
    assert t.set_page_memory(pages) == mem
    snap = t.snapshot()
    assert snap["page_bytes"] == 67 and snap["page_bytes_by_device"] == mem


def test_exporter_binds_loopback_and_stops():
    t = Telemetry()
    t.record_commit(0.0, 1e-6, 2e-6, 3e-6, 4e-6, 1, 10, 20)
    port = t.serve(0)
    assert t._server.server_address[0] == "127.0.0.1"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert "mmsb_commits_total 1.0" in r.read().decode()
    t.close()
    t.close()
    assert t._server is None


def test_commit_stages_fold_into_histograms():
    """Stage durations are the differences of a commit's timestamps, folded on read."""
    t = Telemetry()
    for i in range(5000):  # crosses the fold threshold once
        t.record_commit(i, i + 2e-5, i + 2.8e-5, i + 3.5e-5, i + 4e-5, 1, 1, 2)
    snap = t.snapshot()
    assert snap["commits"] == 5000 and snap["bytes_applied"] == 10000
    lat = snap["latency"]
    assert lat["commit"]["count"] == 5000
    assert abs(lat["validate"]["mean_s"] - 2e-5) < 1e-6
    assert lat["log"]["buckets"][repr(1e-5)] == 5000  # 8 us each
    assert lat["wait"]["buckets"][repr(1e-5)] == 5000
    assert lat["commit"]["buckets"][repr(2.5e-5)] == 0 and lat["commit"]["buckets"][repr(5e-5)]


def test_prometheus_exposition_matches_snapshot():
    from prometheus_client import generate_latest

    t = Telemetry()
    t.record_commit(0.0, 1e-6, 2e-6, 3e-6, 4e-6, 2, 10, 20)
    t.failures.inc()
    t.observe("fsync", 0.003)
    text = generate_latest(t.registry).decode()
    assert "mmsb_commits_total 2.0" in text and "mmsb_commit_failures_total 1.0" in text
    assert 'mmsb_fsync_seconds_bucket{le="0.005"} 1.0' in text
    assert "mmsb_fsync_seconds_count 1.0" in text
