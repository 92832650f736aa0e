"""The seed's cost formulas and the telemetry cost fed from a real Bus."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax import utility as mu
from mmsb_jax.runtime.bus import Bus

MIB = 1 << 20


def test_seed_cost_numbers():
    # issue 8 / the seed's test_layer6_utility.jl
    assert float(mu.cache_cost(25, 75)) == 250.0  # 1000 * 25 / (25 + 75)
    assert float(mu.cache_cost(0, 0)) == 0.0
    assert float(mu.memory_cost(4 * MIB, 100)) == pytest.approx(4.0)  # 100 * 4 MiB / 100
    assert float(mu.memory_cost(123, 0)) == 0.0
    assert float(mu.latency_cost(10_000, 10)) == pytest.approx(10.0)  # 10 * 1 ms
    assert float(mu.latency_cost(5, 0)) == 0.0
    u = mu.cost_utility((0.2, 4.0, 100.0), (1.0, 0.5, 2.0))
    assert u == np.float32(-202.2)  # -(0.2*1 + 4.0*0.5 + 100*2)
    assert float(mu.cost_utility(mu.CostComponents(0.2, 4.0, 100.0, 10.0))) == pytest.approx(
        -202.2)  # the seed's default weights are (1, 0.5, 2)
    assert mu.SEED_WEIGHTS == mu.CostWeights(1.0, 0.5, 2.0)
    assert float(mu.cost_utility((100.0, 50.0, 200.0), (1.0, 0.5, 2.0))) == -(100 + 25 + 400)


def test_costs_from_counters_is_the_seed_from_telemetry():
    c = mu.costs_from_counters(cache_misses=25, cache_hits=75, bytes_allocated=4 * MIB,
                               allocations=100, latency_us=10_000, ops=10, elapsed_s=2.0)
    np.testing.assert_allclose([float(v) for v in c], [250.0, 4.0, 10.0, 50.0], rtol=1e-6)
    assert float(mu.cost_utility(c)) == pytest.approx(-(250 + 2 + 20), rel=1e-6)
    empty = mu.costs_from_counters()
    assert [float(v) for v in empty] == [0.0, 0.0, 0.0, 0.0]


@settings(max_examples=30, deadline=None)
@given(m=st.integers(0, 10**6), h=st.integers(0, 10**6))
def test_cache_cost_is_the_miss_rate_times_k(m, h):
    expect = 0.0 if m + h == 0 else 1000.0 * m / (m + h)
    assert float(mu.cache_cost(m, h)) == pytest.approx(expect, rel=1e-5, abs=1e-4)
    assert 0.0 <= float(mu.cache_cost(m, h, k=1.0)) <= 1.0


def test_costs_are_jittable_batched_and_differentiable():
    misses = jnp.asarray([25, 0, 10], jnp.float32)
    hits = jnp.asarray([75, 0, 30], jnp.float32)
    batched = jax.jit(mu.cache_cost)(misses, hits)
    np.testing.assert_allclose(batched, [250.0, 0.0, 250.0])
    costs = jnp.asarray([0.2, 4.0, 100.0])
    g = jax.grad(lambda c: mu.cost_utility(c))(costs)
    np.testing.assert_allclose(g, [-1.0, -0.5, -2.0])
    gw = jax.grad(lambda w: mu.cost_utility((0.2, 4.0, 100.0), (w, 0.5, 2.0)))(1.0)
    assert float(gw) == pytest.approx(-0.2)
    gm = jax.grad(lambda m: mu.cache_cost(m, 75.0))(25.0)
    assert float(gm) == pytest.approx(1000.0 * 75 / 100**2)


def test_cost_errors():
    with pytest.raises(errors.DomainError):
        mu.cache_cost(-1, 3)
    with pytest.raises(errors.DomainError):
        mu.latency_cost(float("inf"), 3)
    with pytest.raises(errors.OptionError):
        mu.cost_utility((1.0, 2.0))
    with pytest.raises(errors.OptionError):
        mu.cost_utility((1.0, 2.0, 3.0), (1.0, 2.0))
    with pytest.raises(errors.DomainError):
        mu.cost_utility((1.0, 2.0, 3.0), (1.0, float("nan"), 2.0))


# -- telemetry --------------------------------------------------------------------------------

SCHEMA = mm.Schema([mm.PageSpec("x", (8, 4)), mm.PageSpec("raw", (32,), "uint8")])


def _commit(bus: Bus, k: int) -> None:
    rng = np.random.default_rng(k)
    bus.commit([mm.Delta.rows("x", np.asarray([k % 8], np.int32),
                              rng.normal(size=(1, 4)).astype(np.float32))])


def test_telemetry_cost_from_a_real_bus(tmp_path):
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as bus:
        for k in range(3):
            _commit(bus, k)
        m = bus.metrics()
        costs = mu.telemetry_costs(m)
        assert costs.latency_ms == pytest.approx(m["latency"]["commit"]["mean_s"] * 1000)
        assert costs.mib_logged == pytest.approx(m["bytes_logged"] / MIB)
        assert m["bytes_logged"] > 0
        # page memory as the bus reports it equals the pages' bytes
        assert costs.memory_mib == pytest.approx((8 * 4 * 4 + 32) / MIB)
        w = mu.TelemetryWeights(2.0, 1.0, 0.5)
        expect = 2.0 * costs.latency_ms + costs.mib_logged + 0.5 * costs.memory_mib
        assert mu.telemetry_cost(m, w) == pytest.approx(expect)
        # the utility reads bus.metrics() on every call: more log traffic, lower utility
        u = mu.telemetry_utility(bus.metrics, weights=(0.0, 1.0, 0.0)) + mu.page_sum("x")
        before = float(u(bus.state)) - float(mu.page_sum("x")(bus.state))
        for k in range(3, 6):
            _commit(bus, k)
        after = float(u(bus.state)) - float(mu.page_sum("x")(bus.state))
        assert after < before < 0
        assert after == pytest.approx(-bus.metrics()["bytes_logged"] / MIB, rel=1e-5)


def test_telemetry_from_plain_dicts():
    flat = {"commit_latency_s": 0.002, "bytes_logged": 3 * MIB, "page_bytes": MIB}
    assert mu.telemetry_costs(flat) == mu.TelemetryCosts(2.0, 3.0, 1.0)
    assert mu.telemetry_cost(flat) == pytest.approx(2.0 * 2.0 + 3.0 + 0.5)
    hist = {"commit_latency_s": {"sum_s": 0.03, "count": 10}, "bytes_logged": 0,
            "page_bytes": {"cpu:0": MIB, "cpu:1": MIB}}
    assert mu.telemetry_costs(hist) == mu.TelemetryCosts(3.0, 0.0, 2.0)
    no_mem = {"commit_latency_s": 0.0, "bytes_logged": 0}
    state = mm.init_state(SCHEMA)
    assert mu.telemetry_costs(no_mem, state).memory_mib == pytest.approx((128 + 32) / MIB)
    u = mu.telemetry_utility(no_mem)
    assert float(u(state)) == pytest.approx(-0.5 * (128 + 32) / MIB, rel=1e-5)
    assert float(jax.jit(u)(state)) == pytest.approx(float(u(state)), rel=1e-6)


def test_telemetry_errors():
    with pytest.raises(errors.OptionError):
        mu.telemetry_costs({"bytes_logged": 0, "page_bytes": 0})  # no latency
    with pytest.raises(errors.OptionError):
        mu.telemetry_costs({"commit_latency_s": 0.1, "page_bytes": 0})  # no bytes_logged
    with pytest.raises(errors.OptionError):
        mu.telemetry_costs({"commit_latency_s": 0.1, "bytes_logged": 0})  # no memory, no state
    with pytest.raises(errors.OptionError):
        mu.telemetry_costs({"commit_latency_s": "fast", "bytes_logged": 0, "page_bytes": 0})
    with pytest.raises(errors.OptionError):
        mu.telemetry_costs({"commit_latency_s": {"buckets": {}}, "bytes_logged": 0,
                            "page_bytes": 0})
    with pytest.raises(errors.DomainError):
        mu.telemetry_costs({"commit_latency_s": -1.0, "bytes_logged": 0, "page_bytes": 0})
    with pytest.raises(errors.OptionError):
        mu.telemetry_costs([("bytes_logged", 0)])
    with pytest.raises(errors.OptionError):
        mu.telemetry_utility(42)
    with pytest.raises(errors.OptionError):
        mu.telemetry_utility({}, weights=(1.0, 2.0))
