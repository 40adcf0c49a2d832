"""The blocking `Client` (issue 20): no thread of its own, one link per thread, fork-safe,
interruptible. Fake Brokers (tests/test_client.py) on real loopback sockets; the Ctrl-C,
exit and fork cases run in real child processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio

from gotask._errors import ConnectionLost
from gotask._protocol import WatchJobs
from gotask.client import Client
from gotask.transports._link import LinkOptions

from .test_client import FakeBroker, JobTable, start_fake

ROOT = Path(__file__).resolve().parents[1]
EXIT_S = 10.0


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBroker:
    return await start_fake(nursery)


def _enqueue_from_threads(address: str, threads: int, each: int) -> tuple[list[str], int]:
    client = Client(address)
    ids: list[str] = []
    names: set[tuple[str, str | None]] = set()
    lock = threading.Lock()

    def work() -> None:
        mine = [client.enqueue("add", i, 1) for i in range(each)]
        with lock:
            ids.extend(mine)
            names.add((client.node_name, client.connected_to))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    client.close()
    return ids, len({name for name, where in names if where == address})


async def test_threads_share_one_client_with_a_link_each(fake: FakeBroker) -> None:
    ids, links = await trio.to_thread.run_sync(_enqueue_from_threads, fake.address, 6, 20)
    assert len(set(ids)) == 120 and set(ids) <= set(fake.table.jobs)
    assert links == 6


def _lose_then_read(client: Client, first: threading.Event,
                    held: threading.Event) -> tuple[str, str | None, str]:
    job_id = client.enqueue("slow")
    first.set()
    held.wait()
    try:
        client.enqueue("slow")  # held by node A, which then goes down
    except ConnectionLost as exc:
        lost = str(exc)
    else:
        lost = "not lost"
    read = client.get(job_id).id
    return lost, client.connected_to, read


async def test_a_plain_enqueue_in_flight_is_not_resent_and_reads_fail_over(
    nursery: trio.Nursery,
) -> None:
    table = JobTable()
    node_a = await start_fake(nursery, "node-a", table=table)
    node_b = await start_fake(nursery, "node-b", table=table)
    client = Client([node_a.address, node_b.address])
    first, held = threading.Event(), threading.Event()

    async def hold_then_stop() -> None:
        await trio.to_thread.run_sync(first.wait)
        node_a.hold = True
        held.set()
        with trio.fail_after(5):
            while len(node_a.received) < 2:
                await trio.sleep(0.005)
        node_a.stop()

    nursery.start_soon(hold_then_stop)
    lost, where, read = await trio.to_thread.run_sync(_lose_then_read, client, first, held)
    client.close()
    assert "in flight" in lost
    assert where == node_b.address and read == "job-1"
    # The plain enqueue reached A (which swallowed it) and was not resent to B.
    assert [type(m).__name__ for m in node_b.received] == ["GetJobs"]


async def test_a_link_the_node_closed_between_calls_is_dialed_again(
    nursery: trio.Nursery,
) -> None:
    fake = await start_fake(nursery, options=LinkOptions(heartbeat_s=0.1,
                                                         auth_failure_delay_s=0.0))
    client = Client(fake.address)  # silent between calls: the node drops it after 0.3 s
    first = await trio.to_thread.run_sync(client.enqueue, "add", 1, 2)
    await trio.sleep(0.8)
    second = await trio.to_thread.run_sync(client.enqueue, "add", 3, 4)
    await trio.to_thread.run_sync(client.close)
    assert first != second and {first, second} <= set(fake.table.jobs)


def _watch(address: str, job_id: str) -> list[str]:
    with Client(address) as client:
        return [job.state for job in client.watch(job_id)]


async def test_watch_yields_pushed_changes_until_terminal(fake: FakeBroker) -> None:
    client = Client(fake.address)
    job_id = await trio.to_thread.run_sync(client.enqueue, "slow")
    fake.watchers.clear()
    fake_nursery_done = trio.Event()

    async def run() -> None:
        await fake.run_when_watched(job_id)
        fake_nursery_done.set()

    async with trio.open_nursery() as tasks:
        tasks.start_soon(run)
        states = await trio.to_thread.run_sync(_watch, fake.address, job_id)
    await trio.to_thread.run_sync(client.close)
    assert states[0] == "queued" and states[-1] == "succeeded"
    assert fake_nursery_done.is_set()


# -- real child processes ----------------------------------------------------------------


def _script(address: str, body: str) -> list[str]:
    head = f"import sys, gotask\nclient = gotask.Client({address!r})\n"
    return [sys.executable, "-c", head + textwrap.dedent(body)]


def _run_child(cmd: list[str], *, interrupt_after: str | None = None) -> tuple[int, str, float]:
    """Run `cmd`; send SIGINT once it printed `interrupt_after`; its code, output and
    the seconds it took to exit after the signal (or in all)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    start = time.monotonic()
    if interrupt_after is not None:
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == interrupt_after:
                break
        time.sleep(0.3)  # well inside the blocking call
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=EXIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, _ = proc.communicate()
        return -999, "".join(lines) + rest, EXIT_S
    return proc.returncode, "".join(lines) + rest, time.monotonic() - start


