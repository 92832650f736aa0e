"""Planning on the bus (layer 9): MCTS in random gridworld mazes, and planner throughput.

Writes ``experiments/results/plan_gridworld.json`` and ``experiments/results/plan_gridworld.png``.

(a) Success and return. ``--mazes`` random ``--size`` x ``--size`` mazes (each cell a wall with
    probability ``--wall-density``; start and goal at least ``--min-distance`` BFS steps apart,
    always connected). Every policy acts in closed loop for ``4 * (H + W)`` steps through the
    same :func:`mmsb_jax.planning.gridworld_model` (reward 1 on reaching the goal, 0.01 per
    step, discount 0.97, Manhattan upper-bound leaf value):

    * ``random``: a uniformly random valid move;
    * ``greedy``: the valid move that most reduces the Manhattan distance (stuck behind walls);
    * ``mcts/<policy>/<N>``: :func:`mmsb_jax.planning.plan_mcts` replanned at every step with N
      simulations, Gumbel MuZero (``gumbel_scale=1``) and MuZero (``temperature=0.25``, no
      Dirichlet noise);
    * ``hierarchical/<N>``: :func:`mmsb_jax.planning.decompose_grid` (TROPICAL closure shortest
      path, waypoints at most ``--stride`` steps apart) and Gumbel MCTS with N simulations per
      step towards each waypoint in turn, ``2 * stride`` steps per waypoint, ``ceil``-many
      waypoint slots so that the total step budget equals the flat policies' budget. The
      high level sees the wall map (it is a map-based planner); the low level sees only the
      model, as flat MCTS does.

    Reported per policy: success rate, mean undiscounted return (``goal_reward * success -
    step_cost * steps``), mean steps on success, and the ratio of those steps to the BFS optimum.

(b) Throughput: simulations per second of ``plan_mcts`` (Gumbel MuZero, ``B`` roots, ``N``
    simulations, the walls and goal kept out of the tree with ``static_pages`` and, separately,
    every page in the tree) against ``mctx.gumbel_muzero_policy`` with a hand-written
    ``recurrent_fn`` on plain arrays implementing the same moves, masks, rewards, discounts and
    leaf values, in the same process, timed interleaved. Two raw variants: the usual mctx batch
    (one search over ``[B]``) and the same search vmapped over roots (what ``plan_mcts`` does, so
    that roots are independent); the latter uses the same keys and its actions are compared with
    ``plan_mcts``'s for equality.

Timing runs with XLA's CPU thread pool off (``intra_op_parallelism_threads=1``) unless
``--threads`` is given: on a shared, oversubscribed CPU, multi-threaded programs wait for cores
and the minima of even interleaved timings swing by 2x between runs, single-threaded ones do
not. The load average at the time is recorded in the JSON.

Run ``python experiments/plan_gridworld.py [--quick] [--threads] [--sims 8 32 128]``
(1-3 minutes with the defaults on the shared 2-core CPU the results were taken on, depending
on its load, most of it compiling one closed-loop program per policy; ``--quick`` under 1).
"""

from __future__ import annotations

import os
import sys

if "--threads" not in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                               "=false intra_op_parallelism_threads=1").strip()

import argparse
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import mctx
import numpy as np
from _common import RESULTS, write_json

from mmsb_jax import planning as mp

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GOAL_REWARD, STEP_COST, DISCOUNT = 1.0, 0.01, 0.97
MODEL = mp.gridworld_model(goal_reward=GOAL_REWARD, step_cost=STEP_COST, discount=DISCOUNT)
MOVES = jnp.asarray(mp.MOVES)
STATIC = ("walls", "goal")  # pages no action changes: kept once per root, not per tree node


# -- (a) success and return -------------------------------------------------------------------

def summarise(success: np.ndarray, steps: np.ndarray, optimal: np.ndarray) -> dict[str, float]:
    success = success.astype(bool)
    ret = GOAL_REWARD * success - STEP_COST * steps
    out = {"success_rate": float(success.mean()), "mean_return": float(ret.mean()),
           "mean_steps_on_success": float(steps[success].mean()) if success.any() else None,
           "steps_over_optimal_on_success": float((steps[success] / optimal[success]).mean())
           if success.any() else None}
    return out


