"""Security: no pickle or code execution on load paths, loopback-only servers, private files.

* Source scan: no module of the package uses pickle, marshal, shelve, ``eval``/``exec``,
  ``np.load(allow_pickle=True)``, ``yaml.load`` or Orbax's pickle-based handlers.
* Runtime: opening, recovering, time travel, checkpoint restore, reading seed files and
  ``mmsb import-seed`` run with ``pickle``'s loaders replaced by a tripwire.
* Servers: the Prometheus exporter binds 127.0.0.1 by default (checked on the socket); every
  function that binds a socket defaults to loopback.
* Permissions: the bus directory, log directory, segments, lock, checkpoint directories and
  files are 0700/0600 (group and others get nothing), whatever the umask.
"""

from __future__ import annotations

import ast
import inspect
import os
import pickle
import re
import stat
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.cli.seed_import import import_seed
from mmsb_jax.runtime import Bus, distributed, state_at
from mmsb_jax.store import seed

PACKAGE_DIRS = [Path(mm.__file__).parent, Path(mm.kernels.__file__).parent]
SCHEMA = mm.Schema([mm.PageSpec("x", (8,), "int32"), mm.PageSpec("f", (4, 3), "float32")])

FORBIDDEN_IMPORTS = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                     "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_TEXT = [
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"yaml\.load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
    (re.compile(r"PyTreeCheckpointHandler|PickleCheckpointHandler|pickle_"), "pickle handler"),
    (re.compile(r"torch\.load\("), "torch.load"),
]


def _sources() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in d.rglob("*.py"))


def test_no_pickle_or_code_execution_in_sources():
    problems = []
    for path in _sources():
        text = path.read_text()
        tree = ast.parse(text, str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            if names & FORBIDDEN_IMPORTS:
                problems.append(f"{path}:{node.lineno}: imports {names & FORBIDDEN_IMPORTS}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in FORBIDDEN_CALLS):
                problems.append(f"{path}:{node.lineno}: calls {node.func.id}()")
        for pattern, what in FORBIDDEN_TEXT:
            for m in pattern.finditer(text):
                problems.append(f"{path}:{text[:m.start()].count(chr(10)) + 1}: {what}")
    assert len(_sources()) > 20
    assert not problems, "\n".join(problems)


@pytest.fixture
def pickle_tripwire(monkeypatch):
    calls = []

    def tripwire(*args, **kwargs):
        calls.append(args)
        raise AssertionError("pickle used on a load path")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, tripwire)
    return calls


def test_load_paths_do_not_unpickle(tmp_path, pickle_tripwire):
    d = tmp_path / "bus"
    with Bus.open(d, SCHEMA, sync="always") as bus:
        for s in range(1, 6):
            bus.commit(mm.Delta.rows("x", np.array([s % 8]), np.array([s], np.int32)))
            if s == 3:
                bus.checkpoint()
    with Bus.open(d) as bus:  # recovery: checkpoint restore + log replay
        assert bus.seq == 5
        bus.at(2)
        bus.at(4)
        bus.checkpoints.manifest(3)
    state_at(d, 4)
    frames = [seed.SeedFrame(1, 7, 1, np.ones(4, np.uint8), np.arange(4, dtype=np.uint8), False)]
    seed.write_seed_log(tmp_path / "s.mmsblog", frames)
    seed.read_seed_file(tmp_path / "s.mmsblog")
    import_seed(tmp_path / "s.mmsblog", tmp_path / "imported")
    with Bus.open(tmp_path / "imported") as bus:
        assert bus.seq >= 1
    assert pickle_tripwire == []


def test_prometheus_exporter_binds_loopback_by_default(tmp_path):
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as bus:
        port = bus.serve_metrics()
        server = bus._tel._server
        assert server.server_address[0] == "127.0.0.1"
        assert server.socket.getsockname()[0] == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        assert b"mmsb_" in body


def test_every_socket_binding_function_defaults_to_loopback():
    from mmsb_jax.runtime.telemetry import Telemetry

    for fn in (Telemetry.serve, Bus.serve_metrics, distributed.free_port):
        params = inspect.signature(fn).parameters
        host = params.get("addr") or params.get("host")
        assert host is not None and host.default == "127.0.0.1", fn
    # nothing else in the package opens a listening socket
    listen = re.compile(r"\.bind\(\(|start_http_server|HTTPServer|serve_forever")
    binders = [p for p in _sources() if listen.search(p.read_text())]
    assert {p.name for p in binders} <= {"telemetry.py", "distributed.py"}, binders


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_logs_and_checkpoints_are_private(tmp_path):
    old = os.umask(0o022)  # a permissive umask must not leak into the store's files
    try:
        d = tmp_path / "bus"
        with Bus.open(d, SCHEMA, sync="always", segment_bytes=512) as bus:
            for s in range(1, 12):
                bus.commit(mm.Delta.rows("x", np.array([s % 8]), np.array([s], np.int32)))
            bus.checkpoint()
            bus.commit(mm.Delta.full("f", np.ones((4, 3), np.float32)))
            bus.checkpoint()
        assert _mode(d) == 0o700
        assert _mode(d / "log") == 0o700 and _mode(d / "checkpoints") == 0o700
        segments = sorted((d / "log").glob("*.tlog"))
        assert len(segments) > 1
        for p in [*segments, d / "log" / "LOCK"]:
            assert _mode(p) == 0o600, (p, oct(_mode(p)))
        ckpt_items = [p for p in (d / "checkpoints").rglob("*")]
        assert ckpt_items
        for p in ckpt_items:
            want = 0o700 if p.is_dir() else 0o600
            assert _mode(p) == want, (p, oct(_mode(p)))
    finally:
        os.umask(old)
