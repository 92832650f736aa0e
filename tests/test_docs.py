"""The documentation site builds with ``mkdocs build --strict`` and lists every page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _nav_files(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_nav_lists_every_page_once() -> None:
    nav = _nav_files(_config()["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav))


def test_api_pages_cover_every_public_subpackage() -> None:
    targets = set()
    for page in (DOCS / "api").glob("*.md"):
        targets |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M))
    for module in ("mmsb_jax.core.pages", "mmsb_jax.core.delta", "mmsb_jax.core.semiring",
                   "mmsb_jax.core.graph", "mmsb_jax.core.propagate", "mmsb_jax.store",
                   "mmsb_jax.runtime", "mmsb_jax.utility", "mmsb_jax.intention",
                   "mmsb_jax.reasoning", "mmsb_jax.planning", "mmsb_jax.agents",
                   "mmsb_jax.apps", "mmsb_jax.errors", "mmsb_jax.kernels"):
        assert module in targets, module


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    html = (site / "api" / "core" / "index.html").read_text()
    assert 'id="mmsb_jax.core.delta.apply"' in html        # mkdocstrings rendered the API
    assert (site / "guide" / "planning" / "index.html").is_file()
