"""The log's byte format: golden file, round trips, and every malformed field.

Regenerate the golden file only on a deliberate format change:
``python tests/store/test_format.py --write-golden``.
"""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax.errors import FormatError
from mmsb_jax.store import format as fmt
from mmsb_jax.store.replay import apply_transaction, replay
from mmsb_jax.store.tlog import TLog

GOLDEN = Path(__file__).parent / "golden" / "small.tlog"
# The State after replaying small.tlog from the initial state: every page's bytes, dtype and
# epoch, stored when the golden log was written. Replay is compared against this, not against
# another run of the same code.
GOLDEN_STATE = Path(__file__).parent / "golden" / "small.expected.npz"
SALT = 0x5EED5EED
T0 = 1_700_000_000_000_000_000

SCHEMA = mm.Schema([
    mm.PageSpec("pos", (4, 2), "float32"),
    mm.PageSpec("raw", (6,), "uint8"),
    mm.PageSpec("flags", (3,), "bool"),
    mm.PageSpec("half", (2,), "bfloat16"),
    mm.PageSpec("count", (), "int32"),
])


def golden_transactions() -> list[fmt.Transaction]:
    """The fixed commit sequence stored in ``golden/small.tlog``."""
    t1 = (mm.Delta.rows("pos", np.array([2, -1, 0], np.int32),
                        np.array([[1.5, -2.0], [9.0, 9.0], [0.25, 3.0]], np.float32)),
          mm.Delta.full("raw", np.array([1, 2, 3, 250, 0, 7], np.uint8)))
    t2 = (mm.Delta.masked("flags", np.array([True, False, True]),
                          np.array([True, True, False]), op="or"),
          mm.Delta.masked("pos", np.arange(8).reshape(4, 2) % 3 == 0,
                          np.full((4, 2), 0.5, np.float32), op="add"))
    t3 = (mm.Delta.full("half", jnp.array([2.0, -0.5], jnp.bfloat16), op="mul"),)
    t5 = (mm.Delta.full("count", np.array(5, np.int32), op="add"),
          mm.Delta.rows("raw", np.array([1, 1, 5], np.int32),
                        np.array([9, 4, 200], np.uint8), op="max").with_count(2))
    return [
        fmt.Transaction(1, t1, (), T0 + 1),
        fmt.Transaction(2, t2, (), T0 + 2),
        fmt.Transaction(3, t3, ("energy",), T0 + 3),
        fmt.Transaction(4, (), (), T0 + 4),
        fmt.Transaction(5, t5, (), T0 + 5),
    ]


def encode_golden() -> bytes:
    out = [fmt.encode_header(fmt.SegmentHeader(1, SALT, 0)),
           fmt.frame(SALT, fmt.schema_body(0, SCHEMA, {"energy": "sha256:0"}))]
    for t in golden_transactions():
        out.append(fmt.encode_transaction(SALT, t.seq, t.deltas, t.derived, t.timestamp_ns))
    return b"".join(out)


def _bits(x) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x))
    return a.reshape(-1).view(np.uint8)


def assert_same_delta(a: mm.Delta, b: mm.Delta) -> None:
    assert (a.page, a.kind, a.op, a.count) == (b.page, b.kind, b.op, b.count)
    for x, y in ((a.indices, b.indices), (a.mask, b.mask), (a.values, b.values)):
        assert (x is None) == (y is None)
        if x is not None:
            x, y = np.asarray(x), np.asarray(y)
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(_bits(x), _bits(y))


# -- golden file -------------------------------------------------------------------------------


def test_golden_encoding_is_byte_identical():
    assert GOLDEN.read_bytes() == encode_golden()


