"""Layer 5, adaptive memory: row layout optimisation and graph rewriting (``mm.adaptive``).

* layout — access telemetry (deltas, commits, an ``mm.TLog`` or a Bus) becomes a co-access
  matrix of a page's rows (:func:`row_access`); a row permutation stores co-accessed rows
  together (:func:`relayout_permutation`: reverse Cuthill-McKee, spectral or frequency order).
  The relayout is an ordinary logged ``set`` delta (:func:`apply_layout`), reversible with
  ``layout.inverse()``; callers keep addressing rows logically (:func:`translate`,
  :func:`read_logical`).
* rewriting — :func:`fuse_chains` inlines single-reader derived pages into their reader;
  :func:`drop_dead` removes derived pages no output depends on. Both keep the propagated values
  of the kept pages bit for bit.
"""

from mmsb_jax.adaptive._layout import (
    METHODS,
    Layout,
    apply_layout,
    blocks_touched,
    read_logical,
    relayout_permutation,
    row_access,
    touched_rows,
    translate,
)
from mmsb_jax.adaptive._rewrite import drop_dead, fuse_chains, live_pages, restrict_state

__all__ = [
    "METHODS",
    "Layout",
    "apply_layout",
    "blocks_touched",
    "drop_dead",
    "fuse_chains",
    "live_pages",
    "read_logical",
    "relayout_permutation",
    "restrict_state",
    "row_access",
    "touched_rows",
    "translate",
]
