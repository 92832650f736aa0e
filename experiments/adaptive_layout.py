"""Layer 5 (adaptive memory): co-access row reordering and graph rewriting, measured.

Writes ``experiments/results/adaptive_layout.json``. Every baseline runs in the same process.

(a) Row layout. A page of ``rows`` rows (default 1M, rows of ``width`` float32). ``clusters``
    hot clusters of ``cluster_size`` rows each are scattered uniformly at random over the page.
    Each commit is one ``rows`` delta touching ``per_cluster`` random rows of each of
    ``touch`` clusters, the clusters drawn with Zipf(1.1) popularity (a skewed workload).
    Telemetry: ``train`` commits go through an ``mm.Bus``; ``mm.adaptive.row_access(bus, ...)``
    reads its log into the co-access matrix, ``relayout_permutation`` orders the rows (rcm,
    spectral, frequency) and ``apply_layout`` commits the relayout as one logged delta. On
    ``test`` *held-out* commits from the same distribution we report blocks of ``block`` rows
    touched per commit before and after, and the time of one jitted ``lax.scan`` that applies
    all test deltas to the page (logical indices on the original page vs. translated indices on
    the relaid page; the page buffer is donated so updates are in place).
(b) Graph rewriting. ``chains`` chains of ``length`` derived pages (elementwise float ops on
    ``n``-element pages) hang off one base page; each chain also has a "debug" page reading its
    middle page that nobody reads. ``drop_dead`` (outputs = chain ends) then ``fuse_chains``
    leave one page per chain. Reported: propagation time (warm, jitted plan) and compile time,
    before and after, and whether every output value and epoch is bit-identical.

Run ``python experiments/adaptive_layout.py [--quick]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import bench, write_json
from jax import lax

import mmsb_jax as mm
from mmsb_jax import adaptive

# -- (a) row layout ------------------------------------------------------------------------------


def _workload(rng: np.random.Generator, clusters: np.ndarray, n_commits: int, touch: int,
              per_cluster: int) -> np.ndarray:
    """``int32[n_commits, touch * per_cluster]`` row indices of skewed commits."""
    c = clusters.shape[0]
    pop = 1.0 / np.arange(1, c + 1) ** 1.1
    pop /= pop.sum()
    out = np.empty((n_commits, touch * per_cluster), np.int32)
    for t in range(n_commits):
        chosen = rng.choice(c, size=touch, replace=False, p=pop)
        rows = [rng.choice(clusters[k], size=per_cluster, replace=False) for k in chosen]
        out[t] = np.concatenate(rows)
    return out


def _scan_apply():
    def run(page, idx, vals):
        def step(p, xs):
            i, v = xs
            return mm.apply_page(p, mm.Delta.rows("data", i, v, op="add")), None
        page, _ = lax.scan(step, page, (idx, vals))
        return page
    return jax.jit(run, donate_argnums=0)


def layout_experiment(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    n, w = args.rows, args.width
    hot = rng.choice(n, size=args.clusters * args.cluster_size, replace=False)
    clusters = hot.reshape(args.clusters, args.cluster_size)
    train = _workload(rng, clusters, args.train, args.touch, args.per_cluster)
    test = _workload(rng, clusters, args.test, args.touch, args.per_cluster)
    k = train.shape[1]
    schema = mm.Schema([mm.PageSpec("data", (n, w), "float32")])
    tmp = tempfile.mkdtemp(prefix="mmsb_adaptive_")
    try:
        with mm.Bus.open(tmp, schema=schema, sync="never") as bus:
            bus.commit(mm.Delta.full("data", rng.standard_normal((n, w)).astype(np.float32)))
            ones = np.ones((k, w), np.float32)
            t0 = time.perf_counter()
            for idx in train:
                bus.commit(mm.Delta.rows("data", idx, ones, op="add"))
            commit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            coaccess = adaptive.row_access(bus, "data", n)
            telemetry_s = time.perf_counter() - t0
            layouts, order_s = {}, {}
            for method in args.methods:
                t0 = time.perf_counter()
                layouts[method] = adaptive.relayout_permutation(coaccess, method)
                order_s[method] = time.perf_counter() - t0
            logical_page = bus.state.pages["data"]
            best = layouts[args.methods[0]]
            t0 = time.perf_counter()
            info = bus.commit(adaptive.apply_layout(bus.state, "data", best))
            relayout_commit_s = time.perf_counter() - t0
            relaid_ok = bool(jnp.array_equal(
                adaptive.read_logical(bus.state, "data", best), logical_page))
            relayout_bytes = info.bytes_logged
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def blocks(layout):
        return [adaptive.blocks_touched(r, args.block, layout) for r in test]

    base_blocks = blocks(None)
    vals = jnp.asarray(rng.standard_normal((*test.shape, w)).astype(np.float32))
    apply = _scan_apply()
    page0 = np.asarray(logical_page)

    def runner(page_np, idx):
        """A step applying every test delta in place to a donated device page, and the
        result of one run from the original page."""
        idx = jnp.asarray(idx)
        holder = [jnp.asarray(page_np)]

        def once():
            holder[0] = apply(holder[0], idx, vals)
            return holder[0]
        jax.block_until_ready(once())  # compile + warm-up
        return once, np.asarray(apply(jnp.asarray(page_np), idx, vals))

    variants = {"logical": runner(page0, test)}
    for method, lay in layouts.items():
        variants[method] = runner(page0[np.asarray(lay.perm)], np.asarray(lay.to_physical(test)))
    # Interleave the variants round by round so drift on a shared machine hits all alike.
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for name, (once, _) in variants.items():
            t0 = time.perf_counter()
            jax.block_until_ready(once())
            times[name].append(time.perf_counter() - t0)
    median = {v: float(np.median(t)) for v, t in times.items()}
    base_s, base_out = median["logical"], variants["logical"][1]
    results = {}
    for method, lay in layouts.items():
        b = blocks(lay)
        results[method] = {
            "order_seconds": order_s[method],
            "blocks_per_commit_mean": float(np.mean(b)),
            "blocks_ratio_vs_logical": float(np.mean(b) / np.mean(base_blocks)),
            "apply_seconds": median[method],
            "apply_speedup_vs_logical": base_s / median[method],
            "values_equal_logical_after_read_back": bool(
                np.array_equal(variants[method][1][np.asarray(lay.inv)], base_out)),
        }
    return {
        "config": {k_: v for k_, v in vars(args).items() if k_ != "methods"},
        "rows_per_commit": int(k),
        "hot_rows": int(hot.size),
        "coaccess_nnz": int(coaccess.nnz),
        "telemetry_seconds": telemetry_s,
        "train_commit_seconds": commit_s,
        "relayout_commit_seconds": relayout_commit_s,
        "relayout_bytes_logged": int(relayout_bytes),
        "relayout_read_back_equal": relaid_ok,
        "logical": {
            "blocks_per_commit_mean": float(np.mean(base_blocks)),
            "apply_seconds": base_s,
        },
        "methods": results,
    }


# -- (b) graph rewriting -------------------------------------------------------------------------


def _step(j: int):
    def f(v):
        return jnp.sin(v) * jnp.float32(1.0 + 0.01 * j) + jnp.float32(0.5)
    return f


def _debug(v):
    return jnp.cumsum(v)


def build_graph(chains: int, length: int, n: int) -> tuple[mm.Graph, tuple[str, ...]]:
    g = mm.Graph(mm.Schema([mm.PageSpec("x", (n,), "float32")]))
    outputs = []
    for c in range(chains):
        prev = "x"
        for j in range(length):
            name = f"c{c}_{j}"
            g = g.derive(name, (prev,), _step(j))
            prev = name
        g = g.derive(f"c{c}_debug", (f"c{c}_{length // 2}",), _debug)
        outputs.append(prev)
    return g, tuple(outputs)


def rewrite_experiment(args: argparse.Namespace) -> dict:
    g, outputs = build_graph(args.chains, args.length, args.n)
    t0 = time.perf_counter()
    g2 = adaptive.fuse_chains(adaptive.drop_dead(g, outputs), keep=outputs)
    rewrite_s = time.perf_counter() - t0
    x = jnp.asarray(np.random.default_rng(1).standard_normal(args.n).astype(np.float32))
    s1 = mm.apply(mm.init_state(g.schema), mm.Delta.full("x", x))
    s2 = adaptive.restrict_state(s1, g2)
    prop = jax.jit(mm.propagate, static_argnames=("graph", "dirty"))

    def compile_s(graph, state):
        t = time.perf_counter()
        prop.lower(graph, state, dirty=("x",)).compile()
        return time.perf_counter() - t

    c1, c2 = compile_s(g, s1), compile_s(g2, s2)
    o1, o2 = prop(g, s1, dirty=("x",)), prop(g2, s2, dirty=("x",))
    equal = all(bool(jnp.array_equal(o1.pages[n], o2.pages[n])) and
                int(o1.epochs[n]) == int(o2.epochs[n]) for n in outputs)
    max_diff = max(float(jnp.max(jnp.abs(o1.pages[n] - o2.pages[n]))) for n in outputs)
    t1 = bench(lambda: prop(g, s1, dirty=("x",)).pages, repeat=args.repeat)
    t2 = bench(lambda: prop(g2, s2, dirty=("x",)).pages, repeat=args.repeat)
    return {
        "config": {"chains": args.chains, "length": args.length, "n": args.n},
        "derived_pages_before": len(g.derived),
        "derived_pages_after": len(g2.derived),
        "rewrite_seconds": rewrite_s,
        "outputs_bit_identical": equal,
        "outputs_max_abs_difference": max_diff,
        "propagate_seconds_before": t1,
        "propagate_seconds_after": t2,
        "propagate_speedup": t1 / t2,
        "compile_seconds_before": c1,
        "compile_seconds_after": c2,
        "compile_speedup": c1 / c2,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--rows", type=int, default=1 << 20)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--clusters", type=int, default=64)
    p.add_argument("--cluster-size", type=int, default=128)
    p.add_argument("--touch", type=int, default=4)
    p.add_argument("--per-cluster", type=int, default=64)
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--chains", type=int, default=20)
    p.add_argument("--length", type=int, default=10)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    if args.quick:
        args.rows, args.clusters, args.cluster_size = 1 << 16, 16, 64
        args.per_cluster, args.train, args.test = 32, 60, 40
        args.chains, args.length, args.n, args.repeat = 4, 5, 256, 3
    args.methods = ("rcm", "spectral", "frequency")
    out = {"layout": layout_experiment(args), "rewrite": rewrite_experiment(args)}
    path = write_json("adaptive_layout_quick" if args.quick else "adaptive_layout", out)
    print(path)
    lay, rw = out["layout"], out["rewrite"]
    print(f"blocks/commit logical {lay['logical']['blocks_per_commit_mean']:.1f}")
    for m, r in lay["methods"].items():
        print(f"  {m:9s} blocks/commit {r['blocks_per_commit_mean']:.1f} "
              f"(x{r['blocks_ratio_vs_logical']:.3f}), apply speedup "
              f"{r['apply_speedup_vs_logical']:.2f}x, order {r['order_seconds']:.2f}s")
    print(f"rewrite: {rw['derived_pages_before']} -> {rw['derived_pages_after']} pages, "
          f"identical={rw['outputs_bit_identical']}, propagate x{rw['propagate_speedup']:.2f}, "
          f"compile x{rw['compile_speedup']:.2f}")


if __name__ == "__main__":
    main()
