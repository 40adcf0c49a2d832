"""Node configuration: parsing and checking what an operator asks for.

Rules of this module:
- Every setting has a safe default; a malformed or unsafe one raises `ConfigError`
  with a message naming the setting.
- The app module is chosen by the operator (`--app MODULE[:ATTR]`); jobs never name
  code by path, only registered task names.
- Secrets are read from a file and never appear in a repr, a log line or an error. Only
  a regular file of at most `SECRET_BYTES_MAX` bytes is read; one that group or others
  may read is used with a warning. Storage passwords come from the URL, or, to keep them
  out of `ps`, from `$GOTASK_STORAGE_PASSWORD_FILE` or `$GOTASK_STORAGE_PASSWORD`.
"""

from __future__ import annotations

import importlib
import logging
import os
import ssl
import stat
import sys
from collections.abc import Callable, Mapping
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import attrs

from gotask._app import App, ProcessLimits
from gotask._errors import ConfigError
from gotask._job import ARGS_BYTES_MAX, RESULT_BYTES_MAX
from gotask._protocol import IDS_MAX
from gotask.transports.tcp import is_loopback

__all__ = [
    "DEFAULT_PORT",
    "NodeConfig",
    "join_ssl_context",
    "load_app",
    "parse_hostport",
    "parse_queues",
    "read_secret",
    "server_ssl_context",
    "storage_password",
    "with_password",
]

log = logging.getLogger("gotask.config")
#: Longest secret or password file read, in bytes.
SECRET_BYTES_MAX = 4096

DEFAULT_PORT = 7450
#: Storage URLs a node accepts: the memory backend, a SQLite file this node owns, or a
#: Redis or PostgreSQL shared by every node.
STORAGE_SCHEMES = ("memory://", "sqlite://", "redis://", "rediss://", "unix://",
                   "postgresql://", "postgres://")


@attrs.frozen
class NodeConfig:
    """What one `gotask node` process runs (durations in seconds)."""

    app: App
    name: str | None = None
    listen: tuple[str, int] | None = ("127.0.0.1", DEFAULT_PORT)
    storage: str = "memory://"
    join: tuple[str, int] | None = None
    concurrency: int = 64
    queues: tuple[tuple[str, int], ...] = (("default", 1),)
    secret: bytes | None = attrs.field(default=None, repr=False)
    insecure: bool = False
    lease_timeout_s: float = 30.0
    heartbeat_s: float = 10.0
    grace_s: float = 30.0
    threads: int = 16
    #: Child processes of `isolation="process"` tasks (docs/tasks.md).
    processes: ProcessLimits = attrs.Factory(ProcessLimits)
    http: tuple[str, int] | None = None
    http_token: bytes | None = attrs.field(default=None, repr=False)
    http_tls: tuple[str, str] | None = None
    #: The gRPC face (docs/grpc.md): its address and TLS (cert, key); it takes `http_token`.
    grpc: tuple[str, int] | None = None
    grpc_tls: tuple[str, str] | None = None
    #: PEM files: this node's certificate chain and key (served, and shown to a --join
    #: node that asks), the CA its clients' certificates must chain to, and the CA the
    #: --join node's certificate must chain to (set: the link to it speaks TLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_ca: str | None = None
    #: Size limits (docs/guarantees.md, "Size limits"): encoded arguments and results, in
    #: bytes, and jobs per enqueue. They may be lowered, never raised: a job record must
    #: fit one wire frame.
    args_bytes_max: int = ARGS_BYTES_MAX
    result_bytes_max: int = RESULT_BYTES_MAX
    batch_jobs_max: int = IDS_MAX

    def __attrs_post_init__(self) -> None:
        self._check_limits()
        if not 1 <= self.concurrency <= 10_000:
            raise ConfigError(f"--concurrency must be 1-10000, got {self.concurrency}")
        if not 0 < self.heartbeat_s < self.lease_timeout_s:
            raise ConfigError(
                f"--heartbeat ({self.heartbeat_s}s) must be shorter than --lease-timeout "
                f"({self.lease_timeout_s}s)"
            )
        if not 1 <= self.threads <= 1000:
            raise ConfigError(f"--threads must be 1-1000, got {self.threads}")
        if not self.storage.startswith(STORAGE_SCHEMES):
            raise ConfigError(
                f"storage {self.storage.split('://')[0]!r} is not supported; use memory://, "
                "sqlite:///path/to/gotask.db, redis://host:port/db or "
                "postgresql://user@host:port/db"
            )
        if self.join is not None and self.listen is not None and self.listen == self.join:
            raise ConfigError("--join must name another node, not this node's --listen")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: pass both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.listen is not None and self.secret is None and not self.insecure \
                and not is_loopback(self.listen[0]):
            raise ConfigError(
                f"refusing to listen on {self.listen[0]} without a secret: pass "
                "--secret-file, or --insecure to accept unauthenticated peers"
            )
        if self.http is not None and self.http_token is None and not self.insecure \
                and not is_loopback(self.http[0]):
            raise ConfigError(
                f"refusing to serve HTTP on {self.http[0]} without a token: pass "
                "--http-token-file (or set GOTASK_HTTP_TOKEN), or --insecure to accept anyone"
            )
        if self.grpc is not None and self.http_token is None and not self.insecure \
                and not is_loopback(self.grpc[0]):
            raise ConfigError(
                f"refusing to serve gRPC on {self.grpc[0]} without a token: pass "
                "--http-token-file (or set GOTASK_HTTP_TOKEN), or --insecure to accept anyone"
            )


    def _check_limits(self) -> None:
        for flag, value, top in (("--max-args-bytes", self.args_bytes_max, ARGS_BYTES_MAX),
                                 ("--max-result-bytes", self.result_bytes_max,
                                  RESULT_BYTES_MAX),
                                 ("--max-batch-jobs", self.batch_jobs_max, IDS_MAX)):
            if not 1 <= value <= top:
                raise ConfigError(f"{flag} must be 1-{top}, got {value} (a job record must "
                                  "fit one wire frame, so the limits can only be lowered)")


