"""The original's MMSBLOG1 / MMSBSNAP formats: golden fixtures, round trips, bad input."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmsb_jax.errors import MMSBError, SeedFormatError
from mmsb_jax.store import seed

# Real files written by the original project, kept in the repository (see their README).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "seed"


def test_fixture_log_parses_to_documented_content_and_reencodes_identically():
    raw = (FIXTURES / "test.tlog").read_bytes()
    frames = seed.decode_seed_log(raw)
    assert len(frames) == 1
    f = frames[0]
    assert (f.delta_id, f.page_id, f.epoch, f.is_sparse, f.timestamp, f.source) == (
        1, 42, 1, True, 0, "test_source")
    assert f.mask.tolist() == [1] and f.payload.tolist() == [0x2A]
    assert seed.encode_seed_log(frames) == raw


def test_fixture_snapshots_parse_and_reencode_identically():
    raw = (FIXTURES / "test.chk").read_bytes()
    snap = seed.decode_seed_snapshot(raw)
    assert snap.log_offset == 66 and len(snap.pages) == 1
    p = snap.pages[0]
    assert (p.page_id, p.size, p.epoch, p.location, dict(p.metadata)) == (
        42, 4096, 1, 0, {"test": "meta"})
    assert p.data[0] == 0x2A and np.all(p.data[1:] == 0x63)
    assert seed.encode_seed_snapshot(snap) == raw
    empty = (FIXTURES / "empty.ckpt").read_bytes()
    esnap = seed.decode_seed_snapshot(empty)
    assert esnap.pages == () and esnap.log_offset == 12
    assert seed.encode_seed_snapshot(esnap) == empty
    assert isinstance(seed.read_seed_file(FIXTURES / "test.chk"), seed.SeedSnapshot)
    assert isinstance(seed.read_seed_file(FIXTURES / "test.tlog"), list)


def test_applying_the_log_gives_the_documented_page():
    frames = seed.read_seed_log(FIXTURES / "test.tlog")
    pages = seed.apply_seed_frames({}, frames)
    data, epoch = pages[42]
    assert data.tolist() == [0x2A] and epoch == 1
    dense = seed.SeedFrame(2, 42, 2, np.ones(1, np.uint8), np.array([7], np.uint8), False)
    assert seed.apply_seed_frames(pages, [dense])[42][0].tolist() == [7]


U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)


@st.composite
def frame_st(draw):
    mask = np.array(draw(st.lists(st.integers(0, 1), max_size=32)), np.uint8)
    sparse = draw(st.booleans())
    n = int(mask.sum()) if sparse else mask.size
    payload = np.frombuffer(draw(st.binary(min_size=n, max_size=n)), np.uint8).copy()
    return seed.SeedFrame(draw(U64), draw(U64), draw(U32), mask, payload, sparse, draw(U64),
                          draw(st.text(max_size=12)))


@given(st.lists(frame_st(), max_size=4))
def test_log_round_trip(frames):
    raw = seed.encode_seed_log(frames)
    assert seed.decode_seed_log(raw) == frames
    assert seed.encode_seed_log(seed.decode_seed_log(raw)) == raw


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                          st.sampled_from([0, 1, 2]),
                          st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
                          st.binary(max_size=40)), max_size=3),
       st.integers(0, 2**64 - 1))
def test_snapshot_round_trip(pages, log_offset):
    snap = seed.SeedSnapshot(tuple(seed.SeedPage(pid, ep, loc, meta,
                                                 np.frombuffer(data, np.uint8).copy())
                                   for pid, ep, loc, meta, data in pages), log_offset)
    raw = seed.encode_seed_snapshot(snap)
    back = seed.decode_seed_snapshot(raw)
    assert back == snap and seed.encode_seed_snapshot(back) == raw


def _bad_cases():
    log = (FIXTURES / "test.tlog").read_bytes()
    chk = (FIXTURES / "test.chk").read_bytes()
    bad_loc = bytearray(chk)
    bad_loc[44:48] = struct.pack("<i", 3)  # location tag of page 0
    big_mask = bytearray(log)
    big_mask[32:36] = struct.pack("<I", 2**31)  # mask_len far past the end
    return {
        "log bad magic": (seed.decode_seed_log, b"MMSBLOGX" + log[8:]),
        "log bad version": (seed.decode_seed_log, log[:8] + struct.pack("<I", 2) + log[12:]),
        "log truncated frame": (seed.decode_seed_log, log[:-3]),
        "log huge mask_len": (seed.decode_seed_log, bytes(big_mask)),
        "log short header": (seed.decode_seed_log, log[:10]),
        "snap bad magic": (seed.decode_seed_snapshot, b"XXXXSNAP" + chk[8:]),
        "snap bad version": (seed.decode_seed_snapshot, chk[:8] + struct.pack("<I", 9) + chk[12:]),
        "snap truncated": (seed.decode_seed_snapshot, chk[:-1]),
        "snap location out of range": (seed.decode_seed_snapshot, bytes(bad_loc)),
        "snap trailing bytes": (seed.decode_seed_snapshot, chk + b"\0"),
        "snap page count too high": (seed.decode_seed_snapshot,
                                     chk[:12] + struct.pack("<I", 2) + chk[16:]),
    }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_malformed_seed_files_raise_seed_format_error(case):
    decode, data = _bad_cases()[case]
    with pytest.raises(SeedFormatError):
        decode(data)


@given(st.binary(max_size=200), st.sampled_from([seed.LOG_MAGIC, seed.SNAP_MAGIC]))
def test_fuzzed_seed_input_only_raises_typed_errors(tail, magic):
    data = magic + struct.pack("<I", 1) + tail
    try:
        seed.decode_seed_log(data) if magic == seed.LOG_MAGIC else seed.decode_seed_snapshot(data)
    except MMSBError:
        pass


def test_import_seed_snapshot_and_log_into_bus_directories(tmp_path):
    import mmsb_jax as mm
    from mmsb_jax.cli import main

    assert main(["import-seed", str(FIXTURES / "test.chk"), "--out", str(tmp_path / "snap")]) == 0
    with mm.Bus.open(tmp_path / "snap") as bus:  # no schema: read from the log
        assert bus.schema.names == ("page_42",)
        data = bus.read("page_42")
        assert data.dtype == np.uint8 and data.shape == (4096,)
        assert data[0] == 0x2A and np.all(data[1:] == 0x63)
        assert int(bus.state.epochs["page_42"]) == 1
    assert main(["import-seed", str(FIXTURES / "test.tlog"), "--out", str(tmp_path / "log")]) == 0
    with mm.Bus.open(tmp_path / "log") as bus:
        assert bus.read("page_42").tolist() == [0x2A]
        assert int(bus.state.epochs["page_42"]) == 1
    # An existing bus directory is refused; a bad file writes nothing.
    assert main(["import-seed", str(FIXTURES / "test.tlog"), "--out", str(tmp_path / "log")]) == 2
    bad = tmp_path / "bad.tlog"
    bad.write_bytes(b"MMSBLOG1" + struct.pack("<I", 7))
    assert main(["import-seed", str(bad), "--out", str(tmp_path / "never")]) == 2
    assert not (tmp_path / "never").exists()
