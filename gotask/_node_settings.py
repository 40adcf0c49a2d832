"""Settings of `gotask node`, from flags, environment variables and a TOML file.

Rules of this module:
- Every setting has one name (`lease_timeout`), one flag (`--lease-timeout`), one
  environment variable (`GOTASK_LEASE_TIMEOUT`) and one TOML key (`lease_timeout` or
  `lease-timeout`, at the top level or in a `[node]` table).
- Precedence, highest first: flags > environment > the TOML file > defaults. The file is
  `--config FILE`, else `$GOTASK_CONFIG`, else none.
- A value of the wrong type, an unknown key in the file, or an unreadable file raises
  `ConfigError` naming where it came from; nothing starts.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from gotask._errors import ConfigError
from gotask._logging import LOG_FORMATS, LOG_LEVELS

__all__ = ["SETTINGS", "add_node_arguments", "env_name", "resolve"]


@attrs.frozen
class Setting:
    """One node setting: its default, its type, and the help of its flag."""

    default: Any
    kind: type
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None


SETTINGS: dict[str, Setting] = {
    "app": Setting(None, str, "the gotask.App (required)", "MODULE[:ATTR]"),
    "name": Setting(None, str, "node name (default: generated)", "NAME"),
    "listen": Setting("127.0.0.1:7450", str,
                      "serve clients and nodes here (default 127.0.0.1:7450)", "HOST:PORT"),
    "storage": Setting("memory://", str,
                       "storage backend: memory:// (default; lost when the node stops), "
                       "sqlite:///path/to/gotask.db (durable, owned by this node), "
                       "redis://host:port/db, postgresql://user@host:port/db", "URL"),
    "join": Setting(None, str, "use the storage of this node", "HOST:PORT"),
    "concurrency": Setting(64, int, "jobs run at once (default 64)", "N"),
    "queues": Setting("default", str, "queues to work and their weights (default: default)",
                      "q1:3,q2:1"),
    "secret_file": Setting(None, str, "shared secret file", "PATH"),
    "insecure": Setting(False, bool, "allow a non-loopback --listen without a secret "
                                     "(and --http or --grpc without a token)"),
    "http": Setting(None, str, "serve the REST API, /metrics and health here "
                               "(see docs/http.md)", "HOST:PORT"),
    "http_token_file": Setting(None, str,
                               "bearer token for HTTP and gRPC (else $GOTASK_HTTP_TOKEN)",
                               "PATH"),
    "http_tls_cert": Setting(None, str, "serve HTTPS with this certificate", "PATH"),
    "http_tls_key": Setting(None, str, "the key of --http-tls-cert", "PATH"),
    "grpc": Setting(None, str, "serve the gRPC API here, with the HTTP token "
                               "(see docs/grpc.md; needs gotask[grpc])", "HOST:PORT"),
    "grpc_tls_cert": Setting(None, str, "serve gRPC over TLS with this certificate", "PATH"),
    "grpc_tls_key": Setting(None, str, "the key of --grpc-tls-cert", "PATH"),
    "threads": Setting(16, int, "threads for sync tasks (default 16)", "N"),
    "children": Setting(2, int, "child processes for isolation=\"process\" tasks "
                        "(default 2)", "N"),
    "max_jobs_per_child": Setting(None, int, "replace a child after this many jobs "
                                  "(default: never)", "N"),
    "max_rss_mb_per_child": Setting(None, float, "replace a child whose resident memory "
                                    "passes this after a job (default: never)", "MIB"),
    "lease_timeout": Setting(30.0, float,
                             "seconds a lease lasts without a heartbeat (default 30)", "S"),
    "heartbeat": Setting(10.0, float, "seconds between lease heartbeats (default 10)", "S"),
    "grace": Setting(30.0, float,
                     "seconds running jobs get to finish on SIGTERM (default 30)", "S"),
    "tls_cert": Setting(None, str, "serve TLS with this certificate chain (PEM)", "FILE"),
    "tls_key": Setting(None, str, "the private key of --tls-cert (PEM)", "FILE"),
    "tls_client_ca": Setting(None, str,
                             "require client certificates signed by this CA (PEM)", "FILE"),
    "tls_ca": Setting(None, str, "speak TLS to the --join node, trusting this CA", "FILE"),
    "max_args_bytes": Setting(512 * 1024, int, "largest encoded arguments of a job, at "
                              "most and by default 524288 (512 KiB)", "BYTES"),
    "max_result_bytes": Setting(256 * 1024, int, "largest encoded result kept, at most and "
                                "by default 262144 (256 KiB)", "BYTES"),
    "max_batch_jobs": Setting(10_000, int, "most jobs in one enqueue request, at most and "
                              "by default 10000", "N"),
    "log_level": Setting("INFO", str, "DEBUG, INFO (default), WARNING or ERROR", "LEVEL",
                         LOG_LEVELS),
    "log_format": Setting("text", str, "text (default) or json: one JSON object per line",
                          "FORMAT", LOG_FORMATS),
}


def env_name(name: str) -> str:
    """The environment variable of setting `name`: `GOTASK_LEASE_TIMEOUT`."""
    return "GOTASK_" + name.upper()


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag per setting (defaults stay None: `resolve` fills them in)."""
    parser.add_argument("--config", metavar="FILE",
                        help="read settings from this TOML file (default: $GOTASK_CONFIG)")
    for name, setting in SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        text = f"{setting.help} [${env_name(name)}]"
        if setting.kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            parser.add_argument(flag, type=_flag_type(setting), metavar=setting.metavar,
                                help=text)