def test_golden_decodes_to_the_fixed_sequence():
    data = GOLDEN.read_bytes()
    scan = fmt.scan_segment(data, expected_segment=1, expected_base_seq=0)
    assert scan.clean and scan.good_end == len(data)
    assert scan.schema == SCHEMA and scan.graph == {"energy": "sha256:0"}
    assert [t.seq for t in scan.txns] == [1, 2, 3, 4, 5]
    assert scan.txns[2].derived == ("energy",)
    assert scan.txns[4].pages == ("count", "raw")
    header = fmt.decode_header(data[:fmt.HEADER_SIZE])
    assert header == fmt.SegmentHeader(1, SALT, 0)
    want = golden_transactions()
    got = []
    deltas: list[mm.Delta] = []
    derived: tuple[str, ...] = ()
    for _, _, rec in fmt.iter_records(data, fmt.HEADER_SIZE, len(data), SALT):
        if rec.type == fmt.DELTA:
            deltas.append(rec.value)
        elif rec.type == fmt.DERIVED:
            derived = rec.value
        elif rec.type == fmt.COMMIT:
            got.append(fmt.Transaction(rec.seq, tuple(deltas), derived, rec.value[2]))
            deltas, derived = [], ()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.seq, g.derived, g.timestamp_ns) == (w.seq, w.derived, w.timestamp_ns)
        assert len(g.deltas) == len(w.deltas)
        for a, b in zip(g.deltas, w.deltas, strict=True):
            assert_same_delta(a, b)


