"""Finite-domain constraint satisfaction: vectorised propagation and search in one jitted loop.

A problem is a boolean *domain page* ``domains: bool[V, D]`` (``domains[v, a]``: variable ``v``
may still take value ``a``) and a set of *all-different groups with offsets*:
``groups: int32[G, K]`` names the variables of each group (``-1`` pads a short group) and
``offsets: int32[G, K]`` shifts their values, so group ``g`` requires the numbers
``x[groups[g, k]] + offsets[g, k]`` to be pairwise different. That one constraint kind covers
Sudoku (rows, columns and boxes, offsets ``0``), N-queens (one queen per column: offsets ``0``;
diagonals: offsets ``+r`` and ``-r``), graph colouring (one group of two per edge) and Latin
squares. A group may also be *exact* (``exact: bool[G]``): it has exactly ``D`` members, offsets
``0``, and every value is taken by exactly one member (Sudoku units, the queens' columns).

Propagation (:func:`propagate_csp`) repeats two vectorised rules until nothing changes, in a
``lax.while_loop``:

* *elimination* — a variable whose domain is a single value removes the (shifted) value from
  every other member of its groups. On the binary "not equal" constraints the groups stand for,
  this is exactly arc consistency: value ``b`` of ``w`` loses its last support in ``u`` only
  when ``u``'s domain is the single conflicting value.
* *hidden singles* — in an exact group, a value that only one member can still take is forced
  on that member; a value that no member can take is a contradiction.

A domain that becomes empty, a value with no place in an exact group or a variable forced to two
values marks the page as failed.

Search (:func:`solve_csp`) is depth-first with an explicit, fixed-capacity stack of domain pages
``[S, V, D]`` inside one ``lax.while_loop``, so the whole solver is a single jitted function with
no Python recursion: propagate the current page; if it failed, pop the most recent alternative;
if every domain is a single value, stop; otherwise pick the unfixed variable with the smallest
domain (lowest index on ties), continue with its lowest value and push the page without that
value as the alternative. Each branching removes at least one value on both sides, so a path
holds at most ``V * (D - 1)`` alternatives and the default stack never overflows. A step budget
(``max_steps`` propagated pages) ends runaway searches with a clear status instead of hanging.
Everything vmaps: ``jax.vmap(solve_csp)`` solves a batch of problems at once.

>>> import numpy as np
>>> solution = solve_nqueens(6)
>>> sorted(solution.tolist()) == list(range(6))
True
"""

from __future__ import annotations

import enum
import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax.errors import (
    DTypeError,
    GivensConflictError,
    InvalidProblemError,
    SearchLimitError,
    ShapeError,
    UnsatisfiableError,
)

__all__ = [
    "CSP",
    "CSPSolution",
    "Propagation",
    "SearchStatus",
    "check_assignment",
    "coloring_csp",
    "make_csp",
    "nqueens_csp",
    "parse_sudoku",
    "propagate_csp",
    "solve_csp",
    "solve_nqueens",
    "solve_sudoku",
    "sudoku_csp",
]

DEFAULT_MAX_STEPS = 200_000
"""Default budget of propagated search nodes for :func:`solve_csp` and the puzzle solvers."""


class SearchStatus(enum.IntEnum):
    """How a search ended (the ``status`` field of :class:`CSPSolution`)."""

    RUNNING = 0
    """Internal: the loop is still going (never returned)."""
    SOLVED = 1
    """A complete assignment satisfying every constraint was found."""
    UNSATISFIABLE = 2
    """Every branch failed: the problem has no solution."""
    STEP_LIMIT = 3
    """``max_steps`` pages were propagated without an answer."""
    STACK_FULL = 4
    """The alternative stack was full (only with a ``stack_size`` below the safe default)."""


class CSP(NamedTuple):
    """A finite-domain CSP of all-different groups with value offsets (a pytree).

    Group ``g`` requires ``x[groups[g, k]] + offsets[g, k]`` to be pairwise different over its
    members ``k`` with ``groups[g, k] >= 0``. An exact group additionally has ``D`` members and
    offsets ``0``, and every value appears exactly once in it (enables hidden singles).

    Attributes:
      domains: ``bool[V, D]`` the values each variable may take.
      groups: ``int32[G, K]`` variable indices of each group; ``-1`` is padding.
      offsets: ``int32[G, K]`` value offsets of the members (``0`` for plain all-different).
      exact: ``bool[G]`` whether each group is a permutation of all ``D`` values.
    """

    domains: jax.Array  # bool[V, D]
    groups: jax.Array  # int32[G, K]
    offsets: jax.Array  # int32[G, K]
    exact: jax.Array  # bool[G]


