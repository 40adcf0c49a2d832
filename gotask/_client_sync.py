"""The blocking client: plain sockets over the sans-IO link protocol, no thread of its own.

Rules of this module:
- Same methods and arguments as `AsyncClient`, without `await`, and the same rules for
  failover, reconnecting and resending (see `gotask._client_async`).
- No background thread and no event loop: the calling thread does the IO, so a
  `Client` never keeps a process from exiting, and Ctrl-C inside any call (`wait`
  included) raises `KeyboardInterrupt` at once; the interrupted call's link is closed.
- One link per thread (`threading.local`), dialed on first use; a link dialed by
  another process (before a `fork()`) is never used: the child dials its own.
- A `watch` has its own link, closed when the iteration ends.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from gotask._client_admin import AdminRequests, QueueStatus
from gotask._client_block import BlockingLink, dial_blocking
from gotask._client_conn import (
    WATCH_NAME,
    NotSent,
    nodes_from_env,
    secret_from_env,
)
from gotask._client_jobs import (
    WAIT_SLICE_S,
    WATCH_REFRESH_S,
    JobTuple,
    check_args_bytes,
    check_jobs,
    check_limits,
    checked_reply,
    chunks,
    decode_result,
    only_job,
    remote_error,
)
from gotask._client_nodes import NodeList
from gotask._errors import (
    ConnectionLost,
    JobNotFound,
    WaitTimeout,
)
from gotask._job import ARGS_BYTES_MAX, JobRecord
from gotask._protocol import (
    IDS_MAX,
    CancelJobs,
    CronEntryInfo,
    Enqueue,
    GetJobs,
    JobSpec,
    NodeInfo,
    WaitJobs,
    WatchJobs,
    check_spec,
)
from gotask.runtime.message import Address, Command, ErrorReply

__all__ = ["Client"]

log = logging.getLogger("gotask.client")
R = TypeVar("R")


class Client:
    """The blocking twin of `AsyncClient`, for Django, Flask, Celery-style scripts.

    Same methods and arguments, without `await`. It starts no thread: each calling
    thread has its own connection, dialed on first use, so one `Client` may be shared
    by every thread of a process, created at module level, and kept across `fork()`
    (gunicorn, uWSGI: the child dials its own).

        client = gotask.Client(["127.0.0.1:7450"], secret=b"...")
        job_id = client.enqueue("shop.send_receipt", 42)

    Args:
        nodes, and keyword options: as for `AsyncClient`.
        backend: accepted for compatibility with older releases and ignored (the
            client used to run an event loop thread of this backend).

    Raises:
        ConfigError: a node address is not "host:port".
    """

    def __init__(
        self,
        nodes: Sequence[str] | str | None = None,
        *,
        backend: str | None = None,
        max_args_bytes: int = ARGS_BYTES_MAX,
        max_batch_jobs: int = IDS_MAX,
        **options: Any,
    ) -> None:
        self._nodes = NodeList(nodes, **options)
        self._max_args_bytes = check_limits(max_args_bytes, max_batch_jobs)
        self._jobs_max = max_batch_jobs
        self._admin = _Admin(self)
        self._corr = itertools.count(1)
        self._local = threading.local()
        self._lock, self._lock_pid = threading.Lock(), os.getpid()
        self._links: weakref.WeakSet[BlockingLink] = weakref.WeakSet()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Client:
        """Build a client from `GOTASK_NODES` and `GOTASK_SECRET_FILE` (see AsyncClient)."""
        env = os.environ if environ is None else environ
        return cls(nodes_from_env(env), secret=secret_from_env(env), **options)

    def __repr__(self) -> str:
        where = self.connected_to or "not connected"
        return f"<Client {self.node_name} {where}>"

    @property
    def node_name(self) -> str:
        """The calling thread's name on the wire ("client-" and 16 hex digits): each
        thread and each process has its own, as each has its own connection."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.pid, local.name = os.getpid(), _fresh_name()
        name: str = local.name
        return name

    @property
    def connected_to(self) -> str | None:
        """The "host:port" the calling thread's connection goes to, or None."""
        link: BlockingLink | None = getattr(self._local, "link", None)
        usable = link is not None and not link.closed and link.pid == os.getpid()
        return link.address if usable and link is not None else None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection of this process; a later call dials again."""
        with self._registry_lock():
            links = [link for link in self._links if link.pid == os.getpid()]
        for link in links:
            link.close()

    # -- connecting ------------------------------------------------------------------------

    def _registry_lock(self) -> threading.Lock:
        """The lock of `_links`, new in a forked child (a lock another thread of the
        parent held at `fork()` would stay held there forever)."""
        if self._lock_pid != os.getpid():
            self._lock, self._lock_pid = threading.Lock(), os.getpid()
        return self._lock

    def _connected(self) -> BlockingLink:
        """The calling thread's link, dialed (again) when it is missing, closed or stale."""
        link: BlockingLink | None = getattr(self._local, "link", None)
        if link is not None and link.alive():
            return link
        link = self._local.link = self._dial_any(self.node_name)
        return link

    def _dial_any(self, name: str,
                  on_push: Callable[[JobRecord], None] | None = None) -> BlockingLink:
        failures: dict[str, str] = {}
        foreign: set[int] = set()  # not GoTask nodes: not worth another round
        for pause_s, index in self._nodes.plan(foreign):
            if pause_s:
                time.sleep(pause_s)
            try:
                link = self._dial_one(index, name, on_push)
            except Exception as exc:
                self._nodes.failed(index, exc, failures, foreign)
                continue
            self._nodes.connected(index)
            return link
        raise self._nodes.unavailable(failures)

    def _dial_one(self, index: int, name: str,
                  on_push: Callable[[JobRecord], None] | None) -> BlockingLink:
        nodes = self._nodes
        text, (host, port) = nodes.addresses[index]
        sock, conn, peer = dial_blocking(host, port, secret=nodes.secret, client_node=name,
                                         settings=nodes.settings, ssl_context=nodes.ssl_context)
        link = BlockingLink(sock, conn, client_node=name, peer=peer, address=text,
                            settings=nodes.settings, corr=self._corr, on_push=on_push)
        with self._registry_lock():
            self._links.add(link)
        log.info("client %s connected to node %s at %s", name, peer, text)
        return link

    # -- requests --------------------------------------------------------------------------

    def _request(self, msg: Command[R], *, retry: bool, timeout_s: float | None = None) -> R:
        """Send `msg` to the broker and return its reply; `retry`: safe to send twice.

        Raises:
            RemoteProtocolError: the reply is not of the type `msg` declares.
        """
        timeout_s = self._nodes.call_timeout_s if timeout_s is None else timeout_s
        for attempt in (1, 2):
            link = self._connected()
            try:
                reply = link.call(msg, timeout_s)
            except NotSent:
                if attempt == 2:
                    raise
                continue  # it never left: sending it again cannot apply it twice
            except ConnectionLost as exc:
                self._nodes.lost()
                if attempt == 2 or not retry:
                    raise
                log.info("retrying %s on the next node: %s", type(msg).__name__, exc)
                continue
            if isinstance(reply, ErrorReply):
                raise remote_error(reply)
            return checked_reply(msg, reply)
        raise AssertionError("unreachable")

    # -- enqueue ---------------------------------------------------------------------------

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
        options = {"queue": queue, "priority": priority, "delay_s": delay_s,
                   "max_attempts": max_attempts, "timeout_s": timeout_s,
                   "result_ttl_s": result_ttl_s, "idempotency_key": idempotency_key}
        return self._enqueue_items([check_spec(task, args, kwargs, options)])[0]

    def enqueue_with(self, task: str, /, args: Sequence[Any] = (),
                     kwargs: Mapping[str, Any] | None = None, **options: Any) -> str:
        """Enqueue with explicit args and kwargs. See `AsyncClient.enqueue_with`."""
        return self._enqueue_items([check_spec(task, args, kwargs, options)])[0]

    def enqueue_many(self, jobs: Iterable[JobTuple]) -> list[str]:
        """Enqueue many jobs; return their ids. See `AsyncClient.enqueue_many`."""
        return self._enqueue_items(check_jobs(jobs))

    def _enqueue_items(self, items: Sequence[JobSpec]) -> list[str]:
        check_args_bytes(items, self._max_args_bytes)
        ids: list[str] = []
        for chunk in chunks(items, self._jobs_max):
            safe = all(item.idempotency_key is not None for item in chunk)
            ids.extend(self._request(Enqueue(chunk), retry=safe).ids)
        return ids

    # -- jobs ------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        """The job's record. See `AsyncClient.get`."""
        return only_job(self._request(GetJobs((job_id,)), retry=True), job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> Any:
        """Block until the job finishes; return its result. See `AsyncClient.wait`."""
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left_s = WAIT_SLICE_S if deadline_s is None else deadline_s - time.monotonic()
            slice_s = max(0.0, min(WAIT_SLICE_S, left_s))
            reply = self._request(WaitJobs((job_id,), slice_s), retry=True,
                                  timeout_s=slice_s + self._nodes.call_timeout_s)
            job = only_job(reply, job_id)
            if job.is_terminal:
                return decode_result(job)
            if deadline_s is not None and time.monotonic() >= deadline_s:
                raise WaitTimeout(f"job {job_id} still {job.state} after {timeout_s:g}s")

    def watch(self, job_id: str) -> Iterator[JobRecord]:
        """Yield the job's record on every change until terminal. See `AsyncClient.watch`.

        The watch has its own connection, closed when the iteration ends.
        """
        pushed: list[JobRecord] = []
        name = _fresh_name()  # the watch's own link, so its own name on the wire
        link: BlockingLink | None = None
        last: JobRecord | None = None
        try:
            while True:
                if link is None or link.closed:
                    link = self._dial_any(name, on_push=pushed.append)
                try:
                    for job in self._watch_on(link, job_id, pushed):
                        if job != last:
                            last = job
                            yield job
                            if job.is_terminal:
                                return
                except ConnectionLost as exc:
                    self._nodes.lost()
                    log.info("watch of %s: connection lost, watching again: %s", job_id, exc)
        finally:
            if link is not None:
                link.close("the watch ended")

    def _watch_on(self, link: BlockingLink, job_id: str,
                  pushed: list[JobRecord]) -> Iterator[JobRecord]:
        """Subscribe on `link`; yield the answer, then each newest push, until terminal or
        a quiet `WATCH_REFRESH_S` (then subscribe again)."""
        while True:
            del pushed[:]
            msg = WatchJobs((job_id,), Address(link.node, WATCH_NAME))
            reply = link.call(msg, self._nodes.call_timeout_s)
            if isinstance(reply, ErrorReply):
                raise remote_error(reply)
            job = only_job(checked_reply(msg, reply), job_id)
            yield _newest(job, pushed)
            while link.wait_push(WATCH_REFRESH_S):
                job = _newest(job, pushed)
                yield job
                if job.is_terminal:
                    return

    def cancel(self, job_id: str) -> str:
        """Cancel a job; return its state after. See `AsyncClient.cancel`."""
        state = self._request(CancelJobs((job_id,)), retry=True).states[0]
        if state == "missing":
            raise JobNotFound(f"no job {job_id!r} (never enqueued, or purged after its TTL)")
        return state

    # -- queues, the DLQ, nodes, cron: `AdminRequests`, driven without an event loop ------

    def queues(self) -> dict[str, dict[str, int]]:
        """Job counts per queue and state. See `AsyncClient.queues`."""
        return _drive(self._admin.queues())

    def queue_list(self) -> list[QueueStatus]:
        """Every queue with jobs or paused. See `AsyncClient.queue_list`."""
        return _drive(self._admin.queue_list())

    def pause_queue(self, queue: str) -> None:
        """Pause a queue cluster-wide. See `AsyncClient.pause_queue`."""
        _drive(self._admin.pause_queue(queue))

    def resume_queue(self, queue: str) -> None:
        """Resume a paused queue. See `AsyncClient.resume_queue`."""
        _drive(self._admin.resume_queue(queue))

    def dlq_list(self, queue: str | None = None, limit: int = 100,
                 after_id: str | None = None) -> list[JobRecord]:
        """Dead jobs. See `AsyncClient.dlq_list`."""
        return _drive(self._admin.dlq_list(queue, limit, after_id))

    def list_jobs(self, queue: str | None = None, state: str | None = None,
                  limit: int = 100, after_id: str | None = None,
                  task: str | None = None) -> list[JobRecord]:
        """Jobs ordered by id. See `AsyncClient.list_jobs`."""
        return _drive(self._admin.list_jobs(queue, state, limit, after_id, task))

    def pause(self, paused: bool = True) -> None:
        """Stop or resume leasing on the connected node. See `AsyncClient.pause`."""
        _drive(self._admin.pause(paused))

    def dlq_retry(self, ids: Sequence[str] | None = None, *, all_jobs: bool = False) -> int:
        """Requeue dead jobs. See `AsyncClient.dlq_retry`."""
        return _drive(self._admin.dlq_retry(ids, all_jobs=all_jobs))

    def dlq_purge(self, ids: Sequence[str] | None = None, *, all_jobs: bool = False) -> int:
        """Delete dead jobs. See `AsyncClient.dlq_purge`."""
        return _drive(self._admin.dlq_purge(ids, all_jobs=all_jobs))

    def nodes(self) -> list[NodeInfo]:
        """The live nodes. See `AsyncClient.nodes`."""
        return _drive(self._admin.nodes())

    def cron_list(self) -> list[CronEntryInfo]:
        """The cron entries. See `AsyncClient.cron_list`."""
        return _drive(self._admin.cron_list())

    def cron_pause(self, name: str, paused: bool = True) -> None:
        """Pause or resume a cron entry. See `AsyncClient.cron_pause`."""
        _drive(self._admin.cron_pause(name, paused))

    def cron_run(self, name: str) -> str:
        """Enqueue one job of a cron entry now. See `AsyncClient.cron_run`."""
        return _drive(self._admin.cron_run(name))


class _Admin(AdminRequests):
    """`AdminRequests` over the blocking client: its `_request` never suspends."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def _request(self, msg: Command[R], *, retry: bool,
                       timeout_s: float | None = None) -> R:
        return self._client._request(msg, retry=retry, timeout_s=timeout_s)


def _drive(coro: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine that never suspends (its awaits block instead) to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: R = done.value
        return result
    coro.close()
    raise RuntimeError("an admin request suspended: it must block, not await")


def _fresh_name() -> str:
    return f"client-{secrets.token_hex(8)}"


def _newest(job: JobRecord, pushed: list[JobRecord]) -> JobRecord:
    """The newest of `job` and the records pushed since (a terminal one is final)."""
    for record in pushed:
        if not job.is_terminal:
            job = record
    del pushed[:]
    return job
