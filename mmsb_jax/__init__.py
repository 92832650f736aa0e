"""mmsb-jax: a deterministic, delta-driven, differentiable state store on JAX.

Every change follows ``state x delta -> state'``; see ``docs/`` for the concepts.
"""

import importlib
from typing import TYPE_CHECKING, Any

from mmsb_jax import core, errors, kernels, runtime, store
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

# The layers above the runtime load on first use (``mm.agents``, ``from mmsb_jax import
# planning``): a script that only needs the Bus does not import flax, optax or mctx.
_LAZY = ("adaptive", "agents", "apps", "intention", "planning", "reasoning", "utility")

if TYPE_CHECKING:
    from mmsb_jax import adaptive, agents, apps, intention, planning, reasoning, utility


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"mmsb_jax.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'mmsb_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
