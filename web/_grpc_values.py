"""Messages of `gotask.v1` to and from the client protocol, and errors to status codes.

Rules of this module:
- Pure: protobuf messages and protocol values in, the other kind out; no IO, no clock.
- Arguments come as msgpack (`arguments_msgpack`, checked to be `[list, map]` and passed
  on byte-identical) or as JSON values (`arguments_json`, packed with `check_spec`, the
  function the Python client and REST use). JSON numbers are doubles: one with no
  fraction within +-2^53 becomes an int, so `add(2, 3)` receives ints from any language.
- Jobs go out with both forms: the msgpack bytes and the JSON values REST shows
  (`web._json`: bytes become `{"$base64": ...}`).
- Errors map through REST's problem types (`web._problems`), so a failure has the same
  name on both faces: the status message is `<Name>: <detail>`, and the trailing
  metadata `gotask-error` carries the problem type `urn:gotask:error:<Name>`.
"""

from __future__ import annotations

from typing import Any, Final

import grpc
from google.protobuf import json_format, struct_pb2

from gotask._app import unpack_args
from gotask._job import JobRecord
from gotask._protocol import JobPage, JobSpec, NodeInfo, QueuesReply, check_spec
from gotask.v1 import gotask_pb2 as pb
from gotask.web._json import job_json, jsonable, queues_json
from gotask.web._problems import problem_for

__all__ = ["STATUS_OF_HTTP", "job_message", "nodes_message", "page_message",
           "queues_message", "spec_of", "status_of"]

#: The gRPC code of each HTTP status of a problem document (docs/grpc.md has the table).
STATUS_OF_HTTP: Final = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_INT_MAX: Final = 2**53
_OPTIONS: Final = frozenset({"queue", "priority", "delay_s", "max_attempts", "timeout_s",
                             "result_ttl_s", "idempotency_key"})


def status_of(exc: BaseException, where: str = "") -> tuple[grpc.StatusCode, str, str]:
    """The status code, message (its detail after `where`) and problem type of a failure."""
    status, doc = problem_for(exc)
    code = STATUS_OF_HTTP.get(status, grpc.StatusCode.INTERNAL)
    return code, f"{doc['title']}: {where}{doc['detail']}", doc["type"]


def spec_of(job: pb.JobSpec, where: str) -> JobSpec:
    """The protocol's spec of one job.

    Raises:
        InvalidArguments: arguments that are not `[list, map]` msgpack or JSON values.
        TypeError, ValueError: a field is missing or out of range (named with `where`).
    """
    try:
        # The fields set, in one call (the stream's hot path): options, `delay_s` when
        # not 0, and the arguments.
        options: dict[str, Any] = {f.name: v for f, v in job.ListFields()
                                   if f.name in _OPTIONS}
        kind = job.WhichOneof("arguments")
        if kind == "arguments_msgpack":
            unpack_args(job.arguments_msgpack)
            return JobSpec(job.task, job.arguments_msgpack, **options)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        if kind == "arguments_json":
            args = _ints(json_format.MessageToDict(job.arguments_json.args))
            kwargs = _ints(json_format.MessageToDict(job.arguments_json.kwargs))
        return check_spec(job.task, args, kwargs, options)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}{exc}") from None


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _INT_MAX:
        return int(value)
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    return value


def _value(data: Any) -> struct_pb2.Value:
    """`data` as `web._json.jsonable` made it (no bytes, no NaN) as a protobuf Value."""
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def job_message(job: JobRecord) -> pb.Job:
    """One job, its arguments and result in both forms."""
    shown = job_json(job)
    return pb.Job(
        id=job.id, task=job.task, queue=job.queue, state=job.state, priority=job.priority,
        arguments_msgpack=job.args, args=_value(shown["args"]), kwargs=_value(shown["kwargs"]),
        created_at=job.created_at, due_at=job.due_at, max_attempts=job.max_attempts,
        attempts=job.attempts_counted, timeout_s=job.timeout_s,
        result_ttl_s=job.result_ttl_s, leased_at=job.leased_at,
        finished_at=job.finished_at, lease_node=job.lease_node,
        result_msgpack=job.result, result=_value(shown["result"]),
        error_type=job.error_type, error=job.error, traceback=job.traceback,
        progress=job.progress, progress_message=job.progress_message,
        idempotency_key=job.idempotency_key, cancel_requested=job.cancel_requested,
        expires_at=job.expires_at)


def page_message(page: JobPage) -> pb.JobPage:
    """A page of jobs and the cursor of the next (absent: no more)."""
    return pb.JobPage(jobs=[job_message(j) for j in page.jobs], cursor=page.cursor)


def queues_message(reply: QueuesReply) -> pb.ListQueuesResponse:
    """Counts per queue and state, sorted by queue (paused queues without jobs too)."""
    return pb.ListQueuesResponse(queues=[pb.QueueCounts(name=q["name"], counts=q["counts"])
                                         for q in queues_json(reply)])


def nodes_message(nodes: tuple[NodeInfo, ...]) -> pb.ListNodesResponse:
    """The live nodes and what each announced about itself."""
    out = []
    for n in nodes:
        info = struct_pb2.Struct()
        json_format.ParseDict(jsonable(n.info), info)
        out.append(pb.NodeInfo(node=n.node, info=info, first_seen=n.first_seen,
                               last_seen=n.last_seen, expires_at=n.expires_at))
    return pb.ListNodesResponse(nodes=out)
