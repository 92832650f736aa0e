"""Read and write the original MMSB's files: the ``MMSBLOG1`` log and the ``MMSBSNAP`` snapshot.

Layouts (all integers little-endian) are documented in ``docs/format.md`` ("Seed formats").
Readers never trust a length field: every length is checked against the bytes that remain
before anything is sliced or allocated, so a malformed file raises
:class:`~mmsb_jax.errors.SeedFormatError` (with the byte offset) and never over-allocates.
Writers produce byte-identical files from the parsed content.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from mmsb_jax.errors import SeedFormatError

__all__ = [
    "LOCATIONS",
    "LOG_MAGIC",
    "SNAP_MAGIC",
    "SeedFrame",
    "SeedPage",
    "SeedSnapshot",
    "apply_seed_frames",
    "decode_seed_log",
    "decode_seed_snapshot",
    "encode_seed_log",
    "encode_seed_snapshot",
    "read_seed_file",
    "read_seed_log",
    "read_seed_snapshot",
    "write_seed_log",
    "write_seed_snapshot",
]

LOG_MAGIC = b"MMSBLOG1"
SNAP_MAGIC = b"MMSBSNAP"
VERSION = 1
#: Location tags of the seed's pages.
LOCATIONS = {0: "cpu", 1: "gpu", 2: "unified"}


@dataclasses.dataclass(frozen=True)
class SeedFrame:
    """One delta frame of an ``MMSBLOG1`` log.

    Attributes:
      delta_id: u64 delta id.
      page_id: u64 page id.
      epoch: u32, the page's version after this delta.
      mask: ``uint8[mask_len]``, one byte (0/1) per page byte.
      payload: ``uint8[payload_len]``: dense = full page image (``payload_len == mask_len``),
        sparse = the changed bytes in order (``payload_len == mask.sum()``).
      is_sparse: whether the payload is sparse.
      timestamp: u64 nanoseconds (0 when unknown).
      source: UTF-8 writer label.
    """

    delta_id: int
    page_id: int
    epoch: int
    mask: np.ndarray
    payload: np.ndarray
    is_sparse: bool
    timestamp: int = 0
    source: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeedFrame):
            return NotImplemented
        return (self.delta_id, self.page_id, self.epoch, self.is_sparse, self.timestamp,
                self.source) == (other.delta_id, other.page_id, other.epoch, other.is_sparse,
                                 other.timestamp, other.source) and np.array_equal(
            self.mask, other.mask) and np.array_equal(self.payload, other.payload)

    __hash__ = None  # type: ignore[assignment]

    def dense_update(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mask: bool[mask_len], values: uint8[mask_len])`` of this frame as a masked update."""
        mask = self.mask != 0
        if self.is_sparse:
            values = np.zeros(mask.shape, np.uint8)
            values[mask] = self.payload
        else:
            values = self.payload.copy()
        return mask, values


@dataclasses.dataclass(frozen=True)
class SeedPage:
    """One page of an ``MMSBSNAP`` snapshot (``data: uint8[size]``)."""

    page_id: int
    epoch: int
    location: int
    metadata: Mapping[str, str]
    data: np.ndarray

    @property
    def size(self) -> int:
        """Page size in bytes."""
        return int(self.data.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeedPage):
            return NotImplemented
        return (self.page_id, self.epoch, self.location, dict(self.metadata)) == (
            other.page_id, other.epoch, other.location, dict(other.metadata)) and np.array_equal(
            self.data, other.data)

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class SeedSnapshot:
    """An ``MMSBSNAP`` snapshot: its pages and the log length when it was taken."""

    pages: tuple[SeedPage, ...]
    log_offset: int


class _Reader:
    """Bounds-checked little-endian reader over a bytes buffer."""

    def __init__(self, buf: bytes, what: str):
        self.buf = memoryview(buf)
        self.pos = 0
        self.what = what

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or n > self.left:
            raise SeedFormatError(
                f"{self.what}: {field} needs {n} bytes at offset {self.pos}, only {self.left} left")
        out = self.buf[self.pos:self.pos + n].tobytes()
        self.pos += n
        return out

    def unpack(self, fmt: str, field: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, field))[0]


def _check_header(r: _Reader, magic: bytes) -> None:
    got = r.take(len(magic), "magic") if r.left >= len(magic) else bytes(r.buf)
    if got != magic:
        raise SeedFormatError(f"{r.what}: bad magic {got[:8]!r}, expected {magic!r}")
    version = r.unpack("<I", "version")
    if version != VERSION:
        raise SeedFormatError(f"{r.what}: unknown version {version} (supported: {VERSION})")


