"""A GoTask node: the actors of the job lifecycle on one runtime node.

Rules of this module:
- `open_server(config)` starts, in order: storage (memory, unless the node joins
  another node's storage), Broker, WorkerSupervisor, Dispatcher, Scheduler, Reaper, and
  the TCP listener, then the HTTP and gRPC faces it is asked for (stopped in reverse
  order, each gracefully). It is ready when every actor is.
- With `sqlite://` storage this node owns the database file (its storage actor runs the
  one storage shell over it, each batch whole in the writer thread, answered after its
  commit; the storage clock is the World wall clock); other nodes `--join` it, as with
  memory storage. The file is opened before the node starts
  and closed after its actors stopped.
- With `redis://` or `postgresql://` storage every node runs its own storage actor
  against the shared database; nodes share all state through it and need no `--join`.
- A node that `--join`s another keeps a link to it (reconnecting with backoff) and uses
  the actor named "storage" there. Its own Broker, Scheduler and Reaper use it too.
- `Server.drain()` is the graceful shutdown: stop leasing, finish or release running
  jobs within the grace period. The CLI calls it on SIGINT/SIGTERM.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from gotask._errors import ConfigError, StorageUnavailable
from gotask._job_metrics import JobMetrics
from gotask._messages import BROKER, DISPATCHER, REAPER, SCHEDULER, STORAGE, WORKERS, Drain
from gotask._node_name import NodeNameTaken, check_name_free, release_name
from gotask.actors.broker import run_broker
from gotask.actors.dispatcher import DispatcherConfig, run_dispatcher
from gotask.actors.reaper import run_reaper
from gotask.actors.scheduler import run_scheduler
from gotask.actors.storage.actor import run_storage
from gotask.actors.storage.base import QueueWeight
from gotask.actors.storage.memory import MemoryStorageCore
from gotask.actors.worker_supervisor import ThreadBook, WorkerConfig, run_workers, thread_book
from gotask.config import NodeConfig, join_ssl_context, server_ssl_context
from gotask.runtime import Address, Node, World, open_node, real_world

if TYPE_CHECKING:  # grpcio is an extra: imported only when --grpc is used
    from gotask.web.grpc_serve import GrpcFace

__all__ = ["Server", "open_server"]

JOIN_TIMEOUT_S = 15.0
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@attrs.define(eq=False)
class Server:
    """A running GoTask node."""

    node: Node
    config: NodeConfig
    storage: Address
    port: int | None = None
    #: Random id of this run of the node, registered so another node cannot reuse the name.
    instance: str = ""
    #: Set on a clean stop: the registry shows the name as free to take.
    stopping: bool = False
    #: The sync threads of the worker pool (abandoned ones, degraded), for `gotask nodes`.
    threads: ThreadBook = attrs.field(
        default=attrs.Factory(lambda self: thread_book(self.config.threads), takes_self=True))
    http_port: int | None = None
    #: The gRPC face, None when it is off.
    grpc: GrpcFace | None = None
    #: Job-event counts of this node, served at `/metrics`.
    metrics: JobMetrics = attrs.field(
        default=attrs.Factory(lambda self: JobMetrics(frozenset(self.config.app.names())),
                              takes_self=True))

    @property
    def http_url(self) -> str | None:
        """Where the HTTP face serves (None: it is off)."""
        if self.config.http is None or self.http_port is None:
            return None
        host = self.config.http[0]
        scheme = "https" if self.config.http_tls else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.http_port}"

    @property
    def grpc_target(self) -> str | None:
        """Where the gRPC face serves, as `host:port` for a channel (None: it is off)."""
        if self.config.grpc is None or self.grpc is None:
            return None
        host = self.config.grpc[0]
        return f"{f'[{host}]' if ':' in host else host}:{self.grpc.port}"

    @property
    def broker(self) -> Address:
        """The address clients talk to."""
        return self.node.address(BROKER)

    async def drain(self) -> None:
        """Stop leasing; let running jobs finish within the grace period; release the rest."""
        await self.node.call(self.node.address(WORKERS), Drain(self.config.grace_s),
                             timeout_s=self.config.grace_s + 30)

    async def stop_now(self) -> None:
        """Cut a drain's grace period short: cancel running jobs and release them now."""
        await self.node.call(self.node.address(WORKERS), Drain(0.0), timeout_s=30)


