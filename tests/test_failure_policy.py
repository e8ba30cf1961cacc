"""The failure policy of the loss and the costs: no silent failures on extreme inputs.

One test per item of the issues "No silent failures" (huge finite values, NaN boxes,
inf predictions, cost shapes, legal corner inputs, GIoU overflow, boundary checks) and
"No silent failures, part 2" (broken targets: non-finite values, boxes of negative
size, rules added by subclasses, dtypes that cannot hold the padding), each eager and
compiled (XLA), and a property test over every built-in cost. The policy itself is the
table in docs/matching.md ("Failure policy").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest
import scipy.optimize
from helpers import BACKEND, assert_is_matching, jit, np_from_xyxy, to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from keras import ops

from hungarian_loss import DETRLoss, HungarianLoss
from hungarian_loss.boxes import pairwise_ciou, pairwise_diou, pairwise_giou, pairwise_iou
from hungarian_loss.costs import (
    CIoUCost,
    ClassProbabilityCost,
    DIoUCost,
    FocalClassCost,
    GIoUCost,
    IoUCost,
    L1Cost,
    L2Cost,
    SquaredL2Cost,
    WeightedCost,
)

MODES = ["eager", "compiled"]
INF, NAN = np.inf, np.nan
PAD = -1.0


# ----------------------------------------------------------------------------- helpers


def compile_for(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """`fn` as it is (eager) or compiled; the result comes back as NumPy.

    Compiled: XLA on TensorFlow and JAX, `torch.compile` on PyTorch, which the suite runs
    eagerly there (conftest.py: one compile per shape would take minutes; `test_torch.py`
    checks the compiled path).
    """
    if mode == "compiled":
        fn = jit(fn)

    def as_numpy(*args: Any) -> Any:
        out = fn(*args)
        if isinstance(out, tuple):
            return tuple(to_numpy(x) for x in out)
        return to_numpy(out)

    return as_numpy


def run(fn: Callable[..., Any], *args: Any, mode: str) -> Any:
    """`fn(*args)` as NumPy, eagerly or compiled with XLA."""
    return compile_for(fn, mode)(*args)


def with_grads(loss: HungarianLoss) -> Callable[[Any, Any], tuple[Any, ...]]:
    """`(t, p) -> (loss(t, p), d sum(loss) / dt, d sum(loss) / dp, loss.match(t, p))`.

    On the active backend, in one function (one compile). Samples are independent, so
    the gradient rows of sample `b` come from `loss[b]` only.
    """
    if BACKEND == "jax":
        import jax

        def total(t: Any, p: Any) -> tuple[Any, Any]:
            value = loss(t, p)
            return ops.sum(value), value

        def both(t: Any, p: Any) -> tuple[Any, ...]:
            (_, value), (grad_t, grad_p) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
                t, p
            )
            return value, grad_t, grad_p, loss.match(t, p)

        return both
    if BACKEND == "torch":
        import torch

        def both_torch(t: Any, p: Any) -> tuple[Any, ...]:
            t, p = (ops.convert_to_tensor(x).detach().requires_grad_(True) for x in (t, p))
            value = loss(t, p)
            total = ops.sum(value)
            if total.requires_grad:  # an input of size 0 is not connected
                grads = torch.autograd.grad(total, [t, p], allow_unused=True)
            else:
                grads = (None, None)
            grad_t, grad_p = (
                torch.zeros_like(x) if g is None else g for g, x in zip(grads, (t, p), strict=True)
            )
            return value.detach(), grad_t, grad_p, loss.match(t.detach(), p.detach())

        return both_torch
    import tensorflow as tf

    def both_tf(t: Any, p: Any) -> tuple[Any, ...]:
        t, p = tf.convert_to_tensor(t), tf.convert_to_tensor(p)
        with tf.GradientTape() as tape:
            tape.watch([t, p])
            value = loss(t, p)
            total = ops.sum(value)
        zero = tf.UnconnectedGradients.ZERO  # an input of size 0 is not connected
        grad_t, grad_p = tape.gradient(total, [t, p], unconnected_gradients=zero)
        return value, grad_t, grad_p, loss.match(t, p)

    return both_tf


def outcome(
    loss: HungarianLoss, y_true: np.ndarray, y_pred: np.ndarray, mode: str
) -> tuple[np.ndarray, ...]:
    """Per-sample loss, gradients of its sum w.r.t. both inputs, and the matching."""
    return run(with_grads(loss), y_true, y_pred, mode=mode)  # type: ignore[no-any-return]


def per_sample(**kwargs: Any) -> HungarianLoss:
    return HungarianLoss(reduction=None, **kwargs)


def f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype="float32")


def assert_finite_where_loss_is(loss: np.ndarray, *grads: np.ndarray) -> None:
    for b in np.flatnonzero(np.isfinite(loss)):
        for grad in grads:
            assert np.all(np.isfinite(grad[b])), f"finite loss {loss[b]}, gradient {grad[b]}"


ZERO = [0.0, 0.0, 0.0, 0.0]


# ------------------------------------------------ 1. huge finite predictions: no loss 0


@pytest.mark.parametrize("mode", MODES)
def test_huge_finite_predictions_are_matched_or_make_the_loss_infinite(mode: str) -> None:
    y_true = f32([[ZERO], [ZERO], [ZERO]])  # [3, 1, 4]
    cases = {
        # cost: (predictions [3, 2, 4], expected per-sample loss)
        "l2": (
            [
                [[1e20] * 4, [3e38] * 4],  # distance 2e20: matched
                [[-1e20, 1e20, 0, 0], [3e38, 0, 0, 0]],  # sqrt(2) * 1e20 beats 3e38
                [[3e38] * 4, [-3e38] * 4],  # 6e38: not representable
            ],
            [2e20, np.sqrt(2) * 1e20, INF],
        ),
        "squared_l2": (
            [
                [[1e19, 0, 0, 0], [1e20, 0, 0, 0]],  # 1e38 is finite, 1e40 is not
                [[1e20, 0, 0, 0], [0, 1e20, 0, 0]],
                [[3e38] * 4, [1e30] * 4],
            ],
            [1e38, INF, INF],
        ),
        "l1": (
            [
                [[1e38, 1e38, 1e38, 0], [3e38, 3e38, 0, 0]],  # 3e38 is finite, 6e38 is not
                [[3e38, 3e38, 0, 0], [-3e38, -3e38, 0, 0]],
                [[1e20] * 4, [3e38] * 4],
            ],
            [3e38, INF, 4e20],
        ),
    }
    for cost, (y_pred, expected) in cases.items():
        loss = per_sample(cost=cost)
        value, _, grad, indices = outcome(loss, y_true, f32(y_pred), mode)
        np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=cost)
        assert_finite_where_loss_is(value, grad)
        np.testing.assert_array_equal(indices[:, 0] >= 0, np.isfinite(expected), err_msg=cost)


@pytest.mark.parametrize("mode", MODES)
def test_l2_of_huge_differences_is_finite_with_the_unit_direction_gradient(mode: str) -> None:
    y_true = f32([[ZERO], [ZERO]])
    y_pred = f32([[[3e37, 4e37, 0, 0]], [[3e-20, 4e-20, 0, 0]]])  # distances 5e37 and 5e-20
    value, _, grad, _ = outcome(per_sample(cost=L2Cost()), y_true, y_pred, mode)
    np.testing.assert_allclose(value, [5e37, 5e-20], rtol=1e-6)
    np.testing.assert_allclose(grad[:, 0], [[0.6, 0.8, 0, 0], [0.6, 0.8, 0, 0]], rtol=1e-6)


# --------------------------------------------------- 2. a NaN box is never a finite cost


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cost", ["iou", "giou", "diou", "ciou"])
def test_nan_box_gives_nan_cost_and_nan_loss(cost: str, mode: str) -> None:
    y_true = f32([[[0, 0, 1, 1]], [[0, 0, 1, 1]], [[NAN, 0, 1, 1]]])  # [3, 1, 4]
    y_pred = f32(
        [
            [[0, 0, NAN, 1], [0, 0, 1, 1]],  # a NaN prediction, even an unused one: NaN
            [[0, 0, 1, 1], [INF, 0, 1, 1]],  # an inf prediction, avoidable: finite
            [[0, 0, 1, 1], [0, 0, 2, 2]],  # a NaN target: NaN
        ]
    )
    box_cost = {"iou": IoUCost, "giou": GIoUCost, "diou": DIoUCost, "ciou": CIoUCost}[cost]()
    matrix = run(box_cost, y_true, y_pred, mode=mode)
    np.testing.assert_array_equal(
        np.isnan(matrix[:, 0]), [[True, False], [False, True], [True, True]]
    )
    value, _, grad, indices = outcome(per_sample(cost=cost), y_true, y_pred, mode)
    np.testing.assert_array_equal(np.isnan(value), [True, False, True])
    assert value[1] == 0.0 and np.all(np.isfinite(grad[1]))
    np.testing.assert_array_equal(grad[1, 1], np.zeros(4))  # the inf box: no gradient
    np.testing.assert_array_equal(indices, [[1], [0], [-1]])


# ------------------------------------- 3. inf predictions: finite gradients, or no loss 0


@pytest.mark.parametrize("mode", MODES)
def test_inf_prediction_that_is_not_needed_leaves_gradients_finite(mode: str) -> None:
    # Prediction 0 is inf: padding and unmatched targets must not gather it.
    target = [0.1, 0.2, 0.3, 0.4]
    y_true = f32([[target, [PAD] * 4, [PAD] * 4, target]] * 2)  # [2, 4, 4]: M > N
    y_pred = f32(
        [
            [[INF, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
            [[-INF, INF, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
        ]
    )  # [2, 3, 4]
    for cost in ("l2", {"l1": 5.0, "giou": 2.0}):
        value, grad_true, grad_pred, indices = outcome(per_sample(cost=cost), y_true, y_pred, mode)
        assert np.all(np.isfinite(value)), cost
        assert np.all(np.isfinite(grad_pred)) and np.all(np.isfinite(grad_true)), cost
        np.testing.assert_array_equal(grad_pred[:, 0], np.zeros((2, 4)))
        assert not np.any(indices == 0), cost


@pytest.mark.parametrize("mode", MODES)
def test_target_left_unmatched_because_of_inf_predictions_makes_the_loss_inf(mode: str) -> None:
    target = [0.1, 0.2, 0.3, 0.4]
    y_true = f32(
        [
            [target, [PAD] * 4],  # one target, its only prediction is inf
            [target, target],  # two targets, one finite prediction
            [target, target],  # M > N: both predictions are needed, one is inf
            [target, [INF, 0, 0, 0]],  # an inf target: broken data, NaN (issue 17)
        ]
    )
    y_pred = f32(
        [
            [[INF] * 4, [-INF] * 4],
            [[0.0] * 4, [INF] * 4],
            [[0.0] * 4, [-INF] * 4],
            [[0.0] * 4, [1.0] * 4],
        ]
    )
    for cost in ("l2", "giou"):
        value, _, _, indices = outcome(per_sample(cost=cost), y_true, y_pred, mode)
        np.testing.assert_array_equal(value, [INF, INF, INF, NAN], err_msg=str(cost))
        np.testing.assert_array_equal(indices, [[-1, -1], [0, -1], [0, -1], [0, -1]])
    # With more targets than predictions, a target left over is not a failure.
    value, *_ = outcome(per_sample(), y_true, y_pred[:, :1], mode)
    np.testing.assert_array_equal(np.isfinite(value), [False, True, True, False])


# ---------------------------------------------- 4. a cost of the wrong shape is rejected


@pytest.mark.parametrize("mode", MODES)
def test_cost_callable_of_the_wrong_shape_is_rejected_with_names_and_shapes(mode: str) -> None:
    def drops_a_prediction(y_true: Any, y_pred: Any) -> Any:
        return L1Cost()(y_true, y_pred[:, 1:])  # [B, M, N - 1]

    def one_value_per_target(y_true: Any, y_pred: Any) -> Any:
        return ops.sum(y_true, axis=-1)  # [B, M]

    y_true, y_pred = f32(np.zeros((2, 3, 4))), f32(np.ones((2, 5, 4)))
    for cost, received in ((drops_a_prediction, "(2, 3, 4)"), (one_value_per_target, "(2, 3)")):
        loss = per_sample(cost=cost)
        for fn in (loss, loss.match):
            with pytest.raises(ValueError, match=cost.__name__) as error:
                run(fn, y_true, y_pred, mode=mode)
            assert "(2, 3, 5)" in str(error.value) and received in str(error.value)


# -------------------------------------------------------- 5. legal inputs do not crash


@pytest.mark.parametrize("mode", MODES)
def test_zero_predictions_and_zero_targets(mode: str) -> None:
    target = [[0.1, 0.2, 0.3, 0.4], [PAD] * 4]
    for cost in ("l2", {"l1": 5.0, "giou": 2.0}):
        loss = per_sample(cost=cost)
        value, _, grad, indices = outcome(loss, f32([target] * 2), f32(np.zeros((2, 0, 4))), mode)
        np.testing.assert_array_equal(value, [0.0, 0.0])
        assert grad.shape == (2, 0, 4)
        np.testing.assert_array_equal(indices, -np.ones((2, 2)))
        value, _, grad, indices = outcome(loss, f32(np.zeros((2, 0, 4))), f32([target] * 2), mode)
        np.testing.assert_array_equal(value, [0.0, 0.0])
        np.testing.assert_array_equal(grad, np.zeros((2, 2, 4)))
        assert indices.shape == (2, 0)


@pytest.mark.parametrize("mode", MODES)
def test_variables_as_inputs(mode: str) -> None:
    y_true = f32([[[1, 2, 3, 4], [5, 6, 7, 8], [PAD] * 4]])
    y_pred = f32([[[1, 1, 1, 1], [2, 2, 2, 2]]])
    loss = HungarianLoss()
    expected = float(loss(y_true, y_pred))
    assert expected == pytest.approx(6.50763825, abs=1e-5)
    variables: list[Any] = [keras.Variable(y_pred)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        variables.append(tf.Variable(y_pred))
    for variable in variables:
        assert float(run(lambda t, v=variable: loss(t, v), y_true, mode=mode)) == pytest.approx(
            expected, abs=1e-5
        )
        np.testing.assert_array_equal(
            run(lambda t, v=variable: loss.match(t, v), y_true, mode=mode), [[0, 1, -1]]
        )


# ------------------------------- 6. GIoU, DIoU and CIoU of huge finite boxes stay finite


@pytest.mark.parametrize("mode", MODES)
def test_iou_family_of_huge_finite_boxes(mode: str) -> None:
    for big in (1e20, 3e38):
        boxes1 = f32([[[0, 0, big, big], [-big, -big, big, big]]])  # [1, 2, 4]
        boxes2 = f32([[[0, 0, big / 2, big / 2], [-big, -big, 0, 0], [big / 2, 0, big, big]]])
        iou = run(pairwise_iou, boxes1, boxes2, mode=mode)
        giou = run(pairwise_giou, boxes1, boxes2, mode=mode)
        np.testing.assert_allclose(iou[0], [[0.25, 0.0, 0.5], [1 / 16, 0.25, 1 / 8]], atol=1e-6)
        np.testing.assert_allclose(giou[0], [[0.25, -0.5, 0.5], [1 / 16, 0.25, 1 / 8]], atol=1e-6)
        for fn in (pairwise_diou, pairwise_ciou):  # the values of the boxes scaled to ~1
            np.testing.assert_allclose(
                run(fn, boxes1, boxes2, mode=mode),
                run(fn, boxes1 / big, boxes2 / big, mode=mode),
                atol=1e-6,
            )
    # The loss on such boxes: finite, with finite gradients.
    y_true = f32([[[0, 0, 1e20, 1e20]], [[-3e38, -3e38, 3e38, 3e38]]])
    y_pred = f32([[[0, 0, 5e19, 5e19]], [[0, 0, 3e38, 3e38]]])
    for cost, expected in (("giou", 0.75), ("diou", 0.8125), ("ciou", 0.8125)):
        value, grad_true, grad_pred, _ = outcome(per_sample(cost=cost), y_true, y_pred, mode)
        np.testing.assert_allclose(value, [expected, expected], rtol=1e-6, err_msg=cost)
        assert np.all(np.isfinite(grad_pred)) and np.all(np.isfinite(grad_true)), cost


# ------------------------------------------------------------- 7. checks at the boundary


@pytest.mark.parametrize("mode", MODES)
def test_numpy_scalar_and_nan_padding_values(mode: str) -> None:
    y_true = f32([[[1, 2, 3, 4], [PAD] * 4]])
    y_pred = f32([[[1, 2, 3, 5], [0, 0, 0, 0]]])
    expected = run(per_sample(), y_true, y_pred, mode=mode)
    np.testing.assert_allclose(expected, [1.0])
    for padding_value in (np.float32(-1.0), np.float64(-1.0), np.int32(-1)):
        loss = per_sample(padding_value=padding_value)
        np.testing.assert_array_equal(run(loss, y_true, y_pred, mode=mode), expected)
        assert loss.get_config()["padding_value"] == -1.0
    nan_padded = np.where(y_true == PAD, NAN, y_true).astype("float32")
    loss = per_sample(padding_value=float("nan"))
    np.testing.assert_array_equal(run(loss, nan_padded, y_pred, mode=mode), expected)
    np.testing.assert_array_equal(run(loss.match, nan_padded, y_pred, mode=mode), [[0, -1]])
    with pytest.raises(ValueError, match="padding_value"):
        HungarianLoss(padding_value=True)


@pytest.mark.parametrize("mode", MODES)
def test_target_mask_of_the_wrong_batch_size_is_a_value_error(mode: str) -> None:
    class WrongMask(HungarianLoss):
        def target_mask(self, y_true: Any) -> Any:
            return ops.concatenate([super().target_mask(y_true)] * 2, axis=0)  # [2B, M]

    y_true, y_pred = f32(np.zeros((2, 3, 4))), f32(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"target_mask.*\(2, 3\).*\(4, 3\)"):
        run(WrongMask(), y_true, y_pred, mode=mode)


@pytest.mark.backends("tensorflow", "jax")  # torch has no traced tensors of unknown size
def test_unknown_number_of_items_names_the_fix() -> None:
    """Only traced code can have an unknown M (there is no eager variant of this item)."""
    loss = HungarianLoss()
    if BACKEND == "tensorflow":
        import tensorflow as tf

        spec = tf.TensorSpec([None, None, 4], "float32")
        traced = tf.function(loss, input_signature=[spec, tf.TensorSpec([None, 5, 4])])
        with pytest.raises(ValueError, match=r"padded_shapes.*y_true\.shape=\(None, None, 4\)"):
            traced.get_concrete_function()
    else:
        import jax

        shape = jax.export.symbolic_shape("b, m, 4")
        y_true = jax.ShapeDtypeStruct(shape, "float32")
        y_pred = jax.ShapeDtypeStruct((shape[0], 5, 4), "float32")
        with pytest.raises(ValueError, match="padded_shapes"):
            jax.eval_shape(loss, y_true, y_pred)


# ---------------------------------------- 8. broken targets (issue 17): NaN, no gradient

GOOD = [0.1, 0.2, 0.5, 0.6]  # xyxy
# [4, 2, 4] targets in xyxy: sample 0 has one box of negative width next to a good one.
BROKEN_BOXES = f32(
    [
        [GOOD, [0.5, 0.2, 0.4, 0.6]],  # x2 < x1: broken
        [GOOD, [0.3, 0.3, 0.3, 0.3]],  # zero size: degenerate but legal
        [GOOD, [-1e30, -1e30, 1e30, 1e30]],  # huge: legal
        [GOOD, [PAD] * 4],
    ]
)
PREDICTIONS = f32([[[0.1, 0.2, 0.4, 0.5], [0.3, 0.3, 0.4, 0.4], [0.0, 0.0, 1.0, 1.0]]] * 4)


def from_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """Boxes (padding rows kept) in `box_format`."""
    converted = np_from_xyxy(boxes, box_format)
    return np.where(boxes == PAD, PAD, converted).astype("float32")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("cost", "box_format"),
    [("giou", "xyxy"), ("iou", "yxyx"), ({"l1": 5.0, "giou": 2.0}, "center_xywh")],
    ids=["giou-xyxy", "iou-yxyx", "detr-center_xywh"],
)
def test_negative_size_target_box_makes_its_sample_nan_with_no_gradient(
    cost: Any, box_format: str, mode: str
) -> None:
    loss = per_sample(cost=cost, box_format=box_format)
    step = compile_for(with_grads(loss), mode)  # one compile for both batches
    y_true, y_pred = from_xyxy(BROKEN_BOXES, box_format), from_xyxy(PREDICTIONS, box_format)
    value, grad_true, grad_pred, indices = step(y_true, y_pred)
    assert np.isnan(value[0]) and np.all(np.isfinite(value[1:])), value
    np.testing.assert_array_equal(grad_true[0], np.zeros((2, 4)))
    np.testing.assert_array_equal(grad_pred[0], np.zeros((3, 4)))
    assert np.all(np.isfinite(grad_true[1:])) and np.all(np.isfinite(grad_pred[1:]))
    assert indices[0, 1] == -1 and indices[0, 0] >= 0  # the broken box is never matched
    assert np.all(indices[1:3] >= 0)
    # The rest of the batch trains as if the broken sample were not there.
    fixed = y_true.copy()
    fixed[0, 1] = PAD
    fixed_value, fixed_true, fixed_pred, _ = step(fixed, y_pred)
    np.testing.assert_array_equal(value[1:], fixed_value[1:])
    np.testing.assert_array_equal(grad_true[1:], fixed_true[1:])
    np.testing.assert_array_equal(grad_pred[1:], fixed_pred[1:])
    assert np.isfinite(fixed_value[0]) and np.any(fixed_pred[0])


@pytest.mark.parametrize("mode", MODES)
def test_negative_size_is_no_rule_for_a_cost_that_does_not_read_boxes(mode: str) -> None:
    # "l2" reads vectors: [0.5, 0.2, 0.4, 0.6] is four numbers, not a box.
    y_true, y_pred = BROKEN_BOXES[:2], PREDICTIONS[:2]
    value, _, grad, indices = outcome(per_sample(cost="l2"), y_true, y_pred, mode)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), value
    assert np.all(indices >= 0)


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_target_value_makes_its_sample_nan_with_no_gradient(mode: str) -> None:
    y_true = f32(
        [
            [GOOD, [0.1, INF, 0.5, 0.6]],
            [GOOD, [0.1, 0.2, -INF, 0.6]],
            [GOOD, [0.1, 0.2, 0.5, NAN]],
            [GOOD, [PAD] * 4],
        ]
    )
    for cost in ("l2", "giou"):
        value, grad_true, grad_pred, indices = outcome(
            per_sample(cost=cost), y_true, PREDICTIONS, mode
        )
        assert np.all(np.isnan(value[:3])) and np.isfinite(value[3]), (cost, value)
        assert not np.any(grad_true[:3]) and not np.any(grad_pred[:3]), cost
        assert np.all(np.isfinite(grad_pred[3])) and np.any(grad_pred[3]), cost
        np.testing.assert_array_equal(indices[:, 1], [-1, -1, -1, -1])


class NonNegativeChannels(HungarianLoss):
    """A rule of a layout of our own: every channel of a real target is >= 0."""

    def invalid_targets(self, y_true: Any, y_pred: Any) -> Any:
        negative = ops.any(y_true < 0.0, axis=-1)  # flags the padding rows too
        return ops.logical_or(super().invalid_targets(y_true, y_pred), negative)


@pytest.mark.parametrize("mode", MODES)
def test_invalid_targets_is_an_extension_point(mode: str) -> None:
    y_true = f32([[GOOD, [0.1, -0.2, 0.5, 0.6]], [GOOD, [PAD] * 4]])  # [2, 2, 4]
    y_pred = PREDICTIONS[:2]
    loss = NonNegativeChannels(reduction=None)
    value, grad_true, grad_pred, indices = outcome(loss, y_true, y_pred, mode)
    assert np.isnan(value[0]) and np.isfinite(value[1]), value  # padding rows are not targets
    assert not np.any(grad_true[0]) and not np.any(grad_pred[0])
    np.testing.assert_array_equal(indices[:, 1], [-1, -1])
    # Sets and one-to-many matching see the rule per problem.
    sets = np.stack([y_pred, y_pred[:, ::-1]], axis=1)  # [2, 2, 3, 4]
    loss = NonNegativeChannels(reduction=None, matches_per_target=2)
    value, *_ = outcome(loss, y_true, sets, mode)
    assert np.isnan(value[0]) and np.isfinite(value[1]), value


@pytest.mark.parametrize("mode", MODES)
def test_invalid_targets_of_the_wrong_shape_is_a_value_error(mode: str) -> None:
    class PerSample(HungarianLoss):
        def invalid_targets(self, y_true: Any, y_pred: Any) -> Any:
            return ops.any(y_true < 0.0, axis=(1, 2))  # [B], not [B, M]

    with pytest.raises(ValueError, match=r"invalid_targets.*\(2, 2\).*Received: shape=\(2,\)"):
        run(PerSample(), BROKEN_BOXES[:2], PREDICTIONS[:2], mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_target_dtype_that_cannot_hold_the_padding_value_is_a_value_error(mode: str) -> None:
    y_pred = PREDICTIONS[:1]
    pixels = np.array([[[10, 20, 50, 60], [255, 255, 255, 255]]], dtype="uint8")  # -1 wrapped
    loss = HungarianLoss()
    for fn in (loss, loss.call, loss.match):
        with pytest.raises(ValueError, match=r"y_true\.dtype=uint8.*float32.*padding_value"):
            run(fn, pixels, y_pred, mode=mode)
    with pytest.raises(ValueError, match=r"padding_value=-0\.5.*y_true\.dtype=int32"):
        run(HungarianLoss(padding_value=-0.5), pixels.astype("int32"), y_pred, mode=mode)
    # Integer targets that can hold it are fine, and so is uint8 without padding.
    expected = run(loss, pixels.astype("float32"), y_pred, mode=mode)
    assert np.isfinite(expected)
    for dtype in ("int32", "int16"):
        np.testing.assert_array_equal(run(loss, pixels.astype(dtype), y_pred, mode=mode), expected)
    unpadded = HungarianLoss(padding_value=None)
    assert np.isfinite(run(unpadded, pixels, y_pred, mode=mode))


# ------------------------- 9. DETRLoss's targets (issue 17): class ids and box sizes

COCO_K = 80  # a model of 80 classes, given COCO's category ids (1..90) unmapped
GOOD_ROW = [0.5, 0.5, 0.2, 0.2, 3.0]  # center_xywh, class id
# [6, 2, 5]: the second row of samples 0-4 is broken, sample 5 is good.
DETR_TARGETS = f32(
    [
        [GOOD_ROW, [0.3, 0.3, 0.1, 0.1, 90.0]],  # a COCO id out of 0..79
        [GOOD_ROW, [0.3, 0.3, 0.1, 0.1, 80.0]],  # K: the "no object" logit of softmax
        [GOOD_ROW, [0.3, 0.3, 0.1, 0.1, -1.0]],  # -1 on a row whose box is real
        [GOOD_ROW, [0.3, 0.3, 0.1, 0.1, 1.5]],  # a fractional id
        [GOOD_ROW, [0.3, 0.3, -0.1, 0.1, 2.0]],  # a box of negative width
        [GOOD_ROW, [0.3, 0.3, 0.1, 0.0, 79.0]],  # the last class, zero height: legal
    ]
)
DETR_KINDS = {
    "softmax": {"classification": "softmax"},
    "focal": {"classification": "focal"},
    "varifocal": {"classification": "varifocal"},
    "mal": {"classification": "mal"},
    "varifocal-denoising": {"classification": "varifocal", "denoising_groups": 1},
}


def detr_predictions(classification: str, queries: int) -> np.ndarray:
    """`[6, queries, 4 + K (+ 1)]`: boxes near the targets, ordinary logits."""
    rng = np.random.default_rng(7)
    depth = 4 + COCO_K + (1 if classification == "softmax" else 0)
    y_pred = rng.normal(size=(6, queries, depth)).astype("float32")
    y_pred[..., :2] = rng.uniform(0.2, 0.8, size=(6, queries, 2))
    y_pred[..., 2:4] = rng.uniform(0.05, 0.3, size=(6, queries, 2))
    return y_pred


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(DETR_KINDS))
def test_detr_broken_class_ids_and_boxes_make_their_sample_nan(kind: str, mode: str) -> None:
    options = DETR_KINDS[kind]
    loss = DETRLoss(reduction=None, **options)
    queries = 2 * 2 * options.get("denoising_groups", 0) + 3  # G * 2M denoising, then N = 3
    y_pred = detr_predictions(options["classification"], queries)
    step = compile_for(with_grads(loss), mode)  # one compile for both batches
    value, grad_true, grad_pred, indices = step(DETR_TARGETS, y_pred)
    assert np.all(np.isnan(value[:5])) and np.isfinite(value[5]), value
    np.testing.assert_array_equal(grad_true[:5], np.zeros_like(grad_true[:5]))
    np.testing.assert_array_equal(grad_pred[:5], np.zeros_like(grad_pred[:5]))
    assert np.all(np.isfinite(grad_pred[5])) and np.any(grad_pred[5])
    np.testing.assert_array_equal(indices[:, 1] >= 0, [False] * 5 + [True])  # never matched
    assert np.all(indices[:, 0] >= 0)
    # The good sample trains as if the broken targets were not there.
    fixed = DETR_TARGETS.copy()
    fixed[:5, 1] = PAD
    fixed_value, fixed_true, fixed_pred, _ = step(fixed, y_pred)
    assert np.all(np.isfinite(fixed_value)), fixed_value
    np.testing.assert_array_equal(value[5], fixed_value[5])
    np.testing.assert_array_equal(grad_true[5], fixed_true[5])
    np.testing.assert_array_equal(grad_pred[5], fixed_pred[5])


@pytest.mark.parametrize("kind", list(DETR_KINDS))
def test_detr_terms_are_non_finite_where_the_loss_is(kind: str) -> None:
    """`terms()` (and so `term_metrics()`) follows the failure policy: a broken target
    gives `NaN` terms, a `NaN` or an infinity in any query (one no target is matched to)
    gives `NaN` or `inf` terms, as the loss; the good sample's terms are unchanged."""
    options = DETR_KINDS[kind]
    loss = DETRLoss(reduction=None, **options)
    queries = 2 * 2 * options.get("denoising_groups", 0) + 3
    y_pred = detr_predictions(options["classification"], queries)
    terms = {name: to_numpy(term) for name, term in loss.terms(DETR_TARGETS, y_pred).items()}
    losses = to_numpy(loss(DETR_TARGETS, y_pred))
    for name, term in terms.items():  # DETR_TARGETS: samples 0-4 have a broken target
        assert np.all(np.isnan(term[:5])) and np.isfinite(term[5]), (name, term)
    assert np.all(np.isnan(losses[:5])) and np.isfinite(losses[5])
    fixed = DETR_TARGETS.copy()
    fixed[:, 1] = PAD  # only the good first row of each sample
    good = {name: to_numpy(term) for name, term in loss.terms(fixed, y_pred).items()}
    for name, term in good.items():
        assert np.all(np.isfinite(term)), (name, term)
    matched = to_numpy(loss.match(fixed, y_pred))[0]  # sample 0's queries with a target
    free = [q for q in range(queries) if q not in matched][-1]  # one without
    for value in (NAN, INF):
        broken = y_pred.copy()
        broken[0, free, 4] = value  # a class logit of a query no target is matched to
        terms = {name: to_numpy(term) for name, term in loss.terms(fixed, broken).items()}
        losses = to_numpy(loss(fixed, broken))
        for name, term in terms.items():
            if np.isnan(value):
                assert np.isnan(term[0]) and np.isnan(losses[0]), (name, term)
            else:
                assert term[0] == INF and losses[0] == INF, (name, term, losses)
            np.testing.assert_array_equal(term[1:], good[name][1:])


