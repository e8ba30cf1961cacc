"""Tests of hungarian_loss.boxes: formats, conversions, pairwise and elementwise geometry."""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np
import pytest
from helpers import compiled, np_from_xyxy, value_and_grads

from hungarian_loss.boxes import (
    BOX_FORMATS,
    convert_format,
    elementwise_ciou,
    elementwise_diou,
    elementwise_giou,
    elementwise_iou,
    pairwise_ciou,
    pairwise_diou,
    pairwise_giou,
    pairwise_iou,
    standardize_box_format,
    to_xyxy,
)

# ----------------------------------------------------------------------------- helpers


def np_iou_giou(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """IoU and GIoU of two xyxy boxes, by the definitions, one pair at a time."""
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")

    def area(box: np.ndarray) -> float:
        return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)

    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = area(a) + area(b) - inter
    enclosing = max(max(a[2], b[2]) - min(a[0], b[0]), 0.0) * max(
        max(a[3], b[3]) - min(a[1], b[1]), 0.0
    )
    iou = inter / union if union > 1e-7 else 0.0
    return iou, iou - (enclosing - union) / enclosing if enclosing > 1e-7 else iou


def np_diou_ciou(a: np.ndarray, b: np.ndarray, freeze_alpha: float | None = None):
    """DIoU and CIoU of two xyxy boxes, by the definitions, one pair at a time.

    The enclosing box spans every corner coordinate (the usual one for proper boxes);
    the aspect angle of a box with both sides <= 1e-7 is 0. `freeze_alpha` replaces
    CIoU's alpha by a constant (to check the gradient, which holds alpha constant).
    """
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    iou = np_iou_giou(a, b)[0]
    distance = np.sum(((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2) ** 2)
    lowest = np.minimum(np.minimum(a[:2], a[2:]), np.minimum(b[:2], b[2:]))
    highest = np.maximum(np.maximum(a[:2], a[2:]), np.maximum(b[:2], b[2:]))
    diagonal = np.sum((highest - lowest) ** 2)
    diou = iou - (distance / diagonal if diagonal > 1e-7 else 0.0)

    def angle(box: np.ndarray) -> float:
        width, height = max(box[2] - box[0], 0.0), max(box[3] - box[1], 0.0)
        return math.atan2(width, height) if max(width, height) > 1e-7 else 0.0

    v = 4 / math.pi**2 * (angle(a) - angle(b)) ** 2
    alpha = v / (1 - iou + v) if 1 - iou + v > 1e-7 else 0.0
    if freeze_alpha is not None:
        alpha = freeze_alpha
    return diou, diou - alpha * v


def np_diou(a: np.ndarray, b: np.ndarray) -> float:
    return np_diou_ciou(a, b)[0]


def np_ciou(a: np.ndarray, b: np.ndarray) -> float:
    return np_diou_ciou(a, b)[1]


def np_pairwise(fn, boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Loops over the batch and every pair: fn(a, b) -> float."""
    batch, m, n = boxes1.shape[0], boxes1.shape[1], boxes2.shape[1]
    out = np.zeros((batch, m, n))
    for b, i, j in itertools.product(range(batch), range(m), range(n)):
        out[b, i, j] = fn(boxes1[b, i], boxes2[b, j])
    return out


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """xyxy boxes; about one in five has a negative width or height (inverted)."""
    corner = rng.uniform(0.0, 10.0, size=(*shape, 2))
    size = rng.uniform(-1.0, 5.0, size=(*shape, 2))
    return np.concatenate([corner, corner + size], axis=-1).astype("float32")


XYXY = np.array([[[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]]], dtype="float32")
IN_FORMAT = {
    "xyxy": [[10, 20, 30, 60], [0, 0, 4, 2]],
    "yxyx": [[20, 10, 60, 30], [0, 0, 2, 4]],
    "xywh": [[10, 20, 20, 40], [0, 0, 4, 2]],
    "center_xywh": [[20, 40, 20, 40], [2, 1, 4, 2]],
    "center_yxhw": [[40, 20, 40, 20], [1, 2, 2, 4]],
}

# Hand-derived: [0, 0, 100, 100] against itself, a quarter of it inside, a box sharing an
# edge, a box touching at a corner.
BOX = np.array([[[0.0, 0.0, 100.0, 100.0]]], dtype="float32")
OTHERS = np.array(
    [[[0, 0, 100, 100], [0, 0, 50, 50], [100, 0, 200, 100], [100, 100, 200, 200]]],
    dtype="float32",
)
HAND_IOU = [1.0, 0.25, 0.0, 0.0]
HAND_GIOU = [1.0, 0.25, 0.0, -0.5]
# DIoU: centers (50, 50) against (50, 50), (25, 25), (150, 50), (150, 150); enclosing
# diagonals^2 100^2 * 2, 100^2 * 2, 200^2 + 100^2, 200^2 * 2. All squares: CIoU = DIoU.
HAND_DIOU = [1.0, 0.25 - 1250 / 20000, -10000 / 50000, -20000 / 80000]

ALL_GEOMETRY = [pairwise_iou, pairwise_giou, pairwise_diou, pairwise_ciou]

# ----------------------------------------------------------------------------- formats


def test_box_formats_are_keras_absolute_formats():
    assert BOX_FORMATS == ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw")


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_standardize_box_format_accepts_any_case(box_format):
    assert standardize_box_format(box_format.upper()) == box_format


@pytest.mark.parametrize("bad", ["xyzw", "rel_xyxy", "", None, 4])
def test_standardize_box_format_rejects_unknown_names(bad):
    with pytest.raises(ValueError, match=r"Expected `box_format`.*'center_yxhw'.*Received"):
        standardize_box_format(bad)


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_conversion_of_known_boxes(box_format):
    expected = np.array([IN_FORMAT[box_format]], dtype="float32")
    np.testing.assert_allclose(np.asarray(convert_format(XYXY, "xyxy", box_format)), expected)
    np.testing.assert_allclose(np.asarray(to_xyxy(expected, box_format)), XYXY)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(BOX_FORMATS, BOX_FORMATS)))
def test_conversion_round_trips_and_matches_numpy(source, target):
    rng = np.random.default_rng(0)
    boxes = np_from_xyxy(random_boxes(rng, (2, 3)), source)
    converted = np.asarray(convert_format(boxes, source, target))
    assert converted.shape == boxes.shape
    assert converted.dtype == np.float32
    np.testing.assert_allclose(
        converted, np_from_xyxy(np_to_xyxy(boxes, source), target), rtol=1e-5, atol=1e-5
    )
    back = np.asarray(convert_format(converted, target, source))
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-5)


def np_to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """Independent NumPy conversion from `box_format` to xyxy."""
    a, b, c, d = np.moveaxis(np.asarray(boxes, dtype="float64"), -1, 0)
    columns = {
        "xyxy": (a, b, c, d),
        "yxyx": (b, a, d, c),
        "xywh": (a, b, a + c, b + d),
        "center_xywh": (a - c / 2, b - d / 2, a + c / 2, b + d / 2),
        "center_yxhw": (b - d / 2, a - c / 2, b + d / 2, a + c / 2),
    }[box_format]
    return np.stack(columns, axis=-1)


def test_conversion_keeps_half_precision_and_casts_integers():
    half = convert_format(XYXY.astype("float16"), "xyxy", "center_xywh")
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    integers = convert_format(XYXY.astype("int32"), "xyxy", "xywh")
    assert keras.backend.standardize_dtype(integers.dtype) == keras.config.floatx()
    np.testing.assert_allclose(np.asarray(integers), [IN_FORMAT["xywh"]])


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 3), ()])
def test_conversion_rejects_a_last_dimension_other_than_4(shape):
    with pytest.raises(ValueError, match=r"Expected `boxes` with a last dimension of 4"):
        convert_format(np.zeros(shape, "float32"), "xyxy", "xywh")


def test_conversion_rejects_unknown_formats():
    with pytest.raises(ValueError, match=r"Received: source='rel_xyxy'"):
        convert_format(XYXY, "rel_xyxy", "xyxy")
    with pytest.raises(ValueError, match=r"Received: target='cxcywh'"):
        convert_format(XYXY, "xyxy", "cxcywh")
    with pytest.raises(ValueError, match=r"Received: source='XYWH2'"):
        to_xyxy(XYXY, "XYWH2")


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_hand_derived_iou_and_giou_in_every_format(box_format):
    box, others = np_from_xyxy(BOX, box_format), np_from_xyxy(OTHERS, box_format)
    iou = np.asarray(pairwise_iou(box, others, box_format))
    giou = np.asarray(pairwise_giou(box, others, box_format))
    assert iou.shape == giou.shape == (1, 1, 4)
    np.testing.assert_allclose(iou[0, 0], HAND_IOU, atol=1e-6)
    np.testing.assert_allclose(giou[0, 0], HAND_GIOU, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pairwise_diou(box, others, box_format))[0, 0], HAND_DIOU)
    np.testing.assert_allclose(np.asarray(pairwise_ciou(box, others, box_format))[0, 0], HAND_DIOU)


def test_hand_derived_diou_and_ciou():
    # Two disjoint unit squares, centers 2 apart, inside the 3 x 1 box [0, 0, 3, 1]:
    # DIoU = 0 - 2^2 / (3^2 + 1^2). Same aspect ratio, so CIoU = DIoU.
    square = np.array([[[0.0, 0.0, 1.0, 1.0]]], dtype="float32")
    apart = np.array([[[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0]]], dtype="float32")
    np.testing.assert_allclose(np.asarray(pairwise_diou(square, apart)), [[[1.0, -0.4]]])
    np.testing.assert_allclose(np.asarray(pairwise_ciou(square, apart)), [[[1.0, -0.4]]])
    # [0, 0, 2, 2] against its lower half [0, 0, 2, 1]: IoU 1/2, centers 1/2 apart in an
    # enclosing box of diagonal^2 8, aspect angles atan(1) and atan(2).
    half = np.array([[[0.0, 0.0, 2.0, 1.0]]], dtype="float32")
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    diou = 0.5 - 0.25 / 8
    np.testing.assert_allclose(np.asarray(pairwise_diou(2 * square, half)), [[[diou]]])
    ciou = np.asarray(pairwise_ciou(2 * square, half))
    np.testing.assert_allclose(ciou, [[[diou - v / (0.5 + v) * v]]], rtol=1e-6)
    # A box of height 0 (atan(w / 0) = pi / 2) against a square (atan(1) = pi / 4):
    # v = 4 / pi^2 * (pi / 4)^2 = 1/4, IoU 0, alpha = 1/4 / (1 + 1/4).
    flat = np.array([[[0.0, 1.0, 2.0, 1.0]]], dtype="float32")
    np.testing.assert_allclose(
        np.asarray(pairwise_ciou(flat, 2 * square)), [[[0.0 - 0.2 * 0.25]]], atol=1e-7
    )


@pytest.mark.parametrize("box_format", ["xyxy", "center_yxhw"])
def test_pairwise_geometry_matches_numpy_reference(box_format):
    rng = np.random.default_rng(1)
    boxes1, boxes2 = random_boxes(rng, (2, 3)), random_boxes(rng, (2, 5))
    expected_iou = np_pairwise(lambda a, b: np_iou_giou(a, b)[0], boxes1, boxes2)
    expected_giou = np_pairwise(lambda a, b: np_iou_giou(a, b)[1], boxes1, boxes2)
    converted = np_from_xyxy(boxes1, box_format), np_from_xyxy(boxes2, box_format)
    iou = np.asarray(pairwise_iou(*converted, box_format=box_format))
    giou = np.asarray(pairwise_giou(*converted, box_format=box_format))
    np.testing.assert_allclose(iou, expected_iou, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(giou, expected_giou, rtol=1e-5, atol=1e-5)
    assert np.all((iou >= 0) & (iou <= 1)) and np.all((giou >= -1) & (giou <= iou + 1e-6))
    diou = np.asarray(pairwise_diou(*converted, box_format=box_format))
    ciou = np.asarray(pairwise_ciou(*converted, box_format=box_format))
    np.testing.assert_allclose(diou, np_pairwise(np_diou, boxes1, boxes2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ciou, np_pairwise(np_ciou, boxes1, boxes2), rtol=1e-5, atol=1e-5)
    assert np.all((diou >= -1) & (diou <= iou + 1e-6))
    assert np.all((ciou >= -1.5) & (ciou <= diou + 1e-6))


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_ciou_equals_keras_compute_ciou(box_format):
    # Keras's compute_ciou takes pairs elementwise; it accepts the absolute formats only
    # (it refuses the relative ones), and boxes with sides > 0 (it does not clamp them).
    rng = np.random.default_rng(3)
    corner = rng.uniform(0.0, 10.0, size=(2, 7, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(0.1, 5.0, (2, 7, 2))], axis=-1)
    boxes1 = np.concatenate([BOX.repeat(2, axis=0), boxes[:, :2]], axis=1).astype("float32")
    boxes2 = np.concatenate([OTHERS.repeat(2, axis=0), boxes], axis=1).astype("float32")
    boxes1, boxes2 = np_from_xyxy(boxes1, box_format), np_from_xyxy(boxes2, box_format)
    ours = np.asarray(pairwise_ciou(boxes1, boxes2, box_format))  # [2, 3, 11]
    theirs = keras.utils.bounding_boxes.compute_ciou(
        np.repeat(boxes1[:, :, None], 11, axis=2), np.repeat(boxes2[:, None], 3, axis=1), box_format
    )
    assert ours.shape == (2, 3, 11)
    np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(theirs), rtol=1e-5, atol=1e-5)


def test_ciou_gradient_holds_alpha_constant():
    # d CIoU / d boxes2 by central differences of the NumPy reference with alpha frozen
    # at its value here; differentiating through alpha (as Keras's compute_ciou does)
    # gives a different gradient, so this tells the two apart.
    a = np.array([0.0, 0.0, 2.0, 2.0])
    b = np.array([0.3, 0.1, 2.5, 1.2])
    iou = np_iou_giou(a, b)[0]
    v = np_diou_ciou(a, b, freeze_alpha=1.0)[0] - np_diou_ciou(a, b, freeze_alpha=1.0)[1]
    alpha = v / (1 - iou + v)
    step = 1e-4

    def central(fn):
        return np.array([(fn(b + step * e) - fn(b - step * e)) / (2 * step) for e in np.eye(4)])

    frozen = central(lambda x: np_diou_ciou(a, x, freeze_alpha=alpha)[1])
    through_alpha = central(lambda x: np_diou_ciou(a, x)[1])
    assert np.max(np.abs(frozen - through_alpha)) > 1e-3
    _, (grad,) = value_and_grads(
        lambda x: pairwise_ciou(a[None, None].astype("float32"), x), b[None, None].astype("float32")
    )
    np.testing.assert_allclose(grad[0, 0], frozen, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("fn", ALL_GEOMETRY)
def test_unbatched_boxes_give_one_matrix(fn):
    batched = np.asarray(fn(BOX, OTHERS))
    single = np.asarray(fn(BOX[0], OTHERS[0]))
    assert single.shape == (1, 4)
    np.testing.assert_allclose(single, batched[0])


@pytest.mark.parametrize("fn", ALL_GEOMETRY)
def test_empty_sets_of_boxes(fn):
    empty = np.zeros((2, 0, 4), "float32")
    assert np.asarray(fn(empty, OTHERS.repeat(2, axis=0))).shape == (2, 0, 4)
    assert np.asarray(fn(OTHERS.repeat(2, axis=0), empty)).shape == (2, 4, 0)


@pytest.mark.parametrize("fn", ALL_GEOMETRY)
@pytest.mark.parametrize(
    ("boxes1", "boxes2", "message"),
    [
        (np.zeros((1, 2, 3)), np.zeros((1, 2, 4)), "`boxes1` with a last dimension of 4"),
        (np.zeros((1, 2, 4)), np.zeros((1, 2, 5)), "`boxes2` with a last dimension of 4"),
        (np.zeros((1, 2, 4)), np.zeros((2, 4)), "of the same rank"),
        (np.zeros((1, 1, 2, 4)), np.zeros((1, 1, 2, 4)), "of the same rank"),
    ],
)
def test_pairwise_geometry_rejects_bad_shapes(fn, boxes1, boxes2, message):
    with pytest.raises(ValueError, match=message):
        fn(boxes1.astype("float32"), boxes2.astype("float32"))


def test_pairwise_geometry_rejects_unknown_format():
    with pytest.raises(ValueError, match=r"Received: source='ltrb'"):
        pairwise_giou(BOX, OTHERS, box_format="ltrb")


# Identical boxes, zero-area boxes (a point, a segment of width 0, one of height 0), an
# inverted box (x2 < x1).
EDGE_TRUE = np.array(
    [[[0, 0, 10, 10], [5, 5, 5, 5], [8, 2, 3, 9], [5, 5, 5, 9], [2, 7, 9, 7]]], dtype="float32"
)
EDGE_PRED = EDGE_TRUE.copy()
REFERENCES = [
    (pairwise_iou, lambda a, b: np_iou_giou(a, b)[0]),
    (pairwise_giou, lambda a, b: np_iou_giou(a, b)[1]),
    (pairwise_diou, np_diou),
    (pairwise_ciou, np_ciou),
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("fn", "reference"), REFERENCES, ids=lambda x: getattr(x, "__name__", ""))
def test_values_and_gradients_are_finite_on_edge_cases(fn, reference, dtype):
    value, grads = value_and_grads(fn, EDGE_TRUE.astype(dtype), EDGE_PRED.astype(dtype))
    assert value.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(value))
    for grad in grads:
        assert np.all(np.isfinite(grad))
    assert [g.shape for g in grads] == [EDGE_TRUE.shape, EDGE_PRED.shape]
    expected = np_pairwise(reference, EDGE_TRUE, EDGE_PRED)
    np.testing.assert_allclose(value.astype("float32"), expected, atol=1e-3)
    assert value[0, 0, 0] == 1.0  # identical proper boxes
    np.testing.assert_array_equal(value[0, 1:, :] if fn is pairwise_iou else 0.0, 0.0)  # empty


@pytest.mark.parametrize("fn", [pairwise_diou, pairwise_ciou])
def test_diou_and_ciou_are_finite_for_huge_and_tiny_boxes(fn):
    big = 3e38
    boxes = np.array(
        [[[-big, -big, big, big], [0, 0, 1e-9, 1e-9], [0, 0, 1e-30, 1], [0, 0, 1, 1e-30]]],
        dtype="float32",
    )
    value, grads = value_and_grads(fn, boxes, boxes[:, ::-1])
    assert np.all(np.isfinite(value)) and all(np.all(np.isfinite(g)) for g in grads)
    assert np.all((value >= -1.5) & (value <= 1.0))
    np.testing.assert_allclose(value[0, 0, 3], 1.0)  # the huge box against itself


def test_identical_empty_boxes_have_iou_giou_diou_and_ciou_zero():
    point = np.array([[[5.0, 5.0, 5.0, 5.0]]], dtype="float32")
    for fn in ALL_GEOMETRY:
        assert float(np.asarray(fn(point, point))[0, 0, 0]) == 0.0


def test_half_precision_is_computed_without_overflow():
    # Areas of boxes this large overflow float16 (max 65504); the result must not.
    big = np.array([[[0, 0, 1000, 1000], [0, 0, 500, 500]]], dtype="float32")
    expected = np.asarray(pairwise_giou(big, big))
    half = pairwise_giou(big.astype("float16"), big.astype("float16"))
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    np.testing.assert_allclose(np.asarray(half).astype("float32"), expected, atol=1e-3)
    np.testing.assert_allclose(expected[0], [[1.0, 0.25], [0.25, 1.0]], atol=1e-6)


@pytest.mark.parametrize("fn", ALL_GEOMETRY)
def test_compiled_with_unknown_batch_matches_eager(fn):
    rng = np.random.default_rng(2)
    boxes1, boxes2 = random_boxes(rng, (2, 3)), random_boxes(rng, (2, 5))
    np.testing.assert_allclose(
        compiled(lambda a, b: fn(a, b, "center_xywh"), boxes1, boxes2),
        np.asarray(fn(boxes1, boxes2, "center_xywh")),
        rtol=1e-6,
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- elementwise

ELEMENTWISE = [
    (elementwise_iou, pairwise_iou),
    (elementwise_giou, pairwise_giou),
    (elementwise_diou, pairwise_diou),
    (elementwise_ciou, pairwise_ciou),
]


def paired_cases() -> tuple[np.ndarray, np.ndarray]:
    """Pairs `[2, 13, 4]` (xyxy): random and inverted boxes, the hand-derived and edge
    pairs, a huge pair, a tiny one, and pairs that hold a NaN, an inf or a -inf."""
    rng = np.random.default_rng(5)
    boxes1, boxes2 = random_boxes(rng, (2, 13)), random_boxes(rng, (2, 13))
    boxes1[:, :4], boxes2[:, :4] = BOX[0], OTHERS[0]
    boxes1[:, 4:9], boxes2[:, 4:9] = EDGE_TRUE[0], EDGE_PRED[0, ::-1]
    boxes1[0, 9], boxes2[0, 9] = [-1e38, -1e38, 1e38, 1e38], [-1e38, 0, 1e38, 1.5e38]
    boxes1[1, 9], boxes2[1, 9] = [0, 0, 1e-30, 1], [0, 0, 1, 1e-30]
    boxes1[:, 10, 0], boxes2[:, 11, 2], boxes2[:, 12, 3] = np.nan, np.inf, -np.inf
    return boxes1, boxes2


@pytest.mark.parametrize("box_format", ["xyxy", "center_xywh"])
@pytest.mark.parametrize(("fn", "pairwise"), ELEMENTWISE, ids=lambda f: f.__name__)
def test_elementwise_geometry_is_the_diagonal_of_pairwise(fn, pairwise, box_format):
    boxes1, boxes2 = paired_cases()
    with np.errstate(invalid="ignore", over="ignore"):
        boxes1, boxes2 = np_from_xyxy(boxes1, box_format), np_from_xyxy(boxes2, box_format)
    value, grads = value_and_grads(lambda a, b: fn(a, b, box_format), boxes1, boxes2)
    matrix = np.asarray(pairwise(boxes1, boxes2, box_format))  # [2, 13, 13]
    assert value.shape == (2, 13)
    np.testing.assert_allclose(value, np.diagonal(matrix, axis1=1, axis2=2), rtol=1e-6, atol=1e-6)
    assert np.all(np.isnan(value[:, 10:])) and np.all(np.isfinite(value[:, :10]))
    if fn is elementwise_ciou:
        theirs = keras.utils.bounding_boxes.compute_ciou(boxes1[:, :4], boxes2[:, :4], box_format)
        np.testing.assert_allclose(value[:, :4], keras.ops.convert_to_numpy(theirs), atol=1e-5)
    # The gradients are those of the matrix's diagonal; none reaches a non-finite box
    # or its partner.
    diagonal = np.eye(13, dtype=bool)[None] & np.isfinite(value)[:, :, None]  # [2, 13, 13]
    _, expected = value_and_grads(
        lambda a, b: keras.ops.where(diagonal, pairwise(a, b, box_format), 0.0), boxes1, boxes2
    )
    for grad, other in zip(grads, expected, strict=True):
        np.testing.assert_allclose(grad, other, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(grad[:, 10:], 0.0)


@pytest.mark.parametrize(("fn", "pairwise"), ELEMENTWISE, ids=lambda f: f.__name__)
def test_elementwise_geometry_in_half_precision_compiled_and_unbatched(fn, pairwise):
    rng = np.random.default_rng(6)
    boxes1, boxes2 = random_boxes(rng, (2, 6)) * 300, random_boxes(rng, (2, 6)) * 300
    boxes1[:, 0], boxes2[:, 0] = [0, 0, 1000, 1000], [0, 0, 500, 500]  # areas above 65504
    expected = np.asarray(fn(boxes1, boxes2))
    half = fn(boxes1.astype("float16"), boxes2.astype("float16"))
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    np.testing.assert_allclose(np.asarray(half).astype("float32"), expected, atol=2e-3)
    np.testing.assert_allclose(compiled(fn, boxes1, boxes2), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fn(boxes1[0], boxes2[0])), expected[0])
    assert np.asarray(fn(boxes1[:, :0], boxes2[:, :0])).shape == (2, 0)


@pytest.mark.parametrize(("fn", "pairwise"), ELEMENTWISE, ids=lambda f: f.__name__)
def test_elementwise_geometry_rejects_different_shapes(fn, pairwise):
    with pytest.raises(ValueError, match=r"of the same shape \[\.\.\., 4\]"):
        fn(np.zeros((2, 3, 4), "float32"), np.zeros((2, 5, 4), "float32"))
    with pytest.raises(ValueError, match="`boxes2` with a last dimension of 4"):
        fn(np.zeros((2, 3, 4), "float32"), np.zeros((2, 3, 5), "float32"))
