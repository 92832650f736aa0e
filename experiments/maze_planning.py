"""Learned planning on long-horizon mazes: a trained value/policy network against the baselines.

Writes ``experiments/results/maze_planning.json`` and ``experiments/results/maze_planning.png``.

1. Train a :class:`mmsb_jax.planning.MazeNet` with :func:`mmsb_jax.planning.train_maze_agent`
   (Gumbel MuZero self-play with the true gridworld model; DFS mazes of sizes 5-11 plus 25 %
   obstacle grids, padded to 11 x 11) from scratch; the training wall time is recorded.
2. On ``--mazes`` fresh held-out mazes of each ``--sizes`` (DFS mazes, sizes in the gridworld
   convention of :func:`mmsb_jax.planning.dfs_mazes`: 10 and 15 as in the issue (a 10 x 10
   grid has 5 x 5 rooms and a wall along its last row and column, so its free cells are laid
   out like a 9 x 9 maze's), 19 = 10 x 10 rooms, 29 = 15 x 15 rooms; every size above 11 is
   larger than any training maze), ``--corner-rooms`` mazes from an independent recursive
   backtracker (:func:`backtracker_maze`, ``2k + 1`` grid with an outer wall, start and goal
   in opposite corner rooms) and obstacle grids (wall density 0.35, ``--obstacle-sizes``);
   evaluation seeds are below :data:`mmsb_jax.planning.TRAIN_SEED_MIN`, training maze seeds
   above it. Every method gets the same step budget ``4 * (H + W)``:

   * ``random``: a uniformly random valid move; ``greedy``: the valid move that most reduces
     the Manhattan distance; ``greedy_visited``: the valid move to the least-visited
     neighbour, ties broken by Manhattan distance (a visit-count memory);
   * ``mcts/<N>``: flat :func:`mmsb_jax.planning.plan_mcts` (Gumbel MuZero, N simulations,
     the gridworld model's Manhattan upper-bound leaf value), replanned every step;
   * ``learned_prior``: the trained network's prior alone (argmax, no search);
     ``learned_mcts/<N>``: :func:`mmsb_jax.planning.plan_learned` (Gumbel MuZero with the
     network's prior and value, N simulations, no root noise);
   * ``hierarchical/<N>``: :func:`mmsb_jax.planning.decompose_grid` waypoints (TROPICAL closure
     on the wall map: the high level knows shortest paths) with flat MCTS between them, as in
     ``plan_gridworld.py``;
   * ``bfs``: the optimal path (success iff it fits the budget).

   Reported per method and maze set: success rate, mean path length / BFS length on the
   successes, and wall time (first call including compilation, and a second, warm call).
3. The spread over training seeds: nets trained from ``--extra-train-seeds`` (default 1 and 2)
   with the same configuration, their learned planners evaluated on the same mazes.

Timing runs with XLA's CPU thread pool off unless ``--threads`` (see ``plan_gridworld.py``).
Run ``python experiments/maze_planning.py [--quick]``.
"""

from __future__ import annotations

import os
import sys

if "--threads" not in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                               "=false intra_op_parallelism_threads=1").strip()

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from _common import RESULTS, machine
from tqdm import tqdm

from mmsb_jax import planning as mp

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MODEL = mp.gridworld_model(goal_reward=1.0, step_cost=0.01, discount=0.97)
STATIC = ("walls", "goal")
MOVES = jnp.asarray(mp.MOVES)


