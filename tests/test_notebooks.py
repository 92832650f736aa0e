"""Execute every notebook in ``notebooks/`` in a fresh kernel of this interpreter.

The notebooks are stored without outputs; this test is what runs them. Each notebook gets its
own kernel (``06_sharded_pages`` needs that: it sets ``XLA_FLAGS`` before JAX initialises).
Besides finishing without an error, a notebook must not write a traceback or a warning to
stderr (a subscriber callback that raises is only logged, so it would otherwise pass unseen).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "mmsb-jax-pytest"
CELL_TIMEOUT_S = 300
EXPECTED = [
    "01_quickstart",
    "02_replay_and_time_travel",
    "03_propagation_and_gradients",
    "04_planning_with_mctx",
    "05_training_an_agent",
    "06_sharded_pages",
]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec that starts ``ipykernel`` with the interpreter running the tests."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mmsb-jax tests",
        "language": "python",
    }))
    return root


def test_every_notebook_is_listed() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


def test_notebooks_are_stored_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs(name: str, kernel_env: Path, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_env))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        book, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
        resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    ran = [c for c in book.cells if c.cell_type == "code"]
    assert ran and all(c.execution_count is not None for c in ran)
    if any("%matplotlib inline" in c.source for c in ran):
        images = [o for c in ran for o in c.outputs if "image/png" in o.get("data", {})]
        assert images, f"{name} draws no figure"
    for cell in ran:
        for out in cell.outputs:
            assert out.output_type != "error", (name, out.get("ename"), out.get("evalue"))
            if out.output_type == "stream" and out.name == "stderr":
                assert "Traceback" not in out.text and "Warning" not in out.text, (name, out.text)
