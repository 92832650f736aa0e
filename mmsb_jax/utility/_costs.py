"""Cost functions: the seed's formulas and a telemetry cost fed from ``bus.metrics()``.

The seed (MMSB layer 6, ``CostFunctions`` and ``UtilityEngine``) scored the runtime with three
costs and one utility, reproduced here exactly (as jnp functions: they run under ``jit`` and
are differentiable in their float inputs):

* cache cost ``C_cache = k_cache * misses / (misses + hits)`` with ``k_cache = 1000``
  (0 when there was no access): 25 misses and 75 hits cost ``1000 * 0.25 = 250``;
* memory cost ``C_mem = k_mem * (bytes / 2**20) / allocations`` with ``k_mem = 100``;
* latency cost ``C_lat = k_lat * (total_us / ops) / 1000`` (average ms) with ``k_lat = 10``;
* utility ``U = -(w_cache * C_cache + w_mem * C_mem + w_lat * C_lat)`` with the seed's weights
  ``(1.0, 0.5, 2.0)``: costs ``(0.2, 4.0, 100.0)`` give ``U = -202.2``.

The telemetry cost reads the Bus's metrics: mean commit latency, bytes written to the log and
bytes of page memory, and turns them into a :class:`~mmsb_jax.utility.Utility` that can be
added to utilities of page contents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.core.pages import State
from mmsb_jax.errors import DomainError, OptionError
from mmsb_jax.utility._base import Utility, _check_weight

__all__ = [
    "SEED_WEIGHTS",
    "CostComponents",
    "CostWeights",
    "TelemetryCosts",
    "TelemetryWeights",
    "cache_cost",
    "cost_utility",
    "costs_from_counters",
    "latency_cost",
    "memory_cost",
    "telemetry_cost",
    "telemetry_costs",
    "telemetry_utility",
]

MIB = float(1 << 20)


def _nonneg(x: Any, what: str) -> jax.Array:
    """``x`` as a float array; concrete values are checked to be finite and ``>= 0``."""
    a = jnp.asarray(x)
    if not isinstance(a, jax.core.Tracer):
        h = np.asarray(a, dtype=np.float64)
        if not np.all(np.isfinite(h)) or np.any(h < 0):
            raise DomainError(f"{what} must be finite and non-negative, got {x!r}")
    return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.float32)


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den``, and 0 where ``den == 0`` (the seed's early ``return 0.0``)."""
    return jnp.where(den == 0, 0.0, num / jnp.where(den == 0, 1.0, den))


class CostComponents(NamedTuple):
    """The seed's cost vector (``CostComponents``), in the seed's field order.

    Attributes:
      cache: ``[]`` cache cost ``k_cache * miss_rate`` (the seed's ``cache_miss_rate`` field).
      memory: ``[]`` memory cost (the seed's ``memory_overhead_mb``).
      latency: ``[]`` latency cost (the seed's ``avg_latency_us``).
      allocation_rate: ``[]`` allocations per second (informational; not in the utility).
    """

    cache: Any
    memory: Any
    latency: Any
    allocation_rate: Any = 0.0


class CostWeights(NamedTuple):
    """Weights of :func:`cost_utility` (the seed's ``UtilityState.cost_weights``)."""

    cache: float = 1.0
    memory: float = 0.5
    latency: float = 2.0


SEED_WEIGHTS = CostWeights()
"""The seed's default weights: cache 1.0, memory 0.5, latency 2.0."""


def cache_cost(misses: Any, hits: Any, *, k: float = 1000.0) -> jax.Array:
    """The seed's cache cost ``k * misses / (misses + hits)`` (0 with no accesses).

    Args:
      misses: ``[*B]`` non-negative miss counts.
      hits: ``[*B]`` non-negative hit counts.
      k: the penalty of a 100% miss rate (the seed's ``k_cache = 1000``).

    Returns:
      ``f32[*B]``; ``cache_cost(25, 75) == 250``.
    """
    m = _nonneg(misses, "misses")
    h = _nonneg(hits, "hits")
    return _check_weight(k, "k") * _ratio(m, m + h)


def memory_cost(bytes_allocated: Any, num_allocations: Any, *, k: float = 100.0) -> jax.Array:
    """The seed's memory cost ``k * MiB allocated per allocation`` (0 with no allocation).

    Args:
      bytes_allocated: ``[*B]`` bytes allocated.
      num_allocations: ``[*B]`` number of allocations.
      k: cost of one MiB per allocation (the seed's ``k_mem = 100``).

    Returns:
      ``f32[*B]``; 4 MiB over 100 allocations cost ``100 * 0.04 = 4``.
    """
    b = _nonneg(bytes_allocated, "bytes_allocated")
    n = _nonneg(num_allocations, "num_allocations")
    return _check_weight(k, "k") * _ratio(b / MIB, n)


