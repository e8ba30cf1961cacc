"""The PyTorch backend: the compiled solver and loss, and CUDA tensors.

The rest of the suite runs eagerly on torch (see conftest.py); here `torch.compile` is on
(`torch_compile` fixture), on two shapes only: each costs an Inductor compile.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
from helpers import matched_total, scipy_total, to_numpy

from hungarian_loss import HungarianLoss, linear_sum_assignment

pytestmark = pytest.mark.backends("torch")  # the other runs do not collect these

DETR_BOX_COST = {"l1": 5.0, "giou": 2.0}


def boxes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """center_xywh boxes inside the unit square."""
    centers = rng.uniform(0.2, 0.8, size=(*shape, 2))
    sizes = rng.uniform(0.05, 0.3, size=(*shape, 2))
    return np.concatenate([centers, sizes], axis=-1).astype("float32")


def solver_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    cost = rng.normal(size=(32, 6, 9)).astype("float32")
    cost[0, 2, :] = np.inf  # a row with no allowed pair
    row_mask = rng.uniform(size=(32, 6)) < 0.8
    col_mask = rng.uniform(size=(32, 9)) < 0.9
    return cost, row_mask, col_mask


@pytest.mark.usefixtures("torch_compile")
@pytest.mark.parametrize("transpose", [False, True], ids=["wide", "tall"])
def test_compiled_solver_equals_eager(transpose: bool) -> None:
    import torch

    cost, row_mask, col_mask = solver_inputs()
    if transpose:
        cost, row_mask, col_mask = np.transpose(cost, (0, 2, 1)).copy(), col_mask, row_mask
    args = [keras.ops.convert_to_tensor(a) for a in (cost, row_mask, col_mask)]
    compiled = to_numpy(linear_sum_assignment(*args))
    with torch.compiler.set_stance("force_eager"):
        eager = to_numpy(linear_sum_assignment(*args))
    np.testing.assert_array_equal(compiled, eager)
    for b in range(1, cost.shape[0]):  # sample 0 has a forbidden row: compared to eager only
        rows, cols = np.flatnonzero(row_mask[b]), np.flatnonzero(col_mask[b])
        ours, count = matched_total(cost[b], compiled[b])
        ref, ref_count = scipy_total(cost[b][np.ix_(rows, cols)])
        assert count == ref_count
        assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)


@pytest.mark.usefixtures("torch_compile")
def test_loss_inside_torch_compile_equals_eager(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    rng = np.random.default_rng(1)
    y_true, y_pred = boxes(rng, (4, 3)), boxes(rng, (4, 7))
    y_true[1, 2] = -1.0  # a padding row
    loss = HungarianLoss(cost=DETR_BOX_COST, box_format="center_xywh", reduction=None)

    def value_and_grad(fn: object) -> tuple[np.ndarray, np.ndarray]:
        pred = torch.tensor(y_pred, requires_grad=True)
        value = fn(torch.tensor(y_true), pred)  # type: ignore[operator]
        (grad,) = torch.autograd.grad(value.sum(), [pred])
        return to_numpy(value.detach()), to_numpy(grad)

    with caplog.at_level(logging.WARNING):
        compiled_value, compiled_grad = value_and_grad(torch.compile(loss))
    with torch.compiler.set_stance("force_eager"):
        eager_value, eager_grad = value_and_grad(loss)
    np.testing.assert_allclose(compiled_value, eager_value, rtol=1e-6)
    np.testing.assert_allclose(compiled_grad, eager_grad, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(compiled_grad)) and np.any(compiled_grad != 0)
    # The issue that brought torch in: Dynamo warned about an lru_cache-wrapped function.
    assert not [r for r in caplog.records if "lru_cache" in r.getMessage()]


def test_solver_and_loss_on_cuda() -> None:
    """CUDA tensors in, results on CUDA equal to CPU's (the worked example included)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (none here); run on a GPU machine")
    cost, row_mask, col_mask = solver_inputs()
    with keras.device("cpu"):  # Keras moves tensors to its default device, CUDA here
        cpu = to_numpy(linear_sum_assignment(torch.tensor(cost), torch.tensor(row_mask)))
    on_cuda = linear_sum_assignment(
        torch.tensor(cost, device="cuda"), torch.tensor(row_mask, device="cuda")
    )
    assert on_cuda.device.type == "cuda"
    np.testing.assert_array_equal(to_numpy(on_cuda), cpu)
    # "auto" takes the accelerator strategy ("phases") for CUDA tensors, the light steps
    # for CPU tensors; both strategies agree with the CPU on CUDA.
    from hungarian_loss import assignment

    batch, m, n = cost.shape
    assert assignment._resolve("auto", batch, m, n, torch.tensor(cost, device="cuda")) == "phases"
    assert assignment._resolve("auto", batch, m, n, torch.tensor(cost)) == "steps"
    for strategy in ("steps", "phases"):
        result = linear_sum_assignment(
            torch.tensor(cost, device="cuda"),
            torch.tensor(row_mask, device="cuda"),
            strategy=strategy,
        )
        np.testing.assert_array_equal(to_numpy(result), cpu)
    del col_mask

    y_true = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]], device="cuda")
    y_pred = torch.tensor(
        [[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]], device="cuda", requires_grad=True
    )
    value = HungarianLoss()(y_true, y_pred)
    assert value.device.type == "cuda"
    assert float(value.detach().cpu()) == pytest.approx(6.50763825, rel=1e-6)
    (grad,) = torch.autograd.grad(value, [y_pred])
    assert grad.device.type == "cuda" and bool(torch.isfinite(grad).all())
