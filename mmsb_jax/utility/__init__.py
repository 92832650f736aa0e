"""Layer 6 — utility: composable, differentiable scores of a State.

A :class:`Utility` wraps a pure function ``State -> f32[]``; utilities combine by arithmetic
and :func:`weighted_sum`, and run under ``jit``, ``vmap`` and ``grad``. :func:`grad` takes
gradients with respect to pages, :func:`grad_wrt_delta` with respect to the values of deltas
(through ``mm.apply`` and, optionally, ``mm.propagate``). The seed's cost formulas
(:func:`cache_cost`, :func:`cost_utility`, ...) are reproduced exactly, and
:func:`telemetry_utility` scores the runtime from ``bus.metrics()``. Entropy of contents and of
access distributions: :func:`entropy`, :func:`content_entropy`, :func:`access_entropy`.
"""

from mmsb_jax.utility._base import Utility, as_utility, constant, scale, weighted_sum
from mmsb_jax.utility._builtins import (
    NORMS,
    constraint_penalty,
    distance,
    goal_distance,
    page_sum,
    smoothness,
)
from mmsb_jax.utility._costs import (
    SEED_WEIGHTS,
    CostComponents,
    CostWeights,
    TelemetryCosts,
    TelemetryWeights,
    cache_cost,
    cost_utility,
    costs_from_counters,
    latency_cost,
    memory_cost,
    telemetry_cost,
    telemetry_costs,
    telemetry_utility,
)
from mmsb_jax.utility._entropy import (
    access_entropy,
    byte_entropy,
    content_entropy,
    entropy,
    entropy_reduction,
)
from mmsb_jax.utility._grad import grad, grad_wrt_delta, value_and_grad, value_and_grad_wrt_delta

__all__ = [
    "NORMS",
    "SEED_WEIGHTS",
    "CostComponents",
    "CostWeights",
    "TelemetryCosts",
    "TelemetryWeights",
    "Utility",
    "access_entropy",
    "as_utility",
    "byte_entropy",
    "cache_cost",
    "constant",
    "constraint_penalty",
    "content_entropy",
    "cost_utility",
    "costs_from_counters",
    "distance",
    "entropy",
    "entropy_reduction",
    "goal_distance",
    "grad",
    "grad_wrt_delta",
    "latency_cost",
    "memory_cost",
    "page_sum",
    "scale",
    "smoothness",
    "telemetry_cost",
    "telemetry_costs",
    "telemetry_utility",
    "value_and_grad",
    "value_and_grad_wrt_delta",
    "weighted_sum",
]
