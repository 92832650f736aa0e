"""mmsb-jax: a deterministic, delta-driven, differentiable state store on JAX.

Every change follows ``state x delta -> state'``; see ``docs/`` for the concepts.
"""

from mmsb_jax import (
    adaptive,
    agents,
    apps,
    core,
    errors,
    intention,
    kernels,
    planning,
    reasoning,
    runtime,
    store,
    utility,
)
from mmsb_jax._version import __version__
from mmsb_jax.core import semiring
from mmsb_jax.core.delta import (
    KINDS,
    OPS,
    PADDING,
    Delta,
    apply,
    apply_batch,
    apply_page,
    checked,
    compose,
)
from mmsb_jax.core.graph import Graph, changed_provenance
from mmsb_jax.core.pages import PageSpec, Schema, State, init_state
from mmsb_jax.core.propagate import propagate
from mmsb_jax.runtime.bus import Bus, CommitInfo
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.replay import replay
from mmsb_jax.store.tlog import TLog

__all__ = [
    "Bus",
    "CheckpointStore",
    "CommitInfo",
    "KINDS",
    "OPS",
    "PADDING",
    "Delta",
    "Graph",
    "PageSpec",
    "Schema",
    "State",
    "TLog",
    "__version__",
    "adaptive",
    "agents",
    "apps",
    "apply",
    "apply_batch",
    "apply_page",
    "checked",
    "changed_provenance",
    "compose",
    "core",
    "errors",
    "init_state",
    "intention",
    "kernels",
    "planning",
    "propagate",
    "reasoning",
    "replay",
    "runtime",
    "semiring",
    "store",
    "utility",
]
