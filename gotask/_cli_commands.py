"""The client commands of the `gotask` CLI, each an async function of (client, args).

Rules of this module:
- A command prints its output to stdout and returns the exit code: 0, or 1 when the job
  it waited for did not succeed, or `dlq retry`/`purge` found some given ids not dead.
  Expected errors are raised for `cli.main` to report.
- With `--json` a command prints JSON only; otherwise short human text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gotask import _cli_output as out
from gotask._errors import JobFailed
from gotask._job import JobRecord
from gotask.client import AsyncClient

__all__ = ["run"]

T = TypeVar("T")


async def run(client: AsyncClient, args: argparse.Namespace) -> int:
    """Run the client command named by `args.command`; return the exit code.

    Raises:
        GoTaskError, OSError: the request failed.
    """
    if args.command == "dlq":
        return await _dlq(client, args)
    if args.command == "cron":
        return await _cron(client, args)
    command = {"enqueue": _enqueue, "job": _job, "queues": _queues, "cancel": _cancel,
               "nodes": _nodes, "jobs": _jobs}[args.command]
    return await command(client, args)


def _print(text: str) -> None:
    print(text, flush=True)


async def _enqueue(client: AsyncClient, args: argparse.Namespace) -> int:
    job_id = await client.enqueue_with(
        args.task, args.args, args.kwargs, queue=args.queue, priority=args.priority,
        delay_s=args.delay, max_attempts=args.max_attempts,
        idempotency_key=args.idempotency_key,
    )
    await _warn_if_unserved(client, job_id, args.queue)
    if not args.wait:
        _print(out.to_json({"id": job_id}) if args.json else job_id)
        return 0
    try:
        result = await client.wait(job_id, timeout_s=args.wait_timeout)
    except JobFailed as exc:
        return _failed(exc, args.json)
    _print(out.to_json({"id": job_id, "state": "succeeded", "result": result})
           if args.json else out.to_json(result))
    return 0


async def _warn_if_unserved(client: AsyncClient, job_id: str, queue: str | None) -> None:
    """Warn on stderr when no live node works the new job's queue (it would wait)."""
    if queue is None:
        queue = (await client.get(job_id)).queue
    if not out.queue_workers(await client.nodes()).get(queue):
        print(out.unserved_line(queue), file=sys.stderr, flush=True)


def _failed(exc: JobFailed, as_json: bool) -> int:
    """Report a job that ended dead or cancelled; exit code 1."""
    job = exc.job
    if as_json and isinstance(job, JobRecord):
        _print(out.to_json(out.job_json(job)))
    else:
        print(f"gotask: error: {exc}", file=sys.stderr)
    return 1


async def _job(client: AsyncClient, args: argparse.Namespace) -> int:
    if not args.wait:
        job = await client.get(args.id)
        _print(out.to_json(out.job_json(job)) if args.json else out.format_job(job))
        return 0
    last = await _follow(client, args.id, args.json)
    if args.json:
        return 0 if last.state == "succeeded" else 1
    if last.state == "succeeded":
        _print(out.outcome_line(last))
        return 0
    print(f"gotask: error: {out.outcome_line(last)}", file=sys.stderr)
    return 1


async def _follow(client: AsyncClient, job_id: str, as_json: bool) -> JobRecord:
    """Show every change of the job until it is terminal; return the terminal record."""
    progress = out.Progress(sys.stdout, tty=sys.stdout.isatty())
    last: JobRecord | None = None
    try:
        async for job in client.watch(job_id):
            last = job
            if as_json:
                _print(out.to_json(out.job_json(job)))
            else:
                progress.show(job)
    finally:
        progress.finish()
    assert last is not None
    return last


async def _queues(client: AsyncClient, args: argparse.Namespace) -> int:
    if args.action in ("pause", "resume"):
        return await _pause_queue(client, args)
    queues = await client.queue_list()
    if args.json:
        _print(out.to_json([out.queue_json(q) for q in queues]))
        return 0
    counts = {q.name: q.counts for q in queues}
    paused = {q.name for q in queues if q.paused}
    workers = out.queue_workers(await client.nodes())
    _print(out.queues_table(queues, workers) if queues else "no jobs")
    for queue in out.unserved(counts, workers):
        if queue not in paused:
            print(out.unserved_line(queue), file=sys.stderr)
    return 0


async def _jobs(client: AsyncClient, args: argparse.Namespace) -> int:
    jobs = await client.list_jobs(queue=args.queue, state=args.state, limit=args.limit,
                                  after_id=args.after, task=args.task)
    return _listing(jobs, args.json, out.job_json, out.jobs_table, "no jobs")


async def _pause_queue(client: AsyncClient, args: argparse.Namespace) -> int:
    if args.action == "pause":
        await client.pause_queue(args.name)
    else:
        await client.resume_queue(args.name)
    state = "paused" if args.action == "pause" else "resumed"
    _print(out.to_json({"name": args.name, "state": state}) if args.json
           else f"{args.name}: {state}")
    return 0


async def _cancel(client: AsyncClient, args: argparse.Namespace) -> int:
    state = await client.cancel(args.id)
    if args.json:
        _print(out.to_json({"id": args.id, "state": state}))
    elif state == "active":
        _print(f"{args.id}: cancellation requested (the job is running; it stops at its "
               "next heartbeat)")
    elif state == "cancelled":
        _print(f"{args.id}: cancelled")
    else:
        _print(f"{args.id}: not cancelled, already {state}")
    return 0


async def _nodes(client: AsyncClient, args: argparse.Namespace) -> int:
    nodes = await client.nodes()
    return _listing(nodes, args.json, out.node_json, out.nodes_table, "no live nodes")


def _listing(items: Sequence[T], as_json: bool, item_json: Callable[[T], Any],
             table: Callable[[Sequence[T]], str], empty: str) -> int:
    """Print a list as JSON, as a table, or `empty`; exit code 0."""
    if as_json:
        _print(out.to_json([item_json(i) for i in items]))
    else:
        _print(table(items) if items else empty)
    return 0


async def _dlq(client: AsyncClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        jobs = await client.dlq_list(queue=args.queue, limit=args.limit)
        return _listing(jobs, args.json, out.job_json, out.dead_table,
                        "the dead-letter queue is empty")
    ids: Any = args.ids or None  # cli.main checked: IDs or --all, not both
    if args.action == "retry":
        count = await client.dlq_retry(ids, all_jobs=args.all)
        verb = "requeued"
    else:
        count = await client.dlq_purge(ids, all_jobs=args.all)
        verb = "purged"
    _print(out.to_json({verb: count}) if args.json else f"{verb} {count} dead job(s)")
    missing = len(set(args.ids)) - count
    if args.ids and missing > 0:
        print(f"gotask: error: {missing} of the given id(s) are not in the dead-letter "
              "queue (see 'gotask dlq list')", file=sys.stderr)
        return 1
    return 0


async def _cron(client: AsyncClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        entries = await client.cron_list()
        if args.json:
            _print(out.to_json([out.cron_json(e) for e in entries]))
        else:
            _print(out.cron_table(entries) if entries else "no cron entries")
        return 0
    if args.action == "run":
        job_id = await client.cron_run(args.name)
        _print(out.to_json({"name": args.name, "id": job_id}) if args.json else job_id)
        return 0
    await client.cron_pause(args.name, paused=args.action == "pause")
    state = "paused" if args.action == "pause" else "resumed"
    _print(out.to_json({"name": args.name, "state": state}) if args.json
           else f"{args.name}: {state}")
    return 0
