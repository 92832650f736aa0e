"""Attractor states (layer 7): Hopfield memories and test systems with known fixed points.

Writes ``experiments/results/attractors.json`` and ``experiments/results/attractors.png``.

(a) Hopfield network, N = 64 units, P in {3, 4, 5} random +-1 patterns stored with the Hebbian
    rule, dynamics ``x <- tanh(beta W x)`` (beta = 4) acting on a page. From noisy copies of the
    patterns (a fraction ``noise`` of the bits flipped) ``find_attractors`` iterates the map and
    labels every end point from the Jacobian's eigenvalues. Reported per (P, noise), over
    several random seeds: the fraction of stored patterns recovered (found as a stable
    attractor, up to sign), the fraction of starts that end at their own pattern, spurious
    attractors, stability labels and iterations. Also: Newton from near the origin (a saddle
    with P unstable directions), and goals emerging from attractors reached from random starts,
    ranked by minus the Hopfield energy (are the stored patterns ranked first?).
(b) The logistic map ``x -> r x (1 - x)``, r = 2.8: fixed points 0 (unstable, f' = r) and
    1 - 1/r (stable, f' = 2 - r), found by Newton from a grid; iteration finds only the latter.
(c) A 2-D map ``v -> v + 0.1 (v - v^3)`` with nine fixed points (4 stable, 4 saddles,
    1 unstable) and the Henon map (a = 1.4, b = 0.3; two saddles in closed form).

Timing: the jitted attractor search for one Hopfield case against a numpy baseline that iterates
the same map start by start (same process). Run ``python experiments/attractors.py [--quick]``.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from _common import RESULTS, bench, write_json

import mmsb_jax as mm
from mmsb_jax import intention as mi
from mmsb_jax import utility as mu

matplotlib.use("Agg")
import matplotlib.pyplot as plt

N, STARTS, BETA, R = 64, 40, 4.0, 2.8
HENON_A, HENON_B = 1.4, 0.3


@functools.partial(jax.jit, static_argnames=("beta", "method"))
def hopfield_search(weights: jax.Array, starts: jax.Array, beta: float | None,
                    method: str = "iterate") -> mi.Attractors:
    """All attractors of the Hopfield map reached from ``starts: [B, N]`` (one compile)."""
    return mi.find_attractors(mi.hopfield_map(weights, beta), starts, method=method)


def hopfield_case(seed: int, num_patterns: int, noise: float):
    k_pat, k_noise = jax.random.split(jax.random.PRNGKey(seed))
    patterns = jnp.where(jax.random.bernoulli(k_pat, 0.5, (num_patterns, N)), 1.0, -1.0)
    source = np.minimum(np.arange(STARTS) // (STARTS // num_patterns), num_patterns - 1)
    flips = jax.random.bernoulli(k_noise, noise, (STARTS, N))
    starts = patterns[source] * jnp.where(flips, -1.0, 1.0)
    return np.asarray(patterns), mi.hebbian_weights(patterns), starts, source


def pattern_index(points: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """For each point, the stored pattern it equals up to sign, or -1."""
    signs = np.sign(points)
    same = np.all(signs[:, None, :] == patterns[None], axis=-1)
    neg = np.all(signs[:, None, :] == -patterns[None], axis=-1)
    hit = same | neg
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def hopfield_sweep(seeds: int, noises: list[float]) -> list[dict[str, Any]]:
    rows = []
    for p in (3, 4, 5):
        for noise in noises:
            pat_rec, start_rec, spurious, conv, iters = [], [], [], [], []
            labels: dict[str, int] = {name: 0 for name in mi.STABILITY_LABELS}
            for seed in range(seeds):
                patterns, w, starts, source = hopfield_case(1000 * p + seed, p, noise)
                att = jax.device_get(hopfield_search(w, starts, BETA))
                valid = att.valid
                idx = pattern_index(att.points[valid], patterns)
                stable = att.code[valid] == mi.STABLE
                found = set(idx[(idx >= 0) & stable].tolist())
                pat_rec.append(len(found) / p)
                slot_pattern = np.full(STARTS, -1)
                slot_pattern[: len(idx)] = idx
                reached = np.where(att.assignment >= 0, slot_pattern[att.assignment], -1)
                start_rec.append(float(np.mean(reached == source)))
                spurious.append(int(np.sum(idx < 0)))
                conv.append(float(np.mean(att.converged)))
                iters.extend(att.iterations.tolist())
                for c in att.code[valid]:
                    labels[mi.stability_label(c)] += 1
            rows.append({
                "patterns": p, "noise": noise, "seeds": seeds,
                "pattern_recovery_rate": float(np.mean(pat_rec)),
                "start_recovery_rate": float(np.mean(start_rec)),
                "spurious_attractors_mean": float(np.mean(spurious)),
                "converged_fraction": float(np.mean(conv)),
                "labels": labels,
                "iterations_mean": float(np.mean(iters)),
                "iterations_max": int(np.max(iters)),
            })
            print(f"P={p} noise={noise:.2f}: patterns {rows[-1]['pattern_recovery_rate']:.3f} "
                  f"starts {rows[-1]['start_recovery_rate']:.3f} labels {labels}")
    return rows


def hopfield_origin() -> dict[str, Any]:
    out = []
    for p in (3, 4, 5):
        _, w, _, _ = hopfield_case(7 + p, p, 0.1)
        starts = 0.01 * jax.random.normal(jax.random.PRNGKey(p), (4, N))
        att = jax.device_get(hopfield_search(w, starts, BETA, "newton"))
        mags = np.abs(att.eigenvalues[0])
        out.append({"patterns": p, "count": int(att.count), "label": att.labels()[0],
                    "max_abs_x": float(np.max(np.abs(att.points[0]))),
                    "unstable_directions": int(np.sum(mags > 1)),
                    "newton_iterations": att.iterations.tolist()})
    return {"cases": out, "expected": "saddle at x = 0 with P unstable directions"}


def hopfield_emergent(seeds: int) -> dict[str, Any]:
    schema = mm.Schema([mm.PageSpec("x", (N,))])
    state = mm.init_state(schema)
    cases = []
    for seed in range(seeds):
        patterns, w, _, _ = hopfield_case(500 + seed, 3, 0.1)
        rand = jnp.where(jax.random.bernoulli(jax.random.PRNGKey(seed), 0.5, (STARTS, N)),
                         1.0, -1.0)
        att = hopfield_search(w, rand, BETA)
        utility = mu.Utility(lambda s, w=w: -mi.hopfield_energy(w, s.pages["x"]), "-energy",
                             ("x",))
        goals = mi.emergent_goals(att, utility, state, "x")
        idx = pattern_index(np.stack([np.asarray(g.goal.target) for g in goals]), patterns)
        stored = (idx >= 0).tolist()
        first_spurious = stored.index(False) if False in stored else len(stored)
        cases.append({
            "goals": len(goals),
            "stored_patterns_reached": len(set(idx[idx >= 0].tolist())),
            "stored_ranked_first": bool(not any(stored[first_spurious:])),
            "utilities": [round(g.utility, 4) for g in goals],
            "is_stored_pattern": stored,
            "basin_sizes": [g.basin_size for g in goals],
        })
    return {"starts": "random +-1", "rank_by": "-energy", "cases": cases,
            "stored_ranked_first_rate": float(np.mean([c["stored_ranked_first"]
                                                       for c in cases]))}


def logistic(x):
    return R * x * (1.0 - x)


def cubic2d(v):
    return v + 0.1 * (v - v**3)


def henon(v):
    return jnp.stack([1.0 - HENON_A * v[0] ** 2 + v[1], HENON_B * v[0]])


def np_label(eigs: np.ndarray, tol: float = 1e-4) -> str:
    mag = np.abs(eigs)
    if np.any(np.abs(mag - 1) <= tol):
        return "marginal"
    return "stable" if np.all(mag < 1) else "unstable" if np.all(mag > 1) else "saddle"


def compare(att: mi.Attractors, known: list[tuple[np.ndarray, str]]) -> dict[str, Any]:
    """Match found fixed points to known ones; report errors and label agreement."""
    att = jax.device_get(att)
    pts = att.points[att.valid].reshape(int(att.count), -1)
    labels = att.labels()
    rows, matched = [], 0
    for x, label in known:
        d = np.max(np.abs(pts - np.asarray(x).reshape(1, -1)), axis=1) if len(pts) else []
        j = int(np.argmin(d)) if len(pts) else -1
        ok = bool(j >= 0 and d[j] < 1e-3)
        matched += int(ok)
        rows.append({"known": np.asarray(x).ravel().tolist(), "label_expected": label,
                     "found": bool(ok), "abs_error": float(d[j]) if ok else None,
                     "label_found": labels[j] if ok else None,
                     "label_correct": bool(ok and labels[j] == label)})
    return {"known": len(known), "found_total": int(att.count), "matched": matched,
            "labels_correct": sum(r["label_correct"] for r in rows), "points": rows,
            "iterations_mean": float(np.mean(att.iterations))}


def test_systems() -> dict[str, Any]:
    out: dict[str, Any] = {}
    known = [(np.array(0.0), "unstable"), (np.array(1 - 1 / R), "stable")]
    grid = jnp.linspace(-0.3, 1.3, 17, dtype=jnp.float32)
    out["logistic_newton"] = compare(mi.find_attractors(logistic, grid, method="newton"), known)
    inner = jnp.linspace(0.02, 0.98, 17, dtype=jnp.float32)
    out["logistic_iterate"] = compare(mi.find_attractors(logistic, inner), known)
    known2 = []
    for a in (-1.0, 0.0, 1.0):
        for b in (-1.0, 0.0, 1.0):
            jac = np.diag([1 + 0.1 * (1 - 3 * a * a), 1 + 0.1 * (1 - 3 * b * b)])
            known2.append((np.array([a, b]), np_label(np.linalg.eigvals(jac))))
    g = np.linspace(-1.4, 1.4, 9)
    grid2 = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
    out["cubic2d_newton"] = compare(mi.find_attractors(cubic2d, grid2, method="newton"), known2)
    out["cubic2d_iterate"] = compare(mi.find_attractors(cubic2d, grid2 + 0.01), known2)
    disc = math.sqrt((1 - HENON_B) ** 2 + 4 * HENON_A)
    known3 = []
    for sign in (1.0, -1.0):
        x = (-(1 - HENON_B) + sign * disc) / (2 * HENON_A)
        jac = np.array([[-2 * HENON_A * x, 1.0], [HENON_B, 0.0]])
        known3.append((np.array([x, HENON_B * x]), np_label(np.linalg.eigvals(jac))))
    starts = jnp.asarray(np.concatenate([k[0][None] + 0.1 * np.random.default_rng(0).normal(
        size=(6, 2)) for k in known3]), jnp.float32)
    out["henon_newton"] = compare(mi.find_attractors(henon, starts, method="newton"), known3)
    return out


def numpy_iteration(w: np.ndarray, starts: np.ndarray, beta: float, tol: float = 1e-6,
                    max_iter: int = 500) -> np.ndarray:
    """Baseline: iterate x <- tanh(beta W x) start by start in numpy (float32)."""
    out = np.empty_like(starts)
    for i, x in enumerate(starts):
        for _ in range(max_iter):
            fx = np.tanh(beta * (w @ x))
            if np.max(np.abs(fx - x)) <= tol:
                break
            x = fx
        out[i] = x
    return out


def timing(repeat: int) -> dict[str, Any]:
    _, w, starts, _ = hopfield_case(0, 4, 0.1)
    search = bench(lambda: hopfield_search(w, starts, BETA), repeat=repeat)
    fixed = jax.jit(jax.vmap(lambda x: mi.find_fixed_point(mi.hopfield_map(w, BETA), x)))
    only_fp = bench(lambda: fixed(starts), repeat=repeat)
    w_np, s_np = np.asarray(w), np.asarray(starts)
    base = bench(lambda: numpy_iteration(w_np, s_np, BETA), repeat=repeat)
    return {"case": f"Hopfield N={N}, P=4, {STARTS} starts, beta={BETA}",
            "find_attractors_s (iterate + Jacobian eigenvalues + dedup)": search,
            "fixed_points_only_s (vmapped find_fixed_point)": only_fp,
            "numpy_iteration_baseline_s": base,
            "fixed_points_speedup_vs_numpy": base / only_fp,
            "find_attractors_vs_numpy_iteration": base / search}


def plot(sweep: list[dict], path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for p, color in zip((3, 4, 5), ("tab:blue", "tab:green", "tab:purple"), strict=True):
        rows = [r for r in sweep if r["patterns"] == p]
        noise = [r["noise"] for r in rows]
        ax.plot(noise, [r["pattern_recovery_rate"] for r in rows], "o-", color=color,
                label=f"P={p}: patterns found")
        ax.plot(noise, [r["start_recovery_rate"] for r in rows], "x--", color=color,
                alpha=0.7, label=f"P={p}: starts reaching own pattern")
    ax.set_xlabel("fraction of bits flipped in the start")
    ax.set_ylabel("recovery rate")
    ax.set_title(f"Hopfield N={N}: stored patterns as stable attractors")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)

    ax = axes[1]
    g = np.linspace(-1.6, 1.6, 61)
    grid = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
    basins = jax.device_get(mi.find_attractors(cubic2d, grid + 1e-3))
    ax.imshow(basins.assignment.reshape(len(g), len(g)), origin="lower", cmap="Pastel1",
              extent=(g[0], g[-1], g[0], g[-1]), interpolation="nearest")
    fixed = jax.device_get(mi.find_attractors(cubic2d, grid[::37], method="newton"))
    style = {"stable": ("o", "tab:blue"), "saddle": ("X", "tab:orange"),
             "unstable": ("^", "tab:red"), "marginal": ("s", "k")}
    seen = set()
    for pnt, lab in zip(fixed.points[fixed.valid], fixed.labels(), strict=True):
        m, c = style[lab]
        ax.scatter(*pnt, marker=m, color=c, s=80, edgecolor="k",
                   label=None if lab in seen else lab)
        seen.add(lab)
    ax.set_title("v -> v + 0.1 (v - v^3): basins, fixed points")
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[2]
    x = np.linspace(-0.1, 1.05, 200)
    ax.plot(x, R * x * (1 - x), label=f"f(x) = {R} x (1 - x)")
    ax.plot(x, x, "k:", lw=1)
    cx, cy, x0 = [0.05], [0.0], 0.05
    for _ in range(30):  # cobweb: up to the curve, across to the diagonal
        fx = R * x0 * (1 - x0)
        cx += [x0, fx]
        cy += [fx, fx]
        x0 = fx
    ax.plot(cx, cy, color="gray", lw=0.7, label="iteration from 0.05")
    ax.scatter([0.0], [0.0], marker="^", color="tab:red", s=80, edgecolor="k",
               label="0: unstable", zorder=3)
    ax.scatter([1 - 1 / R], [1 - 1 / R], marker="o", color="tab:blue", s=80, edgecolor="k",
               label="1 - 1/r: stable", zorder=3)
    ax.set_title("logistic map, r = 2.8")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and noise levels")
    parser.add_argument("--out", default="attractors")
    args = parser.parse_args()
    seeds = 2 if args.quick else 8
    noises = [0.1, 0.3] if args.quick else [0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40]
    t0 = time.perf_counter()
    sweep = hopfield_sweep(seeds, noises)
    payload = {
        "hopfield": {"N": N, "beta": BETA, "starts_per_case": STARTS, "map": "tanh(beta W x)",
                     "sweep": sweep},
        "hopfield_origin_newton": hopfield_origin(),
        "hopfield_emergent_goals": hopfield_emergent(2 if args.quick else 5),
        "test_systems": test_systems(),
        "timing": timing(3 if args.quick else 5),
    }
    png = RESULTS / f"{args.out}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(sweep, png)
    payload["plot"] = png.name
    payload["wall_s"] = time.perf_counter() - t0
    path = write_json(args.out, payload)
    ts = payload["test_systems"]
    for name, res in ts.items():
        print(f"{name}: matched {res['matched']}/{res['known']} "
              f"(found {res['found_total']}), labels correct {res['labels_correct']}")
    print(payload["hopfield_origin_newton"]["cases"])
    print("emergent goals: stored patterns ranked first in "
          f"{payload['hopfield_emergent_goals']['stored_ranked_first_rate']:.2f} of cases")
    print({k: v for k, v in payload["timing"].items()})
    print(f"wrote {path} and {png} in {payload['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
