"""Byte-level encoding of the transaction log (the layout is specified in ``docs/format.md``).

This module is pure: it turns headers, records and transactions into bytes and back, and scans a
segment's bytes for the longest valid prefix. Files, locks and fsync live in
:mod:`mmsb_jax.store.tlog`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import google_crc32c
import jax.numpy as jnp
import numpy as np

from mmsb_jax.core.delta import Delta
from mmsb_jax.core.pages import Schema
from mmsb_jax.errors import FormatError, SchemaError

__all__ = [
    "COMMIT",
    "DELTA",
    "DERIVED",
    "HEADER_SIZE",
    "KIND_CODES",
    "LayoutCache",
    "MAGIC",
    "MAX_DIM",
    "MAX_DTYPE_NAME",
    "MAX_NAME",
    "MAX_NDIM",
    "MAX_RECORD_BODY",
    "MAX_SCHEMA_JSON",
    "OP_CODES",
    "SCHEMA",
    "VERSION",
    "Record",
    "SegmentHeader",
    "SegmentScan",
    "StackedRun",
    "Transaction",
    "TxnLayout",
    "TxnInfo",
    "UnsupportedFormatError",
    "commit_body",
    "crc32c",
    "decode_header",
    "delta_body",
    "derived_body",
    "encode_header",
    "encode_transaction",
    "frame",
    "frame_all",
    "iter_records",
    "parse_body",
    "scan_segment",
    "schema_body",
    "transaction_bodies",
]

MAGIC = b"MMSBJAX\0"
VERSION = 1
HEADER_SIZE = 40
_HEADER = struct.Struct("<8sHHIIIQI")  # everything but the trailing header CRC (36 bytes)
_U32 = struct.Struct("<I")
_REC = struct.Struct("<II")  # length, crc
REC_HEADER_SIZE = _REC.size

SCHEMA, DELTA, DERIVED, COMMIT = 1, 2, 3, 4
RECORD_NAMES = {SCHEMA: "SCHEMA", DELTA: "DELTA", DERIVED: "DERIVED", COMMIT: "COMMIT"}

#: Caps on length fields (docs/format.md, section 2).
MIN_RECORD_BODY = 9
MAX_RECORD_BODY = 1 << 30
MAX_NAME = 128
MAX_DTYPE_NAME = 32
MAX_NDIM = 32
MAX_DIM = 1 << 40
MAX_SCHEMA_JSON = 16 << 20

_BODY_PREFIX = struct.Struct("<BQ")  # type, seq
_DELTA_FIXED = struct.Struct("<BBBBI")  # kind, op, mask_enc, ndim, count
_COMMIT = struct.Struct("<BQIIQ")  # type, seq, n_records, txn_crc, timestamp_ns
_COMMIT_RECORD_SIZE = REC_HEADER_SIZE + _COMMIT.size
_COMMIT_FIELDS = struct.Struct("<IIQ")  # n_records, txn_crc, timestamp_ns

MASK_NONE, MASK_BITS = 0, 1
_crc_extend = google_crc32c.extend


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32C of ``data`` continuing from ``crc`` (0 starts a new checksum)."""
    if type(data) is not bytes and not isinstance(data, np.ndarray):
        data = np.frombuffer(data, np.uint8)  # the C extension wants bytes or an ndarray
    return _crc_extend(crc, data)


# -- header ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SegmentHeader:
    """The fixed 40-byte header of a log segment.

    Attributes:
      segment: segment number (>= 1), equal to the number in the file name.
      salt: random ``u32`` that seeds every record CRC of the segment.
      base_seq: seq of the last transaction before this segment (0 for the first one).
    """

    segment: int
    salt: int
    base_seq: int


class UnsupportedFormatError(FormatError):
    """A well-formed header (valid CRC) of a format version or option this reader lacks."""


def encode_header(header: SegmentHeader) -> bytes:
    """The 40 header bytes of ``header`` (magic, version, size, flags, fields, CRC)."""
    head = _HEADER.pack(MAGIC, VERSION, HEADER_SIZE, 0, header.segment, header.salt,
                        header.base_seq, 0)
    return head + _U32.pack(crc32c(head))


def decode_header(data: bytes) -> SegmentHeader:
    """Parse and check a segment header.

    Raises:
      FormatError: fewer than 40 bytes, bad magic, bad CRC, or an unsupported version, header
        size or flag (the last three only when the CRC is valid, i.e. a newer writer).
    """
    if len(data) < HEADER_SIZE:
        raise FormatError(f"segment header truncated: {len(data)} of {HEADER_SIZE} bytes")
    magic, version, size, flags, segment, salt, base_seq, reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"bad magic {magic!r}; not an mmsb-jax log segment")
    (crc,) = _U32.unpack_from(data, _HEADER.size)
    if crc != crc32c(bytes(data[: _HEADER.size])):
        raise FormatError("segment header CRC mismatch")
    if version != VERSION:
        raise UnsupportedFormatError(f"unsupported log format version {version} (this reader: "
                                     f"{VERSION})")
    if size != HEADER_SIZE or flags != 0 or reserved != 0:
        raise UnsupportedFormatError(f"unsupported header (size {size}, flags {flags:#x}, reserved "
                          f"{reserved:#x})")
    if segment < 1:
        raise FormatError("segment number 0 in header")
    return SegmentHeader(segment=segment, salt=salt, base_seq=base_seq)


# -- record bodies --------------------------------------------------------------------------


def schema_body(seq: int, schema: Schema, graph: Mapping[str, Any] | None = None) -> bytes:
    """Body of a SCHEMA record: ``u8 type · u64 seq · UTF-8 JSON {"schema", "graph"}``."""
    doc = {"schema": schema.to_json(), "graph": dict(graph or {})}
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    if len(payload) > MAX_SCHEMA_JSON:
        raise FormatError(f"schema JSON of {len(payload)} bytes exceeds {MAX_SCHEMA_JSON}")
    return _BODY_PREFIX.pack(SCHEMA, seq) + payload


_BIG_ENDIAN_HOST = sys.byteorder == "big"


def _le_bytes(arr: np.ndarray) -> bytes:
    order = arr.dtype.byteorder
    if order == ">" or (order == "=" and _BIG_ENDIAN_HOST and arr.dtype.itemsize > 1):
        arr = arr.byteswap()  # the bytes on disk are little-endian
    return arr.tobytes()  # C order whatever the array's layout


def _native_le(dtype: np.dtype) -> bool:
    """Whether an array of ``dtype`` already holds the little-endian bytes the log stores."""
    order = dtype.byteorder
    return (order in "|<" or dtype.itemsize == 1
            or (order == "=" and not _BIG_ENDIAN_HOST))


def _name_bytes(name: str, what: str) -> bytes:
    raw = name.encode("utf-8")
    if not 1 <= len(raw) <= MAX_NAME:
        raise FormatError(f"{what} {name!r}: {len(raw)} bytes, expected 1..{MAX_NAME}")
    return raw


