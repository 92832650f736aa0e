"""The bad-input matrix: every public function taking user data x each kind of bad input.

One parametrised test. Each case names the function, the kind of bad input (wrong dtype, wrong
shape, unknown page, out-of-range index, NaN/inf where not allowed, empty, huge), the typed
``mmsb_jax.errors`` exception expected, and the state that must be left unchanged: the input
State's buffers (still readable and equal: nothing donated or half-applied), the Bus's seq, log
and pages, the compat store's page bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax import compat, semiring
from mmsb_jax.errors import (
    DTypeError,
    IndexOutOfRangeError,
    MaskError,
    MMSBError,
    OpError,
    SchemaError,
    SeedFormatError,
    ShapeError,
    UnknownPageError,
    UnknownSeqError,
)
from mmsb_jax.reasoning import solve_sudoku
from mmsb_jax.runtime import Bus
from mmsb_jax.store import TLog, seed

SCHEMA = mm.Schema([mm.PageSpec("x", (8,), "int32"), mm.PageSpec("f", (4, 3), "float32"),
                    mm.PageSpec("b", (5,), "bool")])
KINDS = ("dtype", "shape", "unknown_page", "index", "nonfinite", "empty", "huge")


@dataclass
class World:
    """Everything a case may touch, plus a fingerprint of it to prove nothing changed."""

    state: mm.State
    bus: Bus
    compat_store: compat.MMSBState
    compat_page: compat.CompatPage
    log_dir: Path

    def fingerprint(self) -> tuple:
        pages = tuple(np.asarray(self.state.pages[n]).tobytes() for n in SCHEMA.names)
        epochs = tuple(int(self.state.epochs[n]) for n in SCHEMA.names)
        bus = (self.bus.seq, self.bus.log.last_seq,
               tuple(self.bus.read(n).tobytes() for n in SCHEMA.names))
        page = compat.query_page(self.compat_store, self.compat_page).tobytes()
        logsize = sum(p.stat().st_size for p in self.log_dir.iterdir())
        return pages, epochs, bus, page, logsize


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(0)
    state = mm.apply(mm.init_state(SCHEMA),
                     mm.Delta.full("f", rng.random((4, 3), dtype=np.float32)))
    bus = Bus.open(tmp / "bus", SCHEMA, sync="always")
    bus.commit(mm.Delta.rows("x", np.array([1]), np.array([5], np.int32)))
    store = compat.mmsb_start()
    page = compat.create_page(store, size=16)
    compat.update_page(store, page, np.arange(16, dtype=np.uint8))
    log_dir = tmp / "log"
    with TLog.open(log_dir, SCHEMA, sync="never") as log:
        log.append(1, [mm.Delta.rows("x", np.array([0]), np.array([1], np.int32))])
    w = World(state, bus, store, page, log_dir)
    yield w
    bus.close()
    compat.mmsb_stop(store)


def _rows(page="x", idx=(1,), vals=None, op="set"):
    vals = np.array([7], np.int32) if vals is None else vals
    return mm.Delta.rows(page, np.asarray(idx), vals, op=op)


F32_NAN = np.full((4, 3), np.nan, np.float32)
GRID = np.zeros((9, 9), np.int32)

#: (function, kind, expected error, call(world)).
CASES: list[tuple[str, str, type[MMSBError], Callable[[World], object]]] = [
    # -- mm.apply ---------------------------------------------------------------------------
    ("apply", "dtype", DTypeError,
     lambda w: mm.apply(w.state, _rows(vals=np.array([1.5], np.float32)))),
    ("apply", "shape", ShapeError,
     lambda w: mm.apply(w.state, mm.Delta.full("f", np.zeros((3, 4), np.float32)))),
    ("apply", "unknown_page", UnknownPageError, lambda w: mm.apply(w.state, _rows(page="nope"))),
    ("apply", "index", IndexOutOfRangeError, lambda w: mm.apply(w.state, _rows(idx=(8,)))),
    ("apply", "index", IndexOutOfRangeError, lambda w: mm.apply(w.state, _rows(idx=(-2,)))),
    ("apply", "huge", IndexOutOfRangeError, lambda w: mm.apply(w.state, _rows(idx=(2**31 - 1,)))),
    ("apply", "dtype", OpError,
     lambda w: mm.apply(w.state, mm.Delta.full("f", F32_NAN, op="or"))),
    ("apply", "shape", MaskError,
     lambda w: mm.apply(w.state, mm.Delta.masked("f", np.ones((4, 4), bool),
                                                 np.zeros((4, 4), np.float32)))),
    # -- mm.apply_batch ---------------------------------------------------------------------
    ("apply_batch", "unknown_page", UnknownPageError,
     lambda w: mm.apply_batch(w.state, [_rows(), _rows(page="nope")])),
    ("apply_batch", "index", IndexOutOfRangeError,
     lambda w: mm.apply_batch(w.state, [_rows(), _rows(idx=(9,))])),
    ("apply_batch", "dtype", DTypeError,
     lambda w: mm.apply_batch(w.state, [_rows(), _rows(vals=np.array([True]))])),
    # -- Delta constructors -----------------------------------------------------------------
    ("Delta.rows", "dtype", DTypeError, lambda w: _rows(idx=np.array([1.0]))),
    ("Delta.rows", "shape", ShapeError, lambda w: _rows(idx=np.array([[1]]))),
    ("Delta.rows", "shape", ShapeError, lambda w: _rows(idx=(1, 2))),
    ("Delta.rows", "empty", ShapeError,
     lambda w: mm.Delta.rows("x", np.array([1]), np.zeros((0,), np.int32))),
    ("Delta.rows", "dtype", OpError, lambda w: _rows(op="xor")),
    ("Delta.masked", "dtype", MaskError,
     lambda w: mm.Delta.masked("f", np.ones((4, 3), np.int32), F32_NAN)),
    ("Delta.masked", "shape", ShapeError,
     lambda w: mm.Delta.masked("f", np.ones((4, 3), bool), np.zeros((3,), np.float32))),
    ("Delta.full", "dtype", OpError, lambda w: mm.Delta.full("f", F32_NAN, op="")),
    # -- mm.compose -------------------------------------------------------------------------
    ("compose", "unknown_page", MMSBError,
     lambda w: mm.compose(_rows(), mm.Delta.full("f", F32_NAN))),
    ("compose", "dtype", MMSBError,
     lambda w: mm.compose(_rows(), _rows(vals=np.array([1.0], np.float32)))),
    # -- init_state / Schema / PageSpec -----------------------------------------------------
    ("PageSpec", "shape", SchemaError, lambda w: mm.PageSpec("p", (-1, 2), "float32")),
    ("PageSpec", "dtype", SchemaError, lambda w: mm.PageSpec("p", (2,), "float128x")),
    ("PageSpec", "empty", SchemaError, lambda w: mm.PageSpec("", (2,), "float32")),
    ("PageSpec", "shape", SchemaError, lambda w: mm.PageSpec("p", None, "float32")),
    ("Schema", "unknown_page", SchemaError,
     lambda w: mm.Schema([mm.PageSpec("p", (2,), "int32"), mm.PageSpec("p", (3,), "int32")])),
    ("Schema.from_json", "dtype", SchemaError, lambda w: mm.Schema.from_json("not a list")),
    ("Schema.from_json", "empty", SchemaError, lambda w: mm.Schema.from_json([{}])),
    ("init_state", "dtype", MMSBError, lambda w: mm.init_state("not a schema")),
    # -- Bus --------------------------------------------------------------------------------
    ("Bus.commit", "dtype", DTypeError,
     lambda w: w.bus.commit(_rows(vals=np.array([1.5], np.float32)))),
    ("Bus.commit", "shape", ShapeError,
     lambda w: w.bus.commit(mm.Delta.full("f", np.zeros((12,), np.float32)))),
    ("Bus.commit", "unknown_page", UnknownPageError, lambda w: w.bus.commit(_rows(page="q"))),
    ("Bus.commit", "index", IndexOutOfRangeError,
     lambda w: w.bus.commit([_rows(), _rows(idx=(100,))])),
    ("Bus.commit", "huge", IndexOutOfRangeError, lambda w: w.bus.commit(_rows(idx=(2**31 - 1,)))),
    ("Bus.commit", "nonfinite", MMSBError,
     lambda w: w.bus.commit(mm.Delta.rows("x", np.array([np.nan]), np.array([1], np.int32)))),
    ("Bus.read", "unknown_page", UnknownPageError, lambda w: w.bus.read("nope")),
    ("Bus.at", "index", UnknownSeqError, lambda w: w.bus.at(-1)),
    ("Bus.at", "huge", UnknownSeqError, lambda w: w.bus.at(10**18)),
    ("Bus.at", "dtype", UnknownSeqError, lambda w: w.bus.at(1.5)),
    ("Bus.at", "nonfinite", UnknownSeqError, lambda w: w.bus.at(float("nan"))),
    ("Bus.subscribe", "unknown_page", UnknownPageError,
     lambda w: w.bus.subscribe(("nope",), lambda info, state: None)),
    ("Bus.subscribe", "dtype", MMSBError, lambda w: w.bus.subscribe(("x",), "not callable")),
    # -- semiring ---------------------------------------------------------------------------
    ("semiring.matmul", "shape", ShapeError,
     lambda w: semiring.matmul(semiring.TROPICAL, np.zeros((2, 3), np.float32),
                               np.zeros((2, 3), np.float32))),
    ("semiring.matmul", "dtype", MMSBError,
     lambda w: semiring.matmul(semiring.BOOLEAN, np.zeros((2, 2), np.complex64),
                               np.zeros((2, 2), np.complex64))),
    ("semiring.matmul", "dtype", MMSBError,
     lambda w: semiring.matmul("tropical-ish", np.zeros((2, 2)), np.zeros((2, 2)))),
    ("semiring.spmv", "index", IndexOutOfRangeError,
     lambda w: semiring.spmv(semiring.TROPICAL, np.array([0, 5]), np.array([1, 0]),
                             np.ones(2, np.float32), np.zeros(3, np.float32), 3)),
    ("semiring.spmv", "shape", ShapeError,
     lambda w: semiring.spmv(semiring.TROPICAL, np.array([0, 1]), np.array([1]),
                             np.ones(2, np.float32), np.zeros(3, np.float32), 3)),
    ("semiring.spmv", "huge", MMSBError,
     lambda w: semiring.spmv(semiring.REAL, np.array([0]), np.array([0]),
                             np.ones(1, np.float32), np.zeros(1, np.float32), -1)),
    ("semiring.closure", "shape", ShapeError,
     lambda w: semiring.closure(semiring.TROPICAL, np.zeros((2, 3), np.float32))),
    ("semiring.closure", "empty", MMSBError,
     lambda w: semiring.closure(semiring.TROPICAL, np.zeros((0,), np.float32))),
    # -- compat -----------------------------------------------------------------------------
    ("compat.update_page", "shape", ShapeError,
     lambda w: compat.update_page(w.compat_store, w.compat_page, np.zeros(15, np.uint8))),
    ("compat.update_page", "dtype", DTypeError,
     lambda w: compat.update_page(w.compat_store, w.compat_page, np.full(16, 0.5))),
    ("compat.update_page", "huge", DTypeError,
     lambda w: compat.update_page(w.compat_store, w.compat_page, np.full(16, 300))),
    ("compat.update_page", "unknown_page", UnknownPageError,
     lambda w: compat.update_page(w.compat_store, 999, np.zeros(16, np.uint8))),
    ("compat.update_page", "empty", ShapeError,
     lambda w: compat.update_page(w.compat_store, w.compat_page, b"")),
    ("compat.create_page", "empty", ShapeError,
     lambda w: compat.create_page(w.compat_store, size=0)),
    ("compat.query_page", "unknown_page", UnknownPageError,
     lambda w: compat.query_page(w.compat_store, 12345)),
    # -- seed decoders and the log reader ---------------------------------------------------
    ("seed.decode_seed_log", "empty", SeedFormatError, lambda w: seed.decode_seed_log(b"")),
    ("seed.decode_seed_log", "huge", SeedFormatError,
     lambda w: seed.decode_seed_log(seed.LOG_MAGIC + b"\x01\x00\x00\x00" + b"\xff" * 64)),
    ("seed.decode_seed_snapshot", "empty", SeedFormatError,
     lambda w: seed.decode_seed_snapshot(b"")),
    ("seed.decode_seed_snapshot", "huge", SeedFormatError,
     lambda w: seed.decode_seed_snapshot(seed.SNAP_MAGIC + b"\x01\x00\x00\x00"
                                         + b"\xff" * 12)),
    ("seed.read_seed_file", "dtype", SeedFormatError,
     lambda w: seed.read_seed_file(w.log_dir / "00000001.tlog")),
    ("TLog.transactions", "index", UnknownSeqError, lambda w: _tlog_read(w.log_dir, -5, None)),
    ("TLog.open", "shape", MMSBError, lambda w: TLog.open(w.log_dir / "00000001.tlog")),
    ("TLog.open", "dtype", MMSBError, lambda w: TLog.open(w.log_dir, sync="sometimes")),
    ("TLog.open", "unknown_page", MMSBError,
     lambda w: TLog.open(w.log_dir, mm.Schema([mm.PageSpec("y", (1,), "int8")]))),
    # -- reasoning --------------------------------------------------------------------------
    ("solve_sudoku", "shape", ShapeError, lambda w: solve_sudoku(np.zeros((9, 8), np.int32))),
    ("solve_sudoku", "index", MMSBError,
     lambda w: solve_sudoku(np.where(np.eye(9, dtype=bool), 10, 0))),
    ("solve_sudoku", "nonfinite", MMSBError,
     lambda w: solve_sudoku(np.where(np.eye(9, dtype=bool), np.nan, 0.0))),
    ("solve_sudoku", "empty", ShapeError, lambda w: solve_sudoku(np.zeros((0, 0), np.int32))),
]


def _tlog_read(path: Path, after: int, to: int | None) -> list:
    with TLog.open(path, readonly=True) as log:
        return list(log.transactions(after, to))


def test_matrix_covers_every_kind():
    assert {kind for _, kind, _, _ in CASES} == set(KINDS)


@pytest.mark.parametrize(("fn", "kind", "error", "call"), CASES,
                         ids=[f"{fn}-{kind}-{i}" for i, (fn, kind, _, _) in enumerate(CASES)])
def test_bad_input_raises_typed_error_and_changes_nothing(world, fn, kind, error, call):
    before = world.fingerprint()
    with pytest.raises(error):
        call(world)
    assert world.fingerprint() == before
