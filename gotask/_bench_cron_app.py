"""The app `gotask bench cron --storage URL` starts its nodes with: a no-op task and
`GOTASK_BENCH_CRON_ENTRIES` entries of it (0, the default: the idle node), minutely, or
every `GOTASK_BENCH_CRON_EVERY_S` seconds when that is set (the small test's case)."""

from __future__ import annotations

import os

from gotask._app import App

__all__ = ["ENTRIES_ENV", "EVERY_ENV", "app"]

ENTRIES_ENV = "GOTASK_BENCH_CRON_ENTRIES"
EVERY_ENV = "GOTASK_BENCH_CRON_EVERY_S"

app = App("bench-cron")


@app.task(name="noop")
def noop() -> None:
    """Never run: the bench's nodes are paused."""


_every = int(os.environ.get(EVERY_ENV) or "0")
for _i in range(int(os.environ.get(ENTRIES_ENV, "0"))):
    if _every:
        app.add_cron(f"e{_i:06d}", "noop", every_s=_every)
    else:
        app.add_cron(f"e{_i:06d}", "noop", "* * * * *")