def test_golden_replays_like_live_commits(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    shutil.copy(GOLDEN, log_dir / "00000001.tlog")
    live = mm.init_state(SCHEMA)
    for t in golden_transactions():
        live = apply_transaction(live, t.deltas)
    with TLog.open(log_dir, readonly=True) as log:
        assert log.schema == SCHEMA and log.last_seq == 5
        replayed = replay(mm.init_state(SCHEMA), log)
    for n in SCHEMA.names:
        np.testing.assert_array_equal(_bits(replayed.pages[n]), _bits(live.pages[n]))
        assert int(replayed.epochs[n]) == int(live.epochs[n])
    assert int(replayed.epochs["raw"]) == 3  # full (1) + a rows delta standing for 2


def replay_golden(tmp_path: Path) -> mm.State:
    log_dir = tmp_path / "golden_log"
    log_dir.mkdir()
    shutil.copy(GOLDEN, log_dir / "00000001.tlog")
    with TLog.open(log_dir, readonly=True) as log:
        return replay(mm.init_state(SCHEMA), log)


def state_record(state: mm.State) -> dict[str, np.ndarray]:
    """Page bytes, dtype names and epochs as plain numpy arrays (npz-safe, bfloat16 too)."""
    out = {}
    for n in SCHEMA.names:
        out[f"bytes/{n}"] = _bits(state.pages[n]).copy()
        out[f"dtype/{n}"] = np.array(str(np.asarray(state.pages[n]).dtype))
        out[f"shape/{n}"] = np.array(np.shape(state.pages[n]), np.int64)
        out[f"epoch/{n}"] = np.array(int(state.epochs[n]), np.int64)
    return out


def test_golden_replay_matches_the_stored_state(tmp_path):
    want = np.load(GOLDEN_STATE)
    got = state_record(replay_golden(tmp_path))
    assert sorted(want.files) == sorted(got)
    for key, value in got.items():
        np.testing.assert_array_equal(want[key], value, err_msg=key)


def test_on_disk_op_and_kind_codes_are_fixed():
    """The codes are part of the format: never renumbered, never derived from tuple order."""
    assert dict(fmt.OP_CODES) == {"set": 0, "add": 1, "mul": 2, "min": 3, "max": 4, "or": 5,
                                  "and": 6}
    assert dict(fmt.KIND_CODES) == {"rows": 0, "masked": 1, "full": 2}
    assert set(fmt.OP_CODES) == set(mm.OPS) and set(fmt.KIND_CODES) == set(mm.KINDS)
    body = fmt.delta_body(7, mm.Delta.full("count", np.array(5, np.int32), op="and"))
    assert body[9:11] == bytes([fmt.KIND_CODES["full"], fmt.OP_CODES["and"]])


def test_crc32c_known_vector():
    assert fmt.crc32c(b"123456789") == 0xE3069283
    assert fmt.crc32c(b"6789", fmt.crc32c(b"12345")) == 0xE3069283
    assert fmt.crc32c(memoryview(b"123456789")) == 0xE3069283


# -- round trips -------------------------------------------------------------------------------

_DTYPES = ("float32", "int32", "uint8", "bool", "bfloat16", "float16", "int8")


@st.composite
def deltas(draw):
    dtype = draw(st.sampled_from(_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
    kind = draw(st.sampled_from(mm.KINDS))
    op = draw(st.sampled_from(mm.OPS))
    n = int(np.prod(shape))
    raw = draw(st.binary(min_size=n * np.dtype(jnp.dtype(dtype)).itemsize,
                         max_size=n * np.dtype(jnp.dtype(dtype)).itemsize))
    if dtype == "bool":
        values = (np.frombuffer(raw, np.uint8) & 1).astype(bool).reshape(shape)
    else:
        values = np.frombuffer(raw, jnp.dtype(dtype)).reshape(shape)
    count = draw(st.integers(1, 2**32 - 1))
    if kind == "rows":
        idx = np.array(draw(st.lists(st.integers(-1, 10), min_size=shape[0],
                                     max_size=shape[0])), np.int32)
        return mm.Delta(indices=idx, mask=None, values=values, page="p", kind="rows", op=op,
                        count=count)
    if kind == "masked":
        bits = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        mask = np.array(bits, bool).reshape(shape)
        return mm.Delta(indices=None, mask=mask, values=values, page="p.q/r", kind="masked",
                        op=op, count=count)
    return mm.Delta(indices=None, mask=None, values=values, page="page_" + "x" * 100,
                    kind="full", op=op, count=count)


@settings(max_examples=50, deadline=None)
@given(d=deltas(), seq=st.integers(0, 2**64 - 1))
def test_delta_record_round_trip(d, seq):
    body = fmt.delta_body(seq, d)
    rec = fmt.parse_body(body)
    assert rec.type == fmt.DELTA and rec.seq == seq
    assert_same_delta(rec.value, d)
    assert fmt.parse_body(body, arrays=False).value == d.page
    # and framed: the salted CRC checks out only with the right salt
    framed = fmt.frame(7, body)
    assert fmt._check_frame(memoryview(framed), 0, 7)[0] == len(body)
    assert fmt._check_frame(memoryview(framed), 0, 8)[0] == 0


def test_schema_and_commit_round_trip():
    rec = fmt.parse_body(fmt.schema_body(3, SCHEMA, {"a": "1"}))
    assert rec.type == fmt.SCHEMA and rec.seq == 3 and rec.value == (SCHEMA, {"a": "1"})
    rec = fmt.parse_body(fmt.commit_body(9, 2, 0xDEADBEEF, 123))
    assert rec.value == (2, 0xDEADBEEF, 123)
    assert len(fmt.commit_body(9, 2, 0, 0)) == 25
    rec = fmt.parse_body(fmt.derived_body(4, ["a", "b/c"]))
    assert rec.value == ("a", "b/c")


# -- bad input: every length field and enum ------------------------------------------------


def _delta_body(kind=0, op=0, mask_enc=0, ndim=1, count=1, page=b"p", dtype=b"int32",
                shape=(2,), payload=None, page_len=None, dtype_len=None):
    head = struct.pack("<BQ", fmt.DELTA, 1) + struct.pack("<BBBBI", kind, op, mask_enc, ndim,
                                                          count)
    head += struct.pack("<H", len(page) if page_len is None else page_len) + page
    head += struct.pack("<B", len(dtype) if dtype_len is None else dtype_len) + dtype
    head += struct.pack(f"<{len(shape)}Q", *shape)
    if payload is None:
        payload = struct.pack("<2i", 0, 1) + struct.pack("<2i", 5, 6)
    return head + payload


def test_handmade_valid_delta_body_parses():
    d = fmt.parse_body(_delta_body()).value
    assert d.kind == "rows" and d.indices.tolist() == [0, 1] and d.values.tolist() == [5, 6]


@pytest.mark.parametrize("body, match", [
    (_delta_body(kind=3), "unknown delta kind"),
    (_delta_body(op=7), "unknown delta op"),
    (_delta_body(mask_enc=1), "mask encoding"),
    (_delta_body(kind=1, mask_enc=0, payload=b"\x03" + b"\0" * 8), "mask encoding"),
    (_delta_body(ndim=33, shape=(1,) * 33), "ndim"),
    (_delta_body(count=0), "count 0"),
    (_delta_body(page=b"", page_len=0), "page name length"),
    (_delta_body(page=b"x" * 129), "page name length"),
    (_delta_body(page=b"\xff\xfe"), "not UTF-8"),
    (_delta_body(page=b"p", page_len=100), "needs 100 bytes"),
    (_delta_body(dtype=b"", dtype_len=0), "dtype name length"),
    (_delta_body(dtype=b"x" * 33), "dtype name length"),
    (_delta_body(dtype=b"nonsense"), "dtype"),
    (_delta_body(dtype=b"object"), "dtype"),
    (_delta_body(dtype=b"int32", dtype_len=30), "needs 30 bytes"),
    (_delta_body(shape=(2**40,)), "cap"),
    (_delta_body(shape=(2**39,)), "needs"),
    (_delta_body(ndim=0, shape=()), "rows delta with scalar"),
    (_delta_body(payload=b"\0" * 15), "needs 8 bytes"),
    (_delta_body(payload=b"\0" * 17), "trailing"),
    (_delta_body(dtype=b"bool", payload=b"\0" * 8 + b"\x01\x02"), "bool bytes"),
    (_delta_body(kind=1, mask_enc=1, shape=(3,), payload=b"\xf8" + b"\0" * 12), "padding"),
    (struct.pack("<BQ", 9, 1), "unknown record type"),
    (struct.pack("<BQ", fmt.SCHEMA, 0) + b"{", "bad schema"),
    (struct.pack("<BQ", fmt.SCHEMA, 0) + b'{"schema": []}', "exactly"),
    (struct.pack("<BQ", fmt.SCHEMA, 0) + b'{"schema": [], "graph": 3}', "graph"),
    (struct.pack("<BQ", fmt.SCHEMA, 0) + b'{"schema": [{"name": 1}], "graph": {}}', "bad schema"),
    (struct.pack("<BQ", fmt.SCHEMA, 0) + b"\xff", "bad schema"),
    (struct.pack("<BQIIQ", fmt.COMMIT, 1, 0, 0, 0) + b"x", "trailing"),
    (struct.pack("<BQI", fmt.COMMIT, 1, 0), "needs 16 bytes"),
    (struct.pack("<BQH", fmt.DERIVED, 1, 2) + struct.pack("<H", 1) + b"a", "needs 2 bytes"),
    (struct.pack("<BQH", fmt.DERIVED, 1, 1) + struct.pack("<H", 0), "length 0"),
    (b"\x02\x00", "needs 9 bytes"),
], ids=lambda v: "body" if isinstance(v, bytes) else v.replace(" ", "_"))
def test_malformed_bodies_raise_format_error(body, match):
    with pytest.raises(FormatError, match=match):
        fmt.parse_body(body)
    # the scan's parse (no leaves built) refuses the same bodies with the same reason
    with pytest.raises(FormatError, match=match):
        fmt.parse_body(body, arrays=False)


def test_frame_length_caps_are_checked_against_the_bytes_left():
    body = fmt.commit_body(1, 0, 0, 0)
    framed = bytearray(fmt.frame(1, body))
    view = memoryview(bytes(framed))
    assert fmt._check_frame(view, 0, 1)[0] == 25
    for length, why in ((26, "exceeds"), (2**31, "outside"), (3, "outside"), (2**32 - 1,
                                                                               "outside")):
        bad = bytearray(framed)
        bad[:4] = struct.pack("<I", length)
        assert why in fmt._check_frame(memoryview(bytes(bad)), 0, 1)[1]
    assert "truncated" in fmt._check_frame(memoryview(bytes(framed[:7])), 0, 1)[1]


def test_encoder_refuses_what_the_format_cannot_hold():
    with pytest.raises(FormatError, match="page name"):
        fmt.delta_body(1, mm.Delta.full("x" * 129, np.zeros(2, np.float32)))
    with pytest.raises(FormatError, match="count"):
        fmt.delta_body(1, mm.Delta.full("x", np.zeros(2, np.float32)).with_count(0))
    with pytest.raises(FormatError, match="outside the caps"):
        fmt.frame(1, b"short")
    with pytest.raises(FormatError, match="u16"):
        fmt.derived_body(1, ["a"] * 70000)
    with pytest.raises(FormatError, match="rows delta"):
        fmt.delta_body(1, mm.Delta(indices=np.zeros(3, np.int32), mask=None,
                                   values=np.zeros(2, np.float32), page="x", kind="rows"))
    with pytest.raises(FormatError, match="mask"):
        fmt.delta_body(1, mm.Delta(indices=None, mask=np.zeros(3, np.int32),
                                   values=np.zeros(3, np.float32), page="x", kind="masked"))


def test_record_cap_on_huge_delta(monkeypatch):
    monkeypatch.setattr(fmt, "MAX_RECORD_BODY", 1000)
    with pytest.raises(FormatError, match="record cap"):
        fmt.delta_body(1, mm.Delta.full("x", np.zeros(1000, np.uint8)))


def test_header_checks():
    good = fmt.encode_header(fmt.SegmentHeader(3, 99, 41))
    assert len(good) == fmt.HEADER_SIZE
    assert fmt.decode_header(good) == fmt.SegmentHeader(3, 99, 41)
    with pytest.raises(FormatError, match="truncated"):
        fmt.decode_header(good[:39])
    with pytest.raises(FormatError, match="magic"):
        fmt.decode_header(b"X" + good[1:])
    flipped = bytearray(good)
    flipped[20] ^= 1
    with pytest.raises(FormatError, match="CRC"):
        fmt.decode_header(bytes(flipped))

    def resealed(**fields):
        vals = dict(magic=fmt.MAGIC, version=1, size=40, flags=0, segment=1, salt=0, base=0,
                    reserved=0)
        vals.update(fields)
        head = fmt._HEADER.pack(*vals.values())
        return head + struct.pack("<I", fmt.crc32c(head))

    with pytest.raises(fmt.UnsupportedFormatError, match="version 2"):
        fmt.decode_header(resealed(version=2))
    with pytest.raises(fmt.UnsupportedFormatError):
        fmt.decode_header(resealed(flags=1))
    with pytest.raises(fmt.UnsupportedFormatError):
        fmt.decode_header(resealed(size=48))
    with pytest.raises(FormatError, match="segment number 0"):
        fmt.decode_header(resealed(segment=0))


def test_scan_segment_grammar_errors():
    schema_rec = fmt.frame(SALT, fmt.schema_body(0, SCHEMA))
    head = fmt.encode_header(fmt.SegmentHeader(1, SALT, 0))
    txn = fmt.encode_transaction(SALT, 1, [mm.Delta.full("count", np.array(1, np.int32))])

    def scan(*parts):
        return fmt.scan_segment(b"".join(parts))

    assert scan(head, schema_rec, txn).clean
    s = scan(head, txn)
    assert s.bad_offset == 40 and "SCHEMA" in s.reason
    s = scan(head, schema_rec, schema_rec, txn)
    assert "inside" in s.reason and s.valid_after_bad
    s = scan(head, schema_rec, fmt.encode_transaction(SALT, 2, []))
    assert "seq 2" in s.reason
    # a COMMIT whose record count or transaction CRC does not match its records
    d = fmt.frame(SALT, fmt.delta_body(1, mm.Delta.full("count", np.array(1, np.int32))))
    s = scan(head, schema_rec, d, fmt.frame(SALT, fmt.commit_body(1, 2, 0, 0)))
    assert "does not match" in s.reason
    s = scan(head, schema_rec, d, fmt.frame(SALT, fmt.commit_body(1, 1, 12345, 0)))
    assert "does not match" in s.reason
    two_derived = [fmt.frame(SALT, fmt.derived_body(1, ["a"])) for _ in range(2)]
    s = scan(head, schema_rec, *two_derived)
    assert "two DERIVED" in s.reason
    s = scan(head, schema_rec, d)
    assert s.bad_offset == len(head) + len(schema_rec) and "incomplete" in s.reason
    assert not s.valid_after_bad and s.good_end == len(head) + len(schema_rec)
    s = fmt.scan_segment(head + schema_rec, expected_segment=2)
    assert "file number" in s.reason and s.valid_after_bad
    s = fmt.scan_segment(head + schema_rec, expected_base_seq=5)
    assert "base_seq" in s.reason
    s = fmt.scan_segment(b"\0" * 100)
    assert s.bad_offset == 0 and not s.valid_after_bad  # zeros: a crash artifact
    s = fmt.scan_segment(b"\1" * 100)
    assert s.bad_offset == 0 and s.valid_after_bad


def test_find_valid_record_needs_the_right_salt_and_plausible_seq():
    rec = fmt.frame(5, fmt.commit_body(3, 0, 0, 0))
    junk = bytes(range(200))
    buf = junk + rec
    assert fmt.find_valid_record(buf, 0, 5, 2) == len(junk)
    assert fmt.find_valid_record(buf, 0, 6, 2) is None  # another segment's salt
    assert fmt.find_valid_record(buf, 0, 5, 10) is None  # seq below the committed one
    assert fmt.find_valid_record(buf, len(junk) + 1, 5, 2) is None


if __name__ == "__main__":
    if "--write-golden" in sys.argv:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(encode_golden())
        print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            np.savez(GOLDEN_STATE, **state_record(replay_golden(Path(tmp))))
        print(f"wrote {GOLDEN_STATE}")


# -- decoding runs of one structure (replay's fast path) ---------------------------------------


def _variant(d: mm.Delta, shift: int) -> mm.Delta:
    """``d`` with its leaves rolled: the same structure, other bytes."""
    def roll(x):
        return None if x is None else np.roll(x.reshape(-1), shift).reshape(x.shape)

    return mm.Delta(indices=roll(d.indices), mask=roll(d.mask), values=roll(d.values),
                    page=d.page, kind=d.kind, op=d.op, count=d.count)


def _same_bytes(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@settings(max_examples=40, deadline=None)
@given(d=deltas(), n=st.integers(2, 6), seq=st.integers(1, 2**40), derived=st.booleans())
def test_decode_run_inverts_encode_run(d, n, seq, derived):
    from mmsb_jax.core.transaction import stack_transactions

    txns = [[_variant(d, i)] for i in range(n)]
    names = ("a", "b/c") if derived else ()
    layout = fmt.TxnLayout(txns[0], names)
    stacked = stack_transactions(txns)
    blob = layout.encode_run(77, seq, stacked, 5)
    count, got = layout.decode_run(blob, 0, len(blob), 77, seq, 100)
    assert count == n
    for a, b in zip(got, stacked, strict=True):
        assert (a.page, a.kind, a.op, a.count) == (b.page, b.kind, b.op, b.count)
        for field in ("indices", "mask", "values"):
            assert _same_bytes(getattr(a, field), getattr(b, field))
    # capped, wrong first seq, other salt: fewer or none
    assert layout.decode_run(blob, 0, len(blob), 77, seq, 2)[0] == 2
    assert layout.decode_run(blob, 0, len(blob), 77, seq + 1, 100)[0] == 0
    with pytest.raises(FormatError, match="CRC"):
        layout.decode_run(blob, 0, len(blob), 78, seq, 100)


def _as_leaves(d: mm.Delta, how: str) -> mm.Delta:
    """``d`` with the same leaf values held another way: big-endian, strided, as JAX arrays."""
    def conv(x):
        if x is None or x.dtype == np.bool_:
            return x
        if how == "big_endian":
            return x.astype(x.dtype.newbyteorder(">"))
        if how == "strided":
            return np.repeat(x, 2, axis=0)[::2] if x.ndim else x
        return jnp.asarray(x) if x.dtype.itemsize <= 4 else x

    return mm.Delta._new(None if d.indices is None else conv(d.indices), d.mask, conv(d.values),
                         d.page, d.kind, d.op, d.count, d.unique)


@settings(max_examples=60, deadline=None)
@given(d=deltas(), seq=st.integers(1, 2**40), derived=st.booleans(),
       how=st.sampled_from(["same", "big_endian", "strided", "jax"]))
def test_layout_encode_equals_encode_transaction(d, seq, derived, how):
    """A cached layout writes the bytes of the long path for any holder of the leaf values
    (its one-delta fast path joins native buffers; other leaves take the general path)."""
    names = ("a",) if derived else ()
    layout = fmt.TxnLayout([d], names)
    assert (layout._one is not None) == (not derived and d.kind != "masked")  # the fast path
    other = _as_leaves(d, how)
    want = fmt.encode_transaction(7, seq, [d], names, 11)
    assert layout.encode(7, seq, [d], 11) == want
    assert layout.encode(7, seq, [other], 11) == want
    assert fmt.encode_transaction(7, seq, [other], names, 11) == want


def _full(op: str, v: float) -> list[mm.Delta]:
    return [mm.Delta.full("w", np.full(4, v, np.float32), op=op)]


def test_decode_run_stops_at_another_structure_of_the_same_size():
    # "add" and "mul" transactions encode to the same number of bytes: only the header differs
    txns = [_full("add", 1), _full("add", 2), _full("add", 3), _full("mul", 4), _full("add", 5)]
    layout = fmt.TxnLayout(txns[0])
    blob = b"".join(layout.encode(9, 1 + i, t, 0) if t[0].op == "add"
                    else fmt.TxnLayout(t).encode(9, 1 + i, t, 0) for i, t in enumerate(txns))
    assert len(blob) == 5 * layout.nbytes
    count, got = layout.decode_run(blob, 0, len(blob), 9, 1, 100)
    assert count == 3 and got[0].values[:, 0].tolist() == [1, 2, 3]
    # from the "mul" one, a layout of "add" refuses at once
    assert layout.decode_run(blob, 3 * layout.nbytes, len(blob), 9, 4, 100)[0] == 0
    # a gap in the seqs ends the run
    gap = layout.encode(9, 1, txns[0], 0) + layout.encode(9, 2, txns[1], 0) + layout.encode(
        9, 4, txns[2], 0)
    assert layout.decode_run(gap, 0, len(gap), 9, 1, 100)[0] == 2


def test_decode_run_refuses_a_changed_leaf_byte():
    txns = [_full("add", i) for i in range(4)]
    layout = fmt.TxnLayout(txns[0])
    blob = bytearray(b"".join(layout.encode(9, 1 + i, t, 0) for i, t in enumerate(txns)))
    blob[2 * layout.nbytes + fmt.REC_HEADER_SIZE + 40] ^= 1  # a value byte of seq 3
    with pytest.raises(FormatError, match="CRC mismatch in transaction 3"):
        layout.decode_run(bytes(blob), 0, len(blob), 9, 1, 100)


def _run_segment(tmp_path, n: int = 30):
    """A segment of ``n`` transactions: runs of one structure, one other in the middle."""
    rng = np.random.default_rng(8)
    schema = mm.Schema([mm.PageSpec("w", (4,), "float32"), mm.PageSpec("m", (5,), "bool")])
    with TLog.open(tmp_path / "log", schema, sync="never") as log:
        for s in range(1, n + 1):
            ds = [mm.Delta.full("w", rng.normal(size=4).astype(np.float32), op="add"),
                  mm.Delta.masked("m", rng.random(5) < 0.5, rng.random(5) < 0.5, "or")]
            log.append(s, ds[:1] if s == 12 else ds, timestamp_ns=1000 + s)
        path = log.segments[0]
    return path


def test_scan_validates_runs_like_single_records(tmp_path):
    path = _run_segment(tmp_path)
    data = path.read_bytes()
    scan = fmt.scan_segment(data)
    assert scan.clean and [t.seq for t in scan.txns] == list(range(1, 31))
    assert [t.timestamp_ns for t in scan.txns] == [1000 + s for s in range(1, 31)]
    assert all(a.end == b.offset for a, b in zip(scan.txns, scan.txns[1:], strict=False))
    assert scan.txns[-1].end == scan.good_end == len(data)
    assert scan.txns[11].pages == ("w",) and scan.txns[20].pages == ("w", "m")
    # a changed value byte inside the run: the scan stops exactly at that record
    t = scan.txns[19]  # seq 20, well inside the second run
    bad = bytearray(data)
    bad[t.offset + fmt.REC_HEADER_SIZE + 40] ^= 1  # in its first record's values
    cut = fmt.scan_segment(bytes(bad))
    assert cut.bad_offset == t.offset and "CRC" in cut.reason
    assert [x.seq for x in cut.txns] == list(range(1, 20)) and cut.good_end == t.offset
    assert cut.valid_after_bad  # corruption, not a torn tail
    # a torn tail in the middle of the run's last transaction
    torn = fmt.scan_segment(data[:scan.txns[-1].offset + 30])
    assert [x.seq for x in torn.txns] == list(range(1, 30)) and not torn.valid_after_bad
    # a mask byte with padding bits set (CRC made to match): refused as the single scan does
    m_at = t.offset  # the masked record follows the full one in each transaction
    length = int.from_bytes(data[m_at:m_at + 4], "little")
    m_at += fmt.REC_HEADER_SIZE + length
    m_len = int.from_bytes(data[m_at:m_at + 4], "little")
    body = bytearray(data[m_at + 8:m_at + 8 + m_len])
    head = len(body) - 1 - 5  # mask: 1 byte of 5 bits, then 5 bool values
    body[head] |= 0x80
    salt = fmt.decode_header(data[:fmt.HEADER_SIZE]).salt
    patched = bytearray(data)
    patched[m_at:m_at + 8 + m_len] = fmt.frame(salt, bytes(body))
    cut = fmt.scan_segment(bytes(patched))
    assert cut.bad_offset == m_at and "padding" in cut.reason


@pytest.mark.parametrize("period, calls", [(3, 0), (5, 0), (None, 1)])
def test_scan_decodes_runs_only_when_enough_follow(tmp_path, monkeypatch, period, calls):
    """Short runs (A A B A A B ...) stay on the per-record path, where they cost less; one long
    run is decoded once."""
    schema = mm.Schema([mm.PageSpec("w", (4,), "float32")])
    with TLog.open(tmp_path / "log", schema, sync="never") as log:
        for s in range(1, 101):
            op = "mul" if period and s % period == 0 else "add"
            log.append(s, [mm.Delta.full("w", np.full(4, s, np.float32), op=op)])
        data = log.segments[0].read_bytes()
    seen = []
    real = fmt.TxnLayout.decode_run
    monkeypatch.setattr(fmt.TxnLayout, "decode_run",
                        lambda self, *a, **k: seen.append(1) or real(self, *a, **k))
    scan = fmt.scan_segment(data)
    assert scan.clean and [t.seq for t in scan.txns] == list(range(1, 101))
    assert len(seen) == calls
