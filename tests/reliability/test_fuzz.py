"""Fuzzing the readers of untrusted bytes: the log, the seed formats, the checkpoint manifest.

Every reader must, on any input: return or raise an ``MMSBError`` subclass (never
``IndexError``, ``struct.error``, ``UnicodeDecodeError``, ``MemoryError``...), finish promptly
(no hang), and allocate no more than a small constant plus a few times the input's size
(length fields are capped and checked against the bytes that remain, so a forged length cannot
make a reader allocate gigabytes). Inputs are valid files mutated by bit flips, byte and u32
overwrites with interesting values, truncation, insertion, duplication and splicing; hypothesis
drives structured mutations, and a seeded mutation loop provides the bulk counts (2k inputs in
the default run, 100k per reader in the slow suite).
"""

from __future__ import annotations

import json
import random
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax.errors import LogCorruptError, MMSBError
from mmsb_jax.store import CheckpointStore, TLog
from mmsb_jax.store import format as fmt
from mmsb_jax.store import seed as seed_fmt
from mmsb_jax.store.tlog import segment_paths

#: Allowed peak allocation while reading ``n`` bytes: this constant plus ``ALLOC_FACTOR * n``.
ALLOC_SLACK = 512 << 10
ALLOC_FACTOR = 8
#: No single input may take longer than this (a hang or a quadratic blow-up).
TIME_LIMIT_S = 5.0

SCHEMA = mm.Schema([mm.PageSpec("x", (16,), "int32"), mm.PageSpec("b", (8, 8), "bool"),
                    mm.PageSpec("f", (4, 3), "float32")])
INTERESTING_U32 = (0, 1, 8, 9, 40, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                   1 << 30, (1 << 30) + 1)


def _valid_log_segment(tmp: Path) -> bytes:
    d = tmp / "seedlog"
    with TLog.open(d, SCHEMA, sync="never") as log:
        for seq in range(1, 6):
            log.append(seq, [
                mm.Delta.rows("x", np.array([seq, -1], np.int32), np.array([seq, 0], np.int32),
                              op="add"),
                mm.Delta.masked("b", np.eye(8, dtype=bool), np.ones((8, 8), bool), op="or"),
                mm.Delta.full("f", np.full((4, 3), seq, np.float32)),
            ], derived=("x",) if seq % 2 else ())
    return segment_paths(d)[0].read_bytes()


def _valid_seed_log() -> bytes:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(4):
        mask = (rng.random(32) < 0.3).astype(np.uint8)
        sparse = bool(i % 2)
        payload = (rng.integers(0, 256, int(mask.sum()) if sparse else 32).astype(np.uint8))
        frames.append(seed_fmt.SeedFrame(i, i % 2, i + 1, mask, payload, sparse, 10 * i,
                                         "fuzz"))
    return seed_fmt.encode_seed_log(frames)


def _valid_seed_snapshot() -> bytes:
    pages = tuple(seed_fmt.SeedPage(i, i + 2, i % 3, {"k": f"v{i}", "name": "p"},
                                    np.arange(24 + i, dtype=np.uint8)) for i in range(3))
    return seed_fmt.encode_seed_snapshot(seed_fmt.SeedSnapshot(pages, 1234))


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One to four random mutations of ``data``."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        n = len(b)
        if op == 0 and n:  # bit flip
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # random byte
            b[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n >= 4:  # interesting u32 (length fields, counts)
            i = rng.randrange(n - 3)
            b[i:i + 4] = struct.pack("<I", rng.choice(INTERESTING_U32))
        elif op == 3:  # truncate
            del b[rng.randint(0, n):]
        elif op == 4:  # insert random bytes
            i = rng.randint(0, n)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 5 and n:  # duplicate a chunk
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 64))
            b[j:j] = b[i:j]
        elif op == 6 and n:  # delete a chunk
            i = rng.randrange(n)
            del b[i:i + rng.randint(1, 32)]
        elif op == 7 and corpus:  # splice with another input
            other = rng.choice(corpus)
            i, j = rng.randint(0, n), rng.randint(0, len(other))
            b = b[:i] + other[j:]
    return bytes(b)


def _read_log_bytes(data: bytes) -> None:
    """Scan a segment, read back its valid prefix, and reject it if it is damaged."""
    scan = fmt.scan_segment(data)
    if scan.header is not None and scan.good_end:
        for _ in fmt.iter_records(data, fmt.HEADER_SIZE, scan.good_end, scan.header.salt):
            pass
    if not scan.clean:
        raise LogCorruptError(scan.bad_offset, "<fuzz>", scan.reason)


READERS: dict[str, Callable[[bytes], object]] = {
    "tlog": _read_log_bytes,
    "seed_log": seed_fmt.decode_seed_log,
    "seed_snapshot": seed_fmt.decode_seed_snapshot,
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, bytes]:
    return {"tlog": _valid_log_segment(tmp_path_factory.mktemp("fuzz")),
            "seed_log": _valid_seed_log(), "seed_snapshot": _valid_seed_snapshot()}


