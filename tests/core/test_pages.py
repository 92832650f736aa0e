"""Pages, Schema and the State pytree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax import errors


def _schema() -> mm.Schema:
    return mm.Schema([
        mm.PageSpec("pos", (4, 2), "float32"),
        mm.PageSpec("raw", (16,), "uint8"),
        mm.PageSpec("flags", (5,), "bool"),
        mm.PageSpec("half", (3,), "bfloat16"),
        mm.PageSpec("scalar", (), "int32"),
    ])


def test_init_state_allocates_zero_pages_of_every_dtype():
    schema = _schema()
    state = mm.init_state(schema)
    assert state.names == schema.names
    for spec in schema:
        page = state.pages[spec.name]
        assert page.shape == spec.shape
        assert page.dtype == jnp.dtype(spec.dtype)
        assert not np.any(np.asarray(page))
        assert state.epochs[spec.name].dtype == jnp.int32
        assert int(state.epochs[spec.name]) == 0


def test_schema_is_ordered_hashable_and_round_trips_json():
    schema = _schema()
    assert schema.index("raw") == 1
    assert hash(schema) == hash(_schema()) and schema == _schema()
    assert mm.Schema.from_json(schema.to_json()) == schema
    assert {schema: 1}[_schema()] == 1
    assert "pos" in schema and "nope" not in schema
    assert schema.extend([mm.PageSpec("z", (1,))]).names[-1] == "z"
    assert schema.without(["raw"]).names == ("pos", "flags", "half", "scalar")


@pytest.mark.parametrize(
    "make",
    [
        lambda: mm.Schema([mm.PageSpec("a", (1,)), mm.PageSpec("a", (2,))]),
        lambda: mm.PageSpec("bad name!", (1,)),
        lambda: mm.PageSpec("a", (-1,)),
        lambda: mm.PageSpec("a", (2,), "not-a-dtype"),
        lambda: mm.PageSpec("a", (2,), sharding=("x", None, None)),
        lambda: mm.Schema.from_json({"name": "a"}),
        lambda: mm.Schema.from_json([{"name": "a"}]),
        lambda: mm.init_state("not a schema"),
    ],
)
def test_bad_schemas_raise_schema_error(make):
    with pytest.raises(errors.SchemaError):
        make()


def test_unknown_page_lookup_raises_typed_error():
    schema = _schema()
    with pytest.raises(errors.UnknownPageError, match="nope"):
        schema["nope"]
    with pytest.raises(errors.UnknownPageError):
        mm.init_state(schema).page("nope")


def test_state_is_a_frozen_pytree_through_tree_utilities():
    state = mm.init_state(_schema())
    leaves, treedef = jax.tree.flatten(state)
    assert len(leaves) == 2 * len(_schema())
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert isinstance(rebuilt, mm.State)
    assert rebuilt.names == state.names
    doubled = jax.tree.map(lambda x: x + 1, state)
    assert int(doubled.epochs["pos"]) == 1 and float(doubled.pages["pos"][0, 0]) == 1.0
    with pytest.raises(AttributeError):
        state.pages = {}  # frozen


def test_state_passes_through_jit_vmap_and_grad():
    schema = mm.Schema([mm.PageSpec("x", (3,)), mm.PageSpec("y", (3,))])
    state = mm.init_state(schema)

    @jax.jit
    def step(s: mm.State) -> mm.State:
        return s.with_pages({"y": s.pages["x"] * 2 + 1}, {"y": s.epochs["y"] + 1})

    out = step(state)
    assert isinstance(out, mm.State)
    np.testing.assert_array_equal(out.pages["y"], np.ones(3))

    batch = jax.tree.map(lambda x: jnp.stack([x, x + 1]), state)
    vout = jax.vmap(step)(batch)
    np.testing.assert_array_equal(vout.pages["y"], [[1, 1, 1], [3, 3, 3]])

    def loss(s: mm.State) -> jax.Array:
        return jnp.sum(step(s).pages["y"] ** 2)

    g = jax.grad(loss, allow_int=True)(state)
    np.testing.assert_allclose(g.pages["x"], 4 * np.ones(3))  # d/dx (2x+1)^2 at x=0
    gp = jax.grad(lambda p: loss(state.replace(pages=p)))(dict(state.pages))
    np.testing.assert_allclose(gp["x"], 4 * np.ones(3))


@pytest.mark.parametrize("shape", [(2.5,), ("two",), (None,)])
def test_non_integer_shapes_are_schema_errors(shape):
    with pytest.raises(errors.SchemaError):
        mm.PageSpec("a", shape)
