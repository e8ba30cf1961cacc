"""Tests of hungarian_loss.denoising: the layout, the noise, the mask, seeds and compiling."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from helpers import BACKEND, jit, np_from_xyxy, to_numpy

from hungarian_loss.denoising import (
    DenoisingQueries,
    contrastive_denoising,
    denoising_attention_mask,
)

# One layout for most tests (few shapes: each compiles once per backend).
NUM_CLASSES, GROUPS, QUERIES = 5, 5, 3


def targets(batch: int, num_targets: int = 4, seed: int = 0) -> np.ndarray:
    """Padded center_xywh targets `[B, M, 5]` away from the borders, with padding rows.

    Centers in [0.35, 0.65], sides in [0.1, 0.2]: a shift of up to a whole side keeps
    every corner inside [0.05, 0.95], so nothing is clipped. Image b holds
    `num_targets - b % num_targets` real targets (the first image is full).
    """
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.35, 0.65, size=(batch, num_targets, 2))
    sides = rng.uniform(0.1, 0.2, size=(batch, num_targets, 2))
    classes = rng.integers(0, NUM_CLASSES, size=(batch, num_targets, 1))
    y_true = np.concatenate([centers, sides, classes], axis=-1).astype("float32")
    for b in range(batch):
        y_true[b, num_targets - b % num_targets :] = -1.0
    return y_true


def corners(center_xywh: np.ndarray) -> np.ndarray:
    """NumPy xyxy of center_xywh boxes (float64)."""
    c = center_xywh.astype("float64")
    return np.concatenate([c[..., :2] - c[..., 2:] / 2, c[..., :2] + c[..., 2:] / 2], axis=-1)


def layout(num_groups: int, num_targets: int) -> tuple[np.ndarray, np.ndarray]:
    """The target index `[Q_dn]` and the negative flag `[Q_dn]` of each denoising query."""
    query = np.arange(2 * num_groups * num_targets)
    return query % num_targets, (query // num_targets) % 2 == 1


def outputs(dn: DenoisingQueries) -> tuple[np.ndarray, ...]:
    return tuple(to_numpy(t) for t in dn)


# ----------------------------------------------------------------------------- layout and shapes


@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_and_dtypes_are_static(batch: int) -> None:
    y_true = targets(batch)
    dn = contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, seed=1)
    q_dn = GROUPS * 2 * 4
    assert (dn.num_denoising, dn.num_matched, dn.num_queries) == (q_dn, QUERIES, q_dn + QUERIES)
    labels, boxes, valid, mask = outputs(dn)
    assert labels.shape == (batch, q_dn) and labels.dtype == np.int32
    assert boxes.shape == (batch, q_dn, 4) and boxes.dtype == np.float32
    assert valid.shape == (batch, q_dn) and valid.dtype == np.bool_
    assert mask.shape == (q_dn + QUERIES, q_dn + QUERIES) and mask.dtype == np.bool_


def test_shapes_are_static_for_an_unknown_batch() -> None:
    def build(y_true):
        dn = contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, seed=1)
        return dn.labels, dn.boxes, dn.valid

    q_dn = GROUPS * 2 * 4
    if BACKEND == "tensorflow":
        import tensorflow as tf

        fn = tf.function(build, input_signature=[tf.TensorSpec([None, 4, 5], tf.float32)])
        traced = fn.get_concrete_function().structured_outputs
        assert [t.shape.as_list() for t in traced] == [[None, q_dn], [None, q_dn, 4], [None, q_dn]]
    elif BACKEND == "jax":
        import jax

        (batch,) = jax.export.symbolic_shape("b")
        spec = jax.ShapeDtypeStruct((batch, 4, 5), np.float32)
        exported = jax.export.export(jax.jit(build))(spec)
        assert [str(aval.shape) for aval in exported.out_avals] == [
            f"(b, {q_dn})",
            f"(b, {q_dn}, 4)",
            f"(b, {q_dn})",
        ]
        fn = exported.call
    else:  # torch traces no graph with an unknown batch: any batch size, eagerly
        fn = build
    for size in (1, 3):
        labels, boxes, valid = (to_numpy(t) for t in fn(targets(size)))
        assert labels.shape == valid.shape == (size, q_dn) and boxes.shape == (size, q_dn, 4)


def test_queries_follow_the_layout_and_padding_says_no_object() -> None:
    y_true = targets(3)
    labels, boxes, valid, _ = outputs(
        contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, label_noise_ratio=0.0, seed=3)
    )
    target, _ = layout(GROUPS, 4)
    real = ~np.all(y_true == -1.0, axis=-1)  # [B, M]
    np.testing.assert_array_equal(valid, real[:, target])
    # Without label noise each real query carries its target's class; padding, the id K.
    expected = np.where(real, y_true[..., 4], NUM_CLASSES).astype("int32")[:, target]
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(boxes[~valid], 0.0)
    assert np.all(boxes[valid][:, 2:] > 0.0)


def test_no_groups_or_no_targets_give_empty_queries_and_the_matched_mask() -> None:
    for num_groups, num_targets in ((0, 4), (2, 0)):
        y_true = targets(3, num_targets=max(num_targets, 1))[:, :num_targets]
        dn = contrastive_denoising(y_true, NUM_CLASSES, num_groups, QUERIES, seed=1)
        labels, boxes, valid, mask = outputs(dn)
        assert (labels.shape, boxes.shape, valid.shape) == ((3, 0), (3, 0, 4), (3, 0))
        np.testing.assert_array_equal(mask, np.ones((QUERIES, QUERIES), bool))
        assert (dn.num_denoising, dn.num_matched) == (0, QUERIES)


def test_padding_value_none_and_nan() -> None:
    y_true = targets(3)
    nan_padded = np.where(y_true == -1.0, np.nan, y_true).astype("float32")

    def valid(y: np.ndarray, padding_value: float | None) -> np.ndarray:
        dn = contrastive_denoising(y, NUM_CLASSES, GROUPS, QUERIES, padding_value=padding_value)
        return to_numpy(dn.valid)

    with_nan = valid(nan_padded, math.nan)
    np.testing.assert_array_equal(with_nan, valid(y_true, -1.0))
    assert not with_nan.all()
    assert valid(y_true, None).all()


# ----------------------------------------------------------------------------- the noise


def assert_box_noise_within_bounds(
    y_true: np.ndarray, boxes: np.ndarray, valid: np.ndarray
) -> None:
    """Checks the noised center_xywh `boxes` of `targets()` corner by corner (no clipping)."""
    target, negative = layout(boxes.shape[1] // 8, 4)
    original = corners(y_true[:, target, :4])  # [B, Q_dn, 4]
    noised = corners(boxes)
    half = np.concatenate([y_true[:, target, 2:4]] * 2, axis=-1) / 2.0  # w/2, h/2, w/2, h/2
    tolerance = 1e-4  # float32 rounding of the shifts, relative to half a side
    # Positives keep their corners in order: |shift| / (side / 2) is u in [0, 1).
    ratio = np.abs(noised - original) / half
    positives = ratio[valid & ~negative]
    assert positives.max() < 1.0 + tolerance

    # Negatives: u in [1, 2). A side's two corners cross when both move inwards (a
    # quarter of the sides) and are put back in order: then the crossed pairing holds.
    def in_range(r: np.ndarray) -> np.ndarray:
        return np.all((r >= 1.0 - tolerance) & (r < 2.0 + tolerance), axis=-1, keepdims=True)

    negatives = []
    for lo, hi in ((0, 2), (1, 3)):
        straight = ratio[..., [lo, hi]]
        crossed = np.stack(
            [
                np.abs(noised[..., hi] - original[..., lo]) / half[..., lo],
                np.abs(noised[..., lo] - original[..., hi]) / half[..., hi],
            ],
            axis=-1,
        )
        assert (in_range(straight) | in_range(crossed))[valid & negative].all()
        negatives.append(np.where(in_range(straight), straight, crossed)[valid & negative])
    negative_ratios = np.concatenate(negatives)
    # The draws fill their ranges: uniform, about 0.5 and 1.5 on average.
    assert 0.4 < positives.mean() < 0.6 and positives.max() > 0.95
    assert 1.4 < negative_ratios.mean() < 1.6
    assert negative_ratios.min() < 1.05 and negative_ratios.max() > 1.95
    # Shifts go both ways.
    signs = np.sign(noised - original)[valid]
    assert 0.4 < (signs > 0).mean() < 0.6


def test_box_noise_stays_within_its_bounds() -> None:
    y_true = targets(3)
    dn = contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, seed=5)
    _, boxes, valid, _ = outputs(dn)
    assert_box_noise_within_bounds(y_true, boxes, valid)


def test_boxes_are_clipped_into_the_unit_square_and_scale_zero_keeps_them() -> None:
    y_true = targets(3)
    y_true[:, :, 2:4] = np.where(y_true[:, :, 2:4] > 0, 0.9, -1.0)  # large: noise leaves [0, 1]
    _, boxes, valid, _ = outputs(
        contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, box_noise_scale=2.0, seed=2)
    )
    xyxy = corners(boxes)
    assert np.all(xyxy[valid] >= -1e-6) and np.all(xyxy[valid] <= 1.0 + 1e-6)
    assert np.any(xyxy[valid] <= 1e-6) and np.any(xyxy[valid] >= 1.0 - 1e-6)  # it clipped
    assert np.all(xyxy[valid][:, :2] <= xyxy[valid][:, 2:])
    # Scale 0: every box is its target's, in the format asked for.
    in_box = targets(3)
    target, _ = layout(GROUPS, 4)
    for box_format in ("center_xywh", "yxyx"):
        given = in_box.copy()
        real = ~np.all(in_box == -1.0, axis=-1)
        given[real, :4] = np_from_xyxy(corners(in_box[real, :4]), box_format)
        _, boxes, valid, _ = outputs(
            contrastive_denoising(
                given, NUM_CLASSES, GROUPS, QUERIES, box_noise_scale=0.0, box_format=box_format
            )
        )
        np.testing.assert_allclose(boxes[valid], given[:, target, :4][valid], atol=1e-6)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_labels_change_at_the_requested_rate(ratio: float) -> None:
    # 3 images x 50 groups x 2 x (4 + 3 + 2 real targets): 900 real queries.
    num_groups = 50
    y_true = targets(3)
    labels, _, valid, _ = outputs(
        contrastive_denoising(
            y_true, NUM_CLASSES, num_groups, QUERIES, label_noise_ratio=ratio, seed=11
        )
    )
    target, _ = layout(num_groups, 4)
    original = y_true[:, target, 4].astype("int32")
    changed = (labels != original)[valid]
    # A label is replaced with probability ratio / 2 by a uniform class, maybe its own.
    p = ratio / 2 * (NUM_CLASSES - 1) / NUM_CLASSES
    n = changed.size
    assert n == 900
    assert abs(changed.sum() - n * p) <= 4 * math.sqrt(n * p * (1 - p))
    assert np.all((labels[valid] >= 0) & (labels[valid] < NUM_CLASSES))
    if ratio > 0:  # the new classes cover every class
        assert set(labels[valid][changed]) == set(range(NUM_CLASSES))


# ----------------------------------------------------------------------------- the attention mask


def test_attention_mask_entry_by_entry() -> None:
    # G=2, M=2, N=3: group 0 is queries 0-3, group 1 is 4-7, matched queries 8-10.
    expected = np.array(
        [
            [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1],
            [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1],
            [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1],
            [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(to_numpy(denoising_attention_mask(2, 2, 3)), expected)
    dn = contrastive_denoising(targets(1, num_targets=2), NUM_CLASSES, 2, 3, seed=0)
    np.testing.assert_array_equal(to_numpy(dn.attention_mask), expected)


def test_matched_queries_do_not_see_denoising_queries_in_keras_attention() -> None:
    # Keras's convention (True: may attend): changing the denoising queries leaves the
    # matched queries' outputs as they are, and changing group 1 leaves group 0's.
    mask = denoising_attention_mask(2, 2, 3)  # [11, 11]
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, seed=0)
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(2, 11, 8)).astype("float32")
    changed = queries.copy()
    changed[:, 4:8] = rng.normal(size=(2, 4, 8))  # group 1
    before = to_numpy(attention(queries, queries, attention_mask=mask))
    after = to_numpy(attention(changed, changed, attention_mask=mask))
    np.testing.assert_allclose(after[:, :4], before[:, :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[:, 8:], before[:, 8:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[:, 4:8], before[:, 4:8])


# ----------------------------------------------------------------------------- seeds and compiling


def test_an_int_seed_is_reproducible_and_seeds_differ() -> None:
    y_true = targets(3)
    first = outputs(contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, seed=4))
    again = outputs(contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, seed=4))
    other = outputs(contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, seed=5))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_compiled_equals_eager_for_an_int_seed() -> None:
    y_true = targets(3)

    def build(y):
        dn = contrastive_denoising(y, NUM_CLASSES, GROUPS, QUERIES, seed=4)
        return dn.labels, dn.boxes, dn.valid, dn.attention_mask

    eager = [to_numpy(t) for t in build(y_true)]
    compiled_fn = jit(build)
    first = [to_numpy(t) for t in compiled_fn(y_true)]
    second = [to_numpy(t) for t in compiled_fn(y_true)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)  # the same noise at each call
    np.testing.assert_array_equal(first[2], eager[2])  # valid
    np.testing.assert_array_equal(first[3], eager[3])  # the attention mask
    assert_box_noise_within_bounds(y_true, first[1], first[2])
    if BACKEND == "tensorflow":
        # TensorFlow's stateless random ops draw other numbers under XLA than eagerly
        # for the same seed (the compiler picks its own generator): the compiled
        # noise is checked for its bounds above, not against the eager one.
        assert not np.array_equal(first[1], eager[1])
    else:
        np.testing.assert_array_equal(first[0], eager[0])
        np.testing.assert_allclose(first[1], eager[1], rtol=1e-6, atol=1e-6)


class _Noiser(keras.layers.Layer):
    """A layer that builds denoising boxes with its own seed generator, as dropout does."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(7)

    def call(self, y_true):
        dn = contrastive_denoising(y_true, NUM_CLASSES, GROUPS, QUERIES, seed=self.seed_generator)
        return {"boxes": dn.boxes, "labels": dn.labels}


