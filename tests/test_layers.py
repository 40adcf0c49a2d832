"""Imports point one way: a module may import its own layer or the layers below it.

Layers, bottom first (docs/architecture.md says why):
0. `gotask._errors`: the error tree.
1. the codec and values: `gotask.runtime.message`, `gotask.transports._wire*`,
   `_handshake`, `_link_protocol`; the job model and the client protocol
   (`gotask._job`, `_retry`, `_app`, `_cron`, `_messages`, `_protocol`,
   `_protocol_cron`).
2. the runtime: `gotask.runtime` (trio).
3. transports (the trio link and its shells) and actors.
4. the faces and the assembly: clients, CLI, node assembly, web, bench.

Beside the layers: clients, the CLI and web speak the client protocol, never storage's
contract; `import gotask` and the codec load neither trio nor any actor.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"gotask": ROOT / "gotask", "gotask.actors": ROOT / "actors",
            "gotask.transports": ROOT / "transports", "gotask.web": ROOT / "web"}

#: (module name prefix, layer). The longest matching prefix wins.
LAYERS: list[tuple[str, int]] = [
    ("gotask._errors", 0),
    ("gotask._lazy", 0),
    ("gotask.runtime.message", 1),
    ("gotask.transports._wire", 1),
    ("gotask.transports._handshake", 1),
    ("gotask.transports._link_protocol", 1),
    ("gotask.transports._link_handshake", 1),
    ("gotask._job", 1),
    ("gotask._retry", 1),
    ("gotask._app", 1),
    ("gotask._cron", 1),
    ("gotask._messages", 1),
    ("gotask._protocol", 1),
    ("gotask._protocol_cron", 1),
    ("gotask._job_metrics", 1),
    ("gotask.runtime", 2),
    ("gotask.transports", 3),
    ("gotask.actors", 3),
    ("gotask", 4),
]
#: Faces that must not reach into storage's contract.
FACES = ("gotask._client", "gotask.client", "gotask._cli", "gotask.cli", "gotask.web")


def _module_name(path: Path) -> str:
    for package, folder in sorted(PACKAGES.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(folder) and (package != "gotask" or path.is_relative_to(
                ROOT / "gotask")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise AssertionError(path)


def _layer(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")
                or (module.startswith(p) and p.endswith("_wire"))), key=len)
    return dict(LAYERS)[best]


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if node.module is None:  # `from . import x`: each name is a module
                found.extend((node.lineno, f"{target}.{a.name}") for a in node.names)
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, t) for line, t in found if t == "gotask" or t.startswith("gotask.")]


def _modules() -> list[tuple[Path, str]]:
    return [(p, _module_name(p)) for folder in PACKAGES.values() for p in folder.rglob("*.py")]


def test_imports_point_down() -> None:
    upward = []
    for path, module in _modules():
        for line, target in _imports(path, module):
            if target == "gotask":
                continue
            if _layer(target) > _layer(module):
                upward.append(f"{path.relative_to(ROOT)}:{line} {module} -> {target}")
    assert upward == []


def test_faces_do_not_import_storage_contract() -> None:
    bad = [f"{path.relative_to(ROOT)}:{line} {target}"
           for path, module in _modules() if module.startswith(FACES)
           for line, target in _imports(path, module) if target.startswith("gotask.actors")]
    assert bad == []


# The codec and link protocol are checked in tests/transports/test_sans_io_imports.py.
@pytest.mark.parametrize("module", ["gotask", "gotask._protocol"])
def test_light_imports_load_neither_trio_nor_actors(module: str) -> None:
    code = ("import sys, importlib; importlib.import_module(sys.argv[1]); "
            "print(' '.join(m for m in sys.modules if m == 'trio' or m.startswith("
            "('trio.', 'gotask.actors', 'gotask.runtime.node'))))")
    out = subprocess.run([sys.executable, "-c", code, module], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == []
