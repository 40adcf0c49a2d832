"""Claiming a node name: two live nodes of one cluster never share a name.

Rules of this module:
- A node registers with a random `instance` id in its info. Before it starts its
  actors, it reads the registry: a live entry under its name with another instance is
  either a live node (its registration is renewed: the name is refused, `NodeNameTaken`)
  or the registration of a node that died (it lapses: the name is free again). The node
  watches the entry until one of the two happens, at most the registration's lifetime.
- A node that stops cleanly registers as `stopping` (`release_name`, and every renewal
  after it), so its name may be taken again at once; the name of one that died is
  free once its registration lapses.
- Two nodes starting with one name at the same instant may both pass (the registry has
  no compare-and-set); the check stops the common case, an operator reusing a live name.
"""

from __future__ import annotations

import trio

from gotask._errors import ConfigError, GoTaskError
from gotask.actors.storage.base import ListNodes, ListNodesReply, NodeInfo, RegisterNode
from gotask.runtime import Address, Node

__all__ = ["NodeNameTaken", "check_name_free", "release_name"]

#: How often the registry is read while an entry under our name is watched.
POLL_S = 0.5


class NodeNameTaken(ConfigError):
    """A live node of the cluster already uses this node's name."""


async def check_name_free(node: Node, storage: Address, instance: str,
                          timeout_s: float = 30.0) -> None:
    """Return once no other live node holds `node.name`.

    Raises:
        NodeNameTaken: another live node renewed its registration under this name.
    """
    first = await _entry(node, storage)
    if _free(first, instance):
        return
    with trio.move_on_after(timeout_s):
        while True:
            await trio.sleep(POLL_S)
            entry = await _entry(node, storage)
            if _free(entry, instance):
                return
            assert entry is not None and first is not None
            if entry.last_seen > first.last_seen or entry.info != first.info:
                raise NodeNameTaken(_taken(node.name, entry))


def _free(entry: NodeInfo | None, instance: str) -> bool:
    return (entry is None or entry.info.get("instance") == instance
            or bool(entry.info.get("stopping")))


async def _entry(node: Node, storage: Address) -> NodeInfo | None:
    reply: ListNodesReply = await node.call(storage, ListNodes())
    return next((n for n in reply.nodes if n.node == node.name), None)


def _taken(name: str, entry: NodeInfo) -> str:
    where = ", ".join(f"{k} {entry.info[k]}" for k in ("pid", "listen") if entry.info.get(k))
    return (f"node name {name!r} is in use by a live node ({where or 'unknown'}); "
            "choose another --name")


async def release_name(node: Node, storage: Address, instance: str) -> None:
    """Let this node's registration lapse now (best effort, within a second)."""
    with trio.move_on_after(1.0):
        try:
            await node.call(storage, RegisterNode(node.name, {"instance": instance,
                                                            "stopping": True}, 1e-3),
                            timeout_s=1.0)
        except GoTaskError:
            pass  # storage is gone already: the registration lapses on its own
