"""Field codecs: one closure per field type, and the compiling of message classes.

Rules of this module:
- A field's encoder (or decoder) is a closure `(value, depth) -> value` built once from
  its type annotation; it checks the value, converts it where the wire asks (int to
  float, tuple to list and back) and raises `_Invalid` naming the field otherwise.
- A field holding a message compiles that message's class at first use, so the field
  codecs and the compiling of a class (`_compile`, `compile_registry`) live together;
  the generated code itself is `_wire_codegen`'s.
- Sans-IO like the rest of the codec (`_wire`): no IO, no clock, never imports trio.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from typing import Annotated, Any, Union

import attrs

from gotask._errors import LocalProtocolError
from gotask.runtime.message import MESSAGE_MARK, REGISTRY, Address, tag_of

from ._wire_codegen import (
    _DECODERS,
    _ENCODERS,
    _fast_kind,
    _interned,
    _message_class,
    _message_decoder,
    _message_encoder,
    _nested_spec,
)
from ._wire_limits import (
    _ANY_SCALARS,
    _EXACT_SCALARS,
    _NONE,
    _STR_ONLY,
    DEPTH_MAX,
    _Code,
    _Invalid,
    _short,
    _tname,
    _too_deep,
)

__all__ = ["_decoder", "_encoder", "compile_registry"]


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


# -- compiling message classes ---------------------------------------------------------


def _compile_field(cls: type, hints: dict[str, Any], name: str, decoding: bool) -> _Code:
    seg = f"{cls.__name__}.{name}"
    if name not in hints:
        raise TypeError(f"{seg} has no type annotation")
    try:
        return _field_codec(hints[name], seg, decoding)
    except TypeError as exc:
        raise TypeError(f"{seg}: {exc}") from None


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
