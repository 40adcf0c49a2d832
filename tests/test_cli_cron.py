"""`gotask cron ...` end to end: the CLI (its own event loop, in a thread) against a real
node on memory storage whose app declares cron entries, over TCP with a secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from gotask import App
from gotask._server import open_server
from gotask.cli import main
from gotask.config import NodeConfig

from .processes import free_port

SECRET = b"s" * 32
app = App("cli-cron-tests")


@app.cron(every_s=1, name="beat", kwargs={"n": 7})
def beat(n: int = 0) -> int:
    return n


@app.task(name="report")
def report() -> None: ...


app.add_cron("nightly", "report", "30 2 * * *", zone="Europe/Paris", misfire="skip")


async def _gotask(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def _entries(capsys: Any, node: tuple[str, ...]) -> dict[str, Any]:
    code, out, _ = await _gotask(capsys, "cron", "list", "--json", *node)
    assert code == 0
    return {e["name"]: e for e in json.loads(out)}


async def test_cron_list_pause_resume_run(tmp_path: Path, capsys: Any) -> None:
    port = free_port()
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    config = NodeConfig(app=app, name="cron-node", listen=("127.0.0.1", port), secret=SECRET)
    node = ("--node", f"127.0.0.1:{port}", "--secret-file", str(secret_file))
    async with open_server(config):
        await trio.sleep(2.5)
        entries = await _entries(capsys, node)
        assert set(entries) == {"beat", "nightly"}
        nightly = entries["nightly"]
        assert (nightly["schedule"], nightly["zone"], nightly["paused"]) == (
            "30 2 * * *", "Europe/Paris", False)
        assert nightly["declared"] and nightly["current"] and nightly["node"] == "cron-node"
        assert nightly["next_tick"] > nightly["last_tick"]
        beat_entry = entries["beat"]
        assert beat_entry["every_s"] == 1 and beat_entry["last_job"] is not None
        assert beat_entry["last_job_state"] in ("queued", "active", "succeeded")

        code, out, _ = await _gotask(capsys, "cron", "list", *node)
        assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "SCHEDULE", "ZONE"]
        assert "every 1s" in out and "Europe/Paris" in out

        assert (await _gotask(capsys, "cron", "pause", "beat", *node))[1] == "beat: paused\n"
        paused = (await _entries(capsys, node))["beat"]
        await trio.sleep(2.0)
        later = (await _entries(capsys, node))["beat"]
        assert later["paused"] and later["last_tick"] > paused["last_tick"]
        assert later["last_job"] == paused["last_job"]  # ticks passed, nothing fired
        assert (await _gotask(capsys, "cron", "resume", "beat", *node))[1] == "beat: resumed\n"
        await trio.sleep(2.0)
        resumed = (await _entries(capsys, node))["beat"]
        assert not resumed["paused"] and resumed["last_job"] != paused["last_job"]

        code, out, _ = await _gotask(capsys, "cron", "run", "nightly", "--json", *node)
        assert code == 0
        job_id = json.loads(out)["id"]
        code, out, _ = await _gotask(capsys, "job", job_id, "--json", *node)
        job = json.loads(out)
        assert (job["task"], job["idempotency_key"]) == ("report", None)

        code, _, err = await _gotask(capsys, "cron", "pause", "nope", *node)
        assert code == 1 and "no cron entry 'nope'" in err
        code, _, err = await _gotask(capsys, "cron", "run", "nope", *node)
        assert code == 1 and "no cron entry 'nope'" in err
