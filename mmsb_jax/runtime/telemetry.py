"""Bus telemetry: Prometheus metrics in a registry of their own, and a plain-dict snapshot.

Each :class:`Telemetry` owns a ``prometheus_client.CollectorRegistry``, so two buses in one
process never mix their numbers. :meth:`Telemetry.serve` exposes the registry over HTTP, bound to
``127.0.0.1`` unless told otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import jax
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "Telemetry", "page_memory"]

#: Histogram buckets (seconds): 10 µs .. 10 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0)

_LATENCIES = ("commit", "validate", "log", "apply", "propagate", "notify", "fsync", "checkpoint")


def page_memory(pages: Mapping[str, jax.Array]) -> dict[str, int]:
    """Bytes of page data held per device: ``{str(device): bytes}`` (shards counted once)."""
    out: dict[str, int] = {}
    for arr in pages.values():
        shards = getattr(arr, "addressable_shards", None)
        if not shards:
            continue
        seen = set()
        for sh in shards:
            key = (str(sh.device), repr(sh.index))
            if key in seen:
                continue
            seen.add(key)
            out[str(sh.device)] = out.get(str(sh.device), 0) + int(sh.data.nbytes)
    return out


class Telemetry:
    """Counters and latency histograms of one Bus.

    Metric names (Prometheus): ``mmsb_<stage>_seconds`` histograms for ``commit validate log
    apply propagate notify fsync checkpoint``; counters ``mmsb_commits_total``,
    ``mmsb_commit_failures_total``, ``mmsb_bytes_logged_total``, ``mmsb_bytes_applied_total``,
    ``mmsb_checkpoints_total``, ``mmsb_callback_errors_total``; gauges ``mmsb_seq``,
    ``mmsb_torn_tail_bytes_cut``, ``mmsb_page_bytes{device=...}``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = {
            k: Histogram(f"mmsb_{k}_seconds", f"{k} latency of the bus", registry=r,
                         buckets=LATENCY_BUCKETS)
            for k in _LATENCIES
        }
        self.commits = Counter("mmsb_commits", "committed transactions", registry=r)
        self.failures = Counter("mmsb_commit_failures", "rejected or failed commits",
                                registry=r)
        self.bytes_logged = Counter("mmsb_bytes_logged", "bytes appended to the log", registry=r)
        self.bytes_applied = Counter("mmsb_bytes_applied", "delta bytes applied to pages",
                                     registry=r)
        self.checkpoints = Counter("mmsb_checkpoints", "checkpoints saved", registry=r)
        self.callback_errors = Counter("mmsb_callback_errors",
                                       "subscriber callbacks that raised", registry=r)
        self.seq = Gauge("mmsb_seq", "last committed seq", registry=r)
        self.torn = Gauge("mmsb_torn_tail_bytes_cut", "torn-tail bytes cut when the log opened",
                          registry=r)
        self.page_bytes = Gauge("mmsb_page_bytes", "page bytes per device", ["device"],
                                registry=r)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe(self, stage: str, seconds: float) -> None:
        """Record one latency sample of ``stage``."""
        self.latency[stage].observe(seconds)

    def set_page_memory(self, pages: Mapping[str, jax.Array]) -> dict[str, int]:
        """Update the per-device page-bytes gauge; returns the mapping."""
        mem = page_memory(pages)
        for dev, nbytes in mem.items():
            self.page_bytes.labels(device=dev).set(nbytes)
        return mem

    def _value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        v = self.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if v is None else float(v)

    def histogram(self, stage: str) -> dict[str, Any]:
        """``{"count", "sum_s", "mean_s", "buckets": {le: cumulative count}}`` of a stage."""
        name = f"mmsb_{stage}_seconds"
        count = int(self._value(name + "_count"))
        total = self._value(name + "_sum")
        buckets = {}
        for le in (*LATENCY_BUCKETS, float("inf")):
            key = "+Inf" if le == float("inf") else repr(float(le))
            buckets[key] = int(self._value(name + "_bucket", {"le": _le_label(le)}))
        return {"count": count, "sum_s": total, "mean_s": total / count if count else 0.0,
                "buckets": buckets}

    def snapshot(self) -> dict[str, Any]:
        """All metrics as plain Python numbers."""
        devices = {}
        for metric in self.registry.collect():
            if metric.name == "mmsb_page_bytes":
                for s in metric.samples:
                    devices[s.labels["device"]] = int(s.value)
        return {
            "commits": int(self._value("mmsb_commits_total")),
            "commit_failures": int(self._value("mmsb_commit_failures_total")),
            "bytes_logged": int(self._value("mmsb_bytes_logged_total")),
            "bytes_applied": int(self._value("mmsb_bytes_applied_total")),
            "checkpoints": int(self._value("mmsb_checkpoints_total")),
            "callback_errors": int(self._value("mmsb_callback_errors_total")),
            "seq": int(self._value("mmsb_seq")),
            "torn_tail_bytes_cut": int(self._value("mmsb_torn_tail_bytes_cut")),
            "page_bytes": sum(devices.values()),
            "page_bytes_by_device": devices,
            "latency": {k: self.histogram(k) for k in _LATENCIES},
        }

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Serve the registry at ``http://addr:port/metrics``; returns the bound port.

        ``port=0`` picks a free port. Binds loopback by default: exposing it further is an
        explicit choice (``addr="0.0.0.0"``).
        """
        from prometheus_client import start_http_server

        if self._server is not None:
            return int(self._server.server_address[1])
        self._server, self._thread = start_http_server(int(port), addr=addr,
                                                       registry=self.registry)
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP exporter if it runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None


def _le_label(le: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(le)
