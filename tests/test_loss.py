"""HungarianLoss and hungarian_loss: values, reductions, gradients, padding, errors, config."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import scipy.optimize
from helpers import compiled, gradient, jit

from hungarian_loss import DETRLoss, HungarianLoss, hungarian_loss
from hungarian_loss.costs import ClassProbabilityCost, L1Cost, WeightedCost
from hungarian_loss.loss import _check_class_id_dtype

# The upstream README's worked example.
Y_TRUE = np.array([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]], "float32")
Y_PRED = np.array([[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]], "float32")
UPSTREAM_LOSS = 6.50763825


def reference_per_sample(y_true: np.ndarray, y_pred: np.ndarray, pad: float = -1.0) -> np.ndarray:
    """Per-sample Hungarian loss with the Euclidean cost, by SciPy, in float64."""
    out = []
    for t, p in zip(y_true.astype("float64"), y_pred.astype("float64"), strict=True):
        t = t[~np.all(t == pad, axis=1)]
        if len(t) == 0:
            out.append(0.0)
            continue
        cost = np.linalg.norm(t[:, None, :] - p[None, :, :], axis=-1)
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        out.append(cost[rows, cols].mean())
    return np.array(out)


def random_targets(rng: np.random.Generator, batch: int, m: int, d: int = 4) -> np.ndarray:
    y_true = rng.uniform(size=(batch, m, d)).astype("float32")
    counts = rng.integers(0, m + 1, size=batch)
    counts[0] = 0  # one sample without targets
    for b, count in enumerate(counts):
        y_true[b, count:] = -1.0
    return y_true


def test_upstream_worked_example() -> None:
    for loss in (HungarianLoss(), HungarianLoss(cost="l2")):
        assert float(loss(Y_TRUE, Y_PRED)) == pytest.approx(UPSTREAM_LOSS, abs=1e-5)
        assert float(loss(Y_TRUE, Y_PRED[:, ::-1])) == pytest.approx(UPSTREAM_LOSS, abs=1e-5)
    per_sample = np.asarray(hungarian_loss(Y_TRUE, Y_PRED))
    assert per_sample.shape == (1,)
    assert per_sample[0] == pytest.approx(UPSTREAM_LOSS, abs=1e-5)
    reversed_ = np.asarray(hungarian_loss(Y_TRUE, Y_PRED[:, ::-1]))
    assert reversed_[0] == pytest.approx(UPSTREAM_LOSS, abs=1e-5)
    np.testing.assert_array_equal(np.asarray(HungarianLoss().match(Y_TRUE, Y_PRED)), [[0, 1]])


def test_matches_scipy_reference_with_padding_and_more_predictions() -> None:
    rng = np.random.default_rng(0)
    y_true = random_targets(rng, 16, 5)
    y_pred = rng.uniform(size=(16, 8, 4)).astype("float32")
    ours = np.asarray(jit(hungarian_loss)(y_true, y_pred))
    np.testing.assert_allclose(ours, reference_per_sample(y_true, y_pred), rtol=1e-5, atol=1e-6)
    assert ours[0] == 0.0


def test_more_targets_than_predictions_averages_over_matched_pairs() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.uniform(size=(4, 6, 4)).astype("float32")
    y_pred = rng.uniform(size=(4, 3, 4)).astype("float32")
    ours = np.asarray(hungarian_loss(y_true, y_pred))
    indices = np.asarray(HungarianLoss().match(y_true, y_pred))
    for b in range(4):
        cost = np.linalg.norm(y_true[b][:, None] - y_pred[b][None], axis=-1).astype("float64")
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        assert ours[b] == pytest.approx(cost[rows, cols].mean(), rel=1e-5)
        assert (indices[b] >= 0).sum() == 3


def test_padding_value_none_counts_every_row() -> None:
    y_true = np.concatenate([Y_TRUE, -np.ones((1, 1, 4), "float32")], axis=1)
    y_pred = np.concatenate([Y_PRED, np.zeros((1, 1, 4), "float32")], axis=1)
    padded = float(HungarianLoss()(y_true, y_pred))
    unpadded = float(HungarianLoss(padding_value=None)(y_true, y_pred))
    assert padded == pytest.approx(UPSTREAM_LOSS, abs=1e-5)
    # Without padding, the row of -1 is a target matched to the zero box: distance 2.
    assert unpadded == pytest.approx((3.7416575 + 9.273619 + 2.0) / 3, abs=1e-5)


@pytest.mark.parametrize(
    "reduction", ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None]
)
def test_reductions_and_sample_weight(reduction: str | None) -> None:
    rng = np.random.default_rng(2)
    y_true = random_targets(rng, 6, 4)
    y_pred = rng.uniform(size=(6, 5, 4)).astype("float32")
    weight = rng.uniform(0.5, 2.0, size=6).astype("float32")
    per_sample = reference_per_sample(y_true, y_pred)
    weighted = per_sample * weight
    expected = {
        "sum_over_batch_size": weighted.sum() / 6,
        "mean": weighted.sum() / 6,
        "sum": weighted.sum(),
        "mean_with_sample_weight": weighted.sum() / weight.sum(),
        "none": weighted,
        None: weighted,
    }[reduction]
    loss = HungarianLoss(reduction=reduction)
    got = np.asarray(loss(y_true, y_pred, sample_weight=weight))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    unweighted = np.asarray(loss(y_true, y_pred))
    if reduction in ("none", None):
        np.testing.assert_allclose(unweighted, per_sample, rtol=1e-5)
    else:
        assert unweighted.shape == ()


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(3)
    y_true = random_targets(rng, 3, 3)
    y_true[0, :2] = rng.uniform(size=(2, 4))  # the first sample keeps two targets
    y_pred = rng.uniform(size=(3, 5, 4)).astype("float32")
    loss = HungarianLoss(reduction="sum")
    grad = gradient(lambda p: loss(y_true, p), y_pred)
    assert grad.shape == y_pred.shape
    value = jit(lambda p: loss(y_true, p))
    step = 1e-3  # float32: central differences, error O(step^2) plus rounding / step
    numeric = np.zeros_like(y_pred)
    for index in np.ndindex(*y_pred.shape):
        up, down = y_pred.copy(), y_pred.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (float(value(up)) - float(value(down))) / (2 * step)
    np.testing.assert_allclose(grad, numeric, atol=2e-3)
    # Unmatched predictions, and every prediction of a sample without targets: no gradient.
    indices = np.asarray(loss.match(y_true, y_pred))
    for b in range(3):
        unmatched = np.setdiff1d(np.arange(5), indices[b][indices[b] >= 0])
        assert np.all(grad[b, unmatched] == 0.0)
        if np.all(indices[b] < 0):
            assert np.all(grad[b] == 0.0)
    assert np.any(grad != 0.0)


def test_matched_pairs_of_built_in_and_custom_costs_agree() -> None:
    # A built-in cost is computed on the matched pairs by its elementwise form, any other
    # cost as one problem per pair: the same loss and gradients either way.
    rng = np.random.default_rng(4)
    y_true = random_targets(rng, 4, 3)
    y_pred = rng.uniform(size=(4, 2, 5, 4)).astype("float32")  # two prediction sets
    for name in ("l2", {"l1": 5.0, "giou": 2.0}):
        built_in = HungarianLoss(cost=name, box_format="center_xywh", reduction="sum")
        wrapped = HungarianLoss(
            cost=lambda t, p, cost=built_in.pairwise_cost: cost(t, p),
            box_format="center_xywh",
            reduction="sum",
        )
        for loss in (built_in, wrapped):
            np.testing.assert_array_equal(
                np.asarray(loss.match(y_true, y_pred)), np.asarray(built_in.match(y_true, y_pred))
            )
        np.testing.assert_allclose(
            float(built_in(y_true, y_pred)), float(wrapped(y_true, y_pred)), rtol=1e-6
        )
        np.testing.assert_allclose(
            gradient(lambda p, loss=built_in: loss(y_true, p), y_pred),
            gradient(lambda p, loss=wrapped: loss(y_true, p), y_pred),
            rtol=1e-5,
            atol=1e-6,
        )


def test_sample_without_targets_has_zero_loss_and_gradient() -> None:
    y_true = -np.ones((2, 3, 4), "float32")
    y_pred = np.zeros((2, 4, 4), "float32")  # identical to each other: zero distances everywhere
    loss = HungarianLoss(cost="giou", reduction="none")
    np.testing.assert_array_equal(np.asarray(loss(y_true, y_pred)), [0.0, 0.0])
    grad = gradient(lambda p: loss(y_true, p), y_pred)
    assert np.all(grad == 0.0)
    np.testing.assert_array_equal(np.asarray(loss.match(y_true, y_pred)), -np.ones((2, 3)))


def test_zero_distance_gives_finite_gradient() -> None:
    y_pred = np.concatenate([Y_TRUE, Y_TRUE + 1.0], axis=1)
    grad = gradient(lambda p: hungarian_loss(Y_TRUE, p), y_pred)
    assert np.all(np.isfinite(grad))


def test_nan_prediction_gives_nan_loss() -> None:
    y_pred = Y_PRED.copy()
    y_pred[0, 1, 2] = np.nan
    value = np.asarray(jit(hungarian_loss)(Y_TRUE, y_pred))
    assert np.isnan(value[0])
    # Other samples of the batch keep their value.
    batch_true = np.concatenate([Y_TRUE, Y_TRUE])
    batch_pred = np.concatenate([y_pred, Y_PRED])
    value = np.asarray(hungarian_loss(batch_true, batch_pred))
    assert np.isnan(value[0]) and value[1] == pytest.approx(UPSTREAM_LOSS, abs=1e-5)


def test_float16_inputs_give_float32_loss() -> None:
    value = HungarianLoss()(Y_TRUE.astype("float16"), Y_PRED.astype("float16"))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert float(value) == pytest.approx(UPSTREAM_LOSS, abs=1e-2)


# ----- several prediction sets, one-to-many matching ------------------------------------------


def reference_one_to_many(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Per-sample loss with every real target repeated k times (Euclidean cost), by SciPy."""
    out = []
    for t, p in zip(y_true.astype("float64"), y_pred.astype("float64"), strict=True):
        t = np.repeat(t[~np.all(t == -1.0, axis=1)], k, axis=0)
        cost = np.linalg.norm(t[:, None, :] - p[None, :, :], axis=-1)
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        out.append(cost[rows, cols].mean() if len(rows) else 0.0)
    return np.array(out)


