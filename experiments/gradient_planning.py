"""Gradient planning through the bus (layer 9): a point mass reaching goals, round obstacles.

Writes ``experiments/results/gradient_planning.json`` and
``experiments/results/gradient_planning.png``.

World: :func:`mmsb_jax.planning.point_mass_step` (dt 0.1, mass 1, drag 0.1; each step is two
``add`` deltas on the ``vel`` and ``pos`` pages), costs from
:func:`mmsb_jax.planning.point_mass_costs` (squared miss + 0.1 squared final speed + 1e-3
effort + 100 x squared obstacle penetration with 0.1 margin). Success: final distance to the
goal below ``--tol`` and final speed below 0.3 (free space), or final distance below ``--tol``
with no planned position inside an obstacle (obstacle scenes).

(a) Free space: ``--goals`` random goals in ``[-3, 3]^2``, start at rest at the origin, horizon
    30. :func:`mmsb_jax.planning.plan_gradient` (``optax.adam(0.3)``, ``--iters`` iterations)
    against doing nothing (zero force) and random shooting with the same number of trajectory
    evaluations (``--iters`` Gaussian sequences, sigma 1, keep the best; the gradient planner
    also evaluates ``--iters`` trajectories, plus their gradients).
(b) Obstacle scenes: ``disc`` (radius 0.8 at ``(2, 0)``) or ``wall`` (three discs of radius 0.6
    at ``(2, -0.8)``, ``(2, 0)``, ``(2, 0.8)``) between a start near ``(0, 0)`` and a goal near
    ``(4, 0)`` (offsets uniform in ``[-0.3, 0.3]`` in y; the first scene exactly symmetric).
    Flat gradient planning (horizon 60) against hierarchical planning:
    :func:`mmsb_jax.planning.decompose` on a 1-unit occupancy grid (TROPICAL-closure shortest
    path, waypoints 2 cells apart; the last waypoint is the exact goal) and
    :func:`mmsb_jax.planning.gradient_segment` (horizon 20 each) through
    :func:`mmsb_jax.planning.plan_hierarchical`.
(c) Cost of the bus: the batched free-space planner (``vmap`` of ``plan_gradient``) against
    the same optimisation hand-written on plain arrays (same dynamics, costs, optimiser and
    iterations), timed interleaved in this process; ratio of plans per second.

Timing runs with XLA's CPU thread pool off unless ``--threads`` is given (see
``plan_gridworld.py``: on a shared CPU the multi-threaded timings swing by 2x between runs).

Run ``python experiments/gradient_planning.py [--quick] [--threads]``.
"""

from __future__ import annotations

import os
import sys

if "--threads" not in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                               "=false intra_op_parallelism_threads=1").strip()

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from _common import RESULTS, write_json

import mmsb_jax as mm
from mmsb_jax import planning as mp

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DT, MASS, DRAG = 0.1, 1.0, 0.1
EFFORT, VEL_W, OBS_W, MARGIN = 1e-3, 0.1, 100.0, 0.1
STEP = mp.point_mass_step(dt=DT, mass=MASS, drag=DRAG)
RUNNING, TERMINAL = mp.point_mass_costs(effort=EFFORT, velocity_weight=VEL_W,
                                        obstacle_weight=OBS_W, margin=MARGIN)
OPT = optax.adam(0.3)
LAYOUTS = {
    "disc": np.array([[2.0, 0.0, 0.8]], np.float32),
    "wall": np.array([[2.0, -0.8, 0.6], [2.0, 0.0, 0.6], [2.0, 0.8, 0.6]], np.float32),
}
HORIZON, FLAT_HORIZON, SEG_HORIZON = 30, 60, 20


def traj_cost(state: mm.State, actions: jax.Array) -> jax.Array:
    return mp.trajectory_cost(STEP, state, actions, terminal_cost=TERMINAL, running_cost=RUNNING)


# -- (a) free space ---------------------------------------------------------------------------

