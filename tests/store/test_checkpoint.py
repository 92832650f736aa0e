"""Checkpoints: Orbax pages + JSON manifest, schema checks, retention, interrupted saves."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.errors import (
    FormatError,
    OptionError,
    SchemaError,
    SchemaMismatchError,
    StoreError,
    UnknownSeqError,
)
from mmsb_jax.store.checkpoint import MANIFEST_FORMAT, CheckpointStore

SCHEMA = mm.Schema([
    mm.PageSpec("w", (4, 3), "float32"),
    mm.PageSpec("raw", (5,), "uint8"),
    mm.PageSpec("empty", (0, 2), "int32"),
    mm.PageSpec("flag", (), "bool"),
    mm.PageSpec("h", (2,), "bfloat16"),
])


def sample_state(k: int = 1) -> mm.State:
    s = mm.init_state(SCHEMA)
    s = mm.apply(s, mm.Delta.full("w", np.arange(12, dtype=np.float32).reshape(4, 3) * k))
    s = mm.apply(s, mm.Delta.rows("raw", np.array([1, 3], np.int32),
                                  np.array([k, 255], np.uint8)))
    s = mm.apply(s, mm.Delta.full("flag", np.array(True)))
    return mm.apply(s, mm.Delta.full("h", np.array([1.5, -2], jax.numpy.bfloat16), op="add"))


def assert_same(a: mm.State, b: mm.State) -> None:
    for n in SCHEMA.names:
        x, y = np.asarray(a.pages[n]), np.asarray(b.pages[n])
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.view(np.uint8) if x.size else x,
                                      y.view(np.uint8) if y.size else y)
        assert int(a.epochs[n]) == int(b.epochs[n])


def test_save_restore_round_trip_and_manifest(tmp_path):
    state = sample_state()
    with CheckpointStore(tmp_path / "ck") as store:
        assert store.save(7, state, SCHEMA, graph={"energy": "abc"}) == 7
        assert store.save(7, state, SCHEMA) == 7  # already there: no-op
        assert store.steps() == [7] and store.latest() == 7 and store.latest(6) is None
        restored, manifest = store.restore(7, SCHEMA)
    assert_same(restored, state)
    assert manifest["format"] == MANIFEST_FORMAT and manifest["version"] == 1
    assert manifest["seq"] == 7 and manifest["graph"] == {"energy": "abc"}
    assert manifest["epochs"] == {"w": 1, "raw": 1, "empty": 0, "flag": 1, "h": 1}
    assert mm.Schema.from_json(manifest["schema"]) == SCHEMA
    assert manifest["jax_version"] == jax.__version__ and manifest["backend"] == "cpu"
    assert manifest["mmsb_version"] == mm.__version__ and manifest["created"].endswith("Z")


def test_permissions_are_private(tmp_path):
    with CheckpointStore(tmp_path / "ck") as store:
        store.save(1, sample_state(), SCHEMA)
    for p in [tmp_path / "ck", *(tmp_path / "ck").rglob("*")]:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o700 if p.is_dir() else 0o600), p


def test_schema_mismatch_is_refused(tmp_path):
    with CheckpointStore(tmp_path) as store:
        store.save(1, sample_state(), SCHEMA)
        other = mm.Schema([*SCHEMA.specs[:-1], mm.PageSpec("h", (3,), "bfloat16")])
        with pytest.raises(SchemaMismatchError, match="different schema"):
            store.restore(1, other)
        with pytest.raises(SchemaError, match="the schema says"):
            store.save(2, sample_state(), other)
        with pytest.raises(SchemaError, match="lacks pages"):
            store.save(2, sample_state(), other.extend([mm.PageSpec("new", (1,))]))
        with pytest.raises(UnknownSeqError):
            store.restore(5, SCHEMA)
        with pytest.raises(UnknownSeqError):
            store.manifest(5)


def test_retention_keeps_the_last_k(tmp_path):
    with CheckpointStore(tmp_path, keep=2) as store:
        for seq in (3, 5, 9, 12):
            store.save(seq, sample_state(seq), SCHEMA)
        assert store.steps() == [9, 12]
        assert_same(store.restore(9, SCHEMA)[0], sample_state(9))
        store.delete(9)
        assert store.steps() == [12]
    with pytest.raises(OptionError):
        CheckpointStore(tmp_path / "x", keep=0)


def test_async_save_is_durable_after_wait(tmp_path):
    with CheckpointStore(tmp_path) as store:
        store.save(4, sample_state(4), SCHEMA, wait=False)
        assert store.wait() == [4]
        assert store.steps() == [4]
        store.save(6, sample_state(6), SCHEMA, wait=False)
    with CheckpointStore(tmp_path, readonly=True) as ro:  # close() waited for step 6
        assert ro.steps() == [4, 6]
        assert_same(ro.restore(6, SCHEMA)[0], sample_state(6))


def test_interrupted_save_is_ignored(tmp_path):
    with CheckpointStore(tmp_path) as store:
        store.save(2, sample_state(2), SCHEMA)
    # what a process killed mid-save leaves behind
    tmp = tmp_path / "8.orbax-checkpoint-tmp-1234"
    (tmp / "pages").mkdir(parents=True)
    (tmp / "pages" / "garbage").write_bytes(b"\0" * 10)
    with CheckpointStore(tmp_path) as store:
        assert store.steps() == [2] and store.latest() == 2
        assert_same(store.restore(2, SCHEMA)[0], sample_state(2))


def test_readonly_store(tmp_path):
    with pytest.raises(StoreError, match="no checkpoint directory"):
        CheckpointStore(tmp_path / "none", readonly=True)
    with CheckpointStore(tmp_path) as store:
        store.save(1, sample_state(), SCHEMA)
    with CheckpointStore(tmp_path, readonly=True) as ro:
        with pytest.raises(StoreError, match="read-only"):
            ro.save(2, sample_state(), SCHEMA)
        with pytest.raises(StoreError, match="read-only"):
            ro.delete(1)


def test_bad_manifest_is_a_format_error(tmp_path):
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(tmp_path, item_names=("pages", "manifest"))
    mgr.save(3, args=ocp.args.Composite(pages=ocp.args.StandardSave({"a": np.zeros(2)}),
                                        manifest=ocp.args.JsonSave({"format": "other"})))
    mgr.save(4, args=ocp.args.Composite(pages=ocp.args.StandardSave({"a": np.zeros(2)}),
                                        manifest=ocp.args.JsonSave({"format": MANIFEST_FORMAT,
                                                                    "version": 99})))
    mgr.wait_until_finished()
    mgr.close()
    with CheckpointStore(tmp_path, readonly=True) as ro:
        with pytest.raises(FormatError, match="not an mmsb-jax"):
            ro.restore(3, SCHEMA)
        with pytest.raises(FormatError, match="version 99"):
            ro.manifest(4)


def test_failed_save_is_a_store_error(tmp_path, monkeypatch):
    with CheckpointStore(tmp_path) as store:
        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(store._manager, "save", full_disk)
        with pytest.raises(StoreError, match="No space left"):
            store.save(1, sample_state(), SCHEMA)
        monkeypatch.undo()
        assert store.steps() == []
        store.save(1, sample_state(), SCHEMA)
        assert store.steps() == [1]


def test_orbax_is_loaded_only_once_a_checkpoint_is_needed(tmp_path):
    """A bus with no checkpoint opens, commits, recovers and closes without importing Orbax
    (~0.2 s a process); the first save, or a directory holding a step, loads it."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, mmsb_jax as mm\n"
        "from mmsb_jax.store.checkpoint import CheckpointStore\n"
        "d, mode = sys.argv[1], sys.argv[2]\n"
        "S = mm.Schema([mm.PageSpec('p', (4,), 'float32')])\n"
        "d1 = mm.Delta.full('p', np.ones(4, np.float32), op='add')\n"
        "with mm.Bus.open(d, S) as bus:\n"
        "    bus.commit(d1)\n"
        "    if mode == 'save':\n"
        "        bus.checkpoint()\n"
        "        bus.commit(d1)\n"
        "with mm.Bus.open(d) as bus:\n"
        "    seq, page = bus.seq, bus.state.pages['p'].tolist()\n"
        "    steps = CheckpointStore(d + '/checkpoints', readonly=True).steps()\n"
        "print(seq, page[0], steps, 'orbax' in sys.modules)\n")

    def run(directory, mode):
        return subprocess.run([sys.executable, "-c", code, str(directory), mode],
                              capture_output=True, text=True, check=True,
                              timeout=300).stdout.split()

    assert run(tmp_path / "a", "plain") == ["1", "1.0", "[]", "False"]
    assert run(tmp_path / "a", "plain") == ["2", "2.0", "[]", "False"]  # reopened twice
    assert run(tmp_path / "b", "save") == ["2", "2.0", "[1]", "True"]
    # a step directory on disk (even an unfinished one) is Orbax's to judge
    (tmp_path / "a" / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()
    assert run(tmp_path / "a", "plain") == ["3", "3.0", "[]", "True"]
