"""Installs the package as a user would, in new virtual environments, and runs it from there.

The `build` nox session runs this script twice, from the root of the repository:

`python tests/follow_readme.py` follows the README literally:

1. creates an empty virtual environment in a temporary folder (the README's
   `python -m venv .venv`, elsewhere, so that it is new);
2. runs, from the repository root, every `python -m pip install ...` line of the README's
   "From a clone" block exactly as written, with that environment's Python;
3. checks that the environment imports the `hungarian_loss` it installed, not the source
   tree, at the version of pyproject.toml;
4. runs every ```python block of the README in a fresh process of that environment, from an
   empty folder, without PYTHONPATH or KERAS_BACKEND (unless the block has a
   `test-backend` marker), and checks that its standard output is exactly what its
   `print(...)  # -> TEXT` lines say.

`python tests/follow_readme.py --wheel dist/hungarian_loss-X-py3-none-any.whl` checks a
built wheel: its files (the package with `py.typed`, its metadata, and nothing else: no
tests, no benchmarks), then installs it in a new virtual environment and runs, from an
empty folder, the README's worked example and `python -m hungarian_loss --help`.

Both install TensorFlow: a minute or more each. Only the standard library is needed to run
this script; it exits with status 1 and says what differed when a check fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from email.parser import Parser
from pathlib import Path

from markdown_blocks import ROOT, Block, expected_output, read_blocks

README = ROOT / "README.md"
INSTALL_HEADING = "From a clone"
WORKED_EXAMPLE_HEADING = "The worked example"
# Variables of the calling environment (nox, a virtualenv, the test suite) that a user's new
# shell would not have, and that would change what runs.
DROPPED_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "KERAS_BACKEND", "VIRTUAL_ENV", "PYTHONSTARTUP")


class CheckFailed(Exception):
    """A check of this script failed; the message says what differed."""


def project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "(?P<version>[^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise CheckFailed('pyproject.toml has no `version = "..."` line')
    return match["version"]


def install_commands(readme: Path = README) -> list[list[str]]:
    """The `python -m pip install ...` lines of the README's "From a clone" block, as argvs."""
    blocks = [
        block
        for block in read_blocks(readme)
        if block.heading == INSTALL_HEADING and block.language == "sh"
    ]
    if len(blocks) != 1:
        raise CheckFailed(
            f"Expected one sh block under the heading {INSTALL_HEADING!r} of {readme.name}. "
            f"Received: {len(blocks)}"
        )
    commands = []
    for line in blocks[0].code.splitlines():
        argv = shlex.split(line, comments=True)
        if argv[:4] == ["python", "-m", "pip", "install"]:
            commands.append(argv)
    if not commands or commands[0] != ["python", "-m", "pip", "install", "."]:
        raise CheckFailed(
            f"Expected the block under {INSTALL_HEADING!r} to start its installs with "
            f"`python -m pip install .`. Received: {commands}"
        )
    return commands


def user_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the variables a new shell would not have."""
    env = {key: value for key, value in os.environ.items() if key not in DROPPED_VARIABLES}
    env.update(extra)
    return env


def run(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Runs a command, showing it; returns its stdout, or raises with its output."""
    print("$", shlex.join(str(arg) for arg in argv), f"  (in {cwd})", flush=True)
    result = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=user_environment() if env is None else env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise CheckFailed(
            f"`{shlex.join(str(arg) for arg in argv)}` exited with {result.returncode}.\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"
        )
    return result.stdout


def new_virtualenv(folder: Path) -> Path:
    """A new, empty virtual environment with pip (the README's `python -m venv`); its Python."""
    run([sys.executable, "-m", "venv", folder], cwd=folder.parent)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.is_file():
        raise CheckFailed(f"`python -m venv` made no {python}")
    return python


def check_installed(python: Path, workdir: Path, venv: Path) -> None:
    """The environment imports the installed package, at this project's version."""
    code = (
        "import importlib.metadata, hungarian_loss; "
        "print(hungarian_loss.__file__); "
        "print(hungarian_loss.__version__); "
        "print(importlib.metadata.version('hungarian-loss'))"
    )
    lines = run([python, "-c", code], cwd=workdir).splitlines()
    location, version, distribution = lines[-3:]
    expected = project_version()
    if not Path(location).resolve().is_relative_to(venv.resolve()):
        raise CheckFailed(f"Expected hungarian_loss from {venv}. Received: {location}")
    if (version, distribution) != (expected, expected):
        raise CheckFailed(
            f"Expected hungarian-loss {expected}. "
            f"Received: __version__={version}, distribution {distribution}"
        )
    print(f"ok: hungarian-loss {version} from {location}", flush=True)


