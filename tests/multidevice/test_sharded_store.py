"""Sharded pages through propagation, replay, the Bus and checkpoints (8 fake CPU devices).

Every test compares a sharded run with the same run on unsharded pages (bit for bit) and checks
that each page's type, sharding included (``jax.typeof``), is the one ``init_state`` gave it.
Values are small integers (also in float pages), so sums over shards are exact and
order-independent: bit-equality is a fair requirement.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.core.transaction import _flat_jit, _loop, _scan, _txn
from mmsb_jax.runtime.bus import state_at
from mmsb_jax.store.checkpoint import CheckpointStore

AUTO = (jax.sharding.AxisType.Auto,) * 2
EXPLICIT = (jax.sharding.AxisType.Explicit,) * 2
P = jax.sharding.PartitionSpec


def _schema() -> mm.Schema:
    return mm.Schema([
        mm.PageSpec("w", (64, 8), "float32", sharding=("data", None)),
        mm.PageSpec("i", (64, 8), "int32", sharding=("data", "model")),
        mm.PageSpec("r", (16,), "uint8"),
    ])


def _graph() -> mm.Graph:
    g = mm.Graph(_schema())
    # sharded like its input, by its spec
    g = g.derive("e", ("w",), lambda w: 2.0 * w + 1.0, sharding=("data", None))
    # no spec: replicated, although computed from row-sharded inputs
    g = g.derive("rowmax", ("w", "i"), lambda w, i: jnp.max(w, axis=1)
                 + jnp.min(i, axis=1).astype(jnp.float32))
    # a chain below a derived page, reducing over every shard
    return g.derive("total", ("e",), jnp.sum)


@pytest.fixture(params=["auto", "explicit"])
def mesh(request):
    return jax.make_mesh((4, 2), ("data", "model"),
                         axis_types=AUTO if request.param == "auto" else EXPLICIT)


def _rows(rng, name, op, k=24):
    shape = _schema()[name].shape
    idx = rng.integers(-1, shape[0], k).astype(np.int32)
    vals = rng.integers(-9, 10, (k, *shape[1:])).astype(_schema()[name].dtype)
    return mm.Delta.rows(name, idx, vals, op)


def _log(seed: int = 0, n: int = 11) -> list[tuple[int, list[mm.Delta]]]:
    """``n`` transactions; runs of equal structure (replayed by scans) and a few singletons."""
    rng = np.random.default_rng(seed)
    txns = []
    for seq in range(1, n + 1):
        if seq % 4 == 0:
            mask = rng.random((64, 8)) < 0.3
            deltas = [mm.Delta.masked("i", mask, rng.integers(0, 99, (64, 8), np.int32), "or"),
                      mm.Delta.full("r", rng.integers(0, 255, 16).astype(np.uint8))]
        else:
            deltas = [_rows(rng, "w", "set"), _rows(rng, "w", "add"), _rows(rng, "i", "max")]
        txns.append((seq, deltas))
    return txns


def _assert_types(state: mm.State, reference: mm.State, names) -> None:
    for n in names:
        got, want = state.pages[n], reference.pages[n]
        assert jax.typeof(got) == jax.typeof(want), n
        assert got.sharding.is_equivalent_to(want.sharding, want.ndim), (n, got.sharding)
    assert dict(state.shardings) == dict(reference.shardings)


def _assert_values(a: mm.State, b: mm.State, names) -> None:
    for n in names:
        np.testing.assert_array_equal(np.asarray(a.pages[n]), np.asarray(b.pages[n]), err_msg=n)
        assert int(a.epochs[n]) == int(b.epochs[n]), n


# -- propagation ----------------------------------------------------------------------------

def test_propagate_keeps_base_and_derived_shardings(mesh):
    g = _graph()
    fresh = mm.init_state(g.schema, mesh=mesh)
    assert fresh.pages["e"].sharding.spec == P("data", None)
    assert fresh.pages["rowmax"].sharding.is_fully_replicated
    rng = np.random.default_rng(1)
    ds = [_rows(rng, "w", "set"), _rows(rng, "i", "add")]
    sharded = mm.propagate(g, mm.apply_batch(fresh, ds), ("w", "i"))
    plain = mm.propagate(g, mm.apply_batch(mm.init_state(g.schema), ds), ("w", "i"))
    _assert_types(sharded, fresh, g.schema.names)
    _assert_values(sharded, plain, g.schema.names)
    assert int(sharded.epochs["total"]) == 1
    # inside a user's jit (graph and dirty static): traced pages carry no sharding on auto meshes
    step = jax.jit(mm.propagate, static_argnums=(0, 2))
    again = step(g, mm.apply_batch(sharded, ds[:1]), ("w",))
    _assert_types(again, fresh, g.schema.names)
    _assert_values(again, mm.propagate(g, mm.apply_batch(plain, ds[:1]), ("w",)),
                   g.schema.names)


def test_propagate_places_derived_pages_on_their_recorded_sharding():
    """A derived page computed from a row-sharded page is replicated if its spec says so."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    base = mm.Schema([mm.PageSpec("x", (64, 4), "float32", sharding=("data",))])
    g = (mm.Graph(base).derive("y", ("x",), lambda x: x * 3.0)
         .derive("z", ("x",), lambda x: x * 3.0, sharding=("data",)))
    s = mm.init_state(g.schema, mesh=mesh)
    s = mm.propagate(g, mm.apply(s, mm.Delta.full("x", np.ones((64, 4), np.float32))), "x")
    assert s.pages["y"].sharding.is_fully_replicated
    assert s.pages["z"].sharding.spec == P("data")
    assert len({sh.device for sh in s.pages["z"].addressable_shards}) == 8
    np.testing.assert_array_equal(np.asarray(s.pages["y"]), np.asarray(s.pages["z"]))


