"""``mmsb log inspect|verify|repair``, ``mmsb replay``, ``mmsb checkpoint list``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.cli import main
from mmsb_jax.runtime import Bus
from mmsb_jax.store.format import crc32c

SCHEMA = mm.Schema([mm.PageSpec("x", (4,), "int32"), mm.PageSpec("f", (2, 2), "float32")])


@pytest.fixture
def bus_dir(tmp_path):
    d = tmp_path / "bus"
    with Bus.open(d, SCHEMA, sync="never") as bus:
        for k in range(1, 6):
            bus.commit([mm.Delta.rows("x", np.array([k % 4], np.int32),
                                      np.array([k], np.int32), op="add"),
                        mm.Delta.full("f", np.full((2, 2), k, np.float32))])
            if k == 3:
                bus.checkpoint()
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_log_inspect(bus_dir, capsys):
    code, out, _ = run(capsys, "log", "inspect", bus_dir, "-t")
    assert code == 0
    assert "seqs 1..5" in out and "page x: int32[4]" in out and "seq 5 @" in out
    code, out, _ = run(capsys, "log", "inspect", bus_dir / "log" / "00000001.tlog", "--json")
    report = json.loads(out)
    assert report["last_seq"] == 5 and report["corrupt"] is None
    assert report["segments"][0]["transactions"] == 5
    assert mm.Schema.from_json(report["schema"]) == SCHEMA


def test_log_verify_clean_torn_and_corrupt(bus_dir, capsys):
    seg = bus_dir / "log" / "00000001.tlog"
    code, out, _ = run(capsys, "log", "verify", bus_dir)
    assert code == 0 and "OK, 5 transactions" in out
    good = seg.read_bytes()
    seg.write_bytes(good + b"\x01\x02\x03")
    code, out, _ = run(capsys, "log", "verify", bus_dir)
    assert code == 1 and "torn tail of 3 bytes" in out
    code, out, _ = run(capsys, "log", "inspect", bus_dir, "--json")
    assert json.loads(out)["torn_tail_bytes"] == 3
    bad = bytearray(good)
    bad[200] ^= 0x01
    seg.write_bytes(bytes(bad))
    code, out, err = run(capsys, "log", "verify", bus_dir)
    assert code == 2 and "corrupt log record at offset" in err
    code, out, _ = run(capsys, "log", "inspect", bus_dir)
    assert code == 0 and "CORRUPT at offset" in out


def test_log_repair(bus_dir, capsys):
    seg = bus_dir / "log" / "00000001.tlog"
    good = seg.read_bytes()
    seg.write_bytes(good + b"tail!")
    code, out, _ = run(capsys, "log", "repair", bus_dir)
    assert code == 0 and "cut 5 bytes" in out and "saved to" in out
    assert seg.read_bytes() == good
    code, out, _ = run(capsys, "log", "repair", bus_dir)
    assert code == 0 and "nothing to repair" in out
    code, _, err = run(capsys, "log", "repair", bus_dir.parent / "missing")
    assert code == 2 and "no such log" in err


def test_replay_command(bus_dir, capsys, tmp_path):
    code, out, _ = run(capsys, "replay", bus_dir, "--to", 2, "--json")
    report = json.loads(out)
    assert code == 0 and report["seq"] == 2
    pages = {p["page"]: p for p in report["pages"]}
    want = np.array([0, 1, 2, 0], np.int32)
    assert pages["x"]["epoch"] == 2 and pages["x"]["crc32c"] == f"{crc32c(want.tobytes()):08x}"
    out_file = tmp_path / "pages.npz"
    code, out, _ = run(capsys, "replay", bus_dir, "--out", out_file, "--no-checkpoint",
                       "--progress", "off")
    assert code == 0 and "state after seq 5" in out
    with np.load(out_file) as z:
        np.testing.assert_array_equal(z["x"], [4, 6, 2, 3])
        np.testing.assert_array_equal(z["f"], np.full((2, 2), 5, np.float32))
    code, _, err = run(capsys, "replay", bus_dir, "--to", 9)
    assert code == 2 and "outside 0..5" in err


def test_checkpoint_list(bus_dir, capsys):
    code, out, _ = run(capsys, "checkpoint", "list", bus_dir)
    assert code == 0 and "seq        3" in out and "1 checkpoint(s)" in out
    code, out, _ = run(capsys, "checkpoint", "list", bus_dir / "checkpoints", "--json")
    rows = json.loads(out)["checkpoints"]
    assert [r["seq"] for r in rows] == [3] and rows[0]["pages"] == 2 and rows[0]["bytes"] > 0
    code, _, err = run(capsys, "checkpoint", "list", bus_dir / "nothing")
    assert code == 2 and "no checkpoint directory" in err


def test_checkpoint_list_empty(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    code, out, _ = run(capsys, "checkpoint", "list", tmp_path)
    assert code == 0 and "no checkpoints" in out


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["log"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["replay"])
    capsys.readouterr()
