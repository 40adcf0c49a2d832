"""Generated message codecs: two functions per message class, built from source.

Rules of this module:
- It writes and compiles the source of each class's `encode_message` and
  `decode_message` (see the comment below) from the per-field closures `_wire_fields`
  hands it; it holds the compiled functions (`_ENCODERS`, `_DECODERS`) and the `Address`
  interning cache (`_ADDRESSES`), and nothing else that changes.
- Sans-IO like the rest of the codec (`_wire`): no IO, no clock, never imports trio.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Union

from gotask.runtime.message import MESSAGE_MARK, REGISTRY, Address, tag_of

from ._wire_limits import (
    _EXACT_SCALARS,
    _NONE,
    ADDRESS_CACHE_MAX,
    ADDRESS_INTERN_CHARS_MAX,
    DEPTH_MAX,
    _Code,
    _Invalid,
    _too_deep,
)

__all__ = [
    "_ADDRESSES",
    "_DECODERS",
    "_ENCODERS",
    "_fast_kind",
    "_interned",
    "_message_class",
    "_message_decoder",
    "_message_encoder",
    "_nested_spec",
    "_slot_setters",
]


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


#: Decoded address array -> the one `Address` it decoded to (see the rules in `_wire`).
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
        cls, optional = spec
        if cls is Address:
            body = _address_lines(i, env, decoding)
        else:
            body = _nested_lines(i, cls, env, decoding)
        if optional:
            lines.append(f"    if {v} is not None:")
            lines += ["        " + line for line in body]
        else:
            lines += ["    " + line for line in body]
    return lines


def _address_lines(i: int, env: dict[str, Any], decoding: bool) -> list[str]:
    v = f"v{i}"
    if decoding:
        # Interned: look the array up here; the closure decodes a miss and caches it.
        env["addr_get"] = _ADDRESSES.get
        return [
            "try:",
            f"    hit = addr_get({v}) if depth < DEPTH_MAX else None",
            "except TypeError:  # unhashable: a map inside, which the closure refuses",
            "    hit = None",
            f"{v} = c{i}({v}, depth) if hit is None else hit",
        ]
    # Built here: two str checks and a list, instead of a call to its encoder.
    env["addr_tag"] = tag_of(Address)
    env[f"n{i}"] = Address
    return [
        f"if type({v}) is n{i} and depth < DEPTH_MAX:",
        f"    node, name = {v}.node, {v}.name",
        "else:",
        "    node = name = None",
        "if type(node) is str and type(name) is str:",
        f"    {v} = [addr_tag, node, name]",
        "else:",
        f"    {v} = c{i}({v}, depth)",
    ]


def _nested_lines(i: int, cls: type | None, env: dict[str, Any], decoding: bool) -> list[str]:
    v = f"v{i}"
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
    return [
        *body,
        f"    {v} = c{i}({v}, depth)",
        "else:",
        "    try:",
        f"        {v} = code({v}, depth + 1)",
        "    except Invalid as err:",
        f"        err.add(s{i})",
        "        raise",
    ]


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
