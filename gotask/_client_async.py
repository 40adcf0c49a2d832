"""The async client: one connection at a time to a node's Broker, with failover.

Rules of this module:
- Written on anyio: the same client runs under trio and under asyncio (FastAPI).
- A client hosts no actors: it talks to the Broker of one node at a time, learnt in the
  handshake, and fails over down its list of nodes when the connection drops: the next
  node first, whole passes over the list separated by jittered, doubling pauses.
- A request in flight when the connection drops fails with `ConnectionLost` (it may or
  may not have been applied), except reads, waits, watches, cancels, and enqueues whose
  every job has an idempotency key: those are sent once more, to the next node. A request
  that never left is always sent again.
- The background tasks (one connection's reader, writer and heartbeat) live in the task
  group opened by `async with`; an error in the body is not wrapped by that group.
- Nothing is read from the environment unless asked (`from_env`).
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import secrets
import ssl
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from gotask._client_admin import AdminRequests
from gotask._client_batch import EnqueueBatcher
from gotask._client_conn import (
    DEFAULT_NODE,
    WATCH_NAME,
    ClientLink,
    LinkSettings,
    NotSent,
    dial,
    nodes_from_env,
    parse_address,
    secret_from_env,
)
from gotask._client_jobs import (
    WAIT_SLICE_S,
    WATCH_REFRESH_S,
    JobTuple,
    Watch,
    check_args_bytes,
    check_limits,
    checked_reply,
    chunks,
    decode_result,
    only_job,
    remote_error,
)
from gotask._errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLost,
    JobNotFound,
    NodeUnavailable,
    NotAGoTaskNode,
    RemoteProtocolError,
    WaitTimeout,
)
from gotask._job import ARGS_BYTES_MAX, JobRecord
from gotask._protocol import (
    IDS_MAX,
    CancelJobs,
    Enqueue,
    GetJobs,
    JobSpec,
    UnwatchJobs,
    WaitJobs,
    WatchJobs,
    check_spec,
)
from gotask.runtime.message import Address, Command, ErrorReply

__all__ = ["AsyncClient"]

log = logging.getLogger("gotask.client")
R = TypeVar("R")


class AsyncClient(AdminRequests):
    """A connection to a GoTask cluster, for trio and asyncio code alike.

    Use it as an async context manager; it connects on the first request:

        async with gotask.AsyncClient(["10.0.0.1:7450", "10.0.0.2:7450"],
                                      secret=b"...") as client:
            job_id = await client.enqueue("shop.send_receipt", 42)
            result = await client.wait(job_id, timeout_s=60)

    Args:
        nodes: "host:port" addresses, tried in order (default "127.0.0.1:7450").
        secret: the cluster's shared secret, or None when the nodes run without one.
        ssl_context: a client-side TLS context to speak TLS (the secret still applies).
        call_timeout_s: seconds to wait for the answer to one request.
        connect_timeout_s: seconds for one connect, TLS and handshake.
        connect_rounds: passes over the whole list before `NodeUnavailable`.
        backoff_base_s, backoff_cap_s: pause between passes, doubling from the base up
            to the cap, jittered to [d/2, d] seconds.
        heartbeat_s: ping after this many idle seconds.
        max_args_bytes: largest encoded arguments of a job, checked before sending; at
            most and by default 512 KiB. Set it to the nodes' `--max-args-bytes`.
        max_batch_jobs: most jobs in one enqueue message; at most and by default
            10,000. Set it to the nodes' `--max-batch-jobs`.

    Raises:
        ConfigError: a node address is not "host:port", or a limit out of range.
    """

    def __init__(
        self,
        nodes: Sequence[str] | str | None = None,
        *,
        secret: bytes | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        call_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        connect_rounds: int = 3,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        heartbeat_s: float = 5.0,
        max_args_bytes: int = ARGS_BYTES_MAX,
        max_batch_jobs: int = IDS_MAX,
    ) -> None:
        self._max_args_bytes = check_limits(max_args_bytes, max_batch_jobs)
        names = [nodes] if isinstance(nodes, str) else list(nodes or [DEFAULT_NODE])
        if not names:
            raise ConfigError("a client needs at least one node address")
        self._addresses = [(text, parse_address(text)) for text in names]
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._ssl_context = ssl_context
        self._call_timeout_s = call_timeout_s
        self._connect_rounds = max(1, connect_rounds)
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._settings = LinkSettings(connect_timeout_s=connect_timeout_s,
                                      heartbeat_s=heartbeat_s, idle_timeout_s=4 * heartbeat_s)
        self._name = f"client-{secrets.token_hex(8)}"
        self._rng = random.Random(secrets.randbits(64))
        self._corr = itertools.count(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._dial_lock: anyio.Lock | None = None
        self._link: ClientLink | None = None
        self._next = 0
        self._lost = False
        self._closed = False
        self._watches: dict[str, list[Watch]] = {}
        self._batcher = EnqueueBatcher(self._send_enqueue, max_batch_jobs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AsyncClient:
        """Build a client from `GOTASK_NODES` (comma-separated) and `GOTASK_SECRET_FILE`.

        Raises:
            ConfigError: a bad address, or an unreadable or too short secret file.
        """
        env = os.environ if environ is None else environ
        return cls(nodes_from_env(env), secret=secret_from_env(env), **options)

    def __repr__(self) -> str:
        where = self._link.address if self._link and not self._link.closed else "not connected"
        return f"<AsyncClient {self._name} {where}>"

    @property
    def node_name(self) -> str:
        """This client's name on the wire ("client-" and 16 hex digits)."""
        return self._name

    @property
    def connected_to(self) -> str | None:
        """The "host:port" of the node in use, or None while not connected."""
        link = self._link
        return None if link is None or link.closed else link.address

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        if self._tg is not None or self._closed:
            raise RuntimeError("an AsyncClient can be opened only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg, self._dial_lock = tg, anyio.Lock()
        tg.start_soon(self._batcher.run)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._shut()  # no checkpoint before the group exits: a cancellation must not skip it
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            # The body's own exception is not the task group's: it propagates unwrapped.
            await tg.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close the connection; requests in flight fail with `ConnectionLost`."""
        self._shut()
        await anyio.lowlevel.checkpoint()

    def _shut(self) -> None:
        self._closed = True
        self._batcher.fail_all(anyio.ClosedResourceError("the client is closed"))
        if self._link is not None:
            self._link.close("the client was closed")

    # -- connecting ------------------------------------------------------------------------

    async def _connected(self) -> ClientLink:
        if self._closed:
            raise anyio.ClosedResourceError("the client is closed")
        if self._tg is None or self._dial_lock is None:
            raise RuntimeError("use the client as 'async with AsyncClient(...) as client:'")
        link = self._link
        if link is not None and not link.closed:
            return link
        async with self._dial_lock:
            if self._link is None or self._link.closed:
                self._link = await self._dial_any()
            return self._link

    async def _dial_any(self) -> ClientLink:
        failures: dict[str, str] = {}
        if self._lost:  # many clients lost the same node: do not all hit the next at once
            await anyio.sleep(self._rng.uniform(0.0, self._backoff[0]))
        foreign: set[int] = set()  # not GoTask nodes: not worth another round
        for round_ in range(self._connect_rounds):
            if len(foreign) == len(self._addresses):
                break
            if round_:
                await anyio.sleep(self._backoff_s(round_ - 1))
            for step in range(len(self._addresses)):
                index = (self._next + step) % len(self._addresses)
                if index in foreign:
                    continue
                link = await self._dial_one(index, failures, foreign)
                if link is not None:
                    self._next, self._lost = index, False
                    return link
        reasons = "; ".join(f"{addr}: {why}" for addr, why in failures.items())
        raise NodeUnavailable(f"cannot reach any GoTask node ({reasons})")

    async def _dial_one(
        self, index: int, failures: dict[str, str], foreign: set[int]
    ) -> ClientLink | None:
        text, (host, port) = self._addresses[index]
        try:
            stream, conn, peer = await dial(host, port, secret=self._secret,
                                            client_node=self._name, settings=self._settings,
                                            ssl_context=self._ssl_context)
        except AuthenticationError as exc:  # a PermissionError: not a node being down
            raise AuthenticationError(f"{text}: {exc} (is the shared secret right?)") from None
        except NotAGoTaskNode as exc:
            failures[text] = str(exc)
            foreign.add(index)
            return None
        except TimeoutError:
            failures[text] = f"no answer within {self._settings.connect_timeout_s:g}s"
            return None
        except (OSError, RemoteProtocolError, anyio.BrokenResourceError) as exc:
            failures[text] = str(exc) or type(exc).__name__
            log.info("cannot reach GoTask node %s: %s", text, failures[text])
            return None
        link = ClientLink(stream, conn, client_node=self._name, peer=peer, address=text,
                          settings=self._settings, corr=self._corr, on_push=self._on_push,
                          on_close=self._on_link_closed)
        assert self._tg is not None
        await self._tg.start(link.run)
        log.info("client %s connected to node %s at %s", self._name, peer, text)
        return link

    def _backoff_s(self, attempt: int) -> float:
        base_s, cap_s = self._backoff
        delay_s = min(cap_s, base_s * 2.0 ** min(attempt, 32))
        return self._rng.uniform(delay_s / 2, delay_s)

    def _on_link_closed(self, link: ClientLink) -> None:
        if link is not self._link:
            return
        self._lost = True
        self._next = (self._next + 1) % len(self._addresses)
        for subs in self._watches.values():
            for sub in subs:
                sub.link_lost()

    def _on_push(self, job: JobRecord) -> None:
        for sub in self._watches.get(job.id, ()):
            sub.offer(job)

    # -- requests --------------------------------------------------------------------------

    async def _request(self, msg: Command[R], *, retry: bool,
                       timeout_s: float | None = None) -> R:
        """Send `msg` to the broker and return its reply; `retry`: safe to send twice.

        Raises:
            RemoteProtocolError: the reply is not of the type `msg` declares.
        """
        timeout_s = self._call_timeout_s if timeout_s is None else timeout_s
        for attempt in (1, 2):
            link = await self._connected()
            try:
                reply = await link.call(msg, timeout_s)
            except NotSent:
                if attempt == 2:
                    raise
                continue  # it never left: sending it again cannot apply it twice
            except ConnectionLost as exc:
                if attempt == 2 or not retry:
                    raise
                log.info("retrying %s on the next node: %s", type(msg).__name__, exc)
                continue
            if isinstance(reply, ErrorReply):
                raise remote_error(reply)
            return checked_reply(msg, reply)
        raise AssertionError("unreachable")

    # -- enqueue ---------------------------------------------------------------------------

    async def enqueue(
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
        """Enqueue one job of the task registered as `task`; return its id.

        Positional and other keyword arguments go to the task. A task whose own keyword
        arguments are named like an option must be enqueued with `enqueue_with`.

        Args:
            queue: overrides the task's queue. priority: higher runs first.
            delay_s: seconds before the job is due. max_attempts: attempts before the DLQ.
            timeout_s: seconds one attempt may run. result_ttl_s: seconds the result is kept.
            idempotency_key: a repeat with the same key returns the first job's id; it also
                makes the enqueue safe to resend after a dropped connection.

        Raises:
            InvalidArguments: an argument is not a msgpack value (nothing was sent), or
                the arguments do not fit the task's signature.
            TaskNotFound: no task is registered under this name on the node.
            ConnectionLost: the connection dropped before the answer (no idempotency key).
            NodeUnavailable: no node could be reached.
        """
        options = {"queue": queue, "priority": priority, "delay_s": delay_s,
                   "max_attempts": max_attempts, "timeout_s": timeout_s,
                   "result_ttl_s": result_ttl_s, "idempotency_key": idempotency_key}
        return (await self._enqueue_items([check_spec(task, args, kwargs, options)]))[0]

    async def enqueue_with(
        self,
        task: str,
        /,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Enqueue one job with explicit `args` and `kwargs`; options as for `enqueue`.

        Raises:
            TypeError: an unknown option. Otherwise as `enqueue`.
        """
        return (await self._enqueue_items([check_spec(task, args, kwargs, options)]))[0]

    async def enqueue_many(self, jobs: Iterable[JobTuple]) -> list[str]:
        """Enqueue many jobs in few messages; return their ids in order.

        Each job is `(task, args, kwargs, options)`; kwargs and options may be None.
        Every job is checked before any is sent. Up to 768 KiB of arguments travel in one
        message, which is all-or-nothing; a longer list takes several messages, so a
        failure part way leaves the earlier ones enqueued (use idempotency keys to resend).

        Raises:
            As `enqueue`; TypeError when an entry is not a 4-tuple.
        """
        items = []
        for spec in jobs:
            if not isinstance(spec, tuple) or len(spec) != 4:
                raise TypeError(f"each job must be (task, args, kwargs, options), got {spec!r}")
            task, args, kwargs, options = spec
            items.append(check_spec(task, args, kwargs, options or {}))
        return await self._enqueue_items(items)

    async def _enqueue_items(self, items: Sequence[JobSpec]) -> list[str]:
        check_args_bytes(items, self._max_args_bytes)
        if (len(items) == 1 and items[0].idempotency_key is None and self._tg is not None
                and not self._closed):
            # Concurrent one-job enqueues share messages (see _client_batch); a keyed one
            # keeps its own, which is resent after a dropped connection.
            return [await self._batcher.submit(items[0])]
        ids: list[str] = []
        for chunk in chunks(items, self._batcher.jobs_max):
            ids.extend(await self._send_enqueue(chunk))
        return ids

    async def _send_enqueue(self, chunk: tuple[JobSpec, ...]) -> list[str]:
        safe = all(item.idempotency_key is not None for item in chunk)
        return list((await self._request(Enqueue(chunk), retry=safe)).ids)

    # -- jobs ------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord:
        """Return the job's current record (state, attempts, progress, result bytes).

        Raises:
            JobNotFound: no such job, or it was purged after its result TTL.
        """
        return only_job(await self._request(GetJobs((job_id,)), retry=True), job_id)

    async def wait(self, job_id: str, timeout_s: float | None = None) -> Any:
        """Wait until the job finishes and return its result (decoded from msgpack).

        Args:
            timeout_s: give up after this many seconds; None waits for as long as it takes.

        Raises:
            JobFailed: the job ended dead (carries the error and traceback) or cancelled.
            WaitTimeout: still not finished after `timeout_s` (the job goes on).
            JobNotFound: no such job.
        """
        deadline_s = None if timeout_s is None else anyio.current_time() + timeout_s
        while True:
            left_s = WAIT_SLICE_S if deadline_s is None else deadline_s - anyio.current_time()
            slice_s = max(0.0, min(WAIT_SLICE_S, left_s))
            reply = await self._request(WaitJobs((job_id,), slice_s), retry=True,
                                        timeout_s=slice_s + self._call_timeout_s)
            job = only_job(reply, job_id)
            if job.is_terminal:
                return decode_result(job)
            if deadline_s is not None and anyio.current_time() >= deadline_s:
                raise WaitTimeout(f"job {job_id} still {job.state} after {timeout_s:g}s")

    async def watch(self, job_id: str) -> AsyncGenerator[JobRecord, None]:
        """Yield the job's record now and on every change (state, progress), live, until
        it is terminal. Changes that come faster than they are consumed are merged: the
        newest record wins, and the terminal one is always yielded last.

        Raises:
            JobNotFound: no such job.
        """
        sub = Watch(job_id)
        self._watches.setdefault(job_id, []).append(sub)
        last: JobRecord | None = None
        try:
            while True:
                await self._subscribe(sub)
                while not sub.lost and await sub.next_change(WATCH_REFRESH_S):
                    job = sub.latest
                    if job is not None and job != last:
                        last = job
                        yield job
                        if job.is_terminal:
                            return
        finally:
            self._end_watch(sub)

    async def _subscribe(self, sub: Watch) -> None:
        """(Re)register the watch at the node and offer the record it answers with."""
        sub.lost = False
        pushes = sub.pushes
        msg = WatchJobs((sub.job_id,), Address(self._name, WATCH_NAME))
        job = only_job(await self._request(msg, retry=True), sub.job_id)
        if sub.pushes == pushes:  # a push that came meanwhile is newer than the answer
            sub.offer(job)

    def _end_watch(self, sub: Watch) -> None:
        subs = self._watches.get(sub.job_id, [])
        if sub in subs:
            subs.remove(sub)
        if subs:
            return
        self._watches.pop(sub.job_id, None)
        link = self._link
        if self._tg is not None and link is not None and not link.closed:
            msg = UnwatchJobs((sub.job_id,), Address(self._name, WATCH_NAME))
            self._tg.start_soon(link.send, msg)

    async def cancel(self, job_id: str) -> str:
        """Cancel a job; return its state after: "cancelled", or "active" when a running
        job was asked to stop (it stops at its next heartbeat), or its terminal state.

        Raises:
            JobNotFound: no such job.
        """
        state = (await self._request(CancelJobs((job_id,)), retry=True)).states[0]
        if state == "missing":
            raise JobNotFound(f"no job {job_id!r} (never enqueued, or purged after its TTL)")
        return state

