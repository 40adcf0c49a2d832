"""`gotask node`: run one node until SIGINT/SIGTERM, then drain gracefully; and
`gotask migrate`, which brings a PostgreSQL schema up to date as a node does at start.

Rules of this module:
- Settings come from flags, the environment and a TOML file (`gotask._node_settings`).
- The first SIGINT/SIGTERM drains: no new leases, running jobs get `--grace` seconds,
  the rest are given back (released: the attempt does not count). The second cuts the
  grace period to nothing: running jobs are cancelled and given back at once, within
  STOP_NOW_S. Exit code 0 after a drain that gave every job back, 1 otherwise.
- Everything the operator passes is checked before anything starts; a bad setting or an
  unreachable `--join` target prints one clear line and exits non-zero.
- Logs go to stderr; secrets never appear in them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import trio

from gotask._app import ProcessLimits
from gotask._errors import ConfigError, GoTaskError
from gotask._logging import setup_logging
from gotask._node_settings import resolve
from gotask._server import Server, open_server
from gotask.config import (
    NodeConfig,
    load_app,
    parse_hostport,
    parse_queues,
    read_secret,
    storage_password,
    with_password,
)
from gotask.web.serve import read_token

__all__ = ["config_from_args", "config_from_settings", "main", "migrate"]

log = logging.getLogger("gotask.node")
#: After a second signal: how long giving running jobs back may take before the node
#: exits anyway (their leases then expire on their own).
STOP_NOW_S = 10.0


def config_from_args(args: argparse.Namespace,
                     environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Build a NodeConfig from `gotask node` flags, the environment and the --config file
    (flags > environment > file > defaults).

    Raises:
        ConfigError: a setting is malformed or unsafe.
    """
    return config_from_settings(resolve(vars(args), os.environ if environ is None else environ))


def config_from_settings(s: Mapping[str, Any]) -> NodeConfig:
    """Build a NodeConfig from resolved settings (see `gotask._node_settings`).

    Raises:
        ConfigError: a setting is malformed or unsafe.
    """
    return NodeConfig(
        app=load_app(s["app"]),
        name=s["name"],
        listen=parse_hostport(s["listen"], "--listen") if s["listen"] else None,
        storage=with_password(s["storage"], storage_password(os.environ)),
        join=parse_hostport(s["join"], "--join") if s["join"] else None,
        concurrency=s["concurrency"],
        queues=parse_queues(s["queues"]),
        secret=read_secret(s["secret_file"]),
        insecure=s["insecure"],
        http=parse_hostport(s["http"], "--http") if s["http"] else None,
        http_token=read_token(s["http_token_file"]),
        http_tls=_tls(s["http_tls_cert"], s["http_tls_key"], "--http"),
        grpc=parse_hostport(s["grpc"], "--grpc") if s["grpc"] else None,
        grpc_tls=_tls(s["grpc_tls_cert"], s["grpc_tls_key"], "--grpc"),
        threads=s["threads"],
        processes=_process_limits(s),
        lease_timeout_s=s["lease_timeout"],
        heartbeat_s=s["heartbeat"],
        grace_s=s["grace"],
        tls_cert=s["tls_cert"],
        tls_key=s["tls_key"],
        tls_client_ca=s["tls_client_ca"],
        tls_ca=s["tls_ca"],
        args_bytes_max=s["max_args_bytes"],
        result_bytes_max=s["max_result_bytes"],
        batch_jobs_max=s["max_batch_jobs"],
    )


def _process_limits(s: Mapping[str, Any]) -> ProcessLimits:
    try:
        return ProcessLimits(children=s["children"], max_jobs_per_child=s["max_jobs_per_child"],
                             max_rss_mb_per_child=s["max_rss_mb_per_child"])
    except ValueError as exc:
        name, rest = str(exc).split(" ", 1)  # "max_jobs_per_child must be ..."
        raise ConfigError(f"--{name.replace('_', '-')} {rest}") from None