_DTYPE_NAMES: dict[type, bytes] = {}


def _dtype_bytes(dtype: np.dtype) -> bytes:
    """The dtype's numpy name as ASCII (cached per dtype class: hashing a dtype is slow)."""
    raw = _DTYPE_NAMES.get(type(dtype))
    if raw is None:
        raw = dtype.name.encode("ascii")
        if not 1 <= len(raw) <= MAX_DTYPE_NAME:
            raise FormatError(f"dtype name {dtype.name!r} too long")
        if not isinstance(dtype, np.dtypes.VoidDType):  # void dtypes share one class
            _DTYPE_NAMES[type(dtype)] = raw
    return raw


#: On-disk codes of delta kinds and ops (docs/format.md, section 3). Fixed by the format:
#: never derived from the order of ``KINDS``/``OPS``, never renumbered.
KIND_CODES: Mapping[str, int] = MappingProxyType({"rows": 0, "masked": 1, "full": 2})
OP_CODES: Mapping[str, int] = MappingProxyType(
    {"set": 0, "add": 1, "mul": 2, "min": 3, "max": 4, "or": 5, "and": 6})
_KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
_OP_NAMES = {v: k for k, v in OP_CODES.items()}
_KIND_CODE = KIND_CODES
_OP_CODE = OP_CODES
_DELTA_HEAD: dict[tuple[int, int, int], struct.Struct] = {}


def _delta_head(page_len: int, dtype_len: int, ndim: int) -> struct.Struct:
    st = _DELTA_HEAD.get((page_len, dtype_len, ndim))
    if st is None:
        st = struct.Struct(f"<BQBBBBIH{page_len}sB{dtype_len}s{ndim}Q")
        _DELTA_HEAD[(page_len, dtype_len, ndim)] = st
    return st


def delta_body(seq: int, delta: Delta) -> bytes:
    """Body of a DELTA record for ``delta`` (its leaves are copied to the host)."""
    values = np.asarray(delta.values)
    dtype_raw = _dtype_bytes(values.dtype)
    kind = _KIND_CODE.get(delta.kind)
    op = _OP_CODE.get(delta.op)
    if kind is None or op is None:
        raise FormatError(f"cannot encode delta kind {delta.kind!r} / op {delta.op!r}")
    shape = values.shape
    if len(shape) > MAX_NDIM or (shape and max(shape) >= MAX_DIM):
        raise FormatError(f"delta values shape {shape} exceeds the format caps")
    if not 1 <= delta.count < 2**32:
        raise FormatError(f"delta count {delta.count} outside 1..2^32-1")
    page = _name_bytes(delta.page, "page name")
    parts: list[Any] = [b""]
    mask_enc = MASK_NONE
    if kind == 0:  # rows
        if not shape:
            raise FormatError("rows delta with scalar values")
        idx = np.asarray(delta.indices)
        if idx.shape != (shape[0],):
            raise FormatError(f"rows delta: {idx.shape} indices for {shape[0]} rows")
        parts.append(_le_bytes(idx.astype("<i4", copy=False)))
    elif kind == 1:  # masked
        mask = np.asarray(delta.mask)
        if mask.dtype != np.bool_ or mask.shape != shape:
            raise FormatError("masked delta: mask must be bool with the values' shape")
        parts.append(np.packbits(mask.reshape(-1), bitorder="little").tobytes())
        mask_enc = MASK_BITS
    parts.append(_le_bytes(values))
    parts[0] = _delta_head(len(page), len(dtype_raw), len(shape)).pack(
        DELTA, seq, kind, op, mask_enc, len(shape), delta.count, len(page), page,
        len(dtype_raw), dtype_raw, *shape)
    body = b"".join(parts)
    if len(body) > MAX_RECORD_BODY:
        raise FormatError(f"delta on {delta.page!r} encodes to {len(body)} bytes, over the "
                          f"{MAX_RECORD_BODY}-byte record cap; split it into smaller deltas")
    return body


def derived_body(seq: int, names: Sequence[str]) -> bytes:
    """Body of a DERIVED record listing ``names`` (derived pages recomputed in the txn)."""
    names = list(names)
    if len(names) >= 2**16:
        raise FormatError(f"{len(names)} derived names exceed the u16 count")
    parts = [_BODY_PREFIX.pack(DERIVED, seq), struct.pack("<H", len(names))]
    for n in names:
        raw = _name_bytes(n, "derived page name")
        parts += [struct.pack("<H", len(raw)), raw]
    return b"".join(parts)


def commit_body(seq: int, n_records: int, txn_crc: int, timestamp_ns: int) -> bytes:
    """Body of a COMMIT record (exactly 25 bytes)."""
    return _COMMIT.pack(COMMIT, seq, n_records, txn_crc, timestamp_ns)


def transaction_bodies(seq: int, deltas: Sequence[Delta], derived: Sequence[str] = (),
                       timestamp_ns: int = 0) -> list[bytes]:
    """The record bodies of one transaction: its DELTAs, an optional DERIVED, then COMMIT."""
    bodies = [delta_body(seq, d) for d in deltas]
    if derived:
        bodies.append(derived_body(seq, derived))
    txn_crc = 0
    for b in bodies:
        txn_crc = crc32c(b, txn_crc)
    bodies.append(commit_body(seq, len(bodies), txn_crc, timestamp_ns))
    return bodies


def frame(salt: int, body: bytes) -> bytes:
    """``u32 length · u32 crc32c(salt · length · body) · body``."""
    n = len(body)
    if not MIN_RECORD_BODY <= n <= MAX_RECORD_BODY:
        raise FormatError(f"record body of {n} bytes outside the caps")
    crc = _crc_extend(_crc_extend(0, _REC.pack(salt, n)), body)
    return _REC.pack(n, crc) + body


def frame_all(salt: int, bodies: Sequence[bytes]) -> bytes:
    """The framed records of ``bodies``, concatenated (one transaction, one write)."""
    parts = []
    for body in bodies:
        n = len(body)
        if not MIN_RECORD_BODY <= n <= MAX_RECORD_BODY:
            raise FormatError(f"record body of {n} bytes outside the caps")
        parts.append(_REC.pack(n, _crc_extend(_crc_extend(0, _REC.pack(salt, n)), body)))
        parts.append(body)
    return b"".join(parts)


def encode_transaction(salt: int, seq: int, deltas: Sequence[Delta], derived: Sequence[str] = (),
                       timestamp_ns: int = 0) -> bytes:
    """The framed bytes of one transaction, as a writer appends them."""
    return frame_all(salt, transaction_bodies(seq, deltas, derived, timestamp_ns))


