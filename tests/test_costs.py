"""Tests of hungarian_loss.costs: values, gradients, combinations, registry, config."""

from __future__ import annotations

import itertools
import json
import math

import keras
import numpy as np
import pytest
import scipy.optimize
from helpers import compiled, np_from_xyxy, value_and_grads
from keras import ops

from hungarian_loss import HungarianLoss
from hungarian_loss.boxes import BOX_FORMATS
from hungarian_loss.costs import (
    CIoUCost,
    ClassProbabilityCost,
    DiceCost,
    DIoUCost,
    FocalClassCost,
    GIoUCost,
    IoUCost,
    L1Cost,
    L2Cost,
    MaskBCECost,
    MaskFocalCost,
    PairwiseCost,
    SquaredL2Cost,
    WeightedCost,
    _elementwise_cost,
    get_cost,
    register_cost,
    serialize_cost,
)

# ----------------------------------------------------------------------------- helpers


def value_and_grad(fn, y_true, y_pred):
    """fn(y_true, y_pred) and the gradient of its sum with respect to y_pred, as NumPy."""
    value, (grad,) = value_and_grads(lambda p: fn(y_true, p), y_pred)
    return value, grad


def brute_force(pair_cost, y_true, y_pred):
    """cost[b, i, j] = pair_cost(y_true[b, i], y_pred[b, j]), by loops in float64."""
    y_true, y_pred = np.asarray(y_true, "float64"), np.asarray(y_pred, "float64")
    batch, m, n = y_true.shape[0], y_true.shape[1], y_pred.shape[1]
    out = np.zeros((batch, m, n))
    for b, i, j in itertools.product(range(batch), range(m), range(n)):
        out[b, i, j] = pair_cost(y_true[b, i], y_pred[b, j])
    return out


def ref_l1(t, p):
    return np.sum(np.abs(t[:4] - p[:4]))


def ref_squared_l2(t, p):
    return np.sum((t[:4] - p[:4]) ** 2)


def ref_l2(t, p):
    return np.sqrt(ref_squared_l2(t, p))


def ref_iou_giou(t, p):
    """IoU and GIoU of the xyxy boxes t[:4] and p[:4], by the definitions."""

    def area(x):
        return max(x[2] - x[0], 0.0) * max(x[3] - x[1], 0.0)

    inter = max(min(t[2], p[2]) - max(t[0], p[0]), 0) * max(min(t[3], p[3]) - max(t[1], p[1]), 0)
    union = area(t) + area(p) - inter
    enclosing = max(max(t[2], p[2]) - min(t[0], p[0]), 0) * max(
        max(t[3], p[3]) - min(t[1], p[1]), 0
    )
    iou = inter / union if union > 1e-7 else 0.0
    return iou, iou - (enclosing - union) / enclosing if enclosing > 1e-7 else iou


def ref_diou_ciou(t, p):
    """DIoU and CIoU of the xyxy boxes t[:4] and p[:4], by the definitions (the enclosing
    box spans every corner; a box with both sides <= 1e-7 has the aspect angle 0)."""
    iou = ref_iou_giou(t, p)[0]
    distance = np.sum(((t[:2] + t[2:4]) / 2 - (p[:2] + p[2:4]) / 2) ** 2)
    lowest = np.minimum(np.minimum(t[:2], t[2:4]), np.minimum(p[:2], p[2:4]))
    highest = np.maximum(np.maximum(t[:2], t[2:4]), np.maximum(p[:2], p[2:4]))
    diagonal = np.sum((highest - lowest) ** 2)
    diou = iou - (distance / diagonal if diagonal > 1e-7 else 0.0)

    def angle(x):
        width, height = max(x[2] - x[0], 0.0), max(x[3] - x[1], 0.0)
        return math.atan2(width, height) if max(width, height) > 1e-7 else 0.0

    v = 4 / math.pi**2 * (angle(t) - angle(p)) ** 2
    alpha = v / (1 - iou + v) if 1 - iou + v > 1e-7 else 0.0
    return diou, diou - alpha * v


def ref_class_probability(t, p):
    logits = p[4:]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    c = round(t[4])
    return -probabilities[c] if 0 <= c < len(logits) else 0.0


def ref_focal(t, p, alpha=0.25, gamma=2.0):
    c = round(t[4])
    if not 0 <= c < len(p) - 4:
        return 0.0
    prob = 1.0 / (1.0 + np.exp(-p[4 + c]))
    positive = alpha * (1 - prob) ** gamma * -np.log(prob + 1e-8)
    negative = (1 - alpha) * prob**gamma * -np.log(1 - prob + 1e-8)
    return positive - negative