@asynccontextmanager
async def open_server(
    config: NodeConfig,
    *,
    world: World | None = None,
    listen: bool = True,
    storage: Address | None = None,
) -> AsyncIterator[Server]:
    """Start a GoTask node; it stops when the block exits.

    Args:
        config: what to run.
        world: clock, randomness and ids (simulations pass a seeded one).
        listen: serve TCP on `config.listen` (tests may talk to the node in-process).
        storage: use the storage actor at this address (on a node the caller links,
            e.g. over a simulated network) instead of a local one or `config.join`.
    """
    world = world or real_world()
    if config.grpc is not None:
        _check_grpc_installed()
    name = config.name or f"node-{world.new_id()[-10:].lower()}"
    # Certificates are loaded before anything starts: a bad file is a plain error.
    tls = server_ssl_context(config) if listen and config.listen is not None else None
    join_tls = join_ssl_context(config)
    # Redis (or the SQLite file) is reached before the node starts (an unreachable one is
    # a plain error, not an error group), and closed after its actors stopped.
    async with AsyncExitStack() as resources:
        backend: Any = None
        if storage is None and config.join is None and config.storage.startswith("sqlite:"):
            backend = await _open_sqlite(config, resources)
        elif storage is None and config.join is None and not config.storage.startswith("memory:"):
            backend = await _connect_redis(config, resources)
        claim = storage is None
        taken: Exception | None = None  # raised once the node stopped
        async with open_node(name, world) as node:
            if storage is None:
                storage = await _open_storage(node, config, backend, join_tls)
            server = Server(node, config, storage, instance=world.new_id())
            try:
                if claim:  # a caller that passes `storage` names its own nodes
                    await check_name_free(node, storage, server.instance)
            except NodeNameTaken as exc:
                taken = exc
            if taken is None:
                await _start_actors(server)
                if listen and config.listen is not None:
                    server.port = await _listen(node, config, tls)
                async with AsyncExitStack() as faces:
                    try:
                        await _open_faces(server, faces)
                    except ConfigError as exc:  # a TLS file or an address of a face
                        taken = exc
                    else:
                        yield server
                server.stopping = True  # from now on registered as stopping
                await release_name(node, storage, server.instance)
        if taken is not None:
            raise taken  # outside the node's nursery: a plain error, not a group


async def _open_storage(node: Node, config: NodeConfig, backend: Any,
                        join_tls: ssl.SSLContext | None) -> Address:
    if config.join is not None:
        from gotask.transports.tcp import maintain_link

        host, port = config.join
        with trio.move_on_after(JOIN_TIMEOUT_S):
            peer: str = await node.nursery.start(functools.partial(
                maintain_link, node, host, port, secret=config.secret,
                ssl_context=join_tls))
            return Address(peer, STORAGE)
        raise StorageUnavailable(f"cannot reach the node to join at {host}:{port} "
                                 f"within {JOIN_TIMEOUT_S:g}s")
    if config.storage.startswith("sqlite:") and backend is not None:
        await node.start_actor(STORAGE, functools.partial(run_storage, backend=backend),
                               inbox_max=4096)
        return node.address(STORAGE)
    if backend is not None:
        # Every node runs its own Redis (or PostgreSQL) storage actor; they share state
        # through the database.
        from gotask.actors.storage._aiostore import run_aio_storage

        await node.start_actor(STORAGE, functools.partial(run_aio_storage, storage=backend),
                               inbox_max=4096)
        return node.address(STORAGE)
    core = MemoryStorageCore()
    await node.start_actor(STORAGE, functools.partial(run_storage, core=core), inbox_max=4096)
    return node.address(STORAGE)


async def _open_sqlite(config: NodeConfig, resources: AsyncExitStack) -> Any:
    from gotask.actors.storage.sqlite import open_sqlite_storage

    sqlite = await open_sqlite_storage(config.storage)
    resources.push_async_callback(sqlite.aclose)
    return sqlite


async def _connect_redis(config: NodeConfig, resources: AsyncExitStack) -> Any:
    redis: Any
    if config.storage.startswith(POSTGRES_SCHEMES):
        from gotask.actors.storage.postgres import open_postgres_storage

        redis = await open_postgres_storage(config.storage)
    else:
        from gotask.actors.storage.redis import open_redis_storage

        redis = await open_redis_storage(config.storage)
    resources.push_async_callback(redis.aclose)
    return redis


