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
