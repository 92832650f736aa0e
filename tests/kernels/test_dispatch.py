"""Backend selection: environment variable, Python setting, fallbacks, GPU routing."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_testutil import assert_same_bits, random_array

import mmsb_jax.kernels as mk
from mmsb_jax.errors import KernelBackendError
from mmsb_jax.kernels import dispatch


def _has_pallas_call(fn, *args) -> bool:
    return "pallas_call" in str(jax.make_jaxpr(fn)(*args))


GPU = dispatch.gpu_present()


def test_default_is_auto_and_auto_is_xla_without_gpu():
    assert mk.get_backend() == "auto"
    assert dispatch.route("merge_rows", None) == ("gpu_or_xla" if GPU else "xla")


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(mk.ENV_VAR, "pallas")
    assert mk.get_backend() == "pallas"
    assert dispatch.route("merge_rows", None) == ("gpu_or_interpret" if GPU else "interpret")
    monkeypatch.setenv(mk.ENV_VAR, " XLA ")
    assert mk.get_backend() == "xla"
    monkeypatch.setenv(mk.ENV_VAR, "triton")
    with pytest.raises(KernelBackendError, match="MMSB_KERNELS"):
        mk.get_backend()


def test_python_setting_overrides_environment(monkeypatch):
    monkeypatch.setenv(mk.ENV_VAR, "xla")
    mk.set_backend("pallas")
    assert mk.get_backend() == "pallas"
    with mk.use_backend("xla"):
        assert mk.get_backend() == "xla"
        with mk.use_backend("auto"):
            assert mk.get_backend() == "auto"
        assert mk.get_backend() == "xla"
    assert mk.get_backend() == "pallas"
    mk.set_backend(None)
    assert mk.get_backend() == "xla"
    assert dispatch.route("merge_rows", None, backend="pallas") == (
        "gpu_or_interpret" if GPU else "interpret")


def test_unknown_backend_names_raise():
    with pytest.raises(KernelBackendError):
        mk.set_backend("gpu")
    with pytest.raises(KernelBackendError):
        mk.use_backend("cuda")
    with pytest.raises(KernelBackendError):
        mk.merge_rows(jnp.zeros(3), jnp.array([0]), jnp.ones(1), backend="fast")
    assert mk.get_backend() == "auto"


def test_setting_selects_the_implementation():
    page, idx, values = jnp.zeros((5, 2)), jnp.array([1, -1]), jnp.ones((2, 2))
    with mk.use_backend("pallas"):
        assert _has_pallas_call(lambda p: mk.merge_rows(p, idx, values), page)
        assert _has_pallas_call(lambda p: mk.masked_merge(p, p > 0, p), page)
        assert _has_pallas_call(lambda p: mk.semiring_matmul("tropical", p, p.T), page)
    with mk.use_backend("xla"):
        assert not _has_pallas_call(lambda p: mk.merge_rows(p, idx, values), page)
    if not GPU:  # auto on a machine without a GPU: nothing of Pallas is even traced
        assert not _has_pallas_call(lambda p: mk.merge_rows(p, idx, values), page)


def test_changing_the_setting_retraces_jitted_functions(rng):
    """The Python setting is part of the jit cache key: no stale compilation is reused."""
    traces = []

    @jax.jit
    def merge(page, idx, values):
        traces.append(mk.get_backend())
        return mk.merge_rows(page, idx, values, "add")

    page = random_array(rng, (7, 2), "float32")
    idx = jnp.asarray(rng.integers(-1, 7, size=4).astype(np.int32))
    values = random_array(rng, (4, 2), "float32")
    with mk.use_backend("xla"):
        xla_out = merge(page, idx, values)
        merge(page, idx, values)
    with mk.use_backend("pallas"):
        pallas_out = merge(page, idx, values)
    assert traces == ["xla", "pallas"]
    assert_same_bits(pallas_out, xla_out)


def test_unsupported_dtype_falls_back_with_debug_log(rng, caplog):
    page = jnp.asarray(rng.normal(size=(6, 2)) + 1j * rng.normal(size=(6, 2))).astype(
        jnp.complex64)
    idx = jnp.array([4, 0, 4], jnp.int32)
    values = (page[:3] * 2).astype(jnp.complex64)
    with caplog.at_level(logging.DEBUG, logger="mmsb_jax.kernels"):
        out = mk.merge_rows(page, idx, values, "set", backend="pallas")
        masked = mk.masked_merge(page, jnp.abs(page) > 1, page * 3, "add", backend="pallas")
    assert_same_bits(out, mk.merge_rows_reference(page, idx, values, "set"))
    assert_same_bits(masked, mk.masked_merge_reference(page, jnp.abs(page) > 1, page * 3, "add"))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("merge_rows" in m and "complex64" in m for m in messages)
    assert any("masked_merge" in m and "complex64" in m for m in messages)
    caplog.clear()
    a = random_array(rng, (3, 4), "float32").astype(jnp.float8_e5m2)
    with caplog.at_level(logging.DEBUG, logger="mmsb_jax.kernels"):
        out = mk.semiring_matmul("tropical", a, a.T, backend="pallas")
    assert_same_bits(out, mk.semiring_matmul_reference("tropical", a, a.T))
    assert any("semiring_matmul" in r.getMessage() and "float8_e5m2" in r.getMessage()
               for r in caplog.records)


def test_custom_xla_functions(rng):
    """``xla=`` replaces the XLA route (``mmsb_jax.core`` passes its own merge / matmul)."""
    calls = []

    def my_merge(page, idx, values, op):
        calls.append(op)
        return mk.merge_rows_reference(page, idx, values, op)

    page = random_array(rng, (5, 2), "float32")
    out = mk.merge_rows(page, jnp.array([2]), jnp.ones((1, 2)), "max", backend="xla",
                        xla=my_merge)
    assert calls == ["max"]
    assert_same_bits(out, mk.merge_rows_reference(page, jnp.array([2]), jnp.ones((1, 2)), "max"))
    seen = []

    def my_matmul(a, b):
        seen.append(a.shape)
        return mk.semiring_matmul_reference("tropical", a, b)

    a = random_array(rng, (2, 3, 4), "float32")
    out = mk.semiring_matmul("tropical", a, a.swapaxes(-1, -2), backend="xla", xla=my_matmul)
    assert seen == [(3, 4)]  # vmapped over the batch
    assert_same_bits(out, mk.semiring_matmul_reference("tropical", a, a.swapaxes(-1, -2)))


def test_gpu_route_lowers_to_triton_for_cuda_and_to_xla_for_cpu(rng, monkeypatch):
    """With a GPU present, ``auto`` stages ``lax.platform_dependent``: lowering for CUDA emits
    the Triton kernel, lowering for the CPU keeps the XLA path (and runs it correctly)."""
    monkeypatch.setattr(dispatch, "gpu_present", lambda: True)
    page = random_array(rng, (37, 3), "float32")
    idx = jnp.asarray(rng.integers(-1, 37, size=8).astype(np.int32))
    values = random_array(rng, (8, 3), "float32")

    def merge(p, i, v):
        return mk.merge_rows(p, i, v, "add")

    assert dispatch.route("merge_rows", None) == "gpu_or_xla"
    cuda = jax.jit(merge).trace(page, idx, values).lower(lowering_platforms=("cuda",))
    assert "triton" in cuda.as_text()
    cpu = jax.jit(merge).trace(page, idx, values).lower(lowering_platforms=("cpu",))
    assert "triton" not in cpu.as_text()
    assert_same_bits(jax.jit(merge)(page, idx, values),
                     mk.merge_rows_reference(page, idx, values, "add"))
    with mk.use_backend("pallas"):
        assert dispatch.route("merge_rows", None) == "gpu_or_interpret"
