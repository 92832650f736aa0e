"""kernels.row_merge_reference: the packed sort equals the stable argsort it replaces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsb_jax.kernels.row_merge_reference import stable_row_order


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_stable_row_order_equals_stable_argsort(data):
    """Both branches: keys packed with their slot (small ``max_key``) and the plain stable
    argsort (``(max_key + 1) << bits`` past int32); duplicates keep slot order."""
    k = data.draw(st.integers(1, 300))
    max_key = data.draw(st.sampled_from([1, 7, 1000, (1 << 31) // 512 - 1, (1 << 30)]))
    keys = np.asarray(data.draw(st.lists(st.integers(0, min(max_key, 40)) | st.just(max_key),
                                         min_size=k, max_size=k)), np.int32)
    order, skey = jax.jit(stable_row_order, static_argnums=1)(jnp.asarray(keys), max_key)
    want = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(np.asarray(order), want)
    np.testing.assert_array_equal(np.asarray(skey), keys[want])
    assert order.dtype == jnp.int32 and skey.dtype == jnp.int32


def test_stable_row_order_empty_and_vmapped():
    order, skey = stable_row_order(jnp.zeros((0,), jnp.int32), 10)
    assert order.shape == skey.shape == (0,)
    keys = jnp.asarray(np.random.default_rng(0).integers(0, 5, (3, 17)).astype(np.int32))
    order, skey = jax.vmap(lambda x: stable_row_order(x, 4))(keys)
    for i in range(3):
        np.testing.assert_array_equal(order[i], np.argsort(np.asarray(keys[i]), kind="stable"))
