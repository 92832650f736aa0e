"""Layers 0-4: pure, jittable pages, deltas, semirings, graph, propagation and transactions.

Nothing here touches the disk or holds mutable state: every function is a pure function of
pytrees that runs eagerly and under ``jit``/``vmap``/``grad``. The durable store
(:mod:`mmsb_jax.store`) and the Bus (:mod:`mmsb_jax.runtime`) are built on these.
``propagate`` is ``mm.propagate`` (the name ``mmsb_jax.core.propagate`` stays the module).
"""

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
    validate,
    validate_deltas,
)
from mmsb_jax.core.graph import Graph, changed_provenance
from mmsb_jax.core.pages import PageMap, PageSpec, Schema, State, init_state
from mmsb_jax.core.transaction import (
    apply_stacked,
    apply_transaction,
    apply_transactions,
    stack_transactions,
    txn_structure,
)

__all__ = [
    "KINDS",
    "OPS",
    "PADDING",
    "Delta",
    "Graph",
    "PageMap",
    "PageSpec",
    "Schema",
    "State",
    "apply",
    "apply_batch",
    "apply_page",
    "apply_stacked",
    "apply_transaction",
    "apply_transactions",
    "changed_provenance",
    "checked",
    "compose",
    "init_state",
    "semiring",
    "stack_transactions",
    "txn_structure",
    "validate",
    "validate_deltas",
]
