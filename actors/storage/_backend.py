"""What a storage backend gives the one storage actor shell (`actor.run_storage`).

Every backend (memory, SQLite, Redis, PostgreSQL) runs under the same shell; the shell
and its pure core (`_shell_core`) do the parking of `LeaseWait`s, the watch pushes, the
cutting of lease replies to `LEASE_REPLY_BYTES_MAX`, error answers and cancel pushes.
A backend only executes batches of storage commands, and, when other nodes share its
store, reports what they did.

The protocol (`StorageBackend`):

- `submit(cmds, now) -> Submitted`: start executing `cmds` in order, NOW (before
  returning: the shell relies on submission order when batches overlap), and return a
  handle whose `await wait()` gives one result per command: its reply, or the exception
  it failed with (`ValueError`, `TypeError` or a `GoTaskError`; anything else is a bug
  and crashes the actor). `now` is the storage time the shell read (seconds) when
  `own_clock` is False, else None and the store reads its own clock.
  Two commands exist beside the contract's: a `LeaseJobs` is answered with `Leased`
  (the reply, the storage time it ran at, the next due time in its queues), and a
  `WatchRead` is a `GetJobs` for a watcher (a store with events flags those jobs).
- `shared`: other nodes change the store; then `next_events()` waits for and returns
  what they (and this node) did, as `StorageEvents`, and the shell wakes parked leases,
  refreshes watched jobs and pushes cancellations from them. A store only this actor
  changes (memory, SQLite) is not shared: the shell derives all that from its own
  commands, and `next_events` is never called.
- `own_clock`: see `submit`.
- `inflight_max`: how many batches may be executing at once. 1 runs each batch in the
  shell's own loop (the memory core: `wait()` returns at once, without a checkpoint);
  more overlaps this node's work on one batch's answers with the store's on the next
  (Redis, PostgreSQL on the asyncio thread `_aiothread`).

How the backends run: the memory core inline (`InlineBackend` over a sync
`handle(cmd, now)`); SQLite the same sync `handle` (`run_commands`) in a dedicated
writer thread, one transaction per group of batches (`sqlite`); Redis and PostgreSQL
on the asyncio thread bridge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs

from gotask._errors import GoTaskError

from .base import GetJobs, LeaseJobs, LeaseReply, StorageCore

__all__ = [
    "EXPECTED_ERRORS",
    "JOB_OVERHEAD_BYTES",
    "LEASE_REPLY_BYTES_MAX",
    "Done",
    "InlineBackend",
    "Leased",
    "StorageBackend",
    "StorageEvents",
    "Submitted",
    "WatchRead",
    "run_commands",
]

#: Budget of one lease reply, well under the wire's 1 MiB frame.
LEASE_REPLY_BYTES_MAX = 768 * 1024
#: Estimated encoded bytes of a job beside its arguments.
JOB_OVERHEAD_BYTES = 512
#: The errors a command may fail with; any other exception is a bug.
EXPECTED_ERRORS = (ValueError, TypeError, GoTaskError)


@attrs.frozen
class Leased:
    """A lease's reply, the storage time it ran at, and the next due time in its queues
    (None: nothing scheduled, or the backend does not say)."""

    reply: LeaseReply
    now: float
    next_due: float | None


@attrs.frozen
class WatchRead:
    """`GetJobs` for a watcher: a store with events also flags the jobs watched, so
    that it publishes their ids when they change."""

    ids: tuple[str, ...]


@attrs.frozen
class StorageEvents:
    """What a shared store reported since the last look (storage times in seconds).

    `ids`: jobs that changed (watched ones at least). `ready`: queues that may have
    ready jobs since `now`. `due`: `(queue, due_at)` of jobs that become due by time.
    `cancels`: `(job_id, lease_node, attempt)` of running jobs whose cancellation was
    requested. `resubscribed`: the event stream was lost and made again, so events
    may have been missed.
    """

    now: float | None = None
    ids: frozenset[str] = frozenset()
    ready: frozenset[str] = frozenset()
    due: tuple[tuple[str, float], ...] = ()
    cancels: tuple[tuple[str, str, int], ...] = ()
    resubscribed: bool = False


class Submitted(Protocol):
    """A batch being executed."""

    async def wait(self) -> list[Any]:
        """One result per command: its reply, or the exception it failed with."""
        ...


class StorageBackend(Protocol):
    """A store the storage shell runs commands on; see the module docstring."""

    @property
    def shared(self) -> bool: ...

    @property
    def own_clock(self) -> bool: ...

    @property
    def inflight_max(self) -> int: ...

    def submit(self, cmds: list[Any], now: float | None) -> Submitted:
        """Start executing `cmds` in order; see the module docstring."""
        ...

    async def next_events(self) -> StorageEvents:
        """Wait for what the store's other users did (shared stores only)."""
        ...


@attrs.frozen
class Done:
    """A batch already executed."""

    results: list[Any]

    async def wait(self) -> list[Any]:
        """The results, at once and without a checkpoint."""
        return self.results


def run_commands(core: StorageCore, cmds: list[Any], now: float) -> list[Any]:
    """Run `cmds` on a sync core at storage time `now`, in order: one result per command,
    its reply or its expected error; a `LeaseJobs` answered with `Leased`, a `WatchRead`
    run as `GetJobs`.

    A core with a `next_due()` method (the earliest due time of its scheduled jobs, or
    None) lets parked leases wake when a job becomes due by time alone; without one,
    they wake when a command (the Scheduler's `PromoteDue`) makes jobs ready.
    """
    handle = core.handle
    next_due: Callable[[], float | None] | None = getattr(core, "next_due", None)
    results: list[Any] = []
    for cmd in cmds:
        try:
            if isinstance(cmd, LeaseJobs):
                reply = handle(cmd, now)
                # Only an empty lease parks, so only then is the next due time worth finding.
                due = None if reply.jobs or next_due is None else next_due()
                results.append(Leased(reply, now, due))
            elif isinstance(cmd, WatchRead):
                results.append(handle(GetJobs(cmd.ids), now))
            else:
                results.append(handle(cmd, now))
        except EXPECTED_ERRORS as exc:
            results.append(exc)
    return results


class InlineBackend:
    """A pure core (`handle(cmd, now)`) run in the shell's own loop (`run_commands`)."""

    shared = False
    own_clock = False
    inflight_max = 1

    def __init__(self, core: StorageCore) -> None:
        self.core = core

    def submit(self, cmds: list[Any], now: float | None) -> Done:
        """Execute `cmds` at storage time `now`, at once."""
        assert now is not None
        return Done(run_commands(self.core, cmds, now))

    async def next_events(self) -> StorageEvents:
        """Never called: nobody else changes this store."""
        raise NotImplementedError("an inline store has no events")