def test_a_plain_loss_with_a_class_cost_makes_bad_class_ids_nan() -> None:
    """The class-id rule of a class cost in any loss, not only `DETRLoss`: an id that is
    not an integer in `[0, C)`, C the logits from `logits_start` on, is never matched."""
    y_pred = detr_predictions("focal", 3)  # [6, 3, 4 + 80]: C = 80
    detr_like = WeightedCost([(ClassProbabilityCost(), 1.0), (L1Cost(channels=[0, 4]), 5.0)])
    loss = per_sample(cost=detr_like)
    # One mode, the cheaper one of the backend (the rule has no code of its own per mode;
    # JAX compiles op by op eagerly): a third of the time of both.
    mode = "compiled" if BACKEND == "jax" else "eager"
    value, grad_true, grad_pred, indices = outcome(loss, DETR_TARGETS, y_pred, mode)
    # Samples 0-3: ids 90, 80, -1 and 1.5; sample 4's negative width is no rule (no box
    # cost reads it), sample 5 is good.
    assert np.all(np.isnan(value[:4])) and np.all(np.isfinite(value[4:])), value
    assert not np.any(grad_true[:4]) and not np.any(grad_pred[:4])
    assert np.all(np.isfinite(grad_pred[4:])) and np.any(grad_pred[4:])
    np.testing.assert_array_equal(indices[:, 1] >= 0, [False] * 4 + [True] * 2)
    # The rule of each class cost the cost computes, in its own channels; none for a
    # class cost of weight 0 (it is not computed).
    ids_first = np.roll(DETR_TARGETS, 1, axis=-1)  # [class id, box]
    cases = [
        (FocalClassCost(class_index=0, logits_start=4), ids_first, [True] * 4 + [False] * 2),
        (WeightedCost([(detr_like, 1.0), ("l2", 1.0)]), DETR_TARGETS, [True] * 4 + [False] * 2),
        (WeightedCost([(ClassProbabilityCost(), 0.0), ("l1", 1.0)]), DETR_TARGETS, [False] * 6),
    ]
    for cost, y_true, expected in cases:
        invalid = to_numpy(per_sample(cost=cost).invalid_targets(y_true, y_pred))  # [6, 2]
        np.testing.assert_array_equal(invalid[:, 1], expected, err_msg=repr(cost))
        assert not np.any(invalid[:, 0]), repr(cost)


