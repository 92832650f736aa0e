"""Bus telemetry: counters and latency histograms that cost next to nothing per commit.

A commit records its stage timestamps by appending one tuple to a list; the tuples are folded
into cumulative histogram counts (one vectorised ``numpy`` pass) every few thousand commits
and whenever the numbers are read. Prometheus reads them through a collector of this
Telemetry's own ``CollectorRegistry`` (so two buses in one process never mix their numbers);
:meth:`Telemetry.serve` exposes the registry over HTTP, bound to ``127.0.0.1`` unless told
otherwise.

Latency stages (``mmsb_<stage>_seconds``):

* ``commit``: the whole call, from entry to the return of ``commit``/``commit_many``.
* ``validate``: host-side validation and planning of the deltas.
* ``log``: encoding and writing the transaction(s) (with the fsync under ``sync="always"``).
* ``dispatch``: handing the jitted transaction (apply + propagation) to JAX. JAX runs it
  asynchronously, so this is not the device time.
* ``wait``: blocking until the derived pages' epochs are known: ``commit_many`` with a graph
  (that is how the Bus learns which derived pages changed) and ``commit`` on a donating bus
  with a graph. ``commit`` otherwise leaves that to the first read of
  :attr:`CommitInfo.derived <mmsb_jax.runtime.bus.CommitInfo>`, so it does not wait; zero
  without a graph.
* ``notify``: subscriber callbacks; ``fsync``: each fsync of the log; ``checkpoint``: saves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["LATENCY_BUCKETS", "STAGES", "Telemetry", "page_memory"]

#: Histogram buckets (seconds): 10 µs .. 10 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0)

#: Latency stages, in the order of the module docstring.
STAGES: tuple[str, ...] = ("commit", "validate", "log", "dispatch", "wait", "notify", "fsync",
                           "checkpoint")
_INDEX = {s: i for i, s in enumerate(STAGES)}
_COMMIT_STAGES = np.array([_INDEX[s] for s in ("validate", "log", "dispatch", "wait")])
_FOLD_EVERY = 4096
_BOUNDS = np.asarray(LATENCY_BUCKETS)


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


class Count:
    """A monotonically increasing counter (``inc``) or, with ``set``, a gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: int = 0

    def inc(self, amount: int = 1) -> None:
        """Add ``amount``."""
        self.value += amount

    def set(self, value: int) -> None:
        """Set the value (gauges)."""
        self.value = int(value)


