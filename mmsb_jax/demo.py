"""``mmsb demo``: the main job end to end on a small default workload (CPU, temp directory)."""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

import mmsb_jax as mm

__all__ = ["demo_schema", "run_demo"]


def demo_schema() -> mm.Schema:
    """The demo's pages: particle positions/velocities, a byte page and a counter page."""
    return mm.Schema([
        mm.PageSpec("pos", (1024, 2), "float32"),
        mm.PageSpec("vel", (1024, 2), "float32"),
        mm.PageSpec("raw", (4096,), "uint8"),
        mm.PageSpec("hits", (1024,), "int32"),
    ])


def _random_batch(rng: np.random.Generator, k: int = 64) -> list[mm.Delta]:
    idx = rng.integers(-1, 1024, k).astype(np.int32)  # with duplicates and padding
    return [
        mm.Delta.rows("pos", idx, rng.standard_normal((k, 2)).astype(np.float32)),
        mm.Delta.rows("vel", idx, rng.standard_normal((k, 2)).astype(np.float32), "add"),
        mm.Delta.rows("hits", idx, np.ones(k, np.int32), "add"),
        mm.Delta.masked("raw", rng.random(4096) < 0.01,
                        rng.integers(0, 256, 4096, dtype=np.uint8)),
    ]


def run_demo(directory: str | None = None, steps: int = 20, console: Console | None = None) -> int:
    """Run the demo and print a summary; returns 0 on success (the process exit code)."""
    console = console or Console()
    schema = demo_schema()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="mmsb-demo-") as tmp:
        where = directory or tmp
        console.print(f"[bold]mmsb demo[/bold] on {jax.default_backend()} (jax {jax.__version__}),"
                      f" directory {where}")
        state = mm.init_state(schema)
        batches = [_random_batch(rng) for _ in range(steps)]
        t0 = time.perf_counter()
        for batch in batches:
            state = mm.apply_batch(state, batch)
        jax.block_until_ready(state)
        elapsed = time.perf_counter() - t0
        sequential = mm.init_state(schema)
        for batch in batches:
            for d in batch:
                sequential = mm.apply(sequential, d)
        exact = all(np.array_equal(state.pages[n], sequential.pages[n])
                    for n in ("pos", "raw", "hits"))
        table = Table(title=f"{steps} batches of {len(batches[0])} deltas")
        for col in ("page", "dtype", "shape", "epoch", "checksum"):
            table.add_column(col)
        for spec in schema:
            page = np.asarray(state.pages[spec.name])
            table.add_row(spec.name, spec.dtype, str(spec.shape), str(int(state.epochs[spec.name])),
                          f"{float(np.asarray(page, np.float64).sum()):.3f}")
        console.print(table)
        console.print(f"apply_batch: {steps} batches in {elapsed * 1e3:.1f} ms; equals sequential "
                      f"apply: {'yes' if exact else 'NO'}")
        total_hits = int(jnp.sum(state.pages["hits"]))
        console.print(f"hits counted: {total_hits} row updates (padding slots skipped)")
        return 0 if exact else 1