# -- replay ---------------------------------------------------------------------------------

def test_replay_onto_sharded_state_keeps_shardings_and_equals_unsharded(mesh):
    schema = _schema()
    txns = _log()
    start = mm.init_state(schema, mesh=mesh)
    sharded = mm.replay(start, txns)
    plain = mm.replay(mm.init_state(schema), txns)
    _assert_types(sharded, start, schema.names)
    _assert_values(sharded, plain, schema.names)
    # replay (scans) == the live commit path, one transaction at a time
    live = start
    for _, deltas in txns:
        live = mm.store.apply_transaction(live, deltas)
    _assert_types(live, start, schema.names)
    _assert_values(sharded, live, schema.names)


def test_replay_with_graph_on_sharded_state(mesh):
    g = _graph()
    txns = _log(seed=3)
    start = mm.init_state(g.schema, mesh=mesh)
    sharded = mm.replay(start, txns, graph=g)
    plain = mm.replay(mm.init_state(g.schema), txns, graph=g)
    _assert_types(sharded, start, g.schema.names)
    _assert_values(sharded, plain, g.schema.names)


def test_replaying_a_sharded_log_twice_does_not_recompile(mesh):
    schema = _schema()
    txns = _log(seed=5, n=8)
    mm.replay(mm.init_state(schema, mesh=mesh), txns)
    def sizes():
        return (_txn._cache_size(), _scan._cache_size(), _loop._cache_size(),
                _flat_jit.cache_info().currsize)

    before = sizes()
    mm.replay(mm.init_state(schema, mesh=mesh), _log(seed=6, n=8))  # same structures
    assert sizes() == before


# -- the Bus and checkpoints ------------------------------------------------------------------

def test_bus_commits_checkpoints_and_reopen_keep_shardings(tmp_path, mesh):
    g = _graph()
    txns = _log(seed=7, n=9)
    fresh = mm.init_state(g.schema, mesh=mesh)
    with mm.Bus.open(tmp_path, g.schema, graph=g, sync="never", mesh=mesh) as bus:
        for seq, deltas in txns:
            assert bus.commit(deltas).seq == seq
            _assert_types(bus.state, fresh, g.schema.names)
            if seq == 5:
                assert bus.checkpoint() == 5
        live = bus.state
        at3 = bus.at(3)  # checkpoint-less time travel on the mesh
        _assert_types(at3, fresh, g.schema.names)
    plain = mm.replay(mm.init_state(g.schema), txns, graph=g)
    _assert_values(live, plain, g.schema.names)
    _assert_values(at3, mm.replay(mm.init_state(g.schema), txns[:3], graph=g), g.schema.names)

    # reopen: restore checkpoint 5 onto the mesh, replay 6..9
    with mm.Bus.open(tmp_path, graph=g, sync="never", mesh=mesh) as bus:
        assert bus.seq == 9
        _assert_types(bus.state, fresh, g.schema.names)
        _assert_values(bus.state, live, g.schema.names)
        bus.commit(txns[0][1])  # commits after recovery keep them too
        _assert_types(bus.state, fresh, g.schema.names)

    # read-only, without the Bus
    state, seq = state_at(tmp_path, 9, mesh=mesh, graph=g)
    assert seq == 9
    _assert_types(state, fresh, g.schema.names)
    _assert_values(state, live, g.schema.names)


def test_checkpoint_store_restores_shardings_and_values(tmp_path, mesh):
    schema = _schema()
    start = mm.init_state(schema, mesh=mesh)
    state = mm.replay(start, _log(seed=9, n=6))
    with CheckpointStore(tmp_path / "ck") as store:
        store.save(6, state, schema)
        back, manifest = store.restore(6, schema, mesh=mesh)
        unsharded, _ = store.restore(6, schema)
    assert manifest["seq"] == 6
    _assert_types(back, start, schema.names)
    _assert_values(back, state, schema.names)
    _assert_values(unsharded, state, schema.names)
    assert unsharded.shardings == ()
    for n in schema.names:
        assert len(unsharded.pages[n].sharding.device_set) == 1


def test_restore_onto_a_mesh_without_the_page_axes_fails_before_anything(tmp_path, mesh):
    schema = _schema()
    state = mm.init_state(schema, mesh=mesh)
    other = jax.make_mesh((8,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,))
    with CheckpointStore(tmp_path / "ck") as store:
        store.save(0, state, schema)
        with pytest.raises(mm.errors.SchemaError, match="mesh axis 'data'"):
            store.restore(0, schema, mesh=other)
        assert store.steps() == [0]
