"""Layer 8, reasoning: constraint propagation + search, Horn logic, structural inference.

Pure JAX functions that compose under ``jit``/``vmap`` (exposed as ``mm.reasoning``):

* constraints — finite-domain CSPs as boolean domain pages ``bool[V, D]`` with all-different
  groups (value offsets allowed); vectorised propagation (elimination = arc consistency on the
  pairwise constraints, plus hidden singles) and depth-first search with a fixed-capacity stack,
  as one jitted ``while_loop`` (:func:`solve_csp`); front-ends :func:`solve_sudoku`,
  :func:`solve_nqueens`, :func:`coloring_csp`.
* logic — Horn rules forward-chained to their least fixed point in the BOOLEAN semiring
  (:func:`horn_fixpoint`); Datalog-style relations: :func:`transitive_closure`,
  :func:`ancestors`, :func:`descendants` (agree with networkx).
* structure — dependency edges between pages inferred from a commit log's co-change
  statistics (:func:`infer_dependencies`, with :func:`cochange_dependencies` as the simple
  baseline), change matrices from page sets or an ``mm.TLog``; causal inference from what a
  log holds — written pages as interventions, changed derived pages, noisy-OR grow-shrink
  conditional-independence search (:func:`infer_causal`, :func:`changelog_from_bus`) — and
  exact interventional probes on a copy of a state (:func:`probe_dependencies`,
  :func:`probe_bus`).
"""

from mmsb_jax.reasoning._causal import (
    CausalFit,
    ChangeLog,
    ProbeResult,
    changelog_from_bus,
    changelog_from_sets,
    infer_causal,
    probe_bus,
    probe_dependencies,
)
from mmsb_jax.reasoning._constraints import (
    CSP,
    CSPSolution,
    Propagation,
    SearchStatus,
    check_assignment,
    coloring_csp,
    make_csp,
    nqueens_csp,
    parse_sudoku,
    propagate_csp,
    solve_csp,
    solve_nqueens,
    solve_sudoku,
    sudoku_csp,
)
from mmsb_jax.reasoning._logic import (
    HornResult,
    HornRules,
    ancestors,
    descendants,
    horn_fixpoint,
    horn_rules,
    transitive_closure,
)
from mmsb_jax.reasoning._structure import (
    CoChange,
    DependencyFit,
    changes_from_commits,
    changes_from_log,
    cochange_dependencies,
    cochange_stats,
    edge_precision_recall,
    infer_dependencies,
    transitive_reduction,
)

__all__ = [
    "CSP",
    "CSPSolution",
    "CausalFit",
    "ChangeLog",
    "CoChange",
    "DependencyFit",
    "HornResult",
    "HornRules",
    "ProbeResult",
    "Propagation",
    "SearchStatus",
    "ancestors",
    "changelog_from_bus",
    "changelog_from_sets",
    "changes_from_commits",
    "changes_from_log",
    "check_assignment",
    "cochange_dependencies",
    "cochange_stats",
    "coloring_csp",
    "descendants",
    "edge_precision_recall",
    "horn_fixpoint",
    "horn_rules",
    "infer_causal",
    "infer_dependencies",
    "make_csp",
    "nqueens_csp",
    "parse_sudoku",
    "probe_bus",
    "probe_dependencies",
    "propagate_csp",
    "solve_csp",
    "solve_nqueens",
    "solve_sudoku",
    "sudoku_csp",
    "transitive_closure",
    "transitive_reduction",
]

_RENAMED = {"constraints": "_constraints", "logic": "_logic", "structure": "_structure"}


def __getattr__(name: str):  # deprecation shim for the old public module names
    if name in _RENAMED:
        import importlib
        import warnings

        warnings.warn(
            f"mmsb_jax.reasoning.{name} is deprecated: use the names re-exported by "
            f"mmsb_jax.reasoning (mm.reasoning.<name>) instead",
            DeprecationWarning, stacklevel=2)
        return importlib.import_module(f"mmsb_jax.reasoning.{_RENAMED[name]}")
    raise AttributeError(f"module 'mmsb_jax.reasoning' has no attribute {name!r}")
