"""A Bus checkpoint outlives the library: plain Orbax restores it without importing mmsb_jax."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

import mmsb_jax as mm


def test_a_bus_checkpoint_restores_with_plain_orbax_in_a_process_without_mmsb_jax(tmp_path):
    schema = mm.Schema([mm.PageSpec("pos", (4, 2), "float32"), mm.PageSpec("count", (3,), "int32"),
                        mm.PageSpec("flags", (5,), "bool")])
    bus = mm.Bus.open(tmp_path / "run", schema=schema)
    try:
        bus.commit(mm.Delta.full("pos", np.arange(8, dtype=np.float32).reshape(4, 2) / 3))
        bus.commit(mm.Delta.rows("count", [0, 2], np.array([7, -5], np.int32), op="add"))
        bus.commit(mm.Delta.rows("flags", [1, 4], np.array([True, True])))
        seq = bus.checkpoint()
        expected = {n: np.asarray(p) for n, p in bus.state.pages.items()}
        epochs = {n: int(e) for n, e in bus.state.epochs.items()}
    finally:
        bus.close()
    np.savez(tmp_path / "expected.npz", **expected)

    # The two lines of docs/guide/store.md ("Restoring without mmsb-jax"), in a fresh process.
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import orbax.checkpoint as ocp
        step = {str(tmp_path / "run" / "checkpoints" / str(seq))!r}
        pages = ocp.StandardCheckpointer().restore(step + "/pages")
        manifest = json.load(open(step + "/manifest/metadata"))
        assert "mmsb_jax" not in sys.modules, "plain Orbax restore imported mmsb_jax"
        expected = np.load({str(tmp_path / "expected.npz")!r})
        assert sorted(pages) == sorted(expected.files), (sorted(pages), expected.files)
        for name in expected.files:
            got = np.asarray(pages[name])
            assert got.dtype == expected[name].dtype and got.shape == expected[name].shape, name
            assert got.tobytes() == expected[name].tobytes(), name
        print(json.dumps({{"seq": manifest["seq"], "epochs": manifest["epochs"],
                          "format": manifest["format"]}}))
    """)
    out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"seq": seq, "epochs": epochs, "format": "mmsb-jax-checkpoint"}
