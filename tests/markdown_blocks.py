"""The fenced code blocks of Markdown files, and what their Python blocks say they print.

Plain Python (no Keras, no package import), so that `follow_readme.py` can use it from an
environment where nothing is installed.

A line `print(...)  # -> TEXT` states what a block prints: its output must be exactly those
texts, one per line, in order (and nothing when no print says anything). A block that only
makes sense on one Keras backend is preceded by the comment `<!-- test-backend: NAME -->`;
a block that runs the same on every backend but is too slow to run on all three (a toy
training) is preceded by `<!-- tested-on: NAME -->`: the test suite runs it on that backend
only, and a user runs it on any.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
BACKEND_MARKER = re.compile(r"^<!--\s*(?P<kind>test-backend|tested-on):\s*(?P<backend>\w+)\s*-->$")
SNIPPET = re.compile(r'^\s*--8<--\s+"(?P<path>[^":]+)(?::(?P<start>\d*)(?::(?P<end>\d*))?)?"\s*$')
EXPECTED = re.compile(r"^print\(.*\)\s+# -> (?P<text>.*)$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    backend: str | None  # from a `test-backend` marker, else None
    tested_on: str | None  # from a `tested-on` marker, else None
    heading: str  # the closest heading above the block

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        try:
            name = self.path.relative_to(ROOT).as_posix()
        except ValueError:
            name = self.path.name
        return f"{name}:{self.line}" + (f"-{slug}" if slug else "")


def read_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    heading = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        match = FENCE.match(line)
        if match is None:
            index += 1
            continue
        indent, info = match["indent"], match["info"].strip()
        language = info.split()[0] if info else ""
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index][len(indent) :])
            index += 1
        if index == len(lines):
            raise AssertionError(f"{path}:{start + 1}: the code block is never closed")
        previous = next(
            (lines[i].strip() for i in range(start - 1, -1, -1) if lines[i].strip()), ""
        )
        marker = BACKEND_MARKER.match(previous)
        blocks.append(
            Block(
                path=path,
                line=start + 1,
                language=language,
                code="\n".join(body) + "\n",
                backend=marker["backend"] if marker and marker["kind"] == "test-backend" else None,
                tested_on=marker["backend"] if marker and marker["kind"] == "tested-on" else None,
                heading=heading,
            )
        )
        index += 1
    return blocks


def expand_snippets(code: str) -> str:
    """Replaces `--8<-- "path[:start[:end]]"` lines with the lines of the file (from ROOT)."""
    lines: list[str] = []
    for line in code.splitlines():
        match = SNIPPET.match(line)
        if match is None:
            lines.append(line)
            continue
        path = ROOT / match["path"]
        assert path.is_file(), f"the snippet {match['path']!r} does not exist"
        included = path.read_text(encoding="utf-8").splitlines()
        start = int(match["start"]) if match["start"] else 1
        end = int(match["end"]) if match["end"] else len(included)
        lines.extend(included[start - 1 : end])
    return "\n".join(lines) + "\n"


def expected_output(code: str) -> list[str]:
    """The texts of `print(...)  # -> TEXT` lines, in order."""
    return [match["text"].rstrip() for line in code.splitlines() if (match := EXPECTED.match(line))]