def random_items(seed=0, batch=2, m=3, n=5, num_classes=3):
    """y_true [batch, m, 5] = [xyxy box, class id]; y_pred [batch, n, 4 + C] = [box, logits].

    Some boxes are inverted (x2 < x1 or y2 < y1); some class ids are the padding -1.
    """
    rng = np.random.default_rng(seed)

    def boxes(k):
        corner = rng.uniform(0.0, 10.0, size=(batch, k, 2))
        return np.concatenate([corner, corner + rng.uniform(-1.0, 5.0, (batch, k, 2))], -1)

    classes = rng.integers(-1, num_classes, size=(batch, m, 1))
    logits = rng.normal(0.0, 3.0, size=(batch, n, num_classes))
    y_true = np.concatenate([boxes(m), classes], axis=-1).astype("float32")
    y_pred = np.concatenate([boxes(n), logits], axis=-1).astype("float32")
    return y_true, y_pred


Y_TRUE, Y_PRED = random_items()
DETR = [(ClassProbabilityCost(), 1.0), (L1Cost(channels=[0, 4]), 5.0), (GIoUCost(), 2.0)]

# ----------------------------------------------------------------------------- values


def test_upstream_euclidean_example():
    y_true = np.array([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]], dtype="float32")
    y_pred = np.array([[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]], dtype="float32")
    cost = np.asarray(get_cost("l2")(y_true, y_pred))
    np.testing.assert_allclose(cost, [[[3.7416575, 2.449489], [11.224972, 9.273619]]], rtol=1e-6)


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_hand_derived_giou_and_iou_costs_in_every_format(box_format):
    box = np_from_xyxy([[[0, 0, 100, 100]]], box_format)
    others = np_from_xyxy(
        [[[0, 0, 100, 100], [0, 0, 50, 50], [100, 0, 200, 100], [100, 100, 200, 200]]],
        box_format,
    )
    giou = np.asarray(get_cost("giou", box_format=box_format)(box, others))
    iou = np.asarray(IoUCost(box_format)(box, others))
    np.testing.assert_allclose(giou, [[[0.0, 0.75, 1.0, 1.5]]], atol=1e-6)
    np.testing.assert_allclose(iou, [[[0.0, 0.75, 1.0, 1.0]]], atol=1e-6)
    # DIoU penalties d^2 / c^2: 0, 1250 / 20000, 10000 / 50000, 20000 / 80000; the boxes
    # are squares, so CIoU's aspect term is 0.
    expected = [[[0.0, 0.8125, 1.2, 1.25]]]
    for name in ("diou", "ciou"):
        value = np.asarray(get_cost(name, box_format=box_format)(box, others))
        np.testing.assert_allclose(value, expected, atol=1e-6)


def test_ciou_cost_is_one_minus_keras_compute_ciou():
    y_true, y_pred = np.abs(Y_TRUE[..., :4]), np.abs(Y_PRED[..., :4])  # sides > 0 for Keras
    y_true = np.concatenate([y_true[..., :2], y_true[..., :2] + y_true[..., 2:] + 0.1], -1)
    y_pred = np.concatenate([y_pred[..., :2], y_pred[..., :2] + y_pred[..., 2:] + 0.1], -1)
    value = np.asarray(CIoUCost("xyxy")(y_true, y_pred))
    keras_ciou = keras.utils.bounding_boxes.compute_ciou(
        np.repeat(y_true[:, :, None], 5, axis=2), np.repeat(y_pred[:, None], 3, axis=1), "xyxy"
    )
    np.testing.assert_allclose(value, 1.0 - ops.convert_to_numpy(keras_ciou), atol=1e-5)


