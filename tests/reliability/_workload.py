"""Shared deterministic workload for the reliability tests (imported by tests and children).

``txn(seq)`` is the transaction a writer commits as commit ``seq``; ``expected_state(n)`` is
the state after the first ``n`` of them, computed in memory, so a reopened bus can be compared
bit-exactly with the prefix of commits it claims to hold.
"""

from __future__ import annotations

import numpy as np

import mmsb_jax as mm
from mmsb_jax.store.replay import apply_transaction

SCHEMA = mm.Schema([mm.PageSpec("x", (16,), "int32"), mm.PageSpec("f", (8, 4), "float32")])


def txn(seq: int) -> list[mm.Delta]:
    """The deltas of commit ``seq`` (order-sensitive: set, add and mul mixed)."""
    ds = [mm.Delta.rows("x", np.array([seq % 16, (seq * 7) % 16], np.int32),
                        np.array([seq, 1], np.int32), op="add")]
    if seq % 3:
        ds.append(mm.Delta.full("f", np.full((8, 4), seq * 0.5, np.float32), op="add"))
    else:
        ds.append(mm.Delta.masked("f", np.eye(8, 4, dtype=bool),
                                  np.full((8, 4), -seq, np.float32), op="mul"))
    if seq % 5 == 0:
        ds.append(mm.Delta.rows("x", np.array([3], np.int32), np.array([seq], np.int32)))
    return ds


class Expected:
    """Memoised in-memory states after 0, 1, 2, ... commits of :func:`txn`."""

    def __init__(self) -> None:
        self.states = [mm.init_state(SCHEMA)]

    def __call__(self, n: int) -> mm.State:
        while len(self.states) <= n:
            self.states.append(apply_transaction(self.states[-1], txn(len(self.states))))
        return self.states[n]


def assert_state_is(state: mm.State, want: mm.State) -> None:
    """Bit-exact equality of pages and epochs."""
    for name in SCHEMA.names:
        np.testing.assert_array_equal(np.asarray(state.pages[name]), np.asarray(want.pages[name]))
        assert int(state.epochs[name]) == int(want.epochs[name])
