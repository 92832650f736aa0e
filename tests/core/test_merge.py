"""Duplicate resolution for ``set`` rows: the hashed, sorted and scatter-max paths agree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb_jax.core import _merge
from mmsb_jax.core._merge import hashed_winning_rows, sorted_winning_rows, winning_rows


def reference(indices: np.ndarray, n: int) -> np.ndarray:
    """Slot i keeps its row iff it is the row's last in-range occurrence; else ``n``."""
    out = np.full(indices.shape, n, np.int32)
    seen = set()
    for i in range(len(indices) - 1, -1, -1):
        r = int(indices[i])
        if 0 <= r < n and r not in seen:
            out[i] = r
            seen.add(r)
    return out


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_winning_rows_equals_last_occurrence_on_every_path(data):
    k = data.draw(st.sampled_from([1, 2, 31, 300]))  # few shapes: each one compiles
    n = data.draw(st.sampled_from([7, 64, 5000, 1 << 16, 1 << 20]))
    spread = data.draw(st.sampled_from([3, 50, n]))  # few distinct rows .. mostly distinct
    seed = data.draw(st.integers(0, 2**31 - 1))
    idx = np.random.default_rng(seed).integers(-1, min(spread, n), k).astype(np.int32)
    want = reference(idx, n)
    got = np.asarray(jax.jit(winning_rows, static_argnums=1)(jnp.asarray(idx), n))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(sorted_winning_rows(jnp.asarray(idx), n)), want)
    if _merge._packs(k, n):
        rows, unresolved = hashed_winning_rows(jnp.asarray(idx), n)
        if not bool(unresolved):
            np.testing.assert_array_equal(np.asarray(rows), want)


def test_hashing_resolves_typical_deltas_without_the_sort():
    rng = np.random.default_rng(0)
    n = 1 << 20
    for _ in range(20):
        idx = jnp.asarray(rng.integers(-1, n, 1000).astype(np.int32))
        rows, unresolved = jax.jit(hashed_winning_rows, static_argnums=1)(idx, n)
        assert not bool(unresolved)
        np.testing.assert_array_equal(np.asarray(rows), reference(np.asarray(idx), n))


def test_all_rows_in_one_bucket_fall_back_to_the_sort(monkeypatch):
    # multiplier 0 hashes every row to bucket 0: three rounds resolve three rows only
    monkeypatch.setattr(_merge, "_HASH_MULTIPLIERS", (0, 0, 0))
    idx = np.random.default_rng(1).integers(0, 40, 100).astype(np.int32)
    n = 1 << 16
    _, unresolved = hashed_winning_rows(jnp.asarray(idx), n)
    assert bool(unresolved)
    got = jax.jit(lambda i: winning_rows(i, n))(jnp.asarray(idx))
    np.testing.assert_array_equal(np.asarray(got), reference(idx, n))


@pytest.mark.parametrize("n", [1 << 16, 50])  # hashed path / scatter-max path
def test_vmapped_winning_rows(n):
    idx = np.random.default_rng(2).integers(-1, 30, (5, 64)).astype(np.int32)
    got = jax.vmap(lambda i: winning_rows(i, n))(jnp.asarray(idx))
    np.testing.assert_array_equal(np.asarray(got), np.stack([reference(i, n) for i in idx]))


def test_winning_rows_compiles_once_per_shape():
    n = 1 << 16
    fn = jax.jit(lambda i: winning_rows(i, n))
    rng = np.random.default_rng(3)
    for _ in range(4):
        fn(jnp.asarray(rng.integers(-1, n, 128).astype(np.int32))).block_until_ready()
    assert fn._cache_size() == 1