REFERENCE_CASES = {
    "l1": (L1Cost(channels=[0, 4]), ref_l1),
    "l2": (L2Cost(channels=[0, 4]), ref_l2),
    "squared_l2": (SquaredL2Cost(channels=[0, 4]), ref_squared_l2),
    "iou": (IoUCost(), lambda t, p: 1.0 - ref_iou_giou(t, p)[0]),
    "giou": (GIoUCost(), lambda t, p: 1.0 - ref_iou_giou(t, p)[1]),
    "diou": (DIoUCost(), lambda t, p: 1.0 - ref_diou_ciou(t, p)[0]),
    "ciou": (CIoUCost(), lambda t, p: 1.0 - ref_diou_ciou(t, p)[1]),
    "class_probability": (ClassProbabilityCost(), ref_class_probability),
    "focal_class": (FocalClassCost(), ref_focal),
    "focal_class_params": (
        FocalClassCost(alpha=0.5, gamma=0.5),
        lambda t, p: ref_focal(t, p, alpha=0.5, gamma=0.5),
    ),
    "detr": (
        WeightedCost(DETR),
        lambda t, p: (
            ref_class_probability(t, p) + 5.0 * ref_l1(t, p) + 2.0 * (1 - ref_iou_giou(t, p)[1])
        ),
    ),
    "d_fine_boxes": (
        WeightedCost([(L1Cost(channels=[0, 4]), 5), ("ciou", 2)]),
        lambda t, p: 5.0 * ref_l1(t, p) + 2.0 * (1 - ref_diou_ciou(t, p)[1]),
    ),
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_cost_equals_brute_force_reference(case):
    cost, reference = REFERENCE_CASES[case]
    value = np.asarray(cost(Y_TRUE, Y_PRED))
    assert value.shape == (2, 3, 5) and value.dtype == np.float32
    np.testing.assert_allclose(value, brute_force(reference, Y_TRUE, Y_PRED), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["l1", "l2", "squared_l2"])
def test_vector_costs_read_every_channel_by_default(name):
    boxes_true, boxes_pred = Y_TRUE[..., :4], Y_PRED[..., :4]
    reference = {"l1": ref_l1, "l2": ref_l2, "squared_l2": ref_squared_l2}[name]
    value = np.asarray(get_cost(name)(boxes_true, boxes_pred))
    np.testing.assert_allclose(value, brute_force(reference, boxes_true, boxes_pred), rtol=1e-5)


def test_channel_slices_select_channels():
    shifted = np.concatenate([np.zeros_like(Y_TRUE[..., :1]), Y_TRUE[..., :4]], axis=-1)
    value = np.asarray(L1Cost(channels=[1, None])(shifted, shifted[:, :2]))
    np.testing.assert_allclose(value, brute_force(ref_l1, Y_TRUE, Y_TRUE[:, :2]), rtol=1e-6)
    giou = np.asarray(GIoUCost(channels=[1, 5])(shifted, shifted))
    np.testing.assert_allclose(giou, np.asarray(GIoUCost()(Y_TRUE, Y_TRUE)), atol=1e-6)


def test_unbatched_inputs_give_one_matrix():
    cost = GIoUCost()
    np.testing.assert_allclose(
        np.asarray(cost(Y_TRUE[1], Y_PRED[1])), np.asarray(cost(Y_TRUE, Y_PRED))[1], rtol=1e-6
    )


def test_padding_class_ids_cost_zero():
    y_true = Y_TRUE.copy()
    y_true[..., 4] = [[-1.0, 3.0, 7.0], [-1.0, -1.0, -2.0]]  # 3 classes: ids 0, 1, 2
    for cost in (ClassProbabilityCost(), FocalClassCost()):
        np.testing.assert_array_equal(np.asarray(cost(y_true, Y_PRED)), 0.0)


def test_zero_weight_terms_are_not_computed():
    def raising(y_true, y_pred):
        raise AssertionError("a zero-weight term was computed")

    cost = WeightedCost([(raising, 0.0), ("giou", 1.0)])
    np.testing.assert_allclose(
        np.asarray(cost(Y_TRUE, Y_PRED)), np.asarray(GIoUCost()(Y_TRUE, Y_PRED)), rtol=1e-6
    )


@pytest.mark.parametrize("name", ["l2", "giou", "detr"])
def test_compiled_with_unknown_batch_matches_eager(name):
    cost = WeightedCost(DETR) if name == "detr" else get_cost(name, box_format="center_xywh")
    boxes_only = name == "l2"
    y_true, y_pred = (Y_TRUE[..., :4], Y_PRED[..., :4]) if boxes_only else (Y_TRUE, Y_PRED)
    np.testing.assert_allclose(
        compiled(cost, y_true, y_pred), np.asarray(cost(y_true, y_pred)), rtol=1e-6, atol=1e-6
    )


# ----------------------------------------------------------------------------- safety

# One item layout every built-in reads: [box, class id] and [box, one logit]. The true
# items are a proper box, a point (zero area), an inverted box (x2 < x1) and a segment;
# the predictions repeat them exactly (zero distance, identical boxes).
EDGE_TRUE = np.array(
    [[[0, 0, 10, 10, 0], [5, 5, 5, 5, 0], [8, 2, 3, 9, 0], [5, 5, 5, 9, 0]]], dtype="float32"
)
EDGE_PRED = np.concatenate([EDGE_TRUE, [[[1, 2, 3, 4, 5]]]], axis=1).astype("float32")
ALL_COSTS = [
    "l1",
    "l2",
    "squared_l2",
    "iou",
    "giou",
    "diou",
    "ciou",
    "class_probability",
    "focal_class",
    {"l1": 5.0, "giou": 2.0, "l2": 1.0},
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("identifier", ALL_COSTS, ids=str)
def test_values_and_gradients_are_finite_on_edge_cases(identifier, dtype):
    cost = get_cost(identifier)
    value, grad = value_and_grad(cost, EDGE_TRUE.astype(dtype), EDGE_PRED.astype(dtype))
    assert value.shape == (1, 4, 5) and value.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(value)), value
    assert np.all(np.isfinite(grad)) and grad.shape == EDGE_PRED.shape, grad
    reference = np.asarray(cost(EDGE_TRUE, EDGE_PRED))
    np.testing.assert_allclose(value.astype("float32"), reference, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_l2_at_zero_distance_has_value_and_gradient_exactly_zero(dtype):
    y = np.array([[[1.0, 2.0, 3.0, 4.0]]], dtype=dtype)
    value, grad = value_and_grad(get_cost("l2"), y, y)
    np.testing.assert_array_equal(value, 0.0)
    np.testing.assert_array_equal(grad, 0.0)


def test_l2_gradient_away_from_zero_is_the_unit_direction():
    y_true = np.array([[[0.0, 0.0, 0.0, 0.0]]], dtype="float32")
    y_pred = np.array([[[3.0, 4.0, 0.0, 0.0]]], dtype="float32")
    value, grad = value_and_grad(L2Cost(), y_true, y_pred)
    np.testing.assert_allclose(value, [[[5.0]]])
    np.testing.assert_allclose(grad, [[[0.6, 0.8, 0.0, 0.0]]], rtol=1e-6)


def test_half_precision_results_stay_finite_where_float16_overflows():
    y_true = np.zeros((1, 1, 4), dtype="float16")
    y_pred = np.full((1, 1, 4), 1000.0, dtype="float16")  # squared distance 4e6 > 65504
    squared = get_cost("squared_l2")(y_true, y_pred)
    assert keras.backend.standardize_dtype(squared.dtype) == "float16"
    assert np.asarray(squared)[0, 0, 0] == 65504.0
    np.testing.assert_allclose(np.asarray(get_cost("l2")(y_true, y_pred)), [[[2000.0]]])


def test_integer_inputs_compute_in_floatx():
    y = np.array([[[0, 0, 2, 2]]], dtype="int32")
    value = get_cost("l1")(y, y + 1)
    assert keras.backend.standardize_dtype(value.dtype) == keras.config.floatx()
    np.testing.assert_array_equal(np.asarray(value), [[[4.0]]])


# ----------------------------------------------------------------------------- config


@register_cost("test_manhattan_first_two")
def manhattan_first_two(y_true, y_pred):
    return ops.sum(ops.abs(y_true[..., :, None, :2] - y_pred[..., None, :, :2]), axis=-1)


@register_cost("test_scaled_l1")
class ScaledL1(PairwiseCost):
    def __init__(self, scale=1.0, box_format="xyxy"):
        self.scale = scale
        self.box_format = box_format

    def call(self, y_true, y_pred):
        return self.scale * L1Cost(channels=[0, 4])(y_true, y_pred)

    def get_config(self):
        return {"scale": self.scale, "box_format": self.box_format}


SERIALIZABLE = {
    "l1": L1Cost(channels=[0, 4]),
    "l2": L2Cost(channels=[1, 3]),
    "squared_l2": SquaredL2Cost(channels=[2, 4]),
    "iou": IoUCost("center_xywh"),
    "giou": GIoUCost("yxyx", channels=[0, 4]),
    "diou": DIoUCost("xywh", channels=[1, 5]),
    "ciou": CIoUCost("center_xywh"),
    "class_probability": ClassProbabilityCost(class_index=-1, logits_start=4),
    "focal_class": FocalClassCost(alpha=0.5, gamma=1.0),
    # Mask costs read as many channels in both tensors: the four box channels here.
    "mask_bce": MaskBCECost(channels=[0, 4]),
    "mask_focal": MaskFocalCost(alpha=0.5, gamma=1.0, channels=[0, 4]),
    "dice": DiceCost(channels=[0, 4]),
    "weighted_names": WeightedCost({"giou": 2.0, "iou": 1.0}, box_format="xywh"),
    "weighted_ciou": WeightedCost({"ciou": 2, "diou": 1}, box_format="center_xywh"),
    "detr": WeightedCost(DETR),
    "nested": WeightedCost(
        [(WeightedCost({"giou": 1.0, "iou": 1.0}), 0.5), ("focal_class", 2.0)],
        box_format="center_yxhw",
    ),
    "registered": WeightedCost(
        [(manhattan_first_two, 1.0), (ScaledL1(scale=2.0), 1.0), ("test_scaled_l1", 0.0)]
    ),
    "registered_class": ScaledL1(scale=3.0),
}


@pytest.mark.parametrize("name", list(SERIALIZABLE))
def test_get_config_from_config_round_trip(name):
    cost = SERIALIZABLE[name]
    config = cost.get_config()
    restored = type(cost).from_config(config)
    assert type(restored) is type(cost)
    assert restored.get_config() == config
    np.testing.assert_allclose(
        np.asarray(restored(Y_TRUE, Y_PRED)), np.asarray(cost(Y_TRUE, Y_PRED)), rtol=1e-6
    )


@pytest.mark.parametrize("name", list(SERIALIZABLE))
def test_json_round_trip_through_keras_serialization(name):
    cost = SERIALIZABLE[name]
    text = json.dumps(keras.saving.serialize_keras_object(cost))
    restored = keras.saving.deserialize_keras_object(json.loads(text))
    assert type(restored) is type(cost)
    assert restored.get_config() == cost.get_config()
    np.testing.assert_allclose(
        np.asarray(restored(Y_TRUE, Y_PRED)), np.asarray(cost(Y_TRUE, Y_PRED)), rtol=1e-6
    )


@pytest.mark.parametrize(
    "identifier",
    [
        "giou",
        "diou",
        "ciou",
        "test_manhattan_first_two",
        {"l1": 5.0, "giou": 2.0},
        {"l1": 5.0, "ciou": 2.0},
        "mask_focal",
        {"mask_bce": 5.0, "dice": 5.0},
        GIoUCost("center_xywh"),
        WeightedCost(DETR),
        manhattan_first_two,
        ScaledL1(scale=0.5),
    ],
    # A function's name, not its repr (whose address differs between pytest-xdist's workers).
    ids=lambda identifier: getattr(identifier, "__name__", str(identifier)),
)
def test_serialize_cost_and_get_cost_round_trip_through_json(identifier):
    y_true, y_pred = Y_TRUE[..., :4], Y_PRED[..., :4]
    if isinstance(identifier, WeightedCost):
        y_true, y_pred = Y_TRUE, Y_PRED
    original = get_cost(identifier, box_format="xywh")
    restored = get_cost(json.loads(json.dumps(serialize_cost(identifier))), box_format="xywh")
    np.testing.assert_allclose(
        np.asarray(restored(y_true, y_pred)), np.asarray(original(y_true, y_pred)), rtol=1e-6
    )


def test_serialize_cost_gives_names_and_configs():
    assert serialize_cost("l2") == "l2"
    assert serialize_cost({"l1": 5, "giou": 2}) == {"l1": 5.0, "giou": 2.0}
    assert serialize_cost("ciou") == "ciou"
    assert serialize_cost({"l1": 5, "ciou": 2}) == {"l1": 5.0, "ciou": 2.0}
    assert serialize_cost(DIoUCost("xywh"))["registered_name"] == "hungarian_loss>DIoUCost"
    assert serialize_cost(manhattan_first_two) == "test_manhattan_first_two"
    config = serialize_cost(FocalClassCost(gamma=1.0))
    assert config["registered_name"] == "hungarian_loss>FocalClassCost"
    assert config["config"] == {"alpha": 0.25, "gamma": 1.0, "class_index": 4, "logits_start": 4}
    assert serialize_cost({"mask_bce": 5, "dice": 5}) == {"mask_bce": 5.0, "dice": 5.0}
    config = serialize_cost(MaskFocalCost(alpha=0.5))
    assert config["registered_name"] == "hungarian_loss>MaskFocalCost"
    assert config["config"] == {"channels": None, "alpha": 0.5, "gamma": 2.0}
    assert get_cost(json.loads(json.dumps(config))).get_config() == config["config"]
    assert serialize_cost(ScaledL1())["registered_name"] == "hungarian_loss.costs>test_scaled_l1"
    assert serialize_cost(config) == config
    assert WeightedCost({"l1": 5.0, "giou": 2.0}).get_config() == {
        "costs": [["l1", 5.0], ["giou", 2.0]],
        "box_format": "xyxy",
    }


def test_keras_registered_function_serializes_as_a_keras_config():
    @keras.saving.register_keras_serializable(package="test_costs")
    def keras_registered_l1(y_true, y_pred):
        return L1Cost()(y_true, y_pred)

    config = serialize_cost(keras_registered_l1)
    assert isinstance(config, dict)
    assert get_cost(json.loads(json.dumps(config))) is keras_registered_l1


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("l1", L1Cost),
        ("l2", L2Cost),
        ("squared_l2", SquaredL2Cost),
        ("iou", IoUCost),
        ("giou", GIoUCost),
        ("diou", DIoUCost),
        ("ciou", CIoUCost),
        ("class_probability", ClassProbabilityCost),
        ("focal_class", FocalClassCost),
        ("mask_bce", MaskBCECost),
        ("mask_focal", MaskFocalCost),
        ("dice", DiceCost),
    ],
)
def test_get_cost_by_name(name, cls):
    cost = get_cost(name, box_format="CENTER_XYWH")
    assert type(cost) is cls
    if hasattr(cost, "box_format"):
        assert cost.box_format == "center_xywh"