def server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The TLS context the node's listener serves with, or None without --tls-cert.

    Raises:
        ConfigError: a certificate, key or CA file that cannot be loaded.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load(context.load_cert_chain, "--tls-cert/--tls-key", config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        _load(context.load_verify_locations, "--tls-client-ca", config.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def join_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The TLS context of the link to the --join node, or None without --tls-ca.

    Raises:
        ConfigError: a certificate, key or CA file that cannot be loaded.
    """
    if config.tls_ca is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    _load(context.load_verify_locations, "--tls-ca", config.tls_ca)
    if config.tls_cert is not None and config.tls_key is not None:
        _load(context.load_cert_chain, "--tls-cert/--tls-key", config.tls_cert, config.tls_key)
    return context


def _load(method: Callable[..., None], what: str, *paths: str) -> None:
    try:
        method(*paths)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load {what} ({', '.join(paths)}): {exc}") from None


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """Parse `HOST:PORT` (`[::1]:7450` for IPv6).

    Raises:
        ConfigError: not HOST:PORT with a port 0-65535.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


def parse_queues(text: str) -> tuple[tuple[str, int], ...]:
    """Parse `q1:3,q2:1` (a weight defaults to 1).

    Raises:
        ConfigError: an empty name, a weight that is not a positive integer, a repeat.
    """
    out: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        if not name or (weight and not weight.isdigit()) or (weight and int(weight) < 1):
            raise ConfigError(f"--queues must look like q1:3,q2:1, got {text!r}")
        if name in out:
            raise ConfigError(f"queue {name!r} is named twice in --queues")
        out[name] = int(weight or 1)
    return tuple(out.items())


def read_secret(path: str | None) -> bytes | None:
    """Read a shared secret from a file (one trailing newline stripped).

    Only a regular file is read (a FIFO or a device such as /dev/zero is refused without
    blocking), at most `SECRET_BYTES_MAX` bytes; a file that group or others may read is
    used, with a warning naming the file and its mode (never the secret).

    Raises:
        ConfigError: unreadable, not a regular file, too long, or shorter than 16 bytes.
    """
    if path is None:
        return None
    data = _read_small_file(path, "secret file")
    data = data[:-1] if data.endswith(b"\n") else data
    if len(data) < 16:
        raise ConfigError(f"the secret in {path} is shorter than 16 bytes")
    return data


def _read_small_file(path: str, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the {what} {path} is not a regular file")
        if info.st_mode & 0o077:
            log.warning("the %s %s is readable by group or others (mode %o): "
                        "chmod 600 it", what, path, stat.S_IMODE(info.st_mode))
        data = file.read(SECRET_BYTES_MAX + 1)
    if len(data) > SECRET_BYTES_MAX:
        raise ConfigError(f"the {what} {path} is longer than {SECRET_BYTES_MAX} bytes")
    return data


def storage_password(environ: Mapping[str, str]) -> str | None:
    """The storage password from `$GOTASK_STORAGE_PASSWORD_FILE` or
    `$GOTASK_STORAGE_PASSWORD` (the file wins), or None: neither is set.

    Raises:
        ConfigError: the file is unreadable, not a regular file, too long, or not UTF-8.
    """
    path = environ.get("GOTASK_STORAGE_PASSWORD_FILE")
    if path:
        raw = _read_small_file(path, "storage password file")
        try:
            return raw.decode().rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(f"the storage password file {path} is not UTF-8") from None
    return environ.get("GOTASK_STORAGE_PASSWORD") or None


def with_password(url: str, password: str | None) -> str:
    """`url` (redis://, rediss://, postgresql://) with `password` set, unless it has one.

    Keeps the password off the command line, where `ps` shows it to every local user.
    """
    if password is None or url.startswith(("memory://", "sqlite://", "unix://")):
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def load_app(spec: str) -> App:
    """Import the operator's app: `package.module` or `package.module:attribute`.

    Raises:
        ConfigError: the module cannot be imported or the attribute is not an App.
    """
    module_name, _, attr = spec.partition(":")
    # Like uvicorn's --app-dir default: the operator's working directory is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import app module {module_name!r}: {exc}") from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise ConfigError(f"{spec!r} is not a gotask.App (expected MODULE or MODULE:ATTR)")
    return app