# -- MMSBLOG1 ------------------------------------------------------------------------------

def decode_seed_log(data: bytes) -> list[SeedFrame]:
    """Parse an ``MMSBLOG1`` log from bytes; raises :class:`SeedFormatError` when malformed."""
    r = _Reader(data, "MMSBLOG1")
    _check_header(r, LOG_MAGIC)
    frames = []
    while r.left:
        start = r.pos
        try:
            delta_id = r.unpack("<Q", "delta_id")
            page_id = r.unpack("<Q", "page_id")
            epoch = r.unpack("<I", "epoch")
            mask_len = r.unpack("<I", "mask_len")
            mask = np.frombuffer(r.take(mask_len, "mask"), np.uint8).copy()
            payload_len = r.unpack("<I", "payload_len")
            payload = np.frombuffer(r.take(payload_len, "payload"), np.uint8).copy()
            is_sparse = r.unpack("<B", "is_sparse")
            timestamp = r.unpack("<Q", "timestamp")
            source_len = r.unpack("<I", "source_len")
            source_raw = r.take(source_len, "source")
        except SeedFormatError as e:
            raise SeedFormatError(f"frame at offset {start} runs past the end: {e}") from None
        if is_sparse not in (0, 1):
            raise SeedFormatError(f"frame at offset {start}: is_sparse = {is_sparse}, not 0/1")
        if np.any(mask > 1):
            raise SeedFormatError(f"frame at offset {start}: mask bytes must be 0 or 1")
        want = int(mask.sum()) if is_sparse else mask_len
        if payload_len != want:
            raise SeedFormatError(
                f"frame at offset {start}: payload_len {payload_len} != {want} "
                f"({'set mask bytes' if is_sparse else 'mask_len'})")
        try:
            source = source_raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SeedFormatError(f"frame at offset {start}: source is not UTF-8") from e
        frames.append(SeedFrame(delta_id, page_id, epoch, mask, payload, bool(is_sparse),
                                timestamp, source))
    return frames


def encode_seed_log(frames: Iterable[SeedFrame]) -> bytes:
    """Encode frames as an ``MMSBLOG1`` log (byte-identical to the original's writer)."""
    out = [LOG_MAGIC, struct.pack("<I", VERSION)]
    for f in frames:
        src = f.source.encode("utf-8")
        mask = np.asarray(f.mask, np.uint8)
        payload = np.asarray(f.payload, np.uint8)
        out += [struct.pack("<QQII", f.delta_id, f.page_id, f.epoch, mask.size), mask.tobytes(),
                struct.pack("<I", payload.size), payload.tobytes(),
                struct.pack("<BQI", int(f.is_sparse), f.timestamp, len(src)), src]
    return b"".join(out)


# -- MMSBSNAP ------------------------------------------------------------------------------

