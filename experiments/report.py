"""Regenerate docs/performance.md (tables + plots) from experiments/results/*.json.

Usage::

    python experiments/report.py [--results experiments/results] [--out docs/performance.md]
                                 [--img docs/img]

Every results file becomes one section. The layout of a file is not assumed: nested values are
flattened generically (``a.b.c`` column names), so a new benchmark appears without changes
here. Within a file,

* a list of objects becomes a table (one row per object, the union of their keys as columns);
* an object whose values are objects becomes a table (one row per key);
* scalars are gathered in a key/value table; the run's environment (``machine``, ``env``,
  ``device``...) is shown first;
* each table with numeric columns gets a bar chart of its most telling column (a ratio,
  speedup or fraction against the in-process baseline if there is one) in ``docs/img/``;
* PNG plots the experiments wrote themselves (``results/<name>.png``) are copied and embedded.

Unreadable or empty files are listed, not fatal. matplotlib runs with the Agg backend.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV_KEYS = ("machine", "env", "device", "params", "config", "environment")
PREFERRED = ("ratio", "speedup", "fraction", "vs_", "per_s", "_ms", "_us", "seconds")
MAX_COLUMNS = 16
LABEL_KEYS = ("case", "name", "policy", "pattern", "op", "kind", "rows_updated", "dirty")
MAX_ROWS = 60
MAX_CELL = 60

SEED_NOTE = """\
## The seed's own baseline numbers

The original MMSB (the "seed") did not ship measured results with the material this project was
given, and **this repository contains none of its numbers**. Sections named `seed_workloads`
re-run the seed's workloads (its page sizes and update patterns, through the seed-compatible
API and through mmsb-jax's jitted path) **on this machine**, next to an in-process baseline
(numpy, a raw write, a plain copy). If the seed's own measurements are obtained later, they
belong in a column beside these, marked as measured on a different machine; none are
quoted or estimated here.
"""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to ``{"a.b": leaf}``; lists of scalars become short summaries."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value and all(_is_number(v) for v in value):
        nums = [float(v) for v in value]
        out[prefix] = (f"{len(nums)} values, median {fmt(sorted(nums)[len(nums) // 2])}"
                       if len(nums) > 4 else ", ".join(fmt(v) for v in nums))
    elif isinstance(value, list):
        out[prefix] = f"[{len(value)} items]" if value else "[]"
    else:
        out[prefix] = value
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def fmt(v: Any) -> str:
    """A table cell: numbers with 4 significant digits, text shortened and escaped."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    s = str(v).replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= MAX_CELL else s[: MAX_CELL - 1] + "…"


