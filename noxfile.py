"""Developer sessions: `nox -l` lists them, `nox -s NAME` runs one.

Every session installs what it needs into its own virtual environment, so each works on a
fresh machine with only Python and the package registries.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]

PYTHON = "3.11"
BACKENDS = ["tensorflow", "jax", "torch"]
# PyTorch, CPU build. pip on Python 3.11 takes this release from a wheel on the CI machine's
# disk (its pip configuration's find-links), a CPU build of about 200 MB; uv does not look
# there and would download a CUDA build of several GB. So torch is installed with pip, first,
# before anything that could pull another build in.
TORCH = "torch==2.13.0"


def install_torch(session: nox.Session) -> None:
    """Installs the CPU build of PyTorch with pip (also inside a uv-made environment)."""
    session.install("pip")
    session.run("python", "-m", "pip", "install", "--only-binary=:all:", TORCH)
    session.run(
        "python",
        "-c",
        "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)",
    )


def log_times(session: nox.Session, times: dict[str, float]) -> None:
    """Logs how long each part of a session took (seconds in, minutes out)."""
    session.log("times: " + ", ".join(f"{part} {sec / 60:.1f} min" for part, sec in times.items()))


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite and the docstring examples on each Keras backend, from one environment.

    One environment holds TensorFlow, JAX, PyTorch and keras-hub; pytest runs once per
    backend in its own process (`KERAS_BACKEND`), on as many workers as the machine has
    cores (pytest-xdist), and lists its 15 slowest tests. Arguments after `--` choose the
    backends and pass the rest to pytest: `nox -s tests -- jax` runs the JAX run alone
    (the fast loop), `nox -s tests -- torch tests/test_loss.py -x` one file on torch.
    """
    started = time.perf_counter()
    install_torch(session)  # the docs' PyTorch page and the torch run need it
    # keras-hub: tests/test_keras_hub.py trains its D-FINE (it needs keras>=3.15 and a
    # tensorflow-text matching tensorflow, which pip resolves together).
    # With bytecode: every process of the run (pytest's workers, the tests' fresh processes)
    # then imports TensorFlow, JAX and Keras from .pyc files instead of compiling their
    # sources (uv writes none by default, and this machine sets PYTHONDONTWRITEBYTECODE):
    # 2.5 s instead of 5.9 s per `import keras` on JAX.
    session.install("-e", ".[test,jax,keras-hub]", env={"UV_COMPILE_BYTECODE": "1"})
    times = {"installs": time.perf_counter() - started}
    backends = [arg for arg in session.posargs if arg in BACKENDS] or BACKENDS
    pytest_args = [arg for arg in session.posargs if arg not in BACKENDS]
    # The doctests of the package beside the test files, in one pytest run per backend.
    targets = pytest_args or ["tests", "--pyargs", "hungarian_loss"]
    failed = []
    for backend in backends:
        started = time.perf_counter()
        env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        # Tests that share a fixture (a trained model, a built detector) carry an
        # `xdist_group` mark: one worker runs them, and builds the fixture once.
        xdist = ["-n", "auto", "--dist", "loadgroup"]
        try:  # every backend runs, whatever the one before it gave
            session.run("python", "-m", "pytest", *xdist, "--durations=15", *targets, env=env)
        except nox.command.CommandFailed:
            failed.append(backend)
        times[f"pytest, {backend}"] = time.perf_counter() - started
    log_times(session, times)
    if failed:
        session.error(f"The tests failed on {', '.join(failed)}.")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy (strict)."""
    session.install("-e", ".", "mypy>=1.10")
    session.run("mypy", "src")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with MkDocs, failing on any warning."""
    session.install("-e", ".[docs]")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"KERAS_BACKEND": "tensorflow"}
    )


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel into dist/, check them, and install them as a user would.

    `twine check --strict` on both; then tests/follow_readme.py checks the wheel's files,
    installs it in a new virtual environment and runs the worked example and
    `python -m hungarian_loss --help` from outside the source tree, and then follows the
    README literally: its install commands in another new environment, and every Python
    block, each printing what the README says.
    """
    session.install("build>=1.2", "twine>=5")
    dist = Path("dist")
    for old in dist.glob("hungarian_loss-*"):
        old.unlink()
    session.run("python", "-m", "build", "--outdir", str(dist))
    sdists = sorted(dist.glob("hungarian_loss-*.tar.gz"))
    wheels = sorted(dist.glob("hungarian_loss-*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        session.error(f"Expected one sdist and one wheel in dist/. Received: {sdists + wheels}")
    session.run("twine", "check", "--strict", str(sdists[0]), str(wheels[0]))
    times: dict[str, float] = {}
    for part, args in (("the wheel", ["--wheel", str(wheels[0])]), ("the README", [])):
        started = time.perf_counter()
        session.run("python", "tests/follow_readme.py", *args)
        times[part] = time.perf_counter() - started
    log_times(session, times)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark the solver and the loss against SciPy, optax and hungarian-loss 1.0.3."""
    install_torch(session)  # the PyTorch contenders
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs, env={"TF_CPP_MIN_LOG_LEVEL": "2"})


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Train a small box detector on synthetic images and plot its matching."""
    session.install("-e", ".[demo]")
    session.run(
        "python", "-m", "hungarian_loss", *session.posargs, env={"TF_CPP_MIN_LOG_LEVEL": "2"}
    )


if os.environ.get("CI"):
    nox.options.error_on_missing_interpreters = True
