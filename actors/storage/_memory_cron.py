"""The memory core's cron block (issue 15): registered entries and their fire CAS.

Rules of this module: those of `memory` and of the contract's cron block (`_base_cron`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from . import base as b
from ._memory_state import _MemoryState

__all__ = ["_MemoryCron"]


class _MemoryCron(_MemoryState):
    """Register, fire (compare-and-set), list and pause cron entries."""

    #: Enqueue as `EnqueueJobs` does (`MemoryStorageCore` provides it).
    _enqueue: Callable[[b.EnqueueJobs, float], b.EnqueueReply]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._crons: dict[str, b.CronState] = {}

    def _cron_register(self, cmd: b.CronRegister, now: float) -> b.CronRegisterReply:
        table = self._crons
        changed: list[str] = []
        states: list[b.CronState] = []
        for entry in cmd.entries:
            old = table.get(entry.name)
            if old is None:
                state = b.CronState(entry.name, entry.definition, cmd.node, now,
                                    math.floor(now), False, None)
            else:
                if old.definition != entry.definition:
                    changed.append(entry.name)
                state = attrs.evolve(old, definition=entry.definition, node=cmd.node,
                                     registered_at=now)
            table[entry.name] = state
            states.append(state)
        given = {entry.name for entry in cmd.entries}
        unknown = tuple(sorted(name for name in table if name not in given))
        return b.CronRegisterReply(tuple(states), tuple(changed), unknown)

    def _cron_fire(self, cmd: b.CronFire, now: float) -> b.CronFireReply:
        table = self._crons
        state = table.get(cmd.name)
        if state is None:
            return b.CronFireReply(b.CRON_MISSING, None, (), now)
        if cmd.tick > now:
            return b.CronFireReply(b.CRON_EARLY, state.last_tick, (), now)
        if state.last_tick != cmd.expected and not self.fire_without_cas:
            return b.CronFireReply(b.CRON_STALE, state.last_tick, (), now)
        if state.paused:
            table[cmd.name] = attrs.evolve(state, last_tick=cmd.tick)
            return b.CronFireReply(b.CRON_PAUSED, cmd.tick, (), now)
        ids = self._enqueue(b.EnqueueJobs(cmd.jobs), now).ids if cmd.jobs else ()
        table[cmd.name] = attrs.evolve(state, last_tick=cmd.tick,
                                       last_job=ids[-1] if ids else state.last_job)
        return b.CronFireReply(b.CRON_FIRED, cmd.tick, ids, now)

    def _cron_list(self) -> b.CronListReply:
        table = self._crons
        return b.CronListReply(tuple(table[name] for name in sorted(table)))

    def _cron_pause(self, cmd: b.CronSetPaused) -> b.CronSetPausedReply:
        table = self._crons
        state = table.get(cmd.name)
        if state is None:
            return b.CronSetPausedReply(False)
        table[cmd.name] = attrs.evolve(state, paused=cmd.paused)
        return b.CronSetPausedReply(True)
