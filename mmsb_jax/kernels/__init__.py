"""Pallas kernels for the hot merges, with pure-``jnp`` references and a dispatcher.

Public entry points (each dispatches between a Pallas kernel and the XLA reference, see
:mod:`mmsb_jax.kernels.dispatch`, and is differentiable):

* :func:`merge_rows` — the deterministic row merge of a rows delta (sorted, duplicates
  resolved, every output row written once by one program).
* :func:`masked_merge` — the masked merge ``where(mask, op(page, values), page)``.
* :func:`semiring_matmul` — tropical / max-plus matrix product in ``O(n^2)`` memory.

Backend selection: ``MMSB_KERNELS=auto|pallas|xla``, :func:`set_backend`, :func:`use_backend`,
or ``backend=`` per call. ``auto`` runs Pallas when lowered for an NVIDIA GPU and XLA
elsewhere; ``pallas`` off GPU runs the kernels with ``interpret=True``.

The kernels themselves (``row_merge_pallas``, ``masked_merge_pallas``,
``semiring_matmul_pallas``) and their references are importable from their modules for tests
and benchmarks.
"""

from .api import masked_merge, merge_rows, semiring_matmul
from .dispatch import (
    BACKENDS,
    ENV_VAR,
    get_backend,
    set_backend,
    use_backend,
)
from .masked_merge_reference import masked_merge_reference
from .row_merge_reference import merge_rows_reference
from .tropical_matmul_reference import semiring_matmul_reference

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "get_backend",
    "masked_merge",
    "masked_merge_reference",
    "merge_rows",
    "merge_rows_reference",
    "semiring_matmul",
    "semiring_matmul_reference",
    "set_backend",
    "use_backend",
]