class Telemetry:
    """Counters and latency histograms of one Bus.

    Metric names (Prometheus): ``mmsb_<stage>_seconds`` histograms for :data:`STAGES`;
    counters ``mmsb_commits_total``, ``mmsb_commit_failures_total``,
    ``mmsb_bytes_logged_total``, ``mmsb_bytes_applied_total``, ``mmsb_checkpoints_total``,
    ``mmsb_callback_errors_total``; gauges ``mmsb_seq``, ``mmsb_torn_tail_bytes_cut``,
    ``mmsb_page_bytes{device=...}``.
    """

    def __init__(self) -> None:
        self.failures = Count()
        self.checkpoints = Count()
        self.callback_errors = Count()
        self.seq = Count()
        self.torn = Count()
        self._page_bytes: dict[str, int] = {}
        # Folded state: per stage, non-cumulative bucket counts (last = +Inf) and sums.
        self._buckets = np.zeros((len(STAGES), len(LATENCY_BUCKETS) + 1), np.int64)
        self._sums = np.zeros(len(STAGES))
        self._commits = 0
        self._bytes_logged = 0
        self._bytes_applied = 0
        # Pending: (t0, t1, t2, t3, t4, commits, bytes logged, bytes applied) per call, and
        # (stage index, seconds) samples of the other stages.
        self._pending: list[tuple[float, ...]] = []
        self._samples: list[tuple[int, float]] = []
        self._fold_lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exporter(self))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- recording (hot path) ---------------------------------------------------------------
    def record_commit(self, t0: float, t1: float, t2: float, t3: float, t4: float,
                      commits: int, bytes_logged: int, bytes_applied: int) -> None:
        """Record one ``commit``/``commit_many`` call from its stage timestamps.

        ``t0..t4``: ``perf_counter`` at entry, after validation, after the log write, after
        dispatch and after waiting; the call ends at ``t4``. Costs one list append.
        """
        self._pending.append((t0, t1, t2, t3, t4, commits, bytes_logged, bytes_applied))
        if len(self._pending) >= _FOLD_EVERY:
            self._fold()

    def observe(self, stage: str, seconds: float) -> None:
        """Record one latency sample of ``stage``."""
        self._samples.append((_INDEX[stage], seconds))
        if len(self._samples) >= _FOLD_EVERY:
            self._fold()

    # -- folding ------------------------------------------------------------------------------
    def _fold(self) -> None:
        """Move pending samples into the cumulative counts (safe against concurrent appends:
        only the prefix read here is removed)."""
        with self._fold_lock:
            n = len(self._pending)
            if n:
                rows = np.asarray(self._pending[:n], np.float64)
                del self._pending[:n]
                stamps = rows[:, :5]
                stages = np.diff(stamps, axis=1)  # validate, log, dispatch, wait
                self._add(np.repeat(_COMMIT_STAGES[None, :], n, 0).ravel(), stages.ravel())
                self._add(np.full(n, _INDEX["commit"]), stamps[:, 4] - stamps[:, 0])
                self._commits += int(rows[:, 5].sum())
                self._bytes_logged += int(rows[:, 6].sum())
                self._bytes_applied += int(rows[:, 7].sum())
            m = len(self._samples)
            if m:
                samples = np.asarray(self._samples[:m], np.float64)
                del self._samples[:m]
                self._add(samples[:, 0].astype(np.int64), samples[:, 1])

    def _add(self, stage: np.ndarray, seconds: np.ndarray) -> None:
        bucket = np.searchsorted(_BOUNDS, seconds, side="left")  # le semantics
        np.add.at(self._buckets, (stage, bucket), 1)
        np.add.at(self._sums, stage, seconds)

    # -- reading ------------------------------------------------------------------------------
    def set_page_memory(self, pages: Mapping[str, jax.Array]) -> dict[str, int]:
        """Update the per-device page-bytes gauge; returns the mapping."""
        mem = page_memory(pages)
        self._page_bytes.update(mem)
        return mem

    def histogram(self, stage: str) -> dict[str, Any]:
        """``{"count", "sum_s", "mean_s", "buckets": {le: cumulative count}}`` of a stage."""
        self._fold()
        i = _INDEX[stage]
        cumulative = np.cumsum(self._buckets[i])
        count = int(cumulative[-1])
        total = float(self._sums[i])
        buckets = {repr(float(le)): int(c) for le, c in zip(LATENCY_BUCKETS, cumulative,
                                                             strict=False)}
        buckets["+Inf"] = count
        return {"count": count, "sum_s": total, "mean_s": total / count if count else 0.0,
                "buckets": buckets}

    def counters(self) -> dict[str, int]:
        """The counters and gauges as plain ints."""
        self._fold()
        return {
            "commits": self._commits,
            "commit_failures": self.failures.value,
            "bytes_logged": self._bytes_logged,
            "bytes_applied": self._bytes_applied,
            "checkpoints": self.checkpoints.value,
            "callback_errors": self.callback_errors.value,
            "seq": int(self.seq.value),
            "torn_tail_bytes_cut": int(self.torn.value),
        }

    def snapshot(self) -> dict[str, Any]:
        """All metrics as plain Python numbers."""
        out: dict[str, Any] = self.counters()
        devices = dict(self._page_bytes)
        out.update(page_bytes=sum(devices.values()), page_bytes_by_device=devices,
                   latency={k: self.histogram(k) for k in STAGES})
        return out

    # -- export -------------------------------------------------------------------------------
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


class _Exporter(Collector):
    """Builds the Prometheus families from a Telemetry when the registry is scraped."""

    def __init__(self, telemetry: Telemetry):
        self.t = telemetry

    def collect(self) -> Iterator[Any]:
        c = self.t.counters()
        for name, key, doc in (("mmsb_commits", "commits", "committed transactions"),
                               ("mmsb_commit_failures", "commit_failures",
                                "rejected or failed commits"),
                               ("mmsb_bytes_logged", "bytes_logged",
                                "bytes appended to the log"),
                               ("mmsb_bytes_applied", "bytes_applied",
                                "delta bytes applied to pages"),
                               ("mmsb_checkpoints", "checkpoints", "checkpoints saved"),
                               ("mmsb_callback_errors", "callback_errors",
                                "subscriber callbacks that raised")):
            yield CounterMetricFamily(name, doc, value=c[key])
        yield GaugeMetricFamily("mmsb_seq", "last committed seq", value=c["seq"])
        yield GaugeMetricFamily("mmsb_torn_tail_bytes_cut",
                                "torn-tail bytes cut when the log opened",
                                value=c["torn_tail_bytes_cut"])
        pages = GaugeMetricFamily("mmsb_page_bytes", "page bytes per device", labels=["device"])
        for dev, nbytes in self.t._page_bytes.items():
            pages.add_metric([dev], nbytes)
        yield pages
        for stage in STAGES:
            h = self.t.histogram(stage)
            buckets = [(floatToGoString(le), h["buckets"][repr(float(le))])
                       for le in LATENCY_BUCKETS] + [("+Inf", h["count"])]
            yield HistogramMetricFamily(f"mmsb_{stage}_seconds", f"{stage} latency of the bus",
                                        buckets=buckets, sum_value=h["sum_s"])
