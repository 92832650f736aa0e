"""Constraint propagation and search: Sudoku, N-queens, colouring, and the generic CSP API."""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb_jax import errors
from mmsb_jax.reasoning import _constraints as C

# Puzzles as published (row by row; '0' or '.' is empty).
PUZZLES = {
    "easy": "530070000600195000098000060800060003400803001700020006060000280000419005000080079",
    # Arto Inkala's "world's hardest Sudoku" (2012), 21 clues.
    "inkala": "800000000003600000070090200050007000000045700000100030001000068008500010090000400",
    # 17-clue puzzles (the minimum for a unique solution), from Gordon Royle's collection.
    "royle17_a": "000000010400000000020000000000050407008000300"
                 "001090000300400200050100000000806000",
    "royle17_b": "000000012000035000000600070700000300000400800"
                 "100000000000120000080000040050000600",
    # 17 clues, the first of Norvig's "top95" hard set; needs real search.
    "top95_1": "4.....8.5.3..........7......2.....6.....8.4......1.......6.3.7.5..2.....1.4......",
    # "AI Escargot" (Inkala, 2006).
    "escargot": "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3..",
}

QUEENS_CAPACITY = 10  # every board size up to this shares one compilation


def assert_valid_sudoku(solution: np.ndarray, puzzle: np.ndarray) -> None:
    """Independent check: every unit is a permutation of 1..9 and every given is kept."""
    solution = np.asarray(solution)
    assert solution.shape == (9, 9)
    digits = set(range(1, 10))
    for i in range(9):
        assert set(solution[i].tolist()) == digits, f"row {i}"
        assert set(solution[:, i].tolist()) == digits, f"column {i}"
        r, c = divmod(i, 3)
        assert set(solution[3 * r:3 * r + 3, 3 * c:3 * c + 3].reshape(-1).tolist()) == digits
    givens = puzzle > 0
    np.testing.assert_array_equal(solution[givens], puzzle[givens])


def assert_valid_queens(cols: np.ndarray, n: int) -> None:
    cols = np.asarray(cols)
    assert cols.shape == (n,)
    assert sorted(cols.tolist()) == list(range(n))
    rows = np.arange(n)
    assert len(set((cols + rows).tolist())) == n
    assert len(set((cols - rows).tolist())) == n


@pytest.mark.parametrize("name", sorted(PUZZLES))
def test_solve_sudoku_puzzles(name: str) -> None:
    puzzle = C.parse_sudoku(PUZZLES[name])
    solution = C.solve_sudoku(puzzle)
    assert solution.dtype == jnp.int32
    assert_valid_sudoku(solution, puzzle)
    # The library's own checker agrees with the independent one.
    csp = C.sudoku_csp(puzzle)
    assert bool(C.check_assignment(csp, np.asarray(solution).reshape(-1) - 1))


def test_17_clue_puzzles_have_17_clues() -> None:
    for name in ("royle17_a", "royle17_b", "top95_1"):
        assert int((C.parse_sudoku(PUZZLES[name]) > 0).sum()) == 17


def test_solve_sudoku_accepts_a_string_and_a_solved_grid() -> None:
    solution = np.asarray(C.solve_sudoku(PUZZLES["easy"]))
    np.testing.assert_array_equal(np.asarray(C.solve_sudoku(solution)), solution)


def test_hard_puzzles_need_search() -> None:
    result = C.solve_csp(C.sudoku_csp(C.parse_sudoku(PUZZLES["inkala"])))
    assert int(result.status) == C.SearchStatus.SOLVED
    assert int(result.steps) > 1 and int(result.max_depth) >= 1
    # A puzzle that propagation alone finishes takes one node.
    easy = C.solve_csp(C.sudoku_csp(C.parse_sudoku(PUZZLES["easy"])))
    assert int(easy.steps) == 1


