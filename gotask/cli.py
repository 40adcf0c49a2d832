"""The `gotask` command: enqueue and inspect jobs, queues, the DLQ and nodes; run a node.

Rules of this module:
- `main(argv)` returns the exit code: 0 success, 1 a failure (the job failed, the node
  is unreachable, the job does not exist, the node refused the request), 2 a usage error,
  130 interrupted. An expected error prints one line to stderr, never a traceback; an
  unexpected one prints one line too, and its traceback only with `--debug`.
- Client commands take `--node HOST:PORT` (repeatable; default `GOTASK_NODES`, else
  127.0.0.1:7450) and `--secret-file PATH` (default `GOTASK_SECRET_FILE`).
- `--json` prints JSON (one object, or one per line for a live `job --wait`) on stdout.
- `node` and `bench` belong to their own modules, imported only when used.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import ssl
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import trio

from gotask import _cli_commands
from gotask._client_conn import nodes_from_env, parse_address
from gotask._errors import ConfigError, GoTaskError
from gotask._job import STORED_STATES, check_job_fields
from gotask.client import AsyncClient
from gotask.config import read_secret

__all__ = ["build_parser", "main"]

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    """A command line that cannot be run as written (exit code 2).

    Args:
        message: what is wrong. prog: the (sub)command, e.g. "gotask enqueue".
    """

    def __init__(self, message: str, prog: str = "gotask") -> None:
        super().__init__(f"{prog}: error: {message} (see '{prog} --help')")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line, through `UsageError`."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `gotask` command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] != ["bench"] and "--debug" in argv
    try:
        return _main(argv)
    except Exception as exc:
        if debug:
            raise
        leaf = _leaf(exc)
        if isinstance(leaf, ConfigError):
            return _fail(str(leaf), EXIT_USAGE)
        if isinstance(leaf, GoTaskError | OSError):
            return _fail(_explain(leaf), EXIT_FAILURE)
        return _fail(f"unexpected {type(leaf).__name__}: {leaf} (run again with --debug "
                     "for the traceback, and please report it)", EXIT_FAILURE)


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups (trio's nurseries wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _explain(exc: BaseException) -> str:
    """One line naming the cause of an expected error and, where known, the fix."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return ("cannot listen: the address is in use by another process (another node?); "
                "stop it or pick a free port with --listen HOST:PORT")
    return str(exc)


def _main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["bench"]:  # its options are its own: pass them through untouched
            return _bench(argv[1:])
        args = build_parser().parse_args([a for a in argv if a != "--debug"])
        if args.command == "node":
            return _node(args)
        if args.command == "migrate":
            return _migrate(args)
        _check_together(args)
        return trio.run(_client_command, args, _client_options(args))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (GoTaskError, OSError) as exc:
        return _fail(_explain(exc), EXIT_FAILURE)


def _check_together(args: argparse.Namespace) -> None:
    """Raise `UsageError` for options that argparse cannot check one by one."""
    if args.command == "dlq" and args.action != "list" and bool(args.ids) == bool(args.all):
        raise UsageError("give job IDs or --all (not both)", f"gotask dlq {args.action}")
    if args.command == "enqueue" and args.wait_timeout is not None and not args.wait:
        raise UsageError("--wait-timeout needs --wait", "gotask enqueue")
    if args.command == "enqueue":
        try:
            check_job_fields(task=args.task, queue=args.queue, priority=args.priority,
                             max_attempts=args.max_attempts,
                             idempotency_key=args.idempotency_key)
        except ValueError as exc:
            raise UsageError(_option_words(str(exc)), "gotask enqueue") from None


def _option_words(message: str) -> str:
    """A field check's message in the words of the command line's options."""
    for field in ("max_attempts", "idempotency_key", "priority", "queue"):
        if message.startswith(field):
            return "--" + field.replace("_", "-") + message[len(field):]
    return message


def _fail(message: str, code: int) -> int:
    line = " | ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"gotask: error: {line}", file=sys.stderr)
    return code


