"""mmsb-jax: a deterministic, delta-driven, differentiable state store on JAX.

Every change follows ``state x delta -> state'``; see ``docs/`` for the concepts.
"""

from mmsb_jax import errors, intention, utility
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
from mmsb_jax.core.pages import PageSpec, Schema, State, init_state

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "OPS",
    "PADDING",
    "Delta",
    "PageSpec",
    "Schema",
    "State",
    "__version__",
    "apply",
    "apply_batch",
    "apply_page",
    "checked",
    "compose",
    "errors",
    "init_state",
    "intention",
    "semiring",
    "utility",
]
