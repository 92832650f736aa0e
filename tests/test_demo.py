"""`mmsb demo` runs end to end and its checks pass."""

from __future__ import annotations

from mmsb_jax.cli import main


def test_demo_runs_and_checks_pass(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path / "bus"), "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "FAILED" not in out and "reopened state == live state" in out
    # Running again on the same directory continues the log and still recovers exactly.
    assert main(["demo", "--dir", str(tmp_path / "bus"), "--steps", "3"]) == 0
