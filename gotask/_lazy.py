"""Lazy re-exports for package `__init__` modules (PEP 562).

Rules of this module:
- A package lists where each public name lives; the name's module is imported at the
  first access and the value cached in the package, so importing a package (`gotask`,
  `gotask.runtime`, `gotask.transports`) loads none of what it re-exports: the sans-IO
  codec and link protocol stay free of trio, anyio and the actors.
- Type checkers see the same names through imports under `TYPE_CHECKING`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, origins: Mapping[str, tuple[str, ...]]) -> Callable[[str], object]:
    """Return a module `__getattr__` resolving each name from the module that holds it.

    Args:
        package: the package's `__name__`.
        origins: module name (absolute, or relative to `package`) -> names it exports.
    """
    where = {name: module for module, names in origins.items() for name in names}

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
