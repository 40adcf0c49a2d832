"""A child process of the process pool: runs `isolation="process"` tasks, one at a time.

Run as `python -m gotask.actors._child`. Rules of this module:
- Requests come on stdin, answers go on the process's original stdout, both as a stream
  of msgpack arrays (never pickle). Before anything runs, fd 1 is pointed at stderr, so
  a task's `print` cannot corrupt the stream.
- Parent -> child: `["run", job_id, attempt, task, module, qualname, args]` (args: the
  job's msgpack `[args, kwargs]`), `["cancel"]` (sets `current_job().cancelled`).
- Child -> parent: `["progress", fraction, message]`, then one of `["ok", result]` or
  `["err", type_name, message, traceback, retry_after_s, non_retryable]`.
- The task is found by its module and qualified name (the module is imported once, and
  with it the app); a module that fails to import or a result that is not msgpack is
  an error of the job, not of the child.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import traceback
from typing import Any, BinaryIO

import msgpack

from gotask._app import JobContext, set_current_job, unpack_args
from gotask._errors import NonRetryable, Retry

#: Largest request the child buffers (a job's arguments are at most 512 KiB).
REQUEST_BYTES_MAX = 4 * 1024 * 1024


class _Link:
    """The child's end of the pipes: a write lock, the cancel flag, the next request."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.requests: list[list[Any]] = []
        self.ready = threading.Condition()

    def send(self, msg: list[Any]) -> None:
        data = msgpack.packb(msg)
        with self.lock:
            self.out.write(data)
            self.out.flush()

    def read(self, inp: BinaryIO) -> None:
        """Reader thread: requests to the queue, cancels to the flag; EOF ends the child."""
        unpacker = msgpack.Unpacker(max_buffer_size=REQUEST_BYTES_MAX)
        while data := os.read(inp.fileno(), 65536):
            unpacker.feed(data)
            for msg in unpacker:
                if msg == ["cancel"]:
                    self.cancelled.set()
                    continue
                with self.ready:
                    self.requests.append(msg)
                    self.ready.notify()
        os._exit(0)

    def next_request(self) -> list[Any]:
        with self.ready:
            while not self.requests:
                self.ready.wait()
            return self.requests.pop(0)


def _run(link: _Link, request: list[Any]) -> list[Any]:
    _, job_id, attempt, task, module, qualname, args = request
    link.cancelled.clear()
    jctx = JobContext(job_id, attempt, task,
                      lambda f, m: link.send(["progress", f, m]), link.cancelled.is_set)
    set_current_job(jctx)
    try:
        fn: Any = importlib.import_module(module)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        positional, keywords = unpack_args(args)
        result = fn(*positional, **keywords)
        msgpack.packb(result)
    except Exception as exc:  # the job's failure, reported whole
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]
        after = exc.after_s if isinstance(exc, Retry) else None
        return ["err", type(exc).__name__, str(exc)[:2000], tb, after,
                isinstance(exc, NonRetryable)]
    return ["ok", result]


def main() -> None:
    """Serve requests until stdin closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    link = _Link(out)
    threading.Thread(target=link.read, args=(sys.stdin.buffer,), daemon=True).start()
    link.send(["ready", os.getpid()])
    while True:
        link.send(_run(link, link.next_request()))


if __name__ == "__main__":
    main()
