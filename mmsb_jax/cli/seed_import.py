"""Import the original MMSB's files into a bus directory (``mmsb import-seed``).

Each seed page becomes one ``uint8[size]`` page named ``page_<id>``; its bytes and its epoch are
the seed's. A snapshot (``MMSBSNAP``) becomes one commit of ``full`` deltas; a log
(``MMSBLOG1``) becomes one commit per frame (a ``masked`` delta of the frame's bytes). A delta's
``count`` carries the epoch step, so the imported page's epoch equals the seed's epoch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmsb_jax.core.delta import Delta
from mmsb_jax.core.pages import PageSpec, Schema
from mmsb_jax.errors import SeedFormatError
from mmsb_jax.store import seed

__all__ = ["import_seed", "seed_page_name", "seed_schema"]


def seed_page_name(page_id: int) -> str:
    """The mmsb-jax page name of seed page ``page_id``."""
    return f"page_{int(page_id)}"


def seed_schema(content: list[seed.SeedFrame] | seed.SeedSnapshot) -> Schema:
    """The schema of parsed seed content: one ``uint8[size]`` page per seed page, by id."""
    sizes: dict[int, int] = {}
    if isinstance(content, seed.SeedSnapshot):
        for p in content.pages:
            if p.page_id in sizes:
                raise SeedFormatError(f"snapshot lists page {p.page_id} twice")
            sizes[p.page_id] = p.size
    else:
        for f in content:
            size = sizes.setdefault(f.page_id, int(f.mask.size))
            if size != f.mask.size:
                raise SeedFormatError(
                    f"frame {f.delta_id}: page {f.page_id} has {f.mask.size} mask bytes, "
                    f"earlier frames had {size}")
    return Schema(PageSpec(seed_page_name(pid), (size,), "uint8") for pid, size in sorted(
        sizes.items()))


def _commits(content: list[seed.SeedFrame] | seed.SeedSnapshot) -> list[list[Delta]]:
    if isinstance(content, seed.SeedSnapshot):
        return [[Delta.full(seed_page_name(p.page_id), np.asarray(p.data, np.uint8))
                 .with_count(p.epoch) for p in content.pages]] if content.pages else []
    epochs: dict[int, int] = {}
    commits = []
    for f in content:
        step = int(f.epoch) - epochs.get(f.page_id, 0)
        if step < 0:
            raise SeedFormatError(f"frame {f.delta_id}: epoch {f.epoch} of page {f.page_id} goes "
                                  f"back from {epochs[f.page_id]}")
        epochs[f.page_id] = int(f.epoch)
        mask, values = f.dense_update()
        commits.append([Delta.masked(seed_page_name(f.page_id), mask, values).with_count(step)])
    return commits


def import_seed(path: str | os.PathLike, out: str | os.PathLike, *, sync: str = "batch",
                progress: bool | None = None) -> int:
    """Import a seed ``MMSBLOG1`` or ``MMSBSNAP`` file into a new bus directory ``out``.

    Args:
      path: the seed file (the format is chosen by its magic).
      out: the bus directory to create (must not hold a bus already).
      sync: the bus's sync policy while importing.
      progress: show a progress bar (default: when there are more than 100 commits).

    Returns:
      The number of commits written. ``Bus.open(out)`` then opens the directory without a
      schema.

    Raises:
      SeedFormatError: a malformed file (nothing is written then).
      StoreError: ``out`` already holds a bus.
    """
    from tqdm import tqdm

    from mmsb_jax.errors import StoreError
    from mmsb_jax.runtime.bus import Bus

    content = seed.read_seed_file(path)
    schema = seed_schema(content)  # validates before anything is written
    commits = _commits(content)
    out = Path(out)
    if (out / "log").exists() and any((out / "log").iterdir()):
        raise StoreError(f"{out} already holds a bus; import into a new directory")
    show = progress if progress is not None else len(commits) > 100
    with Bus.open(out, schema=schema, sync=sync) as bus:
        for deltas in tqdm(commits, desc=f"import {Path(path).name}", disable=not show):
            bus.commit(deltas)
        bus.checkpoint()
    return len(commits)
