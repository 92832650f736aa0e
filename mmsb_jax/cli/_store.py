"""``mmsb`` subcommands over a store: log, replay, checkpoint and import-seed.

``mmsb log inspect|verify|repair PATH``, ``mmsb replay DIR [--to SEQ]`` and
``mmsb checkpoint list DIR``. Each command is one ``_add_<name>(sub)`` function that adds its
parser and sets ``func``; :func:`register` calls them all — add a command by adding a function
to ``_COMMANDS``.

Exit codes: 0 success; 1 ``log verify`` found a torn tail (recoverable); 2 an error (corrupt
log, bad input), printed by :func:`mmsb_jax.cli.main`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["register", "resolve_log_path"]


def resolve_log_path(path: str | Path) -> Path:
    """A segment file or log directory for ``path`` (a bus directory maps to ``path/log``)."""
    from mmsb_jax.errors import StoreError
    from mmsb_jax.store.tlog import log_dir

    p = Path(path)
    if p.is_file() or p.is_dir():
        return log_dir(p)
    raise StoreError(f"no such log file or directory: {p}")


def _ts(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- mmsb log ---------------------------------------------------------------------------------


def _cmd_log_inspect(args: argparse.Namespace) -> int:
    from mmsb_jax.store.tlog import scan_log

    path = resolve_log_path(args.path)
    scan = scan_log(path, allow_corrupt=True)
    segments = []
    for seg_path, s in scan.scans:
        txns = [{"seq": t.seq, "offset": t.offset, "bytes": t.end - t.offset,
                 "deltas": t.n_deltas, "pages": list(t.pages), "derived": list(t.derived),
                 "time": _ts(t.timestamp_ns)} for t in s.txns]
        segments.append({
            "path": str(seg_path), "bytes": s.size,
            "segment": s.header.segment if s.header else None,
            "base_seq": s.header.base_seq if s.header else None,
            "last_seq": s.last_seq, "transactions": len(s.txns), "valid_bytes": s.good_end,
            "damage": None if s.clean else {"offset": s.bad_offset, "reason": s.reason,
                                            "corrupt": s.valid_after_bad},
            **({"txns": txns} if args.transactions else {}),
        })
    report = {
        "path": str(path),
        "schema": None if scan.schema is None else scan.schema.to_json(),
        "graph": scan.graph,
        "first_seq": scan.first_seq, "last_seq": scan.last_seq,
        "torn_tail_bytes": 0 if scan.corrupt else scan.bytes_to_cut,
        "corrupt": None if scan.corrupt is None else {"offset": scan.corrupt.offset,
                                                      "path": scan.corrupt.path,
                                                      "reason": scan.corrupt.reason},
        "segments": segments,
    }
    if args.json:
        _print_json(report)
        return 0
    print(f"log {path}: seqs {scan.first_seq}..{scan.last_seq}, {len(segments)} segment(s)")
    if scan.schema is not None:
        for spec in scan.schema:
            print(f"  page {spec.name}: {spec.dtype}{list(spec.shape)}")
    for seg in segments:
        first = "?" if seg["base_seq"] is None else seg["base_seq"] + 1
        print(f"  {seg['path']}: {seg['bytes']} bytes, seqs {first}..{seg['last_seq']} "
              f"({seg['transactions']} transactions)")
        if seg["damage"]:
            kind = "CORRUPT" if seg["damage"]["corrupt"] else "torn tail"
            print(f"    {kind} at offset {seg['damage']['offset']}: {seg['damage']['reason']}")
        for t in seg.get("txns", []):
            print(f"    seq {t['seq']} @{t['offset']} {t['bytes']}B {t['deltas']} delta(s) "
                  f"{','.join(t['pages'])} {t['time']}")
    return 0


def _cmd_log_verify(args: argparse.Namespace) -> int:
    from mmsb_jax.store.tlog import scan_log

    path = resolve_log_path(args.path)
    scan = scan_log(path)  # raises LogCorruptError (exit 2) on corruption
    torn = scan.bytes_to_cut
    n = sum(len(s.txns) for _, s in scan.scans)
    if torn:
        where = ", ".join(f"{p} at {off}" for p, off in scan.cuts)
        print(f"log {path}: {n} transactions OK up to seq {scan.last_seq}; torn tail of "
              f"{torn} bytes ({where}); opening it for writing (or `mmsb log repair`) cuts it")
        return 1
    print(f"log {path}: OK, {n} transactions, seqs {scan.first_seq}..{scan.last_seq}")
    return 0


def _cmd_log_repair(args: argparse.Namespace) -> int:
    from mmsb_jax.store.tlog import repair

    path = resolve_log_path(args.path)
    report = repair(path)
    if not report.bytes_cut:
        print(f"log {path}: nothing to repair (last seq {report.last_seq})")
        return 0
    what = (f"corruption at offset {report.corrupt.offset} of {report.corrupt.path}"
            if report.corrupt else "a torn tail")
    print(f"log {path}: repaired {what}; cut {report.bytes_cut} bytes, last seq now "
          f"{report.last_seq}")
    for seg, saved, nbytes in report.saved:
        print(f"  {seg}: {nbytes} bytes saved to {saved}")
    return 0


def _add_log(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("log", help="inspect, verify or repair a transaction log")
    cmds = p.add_subparsers(dest="log_command", required=True)
    inspect = cmds.add_parser("inspect", help="print segments, schema and transactions")
    inspect.add_argument("path", help="bus directory, log directory or .tlog segment")
    inspect.add_argument("--transactions", "-t", action="store_true",
                         help="list every transaction")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=_cmd_log_inspect)
    verify = cmds.add_parser("verify", help="check every record; exit 1 on a torn tail, "
                             "2 on corruption")
    verify.add_argument("path", help="bus directory, log directory or .tlog segment")
    verify.set_defaults(func=_cmd_log_verify)
    rep = cmds.add_parser("repair", help="truncate to the last good transaction, saving the "
                          "cut bytes beside the log")
    rep.add_argument("path", help="bus directory, log directory or .tlog segment")
    rep.set_defaults(func=_cmd_log_repair)


# -- mmsb replay ------------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    import numpy as np

    from mmsb_jax.store.format import crc32c
    from mmsb_jax.store.recovery import state_at

    progress = None if args.progress == "auto" else args.progress == "on"
    state, seq = state_at(args.dir, args.to, use_checkpoints=not args.no_checkpoint,
                          progress=progress)
    rows = []
    for name in state.pages:
        arr = np.asarray(state.pages[name])
        rows.append({"page": name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                     "epoch": int(state.epochs[name]),
                     "crc32c": f"{crc32c(np.ascontiguousarray(arr).view(np.uint8)):08x}"})
    if args.out:
        np.savez(args.out, **{n: np.asarray(state.pages[n]) for n in state.pages})
    if args.json:
        _print_json({"dir": str(args.dir), "seq": seq, "pages": rows})
        return 0
    print(f"{args.dir}: state after seq {seq}")
    for r in rows:
        print(f"  {r['page']:<24} {r['dtype']}{r['shape']} epoch {r['epoch']} "
              f"crc32c {r['crc32c']}")
    if args.out:
        print(f"pages written to {args.out}")
    return 0


def _add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="rebuild a bus directory's state (checkpoint + log)")
    p.add_argument("dir", help="bus directory")
    p.add_argument("--to", type=int, default=None, metavar="SEQ",
                   help="stop after this commit (default: the last)")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="replay the whole log from seq 0 instead of the nearest checkpoint")
    p.add_argument("--out", default=None, metavar="FILE.npz", help="save the pages (numpy npz)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar (auto: on a terminal for long logs)")
    p.set_defaults(func=_cmd_replay)


# -- mmsb checkpoint ----------------------------------------------------------------------------


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cmd_checkpoint_list(args: argparse.Namespace) -> int:
    from mmsb_jax.errors import StoreError
    from mmsb_jax.store.checkpoint import CheckpointStore

    root = Path(args.dir)
    ck_dir = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    if not ck_dir.is_dir():
        raise StoreError(f"no checkpoint directory at {root}")
    rows = []
    with CheckpointStore(ck_dir, readonly=True) as store:
        for seq in store.steps():
            m = store.manifest(seq)
            rows.append({"seq": seq, "created": m.get("created"), "bytes": _dir_bytes(
                ck_dir / str(seq)), "pages": len(m.get("schema", [])),
                "mmsb_version": m.get("mmsb_version"), "jax_version": m.get("jax_version"),
                "backend": m.get("backend"), "graph": m.get("graph", {})})
    if args.json:
        _print_json({"dir": str(ck_dir), "checkpoints": rows})
        return 0
    if not rows:
        print(f"{ck_dir}: no checkpoints")
        return 0
    print(f"{ck_dir}: {len(rows)} checkpoint(s)")
    for r in rows:
        print(f"  seq {r['seq']:>8}  {r['created']}  {r['bytes']:>12} bytes  {r['pages']} pages"
              f"  mmsb {r['mmsb_version']} jax {r['jax_version']} {r['backend']}")
    return 0


def _add_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="list a bus directory's checkpoints")
    cmds = p.add_subparsers(dest="checkpoint_command", required=True)
    lst = cmds.add_parser("list", help="list checkpoints with their manifests")
    lst.add_argument("dir", help="bus directory (or its checkpoints/ directory)")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_cmd_checkpoint_list)


# -- mmsb import-seed ---------------------------------------------------------------------------


def _cmd_import_seed(args: argparse.Namespace) -> int:
    from mmsb_jax.cli.seed_import import import_seed

    progress = {"auto": None, "on": True, "off": False}[args.progress]
    commits = import_seed(args.file, args.out, progress=progress)
    print(f"imported {args.file} into {args.out}: {commits} commit(s); open it with "
          f"mm.Bus.open({str(args.out)!r})")
    return 0


def _add_import_seed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-seed",
                       help="import an original MMSB file (MMSBLOG1 log or MMSBSNAP snapshot)")
    p.add_argument("file", help="the seed file")
    p.add_argument("--out", required=True, help="the bus directory to create")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar (auto: for more than 100 commits)")
    p.set_defaults(func=_cmd_import_seed)


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_log,
    _add_replay,
    _add_checkpoint,
    _add_import_seed,
]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the store subcommands to the ``mmsb`` parser's subparsers ``sub``."""
    for add in _COMMANDS:
        add(sub)
