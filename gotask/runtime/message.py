"""Message registry and the runtime's own messages.

Rules of this module:
- A message is an `@attrs.frozen` class registered under a short, unique type tag with
  `@message("tag")`. The wire codec (gotask.transports._wire) turns registered messages
  into msgpack and back; nothing else crosses a node boundary.
- Field types a message may use: `int`, `float`, `str`, `bytes`, `bool`, `None`,
  `X | None`, `tuple[X, ...]`, `dict[str, X]`, `Any` (any msgpack value: nil, bool, int,
  float, str, bytes, arrays and string-keyed maps of those, nesting bounded), another
  registered message class (nested), and `Message` (any registered message).
- This module never imports trio: the codec that uses it is sans-IO.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Generic, TypeVar

import attrs

__all__ = [
    "REGISTRY",
    "Address",
    "Command",
    "Envelope",
    "ErrorReply",
    "Message",
    "Ok",
    "Reply",
    "message",
    "reply_type",
    "tag_of",
]

#: type tag -> message class, for every registered message.
REGISTRY: dict[str, type] = {}
_TAGS: dict[type, str] = {}

MESSAGE_MARK = "gotask.message"
#: Annotation for a field that holds any registered message.
Message = Annotated[Any, MESSAGE_MARK]

T = TypeVar("T", bound=type)
R_co = TypeVar("R_co", covariant=True)


def message(tag: str) -> Any:
    """Class decorator: register an attrs frozen class as a message under `tag`.

    Raises:
        ValueError: the tag is empty, too long or already taken.
        TypeError: the class is not an attrs class.
    """

    def register(cls: T) -> T:
        if not tag or len(tag) > 16:
            raise ValueError(f"message tag must be 1-16 characters: {tag!r}")
        if tag in REGISTRY:
            raise ValueError(f"message tag {tag!r} already used by {REGISTRY[tag].__name__}")
        is_attrs_class = attrs.has(cls)
        if not is_attrs_class:
            raise TypeError(f"{cls.__name__} must be an attrs class to be a message")
        REGISTRY[tag] = cls
        _TAGS[cls] = tag
        return cls

    return register


def tag_of(cls: type) -> str:
    """Return the type tag of a registered message class.

    Raises:
        KeyError: the class is not registered.
    """
    return _TAGS[cls]


@message("addr")
@attrs.frozen
class Address:
    """Where an actor lives: the node's name and the actor's name on it."""

    node: str
    name: str

    def __str__(self) -> str:
        return f"{self.name}@{self.node}"


@message("env")
@attrs.frozen
class Envelope:
    """A message on its way to an actor.

    `corr` is 0 for a plain `send`; a `call` sets it to a correlation id unique on the
    caller's node and expects a `Reply` carrying the same id back to `src.node`.
    """

    dst: Address
    src: Address | None
    corr: int
    msg: Message


@message("rep")
@attrs.frozen
class Reply:
    """The answer to a `call`, routed to the caller's node by correlation id."""

    dst_node: str
    corr: int
    msg: Message


@message("err")
@attrs.frozen
class ErrorReply:
    """A failure answering a `call`: raised at the caller as `RemoteActorError`."""

    type_name: str
    message: str
    traceback: str


@message("ok")
@attrs.frozen
class Ok:
    """An answer that carries nothing but success."""


class Command(Generic[R_co]):
    """Base of a request whose reply has the type `R_co`: `class GetJobs(Command[JobsReply])`.

    `call` returns an `R_co` for it (checked: a reply of another type is a protocol error).
    """

    __slots__ = ()


_REPLY_TYPES: dict[type, type | types.UnionType | None] = {}


def reply_type(cls: type) -> type | types.UnionType | None:
    """The reply type a `Command` subclass declares, or None when it declares none.

    Read once per class from its `Command[...]` base and cached.
    """
    try:
        return _REPLY_TYPES[cls]
    except KeyError:
        pass
    found: type | types.UnionType | None = None
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is Command:
                (arg,) = typing.get_args(base)
                if isinstance(arg, type | types.UnionType):
                    found = arg
                break
        if found is not None:
            break
    _REPLY_TYPES[cls] = found
    return found
