"""The REST API (`/api/v1`): the client protocol over HTTP and JSON.

Rules of this module:
- Every route builds one request of `gotask._protocol`, sends it to the node's Broker
  through `call` (exactly what a TCP client sends) and turns the reply into JSON; it
  never touches storage or an actor's state.
- Arguments arrive as JSON `args`/`kwargs` and are packed as msgpack by `check_spec`,
  the same function the Python client uses, so a task sees the same values either way.
- A bad request gets a 4xx problem document (`web._problems`) and changes nothing.
- Cron routes map `ListCron`, `PauseCron` and `RunCron` (issue 15) one to one.
- Limits: a body of at most `BODY_MAX` bytes, at most `IDS_MAX` jobs per batch, pages of
  1-`LIMIT_MAX` jobs (default 100), a wait of at most `WAIT_S_MAX` seconds.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import attrs
from quart import Blueprint, Response, request
from quart import json as qjson

from gotask._job import STORED_STATES
from gotask._protocol import (
    IDS_MAX,
    LIMIT_MAX,
    WAIT_S_MAX,
    CancelJobs,
    CountQueues,
    Enqueue,
    GetJobs,
    ListCron,
    ListDead,
    ListJobs,
    ListNodes,
    PauseCron,
    PauseQueue,
    PurgeDead,
    RetryDead,
    RunCron,
    WaitJobs,
    check_spec,
)
from gotask.runtime.message import Command
from gotask.web._json import job_json, nodes_json, queues_json
from gotask.web._problems import PROBLEM_TYPE, problem

__all__ = ["BODY_MAX", "Call", "api_blueprint"]

#: Largest request body, in bytes.
BODY_MAX: Final = 1 << 20
_SPEC_KEYS: Final = frozenset({"task", "args", "kwargs", "queue", "priority", "delay_s",
                               "max_attempts", "timeout_s", "result_ttl_s",
                               "idempotency_key"})

class Call(Protocol):
    """Send one protocol request to the node's Broker and return its reply."""

    async def __call__(self, cmd: Command[Any], timeout_s: float = ...) -> Any: ...


class BadRequest(ValueError):
    """The request is malformed (a 400 problem document)."""


def api_blueprint(call: Call) -> Blueprint:
    """The `/api/v1` routes, sending protocol requests through `call`."""
    bp = Blueprint("api", __name__, url_prefix="/api/v1")
    _job_routes(bp, call)
    _admin_routes(bp, call)
    _cron_routes(bp, call)
    return bp


