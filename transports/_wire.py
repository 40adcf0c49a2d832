"""Sans-IO wire codec: frames and messages to bytes and back, never a socket.

Rules of this module:
- Bytes in, messages out, and the reverse (h11's idea). No IO, no clock, no randomness,
  and it never imports trio; tcp, memory and sim transports are shells around it.
- A frame is a 4-byte big-endian length and a msgpack body. A message is the array
  ``[tag, field1, field2, ...]`` in attrs field order; nested messages nest the same way.
- Limits are checked before buffering: the length prefix against the frame limit (16 KiB
  before authentication, 1 MiB after), containers against the body length and
  `CONTAINER_LEN_MAX`, nesting (messages and containers together) against `DEPTH_MAX`.
  Extension types, timestamps included, are refused.
- Broken framing raises `FramingError` and kills the connection. A well-framed body that
  is not a valid message raises `InvalidMessage`; its frame is skipped and the connection
  stays usable. Nothing a peer sends raises anything but a `ProtocolError`.
- Encoding checks every field against its type: a message that would not decode never
  reaches the wire (`LocalProtocolError`).
- Each message class compiles once, lazily at first use (so classes registered after
  this module loads work), into per-field encoder and decoder closures driven by two
  generated functions; encode and decode do no reflection per call. A decoded instance
  of a slotted attrs class whose generated `__init__` only stores its arguments is built
  by setting its slots; any other class is called, so its validators and hooks run.
- `Address` values are interned by the decoder: a bounded cache (entries and their
  length) maps the exact decoded array (``("addr", node, name)``, all str) to one
  immutable `Address`, so the envelopes of a busy link do not rebuild the same two
  addresses each time. Only an array that decoded strictly once is ever cached, and a hit
  needs an equal array (str compares equal to str only) at an allowed depth, so nothing
  is accepted that a full decode would refuse.

The codec is split by concern; everything above is importable from here as before:
- `_wire_limits`: the limits, the scalar types, `_Invalid` (a value does not fit);
- `_wire_fields`: the per-field encoder and decoder closures, and compiling a class;
- `_wire_codegen`: the generated per-class functions and the `Address` interning cache;
- this module: bodies, frames and `Connection`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from typing import Any, Final

import attrs
import msgpack

from gotask._errors import FramingError, InvalidMessage, LocalProtocolError
from gotask.runtime.message import Envelope, tag_of

from . import _handshake as _handshake  # registers the control messages
from ._wire_codegen import _ADDRESSES as _ADDRESSES
from ._wire_codegen import _DECODERS, _ENCODERS
from ._wire_codegen import _slot_setters as _slot_setters
from ._wire_fields import _decoder, _encoder, compile_registry
from ._wire_limits import ADDRESS_CACHE_MAX as ADDRESS_CACHE_MAX
from ._wire_limits import ADDRESS_INTERN_CHARS_MAX as ADDRESS_INTERN_CHARS_MAX
from ._wire_limits import (
    CONTAINER_LEN_MAX,
    DEPTH_MAX,
    FRAME_BYTES_MAX,
    PREAUTH_FRAME_BYTES_MAX,
    _Invalid,
    _tname,
)

__all__ = [
    "CLOSED",
    "CONTAINER_LEN_MAX",
    "DEPTH_MAX",
    "FRAME_BYTES_MAX",
    "NEED_DATA",
    "PREAUTH_FRAME_BYTES_MAX",
    "Connection",
    "Sentinel",
    "compile_registry",
    "decode",
    "encode",
    "frame",
]

_LEN = struct.Struct(">I")
_LEN_PACK = _LEN.pack
_LEN_UNPACK_FROM = _LEN.unpack_from
# One packer for all: after our checks it only ever sees exact builtin types, so it runs
# entirely in C under the GIL and cannot be re-entered; it resets itself after each pack.
_PACKER = msgpack.Packer()
_unpackb = msgpack.unpackb


class Sentinel(enum.Enum):
    """What `Connection.next_event` returns when it has no message to give."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


#: More bytes are needed before the next message.
NEED_DATA: Final = Sentinel.NEED_DATA
#: The peer closed the stream cleanly, between frames.
CLOSED: Final = Sentinel.CLOSED


# -- bodies and frames -----------------------------------------------------------------