def run_flat(name: str, policy: Any, states, key, num_steps: int, optimal: np.ndarray
             ) -> dict[str, Any]:
    t0 = time.perf_counter()
    traj = jax.block_until_ready(mp.rollout(MODEL, states, policy, key, num_steps=num_steps))
    seconds = time.perf_counter() - t0
    success = np.asarray(traj.done[:, -1])
    steps = np.where(success, np.asarray(traj.steps_to_done), num_steps)
    out = summarise(success, steps, optimal)
    # The rollout's own return must agree with the formula.
    np.testing.assert_allclose(np.asarray(traj.total_reward),
                               GOAL_REWARD * success - STEP_COST * steps, atol=1e-4)
    out["seconds_incl_compile"] = seconds
    print(f"  {name:28s} success {out['success_rate']:.2f}  return {out['mean_return']:+.3f}"
          f"  ({seconds:.1f} s)")
    return out


def run_hierarchical(name: str, sims: int, walls, starts, goals, stride: int, slots: int,
                     key, optimal: np.ndarray) -> dict[str, Any]:
    seg = mp.mcts_segment(MODEL, max_steps=2 * stride, num_simulations=sims,
                          static_pages=STATIC)
    states = mp.gridworld_states(walls, starts, goals)

    def one(state, w, s, g, k):
        sg = mp.decompose_grid(w, s, g, stride=stride, max_subgoals=slots)
        out = mp.plan_hierarchical(state, sg, k, plan_segment=seg)
        seg_steps = jnp.where(out.reached, out.info.steps, 2 * stride)
        used = jnp.sum(jnp.where(jnp.arange(slots) < sg.count, seg_steps, 0))
        return out.success, used, sg.count

    t0 = time.perf_counter()
    keys = jax.random.split(key, walls.shape[0])
    success, steps, count = jax.block_until_ready(jax.jit(jax.vmap(one))(
        states, jnp.asarray(walls), jnp.asarray(starts), jnp.asarray(goals), keys))
    seconds = time.perf_counter() - t0
    out = summarise(np.asarray(success), np.asarray(steps), optimal)
    out["mean_subgoals"] = float(np.mean(count))
    out["seconds_incl_compile"] = seconds
    print(f"  {name:28s} success {out['success_rate']:.2f}  return {out['mean_return']:+.3f}"
          f"  ({seconds:.1f} s)")
    return out


# -- (b) throughput ---------------------------------------------------------------------------

def _valid(pos, walls):
    h, w = walls.shape
    t = pos[None] + MOVES
    inside = (t[:, 0] >= 0) & (t[:, 0] < h) & (t[:, 1] >= 0) & (t[:, 1] < w)
    return inside & ~walls[jnp.clip(t[:, 0], 0, h - 1), jnp.clip(t[:, 1], 0, w - 1)]


def _value(pos, goal):
    d = jnp.sum(jnp.abs(pos - goal)).astype(jnp.float32)
    v = GOAL_REWARD * DISCOUNT ** jnp.maximum(d - 1.0, 0.0) \
        - STEP_COST * (1.0 - DISCOUNT ** d) / (1.0 - DISCOUNT)
    return jnp.where(d > 0, v, 0.0)


def _step(pos, walls, goal, action):
    done = jnp.all(pos == goal)
    ok = _valid(pos, walls)[action] & ~done
    nxt = jnp.where(ok, pos + MOVES[action], pos)
    at = jnp.all(nxt == goal)
    reward = jnp.where(done, 0.0, jnp.where(at, GOAL_REWARD, 0.0) - STEP_COST)
    discount = jnp.where(done | at, 0.0, DISCOUNT)
    logits = jnp.where(_valid(nxt, walls), 0.0, jnp.finfo(jnp.float32).min)
    return nxt, reward, discount, logits, _value(nxt, goal)


def _raw_recurrent_fn(params, rng_key, action, pos):
    walls, goal = params
    nxt, reward, discount, logits, value = jax.vmap(_step)(pos, walls, goal, action)
    return mctx.RecurrentFnOutput(reward=reward, discount=discount, prior_logits=logits,
                                  value=value), nxt


def _raw_search(pos, walls, goal, key, num_simulations):
    valid = jax.vmap(_valid)(pos, walls)
    root = mctx.RootFnOutput(prior_logits=jnp.zeros((pos.shape[0], 4)),
                             value=jax.vmap(_value)(pos, goal), embedding=pos)
    return mctx.gumbel_muzero_policy((walls, goal), key, root, _raw_recurrent_fn,
                                     num_simulations, invalid_actions=~valid)