def check_one(reader: Callable[[bytes], object], data: bytes) -> str:
    """Run ``reader`` on ``data`` under the rules; returns ``"ok"`` or ``"rejected"``."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    try:
        reader(data)
        outcome = "ok"
    except MMSBError:
        outcome = "rejected"
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.1f}s on {len(data)} bytes"
    assert peak <= ALLOC_SLACK + ALLOC_FACTOR * len(data), (peak, len(data))
    return outcome


def fuzz_reader(name: str, seed_input: bytes, n: int, seed: int) -> dict[str, int]:
    """``n`` mutated inputs through reader ``name``; returns outcome counts."""
    rng = random.Random(seed)
    reader = READERS[name]
    corpus = [seed_input]
    counts = {"ok": 0, "rejected": 0}
    tracemalloc.start()
    try:
        for _ in range(n):
            data = mutate(rng, rng.choice(corpus), corpus)
            try:
                counts[check_one(reader, data)] += 1
            except BaseException:
                raise AssertionError(f"{name}: failed on input {data.hex()}") from None
            if len(corpus) < 64 and rng.random() < 0.05:
                corpus.append(data)  # mutants of mutants reach deeper states
    finally:
        tracemalloc.stop()
    return counts


def test_valid_inputs_read_back(corpora):
    for name, data in corpora.items():
        tracemalloc.start()
        try:
            assert check_one(READERS[name], data) == "ok"
        finally:
            tracemalloc.stop()


@pytest.mark.parametrize("name", sorted(READERS))
def test_mutation_fuzz_default(corpora, name):
    counts = fuzz_reader(name, corpora[name], n=700, seed=1)
    assert counts["rejected"] > 0 and sum(counts.values()) == 700


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(READERS))
def test_mutation_fuzz_100k(corpora, name):
    counts = fuzz_reader(name, corpora[name], n=100_000, seed=2)
    print(f"\nRELIABILITY fuzz {name} {counts}")
    assert sum(counts.values()) == 100_000


@settings(max_examples=60, deadline=None)
@given(which=st.sampled_from(sorted(READERS)), data=st.data())
def test_hypothesis_structured_mutations(corpora, which, data):
    base = bytearray(corpora[which])
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(base) - 1),
                                         st.sampled_from(INTERESTING_U32)), max_size=4))
    for pos, value in edits:
        base[pos:pos + 4] = struct.pack("<I", value)[: max(0, len(base) - pos)]
    cut = data.draw(st.integers(0, len(base)))
    tracemalloc.start()
    try:
        check_one(READERS[which], bytes(base[:cut]))
    finally:
        tracemalloc.stop()


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=512))
def test_hypothesis_raw_bytes(raw):
    tracemalloc.start()
    try:
        for reader in READERS.values():
            check_one(reader, raw)
            check_one(reader, fmt.MAGIC + raw)
            check_one(reader, seed_fmt.LOG_MAGIC + raw)
            check_one(reader, seed_fmt.SNAP_MAGIC + raw)
    finally:
        tracemalloc.stop()


def test_fuzzed_segment_file_through_tlog_open(tmp_path, corpora):
    """The file-level reader (TLog.open read-only and for writing) on damaged segments."""
    rng = random.Random(5)
    outcomes = {"ok": 0, "rejected": 0}
    for i in range(40):
        d = tmp_path / f"log{i}"
        d.mkdir()
        (d / "00000001.tlog").write_bytes(mutate(rng, corpora["tlog"], []))
        for readonly in (True, False):
            try:
                with TLog.open(d, readonly=readonly) as log:
                    list(log.transactions())
                outcomes["ok"] += 1
            except MMSBError:
                outcomes["rejected"] += 1
    assert sum(outcomes.values()) == 80


# -- the checkpoint manifest ------------------------------------------------------------------

def _manifest_mutants(rng: random.Random, manifest: dict) -> list[object]:
    """Structurally mutated manifests (JSON values), plus non-object JSON."""
    out: list[object] = [None, 1, "x", [], {}, [manifest]]
    junk = [None, -1, 0, 2**63, 1.5, float("nan"), "", "zz", [], {}, [1, 2], {"a": 1}, True]
    for _ in range(30):
        m = json.loads(json.dumps(manifest))
        for _ in range(rng.randint(1, 3)):
            target = m
            path = []
            while isinstance(target, dict | list) and target and rng.random() < 0.6:
                key = (rng.choice(list(target)) if isinstance(target, dict)
                       else rng.randrange(len(target)))
                path.append((target, key))
                target = target[key]
            if not path:
                key = rng.choice(list(m))
                path = [(m, key)]
            parent, key = path[-1]
            if rng.random() < 0.2 and isinstance(parent, dict):
                del parent[key]
            else:
                parent[key] = rng.choice(junk)
        out.append(m)
    return out


def test_fuzzed_checkpoint_manifest(tmp_path):
    rng = random.Random(7)
    store = CheckpointStore(tmp_path / "ck", keep=None, async_save=False)
    state = mm.init_state(SCHEMA)
    store.save(1, state, SCHEMA)
    store.close()
    step_dir = tmp_path / "ck" / "1"
    manifest_file = next(p for p in step_dir.rglob("*") if p.is_file()
                         and p.parent.name == "manifest")
    original = manifest_file.read_bytes()
    manifest = json.loads(original)
    raw_mutants = [mutate(rng, original, []) for _ in range(20)] + [b"", b"\xff\xfe", b"{"]
    outcomes = {"ok": 0, "rejected": 0}
    for mutant in [json.dumps(m, allow_nan=True).encode() for m in
                   _manifest_mutants(rng, manifest)] + raw_mutants:
        manifest_file.write_bytes(mutant)
        with CheckpointStore(tmp_path / "ck", readonly=True) as ro:
            try:
                restored, _ = ro.restore(1, SCHEMA)
                for name in SCHEMA.names:
                    assert restored.pages[name].shape == SCHEMA[name].shape
                outcomes["ok"] += 1
            except MMSBError:
                outcomes["rejected"] += 1
    assert outcomes["rejected"] > 0
    manifest_file.write_bytes(original)
    with CheckpointStore(tmp_path / "ck", readonly=True) as ro:
        ro.restore(1, SCHEMA)
