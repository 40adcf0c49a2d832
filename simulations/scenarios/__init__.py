"""The fault scenarios. Each module registers its scenarios with `@scenario`.

Rules of this package:
- A scenario is an async function of the `Sim` that injects faults while the clients
  enqueue, then returns; the harness heals everything after it returns and checks.
- Decisions (when, whom) are drawn from `sim.rng`; waits use trio's clock (`trio.sleep`).
- `@scenario(name, **spec)` sets the cluster's shape: `SimSpec` fields, and `workload=`
  a dict of `WorkloadSpec` fields. The docstring's first paragraph is the scenario's summary.
- `load()` imports every module of this package once, in name order.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from typing import Any

from simulations.cluster import Sim, SimSpec
from simulations.harness import Scenario
from simulations.workload import WorkloadSpec

__all__ = ["SCENARIOS", "Faults", "load", "scenario"]

Faults = Callable[[Sim], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, **spec: Any) -> Callable[[Faults], Faults]:
    """Register `faults` as scenario `name` with the given `SimSpec` fields.

    Raises:
        ValueError: the name is taken.
    """

    def register(faults: Faults) -> Faults:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        fields = dict(spec)
        workload = WorkloadSpec(**fields.pop("workload", {}))
        doc = " ".join((faults.__doc__ or name).strip().split("\n\n")[0].split())
        SCENARIOS[name] = Scenario(name, doc, SimSpec(**fields, workload=workload), faults)
        return faults

    return register


def load() -> dict[str, Scenario]:
    """Every registered scenario, by name."""
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(SCENARIOS.items()))