def _tls(cert: str | None, key: str | None, face: str) -> tuple[str, str] | None:
    if (cert is None) != (key is None):
        raise ConfigError(f"{face}-tls-cert and {face}-tls-key go together")
    return None if cert is None or key is None else (cert, key)


def main(args: argparse.Namespace) -> int:
    """Run `gotask node`; returns the process exit code (0 after a clean drain)."""
    try:
        settings = resolve(vars(args), os.environ)
        setup_logging(settings["log_level"], settings["log_format"])
        config = config_from_settings(settings)
        code: int = trio.run(_serve, config)
    except (ConfigError, GoTaskError, OSError) as exc:
        print(f"gotask node: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


async def _serve(config: NodeConfig) -> int:
    # The receiver is open from the start, so a signal never interrupts startup or
    # shutdown with a KeyboardInterrupt: it is handled once the node is up.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_server(config) as server:
            _announce(server)
            await signals.__anext__()
            log.info("draining: running jobs get %gs to finish (signal again to stop at once)",
                     config.grace_s)
            return await _drain(server, signals)


async def _drain(server: Server, signals: AsyncIterator[int]) -> int:
    """Drain; a second signal cuts the grace period to nothing. Returns the exit code."""
    code = [0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_second_signal, server, signals, nursery.cancel_scope, code)
        await server.drain()
        nursery.cancel_scope.cancel()
    return code[0]


async def _stop_on_second_signal(server: Server, signals: AsyncIterator[int],
                                 scope: trio.CancelScope, code: list[int]) -> None:
    await signals.__anext__()
    log.warning("second signal: stopping now; giving running jobs back (at most %gs)",
                STOP_NOW_S)
    with trio.move_on_after(STOP_NOW_S):
        await server.stop_now()
        return
    log.error("could not give every job back within %gs: those jobs run again once "
              "their leases expire", STOP_NOW_S)
    code[0] = 1
    scope.cancel()


def _announce(server: Server) -> None:
    config = server.config
    where = f"{config.listen[0]}:{server.port}" if config.listen else "no listener"
    log.info("node %s ready on %s; storage %s; tasks: %s", server.node.name, where,
             server.storage, ", ".join(config.app.names()) or "(none)")
    if server.http_url is not None:
        log.info("HTTP API on %s/api/v1 (metrics: %s/metrics)", server.http_url,
                 server.http_url)
    if server.grpc_target is not None:
        log.info("gRPC API on %s (service gotask.v1.GoTask)", server.grpc_target)
    if config.join is None and config.storage.startswith("memory:"):
        log.warning("storage memory:// keeps jobs only in this process: they are lost when "
                    "it stops; --storage sqlite:///path/to/gotask.db keeps them")


def migrate(args: argparse.Namespace) -> int:
    """`gotask migrate --storage URL [--print-sql]`; returns the exit code.

    Raises:
        ConfigError: a malformed URL or option.
    """
    import asyncio

    from gotask.actors.storage.postgres import PostgresSettings, migration_script
    from gotask.actors.storage.postgres import migrate as apply

    settings = PostgresSettings.from_url(args.storage)
    if args.print_sql:
        print(migration_script(settings.schema), end="")
        return 0
    try:
        applied = asyncio.run(apply(args.storage))
    except OSError as exc:
        print(f"gotask: error: cannot reach PostgreSQL at {settings.display}: {exc}",
              file=sys.stderr)
        return 1
    except Exception as exc:  # asyncpg's errors: a refused login, missing rights
        if not type(exc).__module__.startswith("asyncpg"):
            raise
        print(f"gotask: error: PostgreSQL at {settings.display} refused: {exc}",
              file=sys.stderr)
        return 1
    print(f"schema {settings.schema}: " + (
        f"applied migration {', '.join(map(str, applied))}" if applied else "up to date"))
    return 0
