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
"""

from __future__ import annotations

import enum
import struct
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Final, Union

import attrs
import msgpack

from gotask._errors import FramingError, InvalidMessage, LocalProtocolError
from gotask.runtime.message import MESSAGE_MARK, REGISTRY, Address, Envelope, tag_of

from . import _handshake as _handshake  # registers the control messages

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

#: Deepest nesting of arrays and maps in a body, message arrays included.
DEPTH_MAX: Final = 32
#: Most elements an array or map in a body may declare.
CONTAINER_LEN_MAX: Final = 1_000_000
FRAME_BYTES_MAX: Final = 1 << 20
PREAUTH_FRAME_BYTES_MAX: Final = 16 << 10
#: Most distinct addresses the decoder keeps interned; past that the cache starts over.
ADDRESS_CACHE_MAX: Final = 4096
#: Longest address (node and actor name together, in characters) the decoder interns, so
#: the cache holds a few MiB at most whatever a peer sends.
ADDRESS_INTERN_CHARS_MAX: Final = 512

_LEN = struct.Struct(">I")
_LEN_PACK = _LEN.pack
_LEN_UNPACK_FROM = _LEN.unpack_from
# One packer for all: after our checks it only ever sees exact builtin types, so it runs
# entirely in C under the GIL and cannot be re-entered; it resets itself after each pack.
_PACKER = msgpack.Packer()
_unpackb = msgpack.unpackb
_NONE = type(None)
_STR_ONLY = frozenset({str})
_ANY_SCALARS = frozenset({_NONE, bool, int, float, str, bytes})
_EXACT_SCALARS = frozenset({_NONE, bool, int, str, bytes})

#: A compiled field codec: (value, nesting level of the container holding it) -> value.
_Code = Callable[[Any, int], Any]


class Sentinel(enum.Enum):
    """What `Connection.next_event` returns when it has no message to give."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


#: More bytes are needed before the next message.
NEED_DATA: Final = Sentinel.NEED_DATA
#: The peer closed the stream cleanly, between frames.
CLOSED: Final = Sentinel.CLOSED


# -- validation errors ---------------------------------------------------------------


class _Invalid(Exception):
    """A value does not fit its field; each container adds its path segment on the way out."""

    def __init__(self, reason: str, segment: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments = [] if segment is None else [segment]  # innermost first

    def add(self, segment: str | None) -> None:
        if segment is not None:
            self.segments.append(segment)

    def where(self) -> str | None:
        path = ""
        for seg in reversed(self.segments):
            path += seg if not path or seg.startswith("[") else "." + seg
        return path or None

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.reason}" if where else self.reason


