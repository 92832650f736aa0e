"""World simulation throughput: entity-steps per second for 10^3 - 10^5 entities.

Writes ``experiments/results/world_sim.json`` and ``experiments/results/world_sim.png``.

For each size N (discs of radius r in the unit box, 5-15 % area fraction, speeds resolved so
that a disc moves less than its radius per step) the script measures, in the same process:

* ``mmsb``: ``World.simulate`` — the full store step (two ``full`` deltas and an ``add`` applied
  with ``mm.apply_batch``, then ``mm.propagate`` recomputing the physics and observable
  derived pages), ``S`` steps in one compiled ``lax.scan``, grid broad phase;
* ``plain``: a hand-written ``lax.scan`` over raw arrays calling the same physics kernels
  (``collide`` + ``integrate``) — no State, no deltas, no propagation, no energy/momentum
  pages. The ratio ``mmsb / plain`` is the cost of running the physics as store updates;
* ``dense`` (N = 10^3 only): the all-pairs ``O(N^2)`` broad phase, to show what the grid buys;
* ``bus``: ``World.step`` bound to a Bus (``sync="never"``): one logged commit per step,
  against the hand-written step called once per step (``bus_throughput_vs_plain_step``), then
  the replay of the whole run from the log, checked bit-for-bit against the live state; once
  with the record written in the commit (``write_behind: false``: each commit waits for the
  step that computed its payload) and once with ``write_behind=True`` (written during the next
  step); ``unbound_step_throughput_vs_plain_step`` is the same World unbound, one
  ``World.step(1)`` per step (no log), measured in the same rounds: the ceiling of the bus path;
* ``vmap``: B worlds of 256 discs stepped together with ``jax.vmap`` vs one at a time.

Energy drift over the measured run (elastic collisions, reflecting walls) and the grid overflow
flag are reported too. Run ``python experiments/world_sim.py [--quick]``.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import jax
import matplotlib
import numpy as np
from _common import RESULTS, bench, write_json

import mmsb_jax.apps as apps

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# (N, radius, steps per measurement): area fraction N * pi * r^2 ~ 0.06 - 0.15.
SIZES = [(1_000, 0.005, 20), (10_000, 0.002, 10), (100_000, 0.0007, 5)]
DT = 1e-3


def plain_run(params: apps.WorldParams, num_steps: int):
    """The same physics on raw arrays, hand-written: the baseline."""

    @jax.jit
    def run(pos, vel, radius, mass, alive):
        def body(carry, _):
            p, v = carry
            v = apps.collide(p, v, radius, mass, alive, params)
            return apps.integrate(p, v, radius, alive, params), None

        return jax.lax.scan(body, (pos, vel), None, length=num_steps)[0]

    return run


def measure_size(n: int, radius: float, steps: int, repeat: int) -> dict:
    speed = 0.25 * radius / DT / 4  # 4 sigma of a velocity component moves < radius / 4
    world = apps.World(DT, capacity=n, max_radius=radius, broadphase="grid")
    state = world.random_state(jax.random.key(0), n, speed=speed)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    jax.block_until_ready(world.simulate(state, steps))
    compile_s = time.perf_counter() - t0
    t_mmsb = bench(lambda: world.simulate(state, steps), repeat=repeat, warmup=0)
    out = world.simulate(state, steps)
    e0, e1 = float(state.pages["energy"]), float(out.pages["energy"])
    raw = tuple(state.pages[k] for k in ("pos", "vel", "radius", "mass", "alive"))
    plain = plain_run(world.params, steps)
    t_plain = bench(lambda: plain(*raw), repeat=repeat)
    p_pos, _ = plain(*raw)
    row = {
        "entities": n, "radius": radius, "speed_sigma": speed, "steps": steps,
        "area_fraction": n * np.pi * radius**2, "grid": list(world.params.grid_shape),
        "compile_s": compile_s,
        "mmsb_s_per_step": t_mmsb / steps, "plain_s_per_step": t_plain / steps,
        "mmsb_entity_steps_per_s": n * steps / t_mmsb,
        "plain_entity_steps_per_s": n * steps / t_plain,
        "ratio_mmsb_over_plain_time": t_mmsb / t_plain,
        "same_positions_as_plain": bool(np.array_equal(np.asarray(p_pos),
                                                       np.asarray(out.pages["pos"]))),
        "relative_energy_drift": (e1 - e0) / e0,
        "overflow": bool(out.pages["overflow"]),
    }
    if n <= 1_000:
        dense = apps.World(DT, capacity=n, max_radius=radius, broadphase="dense")
        t_dense = bench(lambda: dense.simulate(state, steps), repeat=repeat)
        row["dense_entity_steps_per_s"] = n * steps / t_dense
        row["ratio_dense_over_grid_time"] = t_dense / t_mmsb
    return row


def measure_bus(n: int, radius: float, steps: int, rounds: int = 9, *,
                write_behind: bool = False) -> dict:
    """One logged commit per step vs the hand-written step dispatched once per step.

    Both loops run from Python one step at a time (the bus commits every step), interleaved
    for ``rounds`` rounds; the ratio is of the medians.
    """
    speed = 0.25 * radius / DT / 4
    with tempfile.TemporaryDirectory() as d:
        with apps.World.open(d + "/w", DT, capacity=n, max_radius=radius, broadphase="grid",
                             sync="never", write_behind=write_behind) as world:
            world.set_state(world.random_state(jax.random.key(0), n, speed=speed))
            world.step(2)  # compile the bound path
            st = world.state
            raw = [st.pages[k] for k in ("pos", "vel", "radius", "mass", "alive")]
            plain_step = plain_run(world.params, 1)
            jax.block_until_ready(plain_step(*raw))
            # the same World unbound, stepped one step per call: the store's step without a
            # log, which bounds what the bus path can reach
            free = apps.World(DT, capacity=n, max_radius=radius, broadphase="grid")
            free.set_state(st)
            free.step(1)
            t_bus, t_plain, t_free = [], [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                world.step(steps)
                jax.block_until_ready(world.state)
                t_bus.append(time.perf_counter() - t0)
                p, v = raw[0], raw[1]
                t0 = time.perf_counter()
                for _ in range(steps):
                    p, v = plain_step(p, v, *raw[2:])
                jax.block_until_ready(p)
                t_plain.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for _ in range(steps):
                    free.step(1)
                jax.block_until_ready(free.state)
                t_free.append(time.perf_counter() - t0)
            t_bus_s, t_plain_s = float(np.median(t_bus)), float(np.median(t_plain))
            t_free_s = float(np.median(t_free))
            live = world.state
            t0 = time.perf_counter()
            replayed = world.replay()
            jax.block_until_ready(replayed)
            t_replay = time.perf_counter() - t0
            exact = all(np.array_equal(np.asarray(live.pages[k]), np.asarray(replayed.pages[k]))
                        for k in world.graph.schema.names)
            epochs = all(int(live.epochs[k]) == int(replayed.epochs[k])
                         for k in world.graph.base.names)
            log_bytes = world.bus.metrics()["bytes_logged"]
    return {"entities": n, "write_behind": write_behind, "steps": steps * rounds,
            "bus_s_per_step": t_bus_s / steps,
            "plain_step_s_per_step": t_plain_s / steps,
            "bus_entity_steps_per_s": n * steps / t_bus_s,
            "plain_step_entity_steps_per_s": n * steps / t_plain_s,
            "bus_throughput_vs_plain_step": t_plain_s / t_bus_s,
            "unbound_step_throughput_vs_plain_step": t_plain_s / t_free_s,
            "replay_s": t_replay,
            "replay_bit_exact": bool(exact and epochs), "bytes_logged": int(log_bytes)}


def measure_vmap(batch: int, n: int = 256, steps: int = 10) -> dict:
    world = apps.World(DT, capacity=n, max_radius=0.01, broadphase="grid")
    keys = jax.random.split(jax.random.key(1), batch)
    states = jax.vmap(lambda k: world.random_state(k, n, speed=0.5))(keys)
    run_batch = jax.jit(jax.vmap(functools.partial(world.simulate, num_steps=steps)))
    t_batch = bench(lambda: run_batch(states), repeat=3)
    singles = [jax.tree.map(lambda x, b=b: x[b], states) for b in range(batch)]
    t_loop = bench(lambda: [world.simulate(s, steps) for s in singles], repeat=3)
    return {"worlds": batch, "entities_per_world": n, "steps": steps,
            "vmap_entity_steps_per_s": batch * n * steps / t_batch,
            "loop_entity_steps_per_s": batch * n * steps / t_loop,
            "speedup_vmap_over_loop": t_loop / t_batch}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="sizes 10^3 and 10^4 only")
    args = parser.parse_args()
    sizes = SIZES[:2] if args.quick else SIZES
    rows = []
    for n, r, steps in sizes:
        rows.append(measure_size(n, r, steps, repeat=3))
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()})
    bus = [measure_bus(n, r, 20, write_behind=wb) for n, r, _ in SIZES[:2] for wb in (False, True)]
    print(bus)
    vm = measure_vmap(16 if args.quick else 64)
    print(vm)
    path = write_json("world_sim", {"dt": DT, "sizes": rows, "bus": bus, "vmap": vm,
                                    "quick": args.quick})
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["entities"] for r in rows]
    ax.loglog(ns, [r["mmsb_entity_steps_per_s"] for r in rows], "o-", label="World.simulate")
    ax.loglog(ns, [r["plain_entity_steps_per_s"] for r in rows], "s--",
              label="hand-written scan, same kernels")
    for wb, mark in ((False, "^:"), (True, "v:")):
        pts = [b for b in bus if b["write_behind"] == wb]
        ax.loglog([b["entities"] for b in pts], [b["bus_entity_steps_per_s"] for b in pts], mark,
                  label="bound to a Bus (1 commit/step" + (", write-behind)" if wb else ")"))
    ax.set_xlabel("entities")
    ax.set_ylabel("entity-steps / s")
    ax.set_title(f"World throughput ({jax.default_backend()})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "world_sim.png", dpi=120)
    print("wrote", path)


if __name__ == "__main__":
    main()
