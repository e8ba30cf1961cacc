"""Suite-wide setup: the tests of one backend's run, and the PyTorch backend's stance.

`@pytest.mark.backends("jax", ...)` names the Keras backends a test runs on; the runs of
the other backends do not collect it (it is deselected, not skipped). It marks tests of
backend-specific code that exists on some backends only (torch's compiler, multi-device
training), and end-to-end trainings of backend-independent behaviour that run on one
backend on purpose (the test says why that one): `nox -s tests` runs every backend, so
each such test runs once per full test run.

On torch the solver is compiled with `torch.compile` (Inductor) once per input shape, which
takes 10-30 s per shape on 2 CPU cores. The suite solves a few hundred distinct shapes, so on
torch it runs the same `keras.ops` code eagerly (Keras's Python loop in place of
`torch.while_loop`), and `test_torch.py` checks the compiled path against it, with the
`torch_compile` fixture. Nothing happens on the other backends.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import pytest

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


@pytest.fixture
def torch_compile() -> Iterator[None]:
    """Lets `torch.compile` compile inside the test (torch only; a no-op elsewhere)."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    with torch.compiler.set_stance("default"):
        yield
