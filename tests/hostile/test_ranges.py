"""Issue 22, item 9 of the hostile test: ranges and names.

`max_attempts=2**63`, a 1e300-second delay and queue names with control characters were
accepted; `2**64` failed as `cannot encode Envelope`. Each is now refused with a one-line
error naming the field, on the client (where the spec is made) and again on the node
(where a peer's frame is decoded), and arguments over the byte limit are refused by the
node even when a peer skipped the client's check (item 4 of the issue).
"""

from __future__ import annotations

from typing import Any

import pytest

from gotask import _protocol as proto
from gotask._errors import InvalidMessage
from gotask._job import ARGS_BYTES_MAX, ATTEMPTS_MAX, DURATION_S_MAX
from gotask.runtime.message import Address, Envelope
from gotask.transports._wire import decode, encode

EMPTY_ARGS = b"\x92\x90\x80"

BAD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"max_attempts": 2**63}, "max_attempts must be 1-1000"),
    ({"max_attempts": 2**64}, "max_attempts must be 1-1000"),
    ({"max_attempts": ATTEMPTS_MAX + 1}, "max_attempts must be 1-1000"),
    ({"delay_s": 1e300}, "delay_s must be a number 0-315360000"),
    ({"timeout_s": 1e300}, "timeout_s must be a number > 0 and <= 315360000"),
    ({"result_ttl_s": DURATION_S_MAX * 2}, "result_ttl_s must be a number 0-315360000"),
    ({"queue": "a\x00b"}, "queue must be printable"),
    ({"queue": "a\tb"}, "queue must be printable"),
    ({"queue": "\x1b[31mred"}, "queue must be printable"),
    ({"queue": "q" * 129}, "queue must be 1-128 characters"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_the_client_refuses_out_of_range_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        proto.check_spec("t", [], None, options)
    assert "\n" not in str(caught.value)


def test_the_limits_still_admit_the_largest_sane_values() -> None:
    spec = proto.check_spec("t", [], None, {"max_attempts": ATTEMPTS_MAX,
                                            "delay_s": DURATION_S_MAX, "queue": "é-ü 1"})
    assert (spec.max_attempts, spec.delay_s, spec.queue) == (1000, DURATION_S_MAX, "é-ü 1")


def _raw_enqueue(**bad: Any) -> bytes:
    """An Enqueue frame as a peer that skipped the client's checks would send it."""
    spec = proto.JobSpec("t", EMPTY_ARGS)
    for name, value in bad.items():
        object.__setattr__(spec, name, value)
    return encode(Envelope(Address("n", "broker"), Address("c", "$call"), 9,
                           proto.Enqueue((spec,))))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"max_attempts": 2**63}, "max_attempts must be 1-1000"),
        ({"delay_s": 1e300}, "delay_s must be a number"),
        ({"queue": "a\tb"}, "queue must be printable"),
        ({"priority": -(2**40)}, "priority must be a signed 32-bit integer"),
        ({"args": b"\xc4" + b"x" * (ARGS_BYTES_MAX + 1)}, "arguments encode to"),
    ],
)
def test_the_node_refuses_the_same_values_from_a_raw_peer(bad: dict[str, Any],
                                                          message: str) -> None:
    # The node decodes with the same checks: nothing out of range reaches the Broker, and
    # the error goes back to the caller (corr and node kept) instead of crashing an actor.
    with pytest.raises(InvalidMessage, match=message) as info:
        decode(_raw_enqueue(**bad))
    assert (info.value.corr, info.value.reply_node) == (9, "c")


def test_task_defaults_are_held_to_the_same_ranges() -> None:
    from gotask import App

    app = App("ranges")
    with pytest.raises(ValueError, match="max_attempts must be 1-1000"):
        app.task(name="t", max_attempts=2**63)(lambda: None)
    with pytest.raises(ValueError, match="timeout_s must be a number > 0"):
        app.task(name="t", timeout_s=1e300)(lambda: None)