def free_space(num_goals: int, iters: int, tol: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    goals = jnp.asarray(rng.uniform(-3, 3, (num_goals, 2)), jnp.float32)
    states = jax.vmap(lambda g: mp.point_mass_state(jnp.zeros(2), g))(goals)

    @jax.jit
    def gradient(states):
        return jax.vmap(lambda s: mp.plan_gradient(
            STEP, s, horizon=HORIZON, terminal_cost=TERMINAL, running_cost=RUNNING,
            action_shape=(2,), optimizer=OPT, iters=iters))(states)

    @jax.jit
    def shooting(states, key):
        def one(s, k):
            cands = jax.random.normal(k, (iters, HORIZON, 2))
            costs = jax.vmap(lambda a: traj_cost(s, a))(cands)
            best = jnp.argmin(costs)
            return cands[best], jnp.minimum.accumulate(costs)
        return jax.vmap(one)(states, jax.random.split(key, states.pages["pos"].shape[0]))

    t0 = time.perf_counter()
    plans = jax.block_until_ready(gradient(states))
    grad_s = time.perf_counter() - t0
    shoot_actions, shoot_hist = shooting(states, jax.random.key(seed))
    zero = jax.vmap(lambda s: traj_cost(s, jnp.zeros((HORIZON, 2))))(states)

    def outcome(actions):
        def final(s, a):
            end, _ = jax.lax.scan(lambda x, u: (STEP(x, u), None), s, a)
            return end
        end = jax.vmap(final)(states, actions)
        miss = jnp.linalg.norm(end.pages["pos"] - goals, axis=1)
        speed = jnp.linalg.norm(end.pages["vel"], axis=1)
        cost = jax.vmap(traj_cost)(states, actions)
        ok = (miss < tol) & (speed < 0.3)
        return {"success_rate": float(ok.mean()), "mean_final_distance": float(miss.mean()),
                "mean_final_speed": float(speed.mean()), "mean_cost": float(cost.mean()),
                "mean_cost_over_zero_action": float((cost / zero).mean())}

    out = {"goals": num_goals, "iters": iters, "horizon": HORIZON,
           "gradient": outcome(plans.actions) | {"seconds_incl_compile": grad_s},
           "random_shooting": outcome(shoot_actions),
           "zero_action": outcome(jnp.zeros((num_goals, HORIZON, 2))),
           "cost_history": {"gradient_mean": np.asarray(plans.cost_history.mean(0)).tolist(),
                            "shooting_best_mean": np.asarray(shoot_hist.mean(0)).tolist()},
           "example_paths": np.asarray(plans.states.pages["pos"][:6]).tolist(),
           "example_goals": np.asarray(goals[:6]).tolist()}
    for k in ("gradient", "random_shooting", "zero_action"):
        r = out[k]
        print(f"  {k:16s} success {r['success_rate']:.2f}  final distance "
              f"{r['mean_final_distance']:.3f}  cost/zero {r['mean_cost_over_zero_action']:.3f}")
    return out


# -- (b) obstacles ----------------------------------------------------------------------------

def inside(pos: jax.Array, obstacles: jax.Array) -> jax.Array:
    """``bool[...]``: ``pos: [..., 2]`` lies inside one of the discs ``obstacles: [K, 3]``."""
    d = jnp.linalg.norm(pos[..., None, :] - obstacles[:, :2], axis=-1)
    return jnp.any(d < obstacles[:, 2], axis=-1)


def obstacle_scenes(layout: str, num: int, iters: int, tol: float, seed: int
                    ) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 1)
    offsets = rng.uniform(-0.3, 0.3, (num, 2)).astype(np.float32)
    offsets[0] = 0.0
    starts = np.stack([np.zeros(num, np.float32), offsets[:, 0]], 1)
    goals = np.stack([np.full(num, 4.0, np.float32), offsets[:, 1]], 1)
    obstacles = jnp.asarray(LAYOUTS[layout])
    states = jax.vmap(lambda s, g: mp.point_mass_state(s, g, obstacles=obstacles))(
        jnp.asarray(starts), jnp.asarray(goals))
    # 1-unit occupancy grid over [-0.5, 4.5] x [-2.5, 2.5]: node r * 5 + c is cell (x=c, y=r-2).
    centres = jnp.stack(jnp.meshgrid(jnp.arange(5.0), jnp.arange(-2.0, 3.0), indexing="xy"),
                        -1).reshape(-1, 2)
    blocked = inside(centres, obstacles)
    adjacency = mp.grid_adjacency(np.asarray(blocked).reshape(5, 5))
    distances = mm.semiring.closure(mm.semiring.TROPICAL, adjacency)

    def nearest(p):
        return jnp.argmin(jnp.sum((centres - p) ** 2, axis=1)).astype(jnp.int32)

    def reached(s):
        return jnp.linalg.norm(s.pages["pos"] - s.pages["goal"]) < tol

    seg = mp.gradient_segment(STEP, horizon=SEG_HORIZON, terminal_cost=TERMINAL,
                              running_cost=RUNNING, action_shape=(2,), optimizer=OPT,
                              iters=iters, reached=reached)

    def clear(pos):  # no position inside a disc
        return ~jnp.any(inside(pos, obstacles))

    @jax.jit
    def flat(states):
        def one(s):
            p = mp.plan_gradient(STEP, s, horizon=FLAT_HORIZON, terminal_cost=TERMINAL,
                                 running_cost=RUNNING, action_shape=(2,), optimizer=OPT,
                                 iters=iters)
            pos = p.states.pages["pos"]
            return pos, jnp.linalg.norm(pos[-1] - s.pages["goal"]), clear(pos)
        return jax.vmap(one)(states)

    @jax.jit
    def hierarchical(states):
        def one(s):
            sg = mp.decompose(adjacency, nearest(s.pages["pos"]), nearest(s.pages["goal"]),
                              stride=2, max_subgoals=4, node_points=centres,
                              distances=distances)
            last = jnp.maximum(sg.count - 1, 0)
            sg = sg._replace(points=sg.points.at[last].set(s.pages["goal"]))
            out = mp.plan_hierarchical(s, sg, jax.random.key(0), plan_segment=seg)
            active = jnp.arange(4) < sg.count
            pos = out.info.states.pages["pos"]  # [K, T + 1, 2]
            ok = ~jnp.any(active[:, None] & inside(pos, obstacles))
            return pos, active, jnp.linalg.norm(out.state.pages["pos"] - s.pages["goal"]), ok
        return jax.vmap(one)(states)

    f_pos, f_miss, f_clear = flat(states)
    h_pos, h_active, h_miss, h_clear = hierarchical(states)
    res = {}
    for name, miss, ok in (("flat", f_miss, f_clear), ("hierarchical", h_miss, h_clear)):
        success = (miss < tol) & ok
        res[name] = {"success_rate": float(success.mean()),
                     "mean_final_distance": float(miss.mean()),
                     "collision_free_rate": float(ok.mean()),
                     "symmetric_scene_success": bool(success[0])}
        print(f"  {layout}/{name:11s} success {res[name]['success_rate']:.2f}  final distance "
              f"{res[name]['mean_final_distance']:.3f}  collision-free "
              f"{res[name]['collision_free_rate']:.2f}")
    res["scenes"] = num
    res["obstacles"] = LAYOUTS[layout].tolist()
    res["iters"] = iters
    res["example"] = {
        "flat_path": np.asarray(f_pos[0]).tolist(),
        "hierarchical_path": np.asarray(h_pos[0][np.asarray(h_active[0])]).reshape(-1, 2)
        .tolist(),
        "start": starts[0].tolist(), "goal": goals[0].tolist()}
    return res


