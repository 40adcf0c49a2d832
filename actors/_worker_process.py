"""The pool of child processes that runs `isolation="process"` tasks.

Rules of this module:
- At most `ProcessLimits.children` children run jobs at once, one job each. A child is
  started (`python -m gotask.actors._child`, with this process's `sys.path`) when a job
  needs one and none is idle, and kept for the next job.
- Requests and answers are msgpack streams over the child's stdin and stdout (`_child`).
- A timeout (or a drain's cancellation) kills the child: SIGTERM, then SIGKILL after
  `kill_grace_s`. A cancellation (`current_job().cancelled`) is sent to the child first;
  a child that has not answered within `kill_grace_s` is killed the same way.
- A child that dies during a job (a segfault, `os._exit`) fails the attempt with
  `ChildDied`; the pool starts a new child for the next job.
- After each job a child is retired when it has run `max_jobs_per_child` jobs or its
  resident memory exceeds `max_rss_mb_per_child` (read from /proc).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs
import msgpack
import trio

from gotask._app import JobContext, ProcessLimits, Task
from gotask._errors import ChildDied, NonRetryable, Retry

__all__ = ["ChildTaskFailed", "ProcessPool"]

ANSWER_BYTES_MAX = 8 * 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ChildTaskFailed(Exception):
    """A task raised in its child: its type name and traceback come from there."""

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(message)
        self.type_name, self.tb = type_name, tb


class _NonRetryableInChild(ChildTaskFailed, NonRetryable):
    pass


class _RetryInChild(ChildTaskFailed, Retry):
    def __init__(self, type_name: str, message: str, tb: str, after_s: float | None) -> None:
        ChildTaskFailed.__init__(self, type_name, message, tb)
        self.after_s = after_s


@attrs.define(eq=False)
class _Child:
    proc: trio.Process
    unpacker: msgpack.Unpacker = attrs.Factory(
        lambda: msgpack.Unpacker(max_buffer_size=ANSWER_BYTES_MAX))
    jobs: int = 0

    async def send(self, msg: list[Any]) -> None:
        assert self.proc.stdin is not None
        try:
            await self.proc.stdin.send_all(msgpack.packb(msg))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ChildDied(await self._death()) from None

    async def receive(self) -> list[Any]:
        assert self.proc.stdout is not None
        while True:
            for msg in self.unpacker:
                return list(msg)
            data = await self.proc.stdout.receive_some(65536)
            if not data:
                raise ChildDied(await self._death())
            self.unpacker.feed(data)

    async def _death(self) -> str:
        code = await self.proc.wait()
        if code < 0:
            return (f"the child process {self.proc.pid} running the job died of "
                    f"{signal.Signals(-code).name}")
        return f"the child process {self.proc.pid} running the job exited with status {code}"

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE / 2**20
        except OSError:
            return 0.0


@attrs.define(eq=False)
class ProcessPool:
    """Children of one worker pool; see the module rules."""

    limits: ProcessLimits
    idle: list[_Child] = attrs.Factory(list)
    limiter: trio.CapacityLimiter = attrs.field(init=False)
    started: int = 0  # children started so far

    def __attrs_post_init__(self) -> None:
        self.limiter = trio.CapacityLimiter(self.limits.children)

    async def run(self, task: Task, args: bytes, jctx: JobContext,
                  report: Callable[[float, str], None]) -> Any:
        """Run `task` with the job's packed `args` in a child; return its result.

        Raises:
            ChildTaskFailed: the task raised (its type name and traceback kept).
            ChildDied: the child died during the job.
            trio.Cancelled: a timeout or cancellation; the child was stopped first.
        """
        async with self.limiter:
            child = self.idle.pop() if self.idle else await self._start()
            keep = False
            try:
                await child.send(["run", jctx.job_id, jctx.attempt, task.name,
                                  task.fn.__module__, task.fn.__qualname__, args])
                answer = await self._answer(child, report)
                keep = True
            except trio.Cancelled:
                keep = jctx.cancelled and await self._cancel(child, report)
                raise
            finally:
                if keep and self._fresh(child):
                    self.idle.append(child)
                else:
                    with trio.CancelScope(shield=True):
                        await self._stop(child)
        return _result(answer)

    async def _start(self) -> _Child:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gotask.actors._child"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env)
        self.started += 1
        child = _Child(proc)
        try:
            await child.receive()  # ["ready", pid]: the child is serving
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop(child)
            raise
        return child

    async def _answer(self, child: _Child, report: Callable[[float, str], None]) -> list[Any]:
        while True:
            msg = await child.receive()
            if msg[0] != "progress":
                child.jobs += 1
                return msg
            report(float(msg[1]), str(msg[2]))

    async def _cancel(self, child: _Child, report: Callable[[float, str], None]) -> bool:
        """Ask the child to cancel; True when it answered within the grace period."""
        with trio.CancelScope(shield=True), trio.move_on_after(self.limits.kill_grace_s):
            try:
                await child.send(["cancel"])
                await self._answer(child, report)
                return True
            except (ChildDied, trio.BrokenResourceError):
                return False
        return False

    def _fresh(self, child: _Child) -> bool:
        limits = self.limits
        if limits.max_jobs_per_child is not None and child.jobs >= limits.max_jobs_per_child:
            return False
        cap = limits.max_rss_mb_per_child
        return cap is None or child.rss_mb() <= cap

    async def _stop(self, child: _Child) -> None:
        """SIGTERM, then SIGKILL after the grace period; reaps the child."""
        if child.proc.returncode is None:
            child.proc.terminate()
            with trio.move_on_after(self.limits.kill_grace_s):
                await child.proc.wait()
            if child.proc.returncode is None:
                child.proc.kill()
        await child.proc.wait()
        for stream in (child.proc.stdin, child.proc.stdout):
            if stream is not None:
                await stream.aclose()

    async def aclose(self) -> None:
        """Stop every idle child."""
        idle, self.idle = self.idle, []
        for child in idle:
            await self._stop(child)


def _result(answer: list[Any]) -> Any:
    if answer[0] == "ok":
        return answer[1]
    _, type_name, message, tb, after_s, non_retryable = answer
    if non_retryable:
        raise _NonRetryableInChild(type_name, message, tb)
    if after_s is not None:
        raise _RetryInChild(type_name, message, tb, after_s)
    raise ChildTaskFailed(type_name, message, tb)
