"""core.transaction: the compiled per-structure transaction equals apply_transaction."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.core.transaction import CompiledTransaction, apply_transaction
from mmsb_jax.errors import OptionError

SCHEMA = mm.Schema([mm.PageSpec("x", (8,), "int32"), mm.PageSpec("y", (4, 3), "float32"),
                    mm.PageSpec("z", (5,), "uint8")])


def graph() -> mm.Graph:
    g = mm.Graph(SCHEMA)
    g = g.derive("ysum", ("y",), lambda y: jnp.sum(y, axis=0))
    return g.derive("big", ("x", "ysum"), lambda x, s: (jnp.sum(x) > s[0]).astype(jnp.int32))


def txn(rng: np.random.Generator) -> list[mm.Delta]:
    """Rows (with a duplicate and padding), masked and full deltas over two pages."""
    return [mm.Delta.rows("x", np.array([1, 1, -1, 6], np.int32),
                          rng.integers(-5, 5, 4).astype(np.int32), "add"),
            mm.Delta.masked("y", rng.random((4, 3)) < 0.5,
                            rng.normal(size=(4, 3)).astype(np.float32), "max"),
            mm.Delta.rows("x", np.array([6], np.int32), np.array([9], np.int32), "set"),
            mm.Delta.full("y", rng.normal(size=(4, 3)).astype(np.float32), "add")]


def same_bits(a: mm.State, b: mm.State) -> None:
    assert tuple(a.pages) == tuple(b.pages)
    for n in a.pages:
        x, y = np.asarray(a.pages[n]), np.asarray(b.pages[n])
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), n
        assert int(a.epochs[n]) == int(b.epochs[n]), n


@pytest.mark.parametrize("with_graph", [False, True])
@pytest.mark.parametrize("donate", [False, True])
def test_compiled_transaction_equals_apply_transaction_bit_for_bit(with_graph, donate):
    g = graph() if with_graph else None
    rng = np.random.default_rng(0)
    first = txn(rng)
    ref = mm.init_state(g.schema if g else SCHEMA)
    if g is not None:
        ref = mm.propagate(g, ref, tuple(SCHEMA.names))
    state = ref
    compiled = CompiledTransaction(state, first, graph=g, donate=donate)
    for _ in range(5):
        deltas = txn(rng)
        want = apply_transaction(ref, deltas, graph=g)
        copy = state.with_pages({n: state.pages[n] + 0 for n in state.pages}) if donate \
            else state
        got = compiled(copy, deltas)
        same_bits(got, want)
        # pages the transaction does not read are shared (with a graph too: "z" feeds none)
        assert got.pages["z"] is copy.pages["z"] and got.epochs["z"] is copy.epochs["z"]
        ref, state = want, got
    assert compiled._fn._cache_size() == 1  # one compilation for the structure


def test_compiled_transaction_layout_and_bad_input():
    state = mm.init_state(SCHEMA)
    deltas = [mm.Delta.full("z", np.ones(5, np.uint8))]
    compiled = CompiledTransaction(state, deltas)
    assert compiled.matches(state) and compiled.matches(state.with_pages({}))
    mesh_like = state.replace(shardings=(("z", object()),))
    assert not compiled.matches(mesh_like)
    with pytest.raises(OptionError, match="at least one delta"):
        CompiledTransaction(state, [])


def test_a_graph_transaction_passes_only_the_pages_it_writes_recomputes_or_reads():
    g = graph()
    state = mm.propagate(g, mm.init_state(g.schema), tuple(SCHEMA.names))
    y_only = CompiledTransaction(state, [mm.Delta.full("y", np.ones((4, 3), np.float32))],
                                 graph=g)
    # y -> ysum -> big, and big also reads x; z feeds nothing
    assert y_only.names == ("x", "y", "ysum", "big")
    z_only = CompiledTransaction(state, [mm.Delta.full("z", np.ones(5, np.uint8))], graph=g)
    assert z_only.names == ("z",)
    got = y_only(state, [mm.Delta.full("y", np.ones((4, 3), np.float32))])
    same_bits(got, apply_transaction(state, [mm.Delta.full("y", np.ones((4, 3), np.float32))],
                                     graph=g))
    assert got.pages["z"] is state.pages["z"]
