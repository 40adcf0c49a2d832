"""Every command and code sample in README.md and docs/*.md runs as written.

Each document is one session in a temporary directory, top to bottom, the way a reader
follows it:

- a ```python block whose first line is a comment naming a file (``# tasks.py``) is
  written to that file; any other ```python block runs as a script (exit 0);
- a ```bash block runs line by line (``\\`` continues a line, ``#`` starts a comment):
  ``gotask node ...`` starts a node in the background (the test waits until it answers
  and stops it at the end of the document); any other command must exit 0;
- a ```console block holds ``$ command`` lines, each followed by its expected output;
  a job id in the expected output matches any job id;
- a fenced block without a language (diagrams, grammars, sample output) is not code.

Addresses: the documents use 127.0.0.1:7450 (and 127.0.0.1:7460 for gRPC); the test puts
each session on free ports instead (machines share CI), passes `--listen` to nodes that do
not name one, and sets `GOTASK_NODES` for clients. `.venv/bin/gotask` is this
interpreter's `gotask`.

Markers, on the line before a fence, as HTML comments (invisible when rendered):
- ``<!-- no-test: reason -->``: the block cannot run here (other machines, a server that
  is not ours, a long benchmark); the reason is required, and such blocks are few;
- ``<!-- test-setup: gotask node --app examples.tasks -->``: a command run before the
  next block, for a document whose samples need a node it does not start itself.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.processes import ROOT, connect, free_port, stop

pytestmark = pytest.mark.slow

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(no-test|test-setup):\s*(.+?)\s*-->\s*$")
_ULID = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b")
NO_TEST_MAX = 18  # "few": raise it only with a reason each (18: PromQL alert rules)


@attrs.frozen
class Block:
    """One fenced block of a document."""

    path: Path
    line: int
    lang: str
    text: str
    no_test: str | None
    setup: str | None

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    """The fenced blocks of a markdown file, with the markers just above them."""
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        marker = _MARKER.match(lines[index - 1]) if index else None
        kind, value = marker.groups() if marker else (None, None)
        yield Block(path, index + 1, match.group(1), "\n".join(lines[index + 1 : end]) + "\n",
                    value if kind == "no-test" else None,
                    value if kind == "test-setup" else None)
        index = end + 1


class Session:
    """A reader following one document: a directory, a port, the nodes started."""

    def __init__(self, tmp: Path) -> None:
        self.dir, self.port, self.grpc_port = tmp, free_port(), free_port()
        self.nodes: list[subprocess.Popen[bytes]] = []
        bindir = str(Path(sys.executable).parent)
        # Nodes log at WARNING: their stderr is a pipe read only when one fails to start,
        # and a node logging a line per job would fill it and block.
        self.env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
                    "PYTHONPATH": f"{tmp}:{ROOT}", "GOTASK_NODES": self.address,
                    "GOTASK_LOG_LEVEL": "WARNING"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def localize(self, text: str) -> str:
        text = text.replace("127.0.0.1:7460", f"127.0.0.1:{self.grpc_port}")
        return text.replace("127.0.0.1:7450", self.address).replace(".venv/bin/gotask",
                                                                     "gotask")

    def run_block(self, block: Block) -> None:
        if block.setup:
            self.command(block.setup, block)
        if block.lang == "python":
            self.python(block)
        elif block.lang == "bash":
            for command in commands(block.text):
                self.command(command, block)
        elif block.lang == "console":
            self.console(block)
        elif block.lang == "toml":
            self.toml(block)

    def toml(self, block: Block) -> None:
        """A `# name.toml` block is a node settings file: written, then read as the node
        reads it (unknown keys and wrong types fail)."""
        first = block.text.splitlines()[0]
        assert re.fullmatch(r"# [\w/.-]+\.toml", first), f"{block.where()}: name the file"
        target = self.dir / first[2:]
        target.write_text(block.text)
        from gotask._node_settings import read_file

        read_file(str(target))

    def python(self, block: Block) -> None:
        text = self.localize(block.text)
        first = text.splitlines()[0]
        if re.fullmatch(r"# [\w/]+\.py", first):
            target = self.dir / first[2:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            return
        run = subprocess.run([sys.executable, "-c", text], cwd=self.dir, env=self.env,
                             capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, f"{block.where()}: python failed:\n{run.stderr}"

    def command(self, command: str, block: Block) -> subprocess.CompletedProcess[str] | None:
        argv = shlex.split(self.localize(command))
        if argv[:2] == ["gotask", "node"]:
            self.start_node(argv, block)
            return None
        run = subprocess.run(self.localize(command), shell=True, cwd=self.dir, env=self.env,
                             capture_output=True, text=True, timeout=90,
                             stdin=subprocess.DEVNULL)
        assert run.returncode == 0, f"{block.where()}: `{command}` exit {run.returncode}:\n" \
                                    f"{run.stdout}{run.stderr}"
        return run

    def start_node(self, argv: list[str], block: Block) -> None:
        if "--listen" not in argv:
            argv += ["--listen", self.address]
        proc = subprocess.Popen([sys.executable, "-m", "gotask.cli", *argv[1:]], cwd=self.dir,
                                env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        self.nodes.append(proc)
        try:
            connect(self.port, proc).close()
        except AssertionError as exc:
            raise AssertionError(f"{block.where()}: the node did not start: {exc}") from None

    def console(self, block: Block) -> None:
        for command, expected in transcript(block.text):
            run = subprocess.run(self.localize(command), shell=True, cwd=self.dir,
                                 env=self.env, capture_output=True, text=True, timeout=90,
                                 stdin=subprocess.DEVNULL)
            got = _ULID.sub("<ID>", (run.stdout + run.stderr).strip())
            want = _ULID.sub("<ID>", expected.strip())
            assert got == want, f"{block.where()}: `{command}`"

    def close(self) -> None:
        stop(*self.nodes)


def commands(text: str) -> Iterator[str]:
    """The commands of a bash block: continuations joined, comments dropped."""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        command = re.sub(r"(^|\s)#.*$", "", line).strip()  # the docs quote no "#"
        if command:
            yield " ".join(command.split())


def transcript(text: str) -> Iterator[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    pairs: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append([line[2:], ""])
        elif pairs:
            pairs[-1][1] += line + "\n"
    yield from ((command, output) for command, output in pairs)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_samples_of_a_document_run(path: Path, tmp_path: Path) -> None:
    session = Session(tmp_path)
    try:
        for block in blocks(path):
            if block.no_test is None:
                session.run_block(block)
    finally:
        session.close()


def test_blocks_that_do_not_run_say_why_and_are_few() -> None:
    skipped = [b for path in DOCS for b in blocks(path) if b.no_test is not None]
    assert all(len(b.no_test or "") >= 10 for b in skipped), [b.where() for b in skipped]
    assert len(skipped) <= NO_TEST_MAX, [b.where() for b in skipped]
    code = [b for path in DOCS for b in blocks(path) if b.lang and b.no_test is None]
    assert {b.lang for b in code} <= {"python", "bash", "console", "toml"}, "a language not run"


def test_the_extractor_reads_markers_and_commands(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- no-test: needs other machines -->\n```bash\nx\n```\n"
                   "```\ndiagram\n```\n```bash\necho a \\\n  b  # note\n# only\n```\n")
    found = list(blocks(doc))
    assert [(b.lang, b.no_test) for b in found] == [
        ("bash", "needs other machines"), ("", None), ("bash", None)]
    assert list(commands(found[2].text)) == ["echo a b"]
    assert list(transcript("$ a\n1\n2\n$ b\n")) == [("a", "1\n2\n"), ("b", "")]
