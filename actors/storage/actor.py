"""The storage actor: one shell for every backend (memory, SQLite, Redis, PostgreSQL).

Rules of this module:
- The shell only receives, executes and sends: `StorageShellCore` (`_shell_core`)
  decides what to answer, push, park and wake; the backend (`_backend.StorageBackend`)
  executes batches of storage commands. The shell drains its inbox in batches; each
  becomes one store batch, and its results one list of effects carried out in order.
- `LeaseWait` is a lease that may wait: parked until jobs may be ready for it (see
  `_parking`), answered empty after `wait_s`. This is the Dispatcher's wake-up: idle
  nodes never busy-poll.
- A backend that runs one batch at a time (`inflight_max == 1`: the memory core) runs
  it inline in the loop: no task, no thread, no checkpoint per command. Others get up to
  `inflight_max` batches in flight, so this node's work on one batch's answers overlaps
  the store's work on the next; results are handled in submission order.
- A shared store's events (`next_events`) are read by a task of the actor and fed back
  into its inbox, so they are handled in order with the commands.
- A reply that cannot be sent (too big for the wire, say) is answered with that error;
  a caller that went away is not answered (a parked lease's jobs then expire and are
  requeued by the Reaper: nothing is lost). A push that cannot go loses its watch
  (`StorageShellCore.lost`); a cancel push is a fast path only, the next heartbeat
  answer carries the same request. An unexpected exception crashes the actor; its
  supervisor restarts it around the same core or store, where the queue state lives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, assert_never

import attrs
import trio

from gotask.runtime import ActorContext, Envelope

from ._backend import (
    EXPECTED_ERRORS,
    JOB_OVERHEAD_BYTES,
    LEASE_REPLY_BYTES_MAX,
    InlineBackend,
    StorageBackend,
    Submitted,
)
from ._shell_core import Answer, Batch, Effect, Push, Refuse, StorageShellCore
from .base import StorageCore

__all__ = ["JOB_OVERHEAD_BYTES", "LEASE_REPLY_BYTES_MAX", "run_storage"]

_Core = StorageShellCore[Envelope]


def _set_event() -> trio.Event:
    event = trio.Event()
    event.set()
    return event


async def run_storage(
    ctx: ActorContext,
    core: StorageCore | None = None,
    *,
    backend: StorageBackend | None = None,
    clock: Callable[[], float] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve storage commands from the inbox with `core` or `backend`.

    Args:
        core: a pure storage core, run inline; kept across restarts by whoever passed it.
        backend: a store to run commands on, when no `core` is given.
        clock: the storage clock (seconds) for a backend without its own; the node's
            World wall clock by default.
    """
    if backend is None:
        if core is None:
            raise TypeError("run_storage needs a core or a backend")
        backend = InlineBackend(core)
    shell: _Core = StorageShellCore(ctx.node.name, shared=backend.shared)
    read_clock = None if backend.own_clock else (clock or ctx.node.world.wall)
    async with trio.open_nursery() as nursery:
        if backend.shared:
            nursery.start_soon(_pump_events, ctx, backend)
        task_status.started()
        if backend.inflight_max <= 1:
            await _serve_inline(ctx, shell, backend, read_clock)
        else:
            await _serve_pipelined(ctx, shell, backend, read_clock, nursery)


async def _pump_events(ctx: ActorContext, backend: StorageBackend) -> None:
    while True:
        events = await backend.next_events()
        await ctx.send(ctx.address, events)


def _arrived(envs: list[Envelope]) -> list[tuple[Envelope, Any]]:
    return [(env, env.msg) for env in envs]


async def _serve_inline(ctx: ActorContext, shell: _Core, backend: StorageBackend,
                        clock: Callable[[], float] | None) -> None:
    while True:
        envs = await ctx.receive_until(shell.next_wakeup())
        batch = shell.plan(_arrived(envs), trio.current_time())
        while True:
            await _carry_out(ctx, shell, batch.effects)
            if not batch.cmds:
                break
            results = await backend.submit(batch.cmds, None if clock is None else clock()).wait()
            await _carry_out(ctx, shell, shell.settle(batch, results, trio.current_time()))
            if not shell.busy():
                break
            batch = shell.plan((), trio.current_time())


async def _serve_pipelined(ctx: ActorContext, shell: _Core, backend: StorageBackend,
                           clock: Callable[[], float] | None,
                           nursery: trio.Nursery) -> None:
    pipe = _Pipe(ctx, shell, trio.Semaphore(backend.inflight_max))
    while True:
        envs: list[Envelope] = []
        with trio.CancelScope(deadline=shell.next_wakeup()) as pipe.receiving:
            envs = await ctx.receive_batch()
        batch = shell.plan(_arrived(envs), trio.current_time())
        await _carry_out(ctx, shell, batch.effects)
        if batch.cmds:
            await _acquire(pipe.inflight)
            pending = backend.submit(batch.cmds, None if clock is None else clock())
            previous, pipe.turn = pipe.turn, trio.Event()
            nursery.start_soon(pipe.settle, batch, pending, previous, pipe.turn)


@attrs.define(eq=False)
class _Pipe:
    """The batches in flight, settled in the order they were submitted."""

    ctx: ActorContext
    shell: _Core
    inflight: trio.Semaphore
    turn: trio.Event = attrs.Factory(_set_event)
    receiving: trio.CancelScope = attrs.Factory(trio.CancelScope)  # the wait for a batch

    async def settle(self, batch: Batch[Envelope], pending: Submitted,
                     previous: trio.Event, mine: trio.Event) -> None:
        try:
            results = await pending.wait()
            if not previous.is_set():
                await previous.wait()
            effects = self.shell.settle(batch, results, trio.current_time())
            await _carry_out(self.ctx, self.shell, effects)
            # A lease parked, or follow-ups are due: the wait for a batch ends in time.
            self.receiving.deadline = min(self.receiving.deadline, self.shell.next_wakeup())
        finally:
            mine.set()
            self.inflight.release()


async def _acquire(semaphore: trio.Semaphore) -> None:
    # Without a checkpoint when free: a checkpoint costs a whole scheduling round,
    # milliseconds when the node's workers are busy, on every batch.
    try:
        semaphore.acquire_nowait()
    except trio.WouldBlock:
        await semaphore.acquire()


async def _carry_out(ctx: ActorContext, shell: _Core, effects: list[Effect[Envelope]]) -> None:
    for effect in effects:
        match effect:
            case Answer():
                await _respond(ctx, effect.request, effect.reply)
            case Refuse():
                await _respond(ctx, effect.request, error=effect.error)
            case Push():
                try:
                    ctx.send_nowait(effect.dst, effect.msg)
                except (trio.WouldBlock, trio.BrokenResourceError, LookupError):
                    shell.lost(effect)
            case _:
                assert_never(effect)


async def _respond(ctx: ActorContext, request: Envelope, reply: Any = None,
                   error: Exception | None = None) -> None:
    """Answer `request`: a reply that cannot be sent is answered with that error; a
    caller that went away is not answered."""
    try:
        try:
            if error is None:
                await ctx.reply(request, reply)
                return
        except EXPECTED_ERRORS as exc:
            error = exc
        await ctx.node.reply_error(request, error)
    except (trio.BrokenResourceError, LookupError):
        pass

