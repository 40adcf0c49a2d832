"""The nodes a client fails over on: its options, the order and pauses of dialing, and
what a failed dial means. No IO: `AsyncClient` and the blocking `Client` both drive it.

Rules of this module:
- The next node first, whole passes over the list separated by jittered, doubling
  pauses; a client that lost its node waits a short random pause before dialing, so
  many clients do not all land on the next node at once.
- A node that answers in another protocol is not dialed again in the same attempt; a
  wrong secret fails the attempt at once.
"""

from __future__ import annotations

import logging
import random
import secrets
import ssl
from collections.abc import Iterator, Sequence

import anyio

from gotask._client_conn import DEFAULT_NODE, LinkSettings, parse_address
from gotask._errors import (
    AuthenticationError,
    ConfigError,
    NodeUnavailable,
    NotAGoTaskNode,
    RemoteProtocolError,
)

__all__ = ["NodeList"]

log = logging.getLogger("gotask.client")


class NodeList:
    """A client's node addresses, options and failover position.

    Args: as `AsyncClient`.

    Raises:
        ConfigError: a node address is not "host:port", or there is none.
    """

    def __init__(
        self,
        nodes: Sequence[str] | str | None = None,
        *,
        secret: bytes | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        call_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        connect_rounds: int = 3,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        heartbeat_s: float = 5.0,
    ) -> None:
        names = [nodes] if isinstance(nodes, str) else list(nodes or [DEFAULT_NODE])
        if not names:
            raise ConfigError("a client needs at least one node address")
        self.addresses = [(text, parse_address(text)) for text in names]
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.ssl_context = ssl_context
        self.call_timeout_s = call_timeout_s
        self.settings = LinkSettings(connect_timeout_s=connect_timeout_s,
                                     heartbeat_s=heartbeat_s, idle_timeout_s=4 * heartbeat_s)
        self._rounds = max(1, connect_rounds)
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._rng = random.Random(secrets.randbits(64))
        self._next = 0
        self._lost = False

    def plan(self, foreign: set[int]) -> Iterator[tuple[float, int]]:
        """The dials of one attempt, in order: (seconds to pause first, address index).
        Indexes added to `foreign` meanwhile are skipped."""
        pause_s = self._rng.uniform(0.0, self._backoff[0]) if self._lost else 0.0
        count = len(self.addresses)
        for round_ in range(self._rounds):
            if len(foreign) == count:
                return
            if round_:
                pause_s = self._backoff_s(round_ - 1)
            for step in range(count):
                index = (self._next + step) % count
                if index not in foreign:
                    yield pause_s, index
                    pause_s = 0.0

    def _backoff_s(self, attempt: int) -> float:
        base_s, cap_s = self._backoff
        delay_s = min(cap_s, base_s * 2.0 ** min(attempt, 32))
        return self._rng.uniform(delay_s / 2, delay_s)

    def connected(self, index: int) -> None:
        """The dial of address `index` succeeded: it is the node in use."""
        self._next, self._lost = index, False

    def lost(self) -> None:
        """The connection to the node in use dropped: the next node goes first."""
        self._lost = True
        self._next = (self._next + 1) % len(self.addresses)

    def failed(self, index: int, exc: Exception, failures: dict[str, str],
               foreign: set[int]) -> None:
        """Record why dialing address `index` failed.

        Raises:
            AuthenticationError: the secrets differ (no other node will do better).
            Exception: `exc` itself when it is not a failure to reach a node.
        """
        text = self.addresses[index][0]
        if isinstance(exc, AuthenticationError):  # a PermissionError: not a node being down
            raise AuthenticationError(f"{text}: {exc} (is the shared secret right?)") from None
        if isinstance(exc, NotAGoTaskNode):
            failures[text] = str(exc)
            foreign.add(index)
        elif isinstance(exc, TimeoutError):
            failures[text] = f"no answer within {self.settings.connect_timeout_s:g}s"
        elif isinstance(exc, (OSError, RemoteProtocolError, anyio.BrokenResourceError)):
            failures[text] = str(exc) or type(exc).__name__
            log.info("cannot reach GoTask node %s: %s", text, failures[text])
        else:
            raise exc

    @staticmethod
    def unavailable(failures: dict[str, str]) -> NodeUnavailable:
        """The error once every dial of an attempt failed."""
        reasons = "; ".join(f"{addr}: {why}" for addr, why in failures.items())
        return NodeUnavailable(f"cannot reach any GoTask node ({reasons})")
