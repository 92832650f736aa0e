"""``mmsb`` subcommands of the store layer (registered by :mod:`mmsb_jax.cli`)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the store subcommands to the ``mmsb`` parser."""