def run_block(python: Path, block: Block, workdir: Path) -> str | None:
    """Runs a block in a fresh process; returns a description of what differed, or None."""
    script = workdir / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = user_environment(**({"KERAS_BACKEND": block.backend} if block.backend else {}))
    result = subprocess.run(
        [str(python), str(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    expected = expected_output(block.code)
    received = result.stdout.splitlines()
    if result.returncode == 0 and received == expected:
        print(f"ok: {block.id} printed {expected}", flush=True)
        return None
    return (
        f"{block.id}: exit status {result.returncode}\n"
        f"  expected output: {expected}\n  received output: {received}\n"
        f"  stderr (end):\n{result.stderr[-3000:]}"
    )


def run_blocks(python: Path, blocks: Sequence[Block], workdir: Path) -> None:
    failures = [failure for block in blocks if (failure := run_block(python, block, workdir))]
    if failures:
        raise CheckFailed("\n\n".join(failures))


def follow_readme(tmp: Path) -> None:
    venv = tmp / "venv"
    python = new_virtualenv(venv)
    for argv in install_commands():
        run([python, *argv[1:]], cwd=ROOT)
    workdir = tmp / "work"
    workdir.mkdir()
    check_installed(python, workdir, venv)
    blocks = [block for block in read_blocks(README) if block.language == "python"]
    if not blocks:
        raise CheckFailed("The README has no python block")
    run_blocks(python, blocks, workdir)
    print(f"ok: the README's install and its {len(blocks)} Python blocks", flush=True)


def check_wheel_files(wheel: Path) -> None:
    """The wheel holds the package with `py.typed` and its metadata, and nothing else."""
    version = project_version()
    info = f"hungarian_loss-{version}.dist-info/"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = Parser().parsestr(archive.read(info + "METADATA").decode("utf-8"))
    strays = [name for name in names if not name.startswith(("hungarian_loss/", info))]
    if strays:
        raise CheckFailed(f"Expected only the package and its metadata. Received: {strays}")
    for required in ("hungarian_loss/__init__.py", "hungarian_loss/py.typed", info + "RECORD"):
        if required not in names:
            raise CheckFailed(f"Expected {required} in the wheel. Received: {names}")
    parts = {part for name in names for part in name.split("/")[:-1]}
    if parts & {"tests", "benchmarks", "docs"}:
        raise CheckFailed(f"Expected no tests, benchmarks or docs. Received: {names}")
    classifiers = metadata.get_all("Classifier") or []
    checks = {
        "Version": metadata["Version"] == version,
        "Requires-Python": metadata["Requires-Python"] == ">=3.10",
        "License-Expression": metadata["License-Expression"] == "MIT",
        "Provides-Extra: jax": "jax" in (metadata.get_all("Provides-Extra") or []),
        "Description-Content-Type": metadata["Description-Content-Type"] == "text/markdown",
        "a Python version classifier": "Programming Language :: Python :: 3.11" in classifiers,
        "Typing :: Typed": "Typing :: Typed" in classifiers,
        "no Project-URL": not metadata.get_all("Project-URL"),
    }
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        raise CheckFailed(f"The wheel's METADATA fails: {missing}")
    print(f"ok: {wheel.name} holds {len(names)} files: the package, py.typed, metadata")


def check_wheel(wheel: Path, tmp: Path) -> None:
    check_wheel_files(wheel)
    venv = tmp / "venv"
    python = new_virtualenv(venv)
    if shutil.which("uv"):  # the same install as pip's, faster
        run(["uv", "pip", "install", "--python", python, wheel.resolve()], cwd=tmp)
    else:
        run([python, "-m", "pip", "install", wheel.resolve()], cwd=tmp)
    workdir = tmp / "work"
    workdir.mkdir()
    check_installed(python, workdir, venv)
    example = [
        block
        for block in read_blocks(README)
        if block.heading == WORKED_EXAMPLE_HEADING and block.language == "python"
    ]
    if len(example) != 1 or not expected_output(example[0].code):
        raise CheckFailed(f"Expected one python block printing under {WORKED_EXAMPLE_HEADING!r}")
    run_blocks(python, example, workdir)
    usage = run([python, "-m", "hungarian_loss", "--help"], cwd=workdir)
    if not usage.startswith("usage:") or "--epochs" not in usage:
        raise CheckFailed(f"Expected the demo's usage from --help. Received:\n{usage}")
    print("ok: `python -m hungarian_loss --help` from the installed wheel", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="check this wheel instead of the README")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hungarian-loss-") as directory:
        try:
            if args.wheel is None:
                follow_readme(Path(directory))
            else:
                check_wheel(args.wheel, Path(directory))
        except CheckFailed as error:
            print(f"FAILED: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
