"""One storage command to the method of a synchronous core that handles it.

Rules of this module: the memory core and the SQLite core answer the same commands
with methods of the same names and shapes (`CoreHandlers`); `dispatch` is the one table
from command to method, so the two cores cannot drift apart in what they answer.
"""

from __future__ import annotations

from typing import Never, NoReturn, Protocol

from gotask._job import JobRecord

from . import base as b
from .base import StorageCommand, StorageReply

__all__ = ["CoreHandlers", "dispatch", "unknown"]

_Page = tuple[tuple[JobRecord, ...], str | None]


class CoreHandlers(Protocol):
    """The methods `dispatch` calls; each runs one command at storage time `now`."""

    def _enqueue(self, cmd: b.EnqueueJobs, now: float) -> b.EnqueueReply: ...
    def _lease(self, cmd: b.LeaseJobs, now: float) -> b.LeaseReply: ...
    def _heartbeat(self, cmd: b.Heartbeat, now: float) -> b.HeartbeatReply: ...
    def _ack(self, cmd: b.AckJobs, now: float) -> b.AckReply: ...
    def _nack(self, cmd: b.NackJobs, now: float) -> b.NackReply: ...
    def _release(self, cmd: b.ReleaseJobs, now: float) -> b.ReleaseReply: ...
    def _progress(self, cmd: b.ReportProgress) -> b.ProgressReply: ...
    def _cancel(self, job_id: str, now: float) -> str: ...
    def _get(self, job_id: str) -> JobRecord | None: ...
    def _list(self, queue: str | None, state: str | None, limit: int,
              after_id: str | None, task: str | None = None) -> _Page: ...
    def _list_dead(self, queue: str | None, limit: int, after_id: str | None) -> _Page: ...
    def _counts(self) -> tuple[b.QueueCount, ...]: ...
    def _requeue_expired(self, limit: int, now: float) -> b.RequeueExpiredReply: ...
    def _promote(self, now: float, limit: int) -> int: ...
    def _purge_expired(self, limit: int, now: float) -> int: ...
    def _retry_dead(self, ids: tuple[str, ...] | None, now: float) -> int: ...
    def _purge_dead(self, ids: tuple[str, ...] | None) -> int: ...
    def _register(self, cmd: b.RegisterNode, now: float) -> float: ...
    def _live_nodes(self, now: float) -> tuple[b.NodeInfo, ...]: ...
    def _expire_nodes(self, now: float) -> tuple[str, ...]: ...
    def _cron_register(self, cmd: b.CronRegister, now: float) -> b.CronRegisterReply: ...
    def _cron_fire(self, cmd: b.CronFire, now: float) -> b.CronFireReply: ...
    def _cron_list(self) -> b.CronListReply: ...
    def _cron_pause(self, cmd: b.CronSetPaused) -> b.CronSetPausedReply: ...
    def _set_paused(self, queue: str, paused: bool) -> None: ...
    def _paused(self) -> tuple[str, ...]: ...
    def _ready_since(self) -> tuple[b.QueueReadySince, ...]: ...


def unknown(cmd: Never) -> NoReturn:
    """Refuse what is not a storage command."""
    raise TypeError(f"not a storage command: {type(cmd).__name__}")


def dispatch(core: CoreHandlers, cmd: StorageCommand, now: float) -> StorageReply:
    """Run `cmd` on `core` at storage time `now` and return its reply."""
    match cmd:
        case b.LeaseJobs():
            return core._lease(cmd, now)
        case b.AckJobs():
            return core._ack(cmd, now)
        case b.Heartbeat():
            return core._heartbeat(cmd, now)
        case b.EnqueueJobs():
            return core._enqueue(cmd, now)
        case b.NackJobs():
            return core._nack(cmd, now)
        case b.ReportProgress():
            return core._progress(cmd)
        case b.ReleaseJobs():
            return core._release(cmd, now)
        case b.CancelJobs():
            return b.CancelReply(tuple(core._cancel(job_id, now) for job_id in cmd.ids))
        case b.GetJobs():
            return b.GetJobsReply(tuple(core._get(job_id) for job_id in cmd.ids))
        case b.ListJobs():
            return b.ListJobsReply(*core._list(cmd.queue, cmd.state, cmd.limit, cmd.after_id,
                                               cmd.task))
        case b.CountJobs():
            return b.CountJobsReply(core._counts())
        case b.RequeueExpired():
            return core._requeue_expired(cmd.limit, now)
        case b.PromoteDue():
            return b.PromoteDueReply(core._promote(now, cmd.limit))
        case b.PurgeExpired():
            return b.PurgeExpiredReply(core._purge_expired(cmd.limit, now))
        case b.ListDead():
            return b.ListDeadReply(*core._list_dead(cmd.queue, cmd.limit, cmd.after_id))
        case b.RetryDead():
            return b.RetryDeadReply(core._retry_dead(cmd.ids, now))
        case b.PurgeDead():
            return b.PurgeDeadReply(core._purge_dead(cmd.ids))
        case b.RegisterNode():
            return b.RegisterNodeReply(core._register(cmd, now))
        case b.ListNodes():
            return b.ListNodesReply(core._live_nodes(now))
        case b.ExpireNodes():
            return b.ExpireNodesReply(core._expire_nodes(now))
        # -- cron (issue 15) --
        case b.CronRegister():
            return core._cron_register(cmd, now)
        case b.CronFire():
            return core._cron_fire(cmd, now)
        case b.CronList():
            return core._cron_list()
        case b.CronSetPaused():
            return core._cron_pause(cmd)
        # -- queues (issue 16) --
        case b.SetQueuePaused():
            core._set_paused(cmd.queue, cmd.paused)
            return b.SetQueuePausedReply(core._paused())
        case b.QueueInfo():
            return b.QueueInfoReply(now, core._paused(), core._ready_since())
        case _:
            unknown(cmd)
