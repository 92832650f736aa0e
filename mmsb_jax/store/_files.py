"""Files of a log directory: segment names, the writer lock, durable writes and cuts.

Shared by the log (:mod:`mmsb_jax.store.tlog`) and its repair (:mod:`mmsb_jax.store.repair`).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from mmsb_jax.errors import StoreError

__all__ = ["LOCK_NAME", "Cut", "DirLock", "cut_segments", "log_dir", "segment_paths"]

_SEGMENT_RE = re.compile(r"^(\d{8})\.tlog$")
LOCK_NAME = "LOCK"


def _segment_name(number: int) -> str:
    return f"{number:08d}.tlog"


def segment_paths(path: str | os.PathLike) -> list[Path]:
    """The segment files of a log directory, in order (other files are ignored)."""
    p = Path(path)
    if not p.is_dir():
        return []
    segs = [(int(m.group(1)), c) for c in p.iterdir() if (m := _SEGMENT_RE.match(c.name))]
    return [c for _, c in sorted(segs)]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fdatasync = getattr(os, "fdatasync", os.fsync)


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` completely (one ``os.write`` unless the kernel takes less)."""
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises instead on Linux
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def _read_file(path: Path, size: int | None = None) -> bytes:
    with open(path, "rb") as f:
        return f.read() if size is None else f.read(size)


def log_dir(path: str | os.PathLike) -> Path:
    """The log directory for ``path``: a log directory itself, or a bus directory's ``log/``.

    A directory that holds segments is a log directory; otherwise, if it has a ``log``
    subdirectory, that is returned. Anything else is returned as it is.
    """
    p = Path(path)
    if p.is_dir() and not segment_paths(p) and (p / "log").is_dir():
        return p / "log"
    return p


@dataclasses.dataclass(frozen=True)
class Cut:
    """One segment cut back to ``offset`` bytes (0: the file was removed or moved aside).

    Attributes:
      segment: the segment's path.
      offset: its new size.
      nbytes: the bytes cut.
      saved: where the cut bytes were kept (None when they were dropped).
    """

    segment: str
    offset: int
    nbytes: int
    saved: str | None


def cut_segments(directory: Path, cuts: Iterable[tuple[Path, int]], *,
                 save_suffix: str | None) -> list[Cut]:
    """Cut each ``(segment, offset)``: truncate it there (offset 0: remove it), durably.

    Args:
      directory: the log directory (fsynced after the cuts).
      cuts: where each segment's valid data ends.
      save_suffix: keep the cut bytes in ``<segment><save_suffix>`` beside it (whole
        segments are renamed); ``None`` drops them (torn tails on open).

    Returns:
      What was cut, in order.
    """
    done = []
    for seg, off in cuts:
        size = seg.stat().st_size
        target = seg.with_name(seg.name + save_suffix) if save_suffix is not None else None
        if off == 0:
            if target is None:
                seg.unlink()
            else:
                os.replace(seg, target)
        else:
            if target is not None:
                with open(seg, "rb") as src, open(target, "xb") as dst:
                    os.chmod(target, 0o600)
                    src.seek(off)
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            with open(seg, "r+b") as f:
                f.truncate(off)
                f.flush()
                os.fsync(f.fileno())
        done.append(Cut(str(seg), off, size - off, None if target is None else str(target)))
    if done:
        _fsync_dir(directory)
    return done


class DirLock:
    """An exclusive ``flock`` on ``DIR/LOCK``; the kernel drops it when the process dies."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(f"{directory} is in use by another writer (pid {holder}); "
                             "each log or bus directory has one writer") from None
        except OSError as e:  # pragma: no cover - e.g. a filesystem without flock
            os.close(fd)
            raise StoreError(f"cannot lock {self.path}: {e}") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