# -- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (`node` and `bench` included, for --help)."""
    parser = _Parser(prog="gotask", description="GoTask: a distributed task queue.")
    parser.add_argument("--version", action="version", version=f"gotask {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    client = _client_parent()
    _add_enqueue(sub, client)
    job = sub.add_parser("job", parents=[client], help="show a job, or follow it live")
    job.add_argument("id", metavar="ID")
    job.add_argument("--wait", action="store_true", help="follow it live until it finishes")
    _add_queues(sub, client)
    _add_jobs(sub, client)
    _add_dlq(sub, client)
    cancel = sub.add_parser("cancel", parents=[client], help="cancel a job")
    cancel.add_argument("id", metavar="ID")
    sub.add_parser("nodes", parents=[client], help="the live nodes of the cluster")
    _add_cron(sub, client)
    _add_node(sub)
    _add_migrate(sub)
    sub.add_parser("bench", add_help=False, help="run a benchmark (gotask bench --help)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gotask")
    except PackageNotFoundError:
        return "unknown"


def _client_parent() -> _Parser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument("--node", action="append", metavar="HOST:PORT",
                       help="a node to talk to; repeat for failover "
                            "(default: $GOTASK_NODES, else 127.0.0.1:7450)")
    group.add_argument("--secret-file", metavar="PATH",
                       help="file holding the shared secret (default: $GOTASK_SECRET_FILE)")
    group.add_argument("--tls", action="store_true", help="speak TLS, checking the system CAs")
    group.add_argument("--tls-ca", metavar="FILE", help="speak TLS, trusting this CA bundle")
    group.add_argument("--timeout", type=_positive_float, default=10.0, metavar="S",
                       help="seconds to wait for each answer (default 10)")
    parent.add_argument("--json", action="store_true", help="print JSON")
    return parent


def _add_enqueue(sub: Any, client: _Parser) -> None:
    p = sub.add_parser("enqueue", parents=[client], help="enqueue a job; print its id")
    p.add_argument("task", metavar="TASK", help="the registered task name")
    p.add_argument("--args", type=_json_list, default=[], metavar="JSON",
                   help="positional arguments, a JSON array")
    p.add_argument("--kwargs", type=_json_object, default={}, metavar="JSON",
                   help="keyword arguments, a JSON object")
    p.add_argument("--queue", metavar="Q", help="override the task's queue")
    p.add_argument("--priority", type=int, metavar="N", help="higher runs first")
    p.add_argument("--delay", type=_nonneg_float, default=0.0, metavar="S",
                   help="seconds before the job is due")
    p.add_argument("--max-attempts", type=int, metavar="N", help="attempts before the DLQ")
    p.add_argument("--idempotency-key", metavar="K", help="enqueue at most once per key")
    p.add_argument("--wait", action="store_true", help="wait and print the result")
    p.add_argument("--wait-timeout", type=_positive_float, metavar="S",
                   help="give up waiting after S seconds (exit 1)")


def _add_dlq(sub: Any, client: _Parser) -> None:
    dlq = sub.add_parser("dlq", help="the dead-letter queue")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("list", parents=[client], help="list dead jobs")
    ls.add_argument("--queue", metavar="Q", help="only this queue")
    ls.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                    help="at most N (100)")
    for name, text in (("retry", "queue dead jobs again"), ("purge", "delete dead jobs")):
        p = actions.add_parser(name, parents=[client], help=text)
        p.add_argument("ids", nargs="*", metavar="ID")
        p.add_argument("--all", action="store_true", help="every dead job")


def _add_jobs(sub: Any, client: _Parser) -> None:
    p = sub.add_parser("jobs", parents=[client], help="list jobs, oldest first")
    p.add_argument("--queue", metavar="Q", type=_queue_name, help="only this queue")
    p.add_argument("--state", choices=sorted(s.value for s in STORED_STATES),
                   help="only this state")
    p.add_argument("--task", metavar="T", help="only this task")
    p.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                   help="at most N (100)")
    p.add_argument("--after", metavar="ID", help="the page after this job id")