def test_unsolvable_sudoku_raises() -> None:
    # Row 0 holds 1..8, so (0, 8) must be 9, but column 8 already has a 9: no two givens clash.
    grid = np.zeros((9, 9), np.int32)
    grid[0, :8] = np.arange(1, 9)
    grid[4, 8] = 9
    with pytest.raises(errors.UnsatisfiableError, match="no solution"):
        C.solve_sudoku(grid)


def test_unsolvable_after_search_raises() -> None:
    """A wrong extra given that clashes with no given: only search can refute it."""
    puzzle = C.parse_sudoku(PUZZLES["inkala"])
    solution = np.asarray(C.solve_sudoku(puzzle))
    r, c = 0, 1  # empty in the puzzle
    assert puzzle[r, c] == 0
    box = puzzle[r // 3 * 3:r // 3 * 3 + 3, c // 3 * 3:c // 3 * 3 + 3]
    seen = set(puzzle[r].tolist()) | set(puzzle[:, c].tolist()) | set(box.reshape(-1).tolist())
    wrong = next(d for d in range(1, 10) if d != solution[r, c] and d not in seen)
    bad = puzzle.copy()
    bad[r, c] = wrong
    result = C.solve_csp(C.sudoku_csp(bad))
    assert int(result.status) == C.SearchStatus.UNSATISFIABLE
    assert int(result.steps) > 1
    assert np.all(np.asarray(result.assignment) == -1)
    with pytest.raises(errors.UnsatisfiableError):
        C.solve_sudoku(bad)


def test_conflicting_givens_raise_before_search() -> None:
    grid = np.zeros((9, 9), np.int32)
    grid[2, 1] = 7
    grid[2, 6] = 7
    with pytest.raises(errors.GivensConflictError, match="row 2") as info:
        C.solve_sudoku(grid)
    assert info.value.conflicts == (((2, 1), (2, 6)),)
    assert isinstance(info.value, errors.UnsatisfiableError)
    assert isinstance(info.value, errors.InvalidProblemError)
    grid = np.zeros((9, 9), np.int32)
    grid[0, 0] = grid[1, 1] = 4  # same box
    with pytest.raises(errors.GivensConflictError, match="box 0"):
        C.solve_sudoku(grid)


@pytest.mark.parametrize(
    ("grid", "error"),
    [
        (np.zeros((9, 8), np.int32), errors.ShapeError),
        (np.zeros((81,), np.int32), errors.ShapeError),
        (np.zeros((9, 9), np.float32), errors.DTypeError),
        (np.zeros((9, 9), bool), errors.DTypeError),
        (np.full((9, 9), 10, np.int32), errors.InvalidProblemError),
        (np.full((9, 9), -1, np.int32), errors.InvalidProblemError),
    ],
)
def test_bad_grids_raise_typed_errors(grid: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        C.solve_sudoku(grid)


def test_parse_sudoku() -> None:
    pretty = "\n".join(" ".join(PUZZLES["easy"][9 * r:9 * r + 9]) for r in range(9))
    np.testing.assert_array_equal(C.parse_sudoku(pretty), C.parse_sudoku(PUZZLES["easy"]))
    with pytest.raises(errors.InvalidProblemError, match="81 cells"):
        C.parse_sudoku("123")
    with pytest.raises(errors.InvalidProblemError, match="characters"):
        C.parse_sudoku("x" * 81)
    with pytest.raises(errors.InvalidProblemError):
        C.parse_sudoku(123)  # type: ignore[arg-type]


def test_search_limits_are_reported() -> None:
    puzzle = C.parse_sudoku(PUZZLES["inkala"])
    with pytest.raises(errors.SearchLimitError, match="max_steps"):
        C.solve_sudoku(puzzle, max_steps=3)
    result = C.solve_csp(C.sudoku_csp(puzzle), max_steps=3)
    assert int(result.status) == C.SearchStatus.STEP_LIMIT and int(result.steps) == 3
    queens = C.solve_csp(C.nqueens_csp(8, capacity=QUEENS_CAPACITY), stack_size=1)
    assert int(queens.status) == C.SearchStatus.STACK_FULL
    with pytest.raises(errors.InvalidProblemError):
        C.solve_sudoku(puzzle, max_steps=0)
    with pytest.raises(errors.InvalidProblemError):
        C.solve_csp(C.sudoku_csp(puzzle), stack_size=0)


def test_one_compile_serves_many_sudokus() -> None:
    """The jitted path compiles once for every puzzle (and solve_sudoku's internal jit too)."""

    @jax.jit
    @chex.assert_max_traces(n=1)
    def solve(grid: jax.Array) -> C.CSPSolution:
        return C.solve_csp(C.sudoku_csp(grid))

    for name in ("easy", "inkala", "royle17_b"):
        puzzle = C.parse_sudoku(PUZZLES[name])
        result = solve(jnp.asarray(puzzle))
        assert int(result.status) == C.SearchStatus.SOLVED
        assert_valid_sudoku(np.asarray(result.assignment).reshape(9, 9) + 1, puzzle)

    C.solve_sudoku(C.parse_sudoku(PUZZLES["easy"]))
    before = C._solve_jit._cache_size()
    for name in ("inkala", "top95_1", "escargot"):
        C.solve_sudoku(C.parse_sudoku(PUZZLES[name]), max_steps=10_000 + len(name))
    assert C._solve_jit._cache_size() == before


def test_vmap_solves_a_batch() -> None:
    names = ("easy", "inkala", "top95_1")
    grids = jnp.stack([jnp.asarray(C.parse_sudoku(PUZZLES[n])) for n in names])
    batch = jax.jit(jax.vmap(lambda g: C.solve_csp(C.sudoku_csp(g))))(grids)
    assert np.all(np.asarray(batch.status) == C.SearchStatus.SOLVED)
    for i, name in enumerate(names):
        expect = np.asarray(C.solve_sudoku(C.parse_sudoku(PUZZLES[name])))
        np.testing.assert_array_equal(np.asarray(batch.assignment[i]).reshape(9, 9) + 1, expect)


@functools.cache
def _solved_easy() -> np.ndarray:
    return np.asarray(C.solve_sudoku(C.parse_sudoku(PUZZLES["easy"])))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.booleans(), min_size=81, max_size=81))