def _flag_type(setting: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return _from_text(setting, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = setting.kind.__name__
    return parse


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Every setting's value: flags > environment > TOML file > defaults.

    Raises:
        ConfigError: a bad value, an unknown key, an unreadable file.
    """
    values = {name: setting.default for name, setting in SETTINGS.items()}
    path = flags.get("config") or environ.get("GOTASK_CONFIG")
    if path:
        values.update(read_file(path))
    for name, setting in SETTINGS.items():
        text = environ.get(env_name(name))
        if text is not None and text != "":
            try:
                values[name] = _from_text(setting, text)
            except ValueError as exc:
                raise ConfigError(f"${env_name(name)}: {exc}") from None
    values.update({k: v for k, v in flags.items() if k in SETTINGS and v is not None})
    if not values["app"]:
        raise ConfigError(f"no app: pass --app MODULE[:ATTR], set ${env_name('app')}, "
                          "or put app = \"MODULE\" in the --config file")
    return values


def read_file(path: str) -> dict[str, Any]:
    """The settings in a TOML file (top level, or its `[node]` table).

    Raises:
        ConfigError: unreadable, not TOML, an unknown key or a value of the wrong type.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from None
    node = data.get("node")
    table = node if isinstance(node, dict) else data
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        setting = SETTINGS.get(name)
        if setting is None:
            raise ConfigError(f"{path}: unknown setting {key!r}; known: "
                              + ", ".join(sorted(SETTINGS)))
        out[name] = _checked(setting, value, f"{path}: {key}")
    return out


def _checked(setting: Setting, value: Any, where: str) -> Any:
    kind = setting.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ConfigError(f"{where} must be a {kind.__name__}, got {value!r}")
    if setting.choices and str(value).lower() not in {c.lower() for c in setting.choices}:
        raise ConfigError(f"{where} must be one of {', '.join(setting.choices)}, got {value!r}")
    return value


def _from_text(setting: Setting, text: str) -> Any:
    if setting.kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    try:
        value = setting.kind(text)
    except ValueError:
        raise ValueError(f"expected a {setting.kind.__name__}, got {text!r}") from None
    if setting.choices and text.lower() not in {c.lower() for c in setting.choices}:
        raise ValueError(f"expected one of {', '.join(setting.choices)}, got {text!r}")
    return value
