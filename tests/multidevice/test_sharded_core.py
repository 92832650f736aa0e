"""Sharded pages on 8 fake CPU devices: bit-equal to unsharded runs, shardings kept."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import mmsb_jax as mm

AUTO = (jax.sharding.AxisType.Auto,) * 2
EXPLICIT = (jax.sharding.AxisType.Explicit,) * 2


def _schema():
    return mm.Schema([
        mm.PageSpec("w", (64, 8), "float32", sharding=("data", None)),
        mm.PageSpec("i", (64, 8), "int32", sharding=("data", "model")),
        mm.PageSpec("b", (32,), "bool", sharding=("data",)),
        mm.PageSpec("r", (16,), "uint8"),
    ])


@pytest.fixture(params=["auto", "explicit"])
def mesh(request):
    types = AUTO if request.param == "auto" else EXPLICIT
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=types)


def _delta(rng, kind, op, name, shape, dtype, k=40):
    if kind == "rows":
        idx = rng.integers(-1, shape[0], k).astype(np.int32)
        vals = rng.integers(-9, 10, (k, *shape[1:]))
        return mm.Delta.rows(name, idx, vals.astype(dtype), op)
    vals = rng.integers(-9, 10, shape).astype(dtype)
    if kind == "masked":
        return mm.Delta.masked(name, rng.random(shape) < 0.5, vals, op)
    return mm.Delta.full(name, vals, op)


# Float page for the arithmetic ops, a 2-D-sharded int page for the bitwise ones, and a bool page.
CASES = [(kind, op, name) for kind in mm.KINDS
         for name, ops in (("w", ("set", "add", "mul", "min", "max")), ("i", ("or", "and")),
                           ("b", ("max", "and")))
         for op in ops]


def _assert_same(sharded: mm.State, plain: mm.State, reference: mm.State):
    for n in plain.names:
        assert jax.typeof(sharded.pages[n]) == jax.typeof(reference.pages[n]), n
        assert sharded.pages[n].sharding.is_equivalent_to(reference.pages[n].sharding,
                                                           reference.pages[n].ndim), n
        np.testing.assert_array_equal(np.asarray(sharded.pages[n]), np.asarray(plain.pages[n]))
        assert int(sharded.epochs[n]) == int(plain.epochs[n])


@pytest.mark.parametrize("kind, op, name", CASES)
def test_every_kind_and_op_is_bit_equal_and_keeps_sharding(mesh, kind, op, name):
    rng = np.random.default_rng(hash((kind, op, name)) % 2**32)
    schema = _schema()
    spec = schema[name]
    dtype = np.dtype(spec.dtype)
    d = _delta(rng, kind, op, name, spec.shape, dtype)
    sharded = mm.init_state(schema, mesh=mesh)
    plain = mm.init_state(schema)
    _assert_same(mm.apply(sharded, d), mm.apply(plain, d), sharded)
    if kind == "rows":  # inside a user's jit too (traced pages carry no sharding on auto meshes)
        _assert_same(jax.jit(mm.apply)(sharded, d), mm.apply(plain, d), sharded)


def test_apply_batch_and_sequences_on_sharded_pages(mesh):
    rng = np.random.default_rng(0)
    schema = _schema()
    ds = [_delta(rng, "rows", op, "w", (64, 8), np.float32, k=64) for op in ("set", "add", "max")]
    ds += [_delta(rng, "rows", "or", "i", (64, 8), np.int32),
           _delta(rng, "masked", "set", "w", (64, 8), np.float32)]
    sharded = mm.init_state(schema, mesh=mesh)
    plain = mm.init_state(schema)
    _assert_same(mm.apply_batch(sharded, ds), mm.apply_batch(plain, ds), sharded)
    _assert_same(functools.reduce(mm.apply, ds, sharded), functools.reduce(mm.apply, ds, plain),
                 sharded)


def test_row_deltas_run_per_shard():
    """The sharded merge is a shard_map: every device only touches its own block of rows."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    schema = mm.Schema([mm.PageSpec("w", (64, 4), "float32", sharding=("data",))])
    s = mm.init_state(schema, mesh=mesh)
    d = mm.Delta.rows("w", np.array([0, 9, 63], np.int32), np.ones((3, 4), np.float32))
    jaxpr = jax.make_jaxpr(lambda s, d: mm.apply(s, d))(s, d)
    assert "shard_map" in str(jaxpr)
    out = mm.apply(s, d)
    shards = {sh.device.id: np.asarray(sh.data) for sh in out.pages["w"].addressable_shards}
    assert len(shards) == 8
    touched = sorted(i for i, blk in shards.items() if blk.any())
    assert len(touched) == 3  # rows 0, 9, 63 live on three different devices
