"""Replies carrying job records, kept within one wire frame (issue 22, item 4).

Rules of this module:
- A record is measured as the wire encodes it (`encode`), so every field counts, the
  arguments, the result, the error and its traceback alike.
- A page (`ListJobsReply`, `ListDeadReply`) holds at most `REPLY_BYTES_MAX` bytes of
  records: it is cut after the last record that fits, and its cursor continues from
  there, so paging gives the rest. It keeps at least one record, which always fits a
  frame: the argument and result limits leave room for one whole record.
- A read of given ids (`GetJobsReply`, the records a watch or a wait answers with)
  cannot be cut: past `REPLY_BYTES_MAX` it is refused with `ReplyTooLarge`, naming how
  many jobs, how many bytes and the limit. A single record is never refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import attrs

from gotask._errors import ReplyTooLarge
from gotask._job import JobRecord
from gotask.transports._wire import encode

from . import base as b

__all__ = ["REPLY_BYTES_MAX", "check_records", "fit_reply"]

#: Bytes of records in one reply, well under the wire's 1 MiB frame (the rest is room
#: for the envelope around them).
REPLY_BYTES_MAX = 768 * 1024

P = TypeVar("P", b.ListJobsReply, b.ListDeadReply)


def fit_reply(reply: object) -> object:
    """`reply` cut (a page) or checked (records by id) to `REPLY_BYTES_MAX`.

    Raises:
        ReplyTooLarge: the records of a `GetJobsReply` do not fit one reply.
    """
    if isinstance(reply, b.ListJobsReply):
        return cut_page(reply)
    if isinstance(reply, b.ListDeadReply):
        return cut_page(reply)
    if isinstance(reply, b.GetJobsReply):
        check_records(reply.jobs)
    return reply


def cut_page(page: P) -> P:
    """`page` holding at most `REPLY_BYTES_MAX` bytes of records (at least one record)."""
    size = 0
    for kept, job in enumerate(page.jobs):
        size += len(encode(job))
        if kept and size > REPLY_BYTES_MAX:
            return attrs.evolve(page, jobs=page.jobs[:kept], next_after=page.jobs[kept - 1].id)
    return page


def check_records(jobs: Sequence[JobRecord | None]) -> None:
    """Refuse records by id that would not fit one reply.

    Raises:
        ReplyTooLarge: more than one record, together over `REPLY_BYTES_MAX` bytes.
    """
    if len(jobs) < 2:
        return
    size = sum(len(encode(job)) for job in jobs if job is not None)
    if size > REPLY_BYTES_MAX:
        raise ReplyTooLarge(
            f"the {len(jobs)} jobs asked for hold {size} bytes, more than one reply "
            f"carries ({REPLY_BYTES_MAX}); ask for fewer ids at once")