async def _start_actors(server: Server) -> None:
    node, config, storage = server.node, server.config, server.storage
    workers, dispatcher = node.address(WORKERS), node.address(DISPATCHER)
    # A store behind a thread hop or a network keeps more requests in flight.
    local = storage.node == node.name and config.storage.startswith("memory://")
    await node.start_actor(BROKER, functools.partial(
        run_broker, app=config.app, storage=storage, dispatcher=dispatcher,
        args_bytes_max=config.args_bytes_max, batch_jobs_max=config.batch_jobs_max,
        metrics=server.metrics), inbox_max=4096)
    await node.start_actor(WORKERS, functools.partial(
        run_workers, app=config.app, storage=storage, dispatcher=dispatcher,
        threads=server.threads, metrics=server.metrics,
        config=WorkerConfig(concurrency=config.concurrency, threads=config.threads,
                            lease_timeout_s=config.lease_timeout_s,
                            heartbeat_s=config.heartbeat_s, flushers=1 if local else 3,
                            result_bytes_max=config.result_bytes_max,
                            processes=config.processes)))
    await node.start_actor(DISPATCHER, functools.partial(
        run_dispatcher, storage=storage, workers=workers,
        config=DispatcherConfig(
            queues=tuple(QueueWeight(q, w) for q, w in config.queues),
            concurrency=config.concurrency, prefetch=config.concurrency,
            lease_timeout_s=config.lease_timeout_s,
            lease_max=512 if local else 256, leases_in_flight=1 if local else 2)))
    await node.start_actor(SCHEDULER, functools.partial(
        run_scheduler, storage=storage, app=config.app))
    await node.start_actor(REAPER, functools.partial(
        run_reaper, storage=storage, node_info=functools.partial(_node_info, server),
        metrics=server.metrics))


def _node_info(server: Server) -> dict[str, Any]:
    config = server.config
    return {
        "instance": server.instance,
        **({"stopping": True} if server.stopping else {}),
        "pid": os.getpid(),
        "queues": [f"{q}:{w}" for q, w in config.queues],
        "concurrency": config.concurrency,
        **server.threads.info(),
        "tasks": config.app.names(),
        "listen": f"{config.listen[0]}:{server.port}" if config.listen else None,
        "storage": "joined" if config.join else _redact(config.storage),
    }


def _redact(url: str) -> str:
    if url.startswith(("memory://", "sqlite://")):
        return url
    from gotask.actors.storage._redis_backend import redact

    return redact(url)


async def _listen(node: Node, config: NodeConfig, tls: ssl.SSLContext | None) -> int:
    from gotask.transports.tcp import serve_tcp

    assert config.listen is not None
    host, port = config.listen
    bound: int = await node.nursery.start(functools.partial(
        serve_tcp, node, host, port, secret=config.secret, insecure=config.insecure,
        ssl_context=tls))
    return bound


async def _open_faces(server: Server, faces: AsyncExitStack) -> None:
    """Start the HTTP and gRPC faces asked for; `faces` stops them in reverse order."""
    if server.config.http is not None:
        server.http_port = await faces.enter_async_context(_open_http(server))
    if server.config.grpc is not None:
        server.grpc = await faces.enter_async_context(_open_grpc(server))


@asynccontextmanager
async def _open_http(server: Server) -> AsyncIterator[int]:
    """Serve the HTTP face in the node's nursery; it stops (gracefully) when the block exits."""
    from gotask.web.app import create_app
    from gotask.web.serve import serve_http

    config, node = server.config, server.node
    assert config.http is not None
    broker = server.broker

    async def call(cmd: Any, timeout_s: float = 30.0) -> Any:
        return await node.call(broker, cmd, timeout_s=timeout_s)

    app = create_app(call, config.http_token, server.metrics, world=node.world,
                     tls=config.http_tls is not None)
    shutdown = trio.Event()
    port: int = await node.nursery.start(functools.partial(
        serve_http, app, config.http[0], config.http[1], tls=config.http_tls,
        shutdown=shutdown))
    try:
        yield port
    finally:
        shutdown.set()



def _check_grpc_installed() -> None:
    try:
        import grpc  # noqa: F401
        import grpc_health  # noqa: F401
        import grpc_reflection  # noqa: F401
    except ImportError:
        raise ConfigError("--grpc needs the gRPC extra: pip install 'gotask[grpc]'") from None


@asynccontextmanager
async def _open_grpc(server: Server) -> AsyncIterator[GrpcFace]:
    """Serve the gRPC face; it stops gracefully when the block exits."""
    from gotask.web.grpc_serve import open_grpc

    config = server.config
    assert config.grpc is not None
    async with open_grpc(server.node, server.broker, *config.grpc, token=config.http_token,
                         tls=config.grpc_tls) as face:
        yield face
