"""Run a trio program deterministically: a pure function of its seed.

Rules of this module:
- trio shuffles every scheduling batch with a module-level `random.Random`; with the
  private flag `_ALLOW_DETERMINISTIC_SCHEDULING` it first sorts the batch by task
  creation order. Seeding that generator, setting the flag and using
  `MockClock(autojump_threshold=0)` makes the schedule, and virtual time, depend only on
  the seed. Both knobs are private: trio is pinned in pyproject.toml and
  tests/test_determinism_canary.py checks they still exist and still work.
- The flag and the generator's state are restored afterwards, so ordinary trio runs in
  the same process are unaffected.
- Determinism holds only without real I/O and threads: use the sim network and the
  memory storage actor, and take randomness from a World seeded with the same seed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
import trio._core._run as trio_run
import trio.testing

__all__ = ["run_deterministic"]

T = TypeVar("T")


def run_deterministic(main: Callable[..., Awaitable[T]], seed: int, *args: object) -> T:
    """Run `trio.run(main, *args)` with a seeded scheduler and trio's autojumping MockClock.

    Virtual time starts at 0 and jumps ahead whenever every task is blocked, so sleeps
    and timeouts cost no real time.

    Args:
        main: the async function to run.
        seed: seeds trio's scheduler; pass the same seed to the program's World.
        args: positional arguments for `main`.

    Returns:
        What `main` returned.
    """
    flag = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    state = trio_run._r.getstate()
    trio_run._r.seed(seed)
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    try:
        return trio.run(main, *args, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = flag  # type: ignore[misc]
        trio_run._r.setstate(state)