def test_get_cost_accepts_every_kind_of_identifier():
    instance = GIoUCost()
    assert get_cost(instance) is instance
    assert get_cost(manhattan_first_two) is manhattan_first_two
    assert get_cost("test_manhattan_first_two") is manhattan_first_two
    assert isinstance(get_cost(GIoUCost, box_format="yxyx"), GIoUCost)
    assert get_cost(GIoUCost, box_format="yxyx").box_format == "yxyx"
    assert get_cost(L2Cost).get_config() == {"channels": None}
    from_name = get_cost("test_scaled_l1", box_format="xywh")
    assert isinstance(from_name, ScaledL1) and from_name.box_format == "xywh"
    weighted = get_cost({"l1": 5.0, "giou": 2.0}, box_format="xywh")
    assert isinstance(weighted, WeightedCost)
    assert [type(c) for c, _ in weighted.terms] == [L1Cost, GIoUCost]
    assert weighted.terms[1][0].box_format == "xywh"
    restored = get_cost(keras.saving.serialize_keras_object(IoUCost("yxyx")))
    assert isinstance(restored, IoUCost) and restored.box_format == "yxyx"


def test_register_cost_as_a_function_call():
    def first_channel(y_true, y_pred):
        return ops.abs(y_true[..., :, None, 0] - y_pred[..., None, :, 0])

    assert register_cost("test_first_channel", first_channel) is first_channel
    assert get_cost("test_first_channel") is first_channel
    assert serialize_cost(first_channel) == "test_first_channel"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: get_cost("l3"), r"Expected a cost name among .*'giou'.*Received: cost='l3'"),
        (lambda: get_cost("giou", box_format="xyzw"), r"Received: box_format='xyzw'"),
        (lambda: IoUCost("rel_xyxy"), r"Received: box_format='rel_xyxy'"),
        (lambda: get_cost(42), r"Expected `cost` to be a cost name.*Received: cost=42"),
        (lambda: get_cost({"l1": -1.0}), r"Expected finite weights >= 0"),
        (lambda: get_cost({"l1": float("nan")}), r"Expected finite weights >= 0"),
        (lambda: get_cost({"l1": "5"}), r"Expected finite weights >= 0"),
        (lambda: get_cost({"l1": 0.0, "giou": 0}), r"Expected at least one weight > 0"),
        (lambda: get_cost({}), r"Expected at least one weighted cost"),
        (lambda: WeightedCost([]), r"Expected at least one weighted cost"),
        (lambda: WeightedCost([("l1", 1.0, 2.0)]), r"Expected \(cost, weight\) pairs"),
        (lambda: WeightedCost({"l4": 1.0}), r"Received: cost='l4'"),
        (lambda: serialize_cost("l5"), r"Received: cost='l5'"),
        (lambda: serialize_cost({"l1": 1.0, "l6": 1.0}), r"Received: cost='l6'"),
        (lambda: serialize_cost({"l1": -1.0}), r"Expected finite weights >= 0"),
        (lambda: WeightedCost("l1"), r"Expected a dict"),
        (lambda: L1Cost(channels=[0]), r"Expected `channels` to be None or \[start, stop\]"),
        (lambda: L1Cost(channels=["a", 2]), r"Received: channels=\['a', 2\]"),
        (lambda: FocalClassCost(alpha=1.5), r"Expected `alpha` in \[0, 1\]"),
        (lambda: FocalClassCost(gamma=-1.0), r"Expected `gamma` >= 0"),
        (lambda: MaskFocalCost(alpha=1.5), r"Expected `alpha` .*\[0, 1\]. Received: alpha=1.5"),
        (lambda: MaskFocalCost(gamma=-1.0), r"Expected `gamma` .*>= 0. Received: gamma=-1.0"),
        (lambda: MaskFocalCost(alpha="0.5"), r"Received: alpha='0.5'"),
        (lambda: DiceCost(channels=[0]), r"Expected `channels` to be None or \[start, stop\]"),
        (lambda: ClassProbabilityCost(class_index=4.0), r"Received: class_index=4.0"),
        (lambda: register_cost("giou", GIoUCost), r"not built in"),
        (lambda: register_cost("", L1Cost), r"non-empty string"),
        (lambda: register_cost("test_not_callable", 3), r"Expected a callable cost"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("cost", "y_true", "y_pred", "message"),
    [
        (GIoUCost(), np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), r"with 4 box channels"),
        (IoUCost(channels=[0, 5]), np.zeros((1, 2, 6)), np.zeros((1, 2, 6)), r"4 box channels"),
        (L1Cost(), np.zeros((1, 2, 4)), np.zeros((1, 2, 5)), r"same number of channels"),
        (DiceCost(), np.zeros((1, 2, 6)), np.zeros((1, 2, 4)), r"same number of channels"),
        (L1Cost(channels=[5, 6]), np.zeros((1, 2, 4)), np.zeros((1, 2, 4)), r"at least one"),
        (L2Cost(), np.zeros((1, 2, 4)), np.zeros((2, 4)), r"of the same rank"),
        (L2Cost(), np.zeros((4,)), np.zeros((4,)), r"of the same rank"),
        (ClassProbabilityCost(), np.zeros((1, 2, 4)), np.zeros((1, 2, 6)), r"class_index=4"),
        (FocalClassCost(), np.zeros((1, 2, 5)), np.zeros((1, 2, 4)), r"logits_start=4"),
    ],
)
def test_bad_inputs_raise_clear_errors(cost, y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        cost(y_true.astype("float32"), y_pred.astype("float32"))


def test_unregistered_callables_cannot_be_serialized():
    class Unregistered(PairwiseCost):
        def call(self, y_true, y_pred):
            return L1Cost()(y_true, y_pred)

    fix = r"register_cost\(name\).*register_keras_serializable"
    with pytest.raises(ValueError, match=fix):
        serialize_cost(lambda y_true, y_pred: L1Cost()(y_true, y_pred))
    with pytest.raises(ValueError, match=fix):
        serialize_cost(Unregistered())
    combination = WeightedCost([(Unregistered(), 1.0), ("giou", 1.0)])  # usable...
    assert np.asarray(combination(Y_TRUE[..., :4], Y_PRED[..., :4])).shape == (2, 3, 5)
    with pytest.raises(ValueError, match=fix):  # ...but not serializable
        combination.get_config()


# ----------------------------------------------------------------------------- matched pairs


@register_cost("test_l1_of_first_channel")
class _FirstChannelL1(L1Cost):
    """A subclass that changes `call`: its inherited elementwise form would be wrong."""

    def call(self, y_true, y_pred):
        return ops.abs(y_true[..., :, None, 0] - y_pred[..., None, :, 0])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("identifier", [*ALL_COSTS[:7], ALL_COSTS[-1]], ids=str)
def test_elementwise_form_is_the_diagonal_of_the_cost(identifier, dtype):
    # `matched_cost` computes the built-in costs pair by pair with their elementwise
    # forms: the values, gradients and dtype of the matrix's diagonal.
    cost = get_cost(identifier, box_format="center_xywh")
    rng = np.random.default_rng(7)
    y_true = np.concatenate([EDGE_TRUE[:, :, :4], rng.uniform(1, 5, (1, 4, 4))], axis=1)
    y_pred = np.concatenate([EDGE_PRED[:, 1:, :4], rng.uniform(1, 5, (1, 4, 4))], axis=1)
    y_true, y_pred = y_true.astype(dtype), y_pred.astype(dtype)
    value, grad = value_and_grad(lambda t, p: _elementwise_cost(cost, t, p), y_true, y_pred)
    eye = np.eye(8, dtype=bool)[None]
    expected, expected_grad = value_and_grad(
        lambda t, p: ops.sum(ops.where(eye, cost(t, p), 0.0), axis=2), y_true, y_pred
    )
    assert value.shape == (1, 8) and value.dtype == np.dtype(dtype)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-4)