def latency_cost(total_latency_us: Any, num_ops: Any, *, k: float = 10.0) -> jax.Array:
    """The seed's latency cost ``k * average latency in ms`` (0 with no operation).

    Args:
      total_latency_us: ``[*B]`` summed latency in microseconds.
      num_ops: ``[*B]`` number of operations.
      k: cost of 1 ms average latency (the seed's ``k_latency = 10``).

    Returns:
      ``f32[*B]``; 10 000 us over 10 ops (1 ms each) cost 10.
    """
    t = _nonneg(total_latency_us, "total_latency_us")
    n = _nonneg(num_ops, "num_ops")
    return _check_weight(k, "k") * _ratio(t, n) / 1000.0


def costs_from_counters(*, cache_misses: Any = 0, cache_hits: Any = 0, bytes_allocated: Any = 0,
                        allocations: Any = 0, latency_us: Any = 0, ops: Any = 0,
                        elapsed_s: Any = 0) -> CostComponents:
    """The seed's ``from_telemetry``: raw counters to :class:`CostComponents`.

    Args:
      cache_misses, cache_hits: access counters.
      bytes_allocated, allocations: allocation counters.
      latency_us, ops: summed propagation latency (us) and number of propagations.
      elapsed_s: wall time the counters cover, for ``allocation_rate = allocations /
        elapsed_s`` (0 when ``elapsed_s == 0``).

    Returns:
      :class:`CostComponents` of ``f32[]`` (or batched ``[*B]``) costs.
    """
    alloc = _nonneg(allocations, "allocations")
    return CostComponents(
        cache=cache_cost(cache_misses, cache_hits),
        memory=memory_cost(bytes_allocated, allocations),
        latency=latency_cost(latency_us, ops),
        allocation_rate=_ratio(alloc, _nonneg(elapsed_s, "elapsed_s")),
    )


def cost_utility(costs: CostComponents | Any, weights: CostWeights | Any = SEED_WEIGHTS
                 ) -> jax.Array:
    """The seed's utility ``U = -sum_i w_i c_i`` over (cache, memory, latency).

    Args:
      costs: a :class:`CostComponents` or any sequence ``(cache, memory, latency[, rate])``;
        each entry ``[*B]``.
      weights: a :class:`CostWeights` or a sequence ``(w_cache, w_mem, w_lat)``.

    Returns:
      ``f32[*B]``: ``-(w_cache c_cache + w_mem c_mem + w_lat c_lat)``; higher is better.
      ``cost_utility((0.2, 4.0, 100.0), (1, 0.5, 2)) == -202.2``.
    """
    c = tuple(costs)
    w = tuple(weights)
    if len(c) not in (3, 4):
        raise OptionError(f"costs must be (cache, memory, latency[, allocation_rate]), got "
                          f"{len(c)} values")
    if len(w) != 3:
        raise OptionError(f"weights must be (cache, memory, latency), got {len(w)} values")
    w = [_check_weight(x, "cost weight") for x in w]
    total = w[0] * jnp.asarray(c[0], jnp.float32)
    for wi, ci in zip(w[1:], c[1:3], strict=True):
        total = total + wi * jnp.asarray(ci, jnp.float32)
    return -total


# -- telemetry --------------------------------------------------------------------------------

class TelemetryCosts(NamedTuple):
    """Runtime costs read from ``bus.metrics()``.

    Attributes:
      latency_ms: mean commit latency in milliseconds.
      mib_logged: MiB written to the transaction log.
      memory_mib: MiB of page memory.
    """

    latency_ms: float
    mib_logged: float
    memory_mib: float


class TelemetryWeights(NamedTuple):
    """Weights of the telemetry cost (cost per ms of latency, per MiB logged, per MiB held).

    The defaults mirror the seed's weighting (latency 2.0 > log traffic 1.0 > memory 0.5).
    """

    latency_ms: float = 2.0
    mib_logged: float = 1.0
    memory_mib: float = 0.5


