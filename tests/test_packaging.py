"""Packaging: the wheel, a non-editable install, the version, the extras and their errors."""

from __future__ import annotations

import importlib.metadata
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mmsb_jax
from mmsb_jax.errors import MissingExtraError, MMSBError

ROOT = Path(__file__).resolve().parents[1]

# The design's packages plus what the store needs (checksums, metrics, progress, scipy).
CORE_DEPENDENCIES = {"jax", "jaxlib", "numpy", "flax", "optax", "chex", "mctx",
                     "orbax-checkpoint", "google-crc32c", "prometheus-client", "tqdm", "rich",
                     "scipy"}
PUBLIC_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(mmsb_jax.__path__, "mmsb_jax.")
    if not any(part.startswith("_") for part in m.name.split(".")[1:])
    and m.name != "mmsb_jax.apps.mcp_server")  # a server entry point: imported on its own below


def _requirement_name(req: str) -> str:
    return re.split(r"[ <>=!~;\[(]", req, maxsplit=1)[0].lower()


def test_version_is_the_distribution_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", mmsb_jax.__version__)
    assert importlib.metadata.version("mmsb-jax") == mmsb_jax.__version__


def test_core_dependencies_are_the_designs_and_upper_layers_use_extras():
    reqs = importlib.metadata.requires("mmsb-jax") or []
    core = {_requirement_name(r) for r in reqs if "extra ==" not in r}
    assert core <= CORE_DEPENDENCIES, core - CORE_DEPENDENCIES
    by_extra: dict[str, set[str]] = {}
    for r in reqs:
        m = re.search(r'extra == "([^"]+)"', r)
        if m:
            by_extra.setdefault(m.group(1), set()).add(_requirement_name(r))
    assert {"gymnax"} <= by_extra["agents"]
    assert {"mcp", "jsonschema"} <= by_extra["mcp"]
    assert {"mmsb-jax"} <= by_extra["all"] and {"mmsb-jax"} <= by_extra["dev"]
    assert not {"gymnax", "mcp", "jsonschema"} & core


def test_importing_the_library_imports_no_optional_dependency():
    code = ("import sys, mmsb_jax, mmsb_jax.agents, mmsb_jax.apps, mmsb_jax.planning\n"
            "print(sorted(m for m in ('gymnax', 'mcp', 'mcp_types', 'jsonschema')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_the_upper_layers_load_on_first_use():
    """``import mmsb_jax`` loads the Bus's layers only (no flax, optax, mctx); ``mm.agents``
    and ``from mmsb_jax import planning`` then load theirs."""
    code = ("import sys, mmsb_jax as mm\n"
            "heavy = ('flax', 'optax', 'mctx', 'mmsb_jax.agents', 'mmsb_jax.planning')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "assert {'agents', 'planning', 'reasoning'} <= set(dir(mm))\n"
            "from mmsb_jax import planning\n"
            "assert mm.agents.PPOConfig is sys.modules['mmsb_jax.agents'].PPOConfig\n"
            "assert mm.planning is planning and 'flax' in sys.modules\n"
            "try:\n    mm.no_such_layer\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    first, second = out.stdout.strip().splitlines()
    assert first == "[]"
    assert second == "module 'mmsb_jax' has no attribute 'no_such_layer'"


@pytest.fixture
def hide(monkeypatch):
    """Make modules unimportable, as when their extra is not installed."""
    def _hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return _hide


def test_from_gymnax_without_the_agents_extra_names_it(hide):
    hide("gymnax")
    with pytest.raises(MissingExtraError, match=r'pip install "mmsb-jax\[agents\]"') as e:
        mmsb_jax.agents.from_gymnax("CartPole-v1")
    assert e.value.extra == "agents" and e.value.name == "gymnax"
    assert isinstance(e.value, ImportError) and isinstance(e.value, MMSBError)


def test_call_tool_without_the_mcp_extra_names_it(hide, tmp_path):
    import numpy as np

    bus = mmsb_jax.Bus.open(tmp_path, schema=mmsb_jax.Schema(
        [mmsb_jax.PageSpec("x", (3,), "float32")]))
    try:
        hide("jsonschema")
        with pytest.raises(MissingExtraError, match=r"mmsb-jax\[mcp\]"):
            mmsb_jax.apps.call_tool(bus, "read_page", {"page": "x"})
        assert bus.seq == 0 and np.all(np.asarray(bus.state.pages["x"]) == 0)
    finally:
        bus.close()


def test_mcp_server_without_the_mcp_extra_names_it(hide, monkeypatch):
    monkeypatch.delitem(sys.modules, "mmsb_jax.apps.mcp_server", raising=False)
    hide("mcp", "mcp.server", "mcp.server.lowlevel", "mcp.server.stdio", "mcp_types")
    with pytest.raises(MissingExtraError, match=r"mmsb-jax\[mcp\]") as e:
        import mmsb_jax.apps.mcp_server  # noqa: F401
    assert e.value.extra == "mcp"


def test_a_broken_installed_dependency_is_not_reported_as_a_missing_extra(tmp_path,
                                                                        monkeypatch):
    from mmsb_jax._extras import require

    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import nonexistent_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as e:
        require("brokenpkg", extra="mcp", feature="test")
    assert not isinstance(e.value, MissingExtraError)
    assert e.value.name == "nonexistent_dependency_xyz"
    with pytest.raises(MissingExtraError, match="'absentpkg_xyz'"):
        require("absentpkg_xyz", extra="mcp", feature="test")


def test_wheel_holds_every_package_and_a_plain_install_imports_every_public_module(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mmsb_jax", src / "mmsb_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("mmsb_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.relative_to(ROOT).parent).replace(os.sep, "/")
                for p in (ROOT / "mmsb_jax").rglob("__init__.py")}
    assert {p + "/__init__.py" for p in packages} <= set(names)
    assert "mmsb_jax/py.typed" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=600)
    code = (
        "import importlib, sys\n"
        f"mods = {PUBLIC_MODULES!r}\n"
        "for m in mods:\n"
        "    mod = importlib.import_module(m)\n"
        f"    assert mod.__file__.startswith({str(site)!r}), (m, mod.__file__)\n"
        "import mmsb_jax\n"
        "print(mmsb_jax.__version__, len(mods))\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [mmsb_jax.__version__, str(len(PUBLIC_MODULES))]