def encode(msg: object) -> bytes:
    """Encode a registered message as a msgpack body (no length prefix).

    Raises:
        LocalProtocolError: `msg` is not a registered message, or a field does not fit its
            type (the error names the field).
    """
    code = _ENCODERS.get(type(msg)) or _encoder(type(msg))
    if code is None:
        raise LocalProtocolError(f"{_tname(msg)} is not a registered message")
    try:
        return _PACKER.pack(code(msg, 1))  # type: ignore[no-any-return]
    except _Invalid as err:
        raise LocalProtocolError(f"cannot encode {_tname(msg)}: {err}") from None
    except (OverflowError, ValueError, TypeError) as exc:
        raise LocalProtocolError(f"cannot encode {_tname(msg)}: {exc}") from None


def decode(body: bytes | bytearray) -> object:
    """Decode one msgpack body into a registered message, strictly.

    Raises:
        InvalidMessage: the body is not msgpack, or not a registered message with fields of
            the right types. `field` names the offending field; for an `Envelope` whose
            `msg` alone is wrong, `corr` and `reply_node` say whom to answer.
    """
    size = len(body)
    items = size if size <= CONTAINER_LEN_MAX else CONTAINER_LEN_MAX
    try:
        obj = _unpackb(
            body,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=items,
            max_map_len=items >> 1,  # an entry takes at least two bytes
            max_ext_len=0,
        )
    except Exception as exc:  # untrusted bytes: whatever the unpacker refuses is the peer's fault
        raise InvalidMessage(f"undecodable msgpack body: {type(exc).__name__}: {exc}") from None
    if type(obj) is not tuple or not obj:
        raise InvalidMessage(f"body must be a message array [tag, fields...], got {_tname(obj)}")
    head = obj[0]
    try:
        code = _DECODERS.get(head) if type(head) is str else None
        return (code or _decoder(head))(obj, 1)
    except _Invalid as err:
        raise _invalid_message(obj, err) from None


_ENVELOPE_TAG = tag_of(Envelope)
_ENVELOPE_ARITY = len(attrs.fields(Envelope)) + 1


def _invalid_message(obj: tuple[Any, ...], err: _Invalid) -> InvalidMessage:
    exc = InvalidMessage(str(err), field=err.where())
    is_envelope = obj[0] == _ENVELOPE_TAG and len(obj) == _ENVELOPE_ARITY
    if is_envelope and err.segments[-1:] == ["Envelope.msg"]:
        # Fields decode in order, so dst, src and corr, which precede msg, were valid.
        src, corr = obj[2], obj[3]
        exc.corr = corr
        exc.reply_node = None if src is None else src[1]
    return exc


def frame(body: bytes) -> bytes:
    """Prefix a body with its 4-byte big-endian length.

    Raises:
        LocalProtocolError: the body is empty or longer than 2**32 - 1 bytes.
    """
    if not 0 < len(body) <= 0xFFFFFFFF:
        raise LocalProtocolError(f"cannot frame a body of {len(body)} bytes")
    return _LEN.pack(len(body)) + body


# -- connection ------------------------------------------------------------------------


