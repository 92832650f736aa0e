"""Agents on the Bus: react to commits that touch observed pages.

:func:`subscribe_agent` registers an agent as a :meth:`mmsb_jax.runtime.Bus.subscribe`
callback. After every commit that touches one of the watched pages, the agent reads its
observation from the committed State, picks an action with its jitted ``act`` and, if an action
page is given, commits the action back to the bus as a full ``set`` delta (one transaction,
logged like any other). The action key of commit ``seq`` is ``fold_in(key, seq)``, so replaying
the same commits gives the same actions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.agents._base import Agent
from mmsb_jax.core.delta import Delta
from mmsb_jax.core.pages import State
from mmsb_jax.errors import DTypeError, OptionError, ShapeError, UnknownPageError

__all__ = ["AgentEvent", "AgentSubscription", "subscribe_agent"]


class AgentEvent(NamedTuple):
    """One reaction of a subscribed agent.

    Attributes:
      seq: the commit the agent reacted to.
      action: the action it chose.
      action_seq: the seq of the commit that wrote the action (None without an action page).
    """

    seq: int
    action: int
    action_seq: int | None


class AgentSubscription:
    """A running agent subscription (see :func:`subscribe_agent`).

    Attributes:
      events: the agent's reactions so far, in commit order (:class:`AgentEvent`).
    """

    def __init__(self, bus: Any, agent: Agent, pages: tuple[str, ...],
                 observe: Callable[[State], jax.Array], action_page: str | None,
                 key: jax.Array, greedy: bool,
                 on_action: Callable[[AgentEvent, State], Any] | None):
        self.bus = bus
        self.agent = agent
        self.pages = pages
        self.action_page = action_page
        self._key = key
        self._on_action = on_action
        self._lock = threading.Lock()
        self.events: list[AgentEvent] = []
        self._act = jax.jit(lambda k, s: agent.act(k, observe(s), s, greedy=greedy))
        self._sub = bus.subscribe(pages, self._react)

    def _react(self, info: Any, state: State) -> None:
        action = self._act(jax.random.fold_in(self._key, info.seq), state)
        action_seq = None
        if self.action_page is not None:
            dtype = self.bus.schema[self.action_page].dtype
            action_seq = self.bus.commit(
                Delta.full(self.action_page, jnp.asarray(action, dtype))).seq
        event = AgentEvent(int(info.seq), int(action), action_seq)
        with self._lock:
            self.events.append(event)
        if self._on_action is not None:
            self._on_action(event, state)

    @property
    def actions(self) -> list[int]:
        """The actions chosen so far."""
        with self._lock:
            return [e.action for e in self.events]

    def unsubscribe(self) -> None:
        """Stop reacting (idempotent)."""
        self._sub.unsubscribe()

    close = unsubscribe

    def __enter__(self) -> AgentSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


def subscribe_agent(bus: Any, agent: Agent, pages: str | Iterable[str], *,
                    observe: Callable[[State], jax.Array] | None = None,
                    action_page: str | None = None, key: jax.Array | None = None,
                    greedy: bool = False,
                    on_action: Callable[[AgentEvent, State], Any] | None = None,
                    ) -> AgentSubscription:
    """Let ``agent`` react to every commit on ``bus`` that touches ``pages``.

    Args:
      bus: an open :class:`mmsb_jax.runtime.Bus`.
      agent: the agent; ``agent.act(key, observe(state), state)`` is jitted once.
      pages: the watched page name(s).
      observe: ``State -> obs`` (default: the single watched page).
      action_page: a scalar integer page that receives each action (a new commit); None to
        only record the actions.
      key: base PRNG key (default ``jax.random.key(0)``); commit ``seq`` uses
        ``fold_in(key, seq)``.
      greedy: act greedily.
      on_action: also called as ``on_action(event, state)`` after each reaction.

    Returns:
      An :class:`AgentSubscription`; its ``events`` list the reactions.

    Raises:
      UnknownPageError: a page is not in the bus schema.
      OptionError: no ``observe`` with several pages, or ``action_page`` is watched (the agent
        would react to its own actions forever).
      ShapeError, DTypeError: ``action_page`` is not a scalar integer page.
    """
    names = (pages,) if isinstance(pages, str) else tuple(pages)
    if not names:
        raise OptionError("subscribe_agent needs at least one page to watch")
    for n in names:
        if n not in bus.schema:
            raise UnknownPageError(n, bus.schema.names)
    if observe is None:
        if len(names) != 1:
            raise OptionError("observe= is required when watching several pages")
        watched = names[0]
        observe = lambda state: state.pages[watched]
    if action_page is not None:
        if action_page not in bus.schema:
            raise UnknownPageError(action_page, bus.schema.names)
        if action_page in names:
            raise OptionError(f"action page {action_page!r} is also watched: the agent would "
                              "react to its own actions")
        spec = bus.schema[action_page]
        if spec.shape != ():
            raise ShapeError(f"action page {action_page!r} must be a scalar, has shape "
                             f"{spec.shape}")
        if not np.issubdtype(np.dtype(spec.dtype), np.integer):
            raise DTypeError(f"action page {action_page!r} must be an integer page, is "
                             f"{spec.dtype}")
    key = jax.random.key(0) if key is None else key
    return AgentSubscription(bus, agent, names, observe, action_page, key, bool(greedy),
                             on_action)