def _number(value: Any, key: str, *, per_device: bool = False) -> float:
    """A metric as one number: a plain number, a histogram's mean, or a per-device total."""
    if isinstance(value, Mapping):
        for mean in ("mean_s", "mean"):
            if mean in value:
                return _number(value[mean], key)
        for total in ("sum_s", "sum"):
            if total in value and "count" in value:
                n = _number(value["count"], key)
                return 0.0 if n == 0 else _number(value[total], key) / n
        if per_device:  # {device: bytes}
            return float(sum(_number(v, key) for v in value.values()))
        raise OptionError(f"metric {key!r} is a mapping without a mean ('mean_s') or "
                          f"'sum_s' and 'count': {sorted(value)}")
    if isinstance(value, bool):
        raise OptionError(f"metric {key!r} is not a number: {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"metric {key!r} is not a number: {value!r}") from None
    if not math.isfinite(out) or out < 0:
        raise DomainError(f"metric {key!r} must be finite and non-negative, got {out!r}")
    return out


def telemetry_costs(metrics: Mapping[str, Any], state: State | None = None) -> TelemetryCosts:
    """Read the telemetry costs from a metrics mapping (``bus.metrics()``).

    Keys read (``bus.metrics()`` provides all three):

    * latency: ``metrics["latency"]["commit"]``, the Bus's commit-latency histogram
      (``{"count", "sum_s", "mean_s", "buckets"}``; its mean is used), or a flat
      ``commit_latency_s`` (seconds, a number or such a histogram);
    * log traffic: ``bytes_logged`` (bytes written to the transaction log);
    * memory: ``page_bytes`` (bytes of page memory; a number or ``{device: bytes}``), or,
      when absent and ``state`` is given, the total ``nbytes`` of ``state``'s pages.

    Args:
      metrics: the mapping.
      state: optional State to measure page memory from when ``metrics`` lacks it.

    Returns:
      :class:`TelemetryCosts` in ms / MiB / MiB.

    Raises:
      OptionError: a key is missing (memory: and no ``state``), or a value is not a number.
      DomainError: a value is negative or not finite.
    """
    if not isinstance(metrics, Mapping):
        raise OptionError(f"metrics must be a mapping, got {type(metrics).__name__}")
    latency = metrics.get("latency")
    if isinstance(latency, Mapping) and "commit" in latency:
        latency_s = _number(latency["commit"], "latency.commit")
    elif "commit_latency_s" in metrics:
        latency_s = _number(metrics["commit_latency_s"], "commit_latency_s")
    else:
        raise OptionError("metrics lack the commit latency ('latency': {'commit': ...} or "
                          f"'commit_latency_s'); have: {sorted(metrics)}")
    if "bytes_logged" not in metrics:
        raise OptionError(f"metrics lack 'bytes_logged'; have: {sorted(metrics)}")
    logged = _number(metrics["bytes_logged"], "bytes_logged")
    if "page_bytes" in metrics:
        mem = _number(metrics["page_bytes"], "page_bytes", per_device=True)
    elif state is not None:
        mem = float(sum(np.dtype(p.dtype).itemsize * int(np.prod(p.shape))
                        for p in state.pages.values()))
    else:
        raise OptionError("metrics lack 'page_bytes' and no state was given to measure page "
                          f"memory; have: {sorted(metrics)}")
    return TelemetryCosts(latency_s * 1000.0, logged / MIB, mem / MIB)


def telemetry_cost(metrics: Mapping[str, Any], weights: TelemetryWeights | Any = None,
                   state: State | None = None) -> float:
    """The weighted telemetry cost ``w_lat * ms + w_log * MiB logged + w_mem * MiB held``.

    Args:
      metrics: a metrics mapping (see :func:`telemetry_costs` for the keys).
      weights: :class:`TelemetryWeights` or a 3-sequence; default ``TelemetryWeights()``.
      state: optional State to measure page memory from.

    Returns:
      The cost, a Python float ``>= 0`` for non-negative weights.
    """
    w = TelemetryWeights() if weights is None else tuple(weights)
    if len(w) != 3:
        raise OptionError(f"telemetry weights must be (latency, log, memory), got {len(w)}")
    w = [float(_check_weight(x, "telemetry weight")) for x in w]
    c = telemetry_costs(metrics, state)
    return w[0] * c.latency_ms + w[1] * c.mib_logged + w[2] * c.memory_mib


def telemetry_utility(source: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
                      weights: TelemetryWeights | Any = None) -> Utility:
    """A :class:`Utility` equal to minus the telemetry cost.

    Args:
      source: a metrics mapping, or a function returning one, e.g. ``bus.metrics``; a function
        is called each time the utility is evaluated. Page memory, when the metrics lack it,
        is measured from the State the utility is called on.
      weights: see :func:`telemetry_cost`.

    Returns:
      A :class:`Utility` with value ``-telemetry_cost(metrics)``. The metrics are read on the
      host: evaluated inside ``jit`` they are read once, at trace time (a constant of the
      compiled function), and the value has no gradient with respect to pages.
    """
    if not (callable(source) or isinstance(source, Mapping)):
        raise OptionError(f"source must be a metrics mapping or a function returning one, got "
                          f"{type(source).__name__}")
    if weights is not None:
        telemetry_cost({"commit_latency_s": 0.0, "bytes_logged": 0, "page_bytes": 0}, weights)

    def fn(s: State) -> jax.Array:
        metrics = source() if callable(source) else source
        return jnp.asarray(-telemetry_cost(metrics, weights, s), jnp.float32)

    return Utility(fn, "telemetry")