CTRL_C = {
    "wait": """
        job_id = client.enqueue("slow")
        print("calling", flush=True)
        client.wait(job_id)
    """,
    "enqueue": """
        print("calling", flush=True)  # the node swallows the request: no answer comes
        client.enqueue("add", 1, 2)
    """,
}


@pytest.mark.parametrize("call", sorted(CTRL_C))
async def test_ctrl_c_inside_a_call_raises_keyboard_interrupt(
    fake: FakeBroker, call: str
) -> None:
    fake.hold = call == "enqueue"
    run = partial(_run_child, _script(fake.address, CTRL_C[call]), interrupt_after="calling")
    code, output, _ = await trio.to_thread.run_sync(run)
    assert "KeyboardInterrupt" in output, output
    assert code == -signal.SIGINT, output  # an uncaught KeyboardInterrupt, within EXIT_S


async def test_a_script_with_a_module_level_client_exits(fake: FakeBroker) -> None:
    body = """
        job_id = client.enqueue("add", 20, 22)
        print(client.wait(job_id, timeout_s=5), flush=True)
    """
    code, output, _ = await trio.to_thread.run_sync(_run_child, _script(fake.address, body))
    assert (code, output.strip()) == (0, "42")


async def test_a_forked_child_dials_its_own_link(fake: FakeBroker) -> None:
    body = """
        import os
        first = client.enqueue("add", 1, 1)
        parent_link = client._local.link
        pid = os.fork()
        if pid == 0:
            ok = client.wait(client.enqueue("add", 2, 2), timeout_s=5) == 4
            os._exit(0 if ok and client._local.link is not parent_link else 7)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), client.wait(first, timeout_s=5),
              client._local.link is parent_link, flush=True)
    """
    code, output, _ = await trio.to_thread.run_sync(_run_child, _script(fake.address, body))
    assert (code, output.split()) == (0, ["0", "2", "True"]), output


def _watch_through_failover(client: Client, job_id: str, stop_a: threading.Event) -> list[str]:
    updates = client.watch(job_id)
    states = [next(updates).state]
    stop_a.set()
    states.extend(job.state for job in updates)
    return states


async def test_watch_survives_failover(nursery: trio.Nursery) -> None:
    table = JobTable()
    node_a = await start_fake(nursery, "node-a", table=table)
    node_b = await start_fake(nursery, "node-b", table=table)
    client = Client([node_a.address, node_b.address])
    job_id = await trio.to_thread.run_sync(client.enqueue, "slow")
    stop_a = threading.Event()

    async def move_to_b() -> None:
        await trio.to_thread.run_sync(stop_a.wait)
        node_a.stop()
        with trio.fail_after(5):
            while not any(isinstance(m, WatchJobs) for m in node_b.received):
                await trio.sleep(0.005)
        node_b.set(attrs.evolve(table.jobs[job_id], state="active"))
        await trio.sleep(0.05)
        node_b.set(attrs.evolve(table.jobs[job_id], state="cancelled"))

    nursery.start_soon(move_to_b)
    states = await trio.to_thread.run_sync(_watch_through_failover, client, job_id, stop_a)
    await trio.to_thread.run_sync(client.close)
    assert states[0] == "queued" and states[-1] == "cancelled"


def _two_calls_apart(client: Client, gap_s: float) -> tuple[bool, bool]:
    client.queues()
    first = client._local.link
    time.sleep(gap_s)
    client.queues()
    return first.closed, client._local.link is first


async def test_a_link_silent_for_two_heartbeats_is_dialed_again(fake: FakeBroker) -> None:
    busy, quiet = Client(fake.address), Client(fake.address, heartbeat_s=0.1)
    kept = await trio.to_thread.run_sync(_two_calls_apart, busy, 0.3)
    stale = await trio.to_thread.run_sync(_two_calls_apart, quiet, 0.3)
    for client in (busy, quiet):
        await trio.to_thread.run_sync(client.close)
    assert kept == (False, True)  # silent well under 2 x 5 s: the same link
    assert stale == (True, False)  # silent past 2 x 0.1 s: closed and dialed again
