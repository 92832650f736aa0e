"""Structural inference of page dependencies, measured on generators nobody tuned to.

Writes ``experiments/results/structural_inference.json`` and ``structural_inference.png``.

Generators (truth in brackets):

* ``multi_source``: random DAGs of 20 pages, each commit writes 1-3 random pages and changes
  everything downstream; drop and spurious noise of 0/5/10 % on the recorded changes of
  non-written pages [the transitive reduction: with full propagation a redundant edge leaves
  no trace];
* ``cutoff``: random DAGs, each edge carries a change with probability U(0.4, 0.9) (early
  cut-off), 0, 5 and 10 % noise [all edges];
* ``chains``: four chains of five pages, 0/5/10 % noise [chain edges];
* ``bus_random``: a real ``mm.Bus`` with 4 base pages and 12 derived pages (quantised,
  clipped, max, gated and summed functions of 1-3 earlier pages), commits writing rows of 1-2
  base pages [``graph.edges``];
* ``world``: an ``apps.World`` bound to a Bus, stepped and occasionally edited
  [``world.graph.edges``].

Estimators: ``cascade`` (``infer_dependencies`` on the changes alone), ``causal``
(``infer_causal`` on writes + changes; bus logs also with the log's own page order),
``causal_exact`` (``infer_causal(search="exact")``: best-BIC parent sets of up to 4 pages; on
bus logs with the log's order), and for
bus logs the interventional ``probe_bus``: ``probes_one_state`` (the state at one seq, no
synthetic contexts, finite probes only) and ``probes`` (the states at four seqs spread over the
log, four synthetic contexts, non-finite probes), the latter also scored against
``read_truth`` (the declared edges whose function's jaxpr reads the input;
``declared_edges_never_read`` counts the others per seed). Evaluation seeds 0..S-1; the
thresholds were chosen on seeds 100+. Run ``python experiments/structural_inference.py [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib
import networkx as nx
import numpy as np
from _common import RESULTS, write_json
from jax.extend import core as jcore
from tqdm import tqdm

import mmsb_jax as mm
import mmsb_jax.apps as apps
from mmsb_jax import reasoning as R

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def random_dag(rng: np.random.Generator, pages: int, p: float) -> nx.DiGraph:
    order = rng.permutation(pages)
    g = nx.DiGraph()
    g.add_nodes_from(range(pages))
    g.add_edges_from((int(order[i]), int(order[j])) for i in range(pages)
                     for j in range(i + 1, pages) if rng.random() < p)
    return g


def adjacency(g: nx.DiGraph, n: int) -> np.ndarray:
    a = np.zeros((n, n), bool)
    for u, v in g.edges:
        a[u, v] = True
    return a


def cascade_log(g: nx.DiGraph, n: int, rng: np.random.Generator, commits: int, noise: float,
                strength: dict | None, max_writes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    order = list(nx.topological_sort(g))
    written = np.zeros((commits, n), bool)
    changed = np.zeros((commits, n), bool)
    for t in range(commits):
        w = rng.choice(n, rng.integers(1, max_writes + 1), replace=False)
        written[t, w] = True
        c = written[t].copy()
        for v in order:
            if c[v]:
                continue
            for u in g.predecessors(v):
                if c[u] and (strength is None or rng.random() < strength[u, v]):
                    c[v] = True
                    break
        changed[t] = c
    flip = np.where(changed, rng.random(changed.shape) < noise,
                    rng.random(changed.shape) < noise) & ~written
    return written, changed ^ flip


def gen_multi_source(seed: int, noise: float, commits: int):
    rng = np.random.default_rng(seed)
    g = random_dag(rng, 20, 0.15)
    w, c = cascade_log(g, 20, rng, commits, noise, None)
    return adjacency(nx.transitive_reduction(g), 20), R.ChangeLog(w, c | w, (), None)


def gen_cutoff(seed: int, noise: float, commits: int):
    rng = np.random.default_rng(seed)
    g = random_dag(rng, 20, 0.15)
    strength = {e: rng.uniform(0.4, 0.9) for e in g.edges}
    w, c = cascade_log(g, 20, rng, commits, noise, strength)
    return adjacency(g, 20), R.ChangeLog(w, c | w, (), None)


def gen_chains(seed: int, noise: float, commits: int):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(20)
    g = nx.DiGraph()
    g.add_nodes_from(range(20))
    for k in range(4):
        chain = labels[5 * k:5 * k + 5]
        g.add_edges_from(zip(chain[:-1].tolist(), chain[1:].tolist(), strict=True))
    w, c = cascade_log(g, 20, rng, commits, noise, None, max_writes=2)
    return adjacency(g, 20), R.ChangeLog(w, c | w, (), None)


_FNS = [
    lambda *xs: jnp.round(2.0 * sum(xs)) / 2.0,          # quantised: small changes cut off
    lambda *xs: jnp.clip(sum(xs), -0.5, 0.5),            # saturating
    lambda *xs: functools_max(xs),                       # max: the smaller input is cut off
    lambda *xs: jnp.where(xs[0] > 0, sum(xs[1:], xs[0] * 0), 0.0),  # gated
    lambda *xs: jnp.sum(sum(xs)) + 0 * xs[0],            # reduction broadcast
]


def functools_max(xs):
    out = xs[0]
    for x in xs[1:]:
        out = jnp.maximum(out, x)
    return out


def truth_of(graph) -> np.ndarray:
    names = graph.schema.names
    index = {n: i for i, n in enumerate(names)}
    a = np.zeros((len(names), len(names)), bool)
    for u, v in graph.edges:
        a[index[u], index[v]] = True
    return a


def read_truth(graph) -> np.ndarray:
    """The declared edges whose function reads its input: an input the function's jaxpr
    never uses (dead code, e.g. the dense broad phase's constant ``overflow``) cannot change
    the output under any intervention. Nested jaxprs (``jit``, ``cond``) count as reading
    every operand they are given."""
    names = graph.schema.names
    index = {n: i for i, n in enumerate(names)}
    a = np.zeros((len(names), len(names)), bool)
    for n in graph.derived:
        d = graph.derivation(n)
        specs = [jax.ShapeDtypeStruct(graph.schema[i].shape, graph.schema[i].dtype)
                 for i in d.inputs]
        jaxpr = jax.make_jaxpr(d.fn)(*specs).jaxpr
        live = {v for v in jaxpr.outvars if isinstance(v, jcore.Var)}
        for eqn in reversed(jaxpr.eqns):
            if any(v in live for v in eqn.outvars):
                live.update(v for v in eqn.invars if isinstance(v, jcore.Var))
        for name, var in zip(d.inputs, jaxpr.invars, strict=True):
            if var in live:
                a[index[name], index[n]] = True
    return a


def gen_bus_random(seed: int, commits: int, directory: str):
    rng = np.random.default_rng(seed)
    schema = mm.Schema([mm.PageSpec(f"r{i}", (8,), "float32") for i in range(4)])
    graph = mm.Graph(schema)
    names = list(schema.names)
    for j in range(12):
        k = int(rng.integers(1, 4))
        inputs = tuple(str(x) for x in rng.choice(names, min(k, len(names)), replace=False))
        graph = graph.derive(f"d{j}", inputs, _FNS[int(rng.integers(len(_FNS)))])
        names.append(f"d{j}")
    bus = mm.Bus.open(directory, graph=graph, sync="never")
    txns = []
    for _ in range(commits):
        roots = rng.choice(4, int(rng.integers(1, 3)), replace=False)
        txns.append([mm.Delta.rows(f"r{r}", np.array([rng.integers(8)], np.int32),
                                   rng.normal(size=(1,)).astype(np.float32) * 0.6)
                     for r in roots])
    bus.commit_many(txns)
    return truth_of(graph), bus, graph


def gen_world(seed: int, commits: int, directory: str):
    rng = np.random.default_rng(seed)
    world = apps.World.open(directory, 0.01, capacity=16, max_radius=0.05, sync="never")
    for i in range(6):
        world.add_entity(0, pos=(0.1 + 0.13 * i, 0.2 + 0.6 * rng.random()),
                         vel=tuple(rng.normal(size=2) * 0.5), radius=0.04)
    steps = 0
    while world.bus.seq < commits:
        if rng.random() < 0.1:
            world.add_entity(0, pos=tuple(0.1 + 0.8 * rng.random(2)), radius=0.02) \
                if int(np.sum(world.read("alive"))) < 16 else world.remove_entity(
                    int(np.flatnonzero(world.read("alive"))[0]))
        else:
            world.step(1)
            steps += 1
    return truth_of(world.graph), world, world.graph


def ci(values: list[float]) -> dict:
    from scipy import stats

    a = np.asarray(values, float)
    half = (stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
            if len(a) > 1 else float("nan"))
    return {"mean": float(a.mean()), "ci95": float(half), "min": float(a.min()),
            "values": [float(x) for x in a]}


def summarise(rows: list[tuple[float, float]]) -> dict:
    return {"precision": ci([r[0] for r in rows]), "recall": ci([r[1] for r in rows])}


def synthetic(seeds: list[int], commits: int, bar: tqdm) -> dict:
    out = {}
    specs = [("multi_source", gen_multi_source, (0.0, 0.05, 0.1)),
             ("cutoff", gen_cutoff, (0.0, 0.05, 0.1)),
             ("chains", gen_chains, (0.0, 0.05, 0.1))]
    for name, gen, noises in specs:
        for noise in noises:
            rows = {"cascade": [], "causal": [], "causal_exact": []}
            for seed in seeds:
                truth, log = gen(seed, noise, commits)
                rows["causal"].append(R.edge_precision_recall(truth,
                                                              R.infer_causal(log).edges))
                rows["causal_exact"].append(R.edge_precision_recall(
                    truth, R.infer_causal(log, search="exact").edges))
                rows["cascade"].append(R.edge_precision_recall(
                    truth, R.infer_dependencies(log.changed).edges))
                bar.update(1)
            out[f"{name}@{noise:g}"] = {k: summarise(v) for k, v in rows.items()}
    return out


def bus_logs(seeds: list[int], commits: dict, bar: tqdm) -> dict:
    out = {}
    for name, gen in (("bus_random", gen_bus_random), ("world", gen_world)):
        rows = {"cascade": [], "causal": [], "causal_log_order": [], "causal_exact": [],
                "probes_one_state": [],
                "probes": [], "probes_vs_read_edges": []}
        unread = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as d:
                truth, holder, graph = gen(seed, commits[name], d)
                bus = holder if isinstance(holder, mm.Bus) else holder.bus
                log = R.changelog_from_bus(bus, graph=graph)
                rows["causal_log_order"].append(
                    R.edge_precision_recall(truth, R.infer_causal(log).edges))
                rows["causal_exact"].append(R.edge_precision_recall(
                    truth, R.infer_causal(log, search="exact").edges))
                rows["causal"].append(R.edge_precision_recall(
                    truth, R.infer_causal(log.written, log.changed).edges))
                rows["cascade"].append(R.edge_precision_recall(
                    truth, R.infer_dependencies(log.changed).edges))
                one = R.probe_bus(bus, graph=graph, key=seed, contexts=0, nonfinite=False)
                rows["probes_one_state"].append(R.edge_precision_recall(truth, one.edges))
                seqs = np.linspace(1, bus.seq, 4).astype(int).tolist()
                probe = R.probe_bus(bus, seqs[::-1], graph=graph, key=seed)
                rows["probes"].append(R.edge_precision_recall(truth, probe.edges))
                read = read_truth(graph)
                unread.append(int((truth & ~read).sum()))
                rows["probes_vs_read_edges"].append(R.edge_precision_recall(read, probe.edges))
                holder.close()
            bar.update(1)
        out[name] = {k: summarise(v) for k, v in rows.items()}
        out[name]["declared_edges_never_read"] = unread
    return out


def plot(results: dict, path) -> None:
    keys = list(results)
    methods = sorted({m for k in keys for m, v in results[k].items() if isinstance(v, dict)})
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    width = 0.8 / len(methods)
    for ax, metric in zip(axes, ("precision", "recall"), strict=True):
        for i, m in enumerate(methods):
            xs = [j + i * width for j, k in enumerate(keys) if m in results[k]]
            ys = [results[k][m][metric]["mean"] for k in keys if m in results[k]]
            es = [results[k][m][metric]["ci95"] for k in keys if m in results[k]]
            ax.bar(xs, ys, width, yerr=es, label=m, capsize=2)
        ax.axhline(0.9, color="k", lw=0.8, ls="--")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys, rotation=35,
                      ha="right", fontsize=8)
        ax.set_title(f"edge {metric} (mean, 95% CI)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, short logs")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    seeds = list(range(2 if args.quick else args.seeds))
    commits = 600 if args.quick else 2000
    bus_commits = {"bus_random": 300 if args.quick else 1500,
                   "world": 60 if args.quick else 200}
    t0 = time.perf_counter()
    with tqdm(total=len(seeds) * 11, desc="structural inference") as bar:
        results = synthetic(seeds, commits, bar)
        results.update(bus_logs(seeds, bus_commits, bar))
    payload = {"seeds": seeds, "commits": commits, "bus_commits": bus_commits,
               "quick": args.quick, "seconds": time.perf_counter() - t0, "results": results}
    path = write_json("structural_inference", payload)
    plot(results, RESULTS / "structural_inference.png")
    for k, v in results.items():
        print(k, {m: (round(s["precision"]["mean"], 3), round(s["recall"]["mean"], 3))
                  for m, s in v.items() if isinstance(s, dict)})
    print("wrote", path)


if __name__ == "__main__":
    main()