def markdown_table(header: list[str], rows: Iterable[list[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rows_table(records: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows for ``(label, flat record)`` pairs; columns are the union of keys."""
    columns: list[str] = []
    for _, rec in records:
        for k in rec:
            if k not in columns:
                columns.append(k)
    if len(columns) > MAX_COLUMNS:  # keep the numeric, preferred columns
        ranked = sorted(columns, key=lambda c: (not _preferred(c), columns.index(c)))
        keep = set(ranked[:MAX_COLUMNS])
        columns = [c for c in columns if c in keep]
    rows = [[label, *[rec.get(c) for c in columns]] for label, rec in records[:MAX_ROWS]]
    return ["", *columns], rows


def _preferred(column: str) -> bool:
    return any(p in column for p in PREFERRED)


def _label(rec: Mapping[str, Any], i: int) -> str:
    """A row label: the record's naming fields (case, op, name...), else its text fields."""
    named = [str(rec[k]) for k in LABEL_KEYS if k in rec and not isinstance(rec[k], Mapping)]
    text = [v for v in rec.values() if isinstance(v, str)]
    return " / ".join((named or text)[:3]) or f"#{i}"


def plot_table(header: list[str], rows: list[list[Any]], title: str, path: Path) -> bool:
    """Bar chart of the most telling numeric column; returns False if there is none."""
    numeric = [i for i, c in enumerate(header) if i and any(_is_number(r[i]) for r in rows)]
    if not numeric or len(rows) < 2:
        return False
    col = next((i for p in PREFERRED[:4] for i in numeric if p in header[i]), numeric[0])
    labels = [str(r[0])[:28] for r in rows if _is_number(r[col])]
    values = [float(r[col]) for r in rows if _is_number(r[col])]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(values) + 2), 3.6))
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(header[col], fontsize=8)
    if any(p in header[col] for p in ("ratio", "speedup", "fraction", "vs_")):
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    if values and min(values) > 0 and max(values) / min(values) > 1e3:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def section(name: str, data: Any, img_dir: Path, doc_dir: Path) -> list[str]:
    """The markdown lines of one results file."""
    out = [f"## {name}", ""]
    if not isinstance(data, Mapping):
        data = {"results": data}
    env = {k: data[k] for k in ENV_KEYS if k in data}
    if env:
        flat = flatten(env)
        out += ["Environment: " + "; ".join(f"{k} = {fmt(v)}" for k, v in flat.items()), ""]
    scalars: dict[str, Any] = {}
    for key, value in data.items():
        if key in ENV_KEYS:
            continue
        records: list[tuple[str, dict[str, Any]]] = []
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            records = [(_label(v, i), flatten(v)) for i, v in enumerate(value)]
        elif (isinstance(value, Mapping) and value
              and all(isinstance(v, Mapping) for v in value.values())):
            records = [(str(k), flatten(v)) for k, v in value.items()]
        elif isinstance(value, Mapping):
            nested = {k: v for k, v in value.items()
                      if isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v)}
            for sub, items in nested.items():
                out += section_table(f"{key}.{sub}", [(_label(v, i), flatten(v))
                                                      for i, v in enumerate(items)],
                                     name, img_dir, doc_dir)
            rest = {k: v for k, v in value.items() if k not in nested}
            scalars.update(flatten(rest, key))
            continue
        else:
            scalars.update(flatten(value, key))
            continue
        out += section_table(key, records, name, img_dir, doc_dir)
    if scalars:
        out += ["**Other values**", "",
                markdown_table(["key", "value"], [[k, v] for k, v in scalars.items()]), ""]
    return out


def section_table(key: str, records: list[tuple[str, dict[str, Any]]], bench: str,
                  img_dir: Path, doc_dir: Path) -> list[str]:
    """A sub-heading, its table and (when it has numbers) its plot."""
    header, rows = rows_table(records)
    lines = [f"### {key}", "", markdown_table(header, rows), ""]
    png = img_dir / f"{_slug(bench)}__{_slug(key)}.png"
    if plot_table(header, rows, f"{bench}: {key}", png):
        lines += [f"![{bench} {key}]({_relative(png, doc_dir)})", ""]
    return lines


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start).replace(os.sep, "/")


def build(results_dir: Path, out_path: Path, img_dir: Path) -> str:
    """Write ``out_path`` from the JSON files in ``results_dir``; returns the markdown."""
    doc_dir = out_path.parent
    files = (sorted(p for p in results_dir.glob("*.json") if not p.stem.endswith("_quick"))
             if results_dir.is_dir() else [])  # --quick smoke runs are not results
    lines = [
        "# Performance",
        "",
        "Generated by `python experiments/report.py` from `experiments/results/*.json` "
        f"({datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}); do not edit by hand. Each "
        "benchmark reports ratios against a baseline measured in the same process; absolute "
        "times depend on the machine (each section states its environment). The CPU runs "
        "here were made on a shared 2-core machine, so their absolute numbers are noisy.",
        "",
        SEED_NOTE,
    ]
    skipped: list[str] = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            skipped.append(f"{f.name} ({e.__class__.__name__})")
            continue
        if not data:
            skipped.append(f"{f.name} (empty)")
            continue
        lines += section(f.stem, data, img_dir, doc_dir)
        own_png = f.with_suffix(".png")
        if own_png.is_file():
            target = img_dir / f"{f.stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(own_png, target)
            lines += [f"![{f.stem}]({_relative(target, doc_dir)})", ""]
    if not files:
        lines += ["No results found in `experiments/results/`: run the experiments first.", ""]
    if skipped:
        lines += ["Files that could not be read: " + ", ".join(skipped), ""]
    text = "\n".join(lines).rstrip() + "\n"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "experiments" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    ap.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    text = build(args.results, args.out, args.img)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
