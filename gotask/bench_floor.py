"""The floor under `gotask bench runtime`'s call figure, measured on the same machine.

Rules of this module:
- Two programs without any GoTask code, each doing one-at-a-time round trips of 8 bytes
  between this process and a child process over loopback TCP:
  - `raw`: blocking `sendall`/`recv` on both sides, no framework;
  - `trio`: the shape of a GoTask call. In the child a reader task hands each request to
    an "actor" task over a memory channel, and the actor writes the answer; here a
    reader task wakes the caller with an event.
- A call figure means little without them: on a VM both move severalfold within minutes
  (docs/benchmarks.md), and no call path on trio can beat the second.
- The child is `python -m gotask.bench_floor raw|trio PORT`. It dials back to a listener
  in this process and exits when this side closes the connection.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import trio

__all__ = ["KINDS", "measure"]

#: The programs `measure` runs.
KINDS = ("raw", "trio")
REQUEST = b"gotask:1"
_CHILD_TIMEOUT_S = 30.0


def measure(kind: str, round_trips: int) -> float:
    """Round trips/s of the `kind` program (see `KINDS`) over `round_trips` round trips.

    Raises:
        ValueError: unknown `kind`.
        RuntimeError: the child process did not connect or did not exit.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown floor program {kind!r}; known: {', '.join(KINDS)}")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        child = subprocess.Popen([sys.executable, "-m", "gotask.bench_floor", kind, str(port)])
        listener.settimeout(_CHILD_TIMEOUT_S)
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            child.kill()
            child.wait()
            raise RuntimeError(f"the {kind} floor's child process did not connect") from None
    try:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind == "raw":
            return _raw_calls(sock, round_trips)
        return trio.run(_trio_calls, sock, round_trips)
    finally:
        sock.close()
        try:
            child.wait(timeout=_CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise RuntimeError(f"the {kind} floor's child process did not exit") from None


def _raw_calls(sock: socket.socket, round_trips: int) -> float:
    start = time.perf_counter()
    for _ in range(round_trips):
        sock.sendall(REQUEST)
        got = 0
        while got < len(REQUEST):
            data = sock.recv(len(REQUEST) - got)
            if not data:
                raise ConnectionError("the floor's child closed the connection")
            got += len(data)
    return round_trips / (time.perf_counter() - start)


class _Caller:
    """The caller's side of the trio program: one request in flight at a time."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.answered = trio.Event()

    async def read(self) -> None:
        got = 0
        while data := await self.sock.recv(1 << 16):
            got += len(data)
            if got >= len(REQUEST):
                got -= len(REQUEST)
                self.answered.set()
        raise ConnectionError("the floor's child closed the connection")

    async def call(self) -> None:
        self.answered = trio.Event()
        await self.sock.send(REQUEST)
        await self.answered.wait()


async def _trio_calls(raw: socket.socket, round_trips: int) -> float:
    caller = _Caller(trio.socket.from_stdlib_socket(raw))  # wraps `raw`; `measure` closes it
    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller.read)
        start = time.perf_counter()
        for _ in range(round_trips):
            await caller.call()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return round_trips / elapsed


def _raw_echo(sock: socket.socket) -> None:
    while data := sock.recv(1 << 16):
        sock.sendall(data)


async def _trio_actor(raw: socket.socket) -> None:
    sock = trio.socket.from_stdlib_socket(raw)
    send, receive = trio.open_memory_channel[bytes](64)

    async def read() -> None:
        pending = b""
        while data := await sock.recv(1 << 16):
            pending += data
            while len(pending) >= len(REQUEST):
                send.send_nowait(pending[: len(REQUEST)])
                pending = pending[len(REQUEST) :]
        send.close()

    async def actor() -> None:
        async for request in receive:
            await sock.send(request)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(actor)


def _child(kind: str, port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=_CHILD_TIMEOUT_S) as sock:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind == "raw":
            _raw_echo(sock)
        else:
            trio.run(_trio_actor, sock)


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
