"""Repairing a damaged log: cut it to its last good transaction, keeping what was cut."""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import UTC, datetime

from mmsb_jax.errors import LogCorruptError, StoreError
from mmsb_jax.store._files import DirLock, cut_segments, log_dir, segment_paths

__all__ = ["RepairReport", "repair"]

log = logging.getLogger("mmsb_jax.store")


@dataclasses.dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` did.

    Attributes:
      bytes_cut: total bytes removed from the log.
      saved: ``(segment path, path of the saved copy, bytes)`` for each cut.
      corrupt: the corruption that was repaired (None for a torn tail or a clean log).
      last_seq: the last seq the repaired log holds.
    """

    bytes_cut: int
    saved: tuple[tuple[str, str, int], ...]
    corrupt: LogCorruptError | None
    last_seq: int


def repair(path: str | os.PathLike) -> RepairReport:
    """Truncate the log at ``path`` to its last good transaction, keeping what was cut.

    Works on a torn tail and on corruption alike. For each affected segment the bytes that
    go are first copied to ``<segment>.cut-<UTC timestamp>`` beside it (segments after the
    damage are renamed that way), then the segment is truncated and fsynced. Takes the
    directory lock, so it refuses to run while a writer has the log open.

    Args:
      path: a log directory (``DIR/log``), a bus directory, or one segment file.

    Returns:
      A :class:`RepairReport` (``bytes_cut == 0`` when the log was already clean).
    """
    from mmsb_jax.store.tlog import _scan_files

    p = log_dir(path)
    directory = p.parent if p.is_file() else p
    if not directory.is_dir():
        raise StoreError(f"no log at {p}")
    lock = DirLock(directory)
    try:
        files = [p] if p.is_file() else segment_paths(p)
        scan = _scan_files(files, allow_corrupt=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        cuts = cut_segments(directory, scan.cuts, save_suffix=f".cut-{stamp}")
        total = sum(c.nbytes for c in cuts)
        if cuts:
            log.warning("mmsb log repair %s: cut %d bytes, saved beside the log", p, total)
        return RepairReport(bytes_cut=total,
                            saved=tuple((c.segment, c.saved or "", c.nbytes) for c in cuts),
                            corrupt=scan.corrupt, last_seq=scan.last_seq)
    finally:
        lock.release()