# ------------------------------------------------------------------- the property test

SPECIAL = [0.0, 1e-30, -1e-30, 1e20, -1e20, 3e38, -3e38, INF, -INF, NAN]
SIZES = [0.0, -1e-3, -1.0, 1e20, 3e38]  # box widths and heights: zero, negative, huge
BATCH, M, N, CLASSES = 8, 4, 3, 3  # M > N; padding rows make M <= N too

# Layout: y_true = [box (4), class id], y_pred = [box (4), CLASSES logits]; boxes in xyxy.
BOX = [0, 4]
READS_BOXES = {"iou", "giou", "diou", "ciou", "weighted"}  # negative-size target boxes: invalid
READS_CLASS_IDS = {"class_probability", "focal_class", "weighted"}  # ids not in 0..C-1: invalid
PROPERTY_COSTS = {
    "l1": L1Cost(channels=BOX),
    "l2": L2Cost(channels=BOX),
    "squared_l2": SquaredL2Cost(channels=BOX),
    "iou": IoUCost(),
    "giou": GIoUCost(),
    "diou": DIoUCost(),
    "ciou": CIoUCost(),
    "class_probability": ClassProbabilityCost(),
    "focal_class": FocalClassCost(),
    "weighted": WeightedCost(
        [(L1Cost(channels=BOX), 5.0), (GIoUCost(), 2.0), (ClassProbabilityCost(), 1.0)]
    ),
}