def test_sets_equal_the_mean_of_separate_calls_in_one_solver_call() -> None:
    rng = np.random.default_rng(5)
    y_true = random_targets(rng, 5, 4)
    y_pred = rng.uniform(size=(5, 3, 6, 4)).astype("float32")  # [B, S, N, D]
    loss = HungarianLoss(reduction="none")
    separate = np.stack([np.asarray(loss(y_true, y_pred[:, s])) for s in range(3)], axis=1)
    together = compiled(lambda t, p: loss(t, p), y_true, y_pred)  # unknown batch size on TF
    assert together.shape == (5,)
    np.testing.assert_allclose(together, separate.mean(axis=1), rtol=0, atol=1e-6)
    reference = np.mean([reference_per_sample(y_true, y_pred[:, s]) for s in range(3)], axis=0)
    np.testing.assert_allclose(together, reference, rtol=1e-5, atol=1e-6)
    indices = np.asarray(loss.match(y_true, y_pred))
    assert indices.shape == (5, 3, 4)
    for s in range(3):
        np.testing.assert_array_equal(indices[:, s], np.asarray(loss.match(y_true, y_pred[:, s])))
    weighted = HungarianLoss(reduction="none", set_weights=[1.0, 0.0, 3.0])
    np.testing.assert_allclose(
        np.asarray(weighted(y_true, y_pred)),
        (separate[:, 0] + 3.0 * separate[:, 2]) / 4.0,
        rtol=0,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="one weight per prediction set"):
        HungarianLoss(set_weights=[1.0, 2.0])(y_true, y_pred)
    with pytest.raises(ValueError, match="rank 4"):
        HungarianLoss(set_weights=[1.0, 2.0])(y_true, y_pred[:, 0])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_one_to_many_matches_each_target_k_times(k: int) -> None:
    # 3 real targets at most, 6 predictions: M * k <= N for k = 1, 2; M * k > N for k = 3.
    rng = np.random.default_rng(6)
    y_true = random_targets(rng, 6, 3)
    y_true[1] = rng.uniform(size=(3, 4))  # one sample with all three targets
    y_pred = rng.uniform(size=(6, 6, 4)).astype("float32")
    loss = HungarianLoss(reduction="none", matches_per_target=k)
    ours = np.asarray(loss(y_true, y_pred))
    np.testing.assert_allclose(ours, reference_one_to_many(y_true, y_pred, k), rtol=1e-5, atol=1e-6)
    indices = np.asarray(loss.match(y_true, y_pred))
    assert indices.shape == ((6, 3) if k == 1 else (6, 3, k))
    indices = indices.reshape(6, -1)
    for b in range(6):
        matched = indices[b][indices[b] >= 0]
        assert len(np.unique(matched)) == len(matched)  # k distinct predictions per target
        real = int(np.sum(~np.all(y_true[b] == -1.0, axis=1)))
        assert len(matched) == min(real * k, 6)
    if k == 1:
        np.testing.assert_array_equal(
            ours, np.asarray(HungarianLoss(reduction="none")(y_true, y_pred))
        )
    # Combined with sets: the mean over sets of the one-to-many losses.
    sets = np.stack([y_pred, y_pred[:, ::-1] ** 2], axis=1)  # [B, 2, N, D]
    np.testing.assert_allclose(
        np.asarray(loss(y_true, sets)),
        (ours + np.asarray(loss(y_true, sets[:, 1]))) / 2,
        rtol=0,
        atol=1e-6,
    )
    assert np.asarray(loss.match(y_true, sets)).shape == ((6, 2, 3) if k == 1 else (6, 2, 3, k))


