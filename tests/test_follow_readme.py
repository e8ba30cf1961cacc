"""The checks of follow_readme.py fail when they should (the build session runs them for real)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import follow_readme
import pytest
from markdown_blocks import Block

VERSION = follow_readme.project_version()
INFO = f"hungarian_loss-{VERSION}.dist-info/"
METADATA = f"""Metadata-Version: 2.4
Name: hungarian-loss
Version: {VERSION}
License-Expression: MIT
Classifier: Programming Language :: Python :: 3.11
Classifier: Typing :: Typed
Requires-Python: >=3.10
Provides-Extra: jax
Description-Content-Type: text/markdown

# hungarian-loss
"""
GOOD_FILES = {
    "hungarian_loss/__init__.py": "",
    "hungarian_loss/py.typed": "",
    INFO + "METADATA": METADATA,
    INFO + "RECORD": "",
}


def make_wheel(tmp_path: Path, files: dict[str, str]) -> Path:
    wheel = tmp_path / f"hungarian_loss-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_a_wheel_of_the_package_and_its_metadata_passes(tmp_path: Path) -> None:
    follow_readme.check_wheel_files(make_wheel(tmp_path, GOOD_FILES))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tests/test_loss.py": ""}, "only the package"),
        ({"hungarian_loss/tests/test_loss.py": ""}, "no tests"),
        ({"hungarian_loss/py.typed": None}, "py.typed"),
        ({INFO + "METADATA": METADATA.replace("Provides-Extra: jax\n", "")}, "jax"),
        ({INFO + "METADATA": "Project-URL: Source, https://example.org\n" + METADATA}, "URL"),
    ],
)
def test_a_wrong_wheel_fails(tmp_path: Path, change: dict[str, str | None], message: str) -> None:
    files = {**GOOD_FILES, **change}
    wheel = make_wheel(tmp_path, {name: text for name, text in files.items() if text is not None})
    with pytest.raises(follow_readme.CheckFailed, match=message):
        follow_readme.check_wheel_files(wheel)


def block(code: str) -> Block:
    return Block(Path("README.md"), 1, "python", code, backend=None, tested_on=None, heading="")


def test_a_block_must_print_what_it_says(tmp_path: Path) -> None:
    python = Path(sys.executable)
    assert follow_readme.run_block(python, block("print(1 + 1)  # -> 2\n"), tmp_path) is None
    wrong = follow_readme.run_block(python, block("print(1 + 2)  # -> 2\n"), tmp_path)
    assert wrong is not None and "received output: ['3']" in wrong
    silent = follow_readme.run_block(python, block("x = 1\n"), tmp_path)
    assert silent is None
    failing = follow_readme.run_block(python, block("raise SystemExit(3)\n"), tmp_path)
    assert failing is not None and "exit status 3" in failing