def test_propagation_keeps_solutions_and_search_respects_givens(keep: list[bool]) -> None:
    """Propagation only removes values no solution needs; search returns a valid completion."""
    solved = _solved_easy()
    puzzle = np.where(np.asarray(keep).reshape(9, 9), solved, 0).astype(np.int32)
    prop = C.propagate_csp(C.sudoku_csp(puzzle))
    result = C.solve_csp(C.sudoku_csp(puzzle), max_steps=20_000)
    start = np.asarray(C.sudoku_csp(puzzle).domains)
    pruned = np.asarray(prop.domains)
    assert not bool(prop.failed)
    assert np.all(pruned <= start)  # monotone: values are only removed
    assert np.all(pruned[np.arange(81), solved.reshape(-1) - 1])  # the known solution survives
    assert int(result.status) == C.SearchStatus.SOLVED
    assert_valid_sudoku(np.asarray(result.assignment).reshape(9, 9) + 1, puzzle)


def test_nqueens_solutions_are_valid_with_one_compile() -> None:
    C.solve_nqueens(1, capacity=QUEENS_CAPACITY)
    before = C._solve_jit._cache_size()
    for n in range(1, QUEENS_CAPACITY + 1):
        if n in (2, 3):
            with pytest.raises(errors.UnsatisfiableError, match=f"{n}-queens"):
                C.solve_nqueens(n, capacity=QUEENS_CAPACITY)
            continue
        cols = C.solve_nqueens(n, capacity=QUEENS_CAPACITY)
        assert_valid_queens(cols, n)
        padded = np.concatenate([np.asarray(cols), np.zeros(QUEENS_CAPACITY - n, np.int32)])
        assert bool(C.check_assignment(C.nqueens_csp(n, capacity=QUEENS_CAPACITY), padded))
    assert C._solve_jit._cache_size() == before