# ----- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cost": "l3"}, "l3"),
        ({"cost": {"l1": -1.0}}, "l1"),
        ({"cost": {"l1": 0.0, "giou": 0.0}}, "weight"),
        ({"box_format": "xyz"}, "xyz"),
        ({"reduction": "average"}, "reduction"),
        ({"padding_value": "pad"}, "padding_value"),
        ({"matches_per_target": 0}, "matches_per_target"),
        ({"matches_per_target": 1.5}, "matches_per_target"),
        ({"set_weights": []}, "set_weights"),
        ({"set_weights": [1.0, -1.0]}, "set_weights"),
        ({"set_weights": [0.0, 0.0]}, "set_weights"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HungarianLoss(**kwargs)


def test_bad_inputs_raise_clear_errors() -> None:
    loss = HungarianLoss()
    with pytest.raises(ValueError, match="y_true` of rank 3"):
        loss(Y_TRUE[0], Y_PRED)
    with pytest.raises(ValueError, match="y_pred` of rank 3"):
        loss(Y_TRUE, Y_PRED[..., None, None])  # rank 4 is sets of predictions, 5 is wrong
    with pytest.raises(ValueError, match="batch size"):
        loss(np.concatenate([Y_TRUE, Y_TRUE]), Y_PRED)
    with pytest.raises(ValueError, match="y_pred"):
        loss(Y_TRUE, Y_PRED[:, :, :3])  # feature sizes differ
    with pytest.raises(ValueError, match="4"):
        HungarianLoss(cost="giou")(Y_TRUE[:, :, :3], Y_PRED[:, :, :3])  # not boxes


def test_integer_targets_that_cannot_hold_the_class_ids_raise_at_trace_time() -> None:
    """An int8 `y_true` holds class ids up to 127: with 200 classes the others wrapped
    around before the loss saw them. Every loss whose cost reads class ids says so."""
    y_true = np.array([[[0, 0, 2, 2, 1], [-1, -1, -1, -1, -1]]], "int8")
    y_pred = np.zeros((1, 2, 4 + 200), "float32")  # 200 logits from channel 4 on
    cost = WeightedCost([(ClassProbabilityCost(), 1.0), (L1Cost(channels=[0, 4]), 5.0)])
    loss = HungarianLoss(cost=cost)
    message = r"class ids 0\.\.199 .*Received: y_true\.dtype=int8, .*127.*int32"
    # Compiled: raised while tracing (torch's suite runs compiled code eagerly: conftest.py).
    traced = [] if keras.backend.backend() == "torch" else [jit(loss)]
    for fn in (loss, loss.match, *traced):
        with pytest.raises(ValueError, match=message):
            fn(y_true, y_pred)
    loss._check_target_dtypes(y_true.astype("int16"), y_pred)  # int16 holds them: no error
    # DETRLoss's matching cost reads the class ids of its packed [B, M, 5] targets too.
    for classification, depth in (("softmax", 4 + 200 + 1), ("focal", 4 + 200)):
        detr = DETRLoss(classification=classification)
        with pytest.raises(ValueError, match=r"class ids 0\.\.\d+ .*y_true\.dtype=int8"):
            detr(y_true, np.zeros((1, 2, depth), "float32"))
    # The check itself, for other callers (say, the labels of dict targets).
    for dtype, num_classes in (("int8", 128), ("uint8", 256), ("bool", 2), ("float16", 10**6)):
        _check_class_id_dtype(dtype, num_classes, "labels")
    with pytest.raises(ValueError, match=r"class ids 0\.\.2 .*labels\.dtype=bool"):
        _check_class_id_dtype("bool", 3, "labels")


# ----- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"cost": "giou", "box_format": "center_xywh", "padding_value": None},
        {"cost": {"l1": 5.0, "giou": 2.0}, "reduction": "sum", "name": "detr_boxes"},
        {"cost": "squared_l2", "padding_value": 0.0, "dtype": "float64"},
        {"matches_per_target": 3, "set_weights": [0.5, 1.0]},
    ],
)
def test_config_round_trip(kwargs: dict) -> None:
    loss = HungarianLoss(**kwargs)
    config = loss.get_config()
    assert set(config) == {
        "name", "reduction", "dtype", "cost", "box_format", "padding_value",
        "matches_per_target", "set_weights",
    }  # fmt: skip
    clone = HungarianLoss.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    )
    assert isinstance(revived, HungarianLoss)
    assert revived.get_config() == config
    rng = np.random.default_rng(4)
    y_true = random_targets(rng, 4, 3)
    y_pred = rng.uniform(size=(4, 4, 4)).astype("float32")
    if loss.set_weights is not None:  # two sets of predictions
        y_pred = np.stack([y_pred, y_pred[:, ::-1] ** 2], axis=1)
    np.testing.assert_allclose(
        np.asarray(revived(y_true, y_pred)), np.asarray(loss(y_true, y_pred)), rtol=1e-6
    )


def test_function_form_serializes_by_name() -> None:
    config = keras.saving.serialize_keras_object(hungarian_loss)
    assert keras.saving.deserialize_keras_object(json.loads(json.dumps(config))) is hungarian_loss


def test_unregistered_callable_cost_fails_on_serialization_with_the_fix() -> None:
    def my_cost(y_true, y_pred):  # type: ignore[no-untyped-def]
        return keras.ops.sum(keras.ops.abs(y_true[:, :, None] - y_pred[:, None]), axis=-1)

    loss = HungarianLoss(cost=my_cost)
    assert float(loss(Y_TRUE, Y_PRED)) > 0.0  # it works as a loss
    with pytest.raises(ValueError, match="register"):
        loss.get_config()
