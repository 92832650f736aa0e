"""The Bus with a graph of derived pages: propagation on commit, replay, time travel."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax import errors


def _graph(scale: float = 2.0) -> mm.Graph:
    base = mm.Schema([mm.PageSpec("a", (8,), "float32"), mm.PageSpec("b", (8,), "float32"),
                      mm.PageSpec("c", (4,), "int32")])
    g = mm.Graph(base)
    g = g.derive("sum", ("a", "b"), lambda a, b: a + scale * b)
    g = g.derive("energy", ("sum",), lambda s: jnp.sum(s * s)[None])
    g = g.derive("sign", ("c",), lambda c: (c > 100).astype(jnp.int32))  # rarely changes
    return g


def _row(i: int, v: float) -> list[mm.Delta]:
    return [mm.Delta.rows("a", np.array([i % 8], np.int32), np.array([v], np.float32)),
            mm.Delta.rows("b", np.array([(3 * i) % 8], np.int32), np.array([v / 3], np.float32),
                          "add")]


def _assert_states_equal(x: mm.State, y: mm.State) -> None:
    assert x.names == y.names
    for n in x.names:
        np.testing.assert_array_equal(np.asarray(x.pages[n]), np.asarray(y.pages[n]), err_msg=n)
        assert int(x.epochs[n]) == int(y.epochs[n]), n


def test_commit_propagates_derived_pages_and_notifies(tmp_path):
    g = _graph()
    seen = []
    with mm.Bus.open(tmp_path, graph=g, sync="never") as bus:
        bus.subscribe("energy", lambda info, st: seen.append((info.seq, info.derived)))
        info = bus.commit(_row(1, 3.0))
        assert info.pages == ("a", "b") and set(info.derived) == {"sum", "energy"}
        a, b = bus.read("a"), bus.read("b")
        np.testing.assert_allclose(bus.read("sum"), a + 2.0 * b)
        np.testing.assert_allclose(bus.read("energy"), [np.sum((a + 2.0 * b) ** 2)], rtol=1e-6)
        assert int(bus.state.epochs["sum"]) == 1 and int(bus.state.epochs["sign"]) == 0
        # Early cut-off: "sign" is recomputed but unchanged -> not reported, epoch unchanged.
        info = bus.commit([mm.Delta.full("c", np.array([1, 2, 3, 4], np.int32))])
        assert info.derived == () and int(bus.state.epochs["sign"]) == 0
        info = bus.commit([mm.Delta.full("c", np.array([1, 200, 3, 4], np.int32))])
        assert info.derived == ("sign",) and bus.read("sign").tolist() == [0, 1, 0, 0]
    assert [seq for seq, _ in seen] == [1]  # "energy" changed only in commit 1
    assert set(seen[0][1]) == {"sum", "energy"}


def test_commits_to_derived_pages_are_refused_before_logging(tmp_path):
    with mm.Bus.open(tmp_path, graph=_graph(), sync="never") as bus:
        bus.commit(_row(0, 1.0))
        before = bus.state
        with pytest.raises(errors.GraphError, match="derived"):
            bus.commit([mm.Delta.full("sum", np.ones(8, np.float32))])
        assert bus.seq == 1 and bus.state is before
        assert bus.log.last_seq == 1


def test_reopen_checkpoint_and_time_travel_rebuild_derived_pages_bit_exactly(tmp_path):
    g = _graph()
    history = []
    with mm.Bus.open(tmp_path, graph=g, sync="never") as bus:
        history.append(bus.state)
        for i in range(12):  # equal structure -> replayed as a scan
            bus.commit(_row(i, 0.37 * i + 0.1))
            history.append(bus.state)
            if i == 4:
                bus.checkpoint()
        bus.commit([mm.Delta.full("c", np.arange(4, dtype=np.int32) * 60)])
        history.append(bus.state)
        live = bus.state
        for seq in (0, 3, 5, 9, 13):
            _assert_states_equal(bus.at(seq), history[seq])
    with mm.Bus.open(tmp_path, graph=g) as bus:
        _assert_states_equal(bus.state, live)
    state, seq = mm.runtime.bus.state_at(tmp_path, 7, graph=g)
    assert seq == 7
    _assert_states_equal(state, history[7])


def test_replay_function_with_graph_equals_live_commits(tmp_path):
    g = _graph()
    with mm.Bus.open(tmp_path, graph=g, sync="never") as bus:
        for i in range(6):
            bus.commit(_row(i, float(i)))
        live = bus.state
        replayed = mm.replay(mm.init_state(g.schema), bus.log, graph=g)
    _assert_states_equal(replayed, live)


def test_changed_derived_code_is_reported_on_reopen(tmp_path, caplog):
    with mm.Bus.open(tmp_path, graph=_graph(2.0), sync="never") as bus:
        bus.commit(_row(1, 1.0))
    with caplog.at_level(logging.WARNING), mm.Bus.open(tmp_path, graph=_graph(3.0)) as bus:
        np.testing.assert_allclose(bus.read("sum"), bus.read("a") + 3.0 * bus.read("b"))
    assert any("sum" in r.getMessage() and "changed" in r.getMessage() for r in caplog.records)


def test_commit_does_not_wait_for_propagation_derived_is_read_on_first_use(tmp_path):
    import copy
    import pickle

    c = [np.array([1, 2, 3, 4], np.int32), np.array([1, 200, 3, 4], np.int32)]
    with mm.Bus.open(tmp_path / "lazy", graph=_graph(), sync="never") as bus, \
            mm.Bus.open(tmp_path / "eager", graph=_graph(), sync="never", donate=True) as ref:
        lazy = [bus.commit(_row(1, 3.0)), bus.commit([mm.Delta.full("c", c[0])]),
                bus.commit([mm.Delta.full("c", c[1])])]
        eager = [ref.commit(_row(1, 3.0)), ref.commit([mm.Delta.full("c", c[0])]),
                 ref.commit([mm.Delta.full("c", c[1])])]
        # the lazy infos hold the epochs to compare, not the answer (nor any page)
        assert all("derived" not in i.__dict__ and "_pending" in i.__dict__ for i in lazy)
        assert all("derived" in i.__dict__ for i in eager)  # donating: resolved in commit
        # pickling, copying, == and repr resolve it; the values match the eager bus's
        back = pickle.loads(pickle.dumps(lazy[0]))
        assert "_pending" not in back.__dict__ and back == lazy[0] and hash(back) == hash(lazy[0])
        assert copy.copy(lazy[1]).derived == ()
        assert [i.derived for i in lazy] == [i.derived for i in eager]
        assert [set(i.derived) for i in lazy] == [{"sum", "energy"}, set(), {"sign"}]
        assert "derived=('sign',)" in repr(lazy[2])
        # a lazy info outlives the states it compared (the bus moved on, states dropped)
        info = bus.commit(_row(2, 5.0))
        for k in range(3):
            bus.commit(_row(3 + k, 1.0))
        assert set(info.derived) == {"sum", "energy"}
    # a subscriber of pages the commit cannot recompute does not wait for propagation
    with mm.Bus.open(tmp_path / "subs", graph=_graph(), sync="never") as bus:
        seen = []
        bus.subscribe("sign", lambda info, st: seen.append(info.seq))
        info = bus.commit(_row(1, 3.0))  # recomputes sum and energy, never sign
        assert "derived" not in info.__dict__ and seen == []
        bus.commit([mm.Delta.full("c", c[1])])
        assert seen == [2]
    # built by hand (as a Follower does), derived is a plain field with its default
    assert mm.CommitInfo(seq=1, bytes_logged=0, pages=("a",)).derived == ()
    assert mm.CommitInfo(1, 0, ("a",), ("sum",)).derived == ("sum",)


@pytest.mark.parametrize("donate", [False, True])
def test_a_donating_bus_with_a_graph_reports_derived_pages(tmp_path, donate):
    # the epochs compared are read before the commit donates them (it used to read them
    # after, from deleted buffers, and fail with the state's buffers already donated)
    c = [np.array([1, 2, 3, 4], np.int32), np.array([1, 200, 3, 4], np.int32)]
    with mm.Bus.open(tmp_path, graph=_graph(), sync="never", donate=donate) as bus:
        assert set(bus.commit(_row(1, 3.0)).derived) == {"sum", "energy"}
        infos = bus.commit_many([[mm.Delta.full("c", c[k % 2])] for k in range(4)])
        assert [i.derived for i in infos] == [(), ("sign",), ("sign",), ("sign",)]
        infos = bus.commit_many([_row(k, 1.0) for k in range(3)])
        assert all(set(i.derived) == {"sum", "energy"} for i in infos)
        assert int(bus.state.epochs["sign"]) == 3 and bus.seq == 8