@functools.cache
def property_step(name: str) -> Callable[..., tuple[np.ndarray, ...]]:
    """Compiled once per cost: loss, gradients, matching and cost of one batch."""
    loss = per_sample(cost=PROPERTY_COSTS[name])
    grads = with_grads(loss)

    def step(t: Any, p: Any) -> tuple[Any, ...]:
        return (*grads(t, p), loss.cost_fn(t, p))

    return compile_for(step, "compiled")  # type: ignore[no-any-return]


@st.composite
def extreme_batches(
    draw: st.DrawFn, bad_class_ids: list[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`y_true [B, M, 5]`, `y_pred [B, N, 4 + C]`: ordinary values with extreme ones mixed
    in (about one in five), and a random number of padding rows per sample. Target
    boxes have ordinary sizes, or (one in ten) zero, negative or huge ones; class ids
    are 0, 1 or 2, or (one in four, if given) one of `bad_class_ids`."""

    def mixed(base: np.ndarray, special: list[float], one_in: int) -> np.ndarray:
        extreme = draw(hnp.arrays("float32", base.shape, elements=st.sampled_from(special)))
        which = draw(hnp.arrays("int8", base.shape, elements=st.integers(0, one_in - 1)))
        return np.where(which == 0, extreme, base).astype("float32")

    def values(shape: tuple[int, ...], ordinary: st.SearchStrategy[float]) -> np.ndarray:
        return mixed(draw(hnp.arrays("float32", shape, elements=ordinary)), SPECIAL, 5)

    # No subnormals: compiled XLA code flushes them to zero, so whether a box of
    # -5e-41 width is negative depends on the backend and the mode, not on the loss.
    box = st.floats(-2.0, 2.0, width=32, allow_subnormal=False)
    corners = draw(hnp.arrays("float32", (BATCH, M, 2), elements=box))
    size = st.floats(0.0, 2.0, width=32, allow_subnormal=False)
    ordinary_sizes = draw(hnp.arrays("float32", (BATCH, M, 2), elements=size))
    sizes = mixed(ordinary_sizes, SIZES, 10)
    y_true = np.concatenate([corners, corners + sizes, corners[..., :1]], axis=-1)  # [B, M, 5]
    y_true = mixed(y_true, SPECIAL, 5)
    y_true[..., 4] = values((BATCH, M), st.sampled_from([0.0, 1.0, 2.0]))
    if bad_class_ids:
        y_true[..., 4] = mixed(y_true[..., 4], bad_class_ids, 4)
    y_pred = values((BATCH, N, 4 + CLASSES), box)
    counts = draw(hnp.arrays("int8", (BATCH,), elements=st.integers(0, M)))
    y_true[np.arange(M)[None, :] >= counts[:, None]] = PAD
    return y_true, y_pred


def max_matching(allowed: np.ndarray) -> int:
    """Size of a maximum matching on the allowed pairs of `[M, N]`."""
    if allowed.size == 0:
        return 0
    rows, cols = scipy.optimize.linear_sum_assignment(-allowed.astype("float64"))
    return int(allowed[rows, cols].sum())


def check_policy(
    y_true: np.ndarray, y_pred: np.ndarray, outputs: tuple[np.ndarray, ...], name: str
) -> None:
    value, grad_true, grad_pred, indices, cost = outputs
    real = ~np.all(y_true == PAD, axis=-1)  # [B, M]
    finite_true = np.all(np.isfinite(y_true), axis=-1)  # [B, M]
    finite_pred = np.all(np.isfinite(y_pred), axis=-1)  # [B, N]
    valid_true = finite_true.copy()  # [B, M]: the targets no rule of the data flags
    if name in READS_BOXES:
        negative = (y_true[..., 2] < y_true[..., 0]) | (y_true[..., 3] < y_true[..., 1])
        valid_true &= ~negative
    if name in READS_CLASS_IDS:
        ids = y_true[..., 4]
        with np.errstate(invalid="ignore"):
            valid_true &= (ids == np.round(ids)) & (ids >= 0) & (ids <= CLASSES - 1)
    for b in range(BATCH):
        where = f"{name}, sample {b}: loss {value[b]}, indices {indices[b]}"
        # The matching is a valid partial matching of real targets on allowed pairs only ...
        assert_is_matching(indices[b], N)
        assert np.all(indices[b][~real[b]] == -1), where
        allowed = (
            real[b][:, None]
            & valid_true[b][:, None]
            & finite_pred[b][None, :]
            & np.isfinite(cost[b])
        )  # [M, N]
        rows = np.flatnonzero(indices[b] >= 0)
        assert np.all(allowed[rows, indices[b][rows]]), where
        # ... and matches as many targets as the allowed pairs can.
        assert len(rows) == max_matching(allowed), where
        # A broken real target, or NaN in a prediction or a usable cost => NaN; a target
        # left unmatched although it could be => inf.
        nan_input = (~valid_true[b] & real[b]).any() or (
            real[b].any() and np.isnan(y_pred[b]).any()
        )
        nan_cost = np.isnan(cost[b][real[b][:, None] & valid_true[b][:, None] & finite_pred[b]])
        forced = len(rows) < min(real[b].sum(), N)
        if nan_input or nan_cost.any():
            assert np.isnan(value[b]), where
        elif forced:
            assert value[b] == INF, where
        else:
            # Otherwise the loss is the mean matched cost, finite.
            expected = cost[b][rows, indices[b][rows]].astype("float64")
            expected = expected.mean() if len(rows) else 0.0
            assert np.isfinite(value[b]), where
            np.testing.assert_allclose(value[b], expected, rtol=1e-4, atol=1e-5, err_msg=where)
        # Finite loss => finite gradients; a broken sample adds no gradient; no target =>
        # loss 0 and no gradient.
        if np.isfinite(value[b]):
            assert np.all(np.isfinite(grad_pred[b])), where
            assert np.all(np.isfinite(grad_true[b])), where
        else:
            assert not np.any(grad_pred[b]) and not np.any(grad_true[b]), where
        if not real[b].any():
            assert value[b] == 0.0 and not np.any(grad_pred[b]), where


@pytest.mark.parametrize("name", list(PROPERTY_COSTS))
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=extreme_batches())
def test_failure_policy_holds_for_every_builtin_cost(
    name: str, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    y_true, y_pred = batch
    check_policy(y_true, y_pred, property_step(name)(y_true, y_pred), name)


# DETRLoss: class ids in and out of range, negative, fractional, huge; boxes in xyxy.
DETR_PROPERTY_KINDS = {"softmax": CLASSES - 1, "focal": CLASSES}  # classification: K
BAD_CLASS_IDS = [3.0, 90.0, -1.0, -2.0, 1.5, 0.5, 1e20]


@functools.cache
def detr_property_step(classification: str) -> Callable[..., tuple[np.ndarray, ...]]:
    """Compiled once per kind: loss, gradients and matching of one batch."""
    loss = DETRLoss(reduction=None, classification=classification, box_format="xyxy")
    return compile_for(with_grads(loss), "compiled")  # type: ignore[no-any-return]


def check_detr_policy(
    y_true: np.ndarray, y_pred: np.ndarray, outputs: tuple[np.ndarray, ...], num_classes: int
) -> None:
    value, grad_true, grad_pred, indices = outputs
    real = ~np.all(y_true == PAD, axis=-1)  # [B, M]
    ids = y_true[..., 4]
    with np.errstate(invalid="ignore"):
        good_id = (ids == np.round(ids)) & (ids >= 0) & (ids <= num_classes - 1)
        negative = (y_true[..., 2] < y_true[..., 0]) | (y_true[..., 3] < y_true[..., 1])
    finite_true = np.all(np.isfinite(y_true), axis=-1)
    invalid = real & (~finite_true | negative | ~good_id)  # [B, M]
    for b in range(BATCH):
        where = f"K={num_classes}, sample {b}: loss {value[b]}, indices {indices[b]}"
        assert_is_matching(indices[b], N)
        assert np.all(indices[b][~real[b] | invalid[b]] == -1), where
        if invalid[b].any():  # a broken target: NaN
            assert np.isnan(value[b]), where
        elif not np.isnan(y_pred[b]).any():  # nothing else can make NaN
            assert not np.isnan(value[b]), where
        if np.isfinite(value[b]):
            assert np.all(np.isfinite(grad_pred[b])) and np.all(np.isfinite(grad_true[b])), where
        else:  # a broken sample adds no gradient
            assert not np.any(grad_pred[b]) and not np.any(grad_true[b]), where


@pytest.mark.parametrize("classification", list(DETR_PROPERTY_KINDS))
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=extreme_batches(bad_class_ids=BAD_CLASS_IDS))
def test_failure_policy_holds_for_detr_class_ids_and_boxes(
    classification: str, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    y_true, y_pred = batch
    outputs = detr_property_step(classification)(y_true, y_pred)
    check_detr_policy(y_true, y_pred, outputs, DETR_PROPERTY_KINDS[classification])


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_a_loss_that_overflows_adds_no_gradient(mode: str) -> None:
    """Finite logits of 3e38 overflow the focal term to `inf`: that sample adds no
    gradient (it added 0.75 per logit), and the ordinary sample beside it does."""
    loss = DETRLoss(reduction=None, classification="focal", box_format="xyxy")
    y_true = np.full((2, 1, 5), PAD, "float32")  # sample 0: no targets
    y_true[1, 0] = [0.1, 0.1, 0.5, 0.5, 1.0]
    y_pred = np.full((2, 3, 4 + CLASSES), 3e38, "float32")
    y_pred[1] = 0.5
    value, _, grad_pred, _ = run(with_grads(loss), y_true, y_pred, mode=mode)
    assert value[0] == np.inf and not np.any(grad_pred[0])
    assert np.isfinite(value[1]) and np.all(np.isfinite(grad_pred[1])) and np.any(grad_pred[1])


@pytest.mark.parametrize("mode", MODES)
def test_detr_row_check_finds_infinite_and_nan_rows(mode: str) -> None:
    """The row check of `DETRLoss`: rows with an infinity, with a NaN, with both, with
    finite extremes (3e38, -0.0, subnormals); every row finite (the row sums' path);
    finite rows whose sums overflow (the exact path again); and no rows."""
    from hungarian_loss.detr._loss import _broken_rows

    rng = np.random.default_rng(7)
    clean = rng.normal(size=(3, 40, 84)).astype("float32")
    x = clean.copy()
    rows = rng.permutation(np.arange(1, 3 * 40))[:24].reshape(4, 6)  # four kinds, six each
    places = rng.integers(0, 84, size=(4, 6))
    flat = x.reshape(-1, 84)
    flat[rows[0], places[0]] = np.inf
    flat[rows[1], places[1]] = -np.inf
    flat[rows[2], places[2]] = np.nan
    flat[rows[3], places[3]] = np.nan
    flat[rows[3], (places[3] + 1) % 84] = -np.inf
    flat[0, :] = [3e38, -3e38, -0.0, 1e-45] * 21  # finite extremes: a finite row
    overflow = clean.copy()
    overflow[1, 7, :] = 3e38  # finite, but its sum is infinite
    overflow[2, 0, :] = -3e38
    for values in (clean, overflow, x):
        finite, nan = run(_broken_rows, values, mode=mode)
        np.testing.assert_array_equal(finite, np.all(np.isfinite(values), axis=-1))
        np.testing.assert_array_equal(nan, np.any(np.isnan(values), axis=-1))
    assert finite.sum() == 3 * 40 - 24 and nan.sum() == 12  # of `x`, the last
    empty_finite, empty_nan = run(_broken_rows, np.zeros((2, 0, 84), "float32"), mode=mode)
    assert empty_finite.shape == empty_nan.shape == (2, 0)
