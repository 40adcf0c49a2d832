"""The `gotask` CLI, run in-process (`main([...])` in a thread) against a fake node.

The fake node is the one of test_client.py: "add" succeeds with the sum of its
arguments, "boom" ends dead, "slow" stays queued, other task names are unknown.
"""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from gotask._cli_output import Progress, format_table, jsonable
from gotask._job import JobRecord
from gotask.cli import main

from .test_client import SECRET, FakeBroker, closed_port, start_fake


@attrs.frozen
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeBroker:
    return await start_fake(nursery)


async def gotask(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run `gotask ARGV...` in a thread (it runs its own event loop) and capture it."""
    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


async def test_enqueue_prints_the_id_or_the_outcome(fake: FakeBroker, capsys: Any) -> None:
    node = ("--node", fake.address)
    run = await gotask(capsys, "enqueue", "add", "--args", "[1, 2]", "--queue", "math",
                       "--priority", "3", *node)
    assert run.code == 0 and run.out.strip() in fake.table.jobs
    job = fake.table.jobs[run.out.strip()]
    assert (job.queue, job.priority) == ("math", 3)
    run = await gotask(capsys, "enqueue", "slow", "--json", "--idempotency-key", "k", *node)
    assert run.code == 0 and run.json()["id"] in fake.table.jobs
    run = await gotask(capsys, "enqueue", "add", "--args", "[40, 2]", "--wait", *node)
    assert (run.code, run.out) == (0, "42\n")
    run = await gotask(capsys, "enqueue", "add", "--args", "[1]", "--wait", "--json", *node)
    assert run.code == 0 and run.json()["result"] == 1 and run.json()["state"] == "succeeded"


async def test_a_failed_job_exits_1(fake: FakeBroker, capsys: Any) -> None:
    run = await gotask(capsys, "enqueue", "boom", "--wait", "--node", fake.address)
    assert run.code == 1 and run.out == ""
    assert run.err.startswith("gotask: error: job job-1 (boom) is dead after 1 attempt(s)")
    assert run.err.count("\n") == 1
    run = await gotask(capsys, "enqueue", "boom", "--wait", "--json", "--node", fake.address)
    assert run.code == 1 and run.json()["error_type"] == "ValueError"
    run = await gotask(capsys, "enqueue", "slow", "--wait", "--wait-timeout", "0.05",
                       "--node", fake.address)
    assert run.code == 1 and "still queued after 0.05s" in run.err


async def test_expected_errors_are_one_line_without_traceback(
    fake: FakeBroker, capsys: Any
) -> None:
    cases = [
        (1, ["enqueue", "nope", "--node", fake.address], "item 0: unknown task 'nope'"),
        (1, ["job", "job-404", "--node", fake.address], "no job 'job-404'"),
        (1, ["queues", "--node", closed_port()], "cannot reach any GoTask node"),
        (2, ["enqueue", "add", "--args", "{1"], "argument --args: invalid JSON"),
        (2, ["enqueue", "add", "--kwargs", "[1]"], "expected a JSON object"),
        (2, ["enqueue", "add", "--delay", "-1"], "expected a number >= 0"),
        (2, ["enqueue"], "required: TASK"),
        (2, ["enqueue", "add", "--wait-timeout", "1"], "--wait-timeout needs --wait"),
        (2, ["queues", "--node", "nohost:port"], "invalid node address"),
        (2, ["queues", "--secret-file", "/no/such/file"], "cannot read the secret file"),
        (2, ["dlq", "retry"], "give job IDs or --all"),
        (2, ["dlq", "purge", "job-1", "--all"], "give job IDs or --all"),
        (2, ["frobnicate"], "invalid choice"),
    ]
    for code, argv, text in cases:
        run = await gotask(capsys, *argv)
        assert (run.code, run.out) == (code, ""), argv
        assert text in run.err and run.err.count("\n") == 1, run.err
        assert "Traceback" not in run.err


async def test_job_shows_details_and_follows_live(
    fake: FakeBroker, capsys: Any, nursery: trio.Nursery
) -> None:
    node = ("--node", fake.address)
    job_id = (await gotask(capsys, "enqueue", "slow", "--args", '["x"]', *node)).out.strip()
    run = await gotask(capsys, "job", job_id, *node)
    assert run.code == 0 and "state:     queued" in run.out and 'args:      ["x"]' in run.out
    run = await gotask(capsys, "job", job_id, "--json", *node)
    assert run.json()["args"] == ["x"] and run.json()["kwargs"] == {}

    job_id = (await gotask(capsys, "enqueue", "slow", "--args", "[2, 2]", *node)).out.strip()
    nursery.start_soon(fake.run_when_watched, job_id)
    run = await gotask(capsys, "job", job_id, "--wait", *node)
    lines = run.out.splitlines()
    assert run.code == 0 and lines[-1] == "4"
    assert f"{job_id} active 50% half way" in lines  # without a terminal: one line per change
    job_id = (await gotask(capsys, "enqueue", "boom", *node)).out.strip()
    run = await gotask(capsys, "job", job_id, "--wait", "--json", *node)
    states = [json.loads(line)["state"] for line in run.out.splitlines()]
    assert run.code == 1 and states[-1] == "dead"


async def test_queues_dlq_cancel_nodes(fake: FakeBroker, capsys: Any) -> None:
    node = ("--node", fake.address)
    assert (await gotask(capsys, "queues", *node)).out == "no jobs\n"
    slow = (await gotask(capsys, "enqueue", "slow", "--queue", "mail", *node)).out.strip()
    await gotask(capsys, "enqueue", "boom", "--wait", *node)
    run = await gotask(capsys, "queues", *node)
    assert run.out.splitlines()[0].split() == [
        "QUEUE", "SCHEDULED", "QUEUED", "ACTIVE", "SUCCEEDED", "DEAD", "CANCELLED", "TOTAL",
        "NODES", "PAUSED", "OLDEST"]
    assert run.out.splitlines()[2].split() == [
        "mail", "0", "1", "0", "0", "0", "0", "1", "0", "no", "-"]
    assert run.err.startswith("gotask: warning: no live node works queue 'mail'")
    assert (await gotask(capsys, "queues", "--json", *node)).json() == [
        {"name": "default", "counts": {"dead": 1}, "paused": False, "oldest_ready_age_s": None},
        {"name": "mail", "counts": {"queued": 1}, "paused": False, "oldest_ready_age_s": None}]
    run = await gotask(capsys, "dlq", "list", *node)
    assert "ValueError: boom" in run.out
    assert [j["id"] for j in (await gotask(capsys, "dlq", "list", "--json", *node)).json()] == [
        "job-2"]
    assert (await gotask(capsys, "dlq", "retry", "job-2", *node)).out == "requeued 1 dead job(s)\n"
    fake.table.jobs["job-2"] = attrs.evolve(fake.table.jobs["job-2"], state="dead")
    assert (await gotask(capsys, "dlq", "purge", "--all", "--json", *node)).json() == {
        "purged": 1}
    assert (await gotask(capsys, "cancel", slow, *node)).out == f"{slow}: cancelled\n"
    assert (await gotask(capsys, "cancel", slow, "--json", *node)).json()["state"] == "cancelled"
    run = await gotask(capsys, "nodes", *node)
    assert run.out.splitlines()[1].startswith("node-a ") and "concurrency=4" in run.out
    assert (await gotask(capsys, "nodes", "--json", *node)).json()[0]["node"] == "node-a"


async def test_queues_pause_and_resume(fake: FakeBroker, capsys: Any) -> None:
    node = ("--node", fake.address)
    assert (await gotask(capsys, "queues", "pause", "mail", *node)).out == "mail: paused\n"
    run = await gotask(capsys, "queues", *node)
    assert run.out.splitlines()[1].split() == ["mail", *["0"] * 7, "0", "yes", "-"]
    assert run.err == ""  # a paused queue is not warned about as unserved
    run = await gotask(capsys, "queues", "resume", "mail", "--json", *node)
    assert run.json() == {"name": "mail", "state": "resumed"}
    assert (await gotask(capsys, "queues", *node)).out == "no jobs\n"
    run = await gotask(capsys, "queues", "pause", "", *node)
    assert run.code == 2 and "queue must be 1-128 characters" in run.err


async def test_jobs_are_listed_by_queue_state_and_task(fake: FakeBroker, capsys: Any) -> None:
    node = ("--node", fake.address)
    assert (await gotask(capsys, "jobs", *node)).out == "no jobs\n"
    slow = (await gotask(capsys, "enqueue", "slow", "--queue", "mail", *node)).out.strip()
    await gotask(capsys, "enqueue", "boom", "--wait", *node)
    run = await gotask(capsys, "jobs", "--task", "slow", *node)
    assert run.out.splitlines()[0].split() == ["ID", "TASK", "QUEUE", "STATE", "ATTEMPTS",
                                               "CREATED"]
    assert [line.split()[:4] for line in run.out.splitlines()[1:]] == [
        [slow, "slow", "mail", "queued"]]
    run = await gotask(capsys, "jobs", "--state", "dead", "--json", *node)
    assert [(j["task"], j["state"]) for j in run.json()] == [("boom", "dead")]
    assert (await gotask(capsys, "jobs", "--queue", "mail", "--task", "boom", *node)).out == (
        "no jobs\n")
    run = await gotask(capsys, "jobs", "--state", "sleeping", *node)
    assert run.code == 2 and "invalid choice" in run.err


async def test_environment_supplies_nodes_and_secret(
    nursery: trio.Nursery, capsys: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    node = await start_fake(nursery, "node-s", secret=SECRET)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    monkeypatch.setenv("GOTASK_NODES", f"{closed_port()},{node.address}")
    run = await gotask(capsys, "queues")
    assert run.code == 1 and "authentication failed" in run.err
    monkeypatch.setenv("GOTASK_SECRET_FILE", str(tmp_path / "secret"))
    assert (await gotask(capsys, "queues")).out == "no jobs\n"
    monkeypatch.delenv("GOTASK_SECRET_FILE")
    run = await gotask(capsys, "queues", "--secret-file", str(tmp_path / "secret"))
    assert run.out == "no jobs\n"


def test_node_and_bench_are_dispatched_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    node_main = types.ModuleType("gotask._node_main")
    node_main.main = lambda args: seen.setdefault("node", args) and 0  # type: ignore[attr-defined]
    bench = types.ModuleType("gotask.bench")
    bench.main = lambda rest: seen.setdefault("bench", rest) and 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gotask._node_main", node_main)
    monkeypatch.setitem(sys.modules, "gotask.bench", bench)
    argv = ["node", "--app", "examples.tasks", "--queues", "a:3,b:1", "--insecure",
            "--listen", "0.0.0.0:7450", "--join", "10.0.0.1:7450", "--concurrency", "8"]
    assert main(argv) == 0
    args = seen["node"]
    # Flags not given stay None: the node fills them from the environment, the --config
    # file or the defaults (tests/test_node_settings.py).
    assert (args.app, args.queues, args.insecure, args.concurrency, args.storage) == (
        "examples.tasks", "a:3,b:1", True, 8, None)
    assert main(["bench", "--jobs", "10", "--help"]) == 3
    assert seen["bench"] == ["--jobs", "10", "--help"]
    assert main(["node", "--concurrency", "x"]) == 2


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "enqueue" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("gotask ")


def test_progress_bar_on_a_terminal_and_output_helpers() -> None:
    stream = io.StringIO()
    bar = Progress(stream, tty=True)
    job = JobRecord("j1", "t", "q", b"", 0, "active", 0.0, 0.0, 3, 1.0, progress=0.5,
                    progress_message="half")
    bar.show(job)
    bar.finish()
    assert stream.getvalue() == f"\r\x1b[2Kj1 [{'#' * 15}{'-' * 15}] active 50% half\n"
    assert jsonable({"b": b"\x00", "l": (1, [b"a"])}) == {"b": "base64:AA==",
                                                           "l": [1, ["base64:YQ=="]]}
    assert format_table(["A", "N"], [["x", 1], ["yy", 10]]).splitlines() == [
        "A    N", "x    1", "yy  10"]
