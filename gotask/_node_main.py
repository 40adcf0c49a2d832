"""`gotask node`: run one node until SIGINT/SIGTERM, then drain gracefully; and
`gotask migrate`, which brings a PostgreSQL schema up to date as a node does at start.

Rules of this module:
- Everything the operator passes is checked before anything starts; a bad setting or an
  unreachable `--join` target prints one clear line and exits non-zero.
- Logs go to stderr; secrets never appear in them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from gotask._errors import ConfigError, GoTaskError
from gotask._server import Server, open_server, wait_for_signal
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

__all__ = ["config_from_args", "main", "migrate"]

log = logging.getLogger("gotask.node")


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    """Build a NodeConfig from parsed `gotask node` arguments.

    Raises:
        ConfigError: a setting is malformed or unsafe.
    """
    return NodeConfig(
        app=load_app(args.app),
        name=getattr(args, "name", None),
        listen=parse_hostport(args.listen, "--listen") if args.listen else None,
        storage=with_password(args.storage, storage_password(os.environ)),
        join=parse_hostport(args.join, "--join") if args.join else None,
        concurrency=args.concurrency,
        queues=parse_queues(args.queues),
        secret=read_secret(args.secret_file),
        insecure=args.insecure,
        http=parse_hostport(args.http, "--http") if args.http else None,
        http_token=read_token(args.http_token_file),
        http_tls=_tls(args.http_tls_cert, args.http_tls_key),
        threads=args.threads,
        lease_timeout_s=args.lease_timeout,
        heartbeat_s=args.heartbeat,
        grace_s=args.grace,
    )


def _tls(cert: str | None, key: str | None) -> tuple[str, str] | None:
    if (cert is None) != (key is None):
        raise ConfigError("--http-tls-cert and --http-tls-key go together")
    return None if cert is None or key is None else (cert, key)


def main(args: argparse.Namespace) -> int:
    """Run `gotask node`; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        trio.run(_serve, config)
    except (ConfigError, GoTaskError, OSError) as exc:
        print(f"gotask node: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve(config: NodeConfig) -> None:
    async with open_server(config) as server:
        _announce(server)
        await wait_for_signal()
        log.info("draining: running jobs get %gs to finish", config.grace_s)
        await server.drain()


def _announce(server: Server) -> None:
    config = server.config
    where = f"{config.listen[0]}:{server.port}" if config.listen else "no listener"
    log.info("node %s ready on %s; storage %s; tasks: %s", server.node.name, where,
             server.storage, ", ".join(config.app.names()) or "(none)")
    if server.http_url is not None:
        log.info("HTTP API on %s/api/v1 (metrics: %s/metrics)", server.http_url,
                 server.http_url)


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
