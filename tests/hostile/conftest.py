"""Fixtures of the hostile tests, shared with the transport tests."""

from ..transports.conftest import raw_peer

__all__ = ["raw_peer"]
