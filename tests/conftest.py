"""Suite-wide setup: the tests of one backend's run, and the PyTorch backend's stance.

`@pytest.mark.backends("jax", ...)` names the Keras backends a test runs on; the runs of
the other backends do not collect it (it is deselected, not skipped). It marks tests of
backend-specific code that exists on some backends only (torch's compiler, multi-device
training), and end-to-end trainings of backend-independent behaviour that run on one
backend on purpose (the test says why that one): `nox -s tests` runs every backend, so
each such test runs once per full test run.

At the end of a run, the summary counts the `assert` statements of the tests that passed
(pytest's `pytest_assertion_pass` hook, summed over pytest-xdist's workers): with the
count of tests, the measure that a change to the suite keeps what it checks.

On torch the solver is compiled with `torch.compile` (Inductor) once per input shape, which
takes 10-30 s per shape on 2 CPU cores. The suite solves a few hundred distinct shapes, so on
torch it runs the same `keras.ops` code eagerly (Keras's Python loop in place of
`torch.while_loop`), and `test_torch.py` checks the compiled path against it, with the
`torch_compile` fixture. Nothing happens on the other backends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras
import pytest

_ASSERTIONS_PASSED = "assertions_passed"
_passed = [0]  # assert statements passed in this process

if keras.backend.backend() == "torch":
    import torch

    torch.compiler.set_stance("force_eager")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leaves out the tests marked for other backends (`@pytest.mark.backends`)."""
    backend = keras.backend.backend()
    kept, left_out = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None and not marker.args:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.backends names no backend")
        (kept if marker is None or backend in marker.args else left_out).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pytest_assertion_pass() -> None:
    _passed[0] += 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: hand the count to the controller
        workeroutput[_ASSERTIONS_PASSED] = _passed[0]


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_testnodedown(node: Any, error: Any) -> None:
    """On pytest-xdist's controller: adds a finished worker's count."""
    _passed[0] += getattr(node, "workeroutput", {}).get(_ASSERTIONS_PASSED, 0)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _passed[0]:
        terminalreporter.write_line(f"assert statements passed: {_passed[0]}")


@pytest.fixture
def torch_compile() -> Iterator[None]:
    """Lets `torch.compile` compile inside the test (torch only; a no-op elsewhere)."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    with torch.compiler.set_stance("default"):
        yield