class Connection:
    """One side of a framed connection, h11 style: feed bytes, take messages out.

    Rules: call `next_event()` until it returns `NEED_DATA` before the next
    `receive_data()` (`next_events()` takes the whole frames first, in one call), so at
    most one partial frame is ever buffered. The limit in force
    is `preauth_frame_bytes_max` until `mark_authenticated()`, then `frame_bytes_max`;
    it applies to both directions.

    Args:
        frame_bytes_max: largest body accepted and sent once authenticated, in bytes.
        preauth_frame_bytes_max: largest body before authentication, in bytes.
    """

    def __init__(
        self,
        *,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        preauth_frame_bytes_max: int = PREAUTH_FRAME_BYTES_MAX,
    ) -> None:
        if not 0 < preauth_frame_bytes_max <= frame_bytes_max <= 0xFFFFFFFF:
            raise ValueError(
                "need 0 < preauth_frame_bytes_max <= frame_bytes_max <= 2**32 - 1, got "
                f"{preauth_frame_bytes_max} and {frame_bytes_max}"
            )
        self._frame_bytes_max = frame_bytes_max
        self._limit = preauth_frame_bytes_max
        self._authenticated = False
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._broken: str | None = None

    @property
    def authenticated(self) -> bool:
        """Whether `mark_authenticated()` was called."""
        return self._authenticated

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned as messages."""
        return len(self._buf) - self._pos

    def mark_authenticated(self) -> None:
        """Switch to the full frame limit once the handshake succeeded."""
        self._authenticated = True
        self._limit = self._frame_bytes_max

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means EOF. Ignored once framing broke.

        Raises:
            RuntimeError: data after EOF, or a whole frame is still waiting for
                `next_event()`.
        """
        if self._broken is not None:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data() after EOF")
        if self._frame_ready():
            raise RuntimeError("call next_event() until NEED_DATA before receive_data()")
        self._buf += data
        try:
            self._frame_length()  # refuse a bad length prefix before buffering its body
        except FramingError:
            pass

    def next_event(self) -> object:
        """Return the next message, `NEED_DATA`, or `CLOSED` after a clean EOF.

        Raises:
            FramingError: the stream cannot be framed; the connection is dead and every
                later call raises again.
            InvalidMessage: a frame held an invalid message; it was skipped.
        """
        buf, pos = self._buf, self._pos
        if self._broken is None and len(buf) - pos >= 4:
            # The common case inline: a whole frame of an acceptable length is buffered.
            end = pos + 4 + _LEN_UNPACK_FROM(buf, pos)[0]
            if pos + 4 < end <= len(buf) and end - pos - 4 <= self._limit:
                self._pos = end
                return decode(buf[pos + 4 : end])
        length = self._frame_length()
        buf, start = self._buf, self._pos + 4
        if length is not None and start + length <= len(buf):
            self._pos = start + length
            return decode(buf[start : self._pos])
        if self._eof:
            if not self.buffered_bytes:
                return CLOSED
            raise self._fail(f"connection closed mid-frame ({self.buffered_bytes} bytes pending)")
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
        return NEED_DATA

    def next_events(self) -> list[object]:
        """Every message whole in the buffer, in order; [] when there is none.

        `next_event()` in a loop, minus a call per frame: the link reader's hot path. A
        frame holding an invalid message gives its `InvalidMessage` in its place, not
        raised, so the messages after it are kept. After [], `next_event()` says what
        comes next: `NEED_DATA`, `CLOSED` or the `FramingError`.
        """
        events: list[object] = []
        if self._broken is not None:
            return events
        buf, pos, limit = self._buf, self._pos, self._limit
        size, append = len(buf), events.append
        while size - pos >= 4:
            start = pos + 4
            end = start + _LEN_UNPACK_FROM(buf, pos)[0]
            if not start < end <= size or end - start > limit:
                break  # partial, empty or oversized: `next_event` deals with it
            pos = end
            try:
                append(decode(buf[start:end]))
            except InvalidMessage as exc:
                append(exc)
        self._pos = pos
        return events

    def send(self, msg: object) -> bytes:
        """Return the frame carrying `msg`.

        Raises:
            LocalProtocolError: `msg` cannot be encoded or exceeds the frame limit.
        """
        code = _ENCODERS.get(type(msg))
        try:  # `encode`, inline for a compiled class: a call less per frame
            body = _PACKER.pack(code(msg, 1)) if code is not None else encode(msg)
        except (_Invalid, OverflowError, ValueError, TypeError):
            body = encode(msg)  # fails again, the same way, and says why
        size = len(body)
        if size > self._limit:
            raise LocalProtocolError(
                f"{type(msg).__name__} encodes to {size} bytes, "
                f"over the {self._limit}-byte frame limit"
            )
        return _LEN_PACK(size) + body

    def send_many(self, msgs: Iterable[object]) -> bytes:
        """Return the frames of all `msgs` as one bytes object, for a single send_all."""
        return b"".join([self.send(msg) for msg in msgs])

    def _frame_ready(self) -> bool:
        pending = len(self._buf) - self._pos
        return pending >= 4 and pending >= 4 + _LEN.unpack_from(self._buf, self._pos)[0]

    def _frame_length(self) -> int | None:
        """Check the next length prefix; None while fewer than 4 bytes are buffered."""
        if self._broken is not None:
            raise FramingError(self._broken)
        if len(self._buf) - self._pos < 4:
            return None
        (length,) = _LEN.unpack_from(self._buf, self._pos)
        if 0 < length <= self._limit:
            return int(length)
        if length == 0:
            raise self._fail("zero-length frame")
        raise self._fail(f"frame of {length} bytes exceeds the {self._limit}-byte limit")

    def _fail(self, reason: str) -> FramingError:
        self._broken = reason
        self._buf = bytearray()
        self._pos = 0
        return FramingError(reason)