class _ScaledGIoU(GIoUCost):
    """A subclass that changes `__call__`."""

    def __call__(self, y_true, y_pred):
        return 2.0 * super().__call__(y_true, y_pred)


def test_only_built_in_costs_have_an_elementwise_form():
    y = np.ones((1, 2, 5), "float32")
    assert _elementwise_cost(_ScaledGIoU(), y, y) is None
    for cost in [
        get_cost("class_probability"),
        get_cost("focal_class"),
        get_cost(lambda t, p: ops.sum(t[..., :, None, :] * p[..., None, :, :], axis=-1)),
        get_cost("test_l1_of_first_channel"),  # a subclass that overrides `call`
        WeightedCost({"l1": 1.0, "class_probability": 1.0}),
    ]:
        assert _elementwise_cost(cost, y, y) is None, cost
    assert _elementwise_cost(WeightedCost({"l1": 1.0, "class_probability": 0.0}), y, y) is not None


# ----------------------------------------------------------------------------- masks


def softplus(x):
    return np.logaddexp(0.0, x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_mask_bce(t, p):
    """Sigmoid BCE of the logits p at the targets t, mean over the points."""
    return np.mean(t * softplus(-p) + (1.0 - t) * softplus(p))


def ref_mask_focal(t, p, alpha=0.25, gamma=2.0):
    """MaskFormer's focal matching cost: linear in t, mean over the points."""
    prob = sigmoid(p)
    positive = alpha * (1.0 - prob) ** gamma * softplus(-p)
    negative = (1.0 - alpha) * prob**gamma * softplus(p)
    return np.mean(t * positive + (1.0 - t) * negative)


def ref_dice(t, p):
    prob = sigmoid(p)
    return 1.0 - (2.0 * np.sum(prob * t) + 1.0) / (np.sum(prob) + np.sum(t) + 1.0)


def random_masks(seed=3, batch=2, m=3, n=4, points=6):
    """y_true [batch, m, points] targets in [0, 1] (binary and soft rows); y_pred
    [batch, n, points] logits."""
    rng = np.random.default_rng(seed)
    targets = rng.uniform(0.0, 1.0, (batch, m, points))
    targets[:, :2] = np.round(targets[:, :2])  # binary masks, and a soft one (read between pixels)
    logits = rng.normal(0.0, 3.0, (batch, n, points))
    return targets.astype("float32"), logits.astype("float32")


MASK_TRUE, MASK_PRED = random_masks()
MASK2FORMER = {"mask_bce": 5.0, "dice": 5.0}
MASK_CASES = {
    "mask_bce": (MaskBCECost(), ref_mask_bce),
    "mask_focal": (MaskFocalCost(), ref_mask_focal),
    "mask_focal_params": (
        MaskFocalCost(alpha=0.5, gamma=1.5),
        lambda t, p: ref_mask_focal(t, p, alpha=0.5, gamma=1.5),
    ),
    "dice": (DiceCost(), ref_dice),
    "dice_channels": (DiceCost(channels=[1, 5]), lambda t, p: ref_dice(t[1:5], p[1:5])),
    "mask2former": (
        WeightedCost(MASK2FORMER),
        lambda t, p: 5.0 * ref_mask_bce(t, p) + 5.0 * ref_dice(t, p),
    ),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_mask_costs_and_their_elementwise_forms_equal_the_reference(case):
    cost, reference = MASK_CASES[case]
    value = np.asarray(cost(MASK_TRUE, MASK_PRED))
    expected = brute_force(reference, MASK_TRUE, MASK_PRED)
    assert value.shape == (2, 3, 4) and value.dtype == np.float32
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    paired = _elementwise_cost(cost, MASK_TRUE, MASK_PRED[:, :3])  # pairs (i, i)
    assert paired is not None  # `HungarianLoss.matched_cost` uses this form
    np.testing.assert_allclose(np.asarray(paired), expected[:, [0, 1, 2], [0, 1, 2]], rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mask_elementwise_forms_are_the_diagonal_with_its_gradient(dtype):
    # One combination of the three: a gradient that differs in any term shows in the sum.
    # The first prediction of each sample has logits of +-100 against its target: finite
    # values and gradients there too.
    cost = WeightedCost({"mask_bce": 1.0, "mask_focal": 2.0, "dice": 1.0})
    y_pred = MASK_PRED[:, :3].copy()
    y_pred[:, 0] = np.where(MASK_TRUE[:, 0] > 0.5, -100.0, 100.0)
    y_true, y_pred = MASK_TRUE.astype(dtype), y_pred.astype(dtype)
    value, grad = value_and_grad(lambda t, p: _elementwise_cost(cost, t, p), y_true, y_pred)
    eye = np.eye(3, dtype=bool)[None]
    expected, expected_grad = value_and_grad(
        lambda t, p: ops.sum(ops.where(eye, cost(t, p), 0.0), axis=2), y_true, y_pred
    )
    assert value.shape == (2, 3) and value.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (value, grad)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-4)


def test_mask_costs_are_exact_at_extreme_logits():
    # Logits of +-100 against the opposite targets: -log(sigmoid(-100)) = 100, where a
    # cross-entropy written as log(sigmoid(x)) gives inf. Half precision computes in
    # float32 and gives its dtype back.
    y_true = np.array([[[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]], "float32")
    y_pred = np.array([[[-100, -100, 100, 100], [100, -100, 100, -100]]], "float32")
    y_pred = np.concatenate([y_pred, -y_pred, np.zeros((1, 1, 4), "float32")], axis=1)
    references = {"mask_bce": ref_mask_bce, "mask_focal": ref_mask_focal, "dice": ref_dice}
    for (name, reference), dtype in itertools.product(references.items(), ["float32", "float16"]):
        value = np.asarray(get_cost(name)(y_true.astype(dtype), y_pred.astype(dtype)))
        assert value.dtype == np.dtype(dtype)
        expected = brute_force(reference, y_true, y_pred)
        np.testing.assert_allclose(value.astype("float64"), expected, rtol=2e-3, atol=1e-5)
    assert np.asarray(get_cost("mask_bce")(y_true, y_pred))[0, 0, 0] == 100.0


def test_hungarian_loss_on_flattened_masks_matches_the_reference():
    # Mask2Former's mask costs on whole masks [B, M, H * W] (every pixel, MaskFormer's
    # way): matched and averaged as a NumPy/SciPy reference does it.
    rng = np.random.default_rng(11)
    masks = (rng.uniform(size=(2, 3, 2, 3)) > 0.5).astype("float32")  # [B, M, H, W]
    y_true = masks.reshape(2, 3, 6)  # [B, M, H * W]
    y_true[1, 2] = -1.0  # a padding target
    y_pred = rng.normal(0.0, 2.0, (2, 4, 6)).astype("float32")  # [B, N, H * W] logits

    def reference(t, p):
        return 5.0 * ref_mask_bce(t, p) + 5.0 * ref_dice(t, p)

    # The loss of a sample is the mean cost of its matched pairs (the matching, one
    # solver call, is the only compiled step): times the number of real targets, the
    # total of the matching, which must be SciPy's optimum.
    per_sample = np.asarray(HungarianLoss(cost=MASK2FORMER, reduction=None)(y_true, y_pred))
    for b, real in enumerate([3, 2]):
        cost = brute_force(reference, y_true[b : b + 1, :real], y_pred[b : b + 1])[0]
        rows, cols = scipy.optimize.linear_sum_assignment(cost)
        np.testing.assert_allclose(per_sample[b] * real, cost[rows, cols].sum(), rtol=1e-5)
    loss = HungarianLoss(cost=MASK2FORMER)
    np.testing.assert_allclose(np.asarray(loss(y_true, y_pred)), np.mean(per_sample), rtol=1e-6)
    assert loss.get_config()["cost"] == {"mask_bce": 5.0, "dice": 5.0}