class Propagation(NamedTuple):
    """Result of :func:`propagate_csp`.

    Attributes:
      domains: ``bool[V, D]`` the pruned domains at the fixed point (or where it failed).
      failed: ``bool[]`` whether propagation proved the page inconsistent.
      iterations: ``int32[]`` propagation rounds run.
    """

    domains: jax.Array  # bool[V, D]
    failed: jax.Array  # bool[]
    iterations: jax.Array  # int32[]


class CSPSolution(NamedTuple):
    """Result of :func:`solve_csp`.

    Attributes:
      assignment: ``int32[V]`` the value of each variable when ``status == SOLVED``, else ``-1``.
      domains: ``bool[V, D]`` the solved page (one-hot rows) when solved, else the last page
        searched.
      status: ``int32[]`` a :class:`SearchStatus`.
      steps: ``int32[]`` search nodes (propagated pages) visited.
      max_depth: ``int32[]`` the deepest the alternative stack got.
    """

    assignment: jax.Array  # int32[V]
    domains: jax.Array  # bool[V, D]
    status: jax.Array  # int32[]
    steps: jax.Array  # int32[]
    max_depth: jax.Array  # int32[]


# -- validation (host side) ------------------------------------------------------------------

def _is_concrete(*xs: Any) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _as_int_array(x: Any, what: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        raise DTypeError(f"{what} must be an integer array, got {x.dtype}")
    return x.astype(jnp.int32)


def _check_csp(csp: CSP) -> CSP:
    """Shape/dtype checks always; value checks when the arrays are concrete."""
    if not isinstance(csp, CSP):
        raise InvalidProblemError(f"expected a mm.reasoning.CSP, got {type(csp).__name__}")
    domains = jnp.asarray(csp.domains)
    if domains.dtype != jnp.bool_:
        raise DTypeError(f"domains must be bool[V, D], got {domains.dtype}")
    if domains.ndim != 2 or domains.shape[0] < 1 or domains.shape[1] < 1:
        raise ShapeError(f"domains must be bool[V, D] with V, D >= 1, got {tuple(domains.shape)}")
    num_vars, num_values = domains.shape
    groups = _as_int_array(csp.groups, "groups")
    offsets = _as_int_array(csp.offsets, "offsets")
    exact = jnp.asarray(csp.exact)
    if groups.ndim != 2:
        raise ShapeError(f"groups must be int32[G, K], got shape {tuple(groups.shape)}")
    if offsets.shape != groups.shape:
        raise ShapeError(f"offsets {tuple(offsets.shape)} must have the shape of groups "
                         f"{tuple(groups.shape)}")
    if exact.dtype != jnp.bool_ or exact.shape != groups.shape[:1]:
        raise ShapeError(f"exact must be bool[G={groups.shape[0]}], got {exact.dtype}"
                         f"{list(exact.shape)}")
    if _is_concrete(groups, offsets, exact):
        g = np.asarray(groups)
        bad = g[(g < -1) | (g >= num_vars)]
        if bad.size:
            raise InvalidProblemError(f"group members {sorted(set(bad.tolist()))[:8]} outside "
                                      f"[-1, V={num_vars}) (-1 marks padding)")
        for row, members in enumerate(g):
            real = members[members >= 0]
            if len(np.unique(real)) != len(real):
                raise InvalidProblemError(f"group {row} names a variable twice: {real.tolist()}")
        off = np.asarray(offsets)
        for row in np.nonzero(np.asarray(exact))[0]:
            real = g[row] >= 0
            if real.sum() != num_values or np.any(off[row][real] != 0):
                raise InvalidProblemError(
                    f"exact group {row} must have exactly D={num_values} members and offsets 0; "
                    f"it has {int(real.sum())} members, offsets {off[row][real].tolist()}")
    return CSP(domains, groups, offsets, exact)


def make_csp(domains: Any, groups: Any, *, offsets: Any = None, exact: Any = None) -> CSP:
    """Build and validate a :class:`CSP`.

    Args:
      domains: ``bool[V, D]`` the initial domains.
      groups: ``int[G, K]`` all-different groups of variable indices, ``-1`` = padding.
      offsets: ``int[G, K]`` value offsets (default all ``0``).
      exact: ``bool[G]`` exact (permutation) groups (default all ``False``).

    Returns:
      The validated :class:`CSP` with ``int32`` index arrays.

    Raises:
      DTypeError: domains not bool, or non-integer groups/offsets.
      ShapeError: inconsistent shapes.
      InvalidProblemError: a member outside ``[-1, V)``, a variable twice in one group, or an
        exact group without ``D`` members and zero offsets.

    >>> csp = make_csp(jnp.ones((3, 3), bool), [[0, 1, 2]], exact=[True])
    >>> csp.groups.shape, csp.offsets.tolist()
    ((1, 3), [[0, 0, 0]])
    """
    groups = jnp.asarray(groups)
    if groups.ndim == 2 and groups.size == 0:
        groups = groups.astype(jnp.int32)
    shape = groups.shape
    offsets = jnp.zeros(shape, jnp.int32) if offsets is None else offsets
    exact = jnp.zeros(shape[:1], bool) if exact is None else jnp.asarray(exact)
    return _check_csp(CSP(domains, groups, offsets, exact))


# -- propagation -----------------------------------------------------------------------------

def _scatter_to_vars(per_member: jax.Array, groups: jax.Array, num_vars: int) -> jax.Array:
    """OR ``[G, K, D]`` member rows into ``[V, D]`` variable rows (padding dropped)."""
    ids = jnp.where(groups >= 0, groups, num_vars).reshape(-1)
    rows = per_member.reshape(ids.shape[0], per_member.shape[-1])
    return jax.ops.segment_max(rows, ids, num_segments=num_vars,
                               indices_are_sorted=False).astype(bool)


def _eliminations(fixed: jax.Array, groups: jax.Array, offsets: jax.Array) -> jax.Array:
    """``bool[V, D]``: values ruled out because a group peer is fixed to the shifted value."""
    num_vars, num_values = fixed.shape
    valid = groups >= 0
    members = jnp.where(valid, groups, 0)
    fixed_m = fixed[members] & valid[..., None]  # [G, K, D]
    # Member i loses value b when member j != i is fixed to a with a + off[j] == b + off[i].
    values = jnp.arange(num_values, dtype=jnp.int32)
    source = (values[None, None, None, :] + offsets[:, :, None, None]
              - offsets[:, None, :, None])  # [G, I, J, D]
    in_range = (source >= 0) & (source < num_values)
    k = groups.shape[1]
    peer = ~jnp.eye(k, dtype=bool)[None, :, :, None]  # [1, I, J, 1]
    fixed_j = jnp.broadcast_to(fixed_m[:, None, :, :], source.shape)
    hit = jnp.take_along_axis(fixed_j, jnp.clip(source, 0, num_values - 1), axis=-1)
    eliminated = jnp.any(hit & in_range & peer, axis=2)  # [G, I, D]
    return _scatter_to_vars(eliminated, groups, num_vars)


def _propagation_step(domains: jax.Array, csp: CSP) -> tuple[jax.Array, jax.Array]:
    num_vars, _ = domains.shape
    sizes = jnp.sum(domains, axis=1, dtype=jnp.int32)
    fixed = domains & (sizes == 1)[:, None]
    domains = domains & ~_eliminations(fixed, csp.groups, csp.offsets)

    valid = csp.groups >= 0
    members = jnp.where(valid, csp.groups, 0)
    in_group = domains[members] & valid[..., None]  # [G, K, D]
    holders = jnp.sum(in_group, axis=1, dtype=jnp.int32)  # [G, D]
    exact = csp.exact[:, None]
    unique = exact & (holders == 1)
    forced = _scatter_to_vars(in_group & unique[:, None, :], csp.groups, num_vars)  # [V, D]
    has_forced = jnp.any(forced, axis=1)
    domains = jnp.where(has_forced[:, None], forced, domains)

    failed = (jnp.any(jnp.sum(domains, axis=1) == 0)
              | jnp.any(exact & (holders == 0))
              | jnp.any(jnp.sum(forced, axis=1) > 1))
    return domains, failed


def _propagate(domains: jax.Array, csp: CSP) -> Propagation:
    def cond(carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, changed, failed, _ = carry
        return changed & ~failed

    def body(carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array]):
        dom, _, _, it = carry
        new, failed = _propagation_step(dom, csp)
        return new, jnp.any(new != dom), failed, it + 1

    dom, _, failed, it = lax.while_loop(
        cond, body, (domains, jnp.bool_(True), jnp.bool_(False), jnp.int32(0)))
    return Propagation(dom, failed, it)


@jax.jit
def _propagate_jit(csp: CSP) -> Propagation:
    return _propagate(csp.domains, csp)


def propagate_csp(csp: CSP) -> Propagation:
    """Prune the domains to the propagation fixed point (elimination + hidden singles).

    Pure and jittable (one ``lax.while_loop``; at most ``V * D`` rounds, since each round that
    continues removes a value). Values are only ever removed, never added, so the result is a
    sub-page of ``csp.domains`` that keeps every solution.

    Args:
      csp: the problem; ``csp.domains: bool[V, D]``.

    Returns:
      :class:`Propagation` ``(domains: bool[V, D], failed: bool[], iterations: int32[])``.

    Raises:
      DTypeError, ShapeError, InvalidProblemError: a malformed :class:`CSP`.

    >>> p = propagate_csp(sudoku_csp(parse_sudoku("12345678" + "0" * 73)))
    >>> p.domains[8].tolist()  # the last cell of row 0 can only be 9
    [False, False, False, False, False, False, False, False, True]
    """
    return _propagate_jit(_check_csp(csp))


# -- search ----------------------------------------------------------------------------------

def _safe_stack_size(num_vars: int, num_values: int) -> int:
    return num_vars * (num_values - 1) + 1


def _search(csp: CSP, max_steps: jax.Array, stack_size: int) -> CSPSolution:
    num_vars, num_values = csp.domains.shape
    values = jnp.arange(num_values, dtype=jnp.int32)
    stack = jnp.zeros((stack_size, num_vars, num_values), bool)
    running = jnp.int32(SearchStatus.RUNNING)

    def cond(carry: tuple[jax.Array, ...]) -> jax.Array:
        return carry[3] == running

    def body(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        stack, sp, dom, _, steps, depth = carry
        dom, failed, _ = _propagate(dom, csp)
        steps = steps + 1
        sizes = jnp.sum(dom, axis=1, dtype=jnp.int32)
        solved = ~failed & jnp.all(sizes == 1)
        branch = ~failed & ~solved

        # Branch on the unfixed variable with the fewest values; try its lowest value first.
        var = jnp.argmin(jnp.where(sizes > 1, sizes, num_values + 1))
        val = jnp.argmax(dom[var])
        chosen = values == val
        child = dom.at[var].set(chosen)
        alternative = dom.at[var].set(dom[var] & ~chosen)
        full = branch & (sp >= stack_size)
        push = branch & ~full
        slot = jnp.minimum(sp, stack_size - 1)
        stack = lax.dynamic_update_index_in_dim(
            stack, jnp.where(push, alternative, stack[slot]), slot, 0)

        pop = failed & (sp > 0)
        popped = stack[jnp.maximum(sp - 1, 0)]
        next_dom = jnp.where(push, child, jnp.where(pop, popped, dom))
        sp = sp + push.astype(jnp.int32) - pop.astype(jnp.int32)

        status = jnp.select(
            [solved, failed & ~pop, full, steps >= max_steps],
            [jnp.int32(SearchStatus.SOLVED), jnp.int32(SearchStatus.UNSATISFIABLE),
             jnp.int32(SearchStatus.STACK_FULL), jnp.int32(SearchStatus.STEP_LIMIT)],
            running)
        # A solved page stays in `dom`; on other endings keep the page that was searched.
        next_dom = jnp.where(status == running, next_dom, dom)
        return stack, sp, next_dom, status, steps, jnp.maximum(depth, sp)

    init = (stack, jnp.int32(0), csp.domains, running, jnp.int32(0), jnp.int32(0))
    _, _, dom, status, steps, depth = lax.while_loop(cond, body, init)
    solved = status == SearchStatus.SOLVED
    assignment = jnp.where(solved, jnp.argmax(dom, axis=1).astype(jnp.int32), -1)
    return CSPSolution(assignment, dom, status, steps, depth)


@functools.partial(jax.jit, static_argnums=(2,))
def _solve_jit(csp: CSP, max_steps: jax.Array, stack_size: int) -> CSPSolution:
    return _search(csp, max_steps, stack_size)


def _check_limits(csp: CSP, max_steps: Any, stack_size: int | None) -> tuple[Any, int]:
    num_vars, num_values = csp.domains.shape
    if stack_size is None:
        stack_size = _safe_stack_size(num_vars, num_values)
    try:
        stack_size = operator.index(stack_size)
    except TypeError:
        raise InvalidProblemError(f"stack_size must be a Python int, got "
                                  f"{type(stack_size).__name__}") from None
    if stack_size < 1:
        raise InvalidProblemError(f"stack_size must be >= 1, got {stack_size}")
    if _is_concrete(max_steps):
        if int(max_steps) < 1:
            raise InvalidProblemError(f"max_steps must be >= 1, got {int(max_steps)}")
    return jnp.asarray(max_steps, jnp.int32), stack_size


def solve_csp(csp: CSP, *, max_steps: int | jax.Array = DEFAULT_MAX_STEPS,
              stack_size: int | None = None) -> CSPSolution:
    """Find one solution by propagation + depth-first search, as one jitted ``while_loop``.

    Deterministic: the same problem always yields the same solution (smallest-domain variable,
    lowest value first). Never raises on an unsolvable problem: the ``status`` field says how
    the search ended, so it composes under ``jit``/``vmap``; the puzzle front-ends
    (:func:`solve_sudoku`, :func:`solve_nqueens`) turn the status into exceptions.

    Args:
      csp: the problem (``domains: bool[V, D]``).
      max_steps: the most search nodes (propagated pages) to visit; a traced value is fine,
        changing it does not recompile.
      stack_size: capacity ``S`` of the alternative stack (static). The default
        ``V * (D - 1) + 1`` can never overflow; a smaller one saves memory and may end with
        ``STACK_FULL``.

    Returns:
      :class:`CSPSolution` ``(assignment: int32[V], domains: bool[V, D], status: int32[],
      steps: int32[], max_depth: int32[])``.

    Raises:
      DTypeError, ShapeError, InvalidProblemError: a malformed :class:`CSP`, ``max_steps < 1``
        or ``stack_size < 1``.

    >>> sol = solve_csp(nqueens_csp(5))
    >>> SearchStatus(int(sol.status)).name, bool(check_assignment(nqueens_csp(5), sol.assignment))
    ('SOLVED', True)
    """
    csp = _check_csp(csp)
    max_steps, stack_size = _check_limits(csp, max_steps, stack_size)
    return _solve_jit(csp, max_steps, stack_size)


@jax.jit
def _check_assignment_jit(csp: CSP, assignment: jax.Array) -> jax.Array:
    num_vars, num_values = csp.domains.shape
    in_range = (assignment >= 0) & (assignment < num_values)
    safe = jnp.clip(assignment, 0, num_values - 1)
    allowed = csp.domains[jnp.arange(num_vars), safe]
    valid = csp.groups >= 0
    shifted = assignment[jnp.where(valid, csp.groups, 0)] + csp.offsets  # [G, K]
    k = csp.groups.shape[1]
    pair = valid[:, :, None] & valid[:, None, :] & ~jnp.eye(k, dtype=bool)[None]
    clash = pair & (shifted[:, :, None] == shifted[:, None, :])
    return jnp.all(in_range & allowed) & ~jnp.any(clash)


def check_assignment(csp: CSP, assignment: Any) -> jax.Array:
    """Whether ``assignment`` satisfies every constraint of ``csp`` (jittable).

    Checks each value lies in its variable's domain (so givens are respected) and every group's
    shifted values are pairwise different. Exact groups need nothing more: ``D`` different
    values out of ``D`` are a permutation.

    Args:
      csp: the problem (``domains: bool[V, D]``).
      assignment: ``int[V]`` a value per variable.

    Returns:
      ``bool[]``.

    Raises:
      ShapeError: ``assignment`` is not ``[V]``.
      DTypeError: not integers.

    >>> csp = make_csp(jnp.ones((2, 2), bool), [[0, 1]])
    >>> bool(check_assignment(csp, [0, 1])), bool(check_assignment(csp, [1, 1]))
    (True, False)
    """
    csp = _check_csp(csp)
    assignment = _as_int_array(assignment, "assignment")
    if assignment.shape != csp.domains.shape[:1]:
        raise ShapeError(f"assignment must be [V={csp.domains.shape[0]}], got "
                         f"{tuple(assignment.shape)}")
    return _check_assignment_jit(csp, assignment)


def _raise_for_status(status: int, steps: int, what: str) -> None:
    if status == SearchStatus.SOLVED:
        return
    if status == SearchStatus.UNSATISFIABLE:
        raise UnsatisfiableError(f"{what} has no solution (search exhausted after {steps} "
                                 "nodes)")
    if status == SearchStatus.STEP_LIMIT:
        raise SearchLimitError(f"{what}: no answer within max_steps={steps} search nodes; "
                               "raise max_steps")
    raise SearchLimitError(f"{what}: the alternative stack filled up after {steps} nodes; "
                           "use the default stack_size")


# -- Sudoku ----------------------------------------------------------------------------------

def _sudoku_groups() -> np.ndarray:
    cells = np.arange(81, dtype=np.int32).reshape(9, 9)
    rows = list(cells)
    cols = list(cells.T)
    boxes = [cells[r:r + 3, c:c + 3].reshape(-1) for r in range(0, 9, 3) for c in range(0, 9, 3)]
    return np.stack(rows + cols + boxes)


_SUDOKU_GROUPS = _sudoku_groups()  # int32[27, 9]: rows, columns, boxes
_SUDOKU_UNIT_NAMES = ([f"row {r}" for r in range(9)] + [f"column {c}" for c in range(9)]
                      + [f"box {b}" for b in range(9)])


def parse_sudoku(text: str) -> np.ndarray:
    """Parse an 81-character puzzle string (digits; ``0`` or ``.`` for blanks) into a grid.

    Whitespace and ``|``/``-``/``+`` separators are ignored, so pretty-printed grids parse.

    Args:
      text: the puzzle, row by row.

    Returns:
      ``int32[9, 9]`` with ``0`` for empty cells.

    Raises:
      InvalidProblemError: not exactly 81 cells, or a character that is not a digit or ``.``.

    >>> parse_sudoku("." * 80 + "5")[8, 8]
    np.int32(5)
    """
    if not isinstance(text, str):
        raise InvalidProblemError(f"expected a puzzle string, got {type(text).__name__}")
    cells = [ch for ch in text if not ch.isspace() and ch not in "|-+"]
    bad = sorted({ch for ch in cells if ch != "." and not ch.isdigit()})
    if bad:
        raise InvalidProblemError(f"puzzle has characters other than digits and '.': {bad}")
    if len(cells) != 81:
        raise InvalidProblemError(f"a Sudoku has 81 cells, the string has {len(cells)}")
    return np.array([0 if ch == "." else int(ch) for ch in cells], np.int32).reshape(9, 9)


def _check_grid(grid: Any) -> jax.Array:
    grid = jnp.asarray(grid)
    if grid.dtype == jnp.bool_ or not jnp.issubdtype(grid.dtype, jnp.integer):
        raise DTypeError(f"a Sudoku grid must be an integer array, got {grid.dtype}")
    if grid.shape != (9, 9):
        raise ShapeError(f"a Sudoku grid must be [9, 9], got {tuple(grid.shape)}")
    if _is_concrete(grid):
        host = np.asarray(grid)
        bad = np.argwhere((host < 0) | (host > 9))
        if bad.size:
            r, c = bad[0]
            raise InvalidProblemError(f"cell ({r}, {c}) holds {int(host[r, c])}; Sudoku cells "
                                      "hold 1..9, or 0 for empty")
    return grid.astype(jnp.int32)


def _givens_conflicts(grid: np.ndarray) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    flat = grid.reshape(-1)
    found = []
    for name, unit in zip(_SUDOKU_UNIT_NAMES, _SUDOKU_GROUPS, strict=True):
        seen: dict[int, int] = {}
        for cell in unit:
            value = int(flat[cell])
            if value == 0:
                continue
            if value in seen:
                first = seen[value]
                found.append((name, divmod(int(first), 9), divmod(int(cell), 9)))
            else:
                seen[value] = cell
    return found


def sudoku_csp(grid: Any) -> CSP:
    """The :class:`CSP` of a 9x9 Sudoku: 81 cells, values 0..8 (digit - 1), 27 exact groups.

    Jittable and vmappable in ``grid`` (the groups are constants), so
    ``jax.vmap(lambda g: solve_csp(sudoku_csp(g)))`` solves a batch of puzzles.

    Args:
      grid: ``int[9, 9]`` digits ``1..9``, ``0`` for empty.

    Returns:
      :class:`CSP` with ``domains: bool[81, 9]``, ``groups: int32[27, 9]`` (rows, columns,
      boxes).

    Raises:
      ShapeError, DTypeError, InvalidProblemError: a grid that is not ``int[9, 9]`` of
        ``0..9``.

    >>> sudoku_csp(parse_sudoku("5" + "0" * 80)).domains[0].tolist()
    [False, False, False, False, True, False, False, False, False]
    """
    grid = _check_grid(grid)
    flat = grid.reshape(81)
    digits = jnp.arange(1, 10, dtype=jnp.int32)
    domains = (flat[:, None] == 0) | (flat[:, None] == digits[None, :])
    return CSP(domains, jnp.asarray(_SUDOKU_GROUPS), jnp.zeros((27, 9), jnp.int32),
               jnp.ones((27,), bool))


def solve_sudoku(grid: Any, *, max_steps: int = DEFAULT_MAX_STEPS) -> jax.Array:
    """Solve a 9x9 Sudoku (``mm.reasoning.solve_sudoku``).

    The grid is checked on the host first; the search then runs as one compiled function
    (:func:`solve_csp`; one compilation serves every puzzle). The solution keeps every given
    and satisfies every row, column and box.

    Args:
      grid: ``int[9, 9]`` digits ``1..9``, ``0`` for empty (a string works via
        :func:`parse_sudoku`).
      max_steps: search-node budget (see :func:`solve_csp`).

    Returns:
      ``int32[9, 9]`` the solved grid.

    Raises:
      ShapeError: the grid is not ``[9, 9]``.
      DTypeError: not integers.
      InvalidProblemError: a value outside ``0..9``.
      GivensConflictError: two equal givens in one row, column or box (also an
        ``UnsatisfiableError``); ``conflicts`` lists the cell pairs.
      UnsatisfiableError: the puzzle has no solution.
      SearchLimitError: no answer within ``max_steps``.

    >>> easy = ("530070000600195000098000060800060003400803001"
    ...         "700020006060000280000419005000080079")
    >>> solve_sudoku(parse_sudoku(easy))[0].tolist()
    [5, 3, 4, 6, 7, 8, 9, 1, 2]
    """
    if isinstance(grid, str):
        grid = parse_sudoku(grid)
    grid = _check_grid(grid)
    conflicts = _givens_conflicts(np.asarray(grid))
    if conflicts:
        unit, a, b = conflicts[0]
        raise GivensConflictError(
            f"the givens conflict: cells {a} and {b} both hold {int(np.asarray(grid)[a])} in "
            f"{unit} ({len(conflicts)} conflict(s) in all)",
            conflicts=tuple((a, b) for _, a, b in conflicts))
    result = solve_csp(sudoku_csp(grid), max_steps=max_steps)
    _raise_for_status(int(result.status), int(result.steps), "this Sudoku")
    return (result.assignment + 1).reshape(9, 9)


# -- N-queens and colouring ------------------------------------------------------------------

def _check_positive(n: Any, what: str) -> int:
    try:
        n = operator.index(n)
    except TypeError:
        raise InvalidProblemError(f"{what} must be a Python int, got {type(n).__name__}"
                                  ) from None
    if n < 1:
        raise InvalidProblemError(f"{what} must be >= 1, got {n}")
    return n


def _check_capacity(n: int, capacity: int | None) -> int:
    if capacity is None:
        return n
    capacity = _check_positive(capacity, "capacity")
    if capacity < n:
        raise InvalidProblemError(f"capacity {capacity} is smaller than n = {n}")
    return capacity


def nqueens_csp(n: int, *, capacity: int | None = None) -> CSP:
    """The :class:`CSP` of ``n`` queens: variable ``r`` is the column of the queen in row ``r``.

    Three groups over the rows: columns differ (exact), ``x[r] + r`` differ (one queen per
    anti-diagonal) and ``x[r] - r`` differ (one per diagonal). Rows differ by construction.

    With ``capacity = C > n`` the problem is padded to ``C`` variables and values so that every
    board size up to ``C`` has the same shapes and shares one compilation: rows ``>= n`` are
    inert (domain ``{0}``, in no group; ``-1`` in the groups), columns ``>= n`` are removed
    from the real rows, and the column group is exact only when ``n == C``.

    Args:
      n: board size (``>= 1``).
      capacity: ``C >= n`` (default ``n``).

    Returns:
      :class:`CSP` with ``domains: bool[C, C]`` and ``groups: int32[3, C]``.

    Raises:
      InvalidProblemError: ``n < 1``, ``capacity < n``, or not ints.

    >>> nqueens_csp(4).offsets.tolist()
    [[0, 0, 0, 0], [0, 1, 2, 3], [0, -1, -2, -3]]
    >>> nqueens_csp(2, capacity=3).groups.tolist()
    [[0, 1, -1], [0, 1, -1], [0, 1, -1]]
    """
    n = _check_positive(n, "n")
    size = _check_capacity(n, capacity)
    rows = np.arange(size, dtype=np.int32)
    real = rows < n
    members = np.where(real, rows, -1)
    groups = np.stack([members, members, members])
    offsets = np.stack([np.zeros(size, np.int32), np.where(real, rows, 0),
                        np.where(real, -rows, 0)])
    domains = np.where(real[:, None], real[None, :], rows[None, :] == 0)
    return CSP(jnp.asarray(domains), jnp.asarray(groups), jnp.asarray(offsets),
               jnp.asarray([n == size, False, False]))


def solve_nqueens(n: int, *, capacity: int | None = None,
                  max_steps: int = DEFAULT_MAX_STEPS) -> jax.Array:
    """Place ``n`` non-attacking queens on an ``n x n`` board.

    Args:
      n: board size (``>= 1``).
      capacity: pad the problem to this size so that many ``n`` share one compilation
        (see :func:`nqueens_csp`).
      max_steps: search-node budget (see :func:`solve_csp`).

    Returns:
      ``int32[n]``: the column of the queen in each row.

    Raises:
      InvalidProblemError: ``n < 1`` or ``capacity < n``.
      UnsatisfiableError: no placement exists (``n = 2, 3``).
      SearchLimitError: no answer within ``max_steps``.

    >>> solve_nqueens(4).tolist()
    [1, 3, 0, 2]
    """
    csp = nqueens_csp(n, capacity=capacity)
    result = solve_csp(csp, max_steps=max_steps)
    _raise_for_status(int(result.status), int(result.steps), f"{n}-queens")
    return result.assignment[:n]


def coloring_csp(edges: Any, num_nodes: int, num_colors: int) -> CSP:
    """The :class:`CSP` of graph colouring: adjacent nodes get different colours.

    Each edge becomes an all-different group of two; self-loops are rejected (no colouring
    exists) and duplicate edges are harmless.

    Args:
      edges: ``int[E, 2]`` node pairs in ``[0, num_nodes)``.
      num_nodes: ``V``.
      num_colors: ``D``.

    Returns:
      :class:`CSP` with ``domains: bool[V, D]`` and ``groups: int32[E, 2]``.

    Raises:
      ShapeError: ``edges`` is not ``[E, 2]``.
      InvalidProblemError: a node outside ``[0, V)``, a self-loop, or ``V``/``D`` below 1.

    >>> sol = solve_csp(coloring_csp([[0, 1], [1, 2], [2, 0]], 3, 3))
    >>> sorted(sol.assignment.tolist())
    [0, 1, 2]
    """
    num_nodes = _check_positive(num_nodes, "num_nodes")
    num_colors = _check_positive(num_colors, "num_colors")
    edges = _as_int_array(np.asarray(edges, dtype=np.int64).reshape(-1, 2)
                          if np.size(edges) == 0 else edges, "edges")
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ShapeError(f"edges must be int[E, 2], got shape {tuple(edges.shape)}")
    host = np.asarray(edges)
    if np.any((host < 0) | (host >= num_nodes)):
        raise InvalidProblemError(f"edge endpoints must lie in [0, {num_nodes})")
    if np.any(host[:, 0] == host[:, 1]):
        raise InvalidProblemError("a self-loop can never be coloured")
    return make_csp(jnp.ones((num_nodes, num_colors), bool), edges)