# -- (c) cost of the bus ----------------------------------------------------------------------

def raw_plans(pos0: jax.Array, goals: jax.Array, iters: int) -> jax.Array:
    """The free-space optimisation on plain arrays: same dynamics, costs, optimiser."""
    def cost(actions, goal):
        def body(carry, a):
            p, v = carry
            dv = DT * (a / MASS - DRAG * v)
            v = v + dv
            return (p + DT * v, v), EFFORT * jnp.sum(a ** 2)
        (p, v), run = jax.lax.scan(body, (pos0, jnp.zeros(2)), actions)
        return jnp.sum(run) + jnp.sum((p - goal) ** 2) + VEL_W * jnp.sum(v ** 2)

    def one(goal):
        a0 = jnp.zeros((HORIZON, 2))
        vg = jax.value_and_grad(cost)

        def body(carry, _):
            a, st, best_a, best_c = carry
            c, g = vg(a, goal)
            better = c < best_c
            best_a, best_c = jnp.where(better, a, best_a), jnp.where(better, c, best_c)
            up, st = OPT.update(g, st, a)
            return (optax.apply_updates(a, up), st, best_a, best_c), c

        init = (a0, OPT.init(a0), a0, cost(a0, goal))
        (last, _, best_a, best_c), _ = jax.lax.scan(body, init, None, length=iters)
        return jnp.where(cost(last, goal) < best_c, last, best_a)

    return jax.vmap(one)(goals)


