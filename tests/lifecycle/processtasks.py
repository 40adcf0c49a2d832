"""Tasks of the process-isolation tests: importable at top level, as a child needs."""

from __future__ import annotations

import ctypes
import os
import time

import gotask

from .conftest import app

#: Memory each `leaks` job keeps in its child (module state lives as long as the child).
_leaked: list[bytes] = []


@app.task(name="p_pid", isolation="process")
def p_pid(x: int) -> list[int]:
    return [os.getpid(), x * 2]


@app.task(name="p_sleep", isolation="process", max_attempts=1)
def p_sleep(seconds: float) -> str:
    gotask.current_job().progress(0.5, "sleeping")  # the test knows the child runs it
    time.sleep(seconds)  # blocks in C: only killing the process stops it
    return "slept"


@app.task(name="p_segfault", isolation="process", max_attempts=1)
def p_segfault() -> None:
    ctypes.string_at(0)


@app.task(name="p_exit", isolation="process", max_attempts=1)
def p_exit() -> None:
    os._exit(3)


@app.task(name="p_leak", isolation="process")
def p_leak(mb: int) -> list[int]:
    _leaked.append(b"x" * (mb * 2**20))  # touched pages: they count in RSS
    return [os.getpid(), len(_leaked)]


@app.task(name="p_fails", isolation="process", max_attempts=1)
def p_fails() -> None:
    raise KeyError("missing")


@app.task(name="p_bad_result", isolation="process", max_attempts=1)
def p_bad_result() -> object:
    return object()


@app.task(name="p_progress", isolation="process")
def p_progress() -> str:
    job = gotask.current_job()
    job.progress(0.25, "quarter")
    while not job.cancelled:
        time.sleep(0.01)
    return "saw the cancellation"