def _add_queues(sub: Any, client: _Parser) -> None:
    queues = sub.add_parser("queues", parents=[client],
                            help="job counts per queue and state; pause or resume a queue")
    actions = queues.add_subparsers(dest="action", metavar="ACTION")
    for name, text in (("pause", "pause a queue, cluster-wide: its jobs wait, queued"),
                       ("resume", "resume a paused queue")):
        p = actions.add_parser(name, parents=[client], help=text)
        p.add_argument("name", metavar="NAME", type=_queue_name)


def _add_cron(sub: Any, client: _Parser) -> None:
    cron = sub.add_parser("cron", help="recurring jobs (cron entries)")
    actions = cron.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[client], help="list the cron entries")
    for name, text in (("pause", "pause an entry, cluster-wide"),
                       ("resume", "resume a paused entry"),
                       ("run", "enqueue one job of an entry now, outside its schedule")):
        p = actions.add_parser(name, parents=[client], help=text)
        p.add_argument("name", metavar="NAME")


def _add_node(sub: Any) -> None:
    from gotask._node_settings import add_node_arguments

    p = sub.add_parser("node", help="run a node (until SIGINT/SIGTERM)")
    add_node_arguments(p)


def _add_migrate(sub: Any) -> None:
    p = sub.add_parser("migrate", help="create or update GoTask's tables in PostgreSQL")
    p.add_argument("--storage", required=True, metavar="URL",
                   help="postgresql://user@host:port/db[?schema=S] (schema default gotask)")
    p.add_argument("--print-sql", action="store_true",
                   help="print the SQL for a DBA to apply by hand; connect to nothing")


def _json_list(text: str) -> list[Any]:
    value = _json(text)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON array, got {text!r}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    value = _json(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {exc.msg}") from None


def _queue_name(text: str) -> str:
    try:
        check_job_fields(queue=text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


# -- node and bench ----------------------------------------------------------------------------


def _node(args: argparse.Namespace) -> int:
    try:
        from gotask._node_main import main as node_main
    except ModuleNotFoundError as exc:
        if exc.name != "gotask._node_main":
            raise
        return _fail("'gotask node' is not available in this installation", EXIT_FAILURE)
    return node_main(args)


def _migrate(args: argparse.Namespace) -> int:
    from gotask._node_main import migrate  # storage code lives with the node's

    code: int = migrate(args)
    return code


def _bench(argv_rest: list[str]) -> int:
    try:
        from gotask.bench import main as bench_main  # type: ignore[import-not-found]
    except ModuleNotFoundError as exc:
        if exc.name != "gotask.bench":
            raise
        return _fail("'gotask bench' is not available in this installation", EXIT_FAILURE)
    code: int = bench_main(argv_rest)
    return code


# -- client commands -----------------------------------------------------------------------------


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    """Client settings from the options, falling back on the environment.

    Raises:
        ConfigError: a bad address, or an unreadable or too short secret file.
    """
    nodes = args.node or nodes_from_env(os.environ)
    for address in nodes:
        parse_address(address)
    secret_file = args.secret_file or os.environ.get("GOTASK_SECRET_FILE") or None
    context = None
    if args.tls or args.tls_ca:
        try:
            context = ssl.create_default_context(cafile=args.tls_ca)
        except OSError as exc:
            raise ConfigError(f"cannot load --tls-ca {args.tls_ca!r}: {exc}") from None
    return {"nodes": nodes, "secret": read_secret(secret_file), "ssl_context": context,
            "call_timeout_s": args.timeout}


async def _client_command(args: argparse.Namespace, options: dict[str, Any]) -> int:
    async with AsyncClient(**options) as client:
        return await _cli_commands.run(client, args)


if __name__ == "__main__":
    sys.exit(main())
