"""The actor runtime: addresses, inboxes, send/call, supervision, nodes and the World.

It knows nothing of jobs; `gotask.actors` builds the queue on top of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gotask._lazy import lazy_exports
from gotask.runtime.message import Address as Address
from gotask.runtime.message import Envelope as Envelope
from gotask.runtime.message import ErrorReply as ErrorReply
from gotask.runtime.message import Message as Message
from gotask.runtime.message import Ok as Ok
from gotask.runtime.message import Reply as Reply
from gotask.runtime.message import message as message

if TYPE_CHECKING:
    from gotask.runtime.actor import BATCH_MAX as BATCH_MAX
    from gotask.runtime.actor import ActorContext as ActorContext
    from gotask.runtime.actor import Outgoing as Outgoing
    from gotask.runtime.actor import Respond as Respond
    from gotask.runtime.actor import Send as Send
    from gotask.runtime.node import Link as Link
    from gotask.runtime.node import Node as Node
    from gotask.runtime.node import error_reply as error_reply
    from gotask.runtime.node import open_node as open_node
    from gotask.runtime.supervisor import ChildSpec as ChildSpec
    from gotask.runtime.world import World as World
    from gotask.runtime.world import real_world as real_world
    from gotask.runtime.world import sim_world as sim_world

__all__ = [
    "BATCH_MAX",
    "ActorContext",
    "Address",
    "ChildSpec",
    "Envelope",
    "ErrorReply",
    "Link",
    "Message",
    "Node",
    "Ok",
    "Outgoing",
    "Reply",
    "Respond",
    "Send",
    "World",
    "error_reply",
    "message",
    "open_node",
    "real_world",
    "sim_world",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "gotask.runtime.actor": ("BATCH_MAX", "ActorContext", "Outgoing", "Respond", "Send"),
        "gotask.runtime.node": ("Link", "Node", "error_reply", "open_node"),
        "gotask.runtime.supervisor": ("ChildSpec",),
        "gotask.runtime.world": ("World", "real_world", "sim_world"),
    },
)