@jax.jit
def greedy_visited(walls: jax.Array, starts: jax.Array, goals: jax.Array,
                   steps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Least-visited-neighbour walk (ties: Manhattan distance): ``(success[B], steps[B])``."""
    h, w = walls.shape[1:]

    def one(wl, s, g):
        def body(carry, _):
            pos, count, done, t = carry
            tgt = pos[None] + MOVES
            inside = (tgt[:, 0] >= 0) & (tgt[:, 0] < h) & (tgt[:, 1] >= 0) & (tgt[:, 1] < w)
            r, c = jnp.clip(tgt[:, 0], 0, h - 1), jnp.clip(tgt[:, 1], 0, w - 1)
            valid = inside & ~wl[r, c]
            score = count[r, c] * 10_000 + jnp.abs(tgt - g[None]).sum(1)
            a = jnp.argmin(jnp.where(valid, score, jnp.iinfo(jnp.int32).max))
            npos = jnp.where(done, pos, tgt[a])
            count = count.at[npos[0], npos[1]].add(1)
            ndone = done | jnp.all(npos == g)
            return (npos, count, ndone, t + (~done).astype(jnp.int32)), None

        count = jnp.zeros((h, w), jnp.int32).at[s[0], s[1]].set(1)
        (_, _, done, t), _ = jax.lax.scan(body, (s, count, jnp.zeros((), bool),
                                                 jnp.zeros((), jnp.int32)), None,
                                          length=steps.shape[0])
        return done, t

    return jax.vmap(one)(walls, starts, goals)


def summarise(success: np.ndarray, steps: np.ndarray, optimal: np.ndarray) -> dict[str, Any]:
    success = np.asarray(success, bool)
    ratio = steps[success] / optimal[success]
    return {"success_rate": float(success.mean()),
            "path_ratio_on_success": float(ratio.mean()) if success.any() else None,
            "path_ratio_max": float(ratio.max()) if success.any() else None}


def timed(fn: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[Any, float, float]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return out, first, time.perf_counter() - t0


def evaluate(net: mp.MazeNet, walls: np.ndarray, starts: np.ndarray, goals: np.ndarray,
             args: argparse.Namespace, key: jax.Array, *, learned_only: bool = False
             ) -> dict[str, Any]:
    b, h, w = walls.shape
    budget = 4 * (h + w)
    optimal = np.array([mp.maze_distances(walls[i], tuple(goals[i]))[tuple(starts[i])]
                        for i in range(b)])
    states = mp.gridworld_states(walls, starts, goals)
    methods: dict[str, Callable[[], tuple[Any, Any]]] = {}

    def flat(policy):
        def run():
            traj = mp.rollout(MODEL, states, policy, key, num_steps=budget)
            return traj.done[:, -1], traj.steps_to_done
        return run

    if learned_only:  # the nets of the other training seeds: the baselines do not change
        args = argparse.Namespace(**{**vars(args), "flat_sims": [], "hierarchical": False})
    else:
        methods["random"] = flat(mp.random_policy(MODEL))
        methods["greedy"] = flat(mp.greedy_policy)
        methods["greedy_visited"] = lambda: greedy_visited(
            jnp.asarray(walls), jnp.asarray(starts), jnp.asarray(goals), jnp.zeros(budget))
    for n in args.flat_sims:
        methods[f"mcts/{n}"] = flat(mp.mcts_policy(MODEL, num_simulations=n,
                                                   static_pages=STATIC))
    if args.hierarchical:
        stride = args.stride
        slots = math.ceil(budget / (2 * stride))
        seg = mp.mcts_segment(MODEL, max_steps=2 * stride, num_simulations=args.hier_sims,
                              static_pages=STATIC)

        @jax.jit
        def hier(states, wl, s, g, keys):
            def one(xs):
                state, wi, si, gi, k = xs
                sg = mp.decompose_grid(wi, si, gi, stride=stride, max_subgoals=slots)
                out = mp.plan_hierarchical(state, sg, k, plan_segment=seg)
                seg_steps = jnp.where(out.reached, out.info.steps, 2 * stride)
                used = jnp.sum(jnp.where(jnp.arange(slots) < sg.count, seg_steps, 0))
                return out.success & (used <= budget), used
            return jax.lax.map(one, (states, wl, s, g, keys))

        keys = jax.random.split(key, b)
        methods[f"hierarchical/{args.hier_sims}"] = lambda: hier(
            states, jnp.asarray(walls), jnp.asarray(starts), jnp.asarray(goals), keys)
    methods["learned_prior"] = lambda: _learned(net, walls, starts, goals, key, 0, budget)
    for n in args.learned_sims:
        methods[f"learned_mcts/{n}"] = (lambda n=n: _learned(net, walls, starts, goals, key, n,
                                                             budget))
    results: dict[str, Any] = {"budget": budget, "mean_bfs_length": float(optimal.mean()),
                               "max_bfs_length": int(optimal.max()), "methods": {}}
    for name, fn in methods.items():
        (success, steps), first, warm = timed(fn)
        success, steps = np.asarray(success, bool), np.asarray(steps)
        out = summarise(success, steps, optimal)
        out.update(seconds_first_call=first, seconds_warm=warm)
        results["methods"][name] = out
        ratio = out["path_ratio_on_success"]
        print(f"    {name:22s} success {out['success_rate']:.2f}  ratio "
              f"{'-' if ratio is None else f'{ratio:.3f}'}  ({first:.1f} s, warm {warm:.2f} s)",
              flush=True)
    if learned_only:
        return results
    bfs_ok = optimal <= budget
    results["methods"]["bfs"] = {"success_rate": float(bfs_ok.mean()),
                                 "path_ratio_on_success": 1.0, "path_ratio_max": 1.0,
                                 "seconds_first_call": None, "seconds_warm": None}
    return results


def _learned(net, walls, starts, goals, key, sims, budget):
    traj = mp.plan_learned(net, walls, starts, goals, key, num_simulations=sims,
                           max_steps=budget)
    return traj.success, traj.steps


def backtracker_maze(rng: np.random.Generator, rooms: int) -> np.ndarray:
    """An independent DFS maze as a tester would write it: ``bool[2k + 1, 2k + 1]``, walls True.

    ``k x k`` rooms at odd coordinates inside an outer wall; an explicit-stack recursive
    backtracker knocks out the wall between the current room and a random unvisited
    neighbour. Shares no code with :func:`mmsb_jax.planning.dfs_mazes`.
    """
    n = 2 * rooms + 1
    grid = np.ones((n, n), bool)
    visited = np.zeros((rooms, rooms), bool)
    stack = [(0, 0)]
    visited[0, 0] = True
    grid[1, 1] = False
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
                   if 0 <= r + dr < rooms and 0 <= c + dc < rooms and not visited[r + dr, c + dc]]
        if not options:
            stack.pop()
            continue
        nr, nc = options[rng.integers(len(options))]
        visited[nr, nc] = True
        grid[2 * nr + 1, 2 * nc + 1] = False
        grid[r + nr + 1, c + nc + 1] = False
        stack.append((nr, nc))
    return grid


def corner_mazes(seed: int, num: int, rooms: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num`` :func:`backtracker_maze` s, start in the top-left room, goal in the bottom-right."""
    rng = np.random.default_rng(seed)
    walls = np.stack([backtracker_maze(rng, rooms) for _ in range(num)])
    starts = np.full((num, 2), 1, np.int32)
    goals = np.full((num, 2), 2 * rooms - 1, np.int32)
    return walls, starts, goals


def plot(report: dict[str, Any], path: Path) -> None:
    sets = list(report["evaluation"])
    methods = list(report["evaluation"][sets[0]]["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    width = 0.8 / len(sets)
    x = np.arange(len(methods))
    for i, s in enumerate(sets):
        m = report["evaluation"][s]["methods"]
        axes[0].bar(x + i * width, [m[k]["success_rate"] for k in methods], width, label=s)
        axes[1].bar(x + i * width, [m[k]["path_ratio_on_success"] or 0.0 for k in methods],
                    width, label=s)
    for ax, title in zip(axes, ("success rate (budget 4(H+W))",
                                "path length / BFS (successes)"), strict=True):
        ax.set_xticks(x + 0.4 - width / 2, methods, rotation=40, ha="right")
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[1].axhline(1.2, color="k", lw=0.8, ls="--")
    fig.suptitle(f"held-out mazes; learned net trained {report['training']['seconds']:.0f} s "
                 "on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer mazes and iterations (< 3 min)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default experiments/results/maze_planning[_quick].json; "
                        "the PNG goes next to it)")
    p.add_argument("--threads", action="store_true", help="keep XLA's CPU thread pool")
    p.add_argument("--mazes", type=int, default=30)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 15, 19, 29])
    p.add_argument("--train-iterations", type=int, default=300)
    p.add_argument("--flat-sims", type=int, nargs="+", default=[32, 64])
    p.add_argument("--learned-sims", type=int, nargs="+", default=[16])
    p.add_argument("--obstacle-sizes", type=int, nargs="+", default=[10, 15])
    p.add_argument("--corner-rooms", type=int, nargs="+", default=[10],
                   help="k x k-room backtracker mazes (2k+1 grid, outer wall), corner to corner")
    p.add_argument("--extra-train-seeds", type=int, nargs="*", default=[1, 2],
                   help="train more nets from these seeds and evaluate their learned planners "
                        "on the same mazes (the spread over training seeds)")
    p.add_argument("--hier-sims", type=int, default=16)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--no-hierarchical", dest="hierarchical", action="store_false")
    args = p.parse_args()
    if args.quick:
        args.mazes, args.train_iterations = 10, 120
        args.sizes, args.flat_sims = [10, 15], [32]
        args.obstacle_sizes, args.corner_rooms = [10], [6]
        args.extra_train_seeds = []

    def train(seed: int) -> mp.TrainResult:
        bar = tqdm(total=args.train_iterations, desc=f"train MazeNet (seed {seed})", unit="it")

        def progress(i: int, info: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.3f}", success=f"{info['success']:.2f}")

        out = mp.train_maze_agent(seed, num_iterations=args.train_iterations,
                                  progress=progress)
        bar.close()
        return out

    res = train(0)
    print(f"trained in {res.seconds:.1f} s; self-play success over the last 20 iterations "
          f"{res.self_play_success[-20:].mean():.2f}")
    report: dict[str, Any] = {
        "config": vars(args),
        "training": {"seconds": res.seconds, "iterations": args.train_iterations,
                     "sizes": [5, 7, 9, 11], "obstacle_fraction": 0.25, "batch_size": 32,
                     "num_simulations": 16,
                     "loss_first_10": res.losses[:10].mean(0).tolist(),
                     "loss_last_10": res.losses[-10:].mean(0).tolist(),
                     "loss_columns": ["total", "policy", "value", "model"],
                     "self_play_success_first_10": float(res.self_play_success[:10].mean()),
                     "self_play_success_last_20": float(res.self_play_success[-20:].mean())},
        "evaluation": {}}
    key = jax.random.key(1)
    # Held-out mazes: seeds below TRAIN_SEED_MIN (training draws its maze seeds above it) and
    # sizes no training maze has (training pads 5..11 to 11 x 11; sizes here are 10 and up).
    sets: dict[str, tuple[int, Callable[[], tuple[np.ndarray, ...]]]] = {}
    for n in args.sizes:
        sets[f"dfs_{n}x{n}"] = (10_000 + n, lambda n=n: mp.dfs_mazes(10_000 + n, args.mazes, n))
    for k in args.corner_rooms:
        sets[f"backtracker_{k}x{k}_rooms_corner"] = (
            30_000 + k, lambda k=k: corner_mazes(30_000 + k, args.mazes, k))
    for n in args.obstacle_sizes:
        sets[f"obstacles_{n}x{n}"] = (20_000 + n, lambda n=n: mp.random_mazes(
            20_000 + n, args.mazes, n, n, wall_density=0.35, min_distance=4))
    report["held_out"] = {
        "evaluation_seeds": {name: seed for name, (seed, _) in sets.items()},
        "training_seed_range": [mp.TRAIN_SEED_MIN, 2**31],
        "note": "the net observes the wall map and the goal (its state observation) and searches "
                "with the true gridworld model; it never sees distances. BFS is given the map "
                "as the optimal reference."}
    mazes = {}
    for name, (seed, make) in sets.items():
        assert seed < mp.TRAIN_SEED_MIN
        walls, starts, goals = mazes[name] = make()
        print(f"  {name} ({walls.shape[1]}x{walls.shape[2]} grid)", flush=True)
        report["evaluation"][name] = evaluate(res.net, walls, starts, goals, args, key)
        report["evaluation"][name]["grid"] = list(walls.shape[1:])
    report["other_training_seeds"] = {}
    for seed in args.extra_train_seeds:
        other = train(seed)
        print(f"training seed {seed}: {other.seconds:.1f} s", flush=True)
        entry: dict[str, Any] = {"seconds": other.seconds, "self_play_success_last_20": float(
            other.self_play_success[-20:].mean()), "evaluation": {}}
        for name, (walls, starts, goals) in mazes.items():
            print(f"  {name}", flush=True)
            entry["evaluation"][name] = evaluate(other.net, walls, starts, goals, args, key,
                                                 learned_only=True)["methods"]
        report["other_training_seeds"][str(seed)] = entry
    path = args.out or RESULTS / ("maze_planning_quick.json" if args.quick
                                  else "maze_planning.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    report["config"]["out"] = str(path)
    path.write_text(json.dumps({"machine": machine(), **report}, indent=2) + "\n")
    plot(report, path.with_suffix(".png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
