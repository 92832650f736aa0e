"""The seed's API on byte pages."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax import compat, errors
from mmsb_jax.store import seed


def test_seed_readme_example(tmp_path):
    state = compat.mmsb_start(enable_gpu=False)
    page = compat.create_page(state, size=1024, location=":cpu")
    assert page.id == 1
    data = np.random.default_rng(0).integers(0, 256, 1024, dtype=np.uint8)
    assert compat.update_page(state, page.id, data)
    np.testing.assert_array_equal(compat.query_page(state, page.id), data)
    assert compat.query_page(state, page).dtype == np.uint8
    second = compat.create_page(state, size=16, location="cpu")
    assert second.id == 2
    ckpt = tmp_path / "state.mmsb"
    compat.mmsb_stop(state, checkpoint_path=ckpt)
    snap = seed.read_seed_snapshot(ckpt)
    assert [p.page_id for p in snap.pages] == [1, 2]
    np.testing.assert_array_equal(snap.pages[0].data, data)
    assert snap.pages[0].epoch == 1 and snap.pages[1].epoch == 0
    with pytest.raises(errors.MMSBError):
        compat.update_page(state, page, data)


def test_ids_start_at_one_per_state():
    a, b = compat.mmsb_start(), compat.mmsb_start()
    assert compat.create_page(a, size=4).id == 1
    assert compat.create_page(a, size=4).id == 2
    assert compat.create_page(b, size=4).id == 1


def test_identical_bytes_change_nothing_and_partial_changes_are_masked():
    state = compat.mmsb_start()
    page = compat.create_page(state, size=8)
    assert not compat.update_page(state, page, bytes(8))
    assert compat.page_epoch(state, page) == 0
    assert compat.update_page(state, page, bytes([0, 0, 5, 0, 0, 0, 0, 9]))
    assert compat.page_epoch(state, page) == 1
    assert not compat.update_page(state, page, bytes([0, 0, 5, 0, 0, 0, 0, 9]))
    assert compat.page_epoch(state, page) == 1
    assert compat.query_page(state, page).tolist() == [0, 0, 5, 0, 0, 0, 0, 9]


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda s, p: compat.update_page(s, p, bytes(7)), errors.ShapeError),
        (lambda s, p: compat.update_page(s, p, np.full(8, 300)), errors.DTypeError),
        (lambda s, p: compat.update_page(s, p, np.ones(8, np.float32)), errors.DTypeError),
        (lambda s, p: compat.update_page(s, 99, bytes(8)), errors.UnknownPageError),
        (lambda s, p: compat.query_page(s, 0), errors.UnknownPageError),
        (lambda s, p: compat.create_page(s, size=0), errors.ShapeError),
        (lambda s, p: compat.create_page(s, size=4, location="tape"), errors.MMSBError),
    ],
)
def test_bad_input_raises_and_changes_nothing(call, exc):
    state = compat.mmsb_start()
    page = compat.create_page(state, size=8)
    compat.update_page(state, page, bytes(range(8)))
    with pytest.raises(exc):
        call(state, page)
    assert compat.query_page(state, page).tolist() == list(range(8))
    assert compat.page_epoch(state, page) == 1


def test_gpu_location_uses_a_gpu_or_raises_clearly():
    state = compat.mmsb_start(enable_gpu=True)
    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        page = compat.create_page(state, size=8, location="gpu")
        assert state.state.pages[f"page_{page.id}"].devices().pop().platform == "gpu"
    else:
        with pytest.raises(errors.DeviceUnavailableError, match="no GPU"):
            compat.create_page(state, size=8, location=":gpu")
        assert state.pages == {}


def test_huge_page_is_a_typed_error_and_ids_stay_dense():
    state = compat.mmsb_start()
    with pytest.raises(errors.ShapeError, match="cannot allocate"):
        compat.create_page(state, size=2**62)
    assert compat.create_page(state, size=4).id == 1


def test_update_page_equals_the_masked_delta_and_survives_a_replaced_state():
    """The host-mirror fast path gives the bits and epoch of the masked ``set`` delta."""
    st = compat.mmsb_start()
    pg = compat.create_page(st, size=64)
    rng = np.random.default_rng(5)
    ref = st.state
    for _ in range(5):
        new = rng.integers(0, 256, 64, dtype=np.uint8)
        new[:32] = compat.query_page(st, pg)[:32]  # half the bytes unchanged
        changed = np.asarray(ref.pages["page_1"]) != new
        ref = mm.apply(ref, mm.Delta.masked("page_1", changed, new, "set"))
        assert compat.update_page(st, pg, new)
        np.testing.assert_array_equal(np.asarray(st.state.pages["page_1"]),
                                      np.asarray(ref.pages["page_1"]))
        assert compat.page_epoch(st, pg) == int(ref.epochs["page_1"])
    # a caller replacing the State by hand: the host copy is refreshed, not trusted
    st.state = mm.apply(st.state, mm.Delta.full("page_1", np.full(64, 7, np.uint8)))
    np.testing.assert_array_equal(compat.query_page(st, pg), np.full(64, 7, np.uint8))
    assert compat.page_epoch(st, pg) == 6
    assert not compat.update_page(st, pg, np.full(64, 7, np.uint8))


def test_updates_are_written_back_at_the_next_state_read():
    """update_page writes the host copy; reading ``state.state`` uploads once, all updates in."""
    st = compat.mmsb_start()
    a, b = compat.create_page(st, size=32), compat.create_page(st, size=8)
    assert compat.update_page(st, b, np.arange(8, dtype=np.uint8))
    before = st.state
    rng = np.random.default_rng(1)
    last = None
    for _ in range(4):
        last = rng.integers(0, 256, 32, dtype=np.uint8)
        assert compat.update_page(st, a, last)
    assert compat.page_epoch(st, a) == 4
    np.testing.assert_array_equal(compat.query_page(st, a), last)
    assert st._dirty == {"page_1"}  # not uploaded yet: nothing read the device State
    now = st.state
    assert not st._dirty
    np.testing.assert_array_equal(np.asarray(now.pages["page_1"]), last)
    assert int(now.epochs["page_1"]) == 4
    assert now.pages["page_2"] is before.pages["page_2"]  # untouched pages are shared
    assert st.state is now  # a second read uploads nothing
    # an assigned State supersedes updates not yet read
    assert compat.update_page(st, a, np.zeros(32, np.uint8))
    st.state = before
    np.testing.assert_array_equal(compat.query_page(st, a), np.zeros(32, np.uint8))
    assert compat.page_epoch(st, a) == 0


def test_write_back_compiles_once():
    st = compat.mmsb_start()
    pg = compat.create_page(st, size=16)
    rng = np.random.default_rng(2)
    compat.update_page(st, pg, rng.integers(0, 256, 16, dtype=np.uint8))
    _ = st.state
    writer = compat._writer(st.state.pages["page_1"].sharding)
    size = writer._cache_size()  # other tests' page sizes are in the shared cache too
    for _ in range(5):
        compat.update_page(st, pg, rng.integers(0, 256, 16, dtype=np.uint8))
        _ = st.state
    assert writer._cache_size() == size
    assert int(st.state.epochs["page_1"]) == 6