def test_nqueens_unpadded() -> None:
    cols = C.solve_nqueens(8)
    assert_valid_queens(cols, 8)
    assert bool(C.check_assignment(C.nqueens_csp(8), cols))


@pytest.mark.parametrize(("n", "capacity"), [(0, None), (-3, None), (2.5, None), (5, 4)])
def test_nqueens_bad_size(n: object, capacity: int | None) -> None:
    with pytest.raises(errors.InvalidProblemError):
        C.solve_nqueens(n, capacity=capacity)  # type: ignore[arg-type]


def test_nqueens_count_matches_known_for_all_first_rows() -> None:
    """Fixing the first queen, the solver finds a solution exactly when one exists (n = 6)."""
    n = 6
    for col in range(n):
        csp = C.nqueens_csp(n, capacity=QUEENS_CAPACITY)
        domains = csp.domains.at[0].set(jnp.arange(QUEENS_CAPACITY) == col)
        result = C.solve_csp(csp._replace(domains=domains))
        exists = any(p[0] == col and len({p[r] + r for r in range(n)}) == n
                     and len({p[r] - r for r in range(n)}) == n
                     for p in itertools.permutations(range(n)))
        assert (int(result.status) == C.SearchStatus.SOLVED) == exists
        if exists:
            assert_valid_queens(result.assignment[:n], n)


# -- generic CSPs: colouring against brute force ---------------------------------------------

_NODES, _COLORS = 6, 3
_ALL_EDGES = list(itertools.combinations(range(_NODES), 2))


@jax.jit
def _solve_padded(groups: jax.Array) -> C.CSPSolution:
    csp = C.CSP(jnp.ones((_NODES, _COLORS), bool), groups, jnp.zeros_like(groups),
                jnp.zeros(groups.shape[0], bool))
    return C.solve_csp(csp)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=len(_ALL_EDGES), max_size=len(_ALL_EDGES)))
def test_coloring_matches_brute_force(present: list[bool]) -> None:
    edges = [e for e, p in zip(_ALL_EDGES, present, strict=True) if p]
    groups = np.full((len(_ALL_EDGES), 2), -1, np.int32)  # fixed capacity: one compile
    if edges:
        groups[:len(edges)] = edges
    result = _solve_padded(jnp.asarray(groups))
    colorable = any(all(c[u] != c[v] for u, v in edges)
                    for c in itertools.product(range(_COLORS), repeat=_NODES))
    status = int(result.status)
    assert status == (C.SearchStatus.SOLVED if colorable else C.SearchStatus.UNSATISFIABLE)
    if colorable:
        colors = np.asarray(result.assignment)
        assert all(colors[u] != colors[v] for u, v in edges)
        csp = C.make_csp(jnp.ones((_NODES, _COLORS), bool), groups)
        assert bool(C.check_assignment(csp, colors))


def test_coloring_csp() -> None:
    k4 = list(itertools.combinations(range(4), 2))
    assert int(C.solve_csp(C.coloring_csp(k4, 4, 3)).status) == C.SearchStatus.UNSATISFIABLE
    result = C.solve_csp(C.coloring_csp(k4, 4, 4))
    assert sorted(np.asarray(result.assignment).tolist()) == [0, 1, 2, 3]
    with pytest.raises(errors.InvalidProblemError, match="self-loop"):
        C.coloring_csp([[1, 1]], 3, 2)
    with pytest.raises(errors.InvalidProblemError):
        C.coloring_csp([[0, 5]], 3, 2)
    with pytest.raises(errors.ShapeError):
        C.coloring_csp([[0, 1, 2]], 3, 2)


