"""The client protocol: specs checked where they are made and where they are decoded,
typed replies, and no storage type anywhere on the client side."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from gotask import _protocol as proto
from gotask._errors import InvalidMessage
from gotask.runtime.message import REGISTRY, Address, Envelope, Ok, reply_type
from gotask.transports._wire import decode, encode

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": ""}, "task must be 1-128 characters: ''"),
        ({"task": "x" * 129}, "task must be 1-128 characters: 'xxx"),
        ({"queue": ""}, "queue must be 1-128 characters: ''"),
        ({"priority": 2**31}, "priority must be a signed 32-bit integer, got 2147483648"),
        ({"delay_s": -1.0}, "delay_s must be a number 0-315360000, got -1.0"),
        ({"delay_s": float("nan")}, "delay_s must be a number 0-315360000, got nan"),
        ({"delay_s": float("inf")}, "delay_s must be a number 0-315360000, got inf"),
        ({"max_attempts": 0}, "max_attempts must be 1-1000, got 0"),
        ({"timeout_s": 0.0}, "timeout_s must be a number > 0 and <= 315360000 or None, got 0.0"),
        ({"result_ttl_s": -5.0}, "result_ttl_s must be a number 0-315360000, got -5.0"),
        ({"idempotency_key": ""}, "idempotency_key must be 1-256 characters: ''"),
    ],
)
def test_job_spec_rejects_bad_fields(fields: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"task": "t", "args": b"\x92\x90\x80"}
    with pytest.raises(ValueError) as caught:
        proto.JobSpec(**{**base, **fields})
    assert str(caught.value).startswith(message)


def test_job_spec_leaves_defaults_to_the_task() -> None:
    spec = proto.JobSpec("t", b"\x92\x90\x80")
    assert (spec.queue, spec.priority, spec.max_attempts, spec.timeout_s) == (None,) * 4
    assert (spec.delay_s, spec.result_ttl_s, spec.idempotency_key) == (0.0, None, None)


def test_a_bad_spec_from_the_wire_is_refused_on_decode_naming_the_field() -> None:
    # The node checks a spec once more where it decodes it: a peer that skipped the
    # client's check gets an error naming the field, and nothing reaches the Broker.
    good = proto.Enqueue((proto.JobSpec("t", b"\x92\x90\x80", priority=5),))
    body = encode(Envelope(Address("n", "broker"), Address("c", "$call"), 7, good))
    assert decode(body) == Envelope(Address("n", "broker"), Address("c", "$call"), 7, good)
    assert body.count(b"\x05") == 1
    bad = body.replace(b"\x05", b"\xce\xff\xff\xff\xff")  # priority 5 -> 2**32 - 1
    with pytest.raises(InvalidMessage, match="priority must be a signed 32-bit integer") as info:
        decode(bad)
    assert (info.value.corr, info.value.reply_node) == (7, "c")


@pytest.mark.parametrize(
    "build",
    [
        lambda: proto.GetJobs(("x",) * (proto.IDS_MAX + 1)),
        lambda: proto.ListJobs(limit=0),
        lambda: proto.ListDead(limit=proto.LIMIT_MAX + 1),
        lambda: proto.WaitJobs(("x",), -1.0),
        lambda: proto.WaitJobs(("x",), proto.WAIT_S_MAX + 1),
        lambda: proto.WaitJobs(("x",), float("nan")),
        lambda: proto.RetryDead(("x",) * (proto.IDS_MAX + 1)),
        lambda: proto.PauseQueue("", True),
        lambda: proto.PauseQueue("q" * 129, False),
    ],
)
def test_requests_out_of_bounds_are_refused_at_construction(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


def test_every_request_declares_its_reply_and_is_registered() -> None:
    expected = {
        proto.Enqueue: proto.EnqueueReply, proto.GetJobs: proto.JobsReply,
        proto.WaitJobs: proto.JobsReply, proto.WatchJobs: proto.JobsReply,
        proto.UnwatchJobs: Ok, proto.CancelJobs: proto.CancelReply,
        proto.ListJobs: proto.JobPage, proto.ListDead: proto.JobPage,
        proto.RetryDead: proto.CountReply, proto.PurgeDead: proto.CountReply,
        proto.CountQueues: proto.QueuesReply, proto.ListNodes: proto.NodesReply,
        proto.PauseWorkers: Ok, proto.ListCron: proto.CronListing, proto.PauseCron: Ok,
        proto.RunCron: proto.RunCronReply, proto.PauseQueue: Ok,
    }
    assert set(proto.REQUESTS) == set(expected)
    for request, reply in expected.items():
        assert reply_type(request) is reply
        assert request in REGISTRY.values() and reply in REGISTRY.values()


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_clients_and_cli_import_nothing_of_storage() -> None:
    faces = [*ROOT.glob("gotask/_client*.py"), *ROOT.glob("gotask/_cli*.py"),
             ROOT / "gotask/cli.py", ROOT / "gotask/client.py", ROOT / "gotask/_protocol.py"]
    for path in faces:
        bad = {m for m in _imports(path) if "actors" in m or m.endswith("storage.base")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_protocol_module_imports_no_trio_and_no_actor() -> None:
    assert not {m for m in _imports(ROOT / "gotask/_protocol.py")
                if m.startswith("trio") or "actors" in m}