def test_a_seed_generator_gives_new_noise_at_each_compiled_step() -> None:
    inputs = keras.Input((4, 5))
    model = keras.Model(inputs, _Noiser()(inputs))
    model.compile(jit_compile=True)
    y_true = targets(3)
    first = model.predict_on_batch(y_true)
    second = model.predict_on_batch(y_true)
    assert first["boxes"].shape == (3, GROUPS * 2 * 4, 4)
    assert not np.allclose(first["boxes"], second["boxes"])
    # A fresh model with the same seed replays the same sequence.
    replay = keras.Model(inputs, _Noiser()(inputs))
    replay.compile(jit_compile=True)
    np.testing.assert_allclose(replay.predict_on_batch(y_true)["boxes"], first["boxes"])


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_groups": -1}, "num_groups"),
        ({"num_queries": 2.5}, "num_queries"),
        ({"label_noise_ratio": 1.5}, "label_noise_ratio"),
        ({"box_noise_scale": -0.1}, "box_noise_scale"),
        ({"box_noise_scale": math.inf}, "box_noise_scale"),
        ({"box_format": "rel_xyxy"}, "box_format"),
        ({"padding_value": "pad"}, "padding_value"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    arguments = {"num_classes": NUM_CLASSES, "num_groups": 1, "num_queries": QUERIES, **kwargs}
    with pytest.raises(ValueError, match=f"Expected `{message}`.*Received: {message}="):
        contrastive_denoising(targets(1), **arguments)


@pytest.mark.parametrize("shape", [(2, 4, 4), (4, 5), (2, 4, 6)])
def test_bad_target_shapes_raise(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"Expected `y_true` of shape \[B, M, 5\]"):
        contrastive_denoising(np.zeros(shape, "float32"), NUM_CLASSES, 1, QUERIES)


# ----------------------------------------------------------------------------- with DETRLoss


def test_detr_loss_reads_the_same_layout() -> None:
    # Predictions that do what the layout asks (positives find their target, negatives
    # and the queries of padding targets say "no object", matched queries find the
    # targets) cost almost nothing under DETRLoss(denoising_groups=G); a negative or a
    # padding target's query that claims an object costs its varifocal negative term,
    # alpha * sigmoid(x)^2 * softplus(x) = 0.75 * 20, over the boxes times G (Contract 5).
    from hungarian_loss import DETRLoss

    groups, num_queries, sure = 2, 5, 20.0
    y_true = targets(3)
    dn = contrastive_denoising(y_true, NUM_CLASSES, groups, num_queries, seed=0)
    valid = to_numpy(dn.valid)
    target, negative = layout(groups, 4)
    classes = y_true[..., 4].astype("int32")  # [B, M]; -1 for padding
    boxes = np.concatenate([to_numpy(dn.boxes), np.full((3, num_queries, 4), 0.5)], axis=1)
    logits = np.full((3, dn.num_queries, NUM_CLASSES), -sure)
    for b, q in zip(*np.nonzero(valid & ~negative), strict=True):  # positives
        boxes[b, q] = y_true[b, target[q], :4]
        logits[b, q, classes[b, target[q]]] = sure
    for b in range(3):  # matched queries: the first ones find the targets
        for i in np.flatnonzero(classes[b] >= 0):
            boxes[b, dn.num_denoising + i] = y_true[b, i, :4]
            logits[b, dn.num_denoising + i, classes[b, i]] = sure
    y_pred = np.concatenate([boxes, logits], axis=-1).astype("float32")
    loss = DETRLoss.rt_detr(denoising_groups=groups)
    compute = jit(lambda yt, yp: loss(yt, yp))

    assert float(to_numpy(compute(y_true, y_pred))) < 1e-3
    one_false_object = 0.75 * sure / (int(valid[:, :4].sum()) * groups)  # 9 boxes in the batch
    claiming_negative = y_pred.copy()
    b, q = next(zip(*np.nonzero(valid & negative), strict=True))
    claiming_negative[b, q, 4 + classes[b, target[q]]] = sure
    np.testing.assert_allclose(to_numpy(compute(y_true, claiming_negative)), one_false_object, 1e-3)
    claiming_padding = y_pred.copy()
    b, q = next(zip(*np.nonzero(~valid), strict=True))
    claiming_padding[b, q, 4] = sure
    np.testing.assert_allclose(to_numpy(compute(y_true, claiming_padding)), one_false_object, 1e-3)
