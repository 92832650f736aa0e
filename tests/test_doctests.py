"""Every ``>>>`` example in the library's docstrings runs (one test per module).

Modules of layers that need an optional extra that is not installed are skipped with that
reason; everything else must pass.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import mmsb_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(mmsb_jax.__path__, "mmsb_jax.")
                 if not m.name.endswith("__main__"))


def _has_examples(name: str) -> bool:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return True  # reported by the test (skipped with the reason)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return any(t.examples for t in finder.find(module))


@pytest.mark.parametrize("name", [m for m in MODULES if _has_examples(m)])
def test_docstring_examples(name, tmp_path, monkeypatch):
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # a layer whose optional extra is not installed
        pytest.skip(f"{name} needs an optional extra: {e}")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             raise_on_error=False, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