def bus_cost(num_goals: int, iters: int, repeat: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 2)
    goals = jnp.asarray(rng.uniform(-3, 3, (num_goals, 2)), jnp.float32)
    states = jax.vmap(lambda g: mp.point_mass_state(jnp.zeros(2), g))(goals)
    bus = jax.jit(lambda s: jax.vmap(lambda x: mp.plan_gradient(
        STEP, x, horizon=HORIZON, terminal_cost=TERMINAL, running_cost=RUNNING,
        action_shape=(2,), optimizer=OPT, iters=iters).actions)(s))
    raw = jax.jit(lambda g: raw_plans(jnp.zeros(2), g, iters))
    fns = {"raw_arrays": lambda: raw(goals), "plan_gradient": lambda: bus(states)}
    for f in fns.values():
        jax.block_until_ready(f())
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            samples[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in samples.items()}
    same = float(jnp.max(jnp.abs(fns["raw_arrays"]() - fns["plan_gradient"]())))
    out = {"goals": num_goals, "iters": iters, "repeat": repeat,
           "seconds_min": best, "seconds_median": {k: float(np.median(v))
                                                   for k, v in samples.items()},
           "plans_per_s": {k: num_goals / v for k, v in best.items()},
           "ratio_plan_gradient_to_raw": best["raw_arrays"] / best["plan_gradient"],
           "max_abs_action_difference": same}
    print(f"  plans/s: {({k: round(v, 1) for k, v in out['plans_per_s'].items()})}  ratio "
          f"{out['ratio_plan_gradient_to_raw']:.3f}  max |action diff| {same:.2e}")
    return out


# -- plots ------------------------------------------------------------------------------------

def plot(payload: dict[str, Any], path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    fs = payload["free_space"]
    ax = axes[0]
    for p, g in zip(fs["example_paths"], fs["example_goals"], strict=True):
        p = np.asarray(p)
        line, = ax.plot(p[:, 0], p[:, 1], lw=1.5)
        ax.plot(*g, marker="*", ms=12, color=line.get_color())
    ax.plot(0, 0, "ko")
    ax.set_aspect("equal")
    ax.set_title(f"free space: success {fs['gradient']['success_rate']:.2f} "
                 f"(shooting {fs['random_shooting']['success_rate']:.2f})")
    for ax, layout in zip(axes[1:3], LAYOUTS, strict=True):
        ob = payload["obstacles"][layout]
        ex = ob["example"]
        for x, y, r in LAYOUTS[layout]:
            ax.add_patch(plt.Circle((x, y), r, color="gray", alpha=0.5))
        f = np.asarray(ex["flat_path"])
        h = np.asarray(ex["hierarchical_path"])
        ax.plot(f[:, 0], f[:, 1], marker="x", markevery=[len(f) - 1], ms=10,
                label=f"flat (success {ob['flat']['success_rate']:.2f}), x = its end")
        ax.plot(h[:, 0], h[:, 1],
                label=f"hierarchical ({ob['hierarchical']['success_rate']:.2f})")
        ax.plot(*ex["start"], "ko")
        ax.plot(*ex["goal"], "k*", ms=12)
        ax.set_aspect("equal")
        ax.set_xlim(-0.7, 4.7)
        ax.set_ylim(-2.6, 2.6)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"{layout}: symmetric scene, {ob['scenes']} scenes in all")
    ax = axes[3]
    ch = fs["cost_history"]
    ax.plot(ch["gradient_mean"], label="gradient (adam), cost per iteration")
    ax.plot(ch["shooting_best_mean"], label="random shooting, best so far")
    ax.axhline(fs["zero_action"]["mean_cost"], ls=":", color="gray", label="zero action")
    ax.set_yscale("log")
    ax.set_xlabel("trajectory evaluations")
    ax.set_ylabel("mean cost")
    ax.legend(fontsize=8)
    bc = payload["bus_cost"]
    ax.set_title(f"free space cost (bus/raw speed {bc['ratio_plan_gradient_to_raw']:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument("--goals", type=int, default=50)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--tol", type=float, default=0.15)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", action="store_true",
                        help="keep XLA's CPU thread pool (default: single-threaded timing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gradient_planning")
    args = parser.parse_args()
    if args.quick:
        args.goals, args.scenes, args.iters, args.repeat = 8, 4, 60, 10
        args.out = args.out + "_quick"
    print("free space ...")
    fs = free_space(args.goals, args.iters, args.tol, args.seed)
    print("obstacle scenes ...")
    ob = {layout: obstacle_scenes(layout, args.scenes, args.iters, args.tol, args.seed)
          for layout in LAYOUTS}
    print("cost of the bus ...")
    bc = bus_cost(args.goals, args.iters, args.repeat, args.seed)
    payload = {"description": __doc__.split("\n\n")[0],
               "world": {"dt": DT, "mass": MASS, "drag": DRAG, "effort": EFFORT,
                         "velocity_weight": VEL_W, "obstacle_weight": OBS_W, "margin": MARGIN,
                         "optimizer": "adam(0.3)", "tol": args.tol},
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": os.getloadavg(),
               "free_space": fs, "obstacles": ob, "bus_cost": bc}
    path = write_json(args.out, payload)
    png = RESULTS / f"{args.out}.png"
    plot(payload, png)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
