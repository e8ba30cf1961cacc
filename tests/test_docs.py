"""The documentation runs: every Python block of README.md and docs/, and the API pages.

Each ```python block is one test: its code (with `--8<-- "path"` snippet lines replaced by
the file, as MkDocs' snippets extension does) is executed in a fresh namespace. A line
`print(...)  # -> TEXT` states what the block prints: the block's output must be exactly
those texts, one per line, in order (and nothing when no print says anything).

A block that only makes sense on one Keras backend is preceded by the comment
`<!-- test-backend: NAME -->`; under the other backend it runs in a fresh Python process
with `KERAS_BACKEND=NAME`, so that every block runs on every test run.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import linecache
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import pytest

import hungarian_loss
from hungarian_loss import costs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN_FILES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
BACKEND = keras.backend.backend()

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
BACKEND_MARKER = re.compile(r"^<!--\s*test-backend:\s*(?P<backend>\w+)\s*-->$")
SNIPPET = re.compile(r'^\s*--8<--\s+"(?P<path>[^":]+)(?::(?P<start>\d*)(?::(?P<end>\d*))?)?"\s*$')
EXPECTED = re.compile(r"^print\(.*\)\s+# -> (?P<text>.*)$")
API_ENTRY = re.compile(r"^:::\s+(?P<name>[\w.]+)\s*$", re.MULTILINE)
# Fence languages a page may use; Python blocks are "python", so that none escapes the tests.
LANGUAGES = {"python", "sh", "text"}


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    backend: str | None  # from a `test-backend` marker, else None
    heading: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}" + (
            f"-{slug}" if slug else ""
        )


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
                backend=marker["backend"] if marker else None,
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


ALL_BLOCKS = [block for path in MARKDOWN_FILES for block in read_blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "python"]


@pytest.fixture
def restored_registries() -> Iterator[None]:
    """Undoes the registrations a block makes (Keras custom objects, cost names)."""
    custom_objects = dict(keras.saving.get_custom_objects())
    cost_registry = dict(costs._REGISTRY)
    try:
        yield
    finally:
        keras.saving.get_custom_objects().clear()
        keras.saving.get_custom_objects().update(custom_objects)
        costs._REGISTRY.clear()
        costs._REGISTRY.update(cost_registry)


def run_here(code: str, filename: str) -> str:
    """Executes `code` in a fresh namespace of this process; returns what it printed."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, filename, "exec"), namespace)
    return output.getvalue()


def run_in_process(code: str, backend: str, tmp_path: Path) -> str:
    """Executes `code` in a fresh Python with `KERAS_BACKEND=backend`; returns its output."""
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"the example failed on {backend}:\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.usefixtures("restored_registries")
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.id for block in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    code = expand_snippets(block.code)
    if block.backend is None or block.backend == BACKEND:
        output = run_here(code, filename=f"<{block.id}>")
    else:
        output = run_in_process(code, block.backend, tmp_path)
    assert output.splitlines() == expected_output(code)


def test_there_are_python_blocks_everywhere_we_expect() -> None:
    files = {block.path.relative_to(ROOT).as_posix() for block in PYTHON_BLOCKS}
    assert {"README.md", "docs/index.md", "docs/matching.md", "docs/costs.md"} <= files
    assert len(PYTHON_BLOCKS) >= 15


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.id for block in ALL_BLOCKS])
def test_code_blocks_name_a_known_language(block: Block) -> None:
    assert block.language in LANGUAGES, (
        f"{block.id}: a code block must name its language, one of {sorted(LANGUAGES)} "
        f"(Python as 'python', so that it is tested). Received: {block.language!r}"
    )


def test_backend_markers_name_a_backend() -> None:
    for block in PYTHON_BLOCKS:
        assert block.backend in (None, "tensorflow", "jax"), block.id


# ----- the API reference ---------------------------------------------------------------------


def api_entries() -> set[str]:
    """The objects the API pages render (`::: name` lines)."""
    entries: set[str] = set()
    for page in (DOCS / "api").glob("*.md"):
        entries.update(API_ENTRY.findall(page.read_text(encoding="utf-8")))
    return entries


def is_documented(module_name: str, name: str, entries: set[str]) -> bool:
    """Whether `module.name` has an entry: its own, or its module's (which renders `__all__`)."""
    if f"{module_name}.{name}" in entries:
        return True
    obj = getattr(importlib.import_module(module_name), name)
    if inspect.ismodule(obj):
        return obj.__name__ in entries
    home = getattr(obj, "__module__", module_name)
    if f"{home}.{name}" in entries:
        return True
    for owner in (module_name, home):
        if owner in entries and name in getattr(importlib.import_module(owner), "__all__", ()):
            return True
    return False


PUBLIC_NAMES = [
    (module.__name__, name)
    for module in (hungarian_loss, hungarian_loss.costs, hungarian_loss.boxes)
    for name in module.__all__
]


@pytest.mark.parametrize(
    ("module_name", "name"), PUBLIC_NAMES, ids=[f"{m}.{n}" for m, n in PUBLIC_NAMES]
)
def test_public_name_has_an_api_entry(module_name: str, name: str) -> None:
    assert is_documented(module_name, name, api_entries()), (
        f"{module_name}.{name} is public but no page of docs/api renders it"
    )


def test_api_entries_name_real_objects() -> None:
    for entry in api_entries():
        module_name, _, attribute = entry.rpartition(".")
        try:
            importlib.import_module(entry)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module_name), attribute), entry


# ----- the README ----------------------------------------------------------------------------


def test_readme_gives_the_two_commands_exactly() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci_command = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci_command == (
        "python3.11 -m pip install -U nox uv && python3.11 -m nox -s lint typecheck tests docs"
    )
    shell_blocks = [block.code.strip() for block in ALL_BLOCKS if block.path.name == "README.md"]
    assert ci_command in shell_blocks
    assert f"\n{ci_command}\n" in readme  # the line, byte for byte
    assert "python -m pip install -U nox uv && python -m nox -s demo" in shell_blocks


def test_pictures_exist() -> None:
    for path in MARKDOWN_FILES:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            assert (path.parent / target).is_file(), f"{path.relative_to(ROOT)}: {target}"
