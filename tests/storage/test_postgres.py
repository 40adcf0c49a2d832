"""The PostgreSQL backend: the storage contract, the stateful test, its own behaviour.

Runs against the PostgreSQL at `GOTASK_TEST_POSTGRES_DSN` (see `_postgres_support`);
every harness uses a schema of its own and drops it when closed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._postgres_support import PostgresHarness, unreachable
from .contract import StorageContract, make_state_machine

if (_reason := unreachable()) is not None:
    pytest.skip(_reason, allow_module_level=True)


class TestPostgresStorage(StorageContract):
    @pytest.fixture
    def storage(self) -> Iterator[PostgresHarness]:
        harness = PostgresHarness()
        yield harness
        harness.close()


TestPostgresStateMachine = make_state_machine(PostgresHarness)
