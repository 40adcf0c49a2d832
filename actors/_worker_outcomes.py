"""How a finished attempt becomes an outcome for storage: pure functions.

Rules of this module:
- A result is stored as msgpack, at most the node's `--max-result-bytes` (at most
  `RESULT_BYTES_MAX`); a result that is not msgpack or is larger fails the job for good
  (DEAD, `ResultTooLarge`), checked before the ack is sent: retrying cannot change it.
- An error keeps its type name, its text (2,000 characters at most) and the last 8,000
  characters of its traceback. Never a pickled exception.
- Outcomes are sent in commands of at most `BATCH_MAX` items and about
  `CHUNK_BYTES_MAX` bytes, so every command fits a wire frame when storage is remote.
"""

from __future__ import annotations

import traceback
from typing import Any, TypeVar

import msgpack

from gotask._errors import JobCancelled, ResultTooLarge
from gotask._job import RESULT_BYTES_MAX, JobRecord

from .storage.base import BATCH_MAX, AckItem, NackItem, Outcome

__all__ = ["CHUNK_BYTES_MAX", "ack", "cancelled", "chunks", "nack", "settled_outcome"]

CHUNK_BYTES_MAX = 768 * 1024

C = TypeVar("C")


def ack(record: JobRecord, result: Any,
        result_bytes_max: int = RESULT_BYTES_MAX) -> AckItem | NackItem:
    """The outcome of an attempt that returned `result` (kept up to `result_bytes_max`)."""
    try:
        packed = msgpack.packb(result)
    except (TypeError, ValueError, OverflowError) as exc:
        err: Exception = TypeError(f"the task returned a value that is not msgpack: {exc}")
        return nack(record, err, None, Outcome.DEAD)
    if len(packed) > result_bytes_max:
        err = ResultTooLarge(f"the result of task {record.task} is {len(packed)} bytes; "
                             f"the limit is {result_bytes_max} (--max-result-bytes)")
        return nack(record, err, None, Outcome.DEAD)
    return AckItem(record.id, record.attempt, packed, record.queue)


def nack(
    record: JobRecord, exc: BaseException, delay: float | None, outcome: Outcome
) -> NackItem:
    """The outcome of an attempt that failed with `exc` (`delay`: seconds to a retry)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]
    return NackItem(record.id, record.attempt, type(exc).__name__, str(exc)[:2000], tb,
                    delay, outcome.value)


def cancelled(record: JobRecord) -> NackItem:
    """The outcome of an attempt stopped by a cancellation (or a drain)."""
    return nack(record, JobCancelled(f"job {record.id} was cancelled"), None,
                Outcome.CANCELLED)


def settled_outcome(record: JobRecord, item: AckItem | NackItem | None) -> str | None:
    """How the attempt ended, as the job log and the metrics name it: "succeeded",
    "retried", "dead" (failed for good, or out of attempts) or "cancelled" (None: not
    settled by this worker)."""
    if isinstance(item, AckItem):
        return "succeeded"
    if item is None:
        return None
    if item.outcome == Outcome.RETRY.value:
        return "dead" if record.attempts_counted >= record.max_attempts else "retried"
    return "dead" if item.outcome == Outcome.DEAD.value else "cancelled"


def chunks(items: list[Any], cls: type[C]) -> list[C]:
    """Commands `cls(items)` of at most BATCH_MAX items and about CHUNK_BYTES_MAX bytes."""
    out: list[C] = []
    chunk: list[Any] = []
    size = 0
    for item in items:
        item_size = _size(item)
        if chunk and (len(chunk) >= BATCH_MAX or size + item_size > CHUNK_BYTES_MAX):
            out.append(cls(tuple(chunk)))  # type: ignore[call-arg]
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        out.append(cls(tuple(chunk)))  # type: ignore[call-arg]
    return out


def _size(item: Any) -> int:
    if isinstance(item, AckItem):
        return len(item.result) + 64
    if isinstance(item, NackItem):
        return len(item.error) + len(item.traceback) + len(item.error_type) + 128
    return 64