class TxnLayout:
    """The byte layout shared by every transaction of one structure: a writer's cache.

    Transactions with equal structure (pages, kinds, ops, counts, leaf shapes and dtypes, and
    DERIVED names) differ only in their seq, leaf bytes, CRCs and timestamp, so the record
    headers are built once. :meth:`encode` gives the same bytes as
    :func:`encode_transaction`; :meth:`encode_run` encodes ``L`` stacked transactions at once
    (numpy for the bytes, one CRC call per record), which is how ``Bus.commit_many`` logs a
    batch with one write.

    Args:
      deltas: one transaction of the structure (checked against the format's caps here:
        :class:`FormatError` if it cannot be encoded).
      derived: the DERIVED names the structure's transactions log.
    """

    def __init__(self, deltas: Sequence[Delta], derived: Sequence[str] = ()):
        self.heads: list[bytes] = []  # each DELTA body's header after ``type · seq``
        self._specs: list[tuple[str, str, str, int, tuple[int, ...], np.dtype]] = []
        self.kinds: list[int] = []
        self.sizes: list[int] = []  # body sizes, one per record (COMMIT last)
        for d in deltas:
            body = delta_body(0, d)
            values = np.asarray(d.values)
            head = _delta_head(len(d.page.encode()), len(_dtype_bytes(values.dtype)),
                               values.ndim).size
            self.heads.append(body[_BODY_PREFIX.size:head])
            self.kinds.append(_KIND_CODE[d.kind])
            self.sizes.append(len(body))
            # what decoding needs of each delta (no leaves: a cached layout keeps no arrays)
            self._specs.append((d.page, d.kind, d.op, d.count, values.shape, values.dtype))
        self.derived_tail = (derived_body(0, derived)[_BODY_PREFIX.size:] if derived else None)
        if self.derived_tail is not None:
            self.sizes.append(_BODY_PREFIX.size + len(self.derived_tail))
        self.sizes.append(_COMMIT.size)
        for n in self.sizes:
            if not MIN_RECORD_BODY <= n <= MAX_RECORD_BODY:
                raise FormatError(f"record body of {n} bytes outside the caps")
        self.nbytes = sum(self.sizes) + REC_HEADER_SIZE * len(self.sizes)
        self._frame_crcs: dict[int, list[int]] = {}
        # One full or rows delta whose leaves are native little-endian (the usual commit):
        # encode() joins the arrays' buffers directly, checking each leaf's dtype object.
        self._one: tuple[Any, Any] | None = None
        if len(deltas) == 1 and self.derived_tail is None and self.kinds[0] != 1:
            d = deltas[0]
            vdt = np.asarray(d.values).dtype
            idt = None if d.indices is None else np.asarray(d.indices).dtype
            if _native_le(vdt) and (idt is None or (idt == np.int32 and _native_le(idt))):
                self._one = (idt, vdt)
        self._tmpl: tuple[list[int], np.ndarray, np.ndarray, np.ndarray] | None = None

    def _prefix_crcs(self, salt: int) -> list[int]:
        """CRCs of ``salt · length`` per record (the start of each framing CRC)."""
        crcs = self._frame_crcs.get(salt)
        if crcs is None:
            crcs = self._frame_crcs[salt] = [_crc_extend(0, _REC.pack(salt, n))
                                             for n in self.sizes]
        return crcs

    def encode(self, salt: int, seq: int, deltas: Sequence[Delta], timestamp_ns: int) -> bytes:
        """The framed bytes of one transaction (as :func:`encode_transaction`)."""
        prefix = _BODY_PREFIX.pack(DELTA, seq)
        crcs = self._frame_crcs.get(salt) or self._prefix_crcs(salt)
        one = self._one
        if one is not None:
            d = deltas[0]
            values: Any = np.asarray(d.values)  # a buffer for join (Any: numpy's stubs lack it)
            body = None
            try:
                if one[0] is None:
                    if values.dtype is one[1]:
                        body = b"".join((prefix, self.heads[0], values))
                else:
                    idx: Any = np.asarray(d.indices)
                    if values.dtype is one[1] and idx.dtype is one[0]:
                        body = b"".join((prefix, self.heads[0], idx, values))
            except TypeError:  # a leaf that is not C-contiguous: the general path copies it
                pass
            if body is not None:
                size, csize = self.sizes
                if len(body) != size:
                    raise FormatError(f"delta on {d.page!r} does not match its layout")
                commit = _COMMIT.pack(COMMIT, seq, 1, _crc_extend(0, body), timestamp_ns)
                return b"".join((_REC.pack(size, _crc_extend(crcs[0], body)), body,
                                 _REC.pack(csize, _crc_extend(crcs[1], commit)), commit))
        parts: list[bytes] = []
        txn_crc = 0
        for i, d in enumerate(deltas):
            kind = self.kinds[i]
            if kind == 0:
                leaf = _le_bytes(np.asarray(d.indices))
            elif kind == 1:
                leaf = np.packbits(np.asarray(d.mask).reshape(-1), bitorder="little").tobytes()
            else:
                leaf = b""
            body = b"".join((prefix, self.heads[i], leaf, _le_bytes(np.asarray(d.values))))
            txn_crc = _crc_extend(txn_crc, body)
            parts.append(_REC.pack(len(body), _crc_extend(crcs[i], body)))
            parts.append(body)
        if self.derived_tail is not None:
            body = _BODY_PREFIX.pack(DERIVED, seq) + self.derived_tail
            txn_crc = _crc_extend(txn_crc, body)
            parts.append(_REC.pack(len(body), _crc_extend(crcs[-2], body)))
            parts.append(body)
        body = _COMMIT.pack(COMMIT, seq, len(self.sizes) - 1, txn_crc, timestamp_ns)
        parts.append(_REC.pack(len(body), _crc_extend(crcs[-1], body)))
        parts.append(body)
        return b"".join(parts)

    def encode_run(self, salt: int, first_seq: int, stacked: Sequence[Delta],
                   timestamp_ns: int) -> bytes:
        """The framed bytes of ``L`` transactions with seqs ``first_seq, first_seq + 1, ...``.

        Args:
          salt: the segment's salt.
          first_seq: the first transaction's seq.
          stacked: the transactions' deltas stacked position by position (leaves
            ``[L, ...]``, as ``mmsb_jax.core.transaction.stack_transactions`` builds them).
          timestamp_ns: the commit time written into every COMMIT record.

        Returns:
          ``L * self.nbytes`` bytes: the transactions back to back, each exactly as
          :meth:`encode` writes it.
        """
        n_txn = int(np.shape(stacked[0].values)[0])
        out = np.empty((n_txn, self.nbytes), np.uint8)
        seqs = np.arange(first_seq, first_seq + n_txn, dtype="<u8").view(np.uint8)
        seqs = seqs.reshape(n_txn, 8)
        body_at: list[int] = []  # where each record's body starts within a transaction
        pos = 0

        def put(width: int, data: Any) -> None:
            nonlocal pos
            out[:, pos:pos + width] = data
            pos += width

        for i, d in enumerate(stacked):
            pos += REC_HEADER_SIZE
            body_at.append(pos)
            put(1, DELTA)
            put(8, seqs)
            put(len(self.heads[i]), np.frombuffer(self.heads[i], np.uint8))
            if self.kinds[i] == 0:
                idx = np.ascontiguousarray(np.asarray(d.indices), dtype="<i4")
                put(idx.shape[1] * 4, idx.view(np.uint8).reshape(n_txn, -1))
            elif self.kinds[i] == 1:
                mask = np.asarray(d.mask).reshape(n_txn, -1)
                bits = np.packbits(mask, axis=1, bitorder="little")
                put(bits.shape[1], bits)
            values = np.asarray(d.values)
            if values.dtype.byteorder == ">" or (values.dtype.byteorder == "=" and
                                                 _BIG_ENDIAN_HOST and values.dtype.itemsize > 1):
                values = values.byteswap()
            raw = np.ascontiguousarray(values).reshape(n_txn, -1).view(np.uint8)
            put(raw.shape[1], raw)
        if self.derived_tail is not None:
            pos += REC_HEADER_SIZE
            body_at.append(pos)
            put(1, DERIVED)
            put(8, seqs)
            put(len(self.derived_tail), np.frombuffer(self.derived_tail, np.uint8))
        pos += REC_HEADER_SIZE
        body_at.append(pos)
        commit_at = pos
        put(1, COMMIT)
        put(8, seqs)
        put(4, np.frombuffer(_U32.pack(len(self.sizes) - 1), np.uint8))
        pos += 4  # txn_crc, filled below
        put(8, np.frombuffer(struct.pack("<Q", timestamp_ns), np.uint8))
        # Lengths, then CRCs: the transaction CRC covers the DELTA/DERIVED bodies, the framing
        # CRC of each record covers ``salt · length · body``.
        for at, n in zip(body_at, self.sizes, strict=True):
            out[:, at - 8:at - 4] = np.frombuffer(_U32.pack(n), np.uint8)
        # CRCs from one contiguous copy of each record's bodies (slicing bytes is cheaper than
        # slicing the array), written back one column at a time.
        prefix = self._prefix_crcs(salt)
        last = len(self.sizes) - 1
        txn_crcs = [0] * n_txn
        for r in range(last + 1):
            if r == last:
                out[:, commit_at + 13:commit_at + 17] = _u32_column(txn_crcs, n_txn)
            at, size, start = body_at[r], self.sizes[r], prefix[r]
            blob = out[:, at:at + size].tobytes()
            frames = []
            for t in range(0, n_txn * size, size):
                body = blob[t:t + size]
                if r < last:
                    txn_crcs[t // size] = _crc_extend(txn_crcs[t // size], body)
                frames.append(_crc_extend(start, body))
            out[:, at - 4:at] = _u32_column(frames, n_txn)
        return out.tobytes()


    def _template(self) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """``(body offsets, fixed columns, their bytes, seq columns)`` of one encoded
        transaction: where each record's body starts, the bytes every transaction of the
        structure shares (lengths, types, delta headers, DERIVED names, the COMMIT record
        count) and their values, and the ``8 * records`` bytes of the seqs."""
        if self._tmpl is not None:
            return self._tmpl
        ref = np.zeros(self.nbytes, np.uint8)
        fixed = np.zeros(self.nbytes, bool)
        body_at, seq_cols = [], []
        pos = 0
        last = len(self.sizes) - 1
        for r, size in enumerate(self.sizes):
            ref[pos:pos + 4] = np.frombuffer(_U32.pack(size), np.uint8)
            fixed[pos:pos + 4] = True  # length (the framing CRC follows)
            at = pos + REC_HEADER_SIZE
            body_at.append(at)
            if r < len(self.heads):
                rtype, shared = DELTA, self.heads[r]
            elif r < last:
                rtype, shared = DERIVED, self.derived_tail or b""
            else:  # COMMIT: the record count (then crc, timestamp)
                rtype, shared = COMMIT, _U32.pack(last)
            ref[at] = rtype
            ref[at + 9:at + 9 + len(shared)] = np.frombuffer(shared, np.uint8)
            fixed[at] = True
            fixed[at + 9:at + 9 + len(shared)] = True
            seq_cols.extend(range(at + 1, at + 9))
            pos = at + size
        cols = np.flatnonzero(fixed)
        self._tmpl = (body_at, cols, ref[cols], np.asarray(seq_cols, np.int64))
        return self._tmpl

    def timestamps(self, buf: bytes | memoryview, start: int, count: int) -> list[int]:
        """The COMMIT timestamps of ``count`` transactions of this layout from ``start``."""
        at = self._template()[0][-1] + 17  # COMMIT body: type, seq, count, crc, then ts
        rows = np.frombuffer(buf, np.uint8, count * self.nbytes, start).reshape(count, -1)
        return np.ascontiguousarray(rows[:, at:at + 8]).view("<u8").ravel().tolist()

    def decode_run(self, buf: bytes | memoryview, start: int, end: int, salt: int,
                   first_seq: int, max_count: int, arrays: bool = True
                   ) -> tuple[int, list[Delta]]:
        """Decode the transactions of this structure that follow each other from ``start``.

        The inverse of :meth:`encode_run`: reads up to ``max_count`` transactions that share
        this layout's bytes (headers, lengths, names) with seqs ``first_seq, first_seq + 1,
        ...``, checks every record's framing CRC and each transaction's CRC, and returns
        them stacked without building one Delta per transaction.

        Args:
          buf: the segment's bytes; start, end: the range to read (``end``: the valid end).
          salt: the segment's salt.
          first_seq: the seq the first transaction must have.
          max_count: read at most this many transactions.
          arrays: build the stacked deltas; with ``False`` only check (what a scan needs)
            and return ``(count, [])``.

        Returns:
          ``(count, stacked)``: ``count`` transactions decoded (0 if fewer than two match),
          their deltas stacked position by position (leaves ``[count, ...]``, as
          ``stack_transactions`` builds them).

        Raises:
          FormatError: a CRC of a matching transaction does not check out, or a mask or bool
            payload is malformed (the bytes changed after they were scanned).
        """
        size_t = self.nbytes
        m = min(int(max_count), (end - start) // size_t)
        if m < 2:
            return 0, []
        body_at, fixed, first, seq_cols = self._template()
        a = np.frombuffer(buf, np.uint8, m * size_t, start).reshape(m, size_t)
        expect = np.arange(first_seq, first_seq + m, dtype=np.uint64)

        def matching(rows: np.ndarray, seqs: np.ndarray) -> np.ndarray:
            same = (rows[:, fixed] == first).all(axis=1)
            got = np.ascontiguousarray(rows[:, seq_cols]).view("<u8")
            return same & (got == seqs[:, None]).all(axis=1)

        if not matching(a[:2], expect[:2]).all():  # cheap refusal of a different neighbour
            return 0, []
        # grow the checked window geometrically: the work is linear in the run found, not in
        # the bytes left (a scan calls this after every transaction that starts a run)
        count, step = 2, 2
        while count < m:
            hi = min(m, count + step)
            ok = matching(a[count:hi], expect[count:hi])
            if not ok.all():
                count += int(np.argmin(ok))
                break
            count, step = hi, 2 * step
        a = a[:count]
        prefix = self._prefix_crcs(salt)
        last = len(self.sizes) - 1
        stored = [np.ascontiguousarray(a[:, at - 4:at]).view("<u4").ravel().tolist()
                  for at in body_at]
        commit_at = body_at[last]
        txn_stored = np.ascontiguousarray(a[:, commit_at + 13:commit_at + 17]).view("<u4")
        txn_stored = txn_stored.ravel().tolist()
        txn_crcs = [0] * count
        for r, (at, size) in enumerate(zip(body_at, self.sizes, strict=True)):
            blob = a[:, at:at + size].tobytes()
            start_crc, want = prefix[r], stored[r]
            for t in range(count):
                body = blob[t * size:(t + 1) * size]
                if _crc_extend(start_crc, body) != want[t]:
                    raise FormatError(f"record CRC mismatch in transaction {first_seq + t}")
                if r < last:
                    txn_crcs[t] = _crc_extend(txn_crcs[t], body)
        if txn_crcs != txn_stored:
            raise FormatError(f"transaction CRC mismatch in seqs {first_seq}.."
                              f"{first_seq + count - 1}")
        out = []
        for i, (page, kind, op, n_user, shape, dt) in enumerate(self._specs):
            at = body_at[i] + 9 + len(self.heads[i])
            size = math.prod(shape)
            indices = mask = None
            if kind == "rows":
                k = shape[0]
                if arrays:
                    indices = np.ascontiguousarray(a[:, at:at + 4 * k]).view("<i4")
                at += 4 * k
            elif kind == "masked":
                nb = (size + 7) // 8
                bits = a[:, at:at + nb]
                if size % 8 and (bits[:, -1] >> (size % 8)).any():
                    raise FormatError("mask padding bits are not zero")
                if arrays:
                    mask = np.unpackbits(bits, axis=1, count=size, bitorder="little")
                    mask = mask.view(np.bool_).reshape(count, *shape)
                at += nb
            if dt == np.bool_ and size and a[:, at:at + size].max() > 1:
                raise FormatError("values: bool bytes other than 0/1")
            if not arrays:
                continue
            raw = np.ascontiguousarray(a[:, at:at + size * dt.itemsize])
            read = dt.newbyteorder("<") if dt.itemsize > 1 and dt.kind in "iufc" else dt
            values = raw.view(read).reshape(count, *shape)
            out.append(Delta._new(indices, mask, values, page, kind, op, n_user, False))
        return count, out


class LayoutCache:
    """:class:`TxnLayout` by transaction structure, for writers that are not given one.

    Keyed by :func:`layout_key`. ``TLog.append`` without a ``layout`` looks its structure up
    here, so a repeated structure encodes with its cached headers (the bytes
    :func:`encode_transaction` writes); the scan at open and the log's readers find the
    layout that decodes a run here. A structure the cache cannot vouch for (index leaves that
    are not int32, a delta the format refuses) gets ``None``: the caller then takes the long
    path, which raises the format's error where there is one.

    Args:
      max_size: structures kept; the cache is emptied when it is full.
    """

    def __init__(self, max_size: int = 256):
        self.max_size = max_size
        self._layouts: dict[tuple, TxnLayout] = {}

    def get(self, deltas: Sequence[Delta], derived: Sequence[str] = ()) -> TxnLayout | None:
        """The layout of ``deltas`` (and ``derived``), built on first use, or None."""
        try:
            key = layout_key(deltas, derived)
        except AttributeError:  # leaves that are not arrays
            return None
        layout = self._layouts.get(key)
        if layout is None:
            if any(d.indices is not None and np.dtype(d.indices.dtype) != np.int32
                   for d in deltas):
                return None  # TxnLayout.encode writes the index leaf as it is
            try:
                layout = TxnLayout(deltas, derived)  # a mask that is not bool is refused here
            except FormatError:
                return None
            if len(self._layouts) >= self.max_size:
                self._layouts.clear()
            self._layouts[key] = layout
        return layout


def layout_key(deltas: Sequence[Delta], derived: Sequence[str] = ()) -> tuple:
    """What makes two logged transactions encode alike (their :class:`TxnLayout`): leaf
    shapes and dtypes, statics and the DERIVED names."""
    return (tuple((d.page, d.kind, d.op, d.count, d.values.shape, d.values.dtype.str,
                   None if d.indices is None else (d.indices.shape, d.indices.dtype.str),
                   None if d.mask is None else (d.mask.shape, d.mask.dtype.str))
                  for d in deltas), tuple(derived))


#: A run is decoded only when this many transactions after one look like it: decoding costs
#: about as much as scanning four transactions one record at a time, so shorter runs (and
#: patterns such as A A B A A B) stay on the per-record path.
RUN_LOOKAHEAD = 4


def next_looks_alike(view: memoryview, start: int, nxt: int, end: int) -> bool:
    """Whether the :data:`RUN_LOOKAHEAD` transactions from ``nxt`` may have the structure of
    the one at ``start`` (which ends at ``nxt``): the first record (a DELTA) of each has the
    same length, kind, op, mask encoding, ndim, count and page name. A cheap test before
    :meth:`TxnLayout.decode_run`, which checks every byte."""
    head = REC_HEADER_SIZE + 9  # framing, then the body's type and seq
    size = nxt - start
    if size < head + 10:
        return False
    n = 10 + int.from_bytes(view[start + head + 8:start + head + 10], "little")
    if nxt + (RUN_LOOKAHEAD - 1) * size + head + n > end:
        return False
    ref_len, ref_type = view[start:start + 4], view[start + head - 9]
    ref = view[start + head:start + head + n]
    for at in range(nxt, nxt + RUN_LOOKAHEAD * size, size):
        if (view[at:at + 4] != ref_len or view[at + head - 9] != ref_type
                or view[at + head:at + head + n] != ref):
            return False
    return True


def _u32_column(values: list[int], rows: int) -> np.ndarray:
    """``values`` as little-endian uint32 bytes, one row of 4 per value: ``uint8[rows, 4]``."""
    return np.asarray(values, "<u4").view(np.uint8).reshape(rows, 4)


# -- parsing --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Record:
    """A parsed record.

    Attributes:
      type: ``SCHEMA | DELTA | DERIVED | COMMIT``.
      seq: the record's seq.
      value: SCHEMA: ``(Schema, graph dict)``; DELTA: a :class:`Delta` with numpy leaves (views
        of the segment bytes); DERIVED: ``tuple[str, ...]``; COMMIT: ``(n_records, txn_crc,
        timestamp_ns)``.
    """

    type: int
    seq: int
    value: Any


class _Reader:
    """Bounds-checked cursor over one record body."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: memoryview, pos: int = 0):
        self.buf = buf
        self.pos = pos
        self.end = len(buf)

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left():
            raise FormatError(f"{what}: needs {n} bytes, {self.left()} left in the record")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        return st.unpack(self.take(st.size, what))


_U16 = struct.Struct("<H")


def _name(r: _Reader, size: struct.Struct, what: str) -> str:
    (n,) = r.unpack(size, what + " length")
    if not 1 <= n <= MAX_NAME:
        raise FormatError(f"{what} length {n} outside 1..{MAX_NAME}")
    try:
        return bytes(r.take(n, what)).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what} is not UTF-8") from e


def _decode_dtype(raw: bytes) -> np.dtype:
    try:
        name = raw.decode("ascii")
        dt = np.dtype(jnp.dtype(name))
    except (UnicodeDecodeError, TypeError) as e:
        raise FormatError(f"unknown dtype {raw!r}") from e
    if dt.name != name or dt.hasobject or dt.itemsize == 0:
        raise FormatError(f"unsupported dtype {raw!r}")
    return dt


#: dtype name bytes -> (dtype, the little-endian dtype its bytes are read with, is bool); only
#: names that decoded to a supported dtype are kept, so the cache is bounded by the dtypes.
_READ_DTYPES: dict[bytes, tuple[np.dtype, np.dtype, bool]] = {}
_SHAPE_STRUCTS = tuple(struct.Struct(f"<{n}Q") for n in range(MAX_NDIM + 1))
_I4 = np.dtype("<i4")


def _read_dtype(raw: bytes) -> tuple[np.dtype, np.dtype, bool]:
    got = _READ_DTYPES.get(raw)
    if got is None:
        dt = _decode_dtype(raw)
        read = dt.newbyteorder("<") if dt.itemsize > 1 and dt.kind in "iufc" else dt
        got = _READ_DTYPES[raw] = (dt, read, dt == np.bool_)
    return got


def _short(what: str, n: int, left: int) -> FormatError:
    return FormatError(f"{what}: needs {n} bytes, {left} left in the record")


def _parse_delta(buf: memoryview, pos: int, arrays: bool = True) -> Any:
    """The DELTA payload of ``buf[pos:]`` (its whole remainder), fully checked.

    Returns the Delta, or with ``arrays=False`` only its page name (what a scan needs: the
    leaves are not built). Offsets instead of a cursor object, as opening and replaying a log
    parse every delta in it."""
    end = len(buf)
    if end - pos < 8:
        raise _short("delta header", 8, end - pos)
    kind_i, op_i, mask_enc, ndim, count = _DELTA_FIXED.unpack_from(buf, pos)
    pos += 8
    kind = _KIND_NAMES.get(kind_i)
    if kind is None:
        raise FormatError(f"unknown delta kind {kind_i}")
    op = _OP_NAMES.get(op_i)
    if op is None:
        raise FormatError(f"unknown delta op {op_i}")
    if ndim > MAX_NDIM:
        raise FormatError(f"ndim {ndim} over the cap {MAX_NDIM}")
    if count < 1:
        raise FormatError("delta count 0")
    want_mask = MASK_BITS if kind == "masked" else MASK_NONE
    if mask_enc != want_mask:
        raise FormatError(f"mask encoding {mask_enc} invalid for a {kind} delta")
    if end - pos < 2:
        raise _short("page name length", 2, end - pos)
    (n,) = _U16.unpack_from(buf, pos)
    pos += 2
    if not 1 <= n <= MAX_NAME:
        raise FormatError(f"page name length {n} outside 1..{MAX_NAME}")
    if n > end - pos:
        raise _short("page name", n, end - pos)
    try:
        page = str(buf[pos:pos + n], "utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("page name is not UTF-8") from e
    pos += n
    if end - pos < 1:
        raise _short("dtype length", 1, end - pos)
    dlen = buf[pos]
    pos += 1
    if not 1 <= dlen <= MAX_DTYPE_NAME:
        raise FormatError(f"dtype name length {dlen} outside 1..{MAX_DTYPE_NAME}")
    if dlen > end - pos:
        raise _short("dtype name", dlen, end - pos)
    dtype, read_dtype, is_bool = _read_dtype(bytes(buf[pos:pos + dlen]))
    pos += dlen
    if 8 * ndim > end - pos:
        raise _short("shape", 8 * ndim, end - pos)
    shape = _SHAPE_STRUCTS[ndim].unpack_from(buf, pos)
    pos += 8 * ndim
    if ndim and max(shape) >= MAX_DIM:
        raise FormatError(f"dimension in {shape} over the cap 2^40")
    size = 1
    for s in shape:
        size *= s
    indices = mask = None
    if kind == "rows":
        if ndim < 1:
            raise FormatError("rows delta with scalar values")
        k = shape[0]
        if 4 * k > end - pos:
            raise _short("indices", 4 * k, end - pos)
        if arrays:
            indices = np.frombuffer(buf, _I4, k, pos)
        pos += 4 * k
    elif kind == "masked":
        nb = (size + 7) // 8
        if nb > end - pos:
            raise _short("mask", nb, end - pos)
        if size % 8 and buf[pos + nb - 1] >> (size % 8):
            raise FormatError("mask padding bits are not zero")
        if arrays:
            mask = np.unpackbits(np.frombuffer(buf, np.uint8, nb, pos), count=size,
                                 bitorder="little").view(np.bool_).reshape(shape)
        pos += nb
    nv = size * dtype.itemsize
    if nv > end - pos:
        raise _short("values", nv, end - pos)
    if nv < end - pos:
        raise FormatError(f"{end - pos - nv} trailing bytes in a DELTA record")
    if is_bool and size and np.frombuffer(buf, np.uint8, size, pos).max() > 1:
        raise FormatError("values: bool bytes other than 0/1")
    if not arrays:
        return page
    values = np.frombuffer(buf, read_dtype, size, pos).reshape(shape)
    return Delta._new(indices, mask, values, page, kind, op, count, False)


def parse_body(body: memoryview | bytes, *, arrays: bool = True) -> Record:
    """Parse one record body (after its framing was checked).

    With ``arrays=False`` a DELTA record's value is only its page name (every field is still
    checked; the numpy leaves and the Delta are not built): what :func:`scan_segment` needs.

    Raises:
      FormatError: unknown type, a length field over its cap or over the bytes left, bad
        names, dtypes, JSON, or trailing bytes.
    """
    view = body if type(body) is memoryview else memoryview(body)
    n = len(view)
    if n < _BODY_PREFIX.size:
        raise _short("record prefix", _BODY_PREFIX.size, n)
    rtype, seq = _BODY_PREFIX.unpack_from(view, 0)
    # the two record types of every transaction, without a cursor object
    if rtype == DELTA:
        return Record(rtype, seq, _parse_delta(view, _BODY_PREFIX.size, arrays))
    if rtype == COMMIT:
        left = n - _BODY_PREFIX.size
        if left < _COMMIT_FIELDS.size:
            raise _short("commit fields", _COMMIT_FIELDS.size, left)
        if left > _COMMIT_FIELDS.size:
            raise FormatError(f"{left - _COMMIT_FIELDS.size} trailing bytes in a COMMIT record")
        return Record(rtype, seq, _COMMIT_FIELDS.unpack_from(view, _BODY_PREFIX.size))
    r = _Reader(view, _BODY_PREFIX.size)
    if rtype == SCHEMA:
        raw = bytes(r.take(r.left(), "schema json"))
        if len(raw) > MAX_SCHEMA_JSON:
            raise FormatError("schema JSON over the cap")
        try:
            doc = json.loads(raw.decode("utf-8"))
            if not isinstance(doc, dict) or set(doc) != {"schema", "graph"}:
                raise FormatError("schema record JSON must have exactly 'schema' and 'graph'")
            if not isinstance(doc["graph"], dict):
                raise FormatError("schema record 'graph' must be an object")
            value: Any = (Schema.from_json(doc["schema"]), doc["graph"])
        except (UnicodeDecodeError, json.JSONDecodeError, SchemaError) as e:
            raise FormatError(f"bad schema record: {e}") from e
    elif rtype == DERIVED:
        (count,) = r.unpack(_U16, "derived count")
        value = tuple(_name(r, _U16, "derived page name") for _ in range(count))
    else:
        raise FormatError(f"unknown record type {rtype}")
    if r.left():
        raise FormatError(f"{r.left()} trailing bytes in a {RECORD_NAMES[rtype]} record")
    return Record(rtype, seq, value)


def _check_frame(buf: memoryview, pos: int, salt: int) -> tuple[int, str]:
    """``(body_length, "")`` if a well-framed record starts at ``pos``, else ``(0, reason)``."""
    left = len(buf) - pos
    if left < REC_HEADER_SIZE:
        return 0, f"truncated record header ({left} bytes)"
    length, crc = _REC.unpack_from(buf, pos)
    if not MIN_RECORD_BODY <= length <= MAX_RECORD_BODY:
        return 0, f"record length {length} outside {MIN_RECORD_BODY}..{MAX_RECORD_BODY}"
    if length > left - REC_HEADER_SIZE:
        return 0, f"record length {length} exceeds the {left - REC_HEADER_SIZE} bytes left"
    body = np.frombuffer(buf, np.uint8, length, pos + REC_HEADER_SIZE)
    if _crc_extend(_crc_extend(0, _REC.pack(salt, length)), body) != crc:
        return 0, "record CRC mismatch"
    return length, ""


def iter_records(buf: bytes | memoryview, start: int, end: int, salt: int
                 ) -> Iterator[tuple[int, int, Record]]:
    """Yield ``(offset, end_offset, Record)`` for the records in ``buf[start:end]``.

    For reading a range already validated by :func:`scan_segment`; a bad record still raises
    :class:`FormatError` (the file changed underneath).
    """
    view = memoryview(buf)[:end]
    pos = start
    while pos < end:
        length, why = _check_frame(view, pos, salt)
        if not length:
            raise FormatError(f"offset {pos}: {why}")
        body_at = pos + REC_HEADER_SIZE
        rec = parse_body(view[body_at:body_at + length])
        yield pos, body_at + length, rec
        pos = body_at + length


@dataclasses.dataclass(frozen=True)
class Transaction:
    """One committed transaction as read back from a log.

    Attributes:
      seq: its commit sequence number (1, 2, ...).
      deltas: its deltas in commit order (numpy leaves).
      derived: names listed in its DERIVED record (derived pages recomputed), else ``()``.
      timestamp_ns: wall-clock commit time in ns since the Unix epoch (informational).
    """

    seq: int
    deltas: tuple[Delta, ...]
    derived: tuple[str, ...] = ()
    timestamp_ns: int = 0


@dataclasses.dataclass(frozen=True)
class StackedRun:
    """Consecutive transactions of one structure read back stacked (a replay's fast path).

    Attributes:
      first_seq: the seq of the first of them.
      count: how many (``>= 1``); their seqs are ``first_seq .. first_seq + count - 1``.
      deltas: their deltas stacked position by position (numpy leaves ``[count, ...]``).
      structure: a transaction of the same structure (the one before the run), for checks.
    """

    first_seq: int
    count: int
    deltas: tuple[Delta, ...]
    structure: tuple[Delta, ...]


# -- scanning a segment ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TxnInfo:
    """Where one complete transaction lies in a segment and what it touches."""

    seq: int
    offset: int
    end: int
    pages: tuple[str, ...]
    n_deltas: int
    derived: tuple[str, ...]
    timestamp_ns: int


@dataclasses.dataclass
class SegmentScan:
    """The result of :func:`scan_segment`.

    Attributes:
      size: bytes in the segment.
      header: the parsed header, or None if it is missing or bad.
      schema, graph: from the SCHEMA record (None if missing or bad).
      txns: the complete, valid transactions in order.
      good_end: end offset of the valid prefix: after the last complete transaction, or after
        the SCHEMA record, or 0 if the header or schema record is bad.
      bad_offset: offset of the first bad record (None if the segment is clean up to its end).
      reason: why the record at ``bad_offset`` is bad.
      valid_after_bad: whether a valid record (or a non-zero complete header) follows the bad
        one, i.e. the damage is corruption and not a torn tail.
    """

    size: int
    header: SegmentHeader | None = None
    schema: Schema | None = None
    graph: dict[str, Any] | None = None
    txns: list[TxnInfo] = dataclasses.field(default_factory=list)
    good_end: int = 0
    bad_offset: int | None = None
    reason: str = ""
    valid_after_bad: bool = False

    @property
    def last_seq(self) -> int:
        """Seq of the last complete transaction (``base_seq`` if there is none)."""
        if self.txns:
            return self.txns[-1].seq
        return self.header.base_seq if self.header else 0

    @property
    def clean(self) -> bool:
        """True when every byte belongs to the valid prefix."""
        return self.bad_offset is None


_SCAN_CHUNK = 1 << 22


def _gather_le(a: np.ndarray, idx: np.ndarray, nbytes: int) -> np.ndarray:
    out = np.zeros(idx.shape, np.uint64)
    for k in range(nbytes):
        out |= a[idx + k].astype(np.uint64) << np.uint64(8 * k)
    return out


def find_valid_record(buf: bytes | memoryview, start: int, salt: int, lo_seq: int) -> int | None:
    """Offset of the first position ``>= start`` holding a valid record, or None.

    A candidate needs a length within the caps and the bytes left, a known type, a seq in
    ``[lo_seq, lo_seq + remaining // 33 + 2]`` (no later transaction can have a larger one) and a
    matching salted CRC. The cheap tests are vectorised with numpy, so the scan is linear.
    """
    view = memoryview(buf)
    n = len(view)
    a = np.frombuffer(view, np.uint8)
    last = n - REC_HEADER_SIZE - MIN_RECORD_BODY
    hi_seq = lo_seq + (n - start) // _COMMIT_RECORD_SIZE + 2
    for lo in range(start, last + 1, _SCAN_CHUNK):
        hi = min(last + 1, lo + _SCAN_CHUNK)
        types = a[lo + REC_HEADER_SIZE:hi + REC_HEADER_SIZE]
        cand = np.nonzero((types >= SCHEMA) & (types <= COMMIT))[0].astype(np.int64) + lo
        if not cand.size:
            continue
        seq = _gather_le(a, cand + REC_HEADER_SIZE + 1, 8)
        cand = cand[(seq >= np.uint64(lo_seq)) & (seq <= np.uint64(hi_seq))]
        if not cand.size:
            continue
        length = _gather_le(a, cand, 4).astype(np.int64)
        ok = ((length >= MIN_RECORD_BODY) & (length <= MAX_RECORD_BODY)
              & (length <= n - cand - REC_HEADER_SIZE))
        for p in cand[ok]:
            if _check_frame(view, int(p), salt)[0]:
                return int(p)
    return None


def _scan_run(view: memoryview, start: int, end: int, salt: int, info: TxnInfo,
              bodies: list[memoryview], derived: tuple[str, ...],
              layouts: LayoutCache, out: SegmentScan) -> int:
    """Validate, as one run, the transactions from ``start`` that encode like the one just
    scanned (``info``, its DELTA ``bodies``): every byte :func:`scan_segment` would check,
    with numpy (:meth:`TxnLayout.decode_run`). Appends their :class:`TxnInfo` and returns
    how many; 0 if none or if anything does not check out (the per-record scan then finds
    exactly where and why)."""
    try:
        layout = layouts.get([parse_body(b).value for b in bodies], derived)
        if layout is None:
            return 0
        size = layout.nbytes
        count, _ = layout.decode_run(view, start, end, salt, info.seq + 1,
                                     (end - start) // size, arrays=False)
    except FormatError:
        return 0
    if not count:
        return 0
    stamps = layout.timestamps(view, start, count)
    out.txns.extend(TxnInfo(seq=info.seq + 1 + j, offset=start + j * size,
                            end=start + (j + 1) * size, pages=info.pages,
                            n_deltas=info.n_deltas, derived=derived, timestamp_ns=ts)
                    for j, ts in enumerate(stamps))
    return count


def scan_segment(buf: bytes | memoryview, *, expected_segment: int | None = None,
                 expected_base_seq: int | None = None) -> SegmentScan:
    """Validate one segment and find its longest valid prefix of whole transactions.

    Checks the header, the framing and payload of every record, and the transaction grammar
    (SCHEMA first; DELTA/DERIVED records and their COMMIT share the next seq; COMMIT's record
    count and transaction CRC match). Stops at the first bad record and scans ahead for valid
    data to tell corruption from a torn tail (``docs/format.md`` section 3).

    Args:
      buf: the segment's bytes.
      expected_segment: the number from the file name (checked against the header).
      expected_base_seq: the previous segment's last seq (checked against the header).

    Raises:
      FormatError: the header is valid but of an unsupported version (not corruption).
    """
    view = memoryview(buf)
    n = len(view)
    out = SegmentScan(size=n)
    if n < HEADER_SIZE:
        out.bad_offset, out.reason = 0, f"truncated header ({n} bytes)"
        return out
    try:
        header = decode_header(view[:HEADER_SIZE].tobytes())
    except UnsupportedFormatError:
        raise
    except FormatError as e:
        out.bad_offset, out.reason = 0, str(e)
        out.valid_after_bad = bool(np.frombuffer(view, np.uint8).any())
        return out
    problem = ""
    if expected_segment is not None and header.segment != expected_segment:
        problem = f"header segment {header.segment} != file number {expected_segment}"
    elif expected_base_seq is not None and header.base_seq != expected_base_seq:
        problem = f"header base_seq {header.base_seq} != previous segment end {expected_base_seq}"
    if problem:
        out.bad_offset, out.reason, out.valid_after_bad = 0, problem, True
        return out
    out.header = header
    salt = header.salt
    committed = header.base_seq
    pos = HEADER_SIZE
    txn_start = pos
    pending: list[Record] = []
    bodies: list[memoryview] = []  # of the pending DELTA records, to decode a run's template
    pending_crc = 0
    have_schema = False
    layouts = LayoutCache()

    def fail(at: int, why: str) -> SegmentScan:
        out.bad_offset, out.reason = at, why
        out.valid_after_bad = find_valid_record(view, at + 1, salt, committed) is not None
        return out

    while pos < n:
        length, why = _check_frame(view, pos, salt)
        if not length:
            return fail(pos, why)
        body_at = pos + REC_HEADER_SIZE
        body = view[body_at:body_at + length]
        try:
            rec = parse_body(body, arrays=False)
        except FormatError as e:
            return fail(pos, str(e))
        end = body_at + length
        if not have_schema:
            if rec.type != SCHEMA or rec.seq != header.base_seq:
                return fail(pos, "segment does not start with its SCHEMA record")
            out.schema, out.graph = rec.value
            have_schema = True
            out.good_end = txn_start = end
        elif rec.type == SCHEMA:
            return fail(pos, "SCHEMA record inside a segment")
        elif rec.seq != committed + 1:
            return fail(pos, f"seq {rec.seq} where {committed + 1} was expected")
        elif rec.type == COMMIT:
            n_records, txn_crc, ts = rec.value
            if n_records != len(pending) or txn_crc != pending_crc:
                return fail(pos, f"COMMIT {rec.seq} does not match its {len(pending)} records")
            pages = [p.value for p in pending if p.type == DELTA]
            derived = next((p.value for p in pending if p.type == DERIVED), ())
            info = TxnInfo(seq=rec.seq, offset=txn_start, end=end,
                           pages=tuple(dict.fromkeys(pages)), n_deltas=len(pages),
                           derived=derived, timestamp_ns=ts)
            out.txns.append(info)
            committed = rec.seq
            start, template = txn_start, bodies
            pending, bodies, pending_crc = [], [], 0
            out.good_end = txn_start = end
            if template and next_looks_alike(view, start, end, n):
                count = _scan_run(view, end, n, salt, info, template, derived, layouts, out)
                if count:
                    committed += count
                    pos = out.good_end = txn_start = out.txns[-1].end
                    continue
        else:
            if rec.type == DERIVED and any(p.type == DERIVED for p in pending):
                return fail(pos, "two DERIVED records in one transaction")
            pending.append(rec)
            if rec.type == DELTA:
                bodies.append(body)
            pending_crc = crc32c(body, pending_crc)
        pos = end
    if not have_schema:
        out.bad_offset, out.reason = HEADER_SIZE, "segment has no SCHEMA record"
    elif pending:
        out.bad_offset, out.reason = txn_start, "incomplete transaction (no COMMIT)"
    return out