def _job_routes(bp: Blueprint, call: Call) -> None:
    @bp.post("/jobs")
    async def enqueue() -> Any:
        spec = _spec(await _body(), "")
        reply = await call(Enqueue((spec,)))
        return {"id": reply.ids[0], "created": reply.created[0]}, 201

    @bp.post("/jobs/batch")
    async def enqueue_many() -> Any:
        body = await _body()
        jobs = body.get("jobs")
        if set(body) != {"jobs"} or not isinstance(jobs, list) or not 1 <= len(jobs) <= IDS_MAX:
            raise BadRequest(f"the body must be {{\"jobs\": [...]}} with 1-{IDS_MAX} jobs")
        specs = tuple(_spec(j, f"jobs[{i}].") for i, j in enumerate(jobs))
        reply = await call(Enqueue(specs))
        return {"ids": list(reply.ids), "created": list(reply.created)}, 201

    @bp.get("/jobs")
    async def list_jobs() -> Any:
        state = _query_str("state")
        if state is not None and state not in STORED_STATES:
            raise BadRequest(f"state must be one of {', '.join(sorted(STORED_STATES))}")
        try:
            msg = ListJobs(_query_str("queue"), state, _limit(), _query_str("cursor"),
                           _query_str("task"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return _page(await call(msg))

    @bp.get("/jobs/<job_id>")
    async def get_job(job_id: str) -> Any:
        return _one(job_id, (await call(GetJobs((job_id,)))).jobs[0])

    @bp.get("/jobs/<job_id>/wait")
    async def wait_job(job_id: str) -> Any:
        timeout_s = _query_float("timeout_s", 30.0, WAIT_S_MAX)
        reply = await call(WaitJobs((job_id,), timeout_s), timeout_s + 30)
        return _one(job_id, reply.jobs[0])

    @bp.post("/jobs/<job_id>/cancel")
    async def cancel_job(job_id: str) -> Any:
        state = (await call(CancelJobs((job_id,)))).states[0]
        if state == "missing":
            return _missing(job_id)
        return {"id": job_id, "state": state}


def _admin_routes(bp: Blueprint, call: Call) -> None:
    @bp.get("/queues")
    async def queues() -> Any:
        return {"queues": queues_json(await call(CountQueues()))}

    @bp.post("/queues/<queue>/pause")
    async def pause_queue(queue: str) -> Any:
        return await _set_paused(call, queue, True)

    @bp.post("/queues/<queue>/resume")
    async def resume_queue(queue: str) -> Any:
        return await _set_paused(call, queue, False)

    @bp.get("/nodes")
    async def nodes() -> Any:
        return {"nodes": nodes_json((await call(ListNodes())).nodes)}

    @bp.get("/dlq")
    async def list_dead() -> Any:
        return _page(await call(ListDead(_query_str("queue"), _limit(), _query_str("cursor"))))

    @bp.post("/dlq/retry")
    async def retry_all() -> Any:
        return {"count": (await call(RetryDead(None))).count}

    @bp.post("/dlq/<job_id>/retry")
    async def retry_one(job_id: str) -> Any:
        return {"count": (await call(RetryDead((job_id,)))).count}

    @bp.delete("/dlq")
    async def purge_all() -> Any:
        return {"count": (await call(PurgeDead(None))).count}

    @bp.delete("/dlq/<job_id>")
    async def purge_one(job_id: str) -> Any:
        return {"count": (await call(PurgeDead((job_id,)))).count}


def _cron_routes(bp: Blueprint, call: Call) -> None:
    @bp.get("/cron")
    async def list_cron() -> Any:
        return {"entries": [attrs.asdict(e) for e in (await call(ListCron())).entries]}

    @bp.post("/cron/<name>/pause")
    async def pause_cron(name: str) -> Any:
        await call(PauseCron(name, True))
        return {"name": name, "paused": True}

    @bp.post("/cron/<name>/resume")
    async def resume_cron(name: str) -> Any:
        await call(PauseCron(name, False))
        return {"name": name, "paused": False}

    @bp.post("/cron/<name>/run")
    async def run_cron(name: str) -> Any:
        return {"name": name, "id": (await call(RunCron(name))).job_id}, 201


async def _set_paused(call: Call, queue: str, paused: bool) -> dict[str, Any]:
    try:
        msg = PauseQueue(queue, paused)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    await call(msg)
    return {"name": queue, "paused": paused}


async def _body() -> dict[str, Any]:
    data = await request.get_data(as_text=False)
    try:
        body = qjson.loads(data)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _spec(item: Any, where: str) -> Any:
    if not isinstance(item, dict):
        raise BadRequest(f"{where or 'the body'} must be a JSON object")
    unknown = sorted(set(item) - _SPEC_KEYS)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(where + u for u in unknown)}")
    args, kwargs = item.get("args", []), item.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise BadRequest(f"{where}args must be an array and {where}kwargs an object")
    options = {k: v for k, v in item.items() if k not in ("task", "args", "kwargs")}
    try:
        return check_spec(item.get("task"), args, kwargs, options)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"{where}{exc}" if where else str(exc)) from None


def _query_str(name: str) -> str | None:
    value = request.args.get(name)
    return value if value else None


def _limit() -> int:
    text = request.args.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= LIMIT_MAX:
        raise BadRequest(f"limit must be an integer 1-{LIMIT_MAX}, got {text!r}")
    return int(text)


def _query_float(name: str, default: float, most: float) -> float:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= most:
        raise BadRequest(f"{name} must be a number of seconds 0-{most:g}, got {text!r}")
    return value


def _page(page: Any) -> dict[str, Any]:
    return {"jobs": [job_json(j) for j in page.jobs], "cursor": page.cursor}


def _one(job_id: str, job: Any) -> Any:
    return _missing(job_id) if job is None else job_json(job)


def _missing(job_id: str) -> Response:
    return _problem_response(404, "JobNotFound", f"no job {job_id}")


def _problem_response(status: int, name: str, detail: str) -> Response:
    return Response(qjson.dumps(problem(status, name, detail)), status=status,
                    content_type=PROBLEM_TYPE)
