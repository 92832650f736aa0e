"""Core delta throughput: the seed's byte-page workloads and batched row deltas.

Writes ``experiments/results/bench_core.json``. Every figure is a ratio to a baseline measured
in the same process:

(a) the seed's delta workloads (one 1 KiB byte-page update, dense and sparse) through the compat
    API and through a jitted ``mm.apply``, against numpy assignment of the same bytes;
(b) batched row deltas into a 64 MiB page (``float32[1M, 16]``, 64-byte rows) for 1k, 64k and 1M
    rows, sorted-unique and random-with-duplicates, as bytes/s, as a fraction of ``np.copyto``
    bandwidth of the whole page, and against numpy fancy-index assignment (``page[idx] = vals``,
    whose duplicate semantics are also last-wins on CPU). The jitted apply donates the page
    (``jax.jit(mm.apply, donate_argnums=0)``), the pattern for in-place updates.

Targets (issue 3): sorted unique >= 50% of copy bandwidth; random >= 2x numpy.
Run ``python experiments/bench_core.py [--quick]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from _common import bench, write_json
from tqdm import tqdm

import mmsb_jax as mm
from mmsb_jax import compat


def seed_workloads(repeat: int) -> dict:
    rng = np.random.default_rng(0)
    size = 1024
    out = {}
    for kind in ("dense", "sparse"):
        new = [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(2)]
        if kind == "sparse":  # the seed's sparse case: a few bytes change
            base = new[0]
            new = [base, base.copy()]
            new[1][rng.choice(size, 16, replace=False)] ^= 0xFF
        # compat API (host bytes in, masked delta, epoch bookkeeping)
        st = compat.mmsb_start()
        page = compat.create_page(st, size=size)
        i = [0]

        def compat_step(st=st, page=page, new=new, i=i):
            i[0] ^= 1
            compat.update_page(st, page, new[i[0]])
            return st.state.pages[f"page_{page.id}"]

        t_compat = bench(compat_step, repeat=repeat * 20)
        # jitted apply of a full / masked delta
        schema = mm.Schema([mm.PageSpec("raw", (size,), "uint8")])
        state = mm.init_state(schema)
        step = jax.jit(mm.apply, donate_argnums=0)
        vals = [jnp.asarray(v) for v in new]
        mask = jnp.asarray(new[0] != new[1])
        deltas = [mm.Delta.full("raw", v) if kind == "dense" else mm.Delta.masked("raw", mask, v)
                  for v in vals]
        holder = [state]

        def apply_step(deltas=deltas, holder=holder, step=step, i=i):
            i[0] ^= 1
            holder[0] = step(holder[0], deltas[i[0]])
            return holder[0].pages["raw"]

        t_apply = bench(apply_step, repeat=repeat * 20)
        npage = np.zeros(size, np.uint8)
        nmask = new[0] != new[1]

        def numpy_step(npage=npage, new=new, nmask=nmask, kind=kind, i=i):
            i[0] ^= 1
            if kind == "dense":
                np.copyto(npage, new[i[0]])
            else:
                npage[nmask] = new[i[0]][nmask]
            return npage

        t_np = bench(numpy_step, repeat=repeat * 20)
        out[kind] = {
            "page_bytes": size,
            "compat_update_us": t_compat * 1e6,
            "jit_apply_us": t_apply * 1e6,
            "numpy_assign_us": t_np * 1e6,
            "compat_vs_numpy": t_np / t_compat,
            "jit_apply_vs_numpy": t_np / t_apply,
        }
    return out


def row_workloads(rows: int, width: int, ks: list[int], repeat: int) -> dict:
    rng = np.random.default_rng(1)
    nbytes = rows * width * 4
    src = np.ones((rows, width), np.float32)
    dst = np.zeros((rows, width), np.float32)  # touched: no page faults in the timing
    t_copy = bench(lambda: np.copyto(dst, src), repeat=repeat)
    copy_bw = nbytes / t_copy
    npage = np.zeros((rows, width), np.float32)
    step = jax.jit(mm.apply, donate_argnums=0)
    schema = mm.Schema([mm.PageSpec("w", (rows, width), "float32")])
    results = []
    for k in tqdm(ks, desc="row deltas", leave=False):
        for pattern in ("sorted_unique", "random_duplicates"):
            if pattern == "sorted_unique":
                idx = np.sort(rng.choice(rows, k, replace=False)).astype(np.int32)
            else:
                idx = rng.integers(0, rows, k).astype(np.int32)
            vals = rng.standard_normal((k, width)).astype(np.float32)
            d = jax.device_put(mm.Delta.rows("w", idx, vals))  # keeps the host-known unique flag
            holder = [mm.init_state(schema)]

            def run(d=d, holder=holder):
                holder[0] = step(holder[0], d)
                return holder[0].pages["w"]

            t_mm = bench(run, repeat=repeat)

            def numpy_run(idx=idx, vals=vals):
                npage[idx] = vals
                return npage

            t_np = bench(numpy_run, repeat=repeat)
            written = k * width * 4
            results.append({
                "rows_updated": k,
                "pattern": pattern,
                "mmsb_ms": t_mm * 1e3,
                "numpy_fancy_ms": t_np * 1e3,
                "mmsb_bytes_per_s": written / t_mm,
                "fraction_of_copy_bandwidth": (written / t_mm) / copy_bw,
                "speedup_vs_numpy": t_np / t_mm,
            })
    return {"page_bytes": nbytes, "page_shape": [rows, width], "copy_ms": t_copy * 1e3,
            "copy_bytes_per_s": copy_bw, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--out", default=None,
                        help="results name (default: bench_core, or bench_core_quick)")
    args = parser.parse_args()
    args.out = args.out or ("bench_core_quick" if args.quick else "bench_core")
    if args.quick:
        rows, ks, repeat = 1 << 12, [64, 1024, 4096], 3
    else:
        rows, ks, repeat = 1 << 20, [1000, 64 * 1024, 1 << 20], 7
    payload = {
        "benchmark": "bench_core",
        "quick": args.quick,
        "seed_workloads": seed_workloads(repeat),
        "row_deltas": row_workloads(rows, 16, ks, repeat),
        "targets": {"sorted_unique_fraction_of_copy": 0.5, "random_speedup_vs_numpy": 2.0},
    }
    path = write_json(args.out, payload)
    rd = payload["row_deltas"]
    print(f"copy {rd['copy_bytes_per_s'] / 1e9:.2f} GB/s on a {rd['page_bytes'] >> 20} MiB page")
    for r in rd["results"]:
        print(f"  {r['pattern']:<18} k={r['rows_updated']:>8}: {r['mmsb_ms']:8.3f} ms, "
              f"{r['fraction_of_copy_bandwidth']:.2f} of copy, {r['speedup_vs_numpy']:.2f}x numpy")
    for kind, r in payload["seed_workloads"].items():
        print(f"  seed 1 KiB {kind}: compat {r['compat_update_us']:.1f} us, jit apply "
              f"{r['jit_apply_us']:.1f} us, numpy {r['numpy_assign_us']:.2f} us")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
