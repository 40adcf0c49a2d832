"""What goes into the Broker's core and what comes out: events, effects, translations.

Rules of this module:
- Events (`Received`, `CallDone`, `CallFailed`, `PushFailed`, `PeerGone`, `Tick`,
  `Flush`) are all the core learns; effects (`Answer`, `Refuse`, `Push`, `Call`,
  `Tell`, and the metric event `JobsEnqueued`) are all it asks for.
  The shell turns the world into events and effects into IO; neither knows the other's
  internals.
- `storage_command` and `client_reply` are the two directions of the translation between
  the client protocol and storage's contract, and the only place that knows both.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

import attrs

from gotask import _protocol as proto
from gotask._errors import RemoteProtocolError
from gotask._job_metrics import JobsEnqueued
from gotask._messages import JobChanged
from gotask.runtime.message import Address, Envelope

from .storage import base as storage

__all__ = [
    "Answer",
    "BrokerEvent",
    "Call",
    "CallDone",
    "CallFailed",
    "Effect",
    "Flush",
    "Forwarded",
    "Lane",
    "PeerGone",
    "Push",
    "PushFailed",
    "Received",
    "Refuse",
    "Target",
    "Tell",
    "Tick",
    "client_reply",
    "storage_command",
]


class Target(enum.Enum):
    """Which actor an effect goes to (the shell knows their addresses)."""

    STORAGE = "storage"
    DISPATCHER = "dispatcher"


class Lane(enum.Enum):
    """Calls in flight are bounded per lane: enqueues never wait behind slow reads."""

    ENQUEUE = "enqueue"
    OTHER = "other"


# -- events: into the core ----------------------------------------------------------------


@attrs.frozen
class Received:
    """A message arrived in the Broker's inbox."""

    env: Envelope


@attrs.frozen
class CallDone:
    """The call the core asked for as `key` was answered with `reply`."""

    key: int
    reply: object


@attrs.frozen
class CallFailed:
    """The call the core asked for as `key` failed (error reply, timeout, lost node)."""

    key: int
    error: Exception


@attrs.frozen
class PushFailed:
    """A push to `watcher` could not be delivered (gone, or not keeping up)."""

    watcher: Address


@attrs.frozen
class PeerGone:
    """The last link to node `node` closed: its watchers are gone with it."""

    node: str


@attrs.frozen
class Tick:
    """Time passed: waits whose timeout is due are answered."""


@attrs.frozen
class Flush:
    """The end of one inbox batch: the enqueues taken in it go to storage together."""


BrokerEvent: TypeAlias = (
    Received | CallDone | CallFailed | PushFailed | PeerGone | Tick | Flush
)


# -- effects: out of the core -------------------------------------------------------------


@attrs.frozen
class Answer:
    """Reply `msg` to the request `request`."""

    request: Envelope
    msg: object


@attrs.frozen
class Refuse:
    """Reply to `request` with `error` (its type name and message)."""

    request: Envelope
    error: Exception


@attrs.frozen
class Push:
    """Send `msg` to `watcher` without waiting; on failure feed `PushFailed` back."""

    watcher: Address
    msg: JobChanged


@attrs.frozen
class Call:
    """Call `target` with `msg`; feed `CallDone(key, reply)` or `CallFailed` back."""

    key: int
    target: Target
    msg: object
    lane: Lane = Lane.OTHER


@attrs.frozen
class Tell:
    """Send `msg` to `target`, expecting no answer."""

    target: Target
    msg: object


#: `JobsEnqueued` (from `gotask._job_metrics`) is the metric event of stored enqueues.
Effect: TypeAlias = Answer | Refuse | Push | Call | Tell | JobsEnqueued


# -- translation --------------------------------------------------------------------------

Forwarded: TypeAlias = (
    proto.GetJobs | proto.CancelJobs | proto.ListJobs | proto.ListDead | proto.RetryDead
    | proto.PurgeDead | proto.ListNodes
)


def storage_command(msg: Forwarded) -> storage.StorageCommand:
    """The storage command that answers a forwarded client request.

    Raises:
        ValueError: storage's contract refuses the values (the message names them).
    """
    match msg:
        case proto.GetJobs(ids=ids):
            return storage.GetJobs(ids)
        case proto.CancelJobs(ids=ids):
            return storage.CancelJobs(ids)
        case proto.ListJobs(queue=queue, state=state, limit=limit, cursor=cursor, task=task):
            return storage.ListJobs(queue, state, limit, cursor, task)
        case proto.ListDead(queue=queue, limit=limit, cursor=cursor):
            return storage.ListDead(queue, limit, cursor)
        case proto.RetryDead(ids=ids):
            return storage.RetryDead(ids)
        case proto.PurgeDead(ids=ids):
            return storage.PurgeDead(ids)
        case proto.ListNodes():
            return storage.ListNodes()


def client_reply(reply: object) -> object:
    """The client protocol's reply for storage's answer to a forwarded request.

    Raises:
        RemoteProtocolError: storage answered with something no request expects.
    """
    match reply:
        case storage.GetJobsReply(jobs=jobs):
            return proto.JobsReply(jobs)
        case storage.CancelReply(states=states):
            return proto.CancelReply(states)
        case storage.ListJobsReply(jobs=jobs, next_after=cursor):
            return proto.JobPage(jobs, cursor)
        case storage.ListDeadReply(jobs=jobs, next_after=cursor):
            return proto.JobPage(jobs, cursor)
        case storage.RetryDeadReply(requeued=count) | storage.PurgeDeadReply(purged=count):
            return proto.CountReply(count)
        case storage.ListNodesReply(nodes=nodes):
            return proto.NodesReply(tuple(
                proto.NodeInfo(n.node, n.info, n.first_seen, n.last_seen, n.expires_at)
                for n in nodes))
    raise RemoteProtocolError(f"storage answered with {type(reply).__name__}")
