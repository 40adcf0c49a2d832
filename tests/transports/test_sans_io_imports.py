"""The sans-IO layer loads no event loop and no actor: checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = ("trio", "anyio", "gotask.actors")


def loaded_after(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after running `statement`."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    return list(json.loads(out.stdout))


def forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


@pytest.mark.parametrize(
    "statement",
    [
        "import gotask.transports._wire",
        "import gotask.transports._handshake",
        "import gotask.transports._link_protocol",
        "from gotask.transports._link_protocol import LinkProtocol, HandshakeProtocol",
        "import gotask.transports",
    ],
)
def test_codec_and_link_protocol_load_no_trio_anyio_or_actors(statement: str) -> None:
    modules = loaded_after(statement)
    assert "gotask.transports" in modules
    assert forbidden(modules) == []


def test_the_check_itself_sees_trio_when_the_trio_link_is_imported() -> None:
    assert "trio" in forbidden(loaded_after("import gotask.transports._link"))


def test_lazy_exports_still_resolve() -> None:
    modules = loaded_after(
        "import gotask.transports as t\n"
        "assert t.LinkOptions is __import__('gotask.transports._link_protocol', "
        "fromlist=['x']).LinkOptions\n"
        "assert t.StreamLink.__name__ == 'StreamLink'"
    )
    assert "trio" in modules  # StreamLink, once asked for, brings its event loop
