"""Agents subscribed on a Bus react to commits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
import mmsb_jax.agents as ag
from mmsb_jax.errors import DTypeError, OptionError, ShapeError, UnknownPageError
from mmsb_jax.runtime import Bus

SCHEMA = mm.Schema([mm.PageSpec("obs", (4,), "float32"), mm.PageSpec("action", (), "int32"),
                    mm.PageSpec("log", (8,), "float32"), mm.PageSpec("wide", (2,), "int32"),
                    mm.PageSpec("real", (), "float32")])


def rules():
    return ag.SymbolicAgent([(lambda o, s: o[2] > 0, 1)], num_actions=2)


def commit_obs(bus, theta):
    return bus.commit(mm.Delta.full("obs", jnp.array([0.0, 0.0, theta, 0.0], jnp.float32)))


def test_agent_reacts_to_commits_and_writes_actions(tmp_path):
    seen = []
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as bus:
        sub = ag.subscribe_agent(bus, rules(), "obs", action_page="action",
                                 on_action=lambda e, s: seen.append(e))
        info = commit_obs(bus, 0.2)
        assert int(bus.read("action")) == 1
        assert sub.events[0].seq == info.seq and sub.events[0].action_seq == info.seq + 1
        commit_obs(bus, -0.2)
        assert int(bus.read("action")) == 0
        # commits that do not touch the watched page are ignored
        bus.commit(mm.Delta.full("log", jnp.ones(8, jnp.float32)))
        assert sub.actions == [1, 0] and seen == sub.events
        assert sub._act._cache_size() == 1   # the agent compiled once for the bus State
        # the actions are in the log: time travel shows them
        assert int(bus.at(sub.events[0].action_seq).pages["action"]) == 1
        sub.unsubscribe()
        commit_obs(bus, 0.3)
        assert sub.actions == [1, 0] and int(bus.read("action")) == 0
        assert bus.seq == 6


def test_observe_from_several_pages_and_record_only(tmp_path):
    learned = ag.RandomAgent(2)
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as bus:
        with ag.subscribe_agent(bus, learned, ("obs", "log"), key=jax.random.key(3),
                                observe=lambda s: jnp.concatenate([s.pages["obs"],
                                                                   s.pages["log"]])) as sub:
            for i in range(6):
                commit_obs(bus, float(i))
            assert bus.seq == 6   # no action page: nothing committed back
            assert len(sub.actions) == 6 and set(sub.actions) <= {0, 1}
            # the key of commit seq is fold_in(key, seq): reactions are reproducible
            again = [int(learned.act(jax.random.fold_in(jax.random.key(3), e.seq),
                                     None)) for e in sub.events]
            assert again == sub.actions


def test_subscribe_bad_inputs(tmp_path):
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as bus:
        agent = rules()
        with pytest.raises(UnknownPageError):
            ag.subscribe_agent(bus, agent, "nope")
        with pytest.raises(UnknownPageError):
            ag.subscribe_agent(bus, agent, "obs", action_page="nope")
        with pytest.raises(OptionError, match="own actions"):
            ag.subscribe_agent(bus, agent, ("obs", "action"), observe=lambda s: s.pages["obs"],
                               action_page="action")
        with pytest.raises(OptionError, match="observe"):
            ag.subscribe_agent(bus, agent, ("obs", "log"))
        with pytest.raises(OptionError, match="at least one"):
            ag.subscribe_agent(bus, agent, ())
        with pytest.raises(ShapeError):
            ag.subscribe_agent(bus, agent, "obs", action_page="wide")
        with pytest.raises(DTypeError):
            ag.subscribe_agent(bus, agent, "obs", action_page="real")
        assert bus.seq == 0 and np.all(bus.read("action") == 0)
