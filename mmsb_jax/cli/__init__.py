"""The ``mmsb`` command line: ``demo``, the store's subcommands and the seed importer.

It sits above every layer (it opens Buses), so nothing in the library imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsb", description="MMSB state bus on JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the end-to-end demo on a temporary directory")
    demo.add_argument("--dir", default=None, help="bus directory (default: a temp directory)")
    demo.add_argument("--steps", type=int, default=20, help="number of commits")
    demo.set_defaults(func=_cmd_demo)

    # Store commands (log inspect/verify/repair, replay, checkpoint list, import-seed).
    from mmsb_jax.cli import _store

    _store.register(sub)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from mmsb_jax.demo import run_demo

    return run_demo(directory=args.dir, steps=args.steps)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmsb`` console script; returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    from mmsb_jax.errors import MMSBError

    try:
        return int(args.func(args) or 0)
    except MMSBError as e:
        print(f"mmsb: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
