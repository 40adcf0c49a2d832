"""Serving the HTTP face with hypercorn's trio worker, inside the node's nursery.

Rules of this module:
- `serve_http` runs until its shutdown event is set or its scope is cancelled; it reports
  the bound port through `task_status` (port 0 picks a free one).
- `check_http_bind` refuses a non-loopback address without a token unless the operator
  said `insecure`, as the TCP listener does for its secret.
- Access logs are off: a request line could carry ids an operator did not mean to log,
  and never a token (tokens travel only in the Authorization header).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from gotask._errors import ConfigError
from gotask.transports.tcp import is_loopback

__all__ = ["check_http_bind", "read_token", "serve_http"]

_TOKEN_MIN = 16


def check_http_bind(host: str, token: bytes | None, insecure: bool) -> None:
    """Refuse to serve HTTP off loopback without a token.

    Raises:
        ConfigError: `host` is not loopback, there is no token and not `insecure`.
    """
    if token is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve HTTP on {host} without a token: pass --http-token-file "
            "(or set GOTASK_HTTP_TOKEN), or --insecure to accept anyone")


def read_token(path: str | None, env: Mapping[str, str] | None = None) -> bytes | None:
    """The HTTP bearer token: from the file at `path`, else `$GOTASK_HTTP_TOKEN`.

    Raises:
        ConfigError: unreadable, shorter than 16 bytes, or not printable ASCII.
    """
    env = os.environ if env is None else env
    text = env.get("GOTASK_HTTP_TOKEN")
    if path is not None:
        try:
            data = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the HTTP token file {path}: {exc.strerror}") from None
    elif text:
        data = text.strip().encode()
    else:
        return None
    if len(data) < _TOKEN_MIN or not all(33 <= b < 127 for b in data):
        raise ConfigError(f"the HTTP token must be at least {_TOKEN_MIN} printable ASCII "
                          "characters without spaces")
    return data


async def serve_http(app: Any, host: str, port: int, *, tls: tuple[str, str] | None,
                     shutdown: trio.Event,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` on host:port until `shutdown` is set; started with the bound port."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 5.0
    if tls is not None:
        config.certfile, config.keyfile = tls
    await serve(app, config, shutdown_trigger=shutdown.wait,  # type: ignore[arg-type]
                task_status=_PortStatus(task_status))


class _PortStatus:
    """Passes on the port of hypercorn's first bound URL ("http://host:port")."""

    def __init__(self, inner: trio.TaskStatus[int]) -> None:
        self._inner = inner

    def started(self, value: Any = None) -> None:
        self._inner.started(int(str(value[0]).rsplit(":", 1)[1]))