def test_propagate_csp_and_offsets() -> None:
    # x0 + 0 != x1 + 1 with x1 fixed to 0: x0 loses value 1.
    csp = C.make_csp(jnp.array([[True, True, True], [True, False, False]]), [[0, 1]],
                     offsets=[[0, 1]])
    prop = C.propagate_csp(csp)
    assert np.asarray(prop.domains).tolist() == [[True, False, True], [True, False, False]]
    assert not bool(prop.failed)
    # Two variables fixed to the same value in one group: failure.
    clash = C.make_csp(jnp.array([[True, False], [True, False]]), [[0, 1]])
    assert bool(C.propagate_csp(clash).failed)
    # Hidden single: in an exact group only variable 2 can take value 0.
    hidden = C.make_csp(jnp.array([[False, True, True], [False, True, True],
                                   [True, True, True]]), [[0, 1, 2]], exact=[True])
    assert np.asarray(C.propagate_csp(hidden).domains)[2].tolist() == [True, False, False]


def test_check_assignment() -> None:
    csp = C.nqueens_csp(4)
    assert bool(C.check_assignment(csp, [1, 3, 0, 2]))
    assert not bool(C.check_assignment(csp, [0, 1, 2, 3]))  # a diagonal
    assert not bool(C.check_assignment(csp, [1, 3, 0, 7]))  # out of range
    restricted = csp._replace(domains=csp.domains.at[0, 1].set(False))
    assert not bool(C.check_assignment(restricted, [1, 3, 0, 2]))  # outside the domain
    with pytest.raises(errors.ShapeError):
        C.check_assignment(csp, [1, 2])
    with pytest.raises(errors.DTypeError):
        C.check_assignment(csp, [1.0, 3.0, 0.0, 2.0])


def test_make_csp_rejects_malformed_problems() -> None:
    dom = jnp.ones((3, 3), bool)
    with pytest.raises(errors.DTypeError):
        C.make_csp(jnp.ones((3, 3), jnp.int32), [[0, 1]])
    with pytest.raises(errors.ShapeError):
        C.make_csp(jnp.ones((3,), bool), [[0, 1]])
    with pytest.raises(errors.InvalidProblemError, match="outside"):
        C.make_csp(dom, [[0, 3]])
    with pytest.raises(errors.InvalidProblemError, match="twice"):
        C.make_csp(dom, [[1, 1]])
    with pytest.raises(errors.InvalidProblemError, match="exact"):
        C.make_csp(dom, [[0, 1, -1]], exact=[True])
    with pytest.raises(errors.InvalidProblemError, match="exact"):
        C.make_csp(dom, [[0, 1, 2]], offsets=[[0, 1, 2]], exact=[True])
    with pytest.raises(errors.ShapeError):
        C.make_csp(dom, [[0, 1]], offsets=[[0, 1, 2]])
    with pytest.raises(errors.DTypeError):
        C.make_csp(dom, [[0.0, 1.0]])
    with pytest.raises(errors.InvalidProblemError):
        C.solve_csp("not a csp")  # type: ignore[arg-type]


def test_propagate_and_check_compile_once_per_shape() -> None:
    grids = [C.parse_sudoku(PUZZLES[n]) for n in ("easy", "inkala", "escargot")]
    C.propagate_csp(C.sudoku_csp(grids[0]))
    C.check_assignment(C.sudoku_csp(grids[0]), np.zeros(81, np.int32))
    sizes = (C._propagate_jit._cache_size(), C._check_assignment_jit._cache_size())
    for grid in grids[1:]:
        assert not bool(C.propagate_csp(C.sudoku_csp(grid)).failed)
        assert not bool(C.check_assignment(C.sudoku_csp(grid), np.zeros(81, np.int32)))
    assert (C._propagate_jit._cache_size(), C._check_assignment_jit._cache_size()) == sizes
