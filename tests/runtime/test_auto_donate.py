"""In-place commits: a bus without a graph donates a page's buffer only when nothing else
holds the State, its page maps or the touched arrays; every State anyone holds stays valid."""

from __future__ import annotations

import importlib
import threading

import jax
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax.runtime import Bus

pipeline = importlib.import_module("mmsb_jax.runtime._pipeline")

SCHEMA = mm.Schema([mm.PageSpec("p", (4096,), "int32"), mm.PageSpec("q", (8,), "int32")])
ROWS = np.arange(0, 64, 4, dtype=np.int32)


def _delta(k: int = 1) -> mm.Delta:
    return mm.Delta.rows("p", ROWS, np.full(16, k, np.int32), op="add")


def _pointer(bus: Bus, name: str = "p") -> int:
    return bus.state.pages[name].unsafe_buffer_pointer()


@pytest.fixture
def bus(tmp_path):
    with Bus.open(tmp_path / "b", SCHEMA, sync="never") as b:
        b.commit(_delta())
        yield b


pytestmark = pytest.mark.skipif(not pipeline.AUTO_DONATE,
                                reason="reference counts are not exact on this interpreter")


def test_a_state_no_one_holds_is_updated_in_place(bus):
    for _ in range(3):
        before = _pointer(bus)
        bus.commit(_delta())
        assert _pointer(bus) == before  # the donated buffer became the new page
    assert bus.read("p")[0] == 4 and bus.read("p")[1] == 0
    q = _pointer(bus, "q")
    bus.commit(_delta())
    assert _pointer(bus, "q") == q  # an untouched page is shared, not copied
    replayed = mm.replay(mm.init_state(SCHEMA), bus.log)
    for name in SCHEMA.names:  # live == replay, bit for bit
        np.testing.assert_array_equal(bus.read(name), np.asarray(replayed.pages[name]))


def _pick(state: mm.State, hold: str):
    if hold == "state":
        return state
    if hold in ("pages", "epochs"):
        return getattr(state, hold)
    return state.epochs["p"] if hold == "epoch" else state.pages["p"]


@pytest.mark.parametrize("hold", ["state", "pages", "epochs", "page", "epoch", "delta_value"])
def test_anything_held_keeps_its_pages(bus, hold):
    held = _pick(bus.state, hold)  # the only reference left to the previous State's part
    expect_p = bus.read("p")
    expect_epoch = int(bus.state.epochs["p"])
    if hold == "delta_value":  # a delta whose values are the page itself (held by the call)
        bus.commit(mm.Delta.full("p", held, op="add"))
    else:
        bus.commit(_delta())
    page = {"state": lambda: held.pages["p"], "pages": lambda: held["p"],
            "page": lambda: held, "delta_value": lambda: held}.get(hold, lambda: None)()
    if page is not None:
        assert not page.is_deleted()
        np.testing.assert_array_equal(np.asarray(page), expect_p)
    if hold in ("epochs", "epoch"):
        epoch = held["p"] if hold == "epochs" else held
        assert not epoch.is_deleted() and int(epoch) == expect_epoch
    assert int(bus.state.epochs["p"]) == expect_epoch + 1


def test_a_numpy_view_survives_a_donation(bus):
    view = np.asarray(bus.state.pages["p"])  # zero-copy on CPU; no reference to the Array
    before = view.copy()
    for _ in range(3):
        bus.commit(_delta())
    np.testing.assert_array_equal(view, before)  # XLA refused the donation and copied
    assert bus.read("p")[0] == before[0] + 3


def test_subscribers_and_time_travel_keep_their_states(bus):
    seen: list[mm.State] = []
    sub = bus.subscribe("p", lambda info, state: seen.append(state))
    for k in range(1, 5):
        bus.commit(_delta(k))
    sub.unsubscribe()
    assert [int(np.asarray(s.pages["p"])[0]) for s in seen] == [2, 4, 7, 11]
    at = bus.at(bus.seq)
    bus.commit(_delta())
    assert int(np.asarray(at.pages["p"])[0]) == 11


def test_readers_in_other_threads_never_see_a_deleted_page(bus):
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader():
        while not stop.is_set():
            try:
                s = bus.state
                assert int(np.asarray(s.pages["p"])[0]) >= 1
                bus.read("p")
            except BaseException as e:  # a deleted buffer raises RuntimeError
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(500):
        bus.commit(_delta())
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert bus.read("p")[0] == 501


def test_off_where_reference_counts_cannot_be_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "AUTO_DONATE", False)
    with Bus.open(tmp_path / "b", SCHEMA, sync="never") as bus:
        bus.commit(_delta())
        before = _pointer(bus)
        bus.commit(_delta())
        assert _pointer(bus) != before


def test_a_graph_bus_does_not_donate(tmp_path):
    graph = mm.Graph(SCHEMA).derive("s", "p", lambda p: p.sum())
    with Bus.open(tmp_path / "g", graph=graph, sync="never") as bus:
        bus.commit(_delta())
        before = _pointer(bus)
        bus.commit(_delta())
        assert _pointer(bus) != before and int(bus.state.pages["s"]) == 32


def test_periodic_background_checkpoints_hold_what_was_committed(tmp_path):
    with Bus.open(tmp_path / "c", SCHEMA, sync="never", checkpoint_every=3) as bus:
        for _ in range(12):
            bus.commit(_delta())
        jax.block_until_ready(bus.state)
        for seq in (3, 6, 9, 12):
            assert int(np.asarray(bus.at(seq).pages["p"])[0]) == seq
        assert bus.read("p")[0] == 12
