"""The blocking client: `AsyncClient` run in a private event loop thread.

Rules of this module:
- Same methods and arguments as `AsyncClient`, without `await`; each call runs in the
  thread of an anyio blocking portal, so one `Client` serves every thread of a process.
- The thread starts on first use, not in the constructor, and a process forked after
  that (gunicorn, uWSGI with preload) starts its own on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio.from_thread
import attrs

from gotask._client_admin import QueueStatus
from gotask._client_async import AsyncClient
from gotask._client_conn import nodes_from_env, secret_from_env
from gotask._client_jobs import JobTuple
from gotask._job import JobRecord
from gotask._protocol import CronEntryInfo, NodeInfo

__all__ = ["Client"]

T = TypeVar("T")


@attrs.define(eq=False)
class _Running:
    """The event loop thread of a `Client` and the `AsyncClient` open inside it."""

    pid: int
    portal_cm: Any
    portal: anyio.from_thread.BlockingPortal
    client: AsyncClient
    client_cm: Any

    def close(self) -> None:
        try:
            self.client_cm.__exit__(None, None, None)
        finally:
            self.portal_cm.__exit__(None, None, None)


class Client:
    """The blocking twin of `AsyncClient`, for Django, Flask, Celery-style scripts.

    Same methods and arguments, without `await`. It runs an `AsyncClient` in a private
    event loop thread started on first use; one `Client` may be shared by every thread
    of a process. After `fork()` (gunicorn, uWSGI), the child starts its own thread.

        client = gotask.Client(["127.0.0.1:7450"], secret=b"...")
        job_id = client.enqueue("shop.send_receipt", 42)

    Args:
        nodes, and keyword options: as for `AsyncClient`.
        backend: the event loop of the private thread, "asyncio" or "trio".

    Raises:
        ConfigError: a node address is not "host:port".
    """

    def __init__(
        self,
        nodes: Sequence[str] | str | None = None,
        *,
        backend: str = "asyncio",
        **options: Any,
    ) -> None:
        self._make = partial(AsyncClient, nodes, **options)
        self._make()  # check the arguments now, not on first use
        self._backend = backend
        self._lock = threading.Lock()
        self._running: _Running | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Client:
        """Build a client from `GOTASK_NODES` and `GOTASK_SECRET_FILE` (see AsyncClient)."""
        env = os.environ if environ is None else environ
        return cls(nodes_from_env(env), secret=secret_from_env(env), **options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the event loop thread (it restarts if used again)."""
        with self._lock:
            running, self._running = self._running, None
        if running is not None and running.pid == os.getpid():
            running.close()

    def _start(self) -> _Running:
        portal_cm = anyio.from_thread.start_blocking_portal(self._backend)
        portal = portal_cm.__enter__()
        try:
            client = self._make()
            client_cm = portal.wrap_async_context_manager(client)
            client_cm.__enter__()
        except BaseException:
            portal_cm.__exit__(None, None, None)
            raise
        return _Running(os.getpid(), portal_cm, portal, client, client_cm)

    def _ensure(self) -> _Running:
        """The event loop thread of this process, started on first use."""
        with self._lock:
            if self._running is None or self._running.pid != os.getpid():
                self._running = self._start()
            return self._running

    def _run(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        running = self._ensure()
        return running.portal.call(partial(method, running.client, *args, **kwargs))

    def enqueue(
        self,
        task: str,
        /,
        *args: Any,
        queue: str | None = None,
        priority: int | None = None,
        delay_s: float = 0.0,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        result_ttl_s: float | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Enqueue one job; return its id. See `AsyncClient.enqueue`."""
        return self._run(
            AsyncClient.enqueue, task, *args, queue=queue, priority=priority, delay_s=delay_s,
            max_attempts=max_attempts, timeout_s=timeout_s, result_ttl_s=result_ttl_s,
            idempotency_key=idempotency_key, **kwargs,
        )

    def enqueue_with(self, task: str, /, args: Sequence[Any] = (),
                     kwargs: Mapping[str, Any] | None = None, **options: Any) -> str:
        """Enqueue with explicit args and kwargs. See `AsyncClient.enqueue_with`."""
        return self._run(AsyncClient.enqueue_with, task, args, kwargs, **options)

    def enqueue_many(self, jobs: Iterable[JobTuple]) -> list[str]:
        """Enqueue many jobs; return their ids. See `AsyncClient.enqueue_many`."""
        return self._run(AsyncClient.enqueue_many, list(jobs))

    def get(self, job_id: str) -> JobRecord:
        """The job's record. See `AsyncClient.get`."""
        return self._run(AsyncClient.get, job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> Any:
        """Block until the job finishes; return its result. See `AsyncClient.wait`."""
        return self._run(AsyncClient.wait, job_id, timeout_s)

    def watch(self, job_id: str) -> Iterator[JobRecord]:
        """Yield the job's record on every change until terminal. See `AsyncClient.watch`."""
        running = self._ensure()
        updates = running.client.watch(job_id)

        async def step() -> JobRecord | None:
            try:
                return await updates.__anext__()
            except StopAsyncIteration:
                return None

        try:
            while (job := running.portal.call(step)) is not None:
                yield job
        finally:
            running.portal.call(updates.aclose)

    def cancel(self, job_id: str) -> str:
        """Cancel a job; return its state after. See `AsyncClient.cancel`."""
        return self._run(AsyncClient.cancel, job_id)

    def queues(self) -> dict[str, dict[str, int]]:
        """Job counts per queue and state. See `AsyncClient.queues`."""
        return self._run(AsyncClient.queues)

    def queue_list(self) -> list[QueueStatus]:
        """Every queue with jobs or paused. See `AsyncClient.queue_list`."""
        return self._run(AsyncClient.queue_list)

    def pause_queue(self, queue: str) -> None:
        """Pause a queue cluster-wide. See `AsyncClient.pause_queue`."""
        self._run(AsyncClient.pause_queue, queue)

    def resume_queue(self, queue: str) -> None:
        """Resume a paused queue. See `AsyncClient.resume_queue`."""
        self._run(AsyncClient.resume_queue, queue)

    def dlq_list(self, queue: str | None = None, limit: int = 100,
                 after_id: str | None = None) -> list[JobRecord]:
        """Dead jobs. See `AsyncClient.dlq_list`."""
        return self._run(AsyncClient.dlq_list, queue, limit, after_id)

    def list_jobs(self, queue: str | None = None, state: str | None = None,
                  limit: int = 100, after_id: str | None = None,
                  task: str | None = None) -> list[JobRecord]:
        """Jobs ordered by id. See `AsyncClient.list_jobs`."""
        return self._run(AsyncClient.list_jobs, queue, state, limit, after_id, task)

    def pause(self, paused: bool = True) -> None:
        """Stop or resume leasing on the connected node. See `AsyncClient.pause`."""
        self._run(AsyncClient.pause, paused)

    def dlq_retry(self, ids: Sequence[str] | None = None, *, all_jobs: bool = False) -> int:
        """Requeue dead jobs. See `AsyncClient.dlq_retry`."""
        return self._run(AsyncClient.dlq_retry, ids, all_jobs=all_jobs)

    def dlq_purge(self, ids: Sequence[str] | None = None, *, all_jobs: bool = False) -> int:
        """Delete dead jobs. See `AsyncClient.dlq_purge`."""
        return self._run(AsyncClient.dlq_purge, ids, all_jobs=all_jobs)

    def nodes(self) -> list[NodeInfo]:
        """The live nodes. See `AsyncClient.nodes`."""
        return self._run(AsyncClient.nodes)

    def cron_list(self) -> list[CronEntryInfo]:
        """The cron entries. See `AsyncClient.cron_list`."""
        return self._run(AsyncClient.cron_list)

    def cron_pause(self, name: str, paused: bool = True) -> None:
        """Pause or resume a cron entry. See `AsyncClient.cron_pause`."""
        self._run(AsyncClient.cron_pause, name, paused)

    def cron_run(self, name: str) -> str:
        """Enqueue one job of a cron entry now. See `AsyncClient.cron_run`."""
        return self._run(AsyncClient.cron_run, name)
