"""Propagation through the dependency graph: cost of the plan against hand-written code.

Writes ``experiments/results/bench_graph.json``. Every time is reported with a baseline measured
in the same process:

(a) A random DAG of 1,000 derived ``float32[16]`` pages over 100 source pages; each derived page
    is an affine map ``sum_i w_i * x_i + b`` of 1-3 inputs (mostly among the 32 previous pages,
    sometimes a source). For 1, 10 and 100 dirty sources,
    ``jax.jit(lambda s: mm.propagate(g, s, dirty, skip=...))`` is timed against hand-written
    jitted functions computing the same affected pages (``State`` in, ``State`` out, no epochs,
    no cut-off): the *straight-line* one (each page's function in topological order; compiled
    only for at most 200 affected pages, beyond which XLA:CPU's fusion makes its compilation
    explode) and a *vectorized* one that exploits the affine form (one gather + multiply-adds +
    scatter per topological level on a ``[pages, 16]`` slab). Trace + lowering and XLA compile
    times are reported apart from run times.
(a') The same on a 150-page DAG, where the straight-line baseline compiles, plus the eager call
    ``mm.propagate(g, s, dirty)`` (host checks + the cached jitted plan).
(b) The early cut-off mechanism: a chain ``clip -> f1 -> f2 -> f3`` of pages of n elements where
    ``f`` costs a few transcendental ops per element, with ``skip="cond"`` and ``skip="where"``,
    once when the head's value is unchanged (cut off) and once when it changes. This is the data
    behind ``COND_MIN_COST`` (when ``skip="auto"`` switches to ``lax.cond``).
(c) The seed's workloads without the Bus: one 1 KiB ``uint8`` page update (a single hop to a
    passthrough child) and a 10-page passthrough chain, one update at the head, jitted
    ``mm.apply`` + ``mm.propagate`` against numpy copying the same bytes.
(d) The same seed workloads through ``mm.Bus`` (``sync="never"``) when the Bus exists; see
    :func:`bus_workloads`.

Run ``python experiments/bench_graph.py [--quick]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from _common import write_json

import mmsb_jax as mm
from mmsb_jax.core.graph import Graph
from mmsb_jax.core.propagate import COND_MIN_COST, propagate


def timed(fns: dict, repeat: int) -> dict[str, dict[str, float]]:
    """Interleaved timings of several zero-argument functions (results blocked on).

    The machine is shared, so calls alternate between the functions (load spikes hit all of them)
    and both the minimum and the median of ``repeat`` calls are reported, in seconds. Ratios in
    the results use the minima.
    """
    for f in fns.values():
        jax.block_until_ready(f())
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            samples[k].append(time.perf_counter() - t0)
    return {k: {"min": min(v), "median": float(np.median(v))} for k, v in samples.items()}


# -- (a) random DAG --------------------------------------------------------------------------

class Affine(NamedTuple):
    """A derived page ``sum_i weights[i] * inputs[i] + bias`` (kept for the baselines)."""

    inputs: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float


def _affine_fn(weights: tuple[float, ...], bias: float):
    def fn(*xs):
        return sum(w * x for w, x in zip(weights, xs, strict=True)) + bias

    return fn


def random_graph(num_derived: int, num_sources: int, width: int, seed: int = 0,
                 window: int = 32, p_source: float = 0.1) -> tuple[Graph, dict[str, Affine]]:
    """A random DAG: derived page i reads 1-3 pages among the last ``window`` or a source."""
    rng = np.random.default_rng(seed)
    schema = mm.Schema([mm.PageSpec(f"s{i}", (width,)) for i in range(num_sources)])
    g = Graph(schema)
    names = list(schema.names)
    params: dict[str, Affine] = {}
    for i in range(num_derived):
        k = int(rng.integers(1, 4))
        ins: list[str] = []
        while len(ins) < k:
            if rng.random() < p_source:
                cand = names[int(rng.integers(num_sources))]
            else:
                lo = max(0, len(names) - window)
                cand = names[lo + int(rng.integers(len(names) - lo))]
            if cand not in ins:
                ins.append(cand)
        a = Affine(tuple(ins), tuple(float(x) for x in rng.uniform(0.2, 1.0, k) / k),
                   float(rng.uniform(-0.1, 0.1)))
        g = g.derive(f"d{i}", a.inputs, _affine_fn(a.weights, a.bias))
        params[f"d{i}"] = a
        names.append(f"d{i}")
    return g, params


def straight_line(graph: Graph, dirty: tuple[str, ...]):
    """Baseline 1: one straight-line function computing the affected pages, nothing else."""
    derivs = [graph.derivation(n) for n in graph.descendants(dirty)]

    def fn(state: mm.State) -> mm.State:
        pages = dict(state.pages)
        for d in derivs:
            pages[d.name] = d.fn(*(pages[i] for i in d.inputs))
        return state.with_pages({d.name: pages[d.name] for d in derivs})

    return fn


def vectorized(graph: Graph, params: dict[str, Affine], dirty: tuple[str, ...]):
    """Baseline 2: the affine DAG level by level on a ``[pages, width]`` slab.

    What a hand-writer who knows every page is affine would write: one gather, three
    multiply-adds and one scatter per topological level. ``propagate`` cannot assume this.
    The summation order matches ``_affine_fn`` (padding slots add ``0 * x``).
    """
    order = graph.descendants(dirty)
    names = graph.schema.names
    row = {n: i for i, n in enumerate(names)}
    level: dict[str, int] = {}
    for n in order:
        level[n] = 1 + max(level.get(i, 0) for i in params[n].inputs)
    steps = []
    for lv in sorted(set(level.values())):
        members = [n for n in order if level[n] == lv]
        idx = np.zeros((len(members), 3), np.int32)
        w = np.zeros((len(members), 3), np.float32)
        for j, n in enumerate(members):
            a = params[n]
            idx[j, :len(a.inputs)] = [row[i] for i in a.inputs]
            w[j, :len(a.inputs)] = a.weights
        b = np.array([params[n].bias for n in members], np.float32)
        steps.append((np.array([row[n] for n in members], np.int32), idx, w, b))

    def fn(state: mm.State) -> mm.State:
        slab = jnp.stack([state.pages[n] for n in names])
        for rows, idx, w, b in steps:
            x = slab[idx]  # [m, 3, width]
            new = w[:, 0, None] * x[:, 0] + w[:, 1, None] * x[:, 1]
            new = new + w[:, 2, None] * x[:, 2] + b[:, None]
            slab = slab.at[rows].set(new)
        return state.with_pages({n: slab[row[n]] for n in order})

    return fn, len(steps)


def _compile(fn, *args):
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, {"trace_lower_s": t1 - t0, "compile_s": t2 - t1}


def dag_workloads(num_derived: int, num_sources: int, dirty_counts: list[int], repeat: int,
                  straight_line_max: int, eager: bool) -> dict:
    """Propagation on a random affine DAG against the two hand-written baselines.

    The straight-line baseline is only compiled when at most ``straight_line_max`` pages are
    affected: XLA:CPU fuses each page's elementwise producers into every consumer, so the
    straight-line function's fused code grows much faster than the page count (in our runs a
    350-page straight-line function exhausted a 16 GB address-space cap while compiling).
    ``eager`` also times ``mm.propagate`` called outside ``jit`` (its own compilation).
    """
    t0 = time.perf_counter()
    g, params = random_graph(num_derived, num_sources, 16)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    state = mm.init_state(g.schema)
    state = state.with_pages({n: jnp.asarray(rng.standard_normal(16), jnp.float32)
                              for n in g.base.names})
    state = propagate(g, state, g.base.names)  # consistent derived pages
    results = []
    for k in dirty_counts:
        dirty = tuple(f"s{i}" for i in sorted(rng.choice(num_sources, k, replace=False)))
        s = state.with_pages({n: state.pages[n] + 1.0 for n in dirty})
        order = g.descendants(dirty)
        fns, compile_s, outs = {}, {}, {}
        vec_fn, levels = vectorized(g, params, dirty)
        vec, compile_s["hand_vectorized"] = _compile(vec_fn, s)
        fns["hand_vectorized"] = lambda vec=vec, s=s: vec(s)
        outs["hand_vectorized"] = vec(s)
        if len(order) <= straight_line_max:
            line, compile_s["hand_straight_line"] = _compile(straight_line(g, dirty), s)
            fns["hand_straight_line"] = lambda line=line, s=s: line(s)
            outs["hand_straight_line"] = line(s)
        for skip in (("auto", "cond", "where") if k == dirty_counts[0] else ("auto",)):
            prop, compile_s[f"jit_propagate_{skip}"] = _compile(
                lambda st, dirty=dirty, skip=skip: propagate(g, st, dirty, skip=skip), s)
            fns[f"jit_propagate_{skip}"] = lambda prop=prop, s=s: prop(s)
            outs[f"jit_propagate_{skip}"] = prop(s)
        if eager:
            t_first = time.perf_counter()
            propagate(g, s, dirty)  # first eager call: traces and compiles the cached plan
            compile_s["eager_propagate_auto"] = {"first_call_s": time.perf_counter() - t_first}
            fns["eager_propagate_auto"] = lambda dirty=dirty, s=s: propagate(g, s, dirty)
        ref = outs["hand_vectorized"]
        max_err = max(float(jnp.max(jnp.abs(o.pages[n] - ref.pages[n])))
                      for o in outs.values() for n in order)
        times = timed(fns, repeat)
        baselines = [b for b in ("hand_straight_line", "hand_vectorized") if b in times]
        row = {"dirty": k, "affected": len(order), "vectorized_levels": levels,
               "max_abs_diff_between_implementations": max_err,
               "run_ms": {n: {q: v * 1e3 for q, v in t.items()} for n, t in times.items()},
               "ratio": {f"{n}/{b}": times[n]["min"] / times[b]["min"]
                         for b in baselines for n in times if n not in baselines},
               "compile": compile_s}
        results.append(row)
        for n, t in times.items():
            c = sum(compile_s[n].values())
            ratios = ", ".join(f"{r:.2f}x {key.split('/')[1]}" for key, r in row["ratio"].items()
                               if key.startswith(n + "/"))
            print(f"  dirty={k:>3} affected={len(order):>4} {n:<22} {t['min'] * 1e3:8.3f} ms "
                  f"(compile {c:6.1f} s) {ratios}")
    return {"num_derived": num_derived, "num_sources": num_sources, "page": "float32[16]",
            "build_graph_s": build_s, "results": results}


# -- (b) cut-off mechanism ---------------------------------------------------------------------

def _costly(x):
    for _ in range(4):
        x = jnp.sin(x) * 0.9 + jnp.cos(x) * 0.1
    return x


def cutoff_workloads(sizes: list[int], repeat: int) -> dict:
    results = []
    for n in sizes:
        schema = mm.Schema([mm.PageSpec("a", (n,))])
        g = (Graph(schema).derive("head", ("a",), lambda a: jnp.clip(a, 0.0, 1.0))
             .derive("f1", ("head",), _costly).derive("f2", ("f1",), _costly)
             .derive("f3", ("f2",), _costly))
        cost = g.derivation("f1").cost
        s = propagate(g, mm.init_state(g.schema).with_pages({"a": jnp.full((n,), 0.5)}), "a")
        same = s.with_pages({"a": jnp.full((n,), 0.5)})   # head unchanged: cut off
        moved = s.with_pages({"a": jnp.full((n,), 0.25)})  # head changes: all recomputed
        row = {"elements": n, "estimated_cost_per_page": cost,
               "auto_uses_cond": cost >= COND_MIN_COST}
        fns = {}
        for skip in ("cond", "where"):
            f = jax.jit(lambda st, skip=skip, g=g: propagate(g, st, "a", skip=skip))
            fns[f"{skip}_cut_off"] = lambda f=f, same=same: f(same)
            fns[f"{skip}_changed"] = lambda f=f, moved=moved: f(moved)
        times = timed(fns, repeat)
        row.update({f"{k}_us": v["min"] * 1e6 for k, v in times.items()})
        results.append(row)
        print(f"  n={n:>8}: cut off cond {row['cond_cut_off_us']:9.1f} us / where "
              f"{row['where_cut_off_us']:9.1f} us; changed cond {row['cond_changed_us']:9.1f} "
              f"us / where {row['where_changed_us']:9.1f} us")
    return {"chain": "a -> clip -> costly -> costly -> costly", "cond_min_cost": COND_MIN_COST,
            "results": results}


# -- (c) the seed's workloads without the Bus ------------------------------------------------

def passthrough_chain(length: int, size: int = 1024) -> Graph:
    """``raw -> p1 -> ... -> p{length-1}``: ``length`` uint8 pages, each a copy of the last."""
    g = Graph(mm.Schema([mm.PageSpec("raw", (size,), "uint8")]))
    prev = "raw"
    for i in range(1, length):
        g = g.derive(f"p{i}", (prev,), lambda x: x)
        prev = f"p{i}"
    return g


def seed_workloads(repeat: int) -> dict:
    rng = np.random.default_rng(2)
    vals = [rng.integers(0, 256, 1024, dtype=np.uint8) for _ in range(2)]
    out = {}
    for name, length in (("single_hop", 2), ("chain_10", 10)):
        g = passthrough_chain(length)
        step = jax.jit(lambda s, v, g=g: propagate(g, mm.apply(s, mm.Delta.full("raw", v)),
                                                   ("raw",)), donate_argnums=0)
        holder = [mm.init_state(g.schema)]
        dev_vals = [jnp.asarray(v) for v in vals]
        i = [0]

        def run(step=step, holder=holder, dev_vals=dev_vals, i=i):
            i[0] ^= 1
            holder[0] = step(holder[0], dev_vals[i[0]])
            return holder[0].pages

        pages = [np.zeros(1024, np.uint8) for _ in range(length)]

        def numpy_run(pages=pages, i=i):
            i[0] ^= 1
            np.copyto(pages[0], vals[i[0]])
            for a, b in itertools.pairwise(pages):
                np.copyto(b, a)
            return pages

        times = timed({"mm": run, "numpy": numpy_run}, repeat)
        t_mm, t_np = times["mm"]["min"], times["numpy"]["min"]
        run()
        assert np.array_equal(np.asarray(holder[0].pages[g.derived[-1]]), vals[i[0]])
        out[name] = {"pages": length, "page_bytes": 1024, "jit_apply_propagate_us": t_mm * 1e6,
                     "numpy_copies_us": t_np * 1e6, "ratio_to_numpy": t_mm / t_np}
        print(f"  {name}: jit apply+propagate {t_mm * 1e6:.1f} us, numpy {t_np * 1e6:.2f} us")
    return out


# -- (d) the seed's workloads through the Bus ------------------------------------------------

def bus_workloads(repeat: int) -> dict:
    """Single hop and a 10-page passthrough chain through ``mm.Bus`` with ``sync="never"``.

    Uses the Bus API of DESIGN.md §4 (``Bus.open(dir, schema=, graph=, sync=)``,
    ``bus.commit([delta])``, ``bus.read(page)``). When ``mmsb_jax.runtime.bus`` does not exist
    yet the workload is reported as not run.
    """
    try:
        from mmsb_jax.runtime.bus import Bus
    except ImportError:
        return {"status": "not run: mmsb_jax.runtime.bus is not available"}
    rng = np.random.default_rng(3)
    vals = [rng.integers(0, 256, 1024, dtype=np.uint8) for _ in range(2)]
    out = {"status": "ok"}
    for name, length in (("single_hop", 2), ("chain_10", 10)):
        g = passthrough_chain(length)
        with tempfile.TemporaryDirectory() as tmp, \
                Bus.open(tmp, schema=g.schema, graph=g, sync="never") as bus:
            i = [0]

            def commit(bus=bus, i=i):
                i[0] ^= 1
                bus.commit([mm.Delta.full("raw", vals[i[0]])])
                # the State, so that the timing waits for the propagation: commit returns
                # without waiting for it (CommitInfo.derived is read on first use)
                return bus.state

            pages = [np.zeros(1024, np.uint8) for _ in range(length)]

            def numpy_run(pages=pages, i=i):
                i[0] ^= 1
                np.copyto(pages[0], vals[i[0]])
                for a, b in itertools.pairwise(pages):
                    np.copyto(b, a)
                return pages

            times = timed({"bus": commit, "numpy": numpy_run}, repeat)
            t_bus, t_np = times["bus"]["min"], times["numpy"]["min"]
            commit()
            assert np.array_equal(bus.read("raw"), vals[i[0]])
            propagated = bool(np.array_equal(bus.read(g.derived[-1]), vals[i[0]]))
        if not propagated:
            out["status"] = ("measured, but this Bus does not recompute derived pages yet: the "
                             "commit times exclude propagation")
        out[name] = {"pages": length, "bus_commit_us": t_bus * 1e6, "numpy_copies_us": t_np * 1e6,
                     "ratio_to_numpy": t_bus / t_np, "derived_pages_current": propagated}
        print(f"  {name}: bus commit {t_bus * 1e6:.1f} us, numpy {t_np * 1e6:.2f} us, "
              f"derived pages current: {propagated}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--out", default="bench_graph")
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.quick:
        big, small, sizes, repeat = (100, 20, [1, 10]), (40, 8, [1]), [256, 1 << 14], 5
    else:
        big, small = (1000, 100, [1, 10, 100]), (150, 15, [1])
        sizes, repeat = [256, 1 << 12, 1 << 16, 1 << 20], 30
    print(f"(a) random DAG of {big[0]} derived pages")
    dag = dag_workloads(*big, repeat, straight_line_max=200, eager=args.quick)
    print(f"(a') random DAG of {small[0]} derived pages (straight-line baseline compiles)")
    dag_small = dag_workloads(*small, repeat, straight_line_max=200, eager=True)
    print("(b) cut-off")
    cut = cutoff_workloads(sizes, repeat)
    print("(c) seed workloads without the Bus")
    seed = seed_workloads(repeat * 20)
    print("(d) seed workloads through the Bus")
    bus = bus_workloads(repeat * 5)
    print(f"  {bus.get('status')}")
    payload = {"benchmark": "bench_graph", "quick": args.quick,
               "load_average_before_after": [load_before, os.getloadavg()],
               "cpu_note": "shared CPU; timings interleave the variants and report minima",
               "random_dag": dag, "random_dag_small": dag_small,
               "cut_off": cut, "seed_workloads": seed, "bus_workloads": bus,
               "targets": {"ratio_to_hand_written": 1.2}}
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