def _tname(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _short(value: object) -> str:
    if type(value) not in _ANY_SCALARS:
        return f"a {type(value).__name__}"  # never repr a container: it may be 1000 deep
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _too_deep(segment: str | None) -> _Invalid:
    return _Invalid(f"nested deeper than {DEPTH_MAX} levels", segment)


# -- field codecs ----------------------------------------------------------------------


def _exact_types(tp: Any) -> frozenset[type] | None:
    """Types that pass unchanged for `tp`, or None when `tp` needs a real codec."""
    if tp is None or tp is _NONE:
        return frozenset({_NONE})
    if isinstance(tp, type) and tp in _EXACT_SCALARS:
        return frozenset({tp})
    if typing.get_origin(tp) in (Union, types.UnionType):
        parts = [_exact_types(arg) for arg in typing.get_args(tp)]
        if all(part is not None for part in parts):
            return frozenset().union(*typing.cast(list[frozenset[type]], parts))
    return None


def _type_name(tp: Any) -> str:
    if tp is None or tp is _NONE:
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    if typing.get_origin(tp) is Annotated and MESSAGE_MARK in typing.get_args(tp)[1:]:
        return "Message"
    return repr(tp).replace("typing.", "")


def _check_types(allowed: frozenset[type], name: str, seg: str | None) -> _Code:
    expected = f"expected {name}, got "

    def check(value: Any, depth: int) -> Any:
        if type(value) in allowed:
            return value
        raise _Invalid(expected + _tname(value), seg)

    return check


def _float(seg: str | None) -> _Code:
    def code(value: Any, depth: int) -> Any:
        if type(value) is float:
            return value
        if type(value) is int:
            try:
                return float(value)
            except OverflowError:
                raise _Invalid("int too large for a float", seg) from None
        raise _Invalid(f"expected float, got {_tname(value)}", seg)

    return code


def _check_any(value: Any, depth: int, seg: str | None) -> None:
    """Raise unless `value`, held at nesting level `depth`, is a plain msgpack value."""
    kind = type(value)
    if kind in _ANY_SCALARS:
        return
    if kind is tuple or kind is list:
        items: Iterable[Any] = value
    elif kind is dict:
        if not set(map(type, value)) <= _STR_ONLY:
            raise _Invalid("map keys must be str", seg)
        items = value.values()
    else:
        raise _Invalid(f"{kind.__name__} is not a msgpack value", seg)
    if depth >= DEPTH_MAX:
        raise _too_deep(seg)
    if set(map(type, items)) <= _ANY_SCALARS:
        return
    for item in items:
        _check_any(item, depth + 1, seg)


def _any(seg: str | None) -> _Code:
    def code(value: Any, depth: int) -> Any:
        if type(value) not in _ANY_SCALARS:
            _check_any(value, depth, seg)
        return value

    return code


def _optional(inner: _Code) -> _Code:
    def code(value: Any, depth: int) -> Any:
        return None if value is None else inner(value, depth)

    return code


def _union(members: list[_Code], name: str, seg: str | None) -> _Code:
    def code(value: Any, depth: int) -> Any:
        for member in members:
            try:
                return member(value, depth)
            except _Invalid:
                pass
        raise _Invalid(f"expected {name}, got {_tname(value)}", seg)

    return code


def _items(item: _Code, depth: int, values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    try:
        for value in values:
            out.append(item(value, depth))
    except _Invalid as err:
        err.add(f"[{len(out)}]")
        raise
    return out


def _tuple(item_tp: Any, seg: str | None, decoding: bool) -> _Code:
    name = _type_name(item_tp)
    allowed = _exact_types(item_tp)
    item = _field_codec(item_tp, None, decoding)

    def code(value: Any, depth: int) -> Any:
        if type(value) is not tuple:
            raise _Invalid(f"expected tuple[{name}, ...], got {_tname(value)}", seg)
        if depth >= DEPTH_MAX:
            raise _too_deep(seg)
        if allowed is not None and set(map(type, value)) <= allowed:
            return value
        try:
            out = _items(item, depth + 1, value)
        except _Invalid as err:
            err.add(seg)
            raise
        return tuple(out) if decoding else out

    return code


def _dict(value_tp: Any, seg: str | None, decoding: bool) -> _Code:
    name = _type_name(value_tp)
    allowed = _exact_types(value_tp)
    item = _field_codec(value_tp, None, decoding)

    def code(value: Any, depth: int) -> Any:
        if type(value) is not dict:
            raise _Invalid(f"expected dict[str, {name}], got {_tname(value)}", seg)
        if depth >= DEPTH_MAX:
            raise _too_deep(seg)
        if not set(map(type, value)) <= _STR_ONLY:
            raise _Invalid("map keys must be str", seg)
        if allowed is not None and set(map(type, value.values())) <= allowed:
            return value
        out = {}
        try:
            for key, val in value.items():
                out[key] = item(val, depth + 1)
        except _Invalid as err:
            err.add(f"[{_short(key)}]")
            err.add(seg)
            raise
        return out

    return code


def _nested(cls: type | None, seg: str | None, decoding: bool, optional: bool = False) -> _Code:
    """A field holding one registered class, or any registered message when `cls` is None."""
    name = ("a message" if cls is None else cls.__name__) + (" | None" if optional else "")
    tag = None if cls is None else tag_of(cls)

    def encode_one(value: Any, depth: int) -> Any:
        if value is None and optional:
            return None
        kind = type(value)
        code = _ENCODERS.get(kind) or _encoder(kind)
        if code is None or (cls is not None and kind is not cls):
            raise _Invalid(f"expected {name}, got {_tname(value)}", seg)
        try:
            return code(value, depth + 1)
        except _Invalid as err:
            err.add(seg)
            raise

    def decode_one(value: Any, depth: int) -> Any:
        if value is None and optional:
            return None
        if type(value) is not tuple or not value:
            raise _Invalid(f"expected {name} (array), got {_tname(value)}", seg)
        head = value[0]
        try:
            if tag is not None and head != tag:
                raise _Invalid(f"expected {name}, got tag {_short(head)}")
            code = _DECODERS.get(head) if type(head) is str else None
            return (code or _decoder(head))(value, depth + 1)
        except _Invalid as err:
            err.add(seg)
            raise

    if decoding and cls is Address:
        return _interned(decode_one)
    return decode_one if decoding else encode_one


#: Decoded address array -> the one `Address` it decoded to (see the module rules).
_ADDRESSES: dict[Any, Any] = {}


def _interned(decode_one: _Code) -> _Code:
    """Wrap the decoder of an `Address` field with the interning cache."""
    cache = _ADDRESSES

    def decode_address(value: Any, depth: int) -> Any:
        # The address array sits at depth + 1; deeper than DEPTH_MAX it must be refused.
        if depth < DEPTH_MAX:
            try:
                hit = cache.get(value)
            except TypeError:  # unhashable: a map inside, which decode_one refuses
                hit = None
            if hit is not None:
                return hit
        obj = decode_one(value, depth)
        if obj is not None and len(obj.node) + len(obj.name) <= ADDRESS_INTERN_CHARS_MAX:
            if len(cache) >= ADDRESS_CACHE_MAX:
                cache.clear()
            cache[value] = obj
        return obj

    return decode_address


def _message_class(tp: Any) -> tuple[bool, type | None]:
    """(True, cls) for a registered class, (True, None) for `Message`, else (False, None)."""
    if typing.get_origin(tp) is Annotated and MESSAGE_MARK in typing.get_args(tp)[1:]:
        return True, None
    if isinstance(tp, type) and tp in REGISTRY.values():
        return True, tp
    return False, None


def _field_codec(tp: Any, seg: str | None, decoding: bool) -> _Code:
    """Compile the encoder (or decoder) of one field type.

    Raises:
        TypeError: the type is not one a message field may use.
    """
    allowed = _exact_types(tp)
    if allowed is not None:
        return _check_types(allowed, _type_name(tp), seg)
    if tp is float:
        return _float(seg)
    if tp is Any:
        return _any(seg)
    is_message, cls = _message_class(tp)
    if is_message:
        return _nested(cls, seg, decoding)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _field_codec(args[0], seg, decoding)
    if origin in (Union, types.UnionType):
        others = [arg for arg in args if arg is not _NONE]
        if len(others) == 1:
            is_message, cls = _message_class(others[0])
            if is_message:
                return _nested(cls, seg, decoding, optional=True)
            return _optional(_field_codec(others[0], seg, decoding))
        members = [_field_codec(arg, None, decoding) for arg in args]
        return _union(members, _type_name(tp), seg)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple(args[0], seg, decoding)
    if origin is dict and args and args[0] is str:
        return _dict(args[1], seg, decoding)
    raise TypeError(f"unsupported field type {_type_name(tp)}")


# -- message codecs --------------------------------------------------------------------
#
# A message class compiles into two small functions generated from source, the way attrs
# builds __init__: they unpack the fields into locals, check each scalar field with one
# `type(v) is T` test and call the field's closure only for other fields (containers,
# unions, Any) or when that test fails, so the closure converts (int to float) or raises
# naming the field. A field holding a message (`C`, `C | None`, `Message`) calls the
# nested message's own generated function directly when the value's type (encoding) or
# tag (decoding) has one compiled, and its closure otherwise, which compiles, or refuses
# naming the field. The source holds indices, attribute names and the tags of registered
# classes, never data.

_ENCODERS: dict[type, _Code] = {}
_DECODERS: dict[str, _Code] = {}


def _compile_field(cls: type, hints: dict[str, Any], name: str, decoding: bool) -> _Code:
    seg = f"{cls.__name__}.{name}"
    if name not in hints:
        raise TypeError(f"{seg} has no type annotation")
    try:
        return _field_codec(hints[name], seg, decoding)
    except TypeError as exc:
        raise TypeError(f"{seg}: {exc}") from None


def _fast_kind(tp: Any) -> type | None:
    """The one type a field's value has when a `type(v) is T` test suffices, else None."""
    if tp is float or (isinstance(tp, type) and tp in _EXACT_SCALARS):
        return tp  # type: ignore[no-any-return]
    return _NONE if tp is None else None


#: A field holding a message: (its class, or None for any message; whether None is allowed).
_NestedSpec = tuple[type | None, bool]


def _nested_spec(tp: Any) -> _NestedSpec | None:
    """How `tp` holds a nested message, or None if it does not (see `_field_codec`)."""
    is_message, cls = _message_class(tp)
    if is_message:
        return cls, False
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _nested_spec(args[0])
    if origin in (Union, types.UnionType) and len(args) == 2 and _NONE in args:
        (other,) = [arg for arg in args if arg is not _NONE]
        is_message, cls = _message_class(other)
        if is_message:
            return cls, True
    return None


def _field_lines(
    codes: list[_Code],
    kinds: list[type | None],
    env: dict[str, Any],
    nested: list[_NestedSpec | None],
    segs: list[str],
    decoding: bool,
) -> list[str]:
    lines = []
    env["Invalid"], env["enc_get"], env["dec_get"] = _Invalid, _ENCODERS.get, _DECODERS.get
    for i, (code, kind, spec) in enumerate(zip(codes, kinds, nested, strict=True)):
        env[f"c{i}"], env[f"k{i}"], env[f"s{i}"] = code, kind, segs[i]
        v = f"v{i}"
        if spec is None:
            check = "" if kind is None else f"if type({v}) is not k{i}: "
            lines.append(f"    {check}{v} = c{i}({v}, depth)")
            continue
        if decoding and spec[0] is Address:
            # Interned: look the array up here; the closure decodes a miss and caches it.
            env["addr_get"] = _ADDRESSES.get
            indent = "    "
            if spec[1]:
                lines.append(f"    if {v} is not None:")
                indent = "        "
            body = [
                "try:",
                f"    hit = addr_get({v}) if depth < DEPTH_MAX else None",
                "except TypeError:  # unhashable: a map inside, which the closure refuses",
                "    hit = None",
                f"{v} = c{i}({v}, depth) if hit is None else hit",
            ]
            lines += [indent + line for line in body]
            continue
        cls, optional = spec
        if not decoding and cls is Address:
            # Built here: two str checks and a list, instead of a call to its encoder.
            env["addr_tag"] = tag_of(Address)
            indent = "    "
            if optional:
                lines.append(f"    if {v} is not None:")
                indent = "        "
            body = [
                f"if type({v}) is n{i} and depth < DEPTH_MAX:",
                f"    node, name = {v}.node, {v}.name",
                "else:",
                "    node = name = None",
                "if type(node) is str and type(name) is str:",
                f"    {v} = [addr_tag, node, name]",
                "else:",
                f"    {v} = c{i}({v}, depth)",
            ]
            env[f"n{i}"] = cls
            lines += [indent + line for line in body]
            continue
        if decoding:
            env[f"t{i}"] = None if cls is None else tag_of(cls)
            head = f"type({v}[0]) is str" if cls is None else f"{v}[0] == t{i}"
            body = [
                f"if type({v}) is tuple and {v} and {head}:",
                f"    code = dec_get({v}[0])",
                "else:",
                "    code = None",
                "if code is None:",
            ]
        else:
            env[f"n{i}"] = cls
            kind_check = "" if cls is None else f" or type({v}) is not n{i}"
            body = [f"code = enc_get(type({v}))", f"if code is None{kind_check}:"]
        body.append(f"    {v} = c{i}({v}, depth)")
        body += [
            "else:",
            "    try:",
            f"        {v} = code({v}, depth + 1)",
            "    except Invalid as err:",
            f"        err.add(s{i})",
            "        raise",
        ]
        indent = "    "
        if optional:
            lines.append(f"    if {v} is not None:")
            indent = "        "
        lines += [indent + line for line in body]
    return lines


def _generate(name: str, lines: list[str], env: dict[str, Any], label: str) -> _Code:
    env["DEPTH_MAX"] = DEPTH_MAX
    exec(compile("\n".join(lines), f"<wire codec {label}>", "exec"), env)
    return typing.cast(_Code, env[name])


def _message_encoder(
    cls: type,
    names: tuple[str, ...],
    codes: list[_Code],
    kinds: list[type | None],
    nested: list[_NestedSpec | None],
) -> _Code:
    tag = tag_of(cls)
    env: dict[str, Any] = {"tag": tag, "too_deep": _too_deep}
    values = "".join(f", v{i}" for i in range(len(names)))
    segs = [f"{cls.__name__}.{name}" for name in names]
    lines = [
        "def encode_message(obj, depth):",
        "    if depth > DEPTH_MAX:",
        "        raise too_deep(None)",
        *[f"    v{i} = obj.{name}" for i, name in enumerate(names)],
        *_field_lines(codes, kinds, env, nested, segs, decoding=False),
        f"    return [tag{values}]",
    ]
    return _generate("encode_message", lines, env, tag)


def _slot_setters(cls: type, fields: Any) -> list[Callable[[Any, Any], None]] | None:
    """The slot setters that build `cls` exactly as its attrs `__init__` would, or None.

    Only for a slotted attrs class whose `__init__` is the generated one and does nothing
    but store its arguments: no validator, no converter, no pre/post-init hook, no slot
    other than the fields (a cached hash, say). Otherwise the decoder calls the class.
    """
    init = getattr(getattr(cls, "__init__", None), "__code__", None)
    if init is None or not init.co_filename.startswith("<attrs generated"):
        return None
    if hasattr(cls, "__attrs_pre_init__") or hasattr(cls, "__attrs_post_init__"):
        return None
    if any(field.validator is not None or field.converter is not None for field in fields):
        return None
    names = {field.name for field in fields}
    slots: set[str] = set()
    for klass in cls.__mro__[:-1]:  # object has no slots of its own
        if "__slots__" not in klass.__dict__:
            return None
        slots.update(klass.__dict__["__slots__"])
    if slots - {"__weakref__"} != names:
        return None
    setters = []
    for field in fields:
        owner = next(k for k in cls.__mro__ if field.name in k.__dict__)
        descriptor = owner.__dict__[field.name]
        if type(descriptor) is not types.MemberDescriptorType:
            return None
        setters.append(descriptor.__set__)
    return setters


def _message_decoder(
    cls: type,
    fields: Any,
    codes: list[_Code],
    kinds: list[type | None],
    nested: list[_NestedSpec | None],
) -> _Code:
    names = tuple(field.name for field in fields)
    segs = [f"{cls.__name__}.{name}" for name in names]
    make: Callable[..., Any] = cls
    if any(field.kw_only for field in fields):
        aliases = [str(field.alias) for field in fields]
        make = lambda *values: cls(**dict(zip(aliases, values, strict=True)))  # noqa: E731

    def shape_error(array: tuple[Any, ...], depth: int) -> _Invalid:
        if len(array) != len(names) + 1:
            return _arity_error(cls.__name__, names, len(array) - 1)
        return _too_deep(None)

    def rejected(exc: Exception) -> _Invalid:
        return _Invalid(f"rejected: {type(exc).__name__}: {exc}", cls.__name__)

    env = {
        "make": make,
        "shape_error": shape_error,
        "rejected": rejected,
        "cls": cls,
        "new": object.__new__,
    }
    values = ", ".join(f"v{i}" for i in range(len(names)))
    setters = _slot_setters(cls, fields)
    if setters is None:
        build = [
            "    try:",
            f"        return make({values})",
            "    except Exception as exc:  # a validator of the class refused the values",
            "        raise rejected(exc) from None",
        ]
    else:  # what the attrs __init__ does, minus its call and its per-field name lookups
        for i, setter in enumerate(setters):
            env[f"set{i}"] = setter
        build = [
            "    obj = new(cls)",
            *[f"    set{i}(obj, v{i})" for i in range(len(names))],
            "    return obj",
        ]
    lines = [
        "def decode_message(array, depth):",
        f"    if len(array) != {len(names) + 1} or depth > DEPTH_MAX:",
        "        raise shape_error(array, depth)",
        f"    _, {values}, = array" if names else "",
        *_field_lines(codes, kinds, env, nested, segs, decoding=True),
        *build,
    ]
    return _generate("decode_message", lines, env, cls.__name__)


def _arity_error(name: str, names: tuple[str, ...], got: int) -> _Invalid:
    count = f"{name} has {len(names)} field(s), got {got}"
    if got < len(names):
        return _Invalid(f"missing field ({count})", f"{name}.{names[got]}")
    last = f"after {names[-1]}" if names else "(it has none)"
    return _Invalid(f"extra field(s) {last} ({count})", name)


def _compile(cls: type) -> None:
    """Compile the codec of a registered class into `_ENCODERS` and `_DECODERS`.

    Raises:
        LocalProtocolError: the class declares a field type the wire cannot carry.
    """
    tag = tag_of(cls)
    try:
        fields = attrs.fields(cls)
        hints = typing.get_type_hints(cls, include_extras=True)
        names = tuple(field.name for field in fields)
        kinds = [_fast_kind(hints.get(name)) for name in names]
        encoders = [_compile_field(cls, hints, name, False) for name in names]
        decoders = [_compile_field(cls, hints, name, True) for name in names]
        nested = [_nested_spec(hints[name]) for name in names]
    except Exception as exc:  # unresolvable or unsupported annotations: a bad definition
        raise LocalProtocolError(f"message {cls.__name__} cannot be compiled: {exc}") from None
    _ENCODERS[cls] = _message_encoder(cls, names, encoders, kinds, nested)
    _DECODERS[tag] = _message_decoder(cls, fields, decoders, kinds, nested)


def _encoder(cls: type) -> _Code | None:
    """The encoder of `cls`, compiled at first use; None if `cls` is not registered."""
    if cls not in _ENCODERS:
        try:
            tag_of(cls)
        except KeyError:
            return None
        _compile(cls)
    return _ENCODERS[cls]


def _decoder(tag: Any) -> _Code:
    """The decoder of `tag`, compiled at first use; `_Invalid` if the tag is unknown."""
    cls = REGISTRY.get(tag) if type(tag) is str else None
    if cls is None:
        raise _Invalid(f"unknown message tag {_short(tag)}")
    if tag not in _DECODERS:
        _compile(cls)
    return _DECODERS[tag]


def compile_registry() -> None:
    """Compile every registered message class now, so a bad definition fails at startup.

    Raises:
        LocalProtocolError: a registered class declares a field type the wire cannot carry.
    """
    for cls in list(REGISTRY.values()):
        _compile(cls)


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
    `receive_data()`, so at most one partial frame is ever buffered. The limit in force
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
