"""Issue 22, item 9: a bounded fuzz test of the wire protocol (Hypothesis).

Whatever a peer sends, the codec answers with a message or a `ProtocolError`, never any
other exception; a message it accepts encodes back to the same message. Three shapes of
input: random bytes, mutations of real frames, and well-formed msgpack arrays under every
registered tag with random field values (the shape most likely to reach a validator).
The case counts are fixed so the suite stays fast in `.ci/run`.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gotask.actors.storage.base  # noqa: F401  (registers the storage messages)
from gotask import _protocol as proto
from gotask._errors import ProtocolError
from gotask.runtime.message import REGISTRY, Address, Envelope
from gotask.transports._wire import NEED_DATA, Connection, decode, encode, frame

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
TAGS = sorted(REGISTRY)

SEEDS = [
    encode(Envelope(Address("n", "broker"), Address("c", "$call"), 3,
                    proto.Enqueue((proto.JobSpec("t", b"\x92\x90\x80", queue="q",
                                                 priority=4, max_attempts=2),)))),
    encode(Envelope(Address("n", "broker"), Address("c", "$call"), 4,
                    proto.GetJobs(("a", "b")))),
    encode(Envelope(Address("n", "broker"), Address("c", "$call"), 5,
                    proto.ListJobs(queue="q", state="queued", limit=10))),
]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


def _decode_or_refuse(body: bytes) -> None:
    try:
        msg = decode(body)
    except ProtocolError:
        return
    assert decode(encode(msg)) == msg


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_are_refused(body: bytes) -> None:
    _decode_or_refuse(body)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                        min_size=1, max_size=8))
def test_mutated_real_frames_decode_or_are_refused(seed: bytes,
                                                   edits: list[tuple[int, int]]) -> None:
    body = bytearray(seed)
    for where, byte in edits:
        body[where % len(body)] = byte
    _decode_or_refuse(bytes(body))


@FUZZ
@given(st.sampled_from(TAGS), st.lists(values, max_size=12))
def test_every_tag_with_random_fields_decodes_or_is_refused(tag: str,
                                                            fields: list[Any]) -> None:
    message = msgpack.packb([tag, *fields], use_bin_type=True)
    _decode_or_refuse(message)
    envelope = msgpack.packb(["env", ["addr", "n", "broker"], ["addr", "c", "$call"], 1,
                              [tag, *fields]], use_bin_type=True)
    _decode_or_refuse(envelope)


@FUZZ
@given(st.booleans(), st.lists(st.binary(min_size=1, max_size=64), max_size=20),
       st.sampled_from(SEEDS))
def test_a_connection_fed_garbage_only_raises_protocol_errors(
    authenticated: bool, chunks: list[bytes], seed: bytes
) -> None:
    conn = Connection()
    if authenticated:
        conn.mark_authenticated()
    stream = b"".join([frame(seed), *chunks, frame(seed)])
    try:
        for start in range(0, len(stream), 37):
            conn.receive_data(stream[start:start + 37])
            while conn.next_event() is not NEED_DATA:
                pass
    except ProtocolError:
        return
