"""Suite-wide setup for the PyTorch backend.

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


@pytest.fixture
def torch_compile() -> Iterator[None]:
    """Lets `torch.compile` compile inside the test (torch only; a no-op elsewhere)."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    with torch.compiler.set_stance("default"):
        yield