def make_raw(num_simulations: int):
    @jax.jit
    def raw_batch(pos, walls, goal, key):
        return _raw_search(pos, walls, goal, key, num_simulations)

    @jax.jit
    def raw_vmap(pos, walls, goal, keys):
        def one(p, w, g, k):
            _, search_key = jax.random.split(k)  # plan_mcts: (value key, search key)
            out = _raw_search(p[None], w[None], g[None], search_key, num_simulations)
            return jax.tree.map(lambda x: x[0], out)
        return jax.vmap(one)(pos, walls, goal, keys)

    return raw_batch, raw_vmap


def timed(fns: dict[str, Any], repeat: int) -> dict[str, dict[str, float]]:
    """Interleaved timings (min and median seconds) of zero-argument functions."""
    compile_s = {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        compile_s[k] = time.perf_counter() - t0
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            samples[k].append(time.perf_counter() - t0)
    return {k: {"min": min(v), "median": float(np.median(v)), "first_call": compile_s[k]}
            for k, v in samples.items()}


def throughput(batch: int, num_simulations: int, size: int, repeat: int) -> dict[str, Any]:
    walls, starts, goals = mp.random_mazes(123, batch, size, size, wall_density=0.3,
                                           min_distance=2)
    states = mp.gridworld_states(walls, starts, goals)
    pos, w, g = states.pages["pos"], states.pages["walls"], states.pages["goal"]
    key = jax.random.key(0)
    keys = jax.random.split(key, batch)
    raw_batch, raw_vmap = make_raw(num_simulations)
    fns = {
        "raw_mctx_batch": lambda: raw_batch(pos, w, g, key),
        "raw_mctx_vmap": lambda: raw_vmap(pos, w, g, keys),
        "plan_mcts_static": lambda: mp.plan_mcts(
            MODEL, states, keys, num_simulations=num_simulations, static_pages=STATIC),
        "plan_mcts_all_pages": lambda: mp.plan_mcts(MODEL, states, keys,
                                                    num_simulations=num_simulations),
    }
    times = timed(fns, repeat)
    sims = batch * num_simulations
    out: dict[str, Any] = {"batch": batch, "num_simulations": num_simulations,
                           "grid": [size, size], "repeat": repeat, "seconds": times,
                           "simulations_per_s": {k: sims / v["min"] for k, v in times.items()}}
    base = times["raw_mctx_batch"]["min"]
    out["ratio_to_raw_mctx_batch"] = {k: base / v["min"] for k, v in times.items()}
    base_v = times["raw_mctx_vmap"]["min"]
    out["ratio_to_raw_mctx_vmap"] = {k: base_v / v["min"] for k, v in times.items()}
    base_m = times["raw_mctx_batch"]["median"]
    out["ratio_to_raw_mctx_batch_median"] = {k: base_m / v["median"] for k, v in times.items()}
    a_raw = np.asarray(raw_vmap(pos, w, g, keys).action)
    a_mm = np.asarray(fns["plan_mcts_static"]().action)
    out["same_actions_as_raw_vmap"] = float(np.mean(a_raw == a_mm))
    return out


# -- plots ------------------------------------------------------------------------------------

def plot(payload: dict[str, Any], path) -> None:
    res = payload["policies"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = list(res)
    ax = axes[0]
    ax.barh(names, [res[n]["success_rate"] for n in names], color="tab:blue")
    ax.set_xlabel("success rate")
    ax.set_xlim(0, 1)
    ax.set_title(f"{payload['mazes']} random {payload['size']}x{payload['size']} mazes")
    ax.invert_yaxis()
    ax = axes[1]
    for kind, marker in (("mcts/gumbel_muzero", "o"), ("mcts/muzero", "s"),
                         ("hierarchical", "^")):
        xs = [int(n.rsplit("/", 1)[1]) for n in names if n.startswith(kind + "/")]
        ys = [res[f"{kind}/{x}"]["success_rate"] for x in xs]
        if xs:
            ax.plot(xs, ys, marker=marker, label=kind)
    for base, style in (("greedy", "--"), ("random", ":")):
        ax.axhline(res[base]["success_rate"], ls=style, color="gray", label=base)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("simulations per step")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("success vs search budget")
    ax = axes[2]
    thr = payload["throughput"]["simulations_per_s"]
    ax.bar(range(len(thr)), list(thr.values()), color=["gray", "gray", "tab:green", "tab:olive"])
    ax.set_xticks(range(len(thr)), [k.replace("_", "\n", 2) for k in thr], fontsize=7)
    ax.set_ylabel("simulations / s")
    t = payload["throughput"]
    ax.set_title(f"throughput, B={t['batch']}, N={t['num_simulations']} (ratio static/raw "
                 f"{t['ratio_to_raw_mctx_batch']['plan_mcts_static']:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument("--mazes", type=int, default=100)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--wall-density", type=float, default=0.3)
    parser.add_argument("--min-distance", type=int, default=8)
    parser.add_argument("--sims", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--throughput-batch", type=int, default=64)
    parser.add_argument("--throughput-sims", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--threads", action="store_true",
                        help="keep XLA's CPU thread pool (default: single-threaded timing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="plan_gridworld")
    args = parser.parse_args()
    if args.quick:
        args.mazes, args.size, args.min_distance, args.sims = 16, 6, 5, [16, 64]
        args.throughput_batch, args.throughput_sims, args.repeat = 16, 32, 10
        args.out = args.out + "_quick"

    h = w = args.size
    num_steps = 4 * (h + w)
    walls, starts, goals = mp.random_mazes(args.seed, args.mazes, h, w,
                                           wall_density=args.wall_density,
                                           min_distance=args.min_distance)
    optimal = np.array([mp.maze_distances(walls[i], tuple(starts[i]))[tuple(goals[i])]
                        for i in range(args.mazes)], float)
    states = mp.gridworld_states(walls, starts, goals)
    key = jax.random.key(args.seed)
    print(f"{args.mazes} mazes {h}x{w}, optimal path {optimal.mean():.1f} steps on average, "
          f"budget {num_steps} steps")
    res: dict[str, Any] = {}
    res["random"] = run_flat("random", mp.random_policy(MODEL), states, key, num_steps, optimal)
    res["greedy"] = run_flat("greedy", mp.greedy_policy, states, key, num_steps, optimal)
    for sims in args.sims:
        pol = mp.mcts_policy(MODEL, num_simulations=sims, static_pages=STATIC)
        res[f"mcts/gumbel_muzero/{sims}"] = run_flat(f"mcts/gumbel_muzero/{sims}", pol, states,
                                                     key, num_steps, optimal)
    for sims in args.sims:
        pol = mp.mcts_policy(MODEL, num_simulations=sims, static_pages=STATIC,
                             policy="muzero", dirichlet_fraction=0.0, temperature=0.25)
        res[f"mcts/muzero/{sims}"] = run_flat(f"mcts/muzero/{sims}", pol, states, key,
                                              num_steps, optimal)
    slots = math.ceil(num_steps / (2 * args.stride))
    for sims in args.sims[:2]:
        res[f"hierarchical/{sims}"] = run_hierarchical(
            f"hierarchical/{sims}", sims, walls, starts, goals, args.stride, slots, key,
            optimal)

    print("throughput ...")
    thr = throughput(args.throughput_batch, args.throughput_sims, args.size, args.repeat)
    print("  simulations/s:", {k: round(v) for k, v in thr["simulations_per_s"].items()})
    print("  ratio to raw mctx (batch):",
          {k: round(v, 3) for k, v in thr["ratio_to_raw_mctx_batch"].items()})
    print("  same actions as raw (vmap, same keys):", thr["same_actions_as_raw_vmap"])

    payload = {
        "description": __doc__.split("\n\n")[0],
        "mazes": args.mazes, "size": args.size, "wall_density": args.wall_density,
        "min_distance": args.min_distance, "num_steps": num_steps, "stride": args.stride,
        "hierarchical_slots": slots, "seed": args.seed,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": os.getloadavg(),
        "reward": {"goal_reward": GOAL_REWARD, "step_cost": STEP_COST, "discount": DISCOUNT},
        "optimal_steps_mean": float(optimal.mean()),
        "greedy_failure_rate": 1.0 - res["greedy"]["success_rate"],
        "policies": res,
        "throughput": thr,
    }
    path = write_json(args.out, payload)
    png = RESULTS / f"{args.out}.png"
    plot(payload, png)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
