"""The sans-IO wire codec: round trips, framing, and every malformed input refused."""

from __future__ import annotations

import functools
import importlib
import re
import struct
import types
import typing
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gotask._errors import (
    FramingError,
    InvalidMessage,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from gotask.runtime.message import (
    MESSAGE_MARK,
    REGISTRY,
    Address,
    Envelope,
    ErrorReply,
    Message,
    message,
)
from gotask.transports import _wire
from gotask.transports._handshake import Ping, WireError
from gotask.transports._wire import (
    ADDRESS_CACHE_MAX,
    ADDRESS_INTERN_CHARS_MAX,
    CLOSED,
    CONTAINER_LEN_MAX,
    DEPTH_MAX,
    NEED_DATA,
    Connection,
    compile_registry,
    decode,
    encode,
    frame,
)

# Messages defined elsewhere register at import; pull in the modules that exist so far.
for _module in ("gotask._messages",):
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise

MIB = 1 << 20
KIB16 = 16 << 10


# -- test messages: every field kind ------------------------------------------------------


@message("t.w.scalars")
@attrs.frozen
class Scalars:
    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    nothing: None


@message("t.w.opt")
@attrs.frozen
class Optionals:
    i: int | None
    f: float | None
    addr: Address | None
    msg: Message | None
    either: int | str


@message("t.w.cont")
@attrs.frozen
class Containers:
    ints: tuple[int, ...]
    floats: tuple[float, ...]
    addrs: tuple[Address, ...]
    msgs: tuple[Message, ...]
    nested: tuple[tuple[str, ...], ...]
    labels: dict[str, str]
    by_name: dict[str, Address]
    maybe: tuple[int | None, ...]


@message("t.w.any")
@attrs.frozen
class Anything:
    value: Any
    meta: dict[str, Any]


@message("t.w.wrap")
@attrs.frozen
class Wrapper:
    inner: Scalars
    any_msg: Message


@message("t.w.job")
@attrs.frozen
class Job:
    queue: str
    priority: int


@message("t.w.empty")
@attrs.frozen
class Empty:
    pass


@message("t.w.kw")
@attrs.frozen(kw_only=True)
class KwOnly:
    a: int
    _b: str = "x"


@message("t.w.valid")
@attrs.frozen
class Validated:
    n: int = attrs.field(validator=attrs.validators.ge(0))


@message("t.w.post")
@attrs.frozen
class PostInit:
    n: int

    def __attrs_post_init__(self) -> None:
        if self.n == 13:
            raise ValueError("unlucky")


@message("t.w.conv")
@attrs.frozen
class Converted:
    n: int = attrs.field(converter=abs)


@message("t.w.hashed")
@attrs.frozen(cache_hash=True)
class CachedHash:
    n: int


@message("t.w.tree")
@attrs.frozen
class Tree:
    value: int
    children: tuple[Tree, ...]


@attrs.frozen
class Unregistered:
    x: int


# -- helpers --------------------------------------------------------------------------


def pack(*items: Any) -> bytes:
    return typing.cast(bytes, msgpack.packb(list(items)))


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def drain(conn: Connection) -> list[object]:
    """Every event up to NEED_DATA or CLOSED (included)."""
    events: list[object] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if event is CLOSED:
            return events


def authed(**kwargs: int) -> Connection:
    conn = Connection(**kwargs)
    conn.mark_authenticated()
    return conn


ADDR = Address("n1", "broker")
SCALARS = Scalars(-3, 2.5, "héllo", b"\x00\xff", True, None)
SAMPLES = [
    ADDR,
    Envelope(ADDR, Address("n2", "$call"), 7, Job("default", 5)),
    SCALARS,
    Optionals(None, 1.5, ADDR, Ping(1), "x"),
    Containers(
        (1, 2), (0.5,), (ADDR,), (Ping(2), ADDR), (("a",), ()), {"k": "v"}, {"a": ADDR}, (1, None)
    ),
    Anything((1, "a", (b"x", None), {"k": (1.5, True)}), {"deep": {"er": ()}}),
    Wrapper(SCALARS, Envelope(ADDR, None, 0, Empty())),
    Empty(),
    KwOnly(a=1, b="y"),
    Tree(1, (Tree(2, ()), Tree(3, (Tree(4, ()),)))),
]


SCALARS_ARRAY = ["t.w.scalars", 1, 1.0, "", b"", False, None]


def scalars_body(**override: Any) -> bytes:
    fields = {"i": 1, "f": 1.0, "s": "s", "b": b"b", "flag": False, "nothing": None}
    fields.update(override)
    return pack("t.w.scalars", *fields.values())


def reject(body: bytes) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        decode(body)
    return info.value


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_roundtrip_samples(msg: object) -> None:
    assert decode(encode(msg)) == msg


def test_decoded_objects_are_whole_frozen_instances() -> None:
    # Most classes are built by setting their slots directly: check nothing is missing.
    for msg in [*SAMPLES, PostInit(1), Converted(2), CachedHash(3)]:
        decoded = decode(encode(msg))
        assert type(decoded) is type(msg)
        assert decoded == msg and repr(decoded) == repr(msg)
        try:
            expected_hash = hash(msg)
        except TypeError:  # a dict field
            pass
        else:
            assert hash(decoded) == expected_hash
        assert attrs.asdict(decoded, recurse=False) == attrs.asdict(msg, recurse=False)
        for field in attrs.fields(type(msg)):
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                setattr(decoded, field.name, None)


def test_classes_with_init_logic_are_built_through_their_init() -> None:
    assert decode(pack("t.w.conv", -5)) == Converted(5)  # the converter ran
    err = reject(pack("t.w.post", 13))  # so did __attrs_post_init__
    assert err.field == "PostInit" and "unlucky" in str(err)
    assert decode(pack("t.w.post", 12)) == PostInit(12)
    for cls in (Converted, PostInit, CachedHash, Validated):
        assert _wire._slot_setters(cls, attrs.fields(cls)) is None, cls
    for cls in (Envelope, Address, Scalars, Tree, Empty, KwOnly):
        assert _wire._slot_setters(cls, attrs.fields(cls)) is not None, cls


def test_decoded_addresses_are_interned() -> None:
    first = decode(encode(Envelope(ADDR, Address("n2", "$call"), 7, Ping(1))))
    second = decode(encode(Envelope(ADDR, Address("n2", "$call"), 8, Ping(2))))
    assert isinstance(first, Envelope) and isinstance(second, Envelope)
    assert first.dst == ADDR and first.dst is second.dst and first.src is second.src
    nested = decode(encode(Containers((), (), (ADDR,), (), (), {}, {"a": ADDR}, ())))
    assert isinstance(nested, Containers)
    assert nested.addrs[0] is first.dst and nested.by_name["a"] is first.dst


def test_the_address_cache_is_bounded() -> None:
    for i in range(ADDRESS_CACHE_MAX + 10):
        assert decode(encode(Envelope(Address("n", f"a{i}"), None, 0, Ping(i)))).dst.name == f"a{i}"
        assert len(_wire._ADDRESSES) <= ADDRESS_CACHE_MAX
    # Long addresses decode but are not kept: the cache stays small whatever comes in.
    _wire._ADDRESSES.clear()
    long = Address("n", "x" * ADDRESS_INTERN_CHARS_MAX)
    for _ in range(2):
        assert decode(encode(Envelope(long, None, 0, Ping(1)))).dst == long
    assert _wire._ADDRESSES == {}


def test_a_cached_address_accepts_nothing_a_full_decode_refuses() -> None:
    good = ["addr", "n1", "broker"]
    assert decode(pack("env", good, None, 0, ["w.ping", 1])).dst == ADDR  # now cached
    # Equal-looking values of other types: bytes, a map (unhashable), extra fields.
    for bad, field in [
        (["addr", b"n1", "broker"], "Envelope.dst.Address.node"),
        (["addr", "n1", {"k": "broker"}], "Envelope.dst.Address.name"),
        (["addr", "n1", "broker", "x"], "Envelope.dst.Address"),
        (["addr", "n1"], "Envelope.dst.Address.name"),
        (["w.ping", 1], "Envelope.dst"),
    ]:
        assert reject(pack("env", bad, None, 0, ["w.ping", 1])).field == field, bad
    # Depth: a cached address nested one level too deep is still refused.
    ok: Any = ["t.w.opt", None, None, good, None, 1]
    for _ in range(DEPTH_MAX - 2):
        ok = ["t.w.wrap", SCALARS_ARRAY, ok]
    assert decode(msgpack.packb(ok)) is not None
    too_deep: Any = ["t.w.opt", None, None, good, None, 1]
    for _ in range(DEPTH_MAX - 1):
        too_deep = ["t.w.wrap", SCALARS_ARRAY, too_deep]
    assert "nested deeper" in str(reject(msgpack.packb(too_deep)))


def test_float_field_accepts_int_and_converts() -> None:
    decoded = decode(scalars_body(f=3))
    assert isinstance(decoded, Scalars)
    assert decoded.f == 3.0 and type(decoded.f) is float
    assert decode(encode(attrs.evolve(SCALARS, f=4))) == attrs.evolve(SCALARS, f=4.0)


def test_compile_registry_accepts_every_registered_class() -> None:
    compile_registry()


def test_encoding_is_a_plain_msgpack_array() -> None:
    body = encode(Envelope(ADDR, None, 3, Ping(9)))
    assert msgpack.unpackb(body) == ["env", ["addr", "n1", "broker"], None, 3, ["w.ping", 9]]


def test_frame_prefixes_length() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    with pytest.raises(LocalProtocolError):
        frame(b"")


# -- Hypothesis strategies built from type hints ------------------------------------------

LEAF_DEPTH = 3

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _is_message_type(tp: Any) -> bool:
    if typing.get_origin(tp) is typing.Annotated:
        return MESSAGE_MARK in typing.get_args(tp)[1:]
    return tp in REGISTRY.values() or any(_is_message_type(a) for a in typing.get_args(tp))


def _is_leaf(cls: type) -> bool:
    hints = typing.get_type_hints(cls, include_extras=True)
    return not any(_is_message_type(tp) for tp in hints.values())


@functools.cache
def strategy_for_type(tp: Any, depth: int) -> st.SearchStrategy[Any]:
    """Values of one field type; past LEAF_DEPTH, recursion stops at the smallest value."""
    simple = {
        int: st.integers(-(2**63), 2**64 - 1),
        float: st.floats(allow_nan=False),
        str: st.text(max_size=12),
        bytes: st.binary(max_size=12),
        bool: st.booleans(),
        type(None): st.none(),
        None: st.none(),
    }
    if tp is Any:
        return msgpack_values
    if tp in simple:
        return simple[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    deep = depth >= LEAF_DEPTH
    if origin is typing.Annotated:
        if MESSAGE_MARK in args[1:]:
            return any_message(depth)
        return strategy_for_type(args[0], depth)
    if origin in (typing.Union, types.UnionType):
        if deep and type(None) in args:
            return st.none()
        return st.one_of([strategy_for_type(a, depth) for a in args])
    if origin is tuple:
        if deep:
            return st.just(())
        return st.lists(strategy_for_type(args[0], depth + 1), max_size=3).map(tuple)
    if origin is dict:
        if deep:
            return st.just({})
        return st.dictionaries(
            st.text(max_size=6), strategy_for_type(args[1], depth + 1), max_size=3
        )
    if tp in REGISTRY.values():
        return strategy_for_class(tp, depth + 1)
    raise TypeError(f"no strategy for {tp!r}")


def _build(cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError):  # a validator of the class refused the drawn values
        return None


def _field_strategy(field: attrs.Attribute[Any], tp: Any, depth: int) -> st.SearchStrategy[Any]:
    """Values of one field; its default too, half the time, so strict validators pass."""
    drawn = st.deferred(lambda: strategy_for_type(tp, depth))
    default = field.default
    if default is attrs.NOTHING:
        return drawn
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return drawn
        return st.builds(default.factory) | drawn
    return st.just(default) | drawn


@functools.cache
def strategy_for_class(cls: type, depth: int = 0) -> st.SearchStrategy[Any]:
    """Instances of a registered message class, any field types, Message fields included."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {
        str(field.alias): _field_strategy(field, hints[field.name], depth)
        for field in attrs.fields(cls)
    }
    built = st.fixed_dictionaries(fields).map(functools.partial(_build, cls))
    return built.filter(lambda msg: msg is not None)


def any_message(depth: int) -> st.SearchStrategy[Any]:
    classes = [REGISTRY[tag] for tag in sorted(REGISTRY)]
    if depth >= LEAF_DEPTH:
        classes = [cls for cls in classes if _is_leaf(cls)]
    return st.sampled_from(classes).flatmap(lambda cls: strategy_for_class(cls, depth + 1))


FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
THOROUGH = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("tag", sorted(REGISTRY))
@FAST
@given(data=st.data())
def test_roundtrip_every_registered_message(tag: str, data: st.DataObject) -> None:
    msg = data.draw(strategy_for_class(REGISTRY[tag]))
    assert decode(encode(msg)) == msg


@THOROUGH
@given(msgs=st.lists(any_message(0), min_size=1, max_size=5), cuts=st.lists(st.integers(0, 400)))
def test_roundtrip_through_connection_in_random_chunks(msgs: list[Any], cuts: list[int]) -> None:
    sender, receiver = authed(), authed()
    wire = sender.send_many(msgs)
    cuts = sorted(min(cut, len(wire)) for cut in cuts)
    received: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        if start < end:
            receiver.receive_data(wire[start:end])
            received += drain(receiver)
    receiver.receive_data(b"")
    assert received + drain(receiver) == [*msgs, CLOSED]


# -- framing --------------------------------------------------------------------------


def test_byte_by_byte() -> None:
    conn, wire = authed(), authed().send_many(SAMPLES)
    events: list[object] = []
    for i in range(len(wire)):
        conn.receive_data(wire[i : i + 1])
        events += drain(conn)
    assert events == SAMPLES


def test_many_frames_in_one_chunk() -> None:
    conn = authed()
    conn.receive_data(conn.send_many([Ping(n) for n in range(500)]))
    assert drain(conn) == [Ping(n) for n in range(500)]
    assert conn.buffered_bytes == 0


def test_trailing_partial_frame_waits_for_the_rest() -> None:
    conn = authed()
    wire = conn.send_many([Ping(1), Ping(2), Job("q", 1)])
    conn.receive_data(wire[:-3])
    assert drain(conn) == [Ping(1), Ping(2)]
    assert conn.buffered_bytes == len(conn.send(Job("q", 1))) - 3
    conn.receive_data(wire[-3:])
    assert drain(conn) == [Job("q", 1)]


def test_clean_eof_is_closed_and_stays_closed() -> None:
    conn = Connection()
    conn.receive_data(conn.send(Ping(1)))
    conn.receive_data(b"")
    assert drain(conn) == [Ping(1), CLOSED]
    assert conn.next_event() is CLOSED


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    conn = Connection(frame_bytes_max=64, preauth_frame_bytes_max=32)
    body = pack("t.w.job", "q" * 21, 1)
    assert len(body) == 32
    conn.receive_data(framed(body))
    assert drain(conn) == [Job("q" * 21, 1)]


def test_send_enforces_the_limit_in_force() -> None:
    conn = Connection(frame_bytes_max=100, preauth_frame_bytes_max=20)
    big = Job("q" * 30, 1)
    with pytest.raises(LocalProtocolError, match="frame limit"):
        conn.send(big)
    conn.mark_authenticated()
    assert conn.authenticated
    assert decode(conn.send(big)[4:]) == big


def test_connection_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        Connection(frame_bytes_max=10, preauth_frame_bytes_max=20)
    with pytest.raises(ValueError):
        Connection(frame_bytes_max=1 << 32)


def test_feeding_without_draining_is_refused() -> None:
    conn = Connection()
    conn.receive_data(conn.send(Ping(1)))
    with pytest.raises(RuntimeError, match="next_event"):
        conn.receive_data(conn.send(Ping(2)))


def test_feeding_after_eof_is_refused() -> None:
    conn = Connection()
    conn.receive_data(b"")
    with pytest.raises(RuntimeError, match="EOF"):
        conn.receive_data(b"x")


def test_buffer_never_exceeds_one_frame_plus_a_chunk() -> None:
    conn = authed()
    wire = conn.send_many([Anything(b"x" * (MIB - 64), {})] * 3)
    chunk = 100_000
    for start in range(0, len(wire), chunk):
        conn.receive_data(wire[start : start + chunk])
        assert conn.buffered_bytes <= MIB + 4 + chunk
        drain(conn)
    assert conn.buffered_bytes == 0


# -- rejected framing -----------------------------------------------------------------


def test_reject_zero_length() -> None:
    conn = authed()
    conn.receive_data(b"\x00\x00\x00\x00" + conn.send(Ping(1)))
    with pytest.raises(FramingError, match="zero-length"):
        conn.next_event()


def test_reject_oversized_after_auth() -> None:
    conn = authed()
    conn.receive_data(struct.pack(">I", MIB))
    assert conn.next_event() is NEED_DATA  # exactly the limit: fine
    conn = authed()
    conn.receive_data(struct.pack(">I", MIB + 1))
    with pytest.raises(FramingError, match="exceeds"):
        conn.next_event()


def test_reject_oversized_before_auth() -> None:
    conn = Connection()
    conn.receive_data(struct.pack(">I", KIB16))
    assert conn.next_event() is NEED_DATA
    conn = Connection()
    conn.receive_data(struct.pack(">I", KIB16 + 1))
    with pytest.raises(FramingError, match="16384"):
        conn.next_event()


def test_reject_4gib_length_prefix_at_once() -> None:
    conn = authed()
    conn.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(FramingError, match="4294967295"):
        conn.next_event()


def test_reject_bad_prefix_before_buffering_the_body() -> None:
    conn = authed()
    conn.receive_data(b"\xff\xff\xff\xff" + b"x" * 1000)
    assert conn.buffered_bytes == 0
    conn.receive_data(b"y" * 1000)  # a dead connection drops what it is fed
    assert conn.buffered_bytes == 0


def test_framing_error_is_fatal_and_sticky() -> None:
    conn = authed()
    conn.receive_data(b"\x00\x00\x00\x00")
    for _ in range(3):
        with pytest.raises(FramingError):
            conn.next_event()
    conn.receive_data(conn.send(Ping(1)))
    with pytest.raises(FramingError):
        conn.next_event()


def test_reject_eof_mid_frame() -> None:
    conn = authed()
    conn.receive_data(conn.send(Ping(1))[:-1])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(FramingError, match="mid-frame"):
        conn.next_event()


def test_reject_eof_mid_length_prefix() -> None:
    conn = authed()
    conn.receive_data(b"\x00\x00")
    conn.receive_data(b"")
    with pytest.raises(FramingError, match="mid-frame"):
        conn.next_event()


# -- rejected bodies: the frame is skipped, the connection lives -------------------------


def test_invalid_message_skips_its_frame_only() -> None:
    conn = authed()
    conn.receive_data(framed(pack("t.nope", 1)) + conn.send(Ping(2)))
    with pytest.raises(InvalidMessage):
        conn.next_event()
    assert drain(conn) == [Ping(2)]


# -- next_events: the whole frames in one call, the same events as next_event -----------


def drain_each(conn: Connection) -> list[object]:
    """`drain` where an invalid message or broken framing is noted by its error type."""
    events: list[object] = []
    while True:
        try:
            event = conn.next_event()
        except InvalidMessage:
            events.append(InvalidMessage)
            continue
        except FramingError:
            return [*events, FramingError]
        if event is NEED_DATA:
            return events
        events.append(event)
        if event is CLOSED:
            return events


def drain_batched(conn: Connection) -> list[object]:
    """`drain_each`, taking what `next_events` gives before each `next_event`."""
    events: list[object] = []
    while batch := conn.next_events():
        events += [InvalidMessage if isinstance(e, InvalidMessage) else e for e in batch]
    return events + drain_each(conn)


def test_next_events_takes_every_whole_frame_and_leaves_the_partial_one() -> None:
    conn = authed()
    wire = conn.send_many([Ping(1), Ping(2), Job("q", 1)])
    conn.receive_data(wire[:-3])
    assert conn.next_events() == [Ping(1), Ping(2)]
    assert conn.next_events() == []
    assert conn.next_event() is NEED_DATA
    conn.receive_data(wire[-3:])
    assert conn.next_events() == [Job("q", 1)]
    assert conn.buffered_bytes == 0


def test_next_events_gives_an_invalid_message_in_its_place() -> None:
    conn = authed()
    conn.receive_data(conn.send(Ping(1)) + framed(pack("t.nope", 1)) + conn.send(Ping(2)))
    first, bad, last = conn.next_events()
    assert (first, last) == (Ping(1), Ping(2))
    assert isinstance(bad, InvalidMessage)
    assert "unknown message tag 't.nope'" in str(bad)


@pytest.mark.parametrize("prefix", [0, MIB + 1, 0xFFFFFFFF])
def test_next_events_stops_before_a_bad_length_prefix(prefix: int) -> None:
    conn = authed()
    conn.receive_data(conn.send(Ping(1)) + struct.pack(">I", prefix) + b"x" * 8)
    assert conn.next_events() == [Ping(1)]
    assert conn.next_events() == []
    with pytest.raises(FramingError):
        conn.next_event()
    assert conn.next_events() == []


def test_next_events_refuses_a_whole_frame_over_the_limit() -> None:
    conn = authed(frame_bytes_max=64, preauth_frame_bytes_max=32)
    conn.receive_data(conn.send(Ping(1)) + framed(pack("t.w.job", "q" * 100, 1)))
    assert conn.next_events() == [Ping(1)]
    with pytest.raises(FramingError, match="exceeds the 64-byte limit"):
        conn.next_event()


FRAMES = st.one_of(
    any_message(0).map(lambda msg: authed().send(msg)),
    st.just(framed(pack("t.nope", 1))),
    st.binary(min_size=1, max_size=20).map(framed),  # mostly invalid bodies
)
TAILS = st.sampled_from([b"", b"\0\0\0\0", struct.pack(">I", MIB + 1), b"\0\0"])


@THOROUGH
@given(
    frames=st.lists(FRAMES, max_size=8),
    tail=TAILS,
    eof=st.booleans(),
    cuts=st.lists(st.integers(0, 600)),
)
def test_next_events_gives_what_next_event_gives(
    frames: list[bytes], tail: bytes, eof: bool, cuts: list[int]
) -> None:
    wire = b"".join(frames) + tail
    cuts = sorted(min(cut, len(wire)) for cut in cuts)
    each, batched = authed(), authed()
    seen_each: list[object] = []
    seen_batched: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        if start < end:
            each.receive_data(wire[start:end])
            batched.receive_data(wire[start:end])
            seen_each += drain_each(each)
            seen_batched += drain_batched(batched)
    if eof:
        each.receive_data(b"")
        batched.receive_data(b"")
        seen_each += drain_each(each)
        seen_batched += drain_batched(batched)
    assert seen_batched == seen_each
    assert len(seen_each) >= len(frames)


def test_reject_unknown_tag() -> None:
    err = reject(pack("t.nope", 1))
    assert "unknown message tag 't.nope'" in str(err)
    assert err.field is None


def test_reject_non_string_tag() -> None:
    assert "unknown message tag" in str(reject(pack([1, 2], 1)))


def test_reject_missing_field() -> None:
    err = reject(pack("t.w.job", "q"))
    assert err.field == "Job.priority"
    assert "missing field" in str(err)


def test_reject_missing_nested_field() -> None:
    err = reject(pack("env", ["addr", "n1"], None, 0, ["w.ping", 1]))
    assert err.field == "Envelope.dst.Address.name"


def test_reject_extra_field() -> None:
    err = reject(pack("t.w.job", "q", 1, "extra"))
    assert err.field == "Job"
    assert "extra field(s) after priority" in str(err)


def test_reject_field_in_empty_message() -> None:
    assert "extra field(s)" in str(reject(pack("t.w.empty", 1)))


WRONG_TYPES = [
    ("int gets str", scalars_body(i="1"), "Scalars.i"),
    ("int gets bool", scalars_body(i=True), "Scalars.i"),
    ("int gets float", scalars_body(i=1.0), "Scalars.i"),
    ("float gets str", scalars_body(f="1"), "Scalars.f"),
    ("float gets bool", scalars_body(f=False), "Scalars.f"),
    ("str gets bytes", scalars_body(s=b"s"), "Scalars.s"),
    ("bytes gets str", scalars_body(b="b"), "Scalars.b"),
    ("bool gets int", scalars_body(flag=1), "Scalars.flag"),
    ("None gets int", scalars_body(nothing=0), "Scalars.nothing"),
    ("optional int gets str", pack("t.w.opt", "1", None, None, None, 1), "Optionals.i"),
    ("optional float gets str", pack("t.w.opt", None, "x", None, None, 1), "Optionals.f"),
    ("optional message gets int", pack("t.w.opt", None, None, 5, None, 1), "Optionals.addr"),
    ("union gets bytes", pack("t.w.opt", None, None, None, None, b"x"), "Optionals.either"),
    ("message field gets array without tag", pack("t.w.wrap", [], ["w.ping", 1]), "Wrapper.inner"),
    (
        "message field gets other tag",
        pack("t.w.wrap", ["w.ping", 1], ["w.ping", 1]),
        "Wrapper.inner",
    ),
    (
        "nested message field wrong",
        pack("t.w.wrap", ["t.w.scalars", "x", 1.0, "", b"", False, None], ["w.ping", 1]),
        "Wrapper.inner.Scalars.i",
    ),
    ("Message gets int", pack("t.w.wrap", SCALARS_ARRAY, 3), "Wrapper.any_msg"),
    ("Message gets unknown tag", pack("t.w.wrap", SCALARS_ARRAY, ["t.nope"]), "Wrapper.any_msg"),
    ("tuple gets map", pack("t.w.cont", {}, [], [], [], [], {}, {}, []), "Containers.ints"),
    ("tuple item", pack("t.w.cont", [1, "2"], [], [], [], [], {}, {}, []), "Containers.ints[1]"),
    (
        "tuple of float item",
        pack("t.w.cont", [], ["x"], [], [], [], {}, {}, []),
        "Containers.floats[0]",
    ),
    (
        "tuple of messages item",
        pack("t.w.cont", [], [], [["addr", "n", "a"], ["w.ping", 1]], [], [], {}, {}, []),
        "Containers.addrs[1]",
    ),
    (
        "tuple of tuples item",
        pack("t.w.cont", [], [], [], [], [["a", 1]], {}, {}, []),
        "Containers.nested[0][1]",
    ),
    (
        "tuple of optional item",
        pack("t.w.cont", [], [], [], [], [], {}, {}, [1, "x"]),
        "Containers.maybe[1]",
    ),
    ("dict gets array", pack("t.w.cont", [], [], [], [], [], [], {}, []), "Containers.labels"),
    (
        "dict value",
        pack("t.w.cont", [], [], [], [], [], {"k": 1}, {}, []),
        "Containers.labels['k']",
    ),
    (
        "dict of messages value",
        pack("t.w.cont", [], [], [], [], [], {}, {"a": ["addr", "n", 1]}, []),
        "Containers.by_name['a'].Address.name",
    ),
    (
        "dict bytes key",
        pack("t.w.cont", [], [], [], [], [], {b"k": "v"}, {}, []),
        "Containers.labels",
    ),
    ("Any bytes key", pack("t.w.any", {b"k": 1}, {}), "Anything.value"),
    ("Any map bytes key nested", pack("t.w.any", [1, [{b"k": 1}]], {}), "Anything.value"),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in WRONG_TYPES], ids=[c[0] for c in WRONG_TYPES]
)
def test_reject_wrong_type(body: bytes, field: str) -> None:
    err = reject(body)
    assert err.field == field
    assert str(err).startswith(field)
    assert isinstance(err, RemoteProtocolError)


def test_reject_refused_by_class_validator() -> None:
    err = reject(pack("t.w.valid", -1))
    assert err.field == "Validated"
    assert "rejected" in str(err)


def test_reject_invalid_message_in_envelope_says_whom_to_answer() -> None:
    err = reject(
        pack("env", ["addr", "n1", "broker"], ["addr", "n2", "$call"], 42, ["t.w.job", "q", "high"])
    )
    assert err.field == "Envelope.msg.Job.priority"
    assert (err.corr, err.reply_node) == (42, "n2")


def test_reject_unknown_message_in_envelope_says_whom_to_answer() -> None:
    err = reject(pack("env", ["addr", "n1", "broker"], ["addr", "n2", "c"], 9, ["t.nope"]))
    assert (err.field, err.corr, err.reply_node) == ("Envelope.msg", 9, "n2")


def test_reject_envelope_with_bad_header_has_no_reply_address() -> None:
    err = reject(pack("env", ["addr", "n1", "broker"], ["addr", "n2", "c"], "9", ["w.ping", 1]))
    assert (err.field, err.corr, err.reply_node) == ("Envelope.corr", 0, None)


def test_reject_array_bomb() -> None:
    assert "undecodable" in str(reject(b"\xdd\xff\xff\xff\xff"))
    assert "undecodable" in str(reject(b"\x93\xa7t.w.any" + b"\xdd\xff\xff\xff\xff"))


def test_reject_map_bomb() -> None:
    assert "undecodable" in str(reject(b"\xdf\xff\xff\xff\xff"))
    assert "undecodable" in str(reject(b"\x93\xa7t.w.any\xc0" + b"\xdf\xff\xff\xff\xff"))


def test_container_limit_is_enforced_beyond_the_body_length() -> None:
    body = b"\x93\xa7t.w.any" + b"\xdd" + struct.pack(">I", CONTAINER_LEN_MAX + 1)
    body += b"\xc0" * (CONTAINER_LEN_MAX + 1) + b"\x80"
    assert "exceeds max_array_len" in str(reject(body))


def test_reject_deep_nesting_10000_levels() -> None:
    assert "undecodable" in str(reject(b"\x91" * 10_000 + b"\xc0"))
    err = reject(b"\x93\xa7t.w.any" + b"\x91" * 10_000 + b"\xc0\x80")
    assert isinstance(err, InvalidMessage)


def test_reject_nesting_past_depth_max_in_any() -> None:
    value: Any = None
    for _ in range(DEPTH_MAX):
        value = [value]
    err = reject(pack("t.w.any", value, {}))
    assert err.field == "Anything.value"
    assert "nested deeper" in str(err)


def test_depth_max_counts_message_levels() -> None:
    value: Any = None
    for _ in range(DEPTH_MAX - 1):
        value = [value]
    assert decode(pack("t.w.any", value, {})) == Anything(
        functools.reduce(lambda v, _: (v,), range(DEPTH_MAX - 1), None), {}
    )


def test_reject_messages_nested_past_depth_max() -> None:
    body: Any = ["t.w.empty"]
    for _ in range(DEPTH_MAX):
        body = ["t.w.wrap", ["t.w.scalars", 1, 1.0, "", b"", False, None], body]
    assert "nested deeper" in str(reject(msgpack.packb(body)))


def test_reject_ext_type() -> None:
    ext = msgpack.packb(msgpack.ExtType(5, b"data"))
    assert "undecodable" in str(reject(b"\x93\xa7t.w.any" + ext + b"\x80"))


def test_reject_timestamp() -> None:
    ts = msgpack.packb(msgpack.Timestamp(1, 2))
    assert "undecodable" in str(reject(b"\x93\xa7t.w.any" + ts + b"\x80"))


def test_reject_non_string_map_keys() -> None:
    assert "undecodable" in str(reject(pack("t.w.any", {1: 2}, {})))
    assert reject(pack("t.w.any", 1, {b"k": 1})).field == "Anything.meta"


def test_reject_invalid_utf8() -> None:
    err = reject(b"\x92\xa6w.ping" + b"\xa2\xff\xfe")
    assert "undecodable" in str(err)
    assert "'utf-8'" in str(err)


@pytest.mark.parametrize(
    "body",
    [msgpack.packb(1), msgpack.packb("w.ping"), msgpack.packb({"w.ping": 1}), msgpack.packb([])],
)
def test_reject_body_not_a_message_array(body: bytes) -> None:
    assert "message array" in str(reject(body))


def test_reject_trailing_bytes_after_the_body() -> None:
    assert "undecodable" in str(reject(encode(Ping(1)) + b"\xc0"))


def test_reject_truncated_body() -> None:
    assert "undecodable" in str(reject(encode(SCALARS)[:-1]))


# -- encoding refuses what would not decode -------------------------------------------


def test_encode_unregistered_class() -> None:
    with pytest.raises(LocalProtocolError, match="Unregistered is not a registered message"):
        encode(Unregistered(1))
    with pytest.raises(LocalProtocolError, match="int is not a registered message"):
        encode(3)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (attrs.evolve(SCALARS, i="1"), "Scalars.i"),
        (attrs.evolve(SCALARS, i=True), "Scalars.i"),
        (attrs.evolve(SCALARS, flag=1), "Scalars.flag"),
        (attrs.evolve(SCALARS, b=bytearray(b"x")), "Scalars.b"),
        (Job("q", None), "Job.priority"),
        (Wrapper(SCALARS, Unregistered(1)), "Wrapper.any_msg"),
        (Wrapper(attrs.evolve(SCALARS, s=1), Empty()), "Wrapper.inner.Scalars.s"),
        (Wrapper(Empty(), Empty()), "Wrapper.inner"),
        (Containers([1], (), (), (), (), {}, {}, ()), "Containers.ints"),
        (Containers((), (), (ADDR, 1), (), (), {}, {}, ()), "Containers.addrs[1]"),
        (Containers((), (), (), (), (), {1: "x"}, {}, ()), "Containers.labels"),
        (Anything(ADDR, {}), "Anything.value"),
        (Anything({1: 2}, {}), "Anything.value"),
        (Anything(object(), {}), "Anything.value"),
        (Envelope(Address("n", 5), None, 0, Empty()), "Envelope.dst.Address.name"),  # type: ignore[arg-type]
        (Envelope(Address(b"n", "a"), None, 0, Empty()), "Envelope.dst.Address.node"),  # type: ignore[arg-type]
        (Envelope(ADDR, Address("n", None), 0, Empty()), "Envelope.src.Address.name"),  # type: ignore[arg-type]
        (Envelope(Ping(1), None, 0, Empty()), "Envelope.dst"),  # type: ignore[arg-type]
        (Envelope(None, None, 0, Empty()), "Envelope.dst"),  # type: ignore[arg-type]
        (Optionals(None, None, Ping(1), None, 1), "Optionals.addr"),  # type: ignore[arg-type]
    ],
)
def test_encode_wrong_field_type_names_the_field(msg: object, field: str) -> None:
    with pytest.raises(
        LocalProtocolError, match=re.escape(f"cannot encode {type(msg).__name__}: {field}")
    ):
        encode(msg)


def test_encode_value_out_of_msgpack_range() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Job("q", 2**64))
    with pytest.raises(LocalProtocolError):
        encode(Job("\ud800", 1))
    assert decode(encode(Job("q", 1))) == Job("q", 1)  # the shared packer recovered


def test_encode_too_deep() -> None:
    value: Any = None
    for _ in range(DEPTH_MAX):
        value = [value]
    with pytest.raises(LocalProtocolError, match="nested deeper"):
        encode(Anything(value, {}))
    msg: Any = Empty()
    for _ in range(DEPTH_MAX):
        msg = Wrapper(SCALARS, msg)
    with pytest.raises(LocalProtocolError, match="nested deeper"):
        encode(msg)


def test_unsupported_field_type_is_a_local_error() -> None:
    @message("t.w.bad")
    @attrs.frozen
    class Bad:
        items: list[int]

    try:
        with pytest.raises(
            LocalProtocolError, match=r"Bad\.items: unsupported field type list\[int\]"
        ):
            encode(Bad([1]))
    finally:
        del REGISTRY["t.w.bad"]


# -- garbage only ever raises ProtocolError ---------------------------------------------


def _feed_all(conn: Connection, chunks: list[bytes]) -> None:
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while True:
                try:
                    if conn.next_event() in (NEED_DATA, CLOSED):
                        break
                except InvalidMessage:
                    continue
    except FramingError:
        return


@THOROUGH
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=64), max_size=8),
    limit=st.sampled_from([16, 64, MIB]),
)
def test_random_bytes_only_raise_protocol_errors(chunks: list[bytes], limit: int) -> None:
    _feed_all(Connection(frame_bytes_max=limit, preauth_frame_bytes_max=min(limit, KIB16)), chunks)


@THOROUGH
@given(bodies=st.lists(st.binary(min_size=1, max_size=48), max_size=6))
def test_random_framed_bodies_only_raise_protocol_errors(bodies: list[bytes]) -> None:
    _feed_all(authed(), [framed(body) for body in bodies])


@THOROUGH
@given(tag=st.sampled_from(sorted(REGISTRY)), fields=st.lists(msgpack_values, max_size=6))
def test_random_fields_for_a_known_tag_only_raise_invalid_message(
    tag: str, fields: list[Any]
) -> None:
    try:
        decode(msgpack.packb([tag, *fields]))
    except InvalidMessage:
        pass


@THOROUGH
@given(msg=any_message(0), data=st.data())
def test_mutated_bodies_only_raise_protocol_errors(msg: Any, data: st.DataObject) -> None:
    body = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode(bytes(body))
    except ProtocolError:
        pass


def test_error_reply_message_is_registered() -> None:
    assert decode(encode(ErrorReply("ValueError", "bad", ""))) == ErrorReply(
        "ValueError", "bad", ""
    )
    assert decode(encode(WireError("framing", "x", True))) == WireError("framing", "x", True)
