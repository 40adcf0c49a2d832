"""The client library: enqueue jobs, wait for results, watch progress, manage the DLQ.

`AsyncClient` runs under trio and asyncio alike (anyio); `Client` is its blocking twin
for Django, Flask and scripts. Both talk to the Broker of one node at a time and fail
over down their list of nodes. Guide: docs/client.md.

Rules of this module: it only re-exports; the implementation lives in `_client_*`.
"""

from __future__ import annotations

from gotask._client_async import AsyncClient as AsyncClient
from gotask._client_jobs import JobTuple as JobTuple
from gotask._client_jobs import decode_result as decode_result
from gotask._client_sync import Client as Client

__all__ = ["AsyncClient", "Client", "JobTuple", "decode_result"]
