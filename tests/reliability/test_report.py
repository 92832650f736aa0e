"""experiments/report.py: tables and plots from any results layout, robust to bad files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mmsb_report", ROOT / "experiments" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def test_report_from_unknown_layouts(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench_new.json").write_text(json.dumps({
        "machine": {"cpu_count": 2},
        "cases": [{"case": "a", "ms": 1.5, "ratio_vs_numpy": 0.5, "extra": {"n": 3}},
                  {"case": "b", "ms": 2.5, "ratio_vs_numpy": 2.0, "series": [1, 2, 3]}],
        "policies": {"always": {"per_s": 10.0}, "never": {"per_s": 1000.0}},
        "wall_s": 3.25, "note": "a | pipe",
    }))
    (results / "broken.json").write_text("{not json")
    (results / "empty.json").write_text("{}")
    out = tmp_path / "docs" / "performance.md"
    text = report.build(results, out, tmp_path / "docs" / "img")
    assert out.read_text() == text
    assert "## bench_new" in text and "### cases" in text and "### policies" in text
    assert "| a | 1.5 | 0.5 | 3 |" in text  # nested keys flattened into columns
    assert "a \\| pipe" in text and "wall_s" in text
    assert "broken.json (JSONDecodeError)" in text and "empty.json (empty)" in text
    assert "none are\nquoted or estimated" in text  # the seed-baseline statement
    pngs = sorted(p.name for p in (tmp_path / "docs" / "img").iterdir())
    assert pngs == ["bench_new__cases.png", "bench_new__policies.png"]
    assert "](img/bench_new__cases.png)" in text


def test_report_without_results(tmp_path):
    text = report.build(tmp_path / "missing", tmp_path / "perf.md", tmp_path / "img")
    assert "No results found" in text


def test_flatten_and_format():
    assert report.flatten({"a": {"b": 1, "c": [1.0, 2.0]}}) == {"a.b": 1, "a.c": "1, 2"}
    assert report.fmt(123456) == "123,456" and report.fmt(0.000012) == "1.200e-05"
    assert report.fmt(True) == "yes" and report.fmt(None) == ""
