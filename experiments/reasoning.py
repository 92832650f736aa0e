"""Layer 8 (reasoning): constraint solving, logic and structural inference, measured.

Writes ``experiments/results/reasoning.json``. Baselines run in the same process:

(a) Sudoku — the jitted propagate-and-search solver (``mm.reasoning.solve_csp``) on easy,
    hard and 17-clue puzzles: compile time, warm solve time, search nodes and depth, against a
    pure-Python solver with the same rules (elimination, hidden singles, smallest-domain DFS;
    Norvig's design). Also a ``vmap`` batch of all puzzles in one call. Every solution is
    checked against every row, column, box and given.
(b) N-queens n = 4..12 with one compilation (``capacity=12``), against Python backtracking.
(c) Logic — transitive closure of random DAGs against ``networkx.transitive_closure``; Horn
    forward chaining against naive Python chaining; results compared for equality.
(d) Structural inference — planted random DAGs of 20 pages (edge probability 0.15, direct
    edges = the transitive reduction). Each commit changes a uniformly random source page and
    *all of its descendants* (full propagation, as a derived-page recompute does), then every
    cascaded change is dropped with probability ``noise`` and every other page changes
    spuriously with probability ``noise``. Precision and recall of the inferred direct edges
    for the cascade-model fit (``infer_dependencies``) and for the thresholded-conditional
    baseline (``cochange_dependencies``, threshold 0.9), over noise levels and seeds (seeds
    100+, disjoint from the seeds used while developing the method), and over log lengths.

Run ``python experiments/reasoning.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
from _common import bench, write_json

import mmsb_jax as mm
from mmsb_jax.reasoning import _constraints as C

R = mm.reasoning

PUZZLES = {
    "easy": "530070000600195000098000060800060003400803001700020006060000280000419005000080079",
    "inkala_2012": "8..........36......7..9.2...5...7.......457....."
                   "1...3...1....68..85...1..9....4..",
    "escargot": "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3..",
    "royle17_a": "000000010400000000020000000000050407008000300"
                 "001090000300400200050100000000806000",
    "royle17_b": "000000012000035000000600070700000300000400800"
                 "100000000000120000080000040050000600",
    "top95_1": "4.....8.5.3..........7......2.....6.....8.4......1.......6.3.7.5..2.....1.4......",
    "hard_a": "85...24..72......9..4.........1.7..23.5...9...4...........8..7..17..........36.4.",
    "hard_b": "..53.....8......2..7..1.5..4....53...1..7...6..32...8..6.5....9..4....3......97..",
}


# -- pure-Python baselines -------------------------------------------------------------------

_UNITS = [list(range(r * 9, r * 9 + 9)) for r in range(9)] + \
    [list(range(c, 81, 9)) for c in range(9)] + \
    [[(br + r) * 9 + bc + c for r in range(3) for c in range(3)]
     for br in (0, 3, 6) for bc in (0, 3, 6)]
_PEERS = [sorted({p for u in _UNITS if i in u for p in u} - {i}) for i in range(81)]


def python_sudoku(grid: np.ndarray) -> list[int] | None:
    """Elimination + hidden singles to a fixed point, then smallest-domain DFS (sets)."""

    def propagate(dom: list[set[int]]) -> list[set[int]] | None:
        changed = True
        while changed:
            changed = False
            for i in range(81):
                if len(dom[i]) == 1:
                    (v,) = dom[i]
                    for p in _PEERS[i]:
                        if v in dom[p]:
                            dom[p] = dom[p] - {v}
                            changed = True
                            if not dom[p]:
                                return None
            for unit in _UNITS:
                for v in range(1, 10):
                    places = [i for i in unit if v in dom[i]]
                    if not places:
                        return None
                    if len(places) == 1 and len(dom[places[0]]) > 1:
                        dom[places[0]] = {v}
                        changed = True
        return dom

    def search(dom: list[set[int]] | None) -> list[set[int]] | None:
        dom = propagate(dom) if dom is not None else None
        if dom is None:
            return None
        if all(len(d) == 1 for d in dom):
            return dom
        i = min((i for i in range(81) if len(dom[i]) > 1), key=lambda i: len(dom[i]))
        for v in sorted(dom[i]):
            child = [set(d) for d in dom]
            child[i] = {v}
            found = search(child)
            if found is not None:
                return found
        return None

    start = [set(range(1, 10)) if g == 0 else {int(g)} for g in grid.reshape(-1)]
    found = search(start)
    return None if found is None else [next(iter(d)) for d in found]


def python_queens(n: int) -> list[int] | None:
    cols: list[int] = []

    def place(row: int) -> bool:
        if row == n:
            return True
        for c in range(n):
            if all(c != q and abs(c - q) != row - r for r, q in enumerate(cols)):
                cols.append(c)
                if place(row + 1):
                    return True
                cols.pop()
        return False

    return cols if place(0) else None


def python_horn(facts: np.ndarray, body: np.ndarray, head: np.ndarray) -> np.ndarray:
    known = facts.copy()
    changed = True
    while changed:
        changed = False
        for b, h in zip(body.tolist(), head.tolist(), strict=True):
            if not known[h] and all(known[a] for a in b if a >= 0):
                known[h] = True
                changed = True
    return known


def valid_sudoku(solution: np.ndarray, puzzle: np.ndarray) -> bool:
    digits = set(range(1, 10))
    units_ok = all(set(solution.reshape(-1)[u].tolist()) == digits for u in _UNITS)
    return units_ok and bool(np.all(solution[puzzle > 0] == puzzle[puzzle > 0]))


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- (a) Sudoku ------------------------------------------------------------------------------

def sudoku(repeat: int) -> dict:
    solve = jax.jit(lambda g: R.solve_csp(R.sudoku_csp(g)))
    grids = {k: C.parse_sudoku(v) for k, v in PUZZLES.items()}
    first = next(iter(grids.values()))
    t0 = time.perf_counter()
    jax.block_until_ready(solve(jnp.asarray(first)))
    compile_s = time.perf_counter() - t0
    rows = []
    for name, grid in grids.items():
        g = jnp.asarray(grid)
        result = solve(g)
        solution = np.asarray(result.assignment).reshape(9, 9) + 1
        t_jax = bench(lambda g=g: solve(g), repeat=repeat)
        py = python_sudoku(grid)
        t_py = timed(lambda grid=grid: python_sudoku(grid), max(1, repeat // 2))
        rows.append({
            "puzzle": name, "clues": int((grid > 0).sum()),
            "status": R.SearchStatus(int(result.status)).name,
            "valid": valid_sudoku(solution, grid),
            "same_as_python": py is not None and py == solution.reshape(-1).tolist(),
            "search_nodes": int(result.steps), "max_depth": int(result.max_depth),
            "jax_ms": 1e3 * t_jax, "python_ms": 1e3 * t_py,
            "python_over_jax": t_py / t_jax,
        })
    batch = jnp.stack([jnp.asarray(g) for g in grids.values()])
    solve_batch = jax.jit(jax.vmap(lambda g: R.solve_csp(R.sudoku_csp(g))))
    out = solve_batch(batch)
    batch_ok = all(valid_sudoku(np.asarray(out.assignment[i]).reshape(9, 9) + 1, g)
                   for i, g in enumerate(grids.values()))
    t_batch = bench(lambda: solve_batch(batch), repeat=repeat)
    t_seq = sum(r["jax_ms"] for r in rows) / 1e3
    return {
        "compile_s": compile_s,
        "puzzles": rows,
        # vmap of a while_loop runs every lane until the slowest puzzle is done and selects
        # between old and new carries each step, so on CPU the batch is slower than solving
        # one by one; reported as measured.
        "vmap_batch": {"size": len(grids), "all_valid": batch_ok, "ms": 1e3 * t_batch,
                       "sequential_ms": 1e3 * t_seq, "sequential_over_batch": t_seq / t_batch},
    }


# -- (b) N-queens ----------------------------------------------------------------------------

def nqueens(repeat: int, capacity: int = 12) -> dict:
    solve = jax.jit(lambda csp: R.solve_csp(csp))
    t0 = time.perf_counter()
    jax.block_until_ready(solve(R.nqueens_csp(4, capacity=capacity)))
    compile_s = time.perf_counter() - t0
    rows = []
    for n in range(4, capacity + 1):
        csp = R.nqueens_csp(n, capacity=capacity)
        result = solve(csp)
        cols = np.asarray(result.assignment)[:n]
        valid = (sorted(cols.tolist()) == list(range(n))
                 and len(set((cols + np.arange(n)).tolist())) == n
                 and len(set((cols - np.arange(n)).tolist())) == n)
        t_jax = bench(lambda csp=csp: solve(csp), repeat=repeat)
        t_py = timed(lambda n=n: python_queens(n), repeat)
        rows.append({"n": n, "valid": bool(valid), "search_nodes": int(result.steps),
                     "jax_ms": 1e3 * t_jax, "python_ms": 1e3 * t_py,
                     "python_over_jax": t_py / t_jax})
    unsat = {n: R.SearchStatus(int(solve(R.nqueens_csp(n, capacity=capacity)).status)).name
             for n in (2, 3)}
    return {"capacity": capacity, "compile_s": compile_s, "compilations": 1, "boards": rows,
            "n2_n3_status": unsat}


# -- (c) logic -------------------------------------------------------------------------------

def logic(repeat: int, sizes: tuple[int, ...]) -> dict:
    rng = np.random.default_rng(0)
    closure_rows = []
    for n in sizes:
        a = np.triu(rng.random((n, n)) < 4.0 / n, k=1)
        perm = rng.permutation(n)
        a = a[perm][:, perm]
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        g.add_edges_from(zip(*np.nonzero(a), strict=True))
        aj = jnp.asarray(a)
        ours = np.asarray(R.ancestors(aj))
        equal = all(set(np.nonzero(ours[v])[0].tolist()) == nx.ancestors(g, v)
                    for v in range(n))
        t_jax = bench(lambda aj=aj: R.transitive_closure(aj), repeat=repeat)
        t_nx = timed(lambda g=g: nx.transitive_closure(g, reflexive=False), repeat)
        closure_rows.append({"nodes": n, "edges": int(a.sum()), "ancestors_equal_networkx": equal,
                             "jax_ms": 1e3 * t_jax, "networkx_ms": 1e3 * t_nx,
                             "networkx_over_jax": t_nx / t_jax})
    props, nrules, width = 2000, 6000, 3
    body = rng.integers(0, props, (nrules, width)).astype(np.int32)
    body[rng.random(body.shape) < 0.3] = -1
    head = rng.integers(0, props, nrules).astype(np.int32)
    facts = rng.random(props) < 0.02
    rules = R.HornRules(jnp.asarray(body), jnp.asarray(head))
    result = R.horn_fixpoint(jnp.asarray(facts), rules)
    reference = python_horn(facts, body, head)
    t_jax = bench(lambda: R.horn_fixpoint(jnp.asarray(facts), rules), repeat=repeat)
    t_py = timed(lambda: python_horn(facts, body, head), max(1, repeat // 2))
    horn = {"propositions": props, "rules": nrules, "max_body": width,
            "given": int(facts.sum()), "derived": int(np.asarray(result.facts).sum()),
            "rounds": int(result.rounds),
            "equal_python": bool(np.array_equal(np.asarray(result.facts), reference)),
            "jax_ms": 1e3 * t_jax, "python_ms": 1e3 * t_py, "python_over_jax": t_py / t_jax}
    return {"transitive_closure": closure_rows, "horn": horn}


# -- (d) structural inference ----------------------------------------------------------------

def planted(seed: int, pages: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(pages)
    g = nx.DiGraph()
    g.add_nodes_from(range(pages))
    g.add_edges_from((int(order[i]), int(order[j])) for i in range(pages)
                     for j in range(i + 1, pages) if rng.random() < p)
    edges = np.zeros((pages, pages), bool)
    for u, v in nx.transitive_reduction(g).edges:
        edges[u, v] = True
    reach = np.eye(pages, dtype=bool)
    for u in range(pages):
        reach[u, list(nx.descendants(g, u))] = True
    return edges, reach


def simulate(reach: np.ndarray, commits: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 7919)
    changes = reach[rng.integers(0, reach.shape[0], commits)].copy()
    changes &= ~(rng.random(changes.shape) < noise)
    changes |= rng.random(changes.shape) < noise
    return changes


def score(rows: list[tuple[float, float, int, int]]) -> dict:
    """Rows of (precision, recall, predicted edges, true edges); an empty prediction has
    precision 1 by convention, so the edge counts are reported beside it."""
    arr = np.asarray(rows, dtype=np.float64)
    return {"precision_mean": float(arr[:, 0].mean()), "recall_mean": float(arr[:, 1].mean()),
            "predicted_edges_mean": float(arr[:, 2].mean()),
            "true_edges_mean": float(arr[:, 3].mean()),
            "precision_min": float(arr[:, 0].min()), "recall_min": float(arr[:, 1].min()),
            "runs_with_both_ge_0.9": int(np.sum((arr[:, 0] >= 0.9) & (arr[:, 1] >= 0.9))),
            "runs": len(rows)}


def evaluate(edges: np.ndarray, predicted: jax.Array) -> tuple[float, float, int, int]:
    precision, recall = R.edge_precision_recall(edges, predicted)
    return precision, recall, int(np.asarray(predicted).sum()), int(edges.sum())


def structure(seeds: int, noises: tuple[float, ...], lengths: tuple[int, ...],
              pages: int = 20, p: float = 0.15, commits: int = 2000) -> dict:
    by_noise = []
    for noise in noises:
        fit_rows, base_rows, times, rates = [], [], [], []
        for seed in range(100, 100 + seeds):
            edges, reach = planted(seed, pages, p)
            changes = jnp.asarray(simulate(reach, commits, noise, seed))
            t0 = time.perf_counter()
            fit = jax.block_until_ready(R.infer_dependencies(changes))
            times.append(time.perf_counter() - t0)
            fit_rows.append(evaluate(edges, fit.edges))
            base = R.cochange_dependencies(changes, threshold=0.9)
            base_rows.append(evaluate(edges, base))
            rates.append((float(fit.drop_rate), float(fit.spurious_rate)))
        by_noise.append({
            "noise": noise, "cascade_fit": score(fit_rows),
            "conditional_baseline": score(base_rows),
            "estimated_drop_rate_mean": float(np.mean([r[0] for r in rates])),
            "estimated_spurious_rate_mean": float(np.mean([r[1] for r in rates])),
            "fit_ms_median_incl_first_compile": 1e3 * statistics.median(times),
        })
    by_length = []
    noise = 0.1
    for length in lengths:
        rows = []
        for seed in range(100, 100 + seeds):
            edges, reach = planted(seed, pages, p)
            fit = R.infer_dependencies(simulate(reach, length, noise, seed))
            rows.append(evaluate(edges, fit.edges))
        by_length.append({"commits": length, "noise": noise, "cascade_fit": score(rows)})
    return {"pages": pages, "edge_probability": p, "commits": commits,
            "propagation": "full descendants", "noise_model": "drop and spurious, each = noise",
            "baseline": "cochange_dependencies(statistic='conditional', threshold=0.9)",
            "by_noise": by_noise, "by_log_length": by_length}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, seeds and sizes")
    args = parser.parse_args()
    repeat = 3 if args.quick else 7
    seeds = 4 if args.quick else 10
    payload = {
        "sudoku": sudoku(repeat),
        "nqueens": nqueens(repeat),
        "logic": logic(repeat, (64, 256) if args.quick else (64, 256, 512)),
        "structure": structure(seeds, (0.0, 0.05, 0.1, 0.15, 0.2) if args.quick else
                               (0.0, 0.02, 0.05, 0.1, 0.15, 0.2),
                               (500, 2000) if args.quick else (500, 1000, 2000, 4000)),
    }
    path = write_json("reasoning", payload)
    s = payload["structure"]["by_noise"]
    print(f"wrote {path}")
    for row in s:
        f, b = row["cascade_fit"], row["conditional_baseline"]
        print(f"noise {row['noise']:.2f}: fit P {f['precision_mean']:.3f} R "
              f"{f['recall_mean']:.3f} | baseline P {b['precision_mean']:.3f} R "
              f"{b['recall_mean']:.3f}")


if __name__ == "__main__":
    main()