def _decode_metadata(raw: bytes, offset: int) -> dict[str, str]:
    if not raw:
        return {}
    r = _Reader(raw, f"MMSBSNAP metadata at offset {offset}")
    count = r.unpack("<I", "count")
    if count * 8 > r.left:
        raise SeedFormatError(f"metadata at offset {offset}: {count} entries cannot fit")
    meta: dict[str, str] = {}
    for _ in range(count):
        key = r.take(r.unpack("<I", "key_len"), "key")
        value = r.take(r.unpack("<I", "value_len"), "value")
        try:
            meta[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SeedFormatError(f"metadata at offset {offset} is not UTF-8") from e
    if r.left:
        raise SeedFormatError(f"metadata at offset {offset}: {r.left} trailing bytes")
    return meta


def _encode_metadata(meta: Mapping[str, str]) -> bytes:
    if not meta:
        return b""
    out = [struct.pack("<I", len(meta))]
    for k, v in meta.items():
        kb, vb = k.encode("utf-8"), v.encode("utf-8")
        out += [struct.pack("<I", len(kb)), kb, struct.pack("<I", len(vb)), vb]
    return b"".join(out)


def decode_seed_snapshot(data: bytes) -> SeedSnapshot:
    """Parse an ``MMSBSNAP`` snapshot from bytes; raises :class:`SeedFormatError`."""
    r = _Reader(data, "MMSBSNAP")
    _check_header(r, SNAP_MAGIC)
    count = r.unpack("<I", "page_count")
    log_offset = r.unpack("<Q", "log_offset")
    pages = []
    for i in range(count):
        start = r.pos
        try:
            page_id = r.unpack("<Q", "page_id")
            size = r.unpack("<Q", "size")
            epoch = r.unpack("<I", "epoch")
            location = r.unpack("<i", "location")
            meta_raw = r.take(r.unpack("<I", "metadata_len"), "metadata")
            data_len = r.unpack("<I", "data_len")
            if data_len != size:
                raise SeedFormatError(f"page {i} at offset {start}: data_len {data_len} != "
                                      f"size {size}")
            page_bytes = np.frombuffer(r.take(data_len, "data"), np.uint8).copy()
        except SeedFormatError as e:
            raise SeedFormatError(f"page {i} at offset {start}: {e}") from None
        if location not in LOCATIONS:
            raise SeedFormatError(f"page {i} at offset {start}: location tag {location} out of "
                                  f"range (0 CPU, 1 GPU, 2 unified)")
        pages.append(SeedPage(page_id, epoch, location, _decode_metadata(meta_raw, start),
                              page_bytes))
    if r.left:
        raise SeedFormatError(f"MMSBSNAP: {r.left} trailing bytes after {count} pages")
    return SeedSnapshot(tuple(pages), log_offset)


def encode_seed_snapshot(snapshot: SeedSnapshot) -> bytes:
    """Encode a snapshot as ``MMSBSNAP`` bytes (byte-identical to the original's writer)."""
    out = [SNAP_MAGIC, struct.pack("<IIQ", VERSION, len(snapshot.pages), snapshot.log_offset)]
    for p in snapshot.pages:
        if p.location not in LOCATIONS:
            raise SeedFormatError(f"page {p.page_id}: location tag {p.location} out of range")
        meta = _encode_metadata(p.metadata)
        data = np.asarray(p.data, np.uint8)
        out += [struct.pack("<QQIiI", p.page_id, data.size, p.epoch, p.location, len(meta)),
                meta, struct.pack("<I", data.size), data.tobytes()]
    return b"".join(out)


# -- files -----------------------------------------------------------------------------------

def read_seed_log(path: str | os.PathLike) -> list[SeedFrame]:
    """Read an ``MMSBLOG1`` file."""
    return decode_seed_log(Path(path).read_bytes())


def write_seed_log(path: str | os.PathLike, frames: Iterable[SeedFrame]) -> None:
    """Write an ``MMSBLOG1`` file."""
    Path(path).write_bytes(encode_seed_log(frames))


def read_seed_snapshot(path: str | os.PathLike) -> SeedSnapshot:
    """Read an ``MMSBSNAP`` file."""
    return decode_seed_snapshot(Path(path).read_bytes())


def write_seed_snapshot(path: str | os.PathLike, snapshot: SeedSnapshot) -> None:
    """Write an ``MMSBSNAP`` file."""
    Path(path).write_bytes(encode_seed_snapshot(snapshot))


def read_seed_file(path: str | os.PathLike) -> list[SeedFrame] | SeedSnapshot:
    """Read either seed format, chosen by its magic."""
    data = Path(path).read_bytes()
    if data[:8] == LOG_MAGIC:
        return decode_seed_log(data)
    if data[:8] == SNAP_MAGIC:
        return decode_seed_snapshot(data)
    raise SeedFormatError(f"{path}: bad magic {data[:8]!r}; expected {LOG_MAGIC!r} or "
                          f"{SNAP_MAGIC!r}")


def apply_seed_frames(
    pages: Mapping[int, tuple[np.ndarray, int]], frames: Iterable[SeedFrame]
) -> dict[int, tuple[np.ndarray, int]]:
    """Apply log frames to ``{page_id: (bytes uint8[size], epoch)}`` as the original did.

    A frame overwrites the bytes where its mask is 1 and sets the page's epoch. Pages first seen
    in a frame are created zero-filled with the frame's ``mask_len`` bytes.
    """
    out = {pid: (np.array(b, np.uint8), int(e)) for pid, (b, e) in pages.items()}
    for f in frames:
        data, _ = out.get(f.page_id, (np.zeros(f.mask.size, np.uint8), 0))
        if data.size != f.mask.size:
            raise SeedFormatError(f"frame {f.delta_id}: mask_len {f.mask.size} != page "
                                  f"{f.page_id} size {data.size}")
        mask, values = f.dense_update()
        out[f.page_id] = (np.where(mask, values, data).astype(np.uint8), f.epoch)
    return out
