"""The documentation runs: every Python block of README.md and docs/, and the API pages.

Each ```python block is one test: its code (with `--8<-- "path"` snippet lines replaced by
the file, as MkDocs' snippets extension does) is executed in a fresh namespace. A line
`print(...)  # -> TEXT` states what the block prints: the block's output must be exactly
those texts, one per line, in order (and nothing when no print says anything).

A block that only makes sense on one Keras backend is preceded by the comment
`<!-- test-backend: NAME -->`, and a toy training that runs the same on every backend by
`<!-- tested-on: NAME -->` (the package's code in it is tested on every backend by the
other test modules; the block shows what a user sees, and one backend shows it). Such a
block runs in the test run of that backend only; `nox -s tests` runs all three backends,
so every block runs once per full test run.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import linecache
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import pytest
from follow_readme import install_commands
from markdown_blocks import Block, expand_snippets, expected_output, read_blocks

import hungarian_loss
import hungarian_loss.keras_hub
from hungarian_loss import costs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKDOWN_FILES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]
BACKEND = keras.backend.backend()

API_ENTRY = re.compile(r"^:::\s+(?P<name>[\w.]+)\s*$", re.MULTILINE)
# Fence languages a page may use; Python blocks are "python", so that none escapes the tests.
LANGUAGES = {"python", "sh", "text"}
CI_COMMAND = (
    "python3.11 -m pip install -U nox uv && python3.11 -m nox -s lint typecheck tests docs build"
)


ALL_BLOCKS = [block for path in MARKDOWN_FILES for block in read_blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "python"]
# The blocks of this backend's run: those of no backend in particular, and its own.
RUN_BLOCKS = [
    block for block in PYTHON_BLOCKS if (block.backend or block.tested_on) in (None, BACKEND)
]


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


@pytest.mark.usefixtures("restored_registries")
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[block.id for block in RUN_BLOCKS])
def test_python_block_runs(block: Block) -> None:
    code = expand_snippets(block.code)
    output = run_here(code, filename=f"<{block.id}>")
    assert output.splitlines() == expected_output(code)


def test_there_are_python_blocks_everywhere_we_expect() -> None:
    files = {block.path.relative_to(ROOT).as_posix() for block in PYTHON_BLOCKS}
    assert {
        "README.md",
        "CHANGELOG.md",
        "docs/index.md",
        "docs/matching.md",
        "docs/costs.md",
        "docs/migration.md",
    } <= files
    assert len(PYTHON_BLOCKS) >= 15


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.id for block in ALL_BLOCKS])
def test_code_blocks_name_a_known_language(block: Block) -> None:
    assert block.language in LANGUAGES, (
        f"{block.id}: a code block must name its language, one of {sorted(LANGUAGES)} "
        f"(Python as 'python', so that it is tested). Received: {block.language!r}"
    )


def test_backend_markers_name_a_backend() -> None:
    for block in PYTHON_BLOCKS:
        assert block.backend in (None, "tensorflow", "jax", "torch"), block.id
        assert block.tested_on in (None, "tensorflow", "jax", "torch"), block.id
        assert block.backend is None or block.tested_on is None, block.id


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
    for module in (
        hungarian_loss,
        hungarian_loss.costs,
        hungarian_loss.boxes,
        hungarian_loss.masks,
        hungarian_loss.denoising,
        hungarian_loss.keras_hub,
    )
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
    assert ci_command == CI_COMMAND
    shell_blocks = [block.code.strip() for block in ALL_BLOCKS if block.path.name == "README.md"]
    assert ci_command in shell_blocks
    assert f"\n{ci_command}\n" in readme  # the line, byte for byte
    assert "python -m pip install -U nox uv && python -m nox -s demo" in shell_blocks


def test_no_instruction_installs_from_the_index() -> None:
    # The index serves the archived 1.0.3 under this name until 2.0 is published.
    from_index = re.compile(r"pip install\s+[\"']?hungarian[-_]loss\b")
    for block in ALL_BLOCKS:
        if block.language == "sh":
            assert not from_index.search(block.code), f"{block.id}: installs 1.0.3"


def test_readme_installs_from_the_clone_and_says_why() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = readme[readme.index("## Install") : readme.index("### From a clone")]
    assert "1.0.3" in install  # the index serves it under this name
    commands = [shlex.join(argv) for argv in install_commands()]  # what follow_readme.py runs
    assert commands == [
        "python -m pip install .",
        "python -m pip install '.[jax]'",
        "python -m pip install '.[demo]'",
    ]


def test_one_version_everywhere() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    version = re.search(r'^version = "(?P<v>[^"]+)"$', pyproject, re.MULTILINE)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    latest = re.search(r"^## (?P<v>\d+\.\d+\.\d+\S*)", changelog, re.MULTILINE)
    assert version is not None and latest is not None
    assert version["v"] == hungarian_loss.__version__ == latest["v"]


def test_project_urls_name_no_other_project() -> None:
    # 1.0.3's repository is not this code: no metadata or site setting may point there.
    for name in ("pyproject.toml", "mkdocs.yml"):
        assert "mmgalushka" not in (ROOT / name).read_text(encoding="utf-8"), name


def test_every_page_is_in_the_site_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") : config.index("\nmarkdown_extensions:")]
    listed = set(re.findall(r":\s+(\S+\.md)\s*$", nav, re.MULTILINE))
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert pages == listed
    assert {"migration.md", "changelog.md"} <= pages


def test_the_changelog_page_includes_the_changelog() -> None:
    page = (DOCS / "changelog.md").read_text(encoding="utf-8")
    assert '--8<-- "CHANGELOG.md"' in page.splitlines()


def test_readme_links_name_files_that_exist() -> None:
    # The site's build checks the links of docs/; these two files are read on their own.
    for name in ("README.md", "CHANGELOG.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        targets = re.findall(r"\]\(([^)\s]+)\)", text)
        local = [target for target in targets if not re.match(r"[a-z]+:|#", target)]
        assert local or name == "CHANGELOG.md"
        for target in local:
            assert (ROOT / target.split("#")[0]).is_file(), f"{name}: {target}"


def test_pictures_exist() -> None:
    for path in MARKDOWN_FILES:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            assert (path.parent / target).is_file(), f"{path.relative_to(ROOT)}: {target}"
