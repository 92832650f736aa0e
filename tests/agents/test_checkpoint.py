"""Agent checkpoints through Orbax: params, optimiser state and bus State round trip."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
import mmsb_jax.agents as ag
from mmsb_jax.errors import OptionError, StoreError, UnknownSeqError


def test_round_trip_restores_identical_arrays(tmp_path, short_trained):
    agent, out = short_trained
    with ag.AgentCheckpointer(tmp_path / "ckpt", keep=2) as ckpt:
        ckpt.save(7, params=agent.params, opt_state=agent.opt_state, bus_state=out.env_state,
                  metadata={"timesteps": 20_000, "env": "CartPole-v1"})
        assert ckpt.steps() == [7]
    with ag.AgentCheckpointer(tmp_path / "ckpt") as ckpt:
        restored = ckpt.restore(params_like=agent.params, opt_state_like=agent.opt_state)
    assert restored.step == 7 and restored.metadata == {"timesteps": 20_000,
                                                        "env": "CartPole-v1"}
    chex.assert_trees_all_equal(restored.params, agent.params)
    chex.assert_trees_all_equal(restored.opt_state, agent.opt_state)
    assert isinstance(restored.bus_state, mm.State)
    assert restored.bus_state.names == out.env_state.names
    chex.assert_trees_all_equal(restored.bus_state, out.env_state)
    # the restored parameters act exactly like the saved ones
    obs = out.env_state.pages["obs"][0]
    saved_params = agent.params
    agent.params = restored.params
    try:
        logits = agent.logits(obs)
    finally:
        agent.params = saved_params
    np.testing.assert_array_equal(logits, agent.logits(obs))


def test_partial_checkpoints_and_retention(tmp_path):
    state = mm.apply(mm.init_state(mm.Schema([mm.PageSpec("x", (3,), "int32"),
                                              mm.PageSpec("empty", (0,), "float32")])),
                     mm.Delta.full("x", jnp.arange(3, dtype=jnp.int32)))
    with ag.AgentCheckpointer(tmp_path, keep=2) as ckpt:
        for step in range(4):
            ckpt.save(step, bus_state=state, metadata={"step": step})
        assert ckpt.steps() == [2, 3]
        r = ckpt.restore()
        assert r.step == 3 and r.params is None and r.opt_state is None
        assert r.bus_state.pages["x"].tolist() == [0, 1, 2]
        assert int(r.bus_state.epochs["x"]) == 1 and r.bus_state.pages["empty"].shape == (0,)
        ckpt.save(3, params={"w": jnp.ones(2)})       # overwriting a step
        r = ckpt.restore(3, params_like={"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
        assert r.params["w"].tolist() == [1.0, 1.0] and r.bus_state is None
        assert ckpt.restore(2).metadata == {"step": 2}


def test_checkpoint_bad_inputs(tmp_path):
    with ag.AgentCheckpointer(tmp_path) as ckpt:
        with pytest.raises(UnknownSeqError):
            ckpt.restore()
        with pytest.raises(OptionError, match="nothing"):
            ckpt.save(0)
        with pytest.raises(OptionError, match="step"):
            ckpt.save(-1, params={"w": jnp.ones(1)})
        with pytest.raises(OptionError, match="State"):
            ckpt.save(0, bus_state={"x": jnp.ones(1)})
        ckpt.save(0, params={"w": jnp.ones(1)})
        with pytest.raises(UnknownSeqError, match="step 5"):
            ckpt.restore(5)
        assert ckpt.steps() == [0]
    with pytest.raises(StoreError):
        ckpt.save(1, params={"w": jnp.ones(1)})
    with pytest.raises(OptionError):
        ag.AgentCheckpointer(tmp_path, keep=0)
